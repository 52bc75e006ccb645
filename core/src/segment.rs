//! Shared-memory segments: create, open (validating), unlink; admission of producers and
//! consumers to a segment's participant tables.

use crate::consumer::Consumer;
use crate::error::{Error, Result};
use crate::layout::{
    self, ChannelConfig, FINISH_ONE, Geometry, Kind, Origin, PARKED_NONE, Participant, Role,
    STATE_DELETED, STATE_FINISHED, STATE_INITIALISING, STATE_READY, decode_owner, encode_claim,
    encode_owner, state_of, with_state,
};
use crate::producer::Producer;
use crate::region::{self, Memory};
use crate::sync::Ordering::{Acquire, Relaxed, Release, SeqCst};
use crate::sync::fence;
use crate::{broadcast, mpmc, spsc, sys};
use memmap2::{MmapOptions, MmapRaw};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long [`Segment::open`] waits for a segment that is still being initialised.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest name of a channel or a named segment.
pub const MAX_NAME_LEN: usize = 64;

/// Checks the name of a channel or a named segment, the one rule for both: 1 to
/// [`MAX_NAME_LEN`] characters of `[A-Za-z0-9._-]`, not starting with `.` (so no name is a
/// path, `.` or `..`, or a hidden file).
pub fn validate_name(name: &str) -> Result<()> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty() || name.len() > MAX_NAME_LEN || !ok_chars || name.starts_with('.') {
        return Err(Error::InvalidArgument(format!(
            "name {name:?} must be 1 to {MAX_NAME_LEN} characters, each a letter, a digit, '.', \
             '_' or '-', and must not start with '.'"
        )));
    }
    Ok(())
}

/// A mapped shmring segment: one channel's rings, cursors and participant tables.
///
/// A segment is created by one process ([`Segment::create`]) and opened by others
/// ([`Segment::open`]); each then takes a [`Producer`] or [`Consumer`] handle. The mapping stays
/// valid while any handle of this process uses it, even after [`Segment::unlink`] removed the
/// name. The name belongs to whoever created it: nothing unlinks it automatically.
///
/// A named segment is a file in `/dev/shm` (mode `config.mode` plus the owner's `rw`), and
/// whoever may open it may also shrink it. A mapping whose file was cut short does not kill
/// this process: the library's SIGBUS handler maps zero pages over it, and the handles' calls
/// then fail with [`Error::Corrupted`](crate::Error::Corrupted) ([`Segment::check`] tells at
/// once). Segments of a coordinator, and anonymous ones, are sealed memfds that nobody can
/// shrink.
///
/// ```
/// use shmring::{ChannelConfig, Segment};
///
/// let name = format!("doc-segment-{}", std::process::id());
/// let config = ChannelConfig::spsc().capacity(64 << 10).max_frame_size(4096);
/// let created = Segment::create(&name, &config)?;
/// let opened = Segment::open(&name)?;        // in another process, typically
/// assert_eq!(opened.geometry(), created.geometry());
/// Segment::unlink(&name)?;
/// # Ok::<(), shmring::Error>(())
/// ```
#[derive(Clone)]
pub struct Segment {
    pub(crate) mem: Arc<Memory>,
    name: Option<Arc<str>>,
    origin: Origin,
    /// Set on segments handed out by a coordinator: told when a handle closes.
    lease: Option<Arc<dyn Lease>>,
}

/// Told when a handle on a segment handed out by a coordinator closes, so that the client can
/// tell the coordinator (see `client.rs`).
pub(crate) trait Lease: Send + Sync {
    /// The handle holding entry `index` of `role`, admitted with owner word `owner`, closed.
    fn closed(&self, role: Role, index: u32, owner: u64);

    /// The channel was resized (`Memory::moved_to`): the entry of the handle holding entry
    /// `index` of `role` (owner word `owner`) in the segment that replaced this one, with that
    /// segment, leased in turn. `None` if the coordinator did not replace it: the word was
    /// overwritten, and the coordinator put it right.
    fn follow(&self, role: Role, index: u32, owner: u64) -> Result<Option<(Segment, u32, u64)>>;
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.name)
            .field("geometry", self.mem.geometry())
            .finish()
    }
}

/// Maps `len` bytes of `fd`, plus one page past its end. The extra page lies beyond the end of
/// the object, so any access to it faults (SIGBUS) instead of touching neighbouring memory: a
/// guard against an out-of-bounds bug, which the accessors in `region` rule out by construction.
fn map(fd: &OwnedFd, len: usize) -> Result<MmapRaw> {
    MmapOptions::new()
        .len(len + sys::page_size())
        .populate()
        .map_raw(fd)
        .map_err(|e| Error::os("mapping the segment", e))
}

/// The origin of a segment this process creates now for `owner` (uid, gid).
fn made_now(config: &ChannelConfig, generation: u64, owner: (u32, u32)) -> Origin {
    Origin {
        creator_pid: sys::pid(),
        mode: config.mode,
        created_unix_ns: sys::now_unix_ns(),
        generation,
        owner_uid: owner.0,
        owner_gid: owner.1,
    }
}

impl Segment {
    /// Creates a named segment for a channel of shape `config`, with permission bits
    /// `config.mode`. Fails with `AlreadyExists` if the name is taken.
    pub fn create(name: &str, config: &ChannelConfig) -> Result<Segment> {
        validate_name(name)?;
        let owner = (sys::euid(), sys::egid());
        let (seg, _fd) = Segment::create_object(&sys::object_name(name), config, 0, owner)?;
        Ok(Segment {
            name: Some(name.into()),
            ..seg
        })
    }

    /// Creates the shared-memory object `object` (a full object name, `/...`) for a channel of
    /// shape `config` owned by `owner` (uid, gid), and returns it with its descriptor.
    pub(crate) fn create_object(
        object: &std::ffi::CStr,
        config: &ChannelConfig,
        generation: u64,
        owner: (u32, u32),
    ) -> Result<(Segment, OwnedFd)> {
        let geo = Geometry::new(config)?;
        // The object's owner (this process's user) keeps read and write whatever the channel's
        // mode: it must be able to open the object again (a coordinator adopting it).
        let fd = sys::shm_create(object, config.mode | 0o600)?;
        let origin = made_now(config, generation, owner);
        match Segment::initialise(&fd, geo, &origin) {
            Ok(mem) => Ok((
                Segment {
                    mem,
                    name: None,
                    origin,
                    lease: None,
                },
                fd,
            )),
            Err(e) => {
                let _ = sys::shm_unlink(object);
                Err(e)
            }
        }
    }

    /// Creates a coordinator's segment: a sealed memfd named `label` (no name in `/dev/shm`:
    /// nobody reaches it but through a descriptor the coordinator hands over), mode 0600 for
    /// the coordinator's user, sized, initialised, then sealed against shrinking and growing
    /// (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`) so that no holder of a descriptor, however
    /// privileged, can truncate it under the processes that map it.
    pub(crate) fn create_sealed(
        label: &std::ffi::CStr,
        config: &ChannelConfig,
        generation: u64,
        owner: (u32, u32),
    ) -> Result<(Segment, OwnedFd)> {
        let geo = Geometry::new(config)?;
        let fd = sys::memfd_sealable(label)?;
        sys::fchmod(&fd, 0o600)?;
        let origin = made_now(config, generation, owner);
        let mem = Segment::initialise(&fd, geo, &origin)?;
        sys::seal(&fd)?;
        Ok((
            Segment {
                mem,
                name: None,
                origin,
                lease: None,
            },
            fd,
        ))
    }

    /// Creates an unnamed segment in an anonymous shared-memory file (`memfd`), sealed
    /// against shrinking and growing. It is shared with threads, and with children forked
    /// after this call; nothing is left behind when the last mapping goes away.
    pub fn anonymous(config: &ChannelConfig) -> Result<Segment> {
        let geo = Geometry::new(config)?;
        let fd = sys::memfd_sealable(c"shmring")?;
        let origin = made_now(config, 0, (sys::euid(), sys::egid()));
        let mem = Segment::initialise(&fd, geo, &origin)?;
        sys::seal(&fd)?;
        Ok(Segment {
            mem,
            name: None,
            origin,
            lease: None,
        })
    }

    /// Sizes, maps and initialises a fresh object; turns it ready last.
    fn initialise(fd: &OwnedFd, geo: Geometry, origin: &Origin) -> Result<Arc<Memory>> {
        sys::set_len(fd, geo.total_size)?;
        let map = map(fd, geo.total_size)?;
        // Registered with the SIGBUS guard before the first write: a named object can be
        // truncated by anyone allowed to open it, even now.
        let mem = Memory::new(map, geo);
        mem.write_header(&geo.header(origin));
        match geo.kind {
            Kind::Mpmc => mpmc::initialise(&mem),
            Kind::Broadcast => broadcast::initialise(&mem),
            Kind::Spsc => {}
        }
        if geo.kind == Kind::Broadcast {
            broadcast::initialise(&mem);
        }
        // Release: pairs with the Acquire in `attach`; everything written above is visible to a
        // process that sees the segment ready.
        mem.state().store(STATE_READY, Release);
        Ok(Arc::new(mem))
    }

    /// Opens a named segment, waiting up to [`DEFAULT_OPEN_TIMEOUT`] for its creator to finish
    /// initialising it, and validates it.
    pub fn open(name: &str) -> Result<Segment> {
        Segment::open_timeout(name, DEFAULT_OPEN_TIMEOUT)
    }

    /// Opens a named segment, waiting up to `timeout` for it to be initialised.
    ///
    /// Fails with `NotFound` if there is no such segment, `PermissionDenied` if its mode
    /// excludes this user, `Unavailable` if it is still not ready after `timeout` (its creator
    /// may have died while initialising it), `Incompatible` if it is not a segment of this
    /// layout version, and `Corrupted` if its header is inconsistent.
    pub fn open_timeout(name: &str, timeout: Duration) -> Result<Segment> {
        validate_name(name)?;
        let fd = sys::shm_open(&sys::object_name(name))?;
        let seg = Segment::attach(&fd, name, timeout)?;
        Ok(Segment {
            name: Some(name.into()),
            ..seg
        })
    }

    /// Maps and validates the segment of `fd` (`label` names it in errors), waiting up to
    /// `timeout` for its creator to finish initialising it.
    pub(crate) fn attach(fd: &OwnedFd, label: &str, timeout: Duration) -> Result<Segment> {
        let deadline = Instant::now() + timeout;
        let not_ready = |what: &str| {
            Error::Unavailable(format!(
                "segment {label:?} {what} after {timeout:?}; its creator may have died while creating it"
            ))
        };
        // The header is read before anything is mapped, and only the size it validates is
        // mapped: the object's own size is whatever a participant with the descriptor last
        // set it to, and mapping (and populating) a grown object would take its memory.
        let mut raw = [0u8; layout::HEADER_SIZE];
        let (header, len) = loop {
            let len = sys::file_len(fd)?;
            let state = if len >= layout::HEADER_SIZE {
                sys::pread_exact(fd, &mut raw, 0)?;
                Some(region::header_from_bytes(&raw))
            } else {
                None // the creator sizes the object right after creating it
            };
            match state.map(|h| (state_of(h.state), h)) {
                Some((STATE_READY | STATE_FINISHED, h)) => break (h, len),
                Some((STATE_DELETED, _)) => {
                    return Err(Error::NotFound(format!("segment {label:?} was deleted")));
                }
                Some((STATE_INITIALISING, _)) | None if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                None => return Err(not_ready("still has no size")),
                Some((STATE_INITIALISING, _)) => {
                    return Err(not_ready("is still being initialised"));
                }
                Some((other, _)) => {
                    return Err(Error::Corrupted(format!(
                        "segment {label:?} is in unknown state {other}"
                    )));
                }
            }
        };
        let geo = Geometry::from_header(&header, len)
            .map_err(|e| prefix(e, &format!("segment {label:?}")))?;
        let map = map(fd, geo.total_size)?;
        // Registered with the SIGBUS guard before anything is read through it: the object may
        // be shrunk at any moment (a named one by anyone who may open it).
        let mem = Memory::new(map, geo);
        // Acquire: pairs with the Release in `initialise`: what the creator wrote before the
        // segment turned ready is visible through this mapping (the pread above is outside
        // the memory model).
        let state = mem.state().load(Acquire);
        if mem.truncated() {
            return Err(truncated(label));
        }
        match state_of(state) {
            STATE_READY | STATE_FINISHED => {}
            STATE_DELETED => {
                return Err(Error::NotFound(format!("segment {label:?} was deleted")));
            }
            other => {
                return Err(Error::Corrupted(format!(
                    "segment {label:?} changed to state {other} while being attached"
                )));
            }
        }
        Ok(Segment {
            mem: Arc::new(mem),
            name: None,
            origin: Origin::of(&header),
            lease: None,
        })
    }

    /// `Err(Corrupted)` once this process found the segment's memory gone: its object was
    /// shrunk while mapped (possible for a named segment, which is a file anyone allowed to
    /// open it may truncate; coordinator segments are sealed against it). The handles then
    /// return `Corrupted` from every call that finds the ring empty or full, and no frame can
    /// be recovered: the channel must be recreated. `Ok` otherwise.
    pub fn check(&self) -> Result<()> {
        if self.mem.truncated() {
            return Err(truncated(self.name.as_deref().unwrap_or("(anonymous)")));
        }
        Ok(())
    }

    /// Marks the channel deleted and wakes everyone asleep on it, so that they see it: a
    /// consumer takes what is left and then gets `Closed`, a producer facing a full ring gets
    /// `Closed`.
    pub(crate) fn mark_deleted(&self) {
        // Release: nothing to publish but the flag itself; the waker's fence below orders it
        // before the futex increments.
        self.mem.state().store(STATE_DELETED, Release);
        crate::wait::wake_all(&self.mem);
    }

    /// This segment, with `name`, telling `lease` when a handle closes.
    pub(crate) fn leased(self, name: &str, lease: Arc<dyn Lease>) -> Segment {
        Segment {
            name: Some(name.into()),
            lease: Some(lease),
            ..self
        }
    }

    /// Removes a segment's name. Processes that have it mapped keep using it; the memory is
    /// freed when the last one unmaps it.
    pub fn unlink(name: &str) -> Result<()> {
        validate_name(name)?;
        sys::shm_unlink(&sys::object_name(name))
    }

    /// The segment's name (`None` for an anonymous segment).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The segment's validated shape.
    pub fn geometry(&self) -> &Geometry {
        self.mem.geometry()
    }

    /// SPSC or MPMC.
    pub fn kind(&self) -> Kind {
        self.mem.geometry().kind
    }

    /// Who created the segment, when, for which owner, and with which permission bits.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Replaces the owner, group and mode read from the header (at attach) with what a
    /// coordinator's own record says: the header is writable by every participant.
    pub(crate) fn set_authority(&mut self, owner_uid: u32, owner_gid: u32, mode: u32) {
        self.origin.owner_uid = owner_uid;
        self.origin.owner_gid = owner_gid;
        self.origin.mode = mode;
    }

    /// Takes a free entry of the producer table and returns a producer handle on it; `Busy` if
    /// every entry is taken (an SPSC channel has one).
    pub fn producer(&self) -> Result<Producer> {
        self.check()?;
        let m = Membership::join(&self.mem, Role::Producer)?;
        Producer::new(Arc::clone(&self.mem), m)
    }

    /// Takes a free entry of the consumer table and returns a consumer handle on it; `Busy` if
    /// every entry is taken. An SPSC consumer resumes exactly where the previous one stopped.
    pub fn consumer(&self) -> Result<Consumer> {
        self.check()?;
        let m = Membership::join(&self.mem, Role::Consumer)?;
        Consumer::new(Arc::clone(&self.mem), m)
    }

    /// A handle on entry `index` of `role`, which a coordinator admitted this process to with
    /// owner word `owner`.
    pub(crate) fn adopt_producer(&self, index: u32, owner: u64) -> Result<Producer> {
        let m = Membership::adopt(&self.mem, Role::Producer, index, owner, self.lease.clone())?;
        Producer::new(Arc::clone(&self.mem), m)
    }

    /// As [`Segment::adopt_producer`], for a consumer.
    pub(crate) fn adopt_consumer(&self, index: u32, owner: u64) -> Result<Consumer> {
        let m = Membership::adopt(&self.mem, Role::Consumer, index, owner, self.lease.clone())?;
        Consumer::new(Arc::clone(&self.mem), m)
    }

    /// A snapshot of the channel's counters, read without stopping anyone.
    pub fn stats(&self) -> SegmentStats {
        let geo = self.mem.geometry();
        let mut stats = SegmentStats {
            depth: match geo.kind {
                Kind::Spsc => spsc::depth_bytes(&self.mem),
                Kind::Mpmc => mpmc::depth_slots(&self.mem),
                Kind::Broadcast => broadcast::depth_slots(&self.mem),
            },
            ..SegmentStats::default()
        };
        for (role, n) in [
            (Role::Producer, geo.max_producers),
            (Role::Consumer, geo.max_consumers),
        ] {
            for index in 0..n {
                let Some(p) = self.mem.participant(role, index) else {
                    continue;
                };
                // Relaxed: statistics.
                let (pid, _) = decode_owner(p.owner.load(Relaxed));
                let (frames, bytes) = (p.frames.load(Relaxed), p.bytes.load(Relaxed));
                let (total_frames, total_bytes, table) = match role {
                    Role::Producer => (
                        &mut stats.frames_in,
                        &mut stats.bytes_in,
                        &mut stats.producers,
                    ),
                    Role::Consumer => (
                        &mut stats.frames_out,
                        &mut stats.bytes_out,
                        &mut stats.consumers,
                    ),
                };
                *total_frames = total_frames.wrapping_add(frames);
                *total_bytes = total_bytes.wrapping_add(bytes);
                if pid != 0 {
                    let subscriber = geo.kind == Kind::Broadcast && role == Role::Consumer;
                    table.push(ParticipantStats {
                        index,
                        pid,
                        frames,
                        bytes,
                        lag: if subscriber {
                            broadcast::subscriber_lag(&self.mem, p)
                        } else {
                            None
                        },
                        // Relaxed: a statistic.
                        missed: p.missed.load(Relaxed),
                    });
                }
            }
        }
        let r = self.mem.repair_line();
        // Relaxed: statistics.
        stats.repairs = r.repairs.load(Relaxed);
        stats.redelivered = r.redelivered.load(Relaxed);
        stats.skipped = r.skipped.load(Relaxed);
        // Relaxed: statistics.
        stats.waiting_consumers = self.mem.producer_line().waiters.load(Relaxed);
        stats.waiting_producers = self.mem.consumer_line().waiters.load(Relaxed);
        stats.pool_chunks = self.mem.geometry().pool_chunks;
        stats.pool_used = (0..stats.pool_chunks)
            .filter_map(|i| self.mem.pool_word(i))
            // Relaxed: a statistic.
            .filter(|w| w.load(Relaxed) != 0)
            .count() as u64;
        stats
    }
}

/// The error of a segment whose object was shrunk under this process's mapping.
pub(crate) fn truncated(label: &str) -> Error {
    Error::Corrupted(format!(
        "segment {label:?} was truncated while mapped: its memory is gone (recreate the channel)"
    ))
}

fn prefix(e: Error, what: &str) -> Error {
    match e {
        Error::Corrupted(m) => Error::Corrupted(format!("{what}: {m}")),
        Error::Incompatible(m) => Error::Incompatible(format!("{what}: {m}")),
        other => other,
    }
}

/// Counters of a channel; see [`Segment::stats`]. The totals add up every entry of a table,
/// so they count what every participant that ever held an entry did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentStats {
    /// Bytes (SPSC, headers and padding included) or frames (MPMC) in the ring; broadcast:
    /// the largest lag of a live subscriber.
    pub depth: u64,
    /// The admitted producers.
    pub producers: Vec<ParticipantStats>,
    /// The admitted consumers.
    pub consumers: Vec<ParticipantStats>,
    /// Frames sent.
    pub frames_in: u64,
    /// Payload bytes sent.
    pub bytes_in: u64,
    /// Frames received.
    pub frames_out: u64,
    /// Payload bytes received.
    pub bytes_out: u64,
    /// Dead participants whose entries a coordinator repaired and freed.
    pub repairs: u64,
    /// Frames delivered again because their consumer died holding them.
    pub redelivered: u64,
    /// Positions a dead producer took and never committed, turned into skip records.
    pub skipped: u64,
    /// Consumers counted as waiting for frames (parked, or with an armed pollable
    /// descriptor): each publish wakes them with a system call.
    pub waiting_consumers: u32,
    /// Producers counted as waiting for room.
    pub waiting_producers: u32,
    /// MPMC with messages longer than a frame: chunks of the message pool, and how many hold
    /// a message (zero without a pool).
    pub pool_chunks: u64,
    /// Chunks of the pool in use.
    pub pool_used: u64,
}

/// One participant's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParticipantStats {
    /// Entry in its table.
    pub index: u32,
    /// Process holding the entry.
    pub pid: u32,
    /// Frames sent or received.
    pub frames: u64,
    /// Payload bytes sent or received.
    pub bytes: u64,
    /// Broadcast subscriber: frames published that it has not released yet (at most the slot
    /// count; it publishes its position lazily, every quarter ring and when it catches up).
    pub lag: Option<u64>,
    /// Broadcast subscriber: frames it was lapped on and never received, over every holder of
    /// its entry; zero for everyone else.
    pub missed: u64,
}

/// An entry of a participant table held by a handle.
pub(crate) struct Membership {
    role: Role,
    index: u32,
    owner: u64,
    lease: Option<Arc<dyn Lease>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("role", &self.role)
            .field("index", &self.index)
            .field("owner", &self.owner)
            .field("leased", &self.lease.is_some())
            .finish()
    }
}

/// Takes the first free entry of `role`'s table for process `pid` (started at `start_time`,
/// clock ticks since boot), returning its index and owner word. MPMC entries start with no
/// claim record. `Busy` if every entry is taken.
pub(crate) fn take_entry(
    mem: &Memory,
    role: Role,
    pid: u32,
    start_time: u64,
) -> Result<(u32, u64)> {
    let geo = mem.geometry();
    let n = match role {
        Role::Producer => geo.max_producers,
        Role::Consumer => geo.max_consumers,
    };
    let mut holders = Vec::new();
    for index in 0..n {
        match take_entry_at(mem, role, index, pid, start_time)? {
            Ok(owner) => return Ok((index, owner)),
            Err(Some(holder)) => holders.push(holder),
            Err(None) => {}
        }
    }
    if let Some(bogus) = holders.iter().find(|&&pid| pid > PID_MAX_LIMIT) {
        // No process can have that pid: the owner word was overwritten. A coordinator frees
        // such entries by itself; without one, the channel must be recreated.
        return Err(Error::Corrupted(format!(
            "a {role} entry of this {} channel names pid {bogus} as its owner, which no \
             process can have: its owner word was overwritten",
            geo.kind
        )));
    }
    holders.truncate(8);
    Err(Error::Busy(format!(
        "every {role} entry of this {} channel is taken (by pids {holders:?})",
        geo.kind
    )))
}

/// Takes entry `index` of `role`'s table for process `pid` (as `take_entry` does), if it is
/// free: `Ok(owner)` with its owner word; `Err(Some(holder))` if it is held, `Err(None)` if
/// another process took it first or the table has no such entry. Fails if a broadcast
/// subscriber cannot join (the entry is freed again).
pub(crate) fn take_entry_at(
    mem: &Memory,
    role: Role,
    index: u32,
    pid: u32,
    start_time: u64,
) -> Result<std::result::Result<u64, Option<u32>>> {
    let geo = mem.geometry();
    let Some(p) = mem.participant(role, index) else {
        return Ok(Err(None));
    };
    {
        // Relaxed: a guess, confirmed by the CAS.
        let cur = p.owner.load(Relaxed);
        let (holder, incarnation) = decode_owner(cur);
        if holder != 0 {
            return Ok(Err(Some(holder)));
        }
        let owner = encode_owner(pid, incarnation.wrapping_add(1));
        // Acquire: pairs with the Release in `free_entry`, so a predecessor's writes to the ring
        // and cursors happen before ours.
        if p.owner
            .compare_exchange(cur, owner, Acquire, Relaxed)
            .is_ok()
        {
            // Relaxed: read by a coordinator that adopts the segment, to tell a live owner
            // from a dead one whose pid was reused.
            p.start_time.store(start_time, Relaxed);
            // Relaxed: the new owner is counted on no line; a predecessor's flag, if its
            // repair could not clear it, must not be taken for the new owner's.
            p.parked.store(PARKED_NONE, Relaxed);
            if geo.kind == Kind::Mpmc {
                // Release: pairs with the Acquire in `repair::covered`. A free entry holds no
                // position, so whatever record it kept is stale.
                p.claim.store(encode_claim(0, 0), Release);
            }
            if role == Role::Producer {
                reopen(mem);
            }
            if geo.kind == Kind::Broadcast && role == Role::Consumer {
                // The subscriber joins now: what is published from here on reaches it, even
                // before its process attaches (the coordinator counts it from here).
                if let Err(e) = broadcast::join(mem, p) {
                    free_entry(mem, role, index, owner);
                    return Err(e);
                }
            }
            return Ok(Ok(owner));
        }
    }
    Ok(Err(None))
}

/// A producer was just admitted (its entry taken): if the stream was finished, it continues.
///
/// The store-buffer pattern with `finish_stream`, each side storing then loading after a
/// SeqCst fence: either this load sees the finisher's mark (and takes it back here), or the
/// finisher's count of producers, after its fence, sees the entry just taken (and it takes its
/// mark back itself). So no producer stays attached to a finished stream.
fn reopen(mem: &Memory) {
    // SeqCst: pairs with the fence in `finish_stream` (see above); orders the entry's CAS
    // before the load of the state.
    fence(SeqCst);
    // Relaxed: the fence orders it; the CAS below decides.
    let word = mem.state().load(Relaxed);
    if state_of(word) == STATE_FINISHED {
        // Relaxed: nothing is published with the state turning ready again; a CAS from exactly
        // the word seen, so that a delete (or another change) made meanwhile stands.
        let _ = mem
            .state()
            .compare_exchange(word, with_state(word, STATE_READY), Relaxed, Relaxed);
    }
}

/// How many entries of the producer table are held (by live producers, by dead ones not yet
/// repaired, or, in a damaged segment, by an owner word that names no process).
pub(crate) fn producers_attached(mem: &Memory) -> u32 {
    let n = mem.geometry().max_producers;
    (0..n)
        .filter(|&index| {
            mem.participant(Role::Producer, index).is_some_and(|p| {
                // Acquire: pairs with the Release of `free_entry`, so a producer's commits made
                // before it left are visible to whoever saw its entry free (`finish_stream`).
                decode_owner(p.owner.load(Acquire)).0 != 0
            })
        })
        .count() as u32
}

/// Whether a consumer of this segment finding its ring empty moves on to the segment that
/// replaced it (a resize): the coordinator marked it replaced, and no producer holds an entry
/// of it any more (each producer leaves after its last frame here, before its first there), so
/// nothing more will be written to it. The consumer still looks at the ring once more after
/// this says yes: the Acquire of the producer entries makes their last frames visible.
///
/// MPMC producers come and go independently, and one that sends nothing would keep its
/// consumers here for good: an MPMC consumer leaves once nothing will ever again be taken from
/// the segment (`mpmc::drained_for_good`), producers still attached or not.
pub(crate) fn followable(mem: &Memory) -> bool {
    if mem.moved_to() == 0 {
        return false;
    }
    match mem.geometry().kind {
        Kind::Mpmc => mpmc::drained_for_good(mem),
        Kind::Spsc | Kind::Broadcast => producers_attached(mem) == 0,
    }
}

/// Ends the stream, if no producer holds an entry (the caller has left its own): marks the
/// state `FINISHED` (counting one more finish) and wakes the consumers, which take what is
/// left and then get `Closed`. Returns whether it marked the stream finished; `false` when
/// another producer is attached (its own finish will end the stream), when the channel was
/// deleted, or when it was finished already.
pub(crate) fn finish_stream(mem: &Memory) -> bool {
    match mark_finished(mem) {
        Some(marked) => confirm_finished(mem, marked),
        None => false,
    }
}

/// The first half of [`finish_stream`]: if no producer holds an entry and the state is
/// `READY`, stores `FINISHED` with the count of finishes one higher, and returns that word.
pub(crate) fn mark_finished(mem: &Memory) -> Option<u32> {
    if producers_attached(mem) != 0 {
        return None;
    }
    // Relaxed: the CAS below decides.
    let mut word = mem.state().load(Relaxed);
    loop {
        if state_of(word) != STATE_READY {
            return None;
        }
        let mark = with_state(word.wrapping_add(FINISH_ONE), STATE_FINISHED);
        // Release: pairs with the Acquire in `Consumer::ended`: every frame committed before
        // the finish (this producer's, and those of producers whose entries were seen free
        // above) is visible to a consumer that sees the mark.
        match mem.state().compare_exchange(word, mark, Release, Relaxed) {
            Ok(_) => return Some(mark),
            Err(now) => word = now,
        }
    }
}

/// The second half of [`finish_stream`], after the mark `marked`: a producer admitted
/// meanwhile may not have seen the mark (`reopen`); then the count after the fence sees it,
/// and the mark is taken back, by a CAS from exactly the word stored: a later finish has a
/// higher count, so a stale take-back cannot undo it. Otherwise wakes the consumers. Returns
/// whether the mark stands.
pub(crate) fn confirm_finished(mem: &Memory, marked: u32) -> bool {
    // SeqCst: pairs with the fence in `reopen` (store-buffer pattern: mark, fence, count).
    fence(SeqCst);
    if producers_attached(mem) != 0 {
        // Relaxed: only the exact word stored by `mark_finished` is taken back.
        let _ =
            mem.state()
                .compare_exchange(marked, with_state(marked, STATE_READY), Relaxed, Relaxed);
        return false;
    }
    crate::wait::wake_consumers(mem);
    true
}

/// The largest pid Linux can hand out (`PID_MAX_LIMIT` on 64-bit systems, 2^22).
pub(crate) const PID_MAX_LIMIT: u32 = 1 << 22;

/// Frees entry `index` of `role` if its owner word is still `owner`. Returns whether it did.
pub(crate) fn free_entry(mem: &Memory, role: Role, index: u32, owner: u64) -> bool {
    let Some(p) = mem.participant(role, index) else {
        return false;
    };
    let (_, incarnation) = decode_owner(owner);
    // Relaxed: only the holder of `owner` (or the coordinator, for a dead one) frees it, and
    // nobody can take an entry that is held, so it stays `owner` until the CAS below.
    if mem.geometry().kind == Kind::Broadcast
        && role == Role::Consumer
        && p.owner.load(Relaxed) == owner
    {
        // A free subscriber entry holds nobody back (see `broadcast::initialise`).
        broadcast::forget_subscriber(p);
    }
    // Release: pairs with the Acquire in `take_entry` and `Membership::adopt`.
    p.owner
        .compare_exchange(owner, encode_owner(0, incarnation), Release, Relaxed)
        .is_ok()
}

impl Membership {
    /// Takes the first free entry of `role`'s table for this process.
    fn join(mem: &Memory, role: Role) -> Result<Membership> {
        let (index, owner) = take_entry(mem, role, sys::pid(), sys::own_start_time())?;
        Ok(Membership {
            role,
            index,
            owner,
            lease: None,
        })
    }

    /// Takes over entry `index` of `role`, which a coordinator admitted this process to with
    /// owner word `owner`.
    fn adopt(
        mem: &Memory,
        role: Role,
        index: u32,
        owner: u64,
        lease: Option<Arc<dyn Lease>>,
    ) -> Result<Membership> {
        let p = mem.participant(role, index).ok_or_else(|| {
            Error::Corrupted(format!("the coordinator admitted us to {role} entry {index}, which the segment does not have"))
        })?;
        // Acquire: pairs with the Release in `free_entry` through the coordinator's CAS in
        // `take_entry` (a read-modify-write continues the release sequence).
        let now = p.owner.load(Acquire);
        let m = Membership {
            role,
            index,
            owner,
            lease,
        };
        if now != owner {
            let (pid, _) = decode_owner(now);
            if let Some(lease) = &m.lease {
                lease.closed(role, index, owner);
            }
            return Err(Error::Busy(format!(
                "{role} entry {index} was admitted to us but is held by pid {pid} now"
            )));
        }
        Ok(m)
    }

    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    /// The last steps of a handle's move to the segment `mem` that replaced its own, where it
    /// holds this entry (`follow`): its ring core made there (`ring`), and its pollable
    /// descriptor, if any, watching there. If either fails, the entry is given back.
    pub(crate) fn settle_in<R>(
        &self,
        mem: &Arc<Memory>,
        ring: Result<R>,
        pollable: Option<&mut crate::pollable::Pollable>,
    ) -> Result<R> {
        let done = ring.and_then(|r| match pollable {
            Some(p) => p.retarget(mem, self).map(|()| r),
            None => Ok(r),
        });
        if done.is_err() {
            self.leave(mem);
        }
        done
    }

    /// The channel was resized (`mem`'s `moved` word says so): this entry's successor in the
    /// segment that replaced this one (taken for this process by the coordinator), with that
    /// segment's memory. The caller leaves this entry once it is done with this segment.
    /// `None` if the segment was not replaced: the word was overwritten (shared memory is
    /// untrusted), and is put right, by the coordinator that says so, or here for a segment
    /// that no coordinator serves (only a coordinator resizes). `Unavailable` when the
    /// coordinator cannot be reached.
    pub(crate) fn follow(&self, mem: &Memory) -> Result<Option<(Arc<Memory>, Membership)>> {
        let Some(lease) = &self.lease else {
            let seen = mem.moved_to();
            // Relaxed: a flag (see `Memory::moved_to`); from exactly the value seen.
            let _ = mem
                .producer_line()
                .moved
                .compare_exchange(seen, 0, Relaxed, Relaxed);
            tracing::warn!(
                moved = seen,
                "damage: a segment no coordinator serves says it was replaced by a resize; word cleared"
            );
            return Ok(None);
        };
        let Some((seg, index, owner)) = lease.follow(self.role, self.index, self.owner)? else {
            return Ok(None);
        };
        let m = Membership::adopt(&seg.mem, self.role, index, owner, seg.lease.clone())?;
        Ok(Some((Arc::clone(&seg.mem), m)))
    }

    pub(crate) fn incarnation(&self) -> u32 {
        crate::layout::decode_owner(self.owner).1
    }

    pub(crate) fn role(&self) -> Role {
        self.role
    }

    pub(crate) fn participant<'m>(&self, mem: &'m Memory) -> &'m Participant {
        mem.participant(self.role, self.index)
            .expect("index was checked on join")
    }

    /// Whether this process holds the entry: `false` in a child forked after the handle was
    /// opened, where the handle's drop must leave shared state alone (it is the parent's).
    pub(crate) fn held_here(&self) -> bool {
        decode_owner(self.owner).0 == sys::pid()
    }

    /// Frees the entry, if it is still ours, and tells the coordinator that admitted it. A
    /// handle dropped in a child forked after it was opened leaves the entry alone: it is the
    /// parent's.
    pub(crate) fn leave(&self, mem: &Memory) {
        if decode_owner(self.owner).0 != sys::pid() {
            return;
        }
        free_entry(mem, self.role, self.index, self.owner);
        if let Some(lease) = &self.lease {
            lease.closed(self.role, self.index, self.owner);
        }
    }
}

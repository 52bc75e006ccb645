//! Shared-memory segments: create, open (validating), unlink; admission of producers and
//! consumers to a segment's participant tables.

use crate::consumer::Consumer;
use crate::error::{Error, Result};
use crate::layout::{
    self, ChannelConfig, Geometry, Kind, Participant, Role, STATE_INITIALISING, STATE_READY,
    decode_owner, encode_owner,
};
use crate::producer::Producer;
use crate::region::{self, Memory};
use crate::sync::Ordering::{Acquire, Relaxed, Release};
use crate::{mpmc, spsc, sys};
use memmap2::{MmapOptions, MmapRaw};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long [`Segment::open`] waits for a segment that is still being initialised.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest segment name.
pub const MAX_NAME_LEN: usize = 200;

/// Checks a segment name: 1 to [`MAX_NAME_LEN`] characters of `[A-Za-z0-9._-]`, not starting
/// with `.` (so no name is a path or a hidden file).
pub fn validate_name(name: &str) -> Result<()> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty() || name.len() > MAX_NAME_LEN || !ok_chars || name.starts_with('.') {
        return Err(Error::InvalidArgument(format!(
            "segment name {name:?} must be 1 to {MAX_NAME_LEN} characters of [A-Za-z0-9._-] and not start with '.'"
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

impl Segment {
    /// Creates a named segment for a channel of shape `config`, with permission bits
    /// `config.mode`. Fails with `AlreadyExists` if the name is taken.
    pub fn create(name: &str, config: &ChannelConfig) -> Result<Segment> {
        validate_name(name)?;
        let geo = Geometry::new(config)?;
        let fd = sys::shm_create(name, config.mode)?;
        match Segment::initialise(&fd, geo, config.mode, 0) {
            Ok(mem) => Ok(Segment {
                mem,
                name: Some(name.into()),
            }),
            Err(e) => {
                let _ = sys::shm_unlink(name);
                Err(e)
            }
        }
    }

    /// Creates an unnamed segment in an anonymous shared-memory file (`memfd`). It is shared
    /// with threads, and with children forked after this call; nothing is left behind when the
    /// last mapping goes away.
    pub fn anonymous(config: &ChannelConfig) -> Result<Segment> {
        let geo = Geometry::new(config)?;
        let fd = sys::memfd()?;
        let mem = Segment::initialise(&fd, geo, config.mode, 0)?;
        Ok(Segment { mem, name: None })
    }

    /// Sizes, maps and initialises a fresh object; turns it ready last.
    fn initialise(fd: &OwnedFd, geo: Geometry, mode: u32, generation: u64) -> Result<Arc<Memory>> {
        sys::set_len(fd, geo.total_size)?;
        let map = map(fd, geo.total_size)?;
        region::write_header(
            &map,
            &geo.header(sys::pid(), mode, sys::now_unix_ns(), generation),
        );
        let mem = Memory::new(map, geo);
        if geo.kind == Kind::Mpmc {
            mpmc::initialise(&mem);
        }
        // Release: pairs with the Acquire in `open`; everything written above is visible to a
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
        let fd = sys::shm_open(name)?;
        let deadline = Instant::now() + timeout;
        let not_ready = |what: &str| {
            Error::Unavailable(format!(
                "segment {name:?} {what} after {timeout:?}; its creator may have died while creating it"
            ))
        };
        // The creator sizes the object right after creating it: wait for that.
        let len = loop {
            let len = sys::file_len(&fd)?;
            if len >= layout::HEADER_SIZE {
                break len;
            }
            if Instant::now() >= deadline {
                return Err(not_ready("still has no size"));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let map = map(&fd, len)?;
        loop {
            // Acquire: pairs with the Release in `initialise`.
            match region::state(&map).load(Acquire) {
                STATE_READY => break,
                STATE_INITIALISING if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                STATE_INITIALISING => return Err(not_ready("is still being initialised")),
                other => {
                    return Err(Error::Corrupted(format!(
                        "segment {name:?} is in unknown state {other}"
                    )));
                }
            }
        }
        let header = region::read_header(&map).expect("mapping holds a header");
        let geo = Geometry::from_header(&header, len)
            .map_err(|e| prefix(e, &format!("segment {name:?}")))?;
        Ok(Segment {
            mem: Arc::new(Memory::new(map, geo)),
            name: Some(name.into()),
        })
    }

    /// Removes a segment's name. Processes that have it mapped keep using it; the memory is
    /// freed when the last one unmaps it.
    pub fn unlink(name: &str) -> Result<()> {
        validate_name(name)?;
        sys::shm_unlink(name)
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

    /// Takes a free entry of the producer table and returns a producer handle on it; `Busy` if
    /// every entry is taken (an SPSC channel has one).
    pub fn producer(&self) -> Result<Producer> {
        let m = Membership::join(&self.mem, Role::Producer)?;
        Producer::new(Arc::clone(&self.mem), m)
    }

    /// Takes a free entry of the consumer table and returns a consumer handle on it; `Busy` if
    /// every entry is taken. An SPSC consumer resumes exactly where the previous one stopped.
    pub fn consumer(&self) -> Result<Consumer> {
        let m = Membership::join(&self.mem, Role::Consumer)?;
        Consumer::new(Arc::clone(&self.mem), m)
    }

    /// A snapshot of the channel's counters, read without stopping anyone.
    pub fn stats(&self) -> SegmentStats {
        let geo = self.mem.geometry();
        let table = |role, n| {
            (0..n)
                .filter_map(|i| {
                    let p = self.mem.participant(role, i)?;
                    // Relaxed: statistics.
                    let (pid, _) = decode_owner(p.owner.load(Relaxed));
                    (pid != 0).then(|| ParticipantStats {
                        index: i,
                        pid,
                        frames: p.frames.load(Relaxed),
                        bytes: p.bytes.load(Relaxed),
                    })
                })
                .collect()
        };
        SegmentStats {
            depth: match geo.kind {
                Kind::Spsc => spsc::depth_bytes(&self.mem),
                Kind::Mpmc => mpmc::depth_slots(&self.mem),
            },
            producers: table(Role::Producer, geo.max_producers),
            consumers: table(Role::Consumer, geo.max_consumers),
        }
    }
}

fn prefix(e: Error, what: &str) -> Error {
    match e {
        Error::Corrupted(m) => Error::Corrupted(format!("{what}: {m}")),
        Error::Incompatible(m) => Error::Incompatible(format!("{what}: {m}")),
        other => other,
    }
}

/// Counters of a channel; see [`Segment::stats`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentStats {
    /// Bytes (SPSC, headers and padding included) or frames (MPMC) in the ring.
    pub depth: u64,
    /// The admitted producers.
    pub producers: Vec<ParticipantStats>,
    /// The admitted consumers.
    pub consumers: Vec<ParticipantStats>,
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
}

/// An entry of a participant table held by a handle.
#[derive(Debug)]
pub(crate) struct Membership {
    role: Role,
    index: u32,
    owner: u64,
}

impl Membership {
    /// Takes the first free entry of `role`'s table.
    fn join(mem: &Memory, role: Role) -> Result<Membership> {
        let geo = mem.geometry();
        let n = match role {
            Role::Producer => geo.max_producers,
            Role::Consumer => geo.max_consumers,
        };
        let pid = sys::pid();
        let mut holders = Vec::new();
        for index in 0..n {
            let p = mem
                .participant(role, index)
                .expect("index below the table size");
            // Relaxed: a guess, confirmed by the CAS.
            let cur = p.owner.load(Relaxed);
            let (holder, incarnation) = decode_owner(cur);
            if holder != 0 {
                holders.push(holder);
                continue;
            }
            let owner = encode_owner(pid, incarnation.wrapping_add(1));
            // Acquire: pairs with the Release in `leave`, so a predecessor's writes to the ring
            // and cursors happen before ours.
            if p.owner
                .compare_exchange(cur, owner, Acquire, Relaxed)
                .is_ok()
            {
                return Ok(Membership { role, index, owner });
            }
        }
        holders.truncate(8);
        Err(Error::Busy(format!(
            "every {role} entry of this {} channel is taken (by pids {holders:?})",
            geo.kind
        )))
    }

    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    pub(crate) fn participant<'m>(&self, mem: &'m Memory) -> &'m Participant {
        mem.participant(self.role, self.index)
            .expect("index was checked on join")
    }

    /// Frees the entry, if it is still ours.
    pub(crate) fn leave(&self, mem: &Memory) {
        let (_, incarnation) = decode_owner(self.owner);
        // Release: pairs with the Acquire in `join`.
        let _ = self.participant(mem).owner.compare_exchange(
            self.owner,
            encode_owner(0, incarnation),
            Release,
            Relaxed,
        );
    }
}

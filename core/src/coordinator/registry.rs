//! What the coordinator knows: its channels, the client processes it watches, who was admitted
//! where, and the repairs under way. Answers requests and repairs after deaths; the socket side
//! is `server.rs`.

use super::record;
use partitions::Partitioned;

mod partitions;
use crate::error::{Error, Result};
use crate::layout::{ChannelConfig, Geometry, Kind, Origin, Role, decode_owner, encode_owner};
use crate::protocol::{
    ChannelInfo, ChannelStats, ParticipantInfo, Reply, Request, validate_channel_name,
};
use crate::repair::{self, Repaired};
use crate::segment::{Segment, free_entry, take_entry};
use crate::sync::Ordering::{Relaxed, Release, SeqCst};
use crate::units::format_size_exact;
use crate::{sys, wait};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// Most channels one coordinator serves.
pub(super) const MAX_CHANNELS: usize = 4096;

/// Epoll tokens of pidfds carry this bit; the rest is the pid.
pub(super) const PIDFD_TOKEN: u64 = 1 << 63;

/// Who sent a request: the kernel's record of the connecting process.
#[derive(Clone, Debug)]
pub(super) struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// An entry of a channel's participant table that the coordinator admitted a process to (or
/// found held when it adopted the segment).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Admission {
    channel: String,
    generation: u64,
    role: Role,
    index: u32,
    owner: u64,
}

/// A client process: watched through its pidfd while it has a connection or holds an entry.
struct Proc {
    pidfd: OwnedFd,
    start_time: u64,
    conns: usize,
    admissions: Vec<Admission>,
}

/// A dead participant's entry waiting for its repair to finish.
#[derive(Clone, Debug)]
struct Dead {
    role: Role,
    index: u32,
    owner: u64,
    pid: u32,
    since: Instant,
    /// When to try again after a pending pass, and the wait that doubles each time (a live
    /// participant descheduled mid-claim, or a hostile one, must not keep the loop busy).
    next_try: Instant,
    backoff: Duration,
}

/// Longest wait between two tries of a pending repair.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// One channel.
struct Channel {
    /// The memfd's name, `shmring.<namespace>@<euid>.<generation>.<channel>` (for the log).
    object: String,
    seg: Segment,
    fd: OwnedFd,
    dead: Vec<Dead>,
    /// A dead coordinator's repair claim is still to be finished (`finish_repair_claim`).
    claim_pending: bool,
    rate: Rate,
    /// Its segment was found truncated and that was logged (a sealed segment cannot shrink:
    /// the SIGBUS guard's mark is looked at as defence in depth).
    damage_logged: bool,
    /// Times the channel was resized.
    resizes: u64,
    /// The generation this one replaced in a resize, while it is drained: its producers leave
    /// it on their next send, its consumers once it is empty and every producer left (see
    /// ARCHITECTURE.md, "Online resize"). Retired (`retire_drained`) when nobody holds an
    /// entry of it and nothing is left in it for a consumer.
    prev: Option<Box<Channel>>,
    /// The entries taken in this generation for the holders of `prev`'s entries, by `prev`'s
    /// `(role, index, owner)`: handed over when they follow (`follow`). So a broadcast
    /// subscriber is counted here from the first frame written here, before it arrives; a
    /// producer that has not moved yet still counts as attached here (an end of stream waits
    /// for it) and keeps its place (no producer opened meanwhile takes it).
    heirs: HashMap<Entry, (u32, u64)>,
    /// The entries handed to followers, by the follower's pid and its entry in `prev`: a
    /// follow asked again (its reply was lost, the client gave up waiting) gets the same one.
    followed: HashMap<(u32, Entry), (u32, u64)>,
    /// `prev`'s repair counters (repairs, redelivered, skipped) when they were copied here at
    /// the resize: what it counts beyond them is added here when it is retired.
    carried: [u64; 3],
}

impl Channel {
    /// A channel of one generation, with nothing to repair yet.
    fn new(object: String, seg: Segment, fd: OwnedFd) -> Channel {
        let stats = seg.stats();
        Channel {
            object,
            seg,
            fd,
            dead: Vec::new(),
            claim_pending: false,
            damage_logged: false,
            rate: Rate {
                at: Instant::now(),
                frames_in: stats.frames_in,
                frames_out: stats.frames_out,
                per_s_in: 0.0,
                per_s_out: 0.0,
            },
            resizes: 0,
            prev: None,
            heirs: HashMap::new(),
            followed: HashMap::new(),
            carried: [0; 3],
        }
    }

    fn generation(&self) -> u64 {
        self.seg.origin().generation
    }

    /// This generation of the channel, or the one it replaced, by number.
    fn generation_mut(&mut self, generation: u64) -> Option<&mut Channel> {
        if self.generation() == generation {
            return Some(self);
        }
        self.prev
            .as_deref_mut()
            .filter(|p| p.generation() == generation)
    }

    /// Runs `f` on the generation this one replaced, if any, then on this one.
    fn each_generation(&mut self, mut f: impl FnMut(&mut Channel)) {
        if let Some(p) = self.prev.as_deref_mut() {
            f(p);
        }
        f(self);
    }

    /// This generation and the one it replaced, if any.
    fn generations(&self) -> impl Iterator<Item = &Channel> {
        self.prev
            .as_deref()
            .into_iter()
            .chain(std::iter::once(self))
    }
}

/// An entry of a participant table: role, index, owner word.
type Entry = (Role, u32, u64);

/// Who holds which entries of which channel generation, by the coordinator's books:
/// `(role, index, owner word)` per `(channel, generation)`.
type Books<'a> = HashMap<(&'a str, u64), Vec<(Role, u32, u64)>>;

/// An admission the reply for which may not reach its client: undone if the connection closes
/// before the reply is written (see `server.rs`).
#[derive(Clone, Debug)]
pub(super) struct Admitted {
    pid: u32,
    adm: Admission,
}

/// Frame rates over the last sampling interval.
#[derive(Clone, Copy, Debug)]
struct Rate {
    at: Instant,
    frames_in: u64,
    frames_out: u64,
    per_s_in: f64,
    per_s_out: f64,
}

/// The coordinator's state.
pub(super) struct Registry {
    namespace: String,
    prefix: String,
    channels: BTreeMap<String, Channel>,
    procs: HashMap<u32, Proc>,
    next_generation: u64,
    max_channel_bytes: u64,
    /// Processes found dead since the server last looked: their connections are closed.
    dead_pids: Vec<u32>,
    /// Per-user limits (see `Quotas`).
    quotas: Quotas,
    /// Where the record of the namespace's live channels is kept (`record.rs`).
    record: std::path::PathBuf,
    /// Channels the record lists as live that no process has shown yet (since this coordinator
    /// started): adopted if a client hands exactly that segment back; dropped when a channel of
    /// the name is created again.
    pending: BTreeMap<String, record::Entry>,
    /// Deleted channel generations that admitted processes still hold, by `(channel,
    /// generation)`: their memory stays charged to their owner until the last holder closes
    /// or dies (the holders' admissions stay in the books meanwhile); then it is freed
    /// (`free_deleted`).
    deleted: HashMap<(String, u64), Deleted>,
    /// Partitioned channels by name (their partitions are in `channels`; `partitions.rs`).
    partitioned: BTreeMap<String, Partitioned>,
    /// The number the next consumer-group member gets.
    next_member: u64,
}

/// A deleted channel generation that admitted processes still hold.
struct Deleted {
    uid: u32,
    bytes: u64,
    /// The segment's descriptor, to free its memory by when the last holder is gone.
    fd: OwnedFd,
    /// Its size.
    len: usize,
}

/// Frees the memory of a deleted segment that no admitted process holds any more, all but its
/// first page (found in review of step 5: a process that kept a descriptor or a mapping of the
/// segment after closing its handle kept the memory alive, uncharged, for as long as it
/// liked). The memory is the coordinator's (it allocated the segment), so it must not outlive
/// the charge. A straggler that still maps the segment reads zeros past the first page:
/// cursors, entries and ring alike, which read as an empty ring; the first page, with the
/// header and its state word `DELETED`, is kept, so a consumer gets `Closed`. (One that writes
/// there again allocates those pages itself, in its own memory cgroup.)
fn free_deleted(name: &str, generation: u64, fd: &OwnedFd, len: usize) {
    let start = sys::page_size();
    if len <= start {
        return;
    }
    match sys::punch_hole(fd, start, len - start) {
        Ok(()) => {
            tracing::debug!(channel = %name, generation, bytes = len - start, "deleted channel's memory freed");
        }
        Err(e) => {
            tracing::warn!(channel = %name, generation, error = %e, "cannot free a deleted channel's memory");
        }
    }
}

/// The prefix of the names of a namespace's segments (sealed memfds):
/// `shmring.<namespace>@<euid>.`; each segment is `<prefix><generation>.<channel>`. The uid
/// keeps two users' namespaces of the same name apart.
pub(super) fn object_prefix(namespace: &str) -> String {
    format!("shmring.{namespace}@{}.", sys::euid())
}

/// `<generation>.<channel>`, the rest of a segment's name after the namespace's prefix.
fn parse_object(rest: &str) -> Option<(u64, String)> {
    let (g, name) = rest.split_once('.')?;
    let generation = g
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| g.parse::<u64>().ok())??;
    validate_channel_name(name).ok()?;
    Some((generation, name.to_string()))
}

fn token_of(pid: u32) -> u64 {
    PIDFD_TOKEN | u64::from(pid)
}

/// Whether process `pid`, which started at `start_time` (zero: unknown), is alive; if so, a
/// pidfd that will tell when it exits. The pidfd decides; the start time, where `/proc` shows
/// it, only tells a reused pid from the original owner.
fn live_pidfd(pid: u32, start_time: u64) -> Option<OwnedFd> {
    if pid == 0 {
        return None;
    }
    let fd = sys::pidfd_open(pid).ok()?; // ESRCH: no such process
    if let Some(s) = sys::proc_stat(pid)
        && start_time != 0
        && s.start_time != start_time
    {
        return None; // another process has the pid now
    }
    (!sys::pidfd_exited(&fd)).then_some(fd)
}

/// Whether `peer` may access a channel of `origin` for `want` (a mask of 4 = read, 2 = write),
/// by the owner/group/other bits of its mode, as for a file; root may do anything.
fn permits(peer: &Peer, origin: &Origin, want: u32) -> bool {
    if peer.uid == 0 {
        return true;
    }
    let shift = if peer.uid == origin.owner_uid {
        6
    } else if peer.gid == origin.owner_gid || peer.groups.contains(&origin.owner_gid) {
        3
    } else {
        0
    };
    (origin.mode >> shift) & want == want
}

impl Registry {
    pub(super) fn new(
        namespace: &str,
        max_channel_bytes: u64,
        record: std::path::PathBuf,
    ) -> Registry {
        Registry {
            namespace: namespace.to_string(),
            prefix: object_prefix(namespace),
            channels: BTreeMap::new(),
            procs: HashMap::new(),
            next_generation: 1,
            max_channel_bytes,
            dead_pids: Vec::new(),
            quotas: Quotas::default(),
            record,
            pending: BTreeMap::new(),
            deleted: HashMap::new(),
            partitioned: BTreeMap::new(),
            // Member numbers are not reused by a restarted coordinator (a member of the old one
            // leaving must not take a new member of the same process with it).
            next_member: sys::now_unix_ns().max(1),
        }
    }

    /// Writes the record of the live channels: those served, and those listed before and not
    /// yet shown (`pending`).
    fn persist(&self) -> Result<()> {
        let mut c = record::Contents {
            next_generation: self.next_generation,
            channels: self.pending.clone(),
            partitioned: self
                .partitioned
                .iter()
                .map(|(name, p)| (name.clone(), p.partitions))
                .collect(),
        };
        for (name, ch) in &self.channels {
            let id = sys::file_id(&ch.fd)?;
            let o = ch.seg.origin();
            c.channels.insert(
                name.clone(),
                record::Entry {
                    generation: o.generation,
                    owner_uid: o.owner_uid,
                    owner_gid: o.owner_gid,
                    mode: o.mode,
                    dev: id.dev,
                    ino: id.ino,
                },
            );
        }
        record::save(&self.record, &c)
    }

    /// [`Registry::persist`], logging a failure (`what` happened all the same).
    fn persist_or_log(&self, what: &str) {
        if let Err(e) = self.persist() {
            tracing::error!(record = %self.record.display(), error = %e, "cannot record the channels after {what}");
        }
    }

    /// Processes found dead since the last call, whose connections must be closed.
    pub(super) fn take_dead_pids(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.dead_pids)
    }

    /// Adopts the channels a previous coordinator of the namespace left: its segments are
    /// sealed memfds with no name in `/dev/shm`, found in the processes still using them
    /// (`/proc/<pid>/fd`, where this coordinator may look: every process for root, its own
    /// user's otherwise). Only the segments the record (`record.rs`) lists as live are adopted,
    /// with the owner, group and mode the record gives; their live owners of entries are
    /// watched and what dead ones left is repaired. Channels whose users this coordinator
    /// cannot inspect come back when a client hands their segment back
    /// ([`Registry::handed_back`]); a channel nobody holds is gone. With no record (a first
    /// start, or the runtime directory was wiped) nothing is adopted: who owns a segment would
    /// be the header's word, which any participant can rewrite.
    pub(super) fn adopt(&mut self, epoll: &Epoll) -> Result<()> {
        self.remove_named_objects();
        let mut found: BTreeMap<String, Vec<(u64, OwnedFd)>> = BTreeMap::new();
        for (rest, fd) in sys::memfds_in_processes(&self.prefix) {
            let Some((generation, name)) = parse_object(&rest) else {
                tracing::debug!(object = %rest, "ignoring a memfd whose name is not <generation>.<channel>");
                continue;
            };
            self.next_generation = self.next_generation.max(generation.saturating_add(1));
            found.entry(name).or_default().push((generation, fd));
        }
        let contents = match record::load(&self.record) {
            Ok(c) => c,
            Err(e) => {
                // Kept for whoever looks into it, not overwritten by the empty record below
                // (found in review of step 5: an unreadable record, e.g. of a newer version,
                // was replaced, and every channel in it lost for good). If it cannot even be
                // set aside, the coordinator does not start.
                let aside = self.record.with_extension(format!(
                    "channels.unreadable-{}",
                    sys::now_unix_ns() / 1_000_000_000
                ));
                std::fs::rename(&self.record, &aside).map_err(|r| {
                    Error::os(
                        format!(
                            "{e}; and setting it aside as {} failed (move or remove it, then start again)",
                            aside.display()
                        ),
                        r,
                    )
                })?;
                tracing::error!(error = %e, aside = %aside.display(), "the record of the channels cannot be read: set aside, adopting nothing");
                None
            }
        };
        let Some(contents) = contents else {
            if !found.is_empty() {
                tracing::warn!(record = %self.record.display(), segments = found.len(),
                    "no record of the namespace's channels: adopting none of the segments found (who owns them is recorded nowhere this coordinator trusts)");
            }
            return self.persist();
        };
        self.next_generation = self.next_generation.max(contents.next_generation);
        self.pending = contents.channels;
        // Their groups are not recorded: members join again (their next request is refused
        // with NotFound, which says so).
        self.partitioned = contents
            .partitioned
            .into_iter()
            .filter(|(_, n)| (2..=crate::layout::MAX_PARTITIONS).contains(n))
            .map(|(name, partitions)| {
                (
                    name,
                    Partitioned {
                        partitions,
                        group: None,
                    },
                )
            })
            .collect();
        for (name, candidates) in found {
            for (generation, fd) in candidates {
                if self.pending.get(&name).map(|e| e.generation) != Some(generation) {
                    tracing::warn!(channel = %name, generation, "not adopting a segment the record does not list as live (a deleted generation, or one of a lost record)");
                    continue;
                }
                // Found in /proc as a regular file of this user: ours, closed here.
                match self.adopt_fd(epoll, &name, generation, &mut Some(fd)) {
                    Ok(()) => {
                        tracing::info!(channel = %name, generation, "adopted");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(channel = %name, generation, error = %e, "not adopting a segment")
                    }
                }
            }
        }
        self.repair_pending();
        self.persist()
    }

    /// Removes the named segments (`/dev/shm/<prefix><generation>.<channel>`) an older shmringd
    /// left: anyone allowed to open such an object could truncate it, so they are not served.
    /// Their users keep their mappings. Only regular files owned by this coordinator's user are
    /// removed (the ones a coordinator of this user made); anything else under such a name is
    /// not this program's to delete, and is left alone with a warning.
    fn remove_named_objects(&self) {
        use std::os::unix::fs::MetadataExt;
        let Ok(objects) = sys::shm_list(&self.prefix) else {
            return;
        };
        for obj in objects {
            if parse_object(&obj[self.prefix.len()..]).is_none() {
                continue;
            }
            match std::fs::symlink_metadata(format!("/dev/shm/{obj}")) {
                Ok(m) if m.file_type().is_file() && m.uid() == sys::euid() => {
                    tracing::warn!(object = %obj, "removing a named segment left by an older shmringd (segments are sealed memfds now)");
                    self.remove_object(&obj);
                }
                Ok(m) => {
                    tracing::warn!(object = %obj, uid = m.uid(), "leaving /dev/shm/{obj} alone: named like this namespace's segments, but not a file of this user's; it is not served")
                }
                Err(_) => {}
            }
        }
    }

    /// A client hands back the segment of channel `name`, generation `generation` (after this
    /// coordinator restarted). Adopted if the channel is not served and the descriptor is what
    /// it claims to be; `Done` also when it is the segment already served.
    ///
    /// The descriptor comes back when it was not kept: it is the client's choice of file, whose
    /// last close may block (a lingering socket, a FUSE file), so the caller closes it off the
    /// event loop.
    pub(super) fn handed_back(
        &mut self,
        epoll: &Epoll,
        peer: &Peer,
        name: &str,
        generation: u64,
        mut fd: Option<OwnedFd>,
    ) -> (Answer, Option<OwnedFd>) {
        let plain = |reply| Answer {
            reply,
            fd: None,
            admitted: None,
        };
        let r = (|| {
            validate_channel_name(name)?;
            let given = fd.as_ref().ok_or_else(|| {
                Error::InvalidArgument("a segment handed back must come with its descriptor".into())
            })?;
            // A sealed memfd before anything else: `fstat` of a file on a FUSE mount waits for
            // the FUSE server, which may never answer; `F_GET_SEALS` and the name (`/proc`)
            // never reach the file's filesystem.
            if sys::seals(given).is_err() {
                return Err(Error::Corrupted(format!(
                    "the descriptor given as channel {name:?} is not a sealed memfd"
                )));
            }
            if let Some(ch) = self.channels.get(name) {
                let (served, given) = (sys::file_id(&ch.fd)?, sys::file_id(given)?);
                if (served.dev, served.ino) == (given.dev, given.ino) {
                    return Ok(());
                }
                return Err(Error::AlreadyExists(format!(
                    "channel {name:?} is served as generation {}; the segment handed back \
                     (generation {generation}) is not it",
                    ch.seg.origin().generation
                )));
            }
            self.adopt_fd(epoll, name, generation, &mut fd)?;
            if let Some(parent) = self.parent_of(name).map(str::to_string) {
                // The epoch in it may be an earlier coordinator's.
                self.publish_epoch(&parent);
            }
            self.next_generation = self.next_generation.max(generation.saturating_add(1));
            tracing::info!(channel = %name, generation, pid = peer.pid, uid = peer.uid, "adopted a segment handed back");
            self.repair_pending();
            self.persist_or_log("an adoption");
            Ok(())
        })();
        let answer = match r {
            Ok(()) => plain(Reply::Done),
            Err(e) => {
                tracing::debug!(channel = %name, generation, pid = peer.pid, error = %e, "segment handed back refused");
                let (code, message) = crate::protocol::ErrorCode::of(&e);
                plain(Reply::Error { code, message })
            }
        };
        (answer, fd)
    }

    /// Adopts `fd` as channel `name` of generation `generation`, once it has shown to be a
    /// segment this coordinator's user created under that name: a memfd (so it has no name in
    /// `/dev/shm` another user could open) owned by this user (a process of another user can
    /// make a memfd of any name and contents, but not one owned by this user), sealed against
    /// shrinking and growing, named `<prefix><generation>.<name>` (a memfd's name is set by its
    /// creator and never changes), which the record lists as the channel's live generation (that
    /// very file: its inode), and whose header validates and states that generation. The
    /// channel's owner, group and mode are the record's: a header that says otherwise was
    /// rewritten by a participant (it is logged, and ignored).
    ///
    /// The descriptor is taken out of `slot` only when adopted; otherwise it is left there.
    fn adopt_fd(
        &mut self,
        epoll: &Epoll,
        name: &str,
        generation: u64,
        slot: &mut Option<OwnedFd>,
    ) -> Result<()> {
        let Some(fd) = slot.as_ref() else {
            return Err(Error::InvalidArgument("no descriptor".into()));
        };
        let object = format!("{}{generation}.{name}", self.prefix);
        // In this order: a sealed memfd (`F_GET_SEALS`) of that name (`/proc/self/fd`) before
        // `fstat`, which for a file of another filesystem (FUSE) may wait on a server that
        // never answers; neither of the first two reaches the file's filesystem.
        let seals = sys::seals(fd)
            .map_err(|_| Error::Corrupted(format!("{object:?} is not a sealed memfd")))?;
        if seals & sys::SEGMENT_SEALS != sys::SEGMENT_SEALS {
            return Err(Error::Corrupted(format!(
                "{object:?} lacks the seals against shrinking and growing (seals {seals:#x})"
            )));
        }
        match sys::memfd_name(fd) {
            Some(n) if n == object => {}
            Some(n) => {
                return Err(Error::Corrupted(format!(
                    "the descriptor given as {object:?} is the memfd {n:?}"
                )));
            }
            None => {
                return Err(Error::Unavailable(format!(
                    "cannot read the name of the descriptor given as {object:?} (is /proc mounted?)"
                )));
            }
        }
        let id = sys::file_id(fd)?;
        let euid = sys::euid();
        if !id.regular || id.uid != euid {
            return Err(Error::PermissionDenied(format!(
                "the descriptor given as {object:?} is not a file of this coordinator's user \
                 (uid {euid}): it was not made by a coordinator of this namespace"
            )));
        }
        let entry = match self.pending.get(name) {
            Some(e) if e.generation == generation && (e.dev, e.ino) == (id.dev, id.ino) => *e,
            Some(e) => {
                return Err(Error::PermissionDenied(format!(
                    "{object:?} is not the live segment of channel {name:?} by this coordinator's \
                     record (generation {}, inode {}; given: inode {})",
                    e.generation, e.ino, id.ino
                )));
            }
            None => {
                return Err(Error::PermissionDenied(format!(
                    "channel {name:?} is not live by this coordinator's record ({}): a deleted \
                     generation, or a channel it does not know",
                    self.record.display()
                )));
            }
        };
        // A segment still initialising was being created when the previous coordinator died.
        let mut seg = Segment::attach(fd, &object, Duration::ZERO)?;
        let header = seg.origin();
        if header.generation != generation {
            return Err(Error::Corrupted(format!(
                "its header says generation {}, its name {generation}",
                header.generation
            )));
        }
        if (header.owner_uid, header.owner_gid, header.mode)
            != (entry.owner_uid, entry.owner_gid, entry.mode)
        {
            tracing::warn!(channel = %name, generation,
                header_uid = header.owner_uid, header_gid = header.owner_gid,
                header_mode = format_args!("{:o}", header.mode),
                uid = entry.owner_uid, gid = entry.owner_gid, mode = format_args!("{:o}", entry.mode),
                "damage: the segment's header names another owner or mode than the record; the record's are used");
        }
        seg.set_authority(entry.owner_uid, entry.owner_gid, entry.mode);
        let mem = &seg.mem;
        // Relaxed: information only (who adopted the segment).
        mem.repair_line()
            .owner
            .store(u64::from(sys::pid()), Relaxed);
        let geo = *mem.geometry();
        let mut dead = Vec::new();
        for (role, n) in [
            (Role::Producer, geo.max_producers),
            (Role::Consumer, geo.max_consumers),
        ] {
            for index in 0..n {
                let p = mem
                    .participant(role, index)
                    .expect("index below the table size");
                // Relaxed: the coordinator is the only one admitting; the owners' own stores
                // to the entry are not needed to decide liveness.
                let owner = p.owner.load(Relaxed);
                let (pid, _) = decode_owner(owner);
                if pid == 0 {
                    continue;
                }
                let start_time = p.start_time.load(Relaxed);
                let adm = Admission {
                    channel: name.to_string(),
                    generation,
                    role,
                    index,
                    owner,
                };
                if let Some(proc) = self.procs.get_mut(&pid)
                    && !sys::pidfd_exited(&proc.pidfd)
                {
                    // A process already watched: the same one unless both start times are
                    // known and differ (then the entry's owner was an earlier holder of the pid).
                    if proc.start_time == 0 || start_time == 0 || proc.start_time == start_time {
                        proc.admissions.push(adm);
                    } else {
                        dead.push(Dead::new(role, index, owner, pid));
                    }
                    continue;
                }
                match live_pidfd(pid, start_time) {
                    Some(pidfd) => {
                        epoll
                            .add(&pidfd, EpollEvent::new(EpollFlags::EPOLLIN, token_of(pid)))
                            .map_err(|e| Error::os("watching a process", e))?;
                        if let Some(old) = self.procs.insert(
                            pid,
                            Proc {
                                pidfd,
                                start_time,
                                conns: 0,
                                admissions: vec![adm],
                            },
                        ) {
                            let _ = epoll.delete(&old.pidfd);
                            self.dead_pids.push(pid);
                        }
                    }
                    None => dead.push(Dead::new(role, index, owner, pid)),
                }
            }
        }
        let is_dead =
            |role: Role, i: u32| dead.iter().any(|d: &Dead| d.role == role && d.index == i);
        let finished = repair::finish_repair_claim(mem, &is_dead).unwrap_or_else(|e| {
            tracing::warn!(channel = %name, error = %e, "the dead coordinator's repair claim is damaged; dropped");
            mem.repair_line().claim.store(0, Relaxed);
            Repaired::default()
        });
        repair::count(mem, &finished, false);
        if finished.skipped + finished.redelivered + finished.released > 0 {
            // A position skipped or a frame moved: sleepers look again, as after any repair
            // (`repair_channel`); a consumer parked on the skipped position waits otherwise.
            wait::notify(mem.producer_line(), false);
            wait::notify(mem.consumer_line(), false);
        }
        let mut ch = Channel::new(object, seg, slot.take().expect("checked above"));
        ch.dead = dead;
        ch.claim_pending = finished.pending;
        self.channels.insert(name.to_string(), ch);
        self.pending.remove(name);
        if finished.pending {
            // Retried with the repair passes until a live producer's claim no longer covers it.
            tracing::info!(channel = %name, "a dead coordinator's repair claim is pending");
        }
        Ok(())
    }

    fn remove_object(&self, obj: &str) {
        let object = CString::new(format!("/{obj}")).expect("listed names hold no NUL");
        if let Err(e) = sys::shm_unlink(&object) {
            tracing::warn!(object = %obj, error = %e, "cannot remove segment");
        }
    }

    /// Deletes every channel (the namespace is shutting down). The memory goes when the last
    /// process using a channel closes it.
    pub(super) fn remove_all(&mut self) {
        let channels = std::mem::take(&mut self.channels);
        let books = books(&self.procs);
        for (name, mut ch) in channels {
            ch.each_generation(|g| {
                // What dead producers left is skipped first, so consumers can drain past it.
                let held = held(&books, &name, g);
                repair_channel(&name, g, true, &held);
                g.seg.mark_deleted();
            });
        }
        // Every channel is deleted, those never shown again since the start included.
        self.pending.clear();
        self.persist_or_log("deleting every channel");
    }

    /// At a stop: removes the record of the channels if it lists none (nothing is left to
    /// adopt), and says whether it did.
    pub(super) fn remove_record_if_empty(&mut self) -> bool {
        if !self.channels.is_empty() || !self.pending.is_empty() {
            return false;
        }
        match std::fs::remove_file(&self.record) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => {
                tracing::warn!(record = %self.record.display(), error = %e, "cannot remove the empty record of channels");
                false
            }
        }
    }

    /// A client process connected. Returns the pidfd to watch if the process is new.
    pub(super) fn connected(&mut self, epoll: &Epoll, pid: u32, pidfd: OwnedFd) -> Result<()> {
        if let Some(p) = self.procs.get(&pid)
            && sys::pidfd_exited(&p.pidfd)
        {
            // The process we knew by this pid is gone (its event not yet handled), and the
            // pid was reused.
            self.exited(epoll, pid);
        }
        let start_time = sys::proc_stat(pid).map_or(0, |s| s.start_time);
        if let Some(p) = self.procs.get_mut(&pid) {
            p.conns += 1;
            return Ok(());
        }
        epoll
            .add(&pidfd, EpollEvent::new(EpollFlags::EPOLLIN, token_of(pid)))
            .map_err(|e| Error::os("watching a client process", e))?;
        self.procs.insert(
            pid,
            Proc {
                pidfd,
                start_time,
                conns: 1,
                admissions: Vec::new(),
            },
        );
        Ok(())
    }

    /// A connection of process `pid` closed. The process stays watched while it holds entries.
    pub(super) fn disconnected(&mut self, epoll: &Epoll, pid: u32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.conns = p.conns.saturating_sub(1);
        }
        self.forget_if_idle(epoll, pid);
    }

    fn forget_if_idle(&mut self, epoll: &Epoll, pid: u32) {
        if let Some(p) = self.procs.get(&pid)
            && p.conns == 0
            && p.admissions.is_empty()
            // A group member stays watched (its death must end its membership), also while
            // its client reconnects.
            && !self.is_member(pid)
        {
            let _ = epoll.delete(&p.pidfd);
            self.procs.remove(&pid);
        }
    }

    /// Process `pid` exited (its pidfd became readable): every entry it held is repaired.
    pub(super) fn exited(&mut self, epoll: &Epoll, pid: u32) {
        let Some(p) = self.procs.remove(&pid) else {
            return;
        };
        let _ = epoll.delete(&p.pidfd);
        self.dead_pids.push(pid);
        for a in p.admissions {
            let Some(ch) = self
                .channels
                .get_mut(&a.channel)
                .and_then(|c| c.generation_mut(a.generation))
            else {
                continue;
            };
            tracing::info!(channel = %a.channel, role = %a.role, index = a.index, pid, "participant died");
            ch.dead.push(Dead::new(a.role, a.index, a.owner, pid));
        }
        self.release_deleted();
        self.repair_pending();
        self.members_exited(pid);
    }

    /// Stops charging deleted generations nobody holds any more, and frees their memory.
    fn release_deleted(&mut self) {
        if self.deleted.is_empty() {
            return;
        }
        let books = books(&self.procs);
        self.deleted.retain(|(name, generation), d| {
            let held = books.contains_key(&(name.as_str(), *generation));
            if !held {
                tracing::debug!(channel = %name, generation, uid = d.uid, bytes = d.bytes, "deleted channel no longer held: its memory is no longer charged");
                free_deleted(name, *generation, &d.fd, d.len);
            }
            held
        });
    }

    /// When a pending repair is due next, if any is.
    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.channels
            .values()
            .flat_map(Channel::generations)
            .flat_map(|c| {
                let claim = c.claim_pending.then(Instant::now);
                claim.into_iter().chain(c.dead.iter().map(|d| d.next_try))
            })
            .min()
    }

    /// Runs the repairs that are due.
    pub(super) fn repair_pending(&mut self) {
        if !self
            .channels
            .values()
            .flat_map(Channel::generations)
            .any(|ch| !ch.dead.is_empty() || ch.claim_pending)
        {
            return;
        }
        let books = books(&self.procs);
        for (name, ch) in &mut self.channels {
            ch.each_generation(|g| {
                if !g.dead.is_empty() || g.claim_pending {
                    let held = held(&books, name, g);
                    repair_channel(name, g, false, &held);
                }
            });
        }
        self.retire_drained();
    }

    /// Frees the entries of channel `name` whose owner word names no process this coordinator
    /// admitted (or found holding it on adoption): the word was overwritten, and the entry
    /// would otherwise stay taken for good. An entry the books give to a live holder under
    /// another word gets that word back, so that the holder's handle can free it. Returns how
    /// many entries were put right; each is logged as damage.
    fn reclaim_strays(&self, books: &Books<'_>, name: &str) -> usize {
        let Some(ch) = self.channels.get(name) else {
            return 0;
        };
        ch.generations()
            .map(|g| Self::reclaim_strays_in(books, name, g))
            .sum()
    }

    /// [`Registry::reclaim_strays`] in one generation of a channel.
    fn reclaim_strays_in(books: &Books<'_>, name: &str, ch: &Channel) -> usize {
        if ch.seg.check().is_err() {
            return 0;
        }
        let held = held(books, name, ch);
        let mem = &ch.seg.mem;
        let geo = *mem.geometry();
        let mut fixed = 0;
        for (role, n) in [
            (Role::Producer, geo.max_producers),
            (Role::Consumer, geo.max_consumers),
        ] {
            for index in 0..n {
                let p = mem
                    .participant(role, index)
                    .expect("index below the table size");
                // Relaxed: only the coordinator admits; a holder's own store to its word is
                // its release, which the CAS below does not race with harm (it fails).
                let word = p.owner.load(Relaxed);
                let (pid, incarnation) = decode_owner(word);
                if pid == 0
                    || held.contains(&(role, index, word))
                    || ch.dead.iter().any(|d| d.role == role && d.index == index)
                {
                    continue; // free, held as the books say, or being repaired
                }
                let mut holders = held.iter().filter(|(r, i, _)| *r == role && *i == index);
                if let Some(&(_, _, right)) = holders.next() {
                    if holders.next().is_some() {
                        // A close not yet received and a newer admission: which word is the
                        // live one cannot be told; left alone (a close or a death settles it).
                        continue;
                    }
                    // Relaxed: puts back the word the holder was admitted with.
                    if p.owner
                        .compare_exchange(word, right, Relaxed, Relaxed)
                        .is_ok()
                    {
                        tracing::warn!(channel = %name, role = %role, index, word = format_args!("{word:#x}"),
                            holder = decode_owner(right).0,
                            "damage: an entry's owner word was overwritten; its holder's word is restored");
                        fixed += 1;
                    }
                    continue;
                }
                // Release: as in `free_entry` (a successor's admission CAS is Acquire).
                if p.owner
                    .compare_exchange(word, encode_owner(0, incarnation), Release, Relaxed)
                    .is_ok()
                {
                    tracing::warn!(channel = %name, role = %role, index, pid,
                        word = format_args!("{word:#x}"),
                        "damage: an entry's owner word names no process this coordinator admitted; entry reclaimed");
                    fixed += 1;
                }
            }
        }
        fixed
    }

    /// [`Registry::reclaim_strays`] for every channel.
    fn reclaim_all_strays(&self) -> usize {
        let books = books(&self.procs);
        self.channels
            .keys()
            .map(|name| self.reclaim_strays(&books, name))
            .sum()
    }

    /// Samples every channel's frame counters (called about once a second), and looks over
    /// every channel for damage: owner words naming no admitted process, a truncated segment.
    pub(super) fn sample_rates(&mut self) {
        self.reclaim_all_strays();
        let now = Instant::now();
        for (name, ch) in &mut self.channels {
            if let Some(p) = ch.prev.as_deref_mut()
                && let Err(e) = p.seg.check()
                && !p.damage_logged
            {
                tracing::error!(channel = %name, generation = p.generation(), error = %e, "damage: the segment of the generation being drained was truncated");
                p.damage_logged = true;
            }
            if let Err(e) = ch.seg.check() {
                if !ch.damage_logged {
                    tracing::error!(channel = %name, error = %e, "damage: the channel's segment was truncated");
                    ch.damage_logged = true;
                }
                continue;
            }
            if ch.seg.mem.moved_to() != 0 {
                clear_moved(name, ch);
            }
            // The generation being drained says which one replaced it, whatever was written
            // there since (producers left in it must find their way).
            let current = ch.generation();
            if let Some(p) = ch.prev.as_deref()
                && p.seg.check().is_ok()
                && p.seg.mem.moved_to() != current
            {
                tracing::warn!(channel = %name, generation = p.generation(), "damage: the drained generation's moved word was overwritten; restored");
                // SeqCst: as in `resize`.
                p.seg.mem.producer_line().moved.store(current, SeqCst);
                p.seg.mem.consumer_line().moved.store(current, SeqCst);
                wait::wake_all(&p.seg.mem);
            }
            let s = ch.seg.stats();
            let dt = now.duration_since(ch.rate.at).as_secs_f64();
            if dt > 0.0 {
                ch.rate = Rate {
                    at: now,
                    frames_in: s.frames_in,
                    frames_out: s.frames_out,
                    per_s_in: s.frames_in.wrapping_sub(ch.rate.frames_in) as f64 / dt,
                    per_s_out: s.frames_out.wrapping_sub(ch.rate.frames_out) as f64 / dt,
                };
            }
        }
        self.retire_drained();
    }

    /// Answers a request. A reply may carry a descriptor to send with it, and an admission to
    /// undo if it cannot be delivered.
    pub(super) fn handle(&mut self, epoll: &Epoll, peer: &Peer, req: Request) -> Answer {
        let plain = |reply| Answer {
            reply,
            fd: None,
            admitted: None,
        };
        let r = match req {
            Request::Create { name, config } if config.is_partitioned() => self
                .create_partitioned(peer, &name, &config)
                .map(|info| plain(Reply::Channel(info))),
            Request::Create { name, config } => config
                .check_partitions()
                .and_then(|()| self.refuse_partition(&name, "create"))
                .and_then(|()| self.create(peer, &name, &config))
                .map(|info| plain(Reply::Channel(info))),
            Request::Open { name, role } => self.open(epoll, peer, &name, role),
            Request::Close {
                name,
                generation,
                role,
                index,
                owner,
            } => {
                let adm = Admission {
                    channel: name,
                    generation,
                    role,
                    index,
                    owner,
                };
                if self.close(epoll, peer.pid, &adm) && adm.role == Role::Consumer {
                    self.partition_freed(&adm.channel);
                }
                Ok(plain(Reply::Done))
            }
            Request::Delete { name } if self.partitioned.contains_key(&name) => self
                .delete_partitioned(peer, &name)
                .map(|()| plain(Reply::Done)),
            Request::Delete { name } => self
                .refuse_partition(&name, "delete")
                .and_then(|()| self.delete(peer, &name))
                .map(|()| plain(Reply::Done)),
            Request::List => {
                self.reclaim_all_strays();
                let mut all: Vec<ChannelInfo> = self
                    .channels
                    .iter()
                    .map(|(name, ch)| info(name, &ch.seg))
                    .collect();
                all.extend(
                    self.partitioned
                        .keys()
                        .filter_map(|name| self.partitioned_info(name).ok()),
                );
                all.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(plain(Reply::Channels(all)))
            }
            Request::Stats { name } if self.partitioned.contains_key(&name) => self
                .partitioned_stats(peer, &name)
                .map(|s| plain(Reply::Stats(Box::new(s)))),
            Request::Stats { name } => {
                let books = books(&self.procs);
                self.reclaim_strays(&books, &name);
                self.stats(peer, &name)
                    .map(|s| plain(Reply::Stats(Box::new(s))))
            }
            // Served by `handed_back`, which the server calls with the descriptor.
            Request::Adopt { .. } => Err(Error::InvalidArgument(
                "a segment handed back must come with its descriptor".into(),
            )),
            // The connection figures are the server's: it fills them in.
            Request::Limits => Ok(plain(Reply::Limits(self.limits_of(peer.uid)))),
            Request::Resize { name, .. }
                if self.partitioned.contains_key(&name) || self.parent_of(&name).is_some() =>
            {
                Err(Error::InvalidArgument(format!(
                    "channel {name:?} is partitioned (or a partition): partitioned channels are \
                     not resized (their checkpoints name positions in the rings); create a \
                     larger channel instead"
                )))
            }
            Request::Resize { name, capacity } => self
                .resize(peer, &name, capacity)
                .map(|info| plain(Reply::Channel(info))),
            Request::OpenPartition {
                channel,
                partition,
                role,
                member,
            } => self.open_partition(epoll, peer, &channel, partition, role, member),
            Request::JoinGroup { channel, group } => {
                self.join_group(peer, &channel, &group).map(plain)
            }
            Request::GroupSync { channel, member } => {
                self.group_sync(peer, &channel, member).map(plain)
            }
            Request::LeaveGroup { channel, member } => {
                self.leave_group(peer, &channel, member);
                Ok(plain(Reply::Done))
            }
            Request::Follow {
                name,
                generation,
                role,
                index,
                owner,
            } => validate_channel_name(&name).and_then(|()| {
                self.follow(
                    peer,
                    Admission {
                        channel: name,
                        generation,
                        role,
                        index,
                        owner,
                    },
                )
            }),
        };
        r.unwrap_or_else(|e| {
            let (code, message) = crate::protocol::ErrorCode::of(&e);
            plain(Reply::Error { code, message })
        })
    }

    /// Undoes an admission whose reply never reached its client (the connection closed
    /// first): the client never learnt of the entry, so nobody would ever free it.
    pub(super) fn unadmit(&mut self, epoll: &Epoll, a: &Admitted) {
        tracing::debug!(channel = %a.adm.channel, pid = a.pid, "admission undone: its reply was not delivered");
        self.close(epoll, a.pid, &a.adm);
    }

    fn channel(&self, name: &str) -> Result<&Channel> {
        validate_channel_name(name)?;
        if let Some(e) = self.pending.get(name) {
            return Err(awaited(name, e));
        }
        let ch = self.channels.get(name).ok_or_else(|| {
            Error::NotFound(format!(
                "no channel {name:?} in namespace {:?} (create it first: `shmring create {}{name}`)",
                self.namespace,
                // A name that looks like an option goes after `--`.
                if name.starts_with('-') { "-- " } else { "" }
            ))
        })?;
        Ok(ch)
    }

    /// [`Registry::channel`], refusing a channel whose segment was found truncated (a sealed
    /// segment cannot be; the guard's mark is looked at as defence in depth). Deleting one is
    /// still possible.
    fn sound_channel(&self, name: &str) -> Result<&Channel> {
        let ch = self.channel(name)?;
        ch.seg
            .check()
            .map_err(|e| prefix_channel(e, name, "delete it and create it again"))?;
        Ok(ch)
    }

    fn create(&mut self, peer: &Peer, name: &str, config: &ChannelConfig) -> Result<ChannelInfo> {
        validate_channel_name(name)?;
        if self.partitioned.contains_key(name) {
            return Err(Error::AlreadyExists(format!(
                "channel {name:?} exists (partitioned); delete it first to change its shape"
            )));
        }
        if let Some(ch) = self.channels.get(name) {
            return Err(Error::AlreadyExists(format!(
                "channel {name:?} exists (generation {}); delete it first to change its shape",
                ch.seg.origin().generation
            )));
        }
        // A live channel whose users have not reconnected since this coordinator started: the
        // name is still taken (found in review of step 5: any user could create the name
        // again, and the users of the live one were cut off from it for good).
        if let Some(e) = self.pending.get(name) {
            return Err(awaited(name, e));
        }
        if self.channels.len() >= MAX_CHANNELS {
            return Err(Error::Busy(format!(
                "namespace {:?} has {MAX_CHANNELS} channels, the most one coordinator serves",
                self.namespace
            )));
        }
        let geo = Geometry::new(config)?;
        // The limit is on the frame storage, what `capacity` asks for (a 1 GiB SPSC ring fits
        // a 1 GiB limit): the header and participant tables on top are bounded (at most
        // 2048 entries of 128 bytes) and count in the per-user bytes.
        if geo.data_len as u64 > self.max_channel_bytes {
            let fits = match Geometry::largest_capacity(config, self.max_channel_bytes) {
                Some(c) => format!(
                    "--capacity {} fits (with frames up to {})",
                    format_size_exact(c),
                    format_size_exact(u64::from(config.max_frame_size))
                ),
                None => format!(
                    "no {} channel with frames up to {} fits",
                    config.kind,
                    format_size_exact(u64::from(config.max_frame_size))
                ),
            };
            return Err(Error::InvalidArgument(format!(
                "this {} channel takes {} of frame storage, over this coordinator's limit of {} \
                 per channel (shmringd --max-channel-bytes): {fits}",
                config.kind,
                format_size_exact(geo.data_len as u64),
                format_size_exact(self.max_channel_bytes)
            )));
        }
        self.check_quota(peer.uid, geo.total_size as u64)?;
        let generation = self.next_generation;
        self.next_generation = self.next_generation.saturating_add(1);
        let object = format!("{}{generation}.{name}", self.prefix);
        // A sealed memfd, mode 0600 for this coordinator's user: nobody reaches it but through
        // a descriptor handed over after admission, and nobody can shrink it. The channel's
        // owner and mode, which admission checks, are kept here (the segment's copy, taken at
        // creation) and in the record; the header's copy is for information only.
        let label = CString::new(object.clone()).expect("validated names hold no NUL");
        let (seg, fd) = Segment::create_sealed(&label, config, generation, (peer.uid, peer.gid))?;
        // Relaxed: information only.
        seg.mem
            .repair_line()
            .owner
            .store(u64::from(sys::pid()), Relaxed);
        let info = info(name, &seg);
        tracing::info!(channel = %name, kind = %config.kind, generation, uid = peer.uid, mode = format_args!("{:o}", config.mode), memfd = %object, "created");
        self.channels
            .insert(name.to_string(), Channel::new(object, seg, fd));
        if let Err(e) = self.persist() {
            // Not recorded, the channel could not be adopted after a restart: not created.
            if let Some(ch) = self.channels.remove(name) {
                ch.seg.mark_deleted();
            }
            return Err(e);
        }
        Ok(info)
    }

    fn open(&mut self, epoll: &Epoll, peer: &Peer, name: &str, role: Role) -> Result<Answer> {
        if let Some(p) = self.partitioned.get(name) {
            return match role {
                Role::Producer => {
                    // The permission is checked when the partitions are opened.
                    Ok(Answer {
                        reply: Reply::Partitioned {
                            partitions: p.partitions,
                        },
                        fd: None,
                        admitted: None,
                    })
                }
                Role::Consumer => Err(Error::InvalidArgument(format!(
                    "channel {name:?} is partitioned: read it as a member of a consumer group \
                     (Client::group_consumer, shmring_consumer_open_group)"
                ))),
            };
        }
        self.refuse_partition(name, "open")?;
        self.open_entry(epoll, peer, name, role)
    }

    /// Refuses to `what` a partition of a partitioned channel directly.
    fn refuse_partition(&self, name: &str, what: &str) -> Result<()> {
        match self.parent_of(name) {
            Some(parent) => Err(Error::InvalidArgument(format!(
                "channel {name:?} is a partition of {parent:?}: {what} {parent:?} instead (its \
                 partitions are opened through it)"
            ))),
            None => Ok(()),
        }
    }

    fn open_entry(&mut self, epoll: &Epoll, peer: &Peer, name: &str, role: Role) -> Result<Answer> {
        let ch = self.sound_channel(name)?;
        let origin = ch.seg.origin();
        if !permits(peer, &origin, 6) {
            return Err(Error::PermissionDenied(format!(
                "channel {name:?} (owner uid {}, gid {}, mode {:o}) does not admit uid {} gid {}",
                origin.owner_uid, origin.owner_gid, origin.mode, peer.uid, peer.gid
            )));
        }
        let Some(start_time) = self.procs.get(&peer.pid).map(|p| p.start_time) else {
            // Every connected client is watched; admitting an unwatched one would leave its
            // entry unrepaired when it dies.
            return Err(Error::Unavailable(format!(
                "pid {} is not being watched",
                peer.pid
            )));
        };
        // While a resize is under way, a consumer starts in the old generation (what is left
        // there comes first), with its entry in the new one taken at once (see `resize`); a
        // producer goes to the new one, where the entries of the producers that have not moved
        // yet are theirs already (an SPSC channel's one producer entry among them).
        let into_prev = role == Role::Consumer && ch.prev.is_some();
        let target = if into_prev {
            ch.prev.as_deref().expect("checked above")
        } else {
            ch
        };
        let generation = target.generation();
        let mem = std::sync::Arc::clone(&target.seg.mem);
        let taken = match take_entry(&mem, role, peer.pid, start_time) {
            Err(Error::Busy(_) | Error::Corrupted(_)) => {
                // A holder may have died a moment ago, its pidfd event not yet handled; an
                // owner word may have been overwritten (damage, put right here).
                self.reap_holders(epoll, name, role);
                let books = books(&self.procs);
                self.reclaim_strays(&books, name);
                take_entry(&mem, role, peer.pid, start_time)
            }
            other => other,
        };
        let (index, owner) = taken.map_err(|e| match e {
            Error::Busy(m) => {
                let pending = self
                    .channels
                    .get(name)
                    .is_some_and(|c| c.dead.iter().any(|d| d.role == role));
                Error::Busy(if pending {
                    format!("{m}; a dead {role}'s entry is being repaired: try again shortly")
                } else {
                    format!("channel {name:?}: {m}")
                })
            }
            other => other,
        })?;
        let adm = Admission {
            channel: name.to_string(),
            generation,
            role,
            index,
            owner,
        };
        let ch = self.channels.get_mut(name).expect("looked up above");
        let fd = match ch.generation_mut(generation).map(|g| g.fd.try_clone()) {
            Some(Ok(fd)) => fd,
            Some(Err(e)) => {
                free_entry(&mem, role, index, owner);
                return Err(Error::os("duplicating a segment descriptor", e));
            }
            None => unreachable!("the generation admitted to is the channel's"),
        };
        let mut heir_adm = None;
        if into_prev {
            match take_heir(&ch.seg.mem, role, index, peer.pid, start_time) {
                Ok(heir) => {
                    ch.heirs.insert((role, index, owner), heir);
                    heir_adm = Some(Admission {
                        channel: name.to_string(),
                        generation: ch.generation(),
                        role,
                        index: heir.0,
                        owner: heir.1,
                    });
                }
                Err(e) => {
                    free_entry(&mem, role, index, owner);
                    return Err(e);
                }
            }
        }
        if let Some(p) = self.procs.get_mut(&peer.pid) {
            p.admissions.push(adm.clone());
            p.admissions.extend(heir_adm);
        }
        tracing::debug!(channel = %name, role = %role, index, pid = peer.pid, "admitted");
        Ok(Answer {
            reply: Reply::Opened {
                index,
                owner,
                generation,
            },
            fd: Some(fd),
            admitted: Some(Admitted { pid: peer.pid, adm }),
        })
    }

    /// Handles the deaths of holders of `role` entries of channel `name` whose pidfds are
    /// readable but not yet seen by the event loop.
    fn reap_holders(&mut self, epoll: &Epoll, name: &str, role: Role) {
        let gone: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| {
                p.admissions
                    .iter()
                    .any(|a| a.channel == name && a.role == role)
                    && sys::pidfd_exited(&p.pidfd)
            })
            .map(|(&pid, _)| pid)
            .collect();
        for pid in gone {
            self.exited(epoll, pid);
        }
    }

    /// Forgets process `pid`'s admission `adm` (its handle closed), freeing the entry if the
    /// handle could not. Only the admission of that generation of the channel, of that
    /// process, with that owner word: a stale close never touches anyone else's entry.
    /// Returns whether `adm` was an admission of `pid`'s (and is freed now).
    fn close(&mut self, epoll: &Epoll, pid: u32, adm: &Admission) -> bool {
        let Some(p) = self.procs.get_mut(&pid) else {
            return false;
        };
        let before = p.admissions.len();
        p.admissions.retain(|a| a != adm);
        let freed = p.admissions.len() != before;
        if freed && let Some(ch) = self.channels.get_mut(&adm.channel) {
            // A holder of an entry of the generation being drained that closes without having
            // followed: the entry taken for it in the new one goes too.
            let heir = if ch.prev.as_ref().map(|p| p.generation()) == Some(adm.generation) {
                ch.followed.remove(&(pid, (adm.role, adm.index, adm.owner)));
                ch.heirs.remove(&(adm.role, adm.index, adm.owner))
            } else {
                None
            };
            let current = ch.generation();
            if let Some(g) = ch.generation_mut(adm.generation) {
                free_entry(&g.seg.mem, adm.role, adm.index, adm.owner);
            }
            if let Some((index, owner)) = heir {
                free_entry(&ch.seg.mem, adm.role, index, owner);
                let heir_adm = Admission {
                    channel: adm.channel.clone(),
                    generation: current,
                    role: adm.role,
                    index,
                    owner,
                };
                p.admissions.retain(|a| *a != heir_adm);
            }
        }
        self.forget_if_idle(epoll, pid);
        self.release_deleted();
        self.retire_drained();
        freed
    }

    fn delete(&mut self, peer: &Peer, name: &str) -> Result<()> {
        validate_channel_name(name)?;
        if let Some(e) = self.pending.get(name) {
            // A live channel not handed back yet: its owner (by the record) or root may still
            // give the name up; its users keep their mappings, and it is never adopted again.
            if peer.uid != 0 && peer.uid != e.owner_uid {
                return Err(Error::PermissionDenied(format!(
                    "channel {name:?} belongs to uid {}; only its owner or root may delete it",
                    e.owner_uid
                )));
            }
            self.pending.remove(name);
            tracing::info!(channel = %name, uid = peer.uid, "deleted a channel awaiting its users' return");
            return self.persist();
        }
        let ch = self.channel(name)?;
        let origin = ch.seg.origin();
        if peer.uid != 0 && peer.uid != origin.owner_uid {
            return Err(Error::PermissionDenied(format!(
                "channel {name:?} belongs to uid {}; only its owner or root may delete it",
                origin.owner_uid
            )));
        }
        let mut ch = self.channels.remove(name).expect("looked up above");
        // Entries taken for holders of the generation being drained, which nobody will follow
        // now: out of the books (their holders' closes name the old generation).
        let heirs: Vec<_> = ch.heirs.drain().collect();
        forget_admissions(&mut self.procs, name, ch.generation(), &heirs);
        let prev = ch.prev.take();
        for mut g in prev.map(|p| *p).into_iter().chain(std::iter::once(ch)) {
            // What dead producers left is skipped first, so consumers can drain past it.
            let held = held(&books(&self.procs), name, &g);
            repair_channel(name, &mut g, true, &held);
            g.seg.mark_deleted();
            tracing::info!(channel = %name, generation = g.generation(), memfd = %g.object, "deleted");
            self.let_go(name, g, origin.owner_uid);
        }
        // Out of the record: this generation can never be adopted again, whatever a holder
        // writes into it.
        self.persist_or_log("a delete");
        Ok(())
    }

    /// Gives up a generation of channel `name` marked deleted (or retired): its memory goes
    /// when the last process admitted to it closes it. Until then it stays charged to the
    /// owner `uid` (found in review of step 5: deleting channels one still held freed the
    /// quota while the memory stayed): the holders' admissions stay in the books, and the
    /// generation is released when the last of them closes or dies. Then, with no admitted
    /// holder left, its memory is freed (`free_deleted`): no process keeps it alive past the
    /// charge by a descriptor or a mapping it kept.
    fn let_go(&mut self, name: &str, g: Channel, uid: u32) {
        let generation = g.generation();
        let len = g.seg.geometry().total_size;
        if books(&self.procs).contains_key(&(name, generation)) {
            let deleted = Deleted {
                uid,
                bytes: len as u64,
                fd: g.fd,
                len,
            };
            self.deleted.insert((name.to_string(), generation), deleted);
        } else {
            free_deleted(name, generation, &g.fd, len);
        }
    }

    /// Retires the generations that resizes replaced and that are drained: nobody holds an
    /// entry of one (its producers moved on, its consumers followed or closed), no repair of
    /// it is under way, and nothing is left in it that a consumer could still take (a broadcast
    /// channel's frames are for the subscribers that were there; an SPSC or MPMC ring with
    /// frames left waits for a consumer, which is admitted to it first).
    fn retire_drained(&mut self) {
        let done: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, ch)| ch.prev.as_deref().is_some_and(drained))
            .map(|(name, _)| name.clone())
            .collect();
        for name in done {
            let Some(ch) = self.channels.get_mut(&name) else {
                continue;
            };
            let Some(prev) = ch.prev.take() else {
                continue;
            };
            // An entry taken for a holder that left the old generation without a close seen
            // yet (its handle freed its entry there, the close is on its way): freed, and out
            // of the books, as that close would have done.
            let heirs: Vec<_> = ch.heirs.drain().collect();
            ch.followed.clear();
            let current = ch.generation();
            for ((role, _, _), (index, owner)) in heirs.iter().copied() {
                free_entry(&ch.seg.mem, role, index, owner);
            }
            forget_admissions(&mut self.procs, &name, current, &heirs);
            if prev.seg.check().is_ok() && ch.seg.check().is_ok() {
                let (old, new) = (prev.seg.mem.repair_line(), ch.seg.mem.repair_line());
                for (k, (from, to)) in [
                    (&old.repairs, &new.repairs),
                    (&old.redelivered, &new.redelivered),
                    (&old.skipped, &new.skipped),
                ]
                .into_iter()
                .enumerate()
                {
                    // Relaxed: statistics.
                    to.fetch_add(from.load(Relaxed).wrapping_sub(ch.carried[k]), Relaxed);
                }
            }
            let uid = ch.seg.origin().owner_uid;
            // Stragglers that map it (none holds an entry) read it as deleted.
            prev.seg.mark_deleted();
            tracing::info!(channel = %name, generation = prev.generation(), now = ch.generation(), "resize complete: the old generation is drained and retired");
            self.let_go(&name, *prev, uid);
        }
    }

    /// Gives channel `name` a new capacity: a new generation of the segment, of the same shape
    /// but for its capacity, replaces the current one, which stays until it is drained (see
    /// ARCHITECTURE.md, "Online resize").
    fn resize(&mut self, peer: &Peer, name: &str, capacity: u64) -> Result<ChannelInfo> {
        // A previous resize whose old generation was drained just now (its last holder's
        // close is in) is complete.
        self.retire_drained();
        let ch = self.sound_channel(name)?;
        let origin = ch.seg.origin();
        if peer.uid != 0 && peer.uid != origin.owner_uid {
            return Err(Error::PermissionDenied(format!(
                "channel {name:?} belongs to uid {}; only its owner or root may resize it",
                origin.owner_uid
            )));
        }
        let geo = *ch.seg.geometry();
        let old_mem = std::sync::Arc::clone(&ch.seg.mem);
        let config = ChannelConfig {
            kind: geo.kind,
            capacity,
            max_frame_size: geo.max_frame_size,
            max_producers: geo.max_producers,
            max_consumers: geo.max_consumers,
            mode: origin.mode,
            overflow: geo.overflow,
            history: geo.history,
            max_message_size: geo.max_message_size,
            partitions: 0,
            checkpoint_size: 0,
        };
        let new_geo = Geometry::new(&config).map_err(|e| match e {
            Error::InvalidArgument(m) => Error::InvalidArgument(format!(
                "channel {name:?} cannot have a capacity of {}: {m}",
                format_size_exact(capacity)
            )),
            e => e,
        })?;
        if new_geo.data_len as u64 > self.max_channel_bytes {
            return Err(Error::InvalidArgument(format!(
                "a capacity of {} takes {} of frame storage, over this coordinator's limit of \
                 {} per channel (shmringd --max-channel-bytes)",
                format_size_exact(capacity),
                format_size_exact(new_geo.data_len as u64),
                format_size_exact(self.max_channel_bytes)
            )));
        }
        if let Some(prev) = &ch.prev {
            let (producers, consumers) = holders(&prev.seg.mem);
            let left = prev.seg.stats().depth;
            let what = match (producers, consumers) {
                (0, 0) if left > 0 => format!(
                    "it still holds {} for a consumer to take",
                    match geo.kind {
                        Kind::Spsc => format_size_exact(left),
                        _ => format!("{left} frames"),
                    }
                ),
                (p, c) => format!(
                    "{p} producer(s) have not sent since and {c} consumer(s) have not drained \
                     it yet"
                ),
            };
            return Err(Error::Busy(format!(
                "channel {name:?} is still moving from generation {} to {} (resized before): \
                 {what}; try again once it is drained (`shmring stat {name}`)",
                prev.generation(),
                ch.generation()
            )));
        }
        // Both generations are charged while the old one is drained (the quota's count of
        // channels is not: it is the same channel).
        self.check_bytes_quota(origin.owner_uid, new_geo.total_size as u64)?;
        let generation = self.next_generation;
        self.next_generation = self.next_generation.saturating_add(1);
        let object = format!("{}{generation}.{name}", self.prefix);
        let label = CString::new(object.clone()).expect("validated names hold no NUL");
        let (mut seg, fd) = Segment::create_sealed(
            &label,
            &config,
            generation,
            (origin.owner_uid, origin.owner_gid),
        )?;
        seg.set_authority(origin.owner_uid, origin.owner_gid, origin.mode);
        // Relaxed: information only.
        seg.mem
            .repair_line()
            .owner
            .store(u64::from(sys::pid()), Relaxed);
        let mut next = Channel::new(object, seg, fd);
        next.carried = carry_counters(&old_mem, &next.seg.mem);
        // Every participant of the old generation gets its entry in the new one now: a
        // broadcast subscriber is then counted from the first frame written there (with
        // overflow `block`, the producer waits for it), a producer that has not moved yet is
        // attached there (an end of stream waits for it), and nobody is turned away when it
        // follows.
        let old_gen = origin.generation;
        let mut taken = Vec::new();
        for (pid, p) in &self.procs {
            for a in &p.admissions {
                if a.channel == name && a.generation == old_gen {
                    taken.push((*pid, p.start_time, a.role, a.index, a.owner));
                }
            }
        }
        for (pid, start_time, role, index, owner) in taken {
            let heir = match take_heir(&next.seg.mem, role, index, pid, start_time) {
                Ok(h) => h,
                Err(e) => {
                    // Cannot happen with the same table size, but nothing is half done.
                    next.seg.mark_deleted();
                    free_deleted(name, generation, &next.fd, next.seg.geometry().total_size);
                    return Err(e);
                }
            };
            next.heirs.insert((role, index, owner), heir);
            if let Some(p) = self.procs.get_mut(&pid) {
                p.admissions.push(Admission {
                    channel: name.to_string(),
                    generation,
                    role,
                    index: heir.0,
                    owner: heir.1,
                });
            }
        }
        let info = info(name, &next.seg);
        let mut old = self.channels.remove(name).expect("looked up above");
        next.resizes = old.resizes.saturating_add(1);
        next.rate = old.rate;
        // SeqCst: pairs with the MPMC producers' claim and load of it, and the consumers' load
        // (`mpmc::drained_for_good`); for the other kinds a flag (see `Memory::moved_to`). The
        // consumer line's copy tells MPMC consumers, on the line they write anyway, to wake
        // those waiting to follow when they release a slot. The wake below makes sleepers
        // look at it.
        old.seg.mem.producer_line().moved.store(generation, SeqCst);
        old.seg.mem.consumer_line().moved.store(generation, SeqCst);
        wait::wake_all(&old.seg.mem);
        old.heirs.clear();
        next.prev = Some(Box::new(old));
        self.channels.insert(name.to_string(), next);
        tracing::info!(channel = %name, from = old_gen, to = generation, capacity = %format_size_exact(capacity), "resized");
        // The record names the new generation: a coordinator started after this one adopts
        // it, not the old one.
        self.persist_or_log("a resize");
        Ok(info)
    }

    /// Admits a holder of an entry of a generation that a resize replaced to the generation
    /// that replaced it (see [`Request::Follow`]).
    fn follow(&mut self, peer: &Peer, adm: Admission) -> Result<Answer> {
        let name = adm.channel.clone();
        let ch = self.channel(&name)?;
        if ch.generation() == adm.generation {
            // Not replaced: the `moved` word the caller saw was overwritten.
            clear_moved(&name, ch);
            return Ok(Answer {
                reply: Reply::Done,
                fd: None,
                admitted: None,
            });
        }
        if ch.prev.as_ref().map(|p| p.generation()) != Some(adm.generation) {
            return Err(Error::NotFound(format!(
                "generation {} of channel {name:?} is not being drained (the channel was \
                 deleted, or this coordinator restarted since); open the channel again",
                adm.generation
            )));
        }
        let Some(proc) = self.procs.get(&peer.pid) else {
            return Err(Error::Unavailable(format!(
                "pid {} is not being watched",
                peer.pid
            )));
        };
        if !proc.admissions.contains(&adm) {
            return Err(Error::PermissionDenied(format!(
                "pid {} holds no {} entry {} of generation {} of channel {name:?}",
                peer.pid, adm.role, adm.index, adm.generation
            )));
        }
        let start_time = proc.start_time;
        let generation = ch.generation();
        let ch = self.channels.get_mut(&name).expect("looked up above");
        let key = (peer.pid, (adm.role, adm.index, adm.owner));
        if let Some(&(index, owner)) = ch.followed.get(&key)
            && ch
                .seg
                .mem
                .participant(adm.role, index)
                // Relaxed: the coordinator's own word, unless someone scribbled on it.
                .is_some_and(|p| p.owner.load(Relaxed) == owner)
        {
            // Asked again: the entry handed out before, still this process's.
            let fd = ch
                .fd
                .try_clone()
                .map_err(|e| Error::os("duplicating a segment descriptor", e))?;
            return Ok(Answer {
                reply: Reply::Opened {
                    index,
                    owner,
                    generation,
                },
                fd: Some(fd),
                admitted: None,
            });
        }
        let heir = ch.heirs.remove(&(adm.role, adm.index, adm.owner));
        let (index, owner) = match heir {
            Some(h) => h,
            None => take_heir(&ch.seg.mem, adm.role, adm.index, peer.pid, start_time)?,
        };
        let fd = match ch.fd.try_clone() {
            Ok(fd) => fd,
            Err(e) => {
                if let Some(h) = heir {
                    ch.heirs.insert((adm.role, adm.index, adm.owner), h);
                } else {
                    free_entry(&ch.seg.mem, adm.role, index, owner);
                }
                return Err(Error::os("duplicating a segment descriptor", e));
            }
        };
        let new_adm = Admission {
            channel: name.clone(),
            generation,
            role: adm.role,
            index,
            owner,
        };
        ch.followed.insert(key, (index, owner));
        if let Some(p) = self.procs.get_mut(&peer.pid)
            && heir.is_none()
        {
            p.admissions.push(new_adm.clone());
        }
        tracing::debug!(channel = %name, role = %adm.role, from = adm.generation, to = generation, index, pid = peer.pid, "followed a resize");
        Ok(Answer {
            reply: Reply::Opened {
                index,
                owner,
                generation,
            },
            fd: Some(fd),
            admitted: Some(Admitted {
                pid: peer.pid,
                adm: new_adm,
            }),
        })
    }

    fn stats(&self, peer: &Peer, name: &str) -> Result<ChannelStats> {
        let ch = self.sound_channel(name)?;
        if !permits(peer, &ch.seg.origin(), 4) {
            return Err(Error::PermissionDenied(format!(
                "channel {name:?} is not readable by uid {}",
                peer.uid
            )));
        }
        let s = ch.seg.stats();
        let participants = s
            .producers
            .iter()
            .map(|p| (Role::Producer, p))
            .chain(s.consumers.iter().map(|p| (Role::Consumer, p)))
            .map(|(role, p)| ParticipantInfo {
                role,
                index: p.index,
                pid: p.pid,
                frames: p.frames,
                bytes: p.bytes,
                lag: p.lag,
                missed: p.missed,
            })
            .collect();
        Ok(ChannelStats {
            info: info(name, &ch.seg),
            frames_in: s.frames_in,
            bytes_in: s.bytes_in,
            frames_out: s.frames_out,
            bytes_out: s.bytes_out,
            rate_in: ch.rate.per_s_in,
            rate_out: ch.rate.per_s_out,
            participants,
            repairs: s.repairs,
            redelivered: s.redelivered,
            skipped: s.skipped,
            pool_chunks: s.pool_chunks,
            pool_used: s.pool_used,
            pool_chunk_bytes: ch.seg.geometry().pool_chunk,
            resizes: ch.resizes,
            draining_generation: ch.prev.as_ref().map_or(0, |p| p.generation()),
            draining_capacity_bytes: ch
                .prev
                .as_ref()
                .map_or(0, |p| info(name, &p.seg).capacity_bytes),
            draining_depth: ch.prev.as_ref().map_or(0, |p| p.seg.stats().depth),
            partitions: Vec::new(),
            group: None,
        })
    }
}

/// Removes from the books the admissions to generation `generation` of channel `name` that
/// `heirs` (as `Channel::heirs` holds them) name.
fn forget_admissions(
    procs: &mut HashMap<u32, Proc>,
    name: &str,
    generation: u64,
    heirs: &[(Entry, (u32, u64))],
) {
    if heirs.is_empty() {
        return;
    }
    for p in procs.values_mut() {
        p.admissions.retain(|a| {
            !(a.channel == name
                && a.generation == generation
                && heirs.iter().any(|&((role, _, _), (index, owner))| {
                    a.role == role && a.index == index && a.owner == owner
                }))
        });
    }
}

/// Takes an entry of `role` in `mem` for process `pid`: entry `index` if it is free (a
/// participant that moves keeps its place, and with it the counters carried over), else the
/// first free one.
fn take_heir(
    mem: &crate::region::Memory,
    role: Role,
    index: u32,
    pid: u32,
    start_time: u64,
) -> Result<(u32, u64)> {
    match crate::segment::take_entry_at(mem, role, index, pid, start_time)? {
        Ok(owner) => Ok((index, owner)),
        Err(_) => take_entry(mem, role, pid, start_time),
    }
}

/// Copies the counters of every entry of `from` (frames, bytes, missed) to the entry of the same
/// index of `to`, a new generation nobody holds yet, and its repair counters, so that the
/// channel's totals go on across a resize (a participant that moves continues its own counters
/// in its entry there). Returns the repair counters copied.
fn carry_counters(from: &crate::region::Memory, to: &crate::region::Memory) -> [u64; 3] {
    let geo = from.geometry();
    for (role, n) in [
        (Role::Producer, geo.max_producers),
        (Role::Consumer, geo.max_consumers),
    ] {
        for index in 0..n {
            if let (Some(a), Some(b)) = (from.participant(role, index), to.participant(role, index))
            {
                // Relaxed: statistics; the new segment is published to its users later.
                b.frames.store(a.frames.load(Relaxed), Relaxed);
                b.bytes.store(a.bytes.load(Relaxed), Relaxed);
                b.missed.store(a.missed.load(Relaxed), Relaxed);
            }
        }
    }
    let (a, b) = (from.repair_line(), to.repair_line());
    // Relaxed: statistics.
    let carried = [
        a.repairs.load(Relaxed),
        a.redelivered.load(Relaxed),
        a.skipped.load(Relaxed),
    ];
    b.repairs.store(carried[0], Relaxed);
    b.redelivered.store(carried[1], Relaxed);
    b.skipped.store(carried[2], Relaxed);
    carried
}

/// Clears the `moved` word of a channel's current generation, which no resize replaced: it was
/// overwritten (handles would otherwise keep asking to follow it).
fn clear_moved(name: &str, ch: &Channel) {
    if ch.seg.check().is_err() {
        return;
    }
    // Relaxed: a flag (see `Memory::moved_to`).
    ch.seg.mem.consumer_line().moved.store(0, Relaxed);
    // Relaxed: as above.
    let word = ch.seg.mem.producer_line().moved.swap(0, Relaxed);
    if word != 0 {
        tracing::warn!(channel = %name, word, "damage: the channel's segment says it was replaced by a resize, which it was not; word cleared");
    }
}

/// How many entries of each table of `mem` are held: (producers, consumers).
fn holders(mem: &crate::region::Memory) -> (u32, u32) {
    let geo = mem.geometry();
    let count = |role: Role, n: u32| {
        (0..n)
            .filter(|&i| {
                // Relaxed: a count for the coordinator's decisions, which the owners' frees
                // (Release) only make smaller.
                mem.participant(role, i)
                    .is_some_and(|p| decode_owner(p.owner.load(Relaxed)).0 != 0)
            })
            .count() as u32
    };
    (
        count(Role::Producer, geo.max_producers),
        count(Role::Consumer, geo.max_consumers),
    )
}

/// Whether a generation that a resize replaced can go: nobody holds an entry of it, nothing
/// of it is being repaired, and (SPSC) no frame is left in it for a consumer to take.
fn drained(g: &Channel) -> bool {
    if !g.dead.is_empty() || g.claim_pending {
        return false;
    }
    if g.seg.check().is_err() {
        return true; // its memory is gone: nothing in it can be taken
    }
    if holders(&g.seg.mem) != (0, 0) {
        return false;
    }
    match g.seg.kind() {
        Kind::Spsc => crate::spsc::depth_bytes(&g.seg.mem) == 0,
        // A subscriber's frames are the subscriber's: without one, nobody will read them.
        Kind::Broadcast => true,
        // Its consumers left once every position claimed was taken; what producers claimed
        // after that they handed on as skips, for nobody.
        Kind::Mpmc => crate::mpmc::only_skips_left(&g.seg.mem),
    }
}

/// The refusal for a channel the record lists as live that no process has shown yet.
fn awaited(name: &str, e: &record::Entry) -> Error {
    Error::Busy(format!(
        "channel {name:?} (generation {}, owner uid {}) was live when this coordinator started \
         and comes back when one of its users makes a request; until then it can be neither \
         opened nor created again (its owner or root may delete it)",
        e.generation, e.owner_uid
    ))
}

/// The coordinator's books: who holds which entry of which channel generation.
fn books(procs: &HashMap<u32, Proc>) -> Books<'_> {
    let mut b: Books<'_> = HashMap::new();
    for a in procs.values().flat_map(|p| &p.admissions) {
        b.entry((a.channel.as_str(), a.generation))
            .or_default()
            .push((a.role, a.index, a.owner));
    }
    b
}

/// The entries of channel `name` (its current generation) held by live processes, by the books.
fn held(books: &Books<'_>, name: &str, ch: &Channel) -> Vec<(Role, u32, u64)> {
    books
        .get(&(name, ch.seg.origin().generation))
        .cloned()
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Per-user limits (defect 5: one user could take every channel of the namespace, and 1 GiB of
// shared memory per channel).

/// What one user may own in the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Quotas {
    /// Most channels owned by one uid.
    pub channels_per_uid: usize,
    /// Most bytes of segments owned by one uid.
    pub bytes_per_uid: u64,
}

impl Default for Quotas {
    fn default() -> Quotas {
        Quotas {
            channels_per_uid: super::DEFAULT_MAX_CHANNELS_PER_UID,
            bytes_per_uid: super::DEFAULT_MAX_BYTES_PER_UID,
        }
    }
}

/// A user's channels and their bytes (deleted channels still held included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Usage {
    pub channels: usize,
    pub bytes: u64,
    /// Of `bytes`, those of deleted channels that processes still hold.
    pub deleted_bytes: u64,
}

impl Registry {
    /// Sets the per-user limits.
    pub(super) fn set_quotas(&mut self, quotas: Quotas) {
        self.quotas = quotas;
    }

    /// The channel limits and `uid`'s use of them (the connection figures zero).
    fn limits_of(&self, uid: u32) -> crate::protocol::Limits {
        let used = self.usage(uid);
        crate::protocol::Limits {
            uid,
            channels: used.channels as u64,
            max_channels_per_uid: self.quotas.channels_per_uid as u64,
            bytes: used.bytes,
            max_bytes_per_uid: self.quotas.bytes_per_uid,
            max_channel_bytes: self.max_channel_bytes,
            namespace_channels: self.channels.len() as u64,
            max_channels: MAX_CHANNELS as u64,
            connections: 0,
            max_connections_per_uid: 0,
            all_connections: 0,
            max_connections: 0,
        }
    }

    /// The channels `uid` owns (as the coordinator keeps them, adopted ones included), and the
    /// bytes of its deleted channels that admitted processes still hold.
    pub(super) fn usage(&self, uid: u32) -> Usage {
        let served = self
            .channels
            .values()
            .filter(|c| c.seg.origin().owner_uid == uid)
            .fold(Usage::default(), |u, c| Usage {
                channels: u.channels + 1,
                // A generation being drained after a resize counts too.
                bytes: c.generations().fold(u.bytes, |b, g| {
                    b.saturating_add(g.seg.geometry().total_size as u64)
                }),
                deleted_bytes: 0,
            });
        let deleted = self
            .deleted
            .values()
            .filter(|d| d.uid == uid)
            .fold(0u64, |b, d| b.saturating_add(d.bytes));
        Usage {
            bytes: served.bytes.saturating_add(deleted),
            deleted_bytes: deleted,
            ..served
        }
    }

    /// Refuses a channel of `bytes` to `uid` if it would pass one of the user's limits.
    fn check_quota(&self, uid: u32, bytes: u64) -> Result<()> {
        let used = self.usage(uid);
        let q = self.quotas;
        if used.channels >= q.channels_per_uid {
            return Err(Error::Busy(format!(
                "uid {uid} owns {} channels in namespace {:?}, its limit of {} channels per user \
                 (shmringd --max-channels-per-uid): delete one first",
                used.channels, self.namespace, q.channels_per_uid
            )));
        }
        self.check_bytes_quota(uid, bytes)
    }

    /// Refuses `bytes` more to `uid` if they would pass its limit of bytes.
    fn check_bytes_quota(&self, uid: u32, bytes: u64) -> Result<()> {
        let used = self.usage(uid);
        let q = self.quotas;
        if used.bytes.saturating_add(bytes) > q.bytes_per_uid {
            let held = if used.deleted_bytes > 0 {
                format!(
                    " ({} of them of deleted channels that processes still hold: their memory \
                     stays until those processes close them)",
                    format_size_exact(used.deleted_bytes)
                )
            } else {
                String::new()
            };
            return Err(Error::Busy(format!(
                "uid {uid} owns {} of channels in namespace {:?}{held}; {} more would pass its \
                 limit of {} per user (shmringd --max-bytes-per-uid)",
                format_size_exact(used.bytes),
                self.namespace,
                format_size_exact(bytes),
                format_size_exact(q.bytes_per_uid)
            )));
        }
        Ok(())
    }
}

/// Repairs what a channel's dead participants left (those due, or all with `all`), freeing
/// each entry once its repair is complete, and wakes whoever sleeps on the channel so that they
/// look again. A pending repair is tried again after a wait that doubles up to `MAX_BACKOFF`.
/// `held` are the entries live processes hold (by the books).
fn repair_channel(name: &str, ch: &mut Channel, all: bool, held: &[(Role, u32, u64)]) {
    if ch.seg.check().is_err() {
        // Its memory is gone (never for a sealed segment): nothing left to repair.
        ch.dead.clear();
        ch.claim_pending = false;
        return;
    }
    let mem = std::sync::Arc::clone(&ch.seg.mem);
    // Dead is the entry *as the dead one left it*: once a repair frees an entry, a process that
    // takes it again (directly, `Segment::producer`) is live, even within this pass.
    let known: Vec<(Role, u32, u64)> = ch.dead.iter().map(|d| (d.role, d.index, d.owner)).collect();
    let is_dead = |role: Role, i: u32| {
        known.iter().any(|&(r, idx, owner)| {
            // Acquire: as the owner loads of the repair (`repair::covered`).
            r == role
                && idx == i
                && mem
                    .participant(role, i)
                    .is_some_and(|e| e.owner.load(crate::sync::Ordering::Acquire) == owner)
        })
    };
    let now = Instant::now();
    let mut progress = false;
    if ch.claim_pending {
        match repair::finish_repair_claim(&mem, &is_dead) {
            Ok(done) => {
                ch.claim_pending = done.pending;
                progress |= !done.pending;
                repair::count(&mem, &done, false);
            }
            Err(e) => {
                tracing::warn!(channel = %name, error = %e, "the dead coordinator's repair claim is damaged; dropped");
                mem.repair_line().claim.store(0, Relaxed);
                ch.claim_pending = false;
            }
        }
    }
    ch.dead.retain_mut(|d| {
        if !all && d.next_try > now {
            return true;
        }
        let Some(entry) = mem.participant(d.role, d.index) else {
            return false;
        };
        // Relaxed: only the coordinator admits; the dead owner cannot change it.
        let word = entry.owner.load(Relaxed);
        if word != d.owner {
            let (pid, _) = decode_owner(word);
            if pid == 0 || held.iter().any(|&(r, i, w)| (r, i, w) == (d.role, d.index, word)) {
                // The handle closed (and freed it) before the process died, perhaps admitted
                // again since.
                return false;
            }
            // Overwritten: still the dead one's entry (nobody was admitted to it since), so it
            // is repaired, and freed below from the word it holds now.
            tracing::warn!(channel = %name, role = %d.role, index = d.index, pid = d.pid,
                word = format_args!("{word:#x}"),
                "damage: a dead participant's owner word was overwritten; repairing its entry anyway");
            d.owner = word;
        }
        let done = match repair::repair_participant(&mem, d.role, d.index, &is_dead) {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(channel = %name, role = %d.role, index = d.index, error = %e,
                    "cannot repair a dead participant's entry: freeing it as it is");
                Repaired::default()
            }
        };
        for e in &done.errors {
            tracing::warn!(channel = %name, role = %d.role, index = d.index, error = %e,
                "damage found while repairing; a frame was released undelivered");
        }
        progress |= done.skipped + done.redelivered + done.released > 0;
        if done.pending {
            repair::count(&mem, &done, false);
            d.next_try = now + d.backoff;
            d.backoff = (d.backoff * 2).min(MAX_BACKOFF);
            return true;
        }
        free_entry(&mem, d.role, d.index, d.owner);
        repair::count(&mem, &done, true);
        progress = true;
        tracing::info!(
            channel = %name, role = %d.role, index = d.index, pid = d.pid,
            skipped = done.skipped, redelivered = done.redelivered,
            after_us = d.since.elapsed().as_micros() as u64,
            "repaired"
        );
        false
    });
    if progress {
        // Sleepers re-check: consumers may have skips or redelivered frames to take, producers
        // may have room.
        wait::notify(mem.producer_line(), false);
        wait::notify(mem.consumer_line(), false);
    }
}

impl Dead {
    fn new(role: Role, index: u32, owner: u64, pid: u32) -> Dead {
        let now = Instant::now();
        Dead {
            role,
            index,
            owner,
            pid,
            since: now,
            next_try: now,
            backoff: Duration::from_millis(1),
        }
    }
}

/// What `Registry::handle` answers: the reply, a descriptor to send with it, and the
/// admission to undo if the reply cannot be delivered.
pub(super) struct Answer {
    pub reply: Reply,
    pub fd: Option<OwnedFd>,
    pub admitted: Option<Admitted>,
}

/// `e` about channel `name`, with what to do.
fn prefix_channel(e: Error, name: &str, remedy: &str) -> Error {
    match e {
        Error::Corrupted(m) => Error::Corrupted(format!("channel {name:?}: {m}; {remedy}")),
        other => other,
    }
}

/// `list`'s view of a channel.
fn info(name: &str, seg: &Segment) -> ChannelInfo {
    let geo = seg.geometry();
    let origin = seg.origin();
    let s = seg.stats();
    ChannelInfo {
        name: name.to_string(),
        kind: geo.kind,
        overflow: geo.overflow,
        history: geo.history,
        // A partition's checkpoint area is not frame storage.
        capacity_bytes: if geo.checkpoint_size > 0 {
            geo.checkpoint as u64
        } else {
            geo.data_len as u64
        },
        slots: if geo.kind != Kind::Spsc {
            geo.capacity
        } else {
            0
        },
        max_frame_size: geo.max_frame_size,
        max_message_size: geo.max_message_size,
        max_producers: geo.max_producers,
        max_consumers: geo.max_consumers,
        mode: origin.mode,
        owner_uid: origin.owner_uid,
        owner_gid: origin.owner_gid,
        generation: origin.generation,
        created_unix_ns: origin.created_unix_ns,
        producers: s.producers.len() as u32,
        consumers: s.consumers.len() as u32,
        depth: s.depth,
        partitions: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_bits_apply_as_for_files() {
        let origin = Origin {
            owner_uid: 1000,
            owner_gid: 100,
            mode: 0o640,
            ..Origin::default()
        };
        let peer = |uid, gid, groups: Vec<u32>| Peer {
            pid: 1,
            uid,
            gid,
            groups,
        };
        assert!(permits(&peer(1000, 5, vec![]), &origin, 6));
        assert!(permits(&peer(0, 0, vec![]), &origin, 6));
        assert!(permits(&peer(2000, 100, vec![]), &origin, 4));
        assert!(!permits(&peer(2000, 100, vec![]), &origin, 6));
        assert!(permits(&peer(2000, 7, vec![100]), &origin, 4));
        assert!(!permits(&peer(2000, 7, vec![]), &origin, 4));
    }

    /// A follow asked twice for the same entry (the first reply lost: the client gave up
    /// waiting and asks again) gets the same entry in the new generation, not a second one.
    /// (Found in review: an SPSC channel then had its one producer entry taken twice.)
    #[test]
    fn a_follow_asked_again_gets_the_same_entry() {
        let dir = std::env::temp_dir().join(format!("shmring-follow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut reg = Registry::new("follow-test", 1 << 30, dir.join("record"));
        let epoll = Epoll::new(nix::sys::epoll::EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        let pid = std::process::id();
        reg.connected(&epoll, pid, sys::pidfd_open(pid).unwrap())
            .unwrap();
        let peer = Peer {
            pid,
            uid: sys::euid(),
            gid: 0,
            groups: Vec::new(),
        };
        let ok = |a: Answer| match a.reply {
            Reply::Error { message, .. } => panic!("{message}"),
            r => r,
        };
        ok(reg.handle(
            &epoll,
            &peer,
            Request::Create {
                name: "c".into(),
                config: ChannelConfig::spsc(),
            },
        ));
        let opened = |reg: &mut Registry, role| match ok(reg.handle(
            &epoll,
            &peer,
            Request::Open {
                name: "c".into(),
                role,
            },
        )) {
            Reply::Opened {
                index,
                owner,
                generation,
            } => (index, owner, generation),
            r => panic!("{r:?}"),
        };
        let producer = opened(&mut reg, Role::Producer);
        let consumer = opened(&mut reg, Role::Consumer);
        ok(reg.handle(
            &epoll,
            &peer,
            Request::Resize {
                name: "c".into(),
                capacity: 4 << 20,
            },
        ));
        for (role, (index, owner, generation)) in
            [(Role::Producer, producer), (Role::Consumer, consumer)]
        {
            let follow = |reg: &mut Registry| {
                ok(reg.handle(
                    &epoll,
                    &peer,
                    Request::Follow {
                        name: "c".into(),
                        generation,
                        role,
                        index,
                        owner,
                    },
                ))
            };
            let first = follow(&mut reg);
            assert!(matches!(first, Reply::Opened { generation: g, .. } if g > generation));
            assert_eq!(follow(&mut reg), first, "{role}: the same entry");
        }
        reg.remove_all();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

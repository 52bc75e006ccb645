//! The coordinator's event loop: one thread, one epoll set holding the listening socket, every
//! client connection, every watched process's pidfd and a stop socket. Nothing blocks: reads
//! and writes are non-blocking with per-connection buffers, so a slow or hostile client cannot
//! delay the repair of another's channel.
//!
//! What one connection may hold is bounded (ARCHITECTURE.md, "Threat model"): replies and
//! descriptors queued for it (over the cap, its requests are not read until it takes its
//! replies), its receive buffer (one request at most, grown as bytes arrive and freed when
//! empty), and time (a message begun must be finished, and a reply begun taken, within the
//! message timeout). Connections are capped per user and in all, with a refusal that names the
//! limit.
//!
//! A descriptor a client chose is never closed on the event loop: its last close may block
//! (a TCP socket lingering on unsent data, a file on a FUSE mount). Those received and not kept,
//! and the sockets of client connections (whose receive queues may hold more in flight), go to
//! the closer threads (`Closer`), one per user whose clients caused the close.

use super::registry::{Admitted, PIDFD_TOKEN, Peer, Quotas, Registry};
use crate::error::{Error, Result};
use crate::protocol::{
    self, ErrorCode, FrameReader, HELLO_ACCEPTED, HELLO_BUSY, HELLO_INCOMPATIBLE,
    HELLO_NOT_A_HELLO, HELLO_REFUSED, MAX_REQUEST, PROTOCOL_VERSION, Reply, Request,
};
use crate::sys;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags, EpollTimeout};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LISTENER: u64 = 0;
const STOP: u64 = 1;
const CLOSER: u64 = 2;
const FIRST_CONN: u64 = 3;

/// Most reply bytes queued for one client before it is dropped as not reading.
const MAX_QUEUED: usize = 16 << 20;
/// Reply bytes queued for one client (`REPLY_OVERHEAD` counted for each reply) above which its
/// requests are not read until it has taken its replies (a client that only sends cannot make
/// the coordinator buffer for it). The closes a client library may pipeline
/// (`MAX_PENDING_CLOSES`, 4096 five-byte replies) fit with room to spare.
const READ_PAUSE: usize = 512 << 10;
/// Bytes counted for each queued reply besides its own: its bookkeeping.
const REPLY_OVERHEAD: usize = 64;
/// Segment descriptors queued for one client (each an open descriptor of the coordinator's
/// until written) at which its requests are not read until it takes its replies. A client of
/// the library waits for each reply, so it never has more than one.
pub(super) const MAX_QUEUED_FDS: usize = 4;
/// Replies queued for one client at which its requests are not read until it takes them.
const MAX_QUEUED_REPLIES: usize = 8192;
/// Request bytes buffered for one connection at which it is not read from: a whole request of
/// the largest size fits, and a complete one waits to be answered.
const MAX_BUFFERED: usize = 4 + MAX_REQUEST;
/// How often frame rates are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How long the listener rests when the process is out of file descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Most reads from one connection per readiness event: epoll is level-triggered, so a client
/// that keeps sending is served again next round, after everyone else.
const READS_PER_EVENT: usize = 16;
/// Descriptors the coordinator needs besides its connections' (listener, epoll set, stop
/// socket, lock, channels' segments, logging...), when deriving the connection cap from the
/// open-file limit, with room for the most one read may receive (`sys::SCM_MAX_FD`: those that
/// do not fit are closed by the kernel on the event loop).
const FD_RESERVE: u64 = 64 + sys::SCM_MAX_FD as u64;
/// Descriptors waiting for the closer that one user's clients may have caused (sent, or
/// connections closed) before its connections are no longer read: a well-behaved client has
/// one or two, closed within microseconds.
const PENDING_CLOSES_PER_UID: usize = 64;
/// Most descriptors waiting for the closer in all (and at most an eighth of the open-file
/// limit) before new connections wait (each costs one to close).
const MAX_PENDING_CLOSES: u64 = 1024;
/// Descriptors one connection may hold: its socket, its process's pidfd, queued segments.
const FDS_PER_CONN: u64 = 2 + MAX_QUEUED_FDS as u64;
/// Freed receive-buffer bytes after which the allocator is asked to give memory back.
const TRIM_AFTER: usize = 1 << 20;

/// How the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Exit {
    /// Asked to stop.
    Stopped,
    /// Could not go on (the reason is logged).
    Failed,
}

/// A reply waiting to be written, with the descriptor to attach to its first byte and the
/// admission to undo if the connection closes before it is written.
struct Outgoing {
    bytes: Vec<u8>,
    sent: usize,
    fd: Option<OwnedFd>,
    undo: Option<Admitted>,
}

struct Conn {
    stream: UnixStream,
    peer: Peer,
    reader: FrameReader,
    greeted: bool,
    out: VecDeque<Outgoing>,
    queued: usize,
    /// Descriptors in `out` not yet written.
    queued_fds: usize,
    /// Close once the queued replies are written (after a protocol violation).
    closing: bool,
    /// The interest registered: (EPOLLIN, EPOLLOUT).
    interest: (bool, bool),
    /// Descriptors received (`SCM_RIGHTS`) for requests not yet answered: only a
    /// `Request::Adopt` comes with one.
    fds: VecDeque<OwnedFd>,
    /// When the connection was accepted (its hello is due within the message timeout).
    accepted: Instant,
    /// When the message now partly received began to arrive.
    partial_since: Option<Instant>,
    /// Since when replies have waited without any being written.
    stalled_since: Option<Instant>,
}

impl Conn {
    /// Whether the connection holds as many replies or descriptors as it may: its requests
    /// wait until it takes some.
    fn over_cap(&self) -> bool {
        self.queued_fds >= MAX_QUEUED_FDS
            || self.out.len() >= MAX_QUEUED_REPLIES
            || self.queued > READ_PAUSE
    }

    /// Whether to read from the connection.
    fn wants_input(&self) -> bool {
        !self.closing && !self.over_cap() && self.reader.buffered() < MAX_BUFFERED
    }
}

/// The connection limits and the message timeout.
#[derive(Clone, Copy, Debug)]
struct ConnLimits {
    max: usize,
    per_uid: usize,
    timeout: Duration,
}

/// Logs a kind of event at most once a second, with the count of those not logged.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(suppressed since the last one)` if this one may be logged.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Most descriptors received from one connection and not yet used by its requests: a client
/// sends one with each segment it hands back, and waits for the answer before the next.
const MAX_RECEIVED_FDS: usize = 4;

pub(super) struct Server {
    epoll: Epoll,
    listener: UnixListener,
    /// The listener is out of the epoll set until then (no file descriptors were left).
    listener_paused: Option<Instant>,
    stop: UnixStream,
    conns: HashMap<u64, Conn>,
    /// Connections per uid.
    per_uid: HashMap<u32, usize>,
    limits: ConnLimits,
    next_conn: u64,
    pub(super) registry: Registry,
    namespace: String,
    /// Receive-buffer bytes freed since the allocator last gave memory back.
    freed: usize,
    refusals: Throttle,
    timeouts: Throttle,
    closer: Closer,
    /// Connections not read because their user has too many closes waiting (`Closer::over`):
    /// looked at again when the closer catches up.
    held: HashSet<u64>,
}

fn flags(read: bool, write: bool) -> EpollFlags {
    let mut f = EpollFlags::empty();
    if read {
        // A peer's half-close is news only while reading: watched when not reading, it would
        // wake the level-triggered loop again and again.
        f |= EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
    }
    if write {
        f |= EpollFlags::EPOLLOUT;
    }
    f
}

/// Descriptors waiting for the closer at which new connections wait, for an open-file limit
/// of `nofile`.
fn pending_cap(nofile: u64) -> usize {
    (nofile / 8).clamp(16, MAX_PENDING_CLOSES) as usize
}

/// The connection cap: `configured`, lowered to what an open-file limit of `nofile`
/// descriptors allows, so that a full house ends in clear refusals, not in failing accepts.
fn connection_cap(configured: usize, nofile: u64) -> usize {
    let reserve = FD_RESERVE + pending_cap(nofile) as u64;
    let fit = nofile.saturating_sub(reserve) / FDS_PER_CONN;
    configured.min(usize::try_from(fit).unwrap_or(usize::MAX).max(1))
}

/// Most users with a closer thread of their own at once; the closes of others go to one shared
/// thread.
const MAX_CLOSER_THREADS: usize = 64;

/// Descriptors waiting to be closed, in all and per user whose clients caused them, and the
/// queues of the closer threads.
#[derive(Default)]
struct Pending {
    total: usize,
    per_uid: HashMap<u32, usize>,
    /// The queue of each user with a closer thread of its own: present exactly while that
    /// thread runs (it removes its entry, under this lock, when it finds the queue empty).
    queues: HashMap<u32, VecDeque<OwnedFd>>,
    /// The queue of the shared thread, for users beyond `MAX_CLOSER_THREADS`.
    shared: VecDeque<(u32, OwnedFd)>,
    /// Whether the shared thread runs (it clears this, under this lock, when `shared` is
    /// empty).
    shared_running: bool,
}

fn lock(p: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// The closers: threads that close the descriptors clients chose, so that a close that blocks
/// holds such a thread, never the event loop. Each user whose clients caused closes has a
/// thread of its own (up to `MAX_CLOSER_THREADS` users; beyond that they share one), so a close
/// that never returns holds up only the closes of the user who caused it. What waits is counted
/// per user: a user with `PENDING_CLOSES_PER_UID` waiting is not read from (no new descriptor
/// comes from it), and with `cap` waiting in all no connection is accepted, until closes
/// complete.
struct Closer {
    state: Arc<Shared>,
    /// Readable when a user's count or the total fell below its limit (the loop's end of a
    /// pair; a closer writes a byte to the other).
    wake: UnixStream,
    cap: usize,
}

/// What the loop and the closer threads share.
struct Shared {
    pending: Mutex<Pending>,
    wake_tx: UnixStream,
    cap: usize,
}

impl Shared {
    /// Counts one close of `uid` done, and wakes the loop if a limit was passed downwards.
    fn done(&self, uid: u32) {
        let mut p = lock(&self.pending);
        p.total -= 1;
        let left = p.per_uid.get_mut(&uid).map_or(0, |n| {
            *n -= 1;
            *n
        });
        if left == 0 {
            p.per_uid.remove(&uid);
        }
        let freed = left + 1 == PENDING_CLOSES_PER_UID || p.total + 1 == self.cap;
        drop(p);
        if freed {
            let _ = (&self.wake_tx).write(&[1]); // full: a wake-up is already due
        }
    }

    /// The thread of `uid`'s own queue: ends when it finds the queue empty. A close that never
    /// returns keeps it (it is not joined): the loop and other users' closes go on.
    fn run_uid(self: Arc<Self>, uid: u32) {
        loop {
            let fd = {
                let mut p = lock(&self.pending);
                match p.queues.get_mut(&uid).and_then(VecDeque::pop_front) {
                    Some(fd) => fd,
                    None => {
                        p.queues.remove(&uid);
                        return;
                    }
                }
            };
            drop(fd);
            self.done(uid);
        }
    }

    /// The shared thread: ends when it finds its queue empty.
    fn run_shared(self: Arc<Self>) {
        loop {
            let (uid, fd) = {
                let mut p = lock(&self.pending);
                match p.shared.pop_front() {
                    Some(next) => next,
                    None => {
                        p.shared_running = false;
                        return;
                    }
                }
            };
            drop(fd);
            self.done(uid);
        }
    }
}

impl Closer {
    fn start(cap: usize) -> Result<Closer> {
        let (wake, wake_tx) =
            UnixStream::pair().map_err(|e| Error::os("creating the closer's wake socket", e))?;
        for s in [&wake, &wake_tx] {
            s.set_nonblocking(true)
                .map_err(|e| Error::os("configuring the closer's wake socket", e))?;
        }
        Ok(Closer {
            state: Arc::new(Shared {
                pending: Mutex::new(Pending::default()),
                wake_tx,
                cap,
            }),
            wake,
            cap,
        })
    }

    /// Closes `fd` on a closer thread (`uid`'s own, started if none runs), counted against
    /// `uid` until done.
    fn close(&self, uid: u32, fd: impl Into<OwnedFd>) {
        let fd = fd.into();
        let mut p = lock(&self.state.pending);
        p.total += 1;
        *p.per_uid.entry(uid).or_insert(0) += 1;
        if let Some(q) = p.queues.get_mut(&uid) {
            q.push_back(fd);
            return;
        }
        let fd = if p.queues.len() < MAX_CLOSER_THREADS {
            // Started under the lock: it takes its first descriptor once this returns.
            p.queues.insert(uid, VecDeque::from([fd]));
            let state = Arc::clone(&self.state);
            let started = std::thread::Builder::new()
                .name(format!("shmring-closer-{uid}"))
                .spawn(move || state.run_uid(uid));
            if started.is_ok() {
                return;
            }
            match p.queues.remove(&uid).and_then(|mut q| q.pop_front()) {
                Some(fd) => fd,
                None => return,
            }
        } else {
            fd
        };
        p.shared.push_back((uid, fd));
        if !p.shared_running {
            let state = Arc::clone(&self.state);
            match std::thread::Builder::new()
                .name("shmring-closer".into())
                .spawn(move || state.run_shared())
            {
                Ok(_) => p.shared_running = true,
                Err(e) => {
                    // No thread to close it: leaking one descriptor is better than a close
                    // that may block the loop.
                    tracing::warn!(error = %e, "cannot start a closer thread; leaking a descriptor");
                    if let Some((_, fd)) = p.shared.pop_back() {
                        std::mem::forget(fd);
                    }
                    p.total -= 1;
                    if let Some(n) = p.per_uid.get_mut(&uid) {
                        *n -= 1;
                        if *n == 0 {
                            p.per_uid.remove(&uid);
                        }
                    }
                }
            }
        }
    }

    /// Whether `uid` has as many closes waiting as it may: its connections are not read.
    fn over(&self, uid: u32) -> bool {
        lock(&self.state.pending)
            .per_uid
            .get(&uid)
            .is_some_and(|&n| n >= PENDING_CLOSES_PER_UID)
    }

    /// Whether so many closes wait that no connection is accepted.
    fn full(&self) -> bool {
        lock(&self.state.pending).total >= self.cap
    }

    /// Takes the wake-up bytes.
    fn drain_wake(&self) {
        let mut b = [0u8; 64];
        while matches!((&self.wake).read(&mut b), Ok(n) if n > 0) {}
    }
}

impl Server {
    /// A server over a bound, listening socket; adopts the namespace's existing segments.
    pub(super) fn new(
        listener: UnixListener,
        stop: UnixStream,
        config: &super::CoordinatorConfig,
        record: std::path::PathBuf,
    ) -> Result<Server> {
        let namespace = config.namespace.as_str();
        let epoll = Epoll::new(nix::sys::epoll::EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| Error::os("creating an epoll set", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::os("configuring the control socket", e))?;
        stop.set_nonblocking(true)
            .map_err(|e| Error::os("configuring the stop socket", e))?;
        epoll
            .add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))
            .map_err(|e| Error::os("watching the control socket", e))?;
        epoll
            .add(&stop, EpollEvent::new(EpollFlags::EPOLLIN, STOP))
            .map_err(|e| Error::os("watching the stop socket", e))?;
        let mut registry = Registry::new(namespace, config.max_channel_bytes, record);
        registry.set_quotas(Quotas {
            channels_per_uid: config.max_channels_per_uid,
            bytes_per_uid: config.max_bytes_per_uid,
        });
        registry.adopt(&epoll)?;
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(u64::MAX, |(soft, _)| soft);
        let max = connection_cap(config.max_connections, nofile);
        let closer = Closer::start(pending_cap(nofile))?;
        epoll
            .add(&closer.wake, EpollEvent::new(EpollFlags::EPOLLIN, CLOSER))
            .map_err(|e| Error::os("watching the closer's wake socket", e))?;
        if max < config.max_connections {
            // The default asks for more than most machines' limits give: said, not warned
            // about, unless a larger number was asked for.
            if config.max_connections == super::DEFAULT_MAX_CONNECTIONS {
                tracing::info!(
                    max,
                    nofile,
                    "serving at most {max} connections at once, what the open-file limit \
                     allows (for more: a higher hard limit, e.g. LimitNOFILE= in a systemd unit)"
                );
            } else {
                tracing::warn!(
                    configured = config.max_connections,
                    max,
                    nofile,
                    "the open-file limit allows fewer connections than configured: raise it \
                     (the hard limit: ulimit -Hn, LimitNOFILE= in a systemd unit) before starting"
                );
            }
        }
        Ok(Server {
            epoll,
            listener,
            listener_paused: None,
            stop,
            conns: HashMap::new(),
            per_uid: HashMap::new(),
            limits: ConnLimits {
                max,
                per_uid: config.max_connections_per_uid.min(max),
                timeout: config.message_timeout,
            },
            next_conn: FIRST_CONN,
            registry,
            namespace: namespace.to_string(),
            freed: 0,
            refusals: Throttle::default(),
            timeouts: Throttle::default(),
            closer,
            held: HashSet::new(),
        })
    }

    /// Serves until the stop socket becomes readable (or is closed).
    pub(super) fn run(&mut self) -> Exit {
        let mut events = vec![EpollEvent::empty(); 256];
        let mut next_sample = Instant::now() + SAMPLE_EVERY;
        let sweep_every =
            (self.limits.timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut next_sweep = Instant::now() + sweep_every;
        loop {
            let now = Instant::now();
            let wake = [
                Some(next_sample),
                Some(next_sweep),
                self.registry.next_retry(),
                self.listener_paused,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_sample);
            let ms = wake
                .saturating_duration_since(now)
                .as_micros()
                .div_ceil(1000)
                .min(u128::from(u16::MAX)) as u16;
            let n = match self.epoll.wait(&mut events, EpollTimeout::from(ms)) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => {
                    tracing::error!(error = %e, "epoll_wait failed; the coordinator stops");
                    return Exit::Failed;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    LISTENER => self.accept(),
                    STOP => {
                        let mut b = [0u8; 16];
                        match (&self.stop).read(&mut b) {
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                            _ => return Exit::Stopped,
                        }
                    }
                    CLOSER => {
                        self.closer.drain_wake();
                        for id in std::mem::take(&mut self.held) {
                            self.update_interest(id);
                        }
                    }
                    t if t & PIDFD_TOKEN != 0 => {
                        self.registry.exited(&self.epoll, (t & !PIDFD_TOKEN) as u32)
                    }
                    id => self.conn_event(id, ev.events()),
                }
                self.close_dead_conns();
            }
            self.registry.repair_pending();
            self.close_dead_conns();
            if let Some(until) = self.listener_paused
                && Instant::now() >= until
            {
                self.listener_paused = None;
                if let Err(e) = self.epoll.add(
                    &self.listener,
                    EpollEvent::new(EpollFlags::EPOLLIN, LISTENER),
                ) {
                    tracing::error!(error = %e, "cannot watch the control socket again; the coordinator stops");
                    return Exit::Failed;
                }
            }
            if Instant::now() >= next_sweep {
                self.sweep();
                next_sweep = Instant::now() + sweep_every;
            }
            if Instant::now() >= next_sample {
                self.registry.sample_rates();
                next_sample = Instant::now() + SAMPLE_EVERY;
            }
        }
    }

    /// Closes the connections of processes found dead: one a forked child still holds speaks
    /// with the dead parent's credentials (the child's client reconnects as itself).
    fn close_dead_conns(&mut self) {
        for pid in self.registry.take_dead_pids() {
            let ids: Vec<u64> = self
                .conns
                .iter()
                .filter(|(_, c)| c.peer.pid == pid)
                .map(|(&id, _)| id)
                .collect();
            for id in ids {
                self.drop_conn(id);
            }
        }
    }

    /// Closes the connections that ran past the message timeout: a hello not sent, a message
    /// begun and not finished, replies not taken. Then gives freed memory back.
    fn sweep(&mut self) {
        let now = Instant::now();
        let timeout = self.limits.timeout;
        let late = |since: Option<Instant>| since.is_some_and(|t| now.duration_since(t) >= timeout);
        let expired: Vec<(u64, &'static str, u32)> = self
            .conns
            .iter()
            .filter_map(|(&id, c)| {
                let why = if !c.greeted && late(Some(c.accepted)) {
                    "it sent no hello"
                } else if late(c.partial_since) {
                    "it began a message and did not finish it"
                } else if late(c.stalled_since) {
                    "it does not take its replies"
                } else {
                    return None;
                };
                Some((id, why, c.peer.pid))
            })
            .collect();
        for (id, why, pid) in expired {
            if let Some(suppressed) = self.timeouts.allow() {
                tracing::warn!(
                    pid,
                    suppressed,
                    "closing a connection: {why} within {timeout:?}"
                );
            }
            self.drop_conn(id);
        }
        if self.freed >= TRIM_AFTER {
            self.freed = 0;
            if self.conns.capacity() > 64 && self.conns.len() < self.conns.capacity() / 4 {
                self.conns.shrink_to_fit();
                self.per_uid.shrink_to_fit();
            }
            sys::trim_memory();
        }
    }

    fn accept(&mut self) {
        loop {
            if self.closer.full() {
                // Every connection costs a descriptor to close in the end: none until the
                // closer catches up.
                if let Some(suppressed) = self.refusals.allow() {
                    tracing::warn!(
                        suppressed,
                        "too many descriptors clients sent wait to be closed: not accepting \
                         for {ACCEPT_PAUSE:?}"
                    );
                }
                let _ = self.epoll.delete(&self.listener);
                self.listener_paused = Some(Instant::now() + ACCEPT_PAUSE);
                return;
            }
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                        // The pending connection stays queued, and a level-triggered listener
                        // would wake the loop at once, again and again: rest it a while.
                        tracing::warn!(
                            "out of file descriptors: not accepting for {ACCEPT_PAUSE:?}"
                        );
                        let _ = self.epoll.delete(&self.listener);
                        self.listener_paused = Some(Instant::now() + ACCEPT_PAUSE);
                    } else {
                        tracing::warn!(error = %e, "accept failed");
                    }
                    return;
                }
            };
            let mut uid = u32::MAX;
            match self.admit_conn(&stream, &mut uid) {
                Ok(Some((id, peer))) => {
                    self.conns.insert(
                        id,
                        Conn {
                            stream,
                            peer,
                            reader: FrameReader::new(MAX_REQUEST),
                            greeted: false,
                            out: VecDeque::new(),
                            queued: 0,
                            queued_fds: 0,
                            closing: false,
                            interest: (true, false),
                            fds: VecDeque::new(),
                            accepted: Instant::now(),
                            partial_since: None,
                            stalled_since: None,
                        },
                    );
                }
                Ok(None) => self.close_socket(uid, stream),
                Err(e) => {
                    tracing::warn!(error = %e, "dropping a client connection");
                    self.close_socket(uid, stream);
                }
            }
        }
    }

    /// Closes a connection's socket. If its user has as many closes waiting as it may, the
    /// socket's receiving side is shut down (its peer can queue nothing more: the kernel
    /// checks under the lock it queues under), what it holds is read once (a hello, and any
    /// descriptors to its user's closer), and if nothing is left in flight it is closed here:
    /// such a close releases no descriptor a client chose, so it cannot block and costs nothing
    /// against the closers' limits. Otherwise it goes to its user's closer.
    fn close_socket(&self, uid: u32, stream: UnixStream) {
        if self.closer.over(uid) && stream.shutdown(std::net::Shutdown::Read).is_ok() {
            // Does not block: with the receiving side shut down an empty queue reads as the
            // end.
            let mut buf = [0u8; 4096];
            let mut fds = Vec::new();
            let _ = sys::recv_with_fds(&stream, &mut buf, &mut fds);
            for fd in fds {
                self.closer.close(uid, fd);
            }
            if sys::unread_bytes(&stream) == Some(0) {
                drop(stream);
                return;
            }
        }
        self.closer.close(uid, stream);
    }

    /// Refuses a connection with a hello that says why (the client reports the text), then
    /// closes it.
    fn refuse(&mut self, stream: &UnixStream, status: u8, text: &str) {
        let _ = sys::send_nonblocking(stream, &protocol::server_hello(status, text), None);
        if let Some(suppressed) = self.refusals.allow() {
            tracing::warn!(suppressed, "refused a client: {text}");
        }
    }

    /// Admits a connection: `Some((id, peer))` to serve, `None` if refused. `uid` is set to
    /// the peer's as soon as it is known (a refused connection's socket is closed on its
    /// account).
    fn admit_conn(&mut self, stream: &UnixStream, uid: &mut u32) -> Result<Option<(u64, Peer)>> {
        stream
            .set_nonblocking(true)
            .map_err(|e| Error::os("configuring a client connection", e))?;
        let cred = sys::peer_cred(stream)?;
        *uid = cred.uid;
        if self.closer.over(cred.uid) {
            // Not read if accepted: refused, and closed at once if nothing is in flight in it
            // (`close_socket`), so that a user whose close is stuck cannot fill the closers'
            // total with connections it opens and drops.
            let text = format!(
                "too many descriptors the clients of uid {} sent wait to be closed: try again \
                 later",
                cred.uid
            );
            self.refuse(stream, HELLO_BUSY, &text);
            return Ok(None);
        }
        if cred.pid == 0 {
            // The kernel gives pid 0 for a peer in a pid namespace this one cannot see: such a
            // client's death could not be told apart from anyone else's.
            let text = "clients in another pid namespace are not supported: run the client \
                        where the coordinator can see its pid";
            let _ =
                sys::send_nonblocking(stream, &protocol::server_hello(HELLO_REFUSED, text), None);
            return Err(Error::Unavailable(format!("refused a client: {text}")));
        }
        // Per user first: a user at its own limit is told so even when all are at theirs.
        let of_uid = self.per_uid.get(&cred.uid).copied().unwrap_or(0);
        if of_uid >= self.limits.per_uid {
            let text = format!(
                "coordinator at its limit of {} connections for uid {} (shmringd \
                 --max-connections-per-uid): close some, or try again later",
                self.limits.per_uid, cred.uid
            );
            self.refuse(stream, HELLO_BUSY, &text);
            return Ok(None);
        }
        if self.conns.len() >= self.limits.max {
            let text = format!(
                "coordinator at its limit of {} connections (shmringd --max-connections): \
                 try again later",
                self.limits.max
            );
            self.refuse(stream, HELLO_BUSY, &text);
            return Ok(None);
        }
        let pidfd = sys::peer_pidfd(stream, cred.pid)?;
        let peer = Peer {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
            groups: sys::supplementary_groups(cred.pid),
        };
        let id = self.next_conn;
        self.next_conn += 1;
        self.epoll
            .add(stream, EpollEvent::new(flags(true, false), id))
            .map_err(|e| Error::os("watching a client connection", e))?;
        if let Err(e) = self.registry.connected(&self.epoll, peer.pid, pidfd) {
            let _ = self.epoll.delete(stream);
            return Err(e);
        }
        tracing::debug!(pid = peer.pid, uid = peer.uid, "client connected");
        *self.per_uid.entry(peer.uid).or_insert(0) += 1;
        Ok(Some((id, peer)))
    }

    fn conn_event(&mut self, id: u64, ev: EpollFlags) {
        if ev.contains(EpollFlags::EPOLLOUT) {
            self.writable(id);
        }
        if ev.contains(EpollFlags::EPOLLHUP)
            && self
                .conns
                .get(&id)
                .is_some_and(|c| self.closer.over(c.peer.uid))
        {
            // Gone while not read (its user's closes wait): epoll reports the hang-up whatever
            // the interest, so the connection goes now rather than wake the loop again and
            // again until the closer catches up. What it sent unread is lost with it.
            self.drop_conn(id);
            return;
        }
        if ev.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP) {
            self.read(id);
        }
        if ev.contains(EpollFlags::EPOLLERR) {
            self.drop_conn(id);
        }
    }

    /// Reads what the client sent and answers every complete request, as far as its caps
    /// allow.
    fn read(&mut self, id: u64) {
        let mut buf = [0u8; 16 << 10];
        let mut eof = false;
        let frames_before = match self.conns.get(&id) {
            Some(c) => c.reader.frames(),
            None => return,
        };
        for _ in 0..READS_PER_EVENT {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            if !c.wants_input() || self.closer.over(c.peer.uid) {
                // Its replies first, or the closes its user caused: `update_interest` stops
                // EPOLLIN meanwhile.
                break;
            }
            // Never more than a whole request's worth buffered.
            let room = MAX_BUFFERED - c.reader.buffered();
            let take = room.min(buf.len());
            let mut fds = Vec::new();
            match sys::recv_with_fds(&c.stream, &mut buf[..take], &mut fds) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    c.reader.push(&buf[..n]);
                    c.fds.extend(fds);
                    if c.fds.len() > MAX_RECEIVED_FDS {
                        tracing::warn!(
                            pid = c.peer.pid,
                            "client sent more descriptors than requests to go with them; closing"
                        );
                        eof = true;
                        break;
                    }
                    self.process(id);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if eof {
            self.drop_conn(id);
            return;
        }
        if let Some(c) = self.conns.get_mut(&id) {
            let partial = c.reader.buffered() > 0 && !c.reader.has_frame();
            c.partial_since = if !partial {
                None
            } else if c.reader.frames() != frames_before || c.partial_since.is_none() {
                // A new message began (the one before it was complete).
                Some(Instant::now())
            } else {
                c.partial_since
            };
            c.reader.shrink();
        }
        self.update_interest(id);
    }

    /// The connection can be written to: writes what is queued, then answers the requests that
    /// waited for room.
    fn writable(&mut self, id: u64) {
        if !self.write_out(id) {
            return;
        }
        if self
            .conns
            .get(&id)
            .is_some_and(|c| !c.closing && !c.over_cap() && c.reader.has_frame())
        {
            self.process(id);
        } else {
            self.finish(id);
        }
    }

    /// Answers the complete frames buffered for connection `id`, while it is under its caps.
    fn process(&mut self, id: u64) {
        loop {
            let Some(c) = self.conns.get(&id) else {
                return;
            };
            if c.closing {
                break;
            }
            if c.over_cap() {
                if !self.write_out(id) {
                    return;
                }
                match self.conns.get(&id) {
                    Some(c) if !c.over_cap() => continue,
                    Some(_) => break, // the rest waits for EPOLLOUT
                    None => return,
                }
            }
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            let payload = match c.reader.next_frame() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(len) => {
                    let text = format!(
                        "control message of {len} bytes exceeds the limit of {MAX_REQUEST} bytes"
                    );
                    tracing::warn!(pid = c.peer.pid, "{text}; closing the connection");
                    let greeted = c.greeted;
                    if greeted {
                        self.reply_error(id, ErrorCode::InvalidArgument, text);
                    } else {
                        self.queue(
                            id,
                            protocol::server_hello(HELLO_NOT_A_HELLO, &text),
                            None,
                            None,
                        );
                    }
                    self.close_after_flush(id);
                    break;
                }
            };
            if !c.greeted {
                self.hello(id, &payload);
                continue;
            }
            let peer = c.peer.clone();
            match protocol::decode::<Request>(&payload) {
                Ok(req) => {
                    let answer = match req {
                        Request::Adopt { name, generation } => {
                            let fd = c.fds.pop_front();
                            let (answer, refused) = self.registry.handed_back(
                                &self.epoll,
                                &peer,
                                &name,
                                generation,
                                fd,
                            );
                            if let Some(fd) = refused {
                                self.closer.close(peer.uid, fd);
                            }
                            answer
                        }
                        req => self.registry.handle(&self.epoll, &peer, req),
                    };
                    let reply = match answer.reply {
                        Reply::Limits(mut l) => {
                            l.connections =
                                self.per_uid.get(&peer.uid).copied().unwrap_or(0) as u64;
                            l.max_connections_per_uid = self.limits.per_uid as u64;
                            l.all_connections = self.conns.len() as u64;
                            l.max_connections = self.limits.max as u64;
                            Reply::Limits(l)
                        }
                        other => other,
                    };
                    self.queue(id, protocol::encode(&reply), answer.fd, answer.admitted);
                }
                Err(e) => {
                    tracing::warn!(pid = peer.pid, error = %e, "malformed request; closing the connection");
                    self.reply_error(id, ErrorCode::Incompatible, e.to_string());
                    self.close_after_flush(id);
                    break;
                }
            }
        }
        self.finish(id);
    }

    fn hello(&mut self, id: u64, payload: &[u8]) {
        match protocol::parse_client_hello(payload) {
            Some(PROTOCOL_VERSION) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.greeted = true;
                }
                let ns = self.namespace.clone();
                self.queue(id, protocol::server_hello(HELLO_ACCEPTED, &ns), None, None);
            }
            Some(v) => {
                let text = format!(
                    "the client speaks control protocol version {v}, this coordinator speaks \
                     {PROTOCOL_VERSION}: use a shmring library and shmringd of the same release"
                );
                self.queue(
                    id,
                    protocol::server_hello(HELLO_INCOMPATIBLE, &text),
                    None,
                    None,
                );
                self.close_after_flush(id);
            }
            None => {
                let text = "expected a shmring hello (\"shmring\\0\" and a protocol version)";
                self.queue(
                    id,
                    protocol::server_hello(HELLO_NOT_A_HELLO, text),
                    None,
                    None,
                );
                self.close_after_flush(id);
            }
        }
    }

    fn reply_error(&mut self, id: u64, code: ErrorCode, message: String) {
        self.queue(
            id,
            protocol::encode(&Reply::Error { code, message }),
            None,
            None,
        );
    }

    /// Marks the connection to be closed once its queued replies are written (by `finish`).
    fn close_after_flush(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.closing = true;
        }
    }

    /// Queues a reply and writes what the socket takes.
    fn queue(&mut self, id: u64, bytes: Vec<u8>, fd: Option<OwnedFd>, undo: Option<Admitted>) {
        let Some(c) = self.conns.get_mut(&id) else {
            if let Some(a) = undo {
                self.registry.unadmit(&self.epoll, &a);
            }
            return;
        };
        c.queued += bytes.len() + REPLY_OVERHEAD;
        c.queued_fds += usize::from(fd.is_some());
        if c.out.is_empty() {
            c.stalled_since = Some(Instant::now());
        }
        c.out.push_back(Outgoing {
            bytes,
            sent: 0,
            fd,
            undo,
        });
        if c.queued > MAX_QUEUED {
            tracing::warn!(
                pid = c.peer.pid,
                "client does not read its replies; closing"
            );
            self.drop_conn(id);
            return;
        }
        // Written at once, each by itself, as the replies to a client's pipelined requests
        // always were: a client of an earlier release that reads a close's reply and the next
        // open's in one go loses the open's descriptor.
        self.write_out(id);
    }

    /// Writes queued replies until done or the socket is full. Returns whether the connection
    /// is still open.
    fn write_out(&mut self, id: u64) -> bool {
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        while let Some(front) = c.out.front_mut() {
            let fd = front.fd.as_ref().map(|f| f.as_raw_fd());
            match sys::send_nonblocking(&c.stream, &front.bytes[front.sent..], fd) {
                Ok(n) => {
                    front.sent += n;
                    if front.fd.take().is_some() {
                        c.queued_fds -= 1; // travelled with the first byte
                    }
                    c.stalled_since = Some(Instant::now());
                    if front.sent == front.bytes.len() {
                        c.queued -= front.bytes.len() + REPLY_OVERHEAD;
                        c.out.pop_front(); // delivered to the socket: nothing to undo
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.drop_conn(id);
                    return false;
                }
            }
        }
        if c.out.is_empty() {
            c.stalled_since = None;
        }
        true
    }

    /// Ends a round of work on a connection: writes what is queued, closes it if it was to be
    /// closed and all is written, and registers what it waits for.
    fn finish(&mut self, id: u64) {
        if !self.write_out(id) {
            return;
        }
        if self
            .conns
            .get(&id)
            .is_some_and(|c| c.out.is_empty() && c.closing)
        {
            self.drop_conn(id);
            return;
        }
        self.update_interest(id);
    }

    /// Registers what connection `id` waits for: to write while replies are queued, to read
    /// while under its caps.
    fn update_interest(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut read = c.wants_input();
        if read && self.closer.over(c.peer.uid) {
            read = false;
            self.held.insert(id);
        }
        let want = (read, !c.out.is_empty());
        if want != c.interest {
            c.interest = want;
            let mut ev = EpollEvent::new(flags(want.0, want.1), id);
            let _ = self.epoll.modify(&c.stream, &mut ev);
        }
    }

    fn drop_conn(&mut self, id: u64) {
        self.apply_last_closes(id);
        if let Some(c) = self.conns.remove(&id) {
            self.held.remove(&id);
            let _ = self.epoll.delete(&c.stream);
            // The client's choice of files: the socket (its receive queue may hold descriptors
            // in flight, released by its close) and what it sent and no request took.
            self.close_socket(c.peer.uid, c.stream);
            for fd in c.fds {
                self.closer.close(c.peer.uid, fd);
            }
            if let Some(n) = self.per_uid.get_mut(&c.peer.uid) {
                *n -= 1;
                if *n == 0 {
                    self.per_uid.remove(&c.peer.uid);
                }
            }
            self.freed +=
                c.reader.capacity() + c.out.iter().map(|o| o.bytes.capacity()).sum::<usize>();
            // Replies not (wholly) written: the client cannot have learnt of their admissions.
            for o in c.out {
                if let Some(a) = o.undo {
                    self.registry.unadmit(&self.epoll, &a);
                }
            }
            self.registry.disconnected(&self.epoll, c.peer.pid);
            tracing::debug!(pid = c.peer.pid, "client disconnected");
        }
    }
}

impl Server {
    /// Applies the closes a client sent before it went away that no reply could be written
    /// for: a client that drops its last handles and its connection together sends their
    /// closes and hangs up, and the reply to the first fails, which dropped the rest unread.
    /// Their admissions then stayed in the books until the process exited, and a deleted
    /// channel's memory with them. A close only gives back what the client held, so it needs
    /// no reply; what else is buffered is dropped. Bounded: one buffer's worth, read once.
    fn apply_last_closes(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if !c.greeted {
            return;
        }
        let mut buf = [0u8; 16 << 10];
        let mut fds = Vec::new();
        while c.reader.buffered() < MAX_BUFFERED {
            let take = (MAX_BUFFERED - c.reader.buffered()).min(buf.len());
            match sys::recv_with_fds(&c.stream, &mut buf[..take], &mut fds) {
                Ok(n) if n > 0 => c.reader.push(&buf[..n]),
                _ => break,
            }
        }
        // Descriptors that came with them were sent for no request: closed with the rest.
        c.fds.extend(fds);
        let peer = c.peer.clone();
        let mut closes = Vec::new();
        while let Ok(Some(payload)) = c.reader.next_frame() {
            if let Ok(req @ Request::Close { .. }) = protocol::decode::<Request>(&payload) {
                closes.push(req);
            }
        }
        for req in closes {
            let _ = self.registry.handle(&self.epoll, &peer, req);
        }
    }
}

impl Drop for Server {
    /// At stop, the connections' sockets and the descriptors they sent go to the closer too
    /// (a stop must not hang on them), and so do connections still waiting to be accepted.
    /// Each socket is shut down here first (which never blocks): its client sees the end of
    /// the connection as soon as the stop returns, not whenever the closer gets to it. Found
    /// in review of step 7: a client that made a request right after a stop could still send
    /// it on the old connection, and then lost it to a reset when the closer closed the socket
    /// (`a_new_coordinator_adopts_the_channels_of_the_last` failed one run in three).
    fn drop(&mut self) {
        for (_, c) in self.conns.drain() {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
            self.closer.close(c.peer.uid, c.stream);
            for fd in c.fds {
                self.closer.close(c.peer.uid, fd);
            }
        }
        let _ = self.listener.set_nonblocking(true);
        for _ in 0..4096 {
            match self.listener.accept() {
                Ok((s, _)) => {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                    self.closer.close(u32::MAX, s)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_fits_the_open_file_limit() {
        let reserve = 64 + 253;
        assert_eq!(connection_cap(4096, 1 << 20), 4096);
        assert_eq!(connection_cap(4096, 1024), (1024 - reserve - 128) / 6);
        assert_eq!(connection_cap(10, 1024), 10);
        assert_eq!(connection_cap(4096, 10), 1);
        assert_eq!(pending_cap(1 << 20), 1024);
        assert_eq!(pending_cap(100), 16);
    }
}

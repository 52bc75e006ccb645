//! The coordinator's event loop: one thread, one epoll set holding the listening socket, every
//! client connection, every watched process's pidfd and a stop socket. Nothing blocks: reads
//! and writes are non-blocking with per-connection buffers, so a slow or hostile client cannot
//! delay the repair of another's channel.

use super::registry::{Admitted, PIDFD_TOKEN, Peer, Registry};
use crate::error::{Error, Result};
use crate::protocol::{
    self, ErrorCode, FrameReader, HELLO_ACCEPTED, HELLO_INCOMPATIBLE, HELLO_NOT_A_HELLO,
    HELLO_REFUSED, MAX_REQUEST, PROTOCOL_VERSION, Reply, Request,
};
use crate::sys;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags, EpollTimeout};
use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

const LISTENER: u64 = 0;
const STOP: u64 = 1;
const FIRST_CONN: u64 = 2;

/// Most client connections at once.
const MAX_CONNECTIONS: usize = 4096;
/// Most reply bytes queued for one client before it is dropped as not reading.
const MAX_QUEUED: usize = 16 << 20;
/// Reply bytes queued for one client above which its requests are not read until it has
/// taken its replies (a client that only sends cannot make the coordinator buffer for it).
const READ_PAUSE: usize = 1 << 20;
/// How often frame rates are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How long the listener rests when the process is out of file descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Most reads from one connection per readiness event: epoll is level-triggered, so a client
/// that keeps sending is served again next round, after everyone else.
const READS_PER_EVENT: usize = 16;

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
    /// Close once the queued replies are written (after a protocol violation).
    closing: bool,
    /// The interest registered: (EPOLLIN, EPOLLOUT).
    interest: (bool, bool),
    /// Descriptors received (`SCM_RIGHTS`) for requests not yet answered: only a
    /// `Request::Adopt` comes with one.
    fds: VecDeque<OwnedFd>,
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
    next_conn: u64,
    pub(super) registry: Registry,
    namespace: String,
}

fn flags(read: bool, write: bool) -> EpollFlags {
    let mut f = EpollFlags::EPOLLRDHUP;
    if read {
        f |= EpollFlags::EPOLLIN;
    }
    if write {
        f |= EpollFlags::EPOLLOUT;
    }
    f
}

impl Server {
    /// A server over a bound, listening socket; adopts the namespace's existing segments.
    pub(super) fn new(
        listener: UnixListener,
        stop: UnixStream,
        config: &super::CoordinatorConfig,
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
        let mut registry = Registry::new(namespace, config.max_channel_bytes);
        registry.adopt(&epoll)?;
        Ok(Server {
            epoll,
            listener,
            listener_paused: None,
            stop,
            conns: HashMap::new(),
            next_conn: FIRST_CONN,
            registry,
            namespace: namespace.to_string(),
        })
    }

    /// Serves until the stop socket becomes readable (or is closed).
    pub(super) fn run(&mut self) -> Exit {
        let mut events = vec![EpollEvent::empty(); 256];
        let mut next_sample = Instant::now() + SAMPLE_EVERY;
        loop {
            let now = Instant::now();
            let wake = [
                Some(next_sample),
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

    fn accept(&mut self) {
        loop {
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
            if self.conns.len() >= MAX_CONNECTIONS {
                tracing::warn!("refusing a client: {MAX_CONNECTIONS} connections are open");
                continue;
            }
            if let Err(e) = self.admit_conn(stream) {
                tracing::warn!(error = %e, "dropping a client connection");
            }
        }
    }

    fn admit_conn(&mut self, stream: UnixStream) -> Result<()> {
        stream
            .set_nonblocking(true)
            .map_err(|e| Error::os("configuring a client connection", e))?;
        let cred = sys::peer_cred(&stream)?;
        if cred.pid == 0 {
            // The kernel gives pid 0 for a peer in a pid namespace this one cannot see: such a
            // client's death could not be told apart from anyone else's.
            let text = "clients in another pid namespace are not supported: run the client \
                        where the coordinator can see its pid";
            let _ =
                sys::send_nonblocking(&stream, &protocol::server_hello(HELLO_REFUSED, text), None);
            return Err(Error::Unavailable(format!("refused a client: {text}")));
        }
        let pidfd = sys::peer_pidfd(&stream, cred.pid)?;
        let peer = Peer {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
            groups: sys::supplementary_groups(cred.pid),
        };
        let id = self.next_conn;
        self.next_conn += 1;
        self.epoll
            .add(&stream, EpollEvent::new(flags(true, false), id))
            .map_err(|e| Error::os("watching a client connection", e))?;
        if let Err(e) = self.registry.connected(&self.epoll, peer.pid, pidfd) {
            let _ = self.epoll.delete(&stream);
            return Err(e);
        }
        tracing::debug!(pid = peer.pid, uid = peer.uid, "client connected");
        self.conns.insert(
            id,
            Conn {
                stream,
                peer,
                reader: FrameReader::new(MAX_REQUEST),
                greeted: false,
                out: VecDeque::new(),
                queued: 0,
                closing: false,
                interest: (true, false),
                fds: VecDeque::new(),
            },
        );
        Ok(())
    }

    fn conn_event(&mut self, id: u64, ev: EpollFlags) {
        if ev.contains(EpollFlags::EPOLLOUT) {
            self.flush(id);
        }
        if ev.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP) {
            self.read(id);
        }
        if ev.contains(EpollFlags::EPOLLERR) {
            self.drop_conn(id);
        }
    }

    /// Reads what the client sent and answers every complete request.
    fn read(&mut self, id: u64) {
        let mut buf = [0u8; 16 << 10];
        let mut eof = false;
        for _ in 0..READS_PER_EVENT {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            if c.queued > READ_PAUSE {
                break; // its replies first; `update_interest` stops EPOLLIN meanwhile
            }
            let mut fds = Vec::new();
            match sys::recv_with_fds(&c.stream, &mut buf, &mut fds) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    if !c.closing {
                        c.reader.push(&buf[..n]);
                        c.fds.extend(fds);
                    }
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
        } else {
            self.update_interest(id);
        }
    }

    /// Answers the complete frames buffered for connection `id`.
    fn process(&mut self, id: u64) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            if c.closing {
                return;
            }
            let payload = match c.reader.next_frame() {
                Ok(Some(p)) => p,
                Ok(None) => return,
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
                    return;
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
                            self.registry
                                .handed_back(&self.epoll, &peer, &name, generation, fd)
                        }
                        req => self.registry.handle(&self.epoll, &peer, req),
                    };
                    self.queue(
                        id,
                        protocol::encode(&answer.reply),
                        answer.fd,
                        answer.admitted,
                    );
                }
                Err(e) => {
                    tracing::warn!(pid = peer.pid, error = %e, "malformed request; closing the connection");
                    self.reply_error(id, ErrorCode::Incompatible, e.to_string());
                    self.close_after_flush(id);
                    return;
                }
            }
        }
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

    fn close_after_flush(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.closing = true;
        }
        self.flush(id);
    }

    fn queue(&mut self, id: u64, bytes: Vec<u8>, fd: Option<OwnedFd>, undo: Option<Admitted>) {
        let Some(c) = self.conns.get_mut(&id) else {
            if let Some(a) = undo {
                self.registry.unadmit(&self.epoll, &a);
            }
            return;
        };
        c.queued += bytes.len();
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
        self.flush(id);
    }

    /// Writes queued replies until done or the socket is full (then waits for EPOLLOUT).
    fn flush(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        while let Some(front) = c.out.front_mut() {
            let fd = front.fd.as_ref().map(|f| f.as_raw_fd());
            match sys::send_nonblocking(&c.stream, &front.bytes[front.sent..], fd) {
                Ok(n) => {
                    front.sent += n;
                    front.fd = None; // travelled with the first byte
                    if front.sent == front.bytes.len() {
                        c.queued -= front.bytes.len();
                        c.out.pop_front(); // delivered to the socket: nothing to undo
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.drop_conn(id);
                    return;
                }
            }
        }
        if c.out.is_empty() && c.closing {
            self.drop_conn(id);
            return;
        }
        self.update_interest(id);
    }

    /// Registers what connection `id` waits for: to write while replies are queued, to read
    /// while not too many are.
    fn update_interest(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let want = (c.queued <= READ_PAUSE, !c.out.is_empty());
        if want != c.interest {
            c.interest = want;
            let mut ev = EpollEvent::new(flags(want.0, want.1), id);
            let _ = self.epoll.modify(&c.stream, &mut ev);
        }
    }

    fn drop_conn(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            let _ = self.epoll.delete(&c.stream);
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

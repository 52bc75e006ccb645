//! The client: a process's connection to its coordinator, through which it creates, opens and
//! inspects channels.

use crate::consumer::Consumer;
use crate::coordinator::{DEFAULT_NAMESPACE, SOCKET_ENV, default_socket_path};
use crate::error::{Error, Result};
use crate::layout::{ChannelConfig, Role};
use crate::partition::{GroupConsumer, KeyedProducer};
use crate::producer::Producer;
use crate::protocol::{
    self, ChannelInfo, ChannelStats, FrameReader, HELLO_ACCEPTED, HELLO_BUSY, HELLO_INCOMPATIBLE,
    Limits, MAX_REPLY, PROTOCOL_VERSION, Reply, Request,
};
use crate::segment::{Lease, Segment};
use crate::sys;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How long a client waits for the coordinator to answer a request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to a coordinator (`shmringd`, or one embedded with
/// [`Coordinator::start`](crate::Coordinator::start)).
///
/// The coordinator owns the channels: it creates their segments, admits producers and
/// consumers (an SPSC channel one of each at a time), checks permissions, and repairs what a
/// process that dies leaves behind. The handles it hands out are the ordinary [`Producer`] and
/// [`Consumer`]; once open they never talk to the coordinator on the data path.
///
/// A `Client` is `Send` and `Sync`; handles keep its connection open for as long as they live.
/// Requests reconnect by themselves after a coordinator restart, handing the new coordinator
/// the segments of the channels this process has handles on (a restarted coordinator may not
/// be allowed to find them itself; see ARCHITECTURE.md, "The coordinator"). A handle belongs to the
/// process that opened it: a child forked afterwards opens its own (the client notices the
/// fork and reconnects as the child).
///
/// ```
/// # use shmring::{ChannelConfig, Client, Coordinator, CoordinatorConfig};
/// # let dir = std::env::temp_dir().join(format!("shmring-doc-client-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// # let ns = format!("doc-client-{}", std::process::id());
/// # let coord = Coordinator::start(CoordinatorConfig::new(&ns).socket(dir.join("c.sock")))?;
/// # unsafe { std::env::set_var("SHMRING_SOCKET", coord.socket_path()) };
/// // SHMRING_SOCKET, or the default socket, names the coordinator.
/// let client = Client::connect(None)?;
/// client.create("orders", &ChannelConfig::mpmc().max_frame_size(256))?;
/// let mut worker = client.consumer("orders")?;
/// let mut feed = client.producer("orders")?;
/// feed.send(b"buy 100")?;
/// let mut buf = [0u8; 256];
/// let got = worker.recv(&mut buf)?;
/// assert_eq!(&buf[..got.len], b"buy 100");
/// let stats = client.stats("orders")?;
/// assert_eq!((stats.frames_in, stats.frames_out), (1, 1));
/// # drop((feed, worker, client));
/// # coord.stop();
/// # std::fs::remove_dir(&dir).ok();
/// # for ext in ["lock", "channels"] {
/// #     std::fs::remove_file(shmring::default_socket_path(&ns).with_extension(ext)).ok();
/// # }
/// # Ok::<(), shmring::Error>(())
/// ```
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("socket", &self.shared.path)
            .finish_non_exhaustive()
    }
}

struct Shared {
    path: PathBuf,
    /// A socket in this user's runtime directory: only a coordinator of this user or root is
    /// used (see `Conn::open`).
    own_only: bool,
    timeout: Duration,
    conn: Mutex<Option<Conn>>,
    /// Closes not sent yet: a handle's drop queues its close here and never waits for the
    /// connection (another thread may hold it for a slow request).
    closes: Mutex<Vec<Request>>,
    /// The segments this process has handles on, by channel and generation: handed back to
    /// the coordinator whenever the client connects again, so that a restarted coordinator
    /// serves them again (it cannot find a memfd by name).
    held: Mutex<HashMap<(String, u64), Weak<Held>>>,
}

/// A segment descriptor kept while this process has handles on the channel.
struct Held {
    fd: OwnedFd,
    /// The process that opened the handles (a forked child hands nothing back: they are its
    /// parent's).
    pid: u32,
}

/// Most closes kept while no coordinator takes them (the oldest are dropped: a close only keeps
/// the coordinator's books, and a restarted coordinator does not need it).
const MAX_PENDING_CLOSES: usize = 4096;

/// One connection, made by process `pid`.
struct Conn {
    stream: UnixStream,
    reader: FrameReader,
    fds: Vec<OwnedFd>,
    pid: u32,
    namespace: String,
    /// Replies still to come for requests sent without waiting (closes).
    unread: usize,
    /// The uid the coordinator runs as (`SO_PEERCRED` of the listening process).
    server_uid: u32,
}

fn unavailable(path: &Path, e: &std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => Error::PermissionDenied(format!(
            "connecting to the coordinator at {}: {e}{}",
            path.display(),
            refused_by(path)
        )),
        _ => Error::Unavailable(format!(
            "no coordinator answers at {} ({e}): start `shmringd`, embed one with \
             Coordinator::start, or set {SOCKET_ENV} to its socket",
            path.display()
        )),
    }
}

/// Which part of `path` refused this process, for a connection refused with `EACCES`: the
/// first directory on the way it may not search, or else the socket it may not write, with
/// its owner and mode and what its owner can do. Empty if neither shows (a security module
/// refused, say).
fn refused_by(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let describe = |p: &Path, what: &str, remedy: &str| {
        let (owner, mode) = std::fs::metadata(p)
            .map(|m| (m.uid().to_string(), format!("{:04o}", m.mode() & 0o7777)))
            .unwrap_or_else(|_| ("?".into(), "?".into()));
        format!(
            ": {what} {} (owner uid {owner}, mode {mode}) does not let uid {} {remedy}",
            p.display(),
            sys::euid()
        )
    };
    let mut dirs: Vec<&Path> = path
        .ancestors()
        .skip(1)
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    dirs.reverse();
    for dir in dirs {
        if !sys::may_access(dir, false) {
            return describe(
                dir,
                "the directory",
                "reach the socket: a coordinator that serves other users needs its socket's \
                 directory searchable by them (its owner can `chmod o+x` it, or `g+x` with a \
                 shared group)",
            );
        }
    }
    if !sys::may_access(path, true) {
        return describe(
            path,
            "the socket",
            "connect: the coordinator's `--socket-mode` decides who may (e.g. 660 for its \
             group, 666 for everyone)",
        );
    }
    String::new()
}

impl Conn {
    /// Connects to the coordinator at `path`. With `own_only` (a socket in this user's runtime
    /// directory, where the default sockets lie), a coordinator running as another user than this one
    /// or root is refused: it took the place of this user's, and would see every frame of the
    /// channels created through it.
    fn open(path: &Path, timeout: Duration, own_only: bool) -> Result<Conn> {
        let stream = sys::connect_unix(path, timeout).map_err(|e| unavailable(path, &e))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| Error::os("configuring the coordinator connection", e))?;
        let server_uid = sys::peer_cred(&stream)?.uid;
        let me = sys::euid();
        if own_only && server_uid != me && server_uid != 0 {
            return Err(Error::PermissionDenied(format!(
                "the coordinator at {} runs as uid {server_uid}, neither this user (uid {me}) \
                 nor root: another user holds this user's default socket; not using it (remove \
                 {} as root, or connect to a coordinator you trust with {SOCKET_ENV})",
                path.display(),
                path.parent().unwrap_or(path).display()
            )));
        }
        let mut conn = Conn {
            stream,
            reader: FrameReader::new(MAX_REPLY),
            fds: Vec::new(),
            pid: sys::pid(),
            namespace: String::new(),
            unread: 0,
            server_uid,
        };
        let sent = conn.send(&protocol::client_hello(PROTOCOL_VERSION), path);
        // A coordinator that refuses the connection (at a limit) sends its hello and closes at
        // once, maybe before ours went out: its hello, still readable, says why.
        let hello = match (sent, conn.read_frame(path)) {
            (_, Ok(h)) => h,
            (Err(e), Err(_)) | (Ok(()), Err(e)) => return Err(e),
        };
        match protocol::parse_server_hello(&hello) {
            Some((_, HELLO_ACCEPTED, namespace)) => {
                conn.namespace = namespace;
                Ok(conn)
            }
            Some((_, HELLO_BUSY, text)) => Err(Error::Busy(format!(
                "coordinator at {} refused the connection: {text}",
                path.display()
            ))),
            Some((v, HELLO_INCOMPATIBLE, text)) => Err(Error::Incompatible(format!(
                "coordinator at {} speaks protocol {v}, this library {PROTOCOL_VERSION}: {text}",
                path.display()
            ))),
            Some((_, _, text)) => Err(Error::Incompatible(format!(
                "coordinator at {} refused the hello: {text}",
                path.display()
            ))),
            None => Err(Error::Incompatible(format!(
                "{} is not a shmring coordinator's socket",
                path.display()
            ))),
        }
    }

    fn send(&mut self, bytes: &[u8], path: &Path) -> Result<()> {
        sys::send_all(&self.stream, bytes).map_err(|e| unavailable(path, &e))
    }

    fn read_frame(&mut self, path: &Path) -> Result<Vec<u8>> {
        let mut buf = [0u8; 16 << 10];
        loop {
            match self.reader.next_frame() {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(len) => {
                    return Err(Error::Incompatible(format!(
                        "the coordinator sent a {len}-byte reply, over the limit of {MAX_REPLY}"
                    )));
                }
            }
            match sys::recv_with_fds(&self.stream, &mut buf, &mut self.fds) {
                Ok(0) => {
                    return Err(Error::Unavailable(format!(
                        "the coordinator at {} closed the connection",
                        path.display()
                    )));
                }
                Ok(n) => self.reader.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(Error::Unavailable(format!(
                        "the coordinator at {} did not answer in time",
                        path.display()
                    )));
                }
                Err(e) => return Err(unavailable(path, &e)),
            }
        }
    }

    /// Reads the replies owed for requests sent without waiting (closes). Those carry no
    /// descriptor: one received meanwhile came with a later reply read in the same go (an
    /// open's), and is kept for it.
    fn catch_up(&mut self, path: &Path) -> Result<()> {
        while self.unread > 0 {
            self.read_frame(path)?;
            self.unread -= 1;
        }
        Ok(())
    }

    /// Whether the coordinator closed this connection (it restarted, or dropped us). Nothing
    /// is owed on a healthy connection, so anything readable means it is gone.
    fn is_closed(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(self.stream.as_fd(), PollFlags::POLLIN)];
        !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }
}

impl Shared {
    /// The connection, (re)made if missing, closed by the coordinator, or inherited from the
    /// process this one was forked from.
    fn conn<'a>(&self, slot: &'a mut Option<Conn>) -> Result<&'a mut Conn> {
        let stale = match slot {
            Some(c) if c.pid != sys::pid() => {
                // Inherited from the process this one was forked from: so are the closes
                // queued there, of the parent's handles, which are not this process's to send.
                self.closes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
                true
            }
            Some(c) => c.catch_up(&self.path).is_err() || c.is_closed(),
            None => true,
        };
        if stale {
            *slot = None;
            let mut conn = Conn::open(&self.path, self.timeout, self.own_only)?;
            self.hand_back(&mut conn)?;
            *slot = Some(conn);
        }
        Ok(slot.as_mut().expect("set above"))
    }

    /// Hands every segment this process has handles on back to the coordinator, on a fresh
    /// connection: one that restarted knows only the segments it finds in processes it may
    /// inspect, and adopts the others from here. The coordinator checks each (a descriptor is
    /// untrusted); its refusals (it serves the channel already, the channel was replaced) are
    /// no error of the request being made.
    fn hand_back(&self, conn: &mut Conn) -> Result<()> {
        let held: Vec<((String, u64), Arc<Held>)> = {
            let mut map = self.held.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, h| h.strong_count() > 0);
            map.iter()
                .filter_map(|(k, h)| Some((k.clone(), h.upgrade()?)))
                .filter(|(_, h)| h.pid == sys::pid())
                .collect()
        };
        // Only to a coordinator of the user that created the segment (a memfd belongs to its
        // creator): whoever else listens on the socket now is not given write access to them.
        let held: Vec<_> = held
            .into_iter()
            .filter(|(_, h)| {
                nix::sys::stat::fstat(&h.fd).is_ok_and(|st| st.st_uid == conn.server_uid)
            })
            .collect();
        for ((name, generation), h) in held {
            let req = Request::Adopt {
                name: name.clone(),
                generation,
            };
            sys::send_all_with_fd(&conn.stream, &protocol::encode(&req), h.fd.as_raw_fd())
                .map_err(|e| unavailable(&self.path, &e))?;
            let payload = conn.read_frame(&self.path)?;
            conn.fds.clear();
            if let Reply::Error { message, .. } = protocol::decode::<Reply>(&payload)? {
                tracing::debug!(channel = %name, generation, %message, "the coordinator did not take a segment handed back");
            }
        }
        Ok(())
    }

    /// The descriptor kept for channel `name` of `generation` while handles on it live: the
    /// one kept already, or `fd`.
    fn keep(&self, name: &str, generation: u64, fd: OwnedFd) -> Arc<Held> {
        let mut map = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let key = (name.to_string(), generation);
        if let Some(h) = map.get(&key).and_then(Weak::upgrade)
            && h.pid == sys::pid()
            && sys::file_id(&h.fd).ok() == sys::file_id(&fd).ok()
        {
            // The same segment (a generation number alone could name an older, deleted one
            // if a coordinator started over with no record).
            return h;
        }
        let h = Arc::new(Held {
            fd,
            pid: sys::pid(),
        });
        map.insert(key, Arc::downgrade(&h));
        h
    }

    /// Sends `req` and returns the reply, with the descriptor that came with it. An error
    /// reply is the coordinator's answer (the connection stays); a failed exchange leaves the
    /// connection in an unknown state (a reply half read), so it is dropped.
    fn request(&self, req: &Request) -> Result<(Reply, Option<OwnedFd>)> {
        let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let r = self.exchange(&mut slot, req);
        if r.is_err() {
            *slot = None;
        }
        match r? {
            (Reply::Error { code, message }, _) => Err(code.into_error(message)),
            ok => Ok(ok),
        }
    }

    fn exchange(&self, slot: &mut Option<Conn>, req: &Request) -> Result<(Reply, Option<OwnedFd>)> {
        let conn = self.conn(slot)?;
        self.send_closes(conn, false);
        conn.send(&protocol::encode(req), &self.path)?;
        conn.catch_up(&self.path)?; // the replies to the closes just sent
        let payload = conn.read_frame(&self.path)?;
        let reply: Reply = protocol::decode(&payload)?;
        let fd = if conn.fds.is_empty() {
            None
        } else {
            Some(conn.fds.remove(0))
        };
        conn.fds.clear();
        Ok((reply, fd))
    }

    /// Sends the queued closes on `conn` (their replies are read before the next request's).
    /// With `nonblocking`, stops at a full socket rather than wait.
    fn send_closes(&self, conn: &mut Conn, nonblocking: bool) {
        let mut closes = self.closes.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(req) = closes.first() {
            let bytes = protocol::encode(req);
            let sent = if nonblocking {
                // A frame is tiny: a socket with any room takes it whole, and one begun is
                // finished (a partial frame would desynchronise the stream).
                sys::send_nonblocking(&conn.stream, &bytes, None).and_then(|n| {
                    if n > 0 && n < bytes.len() {
                        sys::send_all(&conn.stream, &bytes[n..])?;
                    }
                    Ok(n > 0)
                })
            } else {
                sys::send_all(&conn.stream, &bytes).map(|()| true)
            };
            match sent {
                Ok(true) => {
                    closes.remove(0);
                    conn.unread += 1;
                }
                Ok(false) | Err(_) => return,
            }
        }
    }

    /// Queues a request whose reply nobody waits for (a close), and sends it at once if the
    /// connection is free and healthy; never blocks, never reconnects.
    fn tell(&self, req: Request) {
        {
            let mut closes = self.closes.lock().unwrap_or_else(|e| e.into_inner());
            if closes.len() >= MAX_PENDING_CLOSES {
                closes.remove(0);
            }
            closes.push(req);
        }
        let Ok(mut slot) = self.conn.try_lock() else {
            return; // another thread's request sends it
        };
        if let Some(conn) = slot.as_mut().filter(|c| c.pid == sys::pid()) {
            // With replies owed the socket is readable anyway; a dead peer then fails a send.
            if conn.unread > 0 || !conn.is_closed() {
                self.send_closes(conn, true);
            }
        }
    }
}

/// Tells the coordinator when a handle it admitted closes; keeps the segment's descriptor
/// (to hand back after a coordinator restart) while the handle lives.
struct Registration {
    shared: Arc<Shared>,
    channel: String,
    generation: u64,
    _held: Option<Arc<Held>>,
}

impl Lease for Registration {
    fn closed(&self, role: Role, index: u32, owner: u64) {
        // Best effort: the handle has freed its entry already; this only keeps the
        // coordinator's books. A coordinator that is down learns it on adoption.
        self.shared.tell(Request::Close {
            name: self.channel.clone(),
            generation: self.generation,
            role,
            index,
            owner,
        });
    }

    fn follow(&self, role: Role, index: u32, owner: u64) -> Result<Option<(Segment, u32, u64)>> {
        let (reply, fd) = self.shared.request(&Request::Follow {
            name: self.channel.clone(),
            generation: self.generation,
            role,
            index,
            owner,
        })?;
        if reply == Reply::Done {
            // Not replaced: the word was overwritten, and the coordinator cleared it.
            return Ok(None);
        }
        attach(&self.shared, &self.channel, role, reply, fd).map(Some)
    }
}

/// Maps the segment of an admission (`Reply::Opened` and its descriptor), leased so that the
/// handle made of it tells the coordinator when it closes. An admission that cannot be used is
/// given back.
fn attach(
    shared: &Arc<Shared>,
    name: &str,
    role: Role,
    reply: Reply,
    fd: Option<OwnedFd>,
) -> Result<(Segment, u32, u64)> {
    let (index, owner, generation) = match reply {
        Reply::Opened {
            index,
            owner,
            generation,
        } => (index, owner, generation),
        other => return Err(unexpected(other)),
    };
    let unleased = || Registration {
        shared: Arc::clone(shared),
        channel: name.to_string(),
        generation,
        _held: None,
    };
    let Some(fd) = fd else {
        unleased().closed(role, index, owner);
        return Err(Error::Incompatible(
            "the coordinator admitted us but sent no segment descriptor".into(),
        ));
    };
    match Segment::attach(&fd, name, crate::DEFAULT_OPEN_TIMEOUT) {
        Ok(seg) => {
            let lease: Arc<dyn Lease> = Arc::new(Registration {
                _held: Some(shared.keep(name, generation, fd)),
                ..unleased()
            });
            Ok((seg.leased(name, lease), index, owner))
        }
        Err(e) => {
            unleased().closed(role, index, owner);
            Err(e)
        }
    }
}

fn unexpected(reply: Reply) -> Error {
    Error::Incompatible(format!("unexpected reply from the coordinator: {reply:?}"))
}

impl Client {
    /// Connects to the coordinator listening on `socket`; with `None`, on the socket named by
    /// the `SHMRING_SOCKET` environment variable, else on the default namespace's
    /// ([`default_socket_path`]).
    ///
    /// Fails with `Unavailable` when no coordinator answers (the message says how to start
    /// one), `PermissionDenied` when the socket is not this user's to use, `Busy` when the
    /// coordinator is at its limit of connections (the message names it), and `Incompatible`
    /// when the coordinator speaks another protocol version.
    pub fn connect(socket: Option<&Path>) -> Result<Client> {
        Client::connect_with_timeout(socket, DEFAULT_REQUEST_TIMEOUT)
    }

    /// As [`Client::connect`], waiting at most `timeout` for each answer of the coordinator.
    pub fn connect_with_timeout(socket: Option<&Path>, timeout: Duration) -> Result<Client> {
        let path = match socket {
            Some(p) => p.to_path_buf(),
            None => match std::env::var_os(SOCKET_ENV) {
                Some(p) if !p.is_empty() => PathBuf::from(p),
                _ => default_socket_path(DEFAULT_NAMESPACE),
            },
        };
        // A socket in this user's own runtime directory is this user's coordinator's.
        let own_only = path.parent() == Some(crate::coordinator::default_socket_dir().as_path());
        let conn = Conn::open(&path, timeout, own_only)?;
        Ok(Client {
            shared: Arc::new(Shared {
                path,
                own_only,
                timeout,
                conn: Mutex::new(Some(conn)),
                closes: Mutex::new(Vec::new()),
                held: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The socket this client talks to.
    pub fn socket_path(&self) -> &Path {
        &self.shared.path
    }

    /// The namespace the coordinator serves.
    pub fn namespace(&self) -> Result<String> {
        let mut slot = self.shared.conn.lock().unwrap_or_else(|e| e.into_inner());
        Ok(self.shared.conn(&mut slot)?.namespace.clone())
    }

    /// Creates a channel owned by this process's user, with `config.mode` as its permission
    /// bits. Fails with `AlreadyExists` if the name is taken, `InvalidArgument` for a bad name
    /// (`[A-Za-z0-9._-]{1,64}`) or shape.
    pub fn create(&self, name: &str, config: &ChannelConfig) -> Result<ChannelInfo> {
        match self.shared.request(&Request::Create {
            name: name.to_string(),
            config: *config,
        })? {
            (Reply::Channel(info), _) => Ok(info),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Deletes a channel (its owner or root only). Processes using it keep their handles; no
    /// one new is admitted.
    pub fn delete(&self, name: &str) -> Result<()> {
        match self.shared.request(&Request::Delete {
            name: name.to_string(),
        })? {
            (Reply::Done, _) => Ok(()),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Every channel of the namespace.
    pub fn list(&self) -> Result<Vec<ChannelInfo>> {
        match self.shared.request(&Request::List)? {
            (Reply::Channels(c), _) => Ok(c),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// One channel's counters (needs read permission).
    pub fn stats(&self, name: &str) -> Result<ChannelStats> {
        match self.shared.request(&Request::Stats {
            name: name.to_string(),
        })? {
            (Reply::Stats(s), _) => Ok(*s),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// The coordinator's limits (channels and bytes per user, connections), and how much of
    /// them this user takes.
    pub fn limits(&self) -> Result<Limits> {
        match self.shared.request(&Request::Limits)? {
            (Reply::Limits(l), _) => Ok(l),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Asks to be admitted to `name` as `role`; returns the segment and the entry.
    fn open(&self, name: &str, role: Role) -> Result<(Segment, u32, u64)> {
        let (reply, fd) = self.shared.request(&Request::Open {
            name: name.to_string(),
            role,
        })?;
        if let Reply::Partitioned { partitions } = reply {
            return Err(Error::InvalidArgument(format!(
                "channel {name:?} is partitioned ({partitions} partitions): open it with \
                 Client::keyed_producer (C: shmring_producer_open, then shmring_send_keyed)"
            )));
        }
        attach(&self.shared, name, role, reply, fd)
    }

    /// A request whose reply nobody waits for (see `Shared::tell`).
    pub(crate) fn tell(&self, req: Request) {
        self.shared.tell(req);
    }

    /// A request whose reply carries no descriptor.
    pub(crate) fn request(&self, req: &Request) -> Result<Reply> {
        self.shared.request(req).map(|(reply, _)| reply)
    }

    /// Asks to be admitted to partition `partition` of `channel` (as its producer, or as the
    /// consumer of group member `member`).
    pub(crate) fn open_partition(
        &self,
        channel: &str,
        partition: u32,
        role: Role,
        member: Option<u64>,
    ) -> Result<(Segment, u32, u64)> {
        let (reply, fd) = self.shared.request(&Request::OpenPartition {
            channel: channel.to_string(),
            partition,
            role,
            member,
        })?;
        let name = crate::partition::partition_name(channel, partition);
        attach(&self.shared, &name, role, reply, fd)
    }

    /// Opens partitioned channel `name` as its producer: every partition's (a partitioned
    /// channel has one producer). `InvalidArgument` if the channel is not partitioned.
    pub fn keyed_producer(&self, name: &str) -> Result<KeyedProducer> {
        let (reply, _) = self.shared.request(&Request::Open {
            name: name.to_string(),
            role: Role::Producer,
        })?;
        let partitions = match reply {
            Reply::Partitioned { partitions } => partitions,
            Reply::Opened {
                index,
                owner,
                generation,
            } => {
                // Admitted to a plain channel: give the entry back.
                self.shared.tell(Request::Close {
                    name: name.to_string(),
                    generation,
                    role: Role::Producer,
                    index,
                    owner,
                });
                return Err(Error::InvalidArgument(format!(
                    "channel {name:?} is not partitioned: open it with Client::producer"
                )));
            }
            other => return Err(unexpected(other)),
        };
        let parts = (0..partitions)
            .map(|p| {
                let (seg, index, owner) = self.open_partition(name, p, Role::Producer, None)?;
                seg.adopt_producer(index, owner)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KeyedProducer::new(parts))
    }

    /// Opens `name` as a producer, or as a [`KeyedProducer`] if it is partitioned (for
    /// bindings that hand out one kind of producer handle).
    #[doc(hidden)]
    pub fn open_producer(
        &self,
        name: &str,
    ) -> Result<std::result::Result<Producer, KeyedProducer>> {
        let (reply, fd) = self.shared.request(&Request::Open {
            name: name.to_string(),
            role: Role::Producer,
        })?;
        if let Reply::Partitioned { .. } = reply {
            return self.keyed_producer(name).map(Err);
        }
        let (seg, index, owner) = attach(&self.shared, name, Role::Producer, reply, fd)?;
        seg.adopt_producer(index, owner).map(Ok)
    }

    /// Joins consumer group `group` of partitioned channel `name`: the coordinator assigns the
    /// member some of the channel's partitions (all of them, if it is the only member) and
    /// moves them as members come and go. A partitioned channel is read by one group, the
    /// first to join it (`Busy` for another name).
    pub fn group_consumer(&self, name: &str, group: &str) -> Result<GroupConsumer> {
        GroupConsumer::join(self, name, group)
    }

    /// Gives channel `name` a new capacity (as [`ChannelConfig::capacity`] means it) while
    /// its producers and consumers keep running: a new segment of that capacity replaces the
    /// channel's, and every frame sent before goes out first, none lost, none twice, in
    /// order. Producers move to it on their next send; consumers once they have taken
    /// everything in the old one. Nobody re-opens a handle. Grows or shrinks (the old ring's
    /// frames stay where they are until taken, so what is queued does not need to fit).
    ///
    /// Its owner or root only (`PermissionDenied`). SPSC and broadcast channels
    /// (`InvalidArgument` for MPMC, and for a capacity that does not hold the channel's
    /// frames); `Busy` while the previous resize is still under way (a producer has not sent
    /// since, or a consumer not drained the old ring: [`ChannelStats::draining_generation`]).
    /// Returns the channel as it is now.
    pub fn resize(&self, name: &str, capacity: u64) -> Result<ChannelInfo> {
        match self.shared.request(&Request::Resize {
            name: name.to_string(),
            capacity,
        })? {
            (Reply::Channel(info), _) => Ok(info),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Opens `name` as a producer (a partitioned channel: [`Client::keyed_producer`]). `Busy` when the channel admits no more producers (an SPSC
    /// channel admits one at a time), `PermissionDenied` when its mode excludes this user.
    pub fn producer(&self, name: &str) -> Result<Producer> {
        let (seg, index, owner) = self.open(name, Role::Producer)?;
        seg.adopt_producer(index, owner)
    }

    /// Opens `name` as a consumer. An SPSC consumer resumes exactly where the previous one
    /// stopped; frames a dead predecessor was handed and never released come first, flagged
    /// redelivered.
    pub fn consumer(&self, name: &str) -> Result<Consumer> {
        let (seg, index, owner) = self.open(name, Role::Consumer)?;
        seg.adopt_consumer(index, owner)
    }
}

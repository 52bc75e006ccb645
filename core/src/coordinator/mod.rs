//! The coordinator: creates channels, admits producers and consumers, watches them, and repairs
//! what a dead one left behind. `shmringd` runs one as a daemon; [`Coordinator::start`] runs one
//! on a thread of the calling process (embedded mode), with the same protocol and behaviour.
//!
//! * `registry.rs`: channels, watched processes, admissions, adoption and repair orchestration;
//! * `server.rs`: the event loop (sockets, pidfds).
//!
//! The data path never involves the coordinator: producers and consumers keep going while it is
//! down, and a restarted coordinator adopts the namespace's segments (ARCHITECTURE.md,
//! "Coordinator").

mod record;
mod registry;
mod server;

use crate::error::{Error, Result};
use crate::protocol::validate_namespace;
use crate::sys;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The namespace a coordinator serves and a client connects to unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The environment variable naming the socket clients connect to.
pub const SOCKET_ENV: &str = "SHMRING_SOCKET";

/// Where the coordinator of `namespace` listens by default:
/// `$XDG_RUNTIME_DIR/shmring/<namespace>.sock`, else `/tmp/shmring-<uid>/<namespace>.sock`.
pub fn default_socket_path(namespace: &str) -> PathBuf {
    default_socket_dir().join(format!("{namespace}.sock"))
}

/// The coordinator user's private runtime directory (the default socket's), where it keeps each
/// namespace's lock (`<namespace>.lock`) and record of live channels (`<namespace>.channels`):
/// `$XDG_RUNTIME_DIR/shmring`, else `/tmp/shmring-<uid>`.
pub(crate) fn default_socket_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("shmring"),
        _ => PathBuf::from(format!("/tmp/shmring-{}", sys::euid())),
    }
}

/// How to run a coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// The namespace served: its channels' segments are sealed memfds named
    /// `shmring.<namespace>@<uid>.<generation>.<channel>` (no name in `/dev/shm`).
    pub namespace: String,
    /// The socket to listen on (`None`: [`default_socket_path`] of the namespace). Its
    /// directory must exist (only the default directory is created). Whatever is at the path
    /// is left alone, except a stale socket of this user that nobody listens on.
    pub socket: Option<PathBuf>,
    /// Permission bits of the socket file. Connecting needs write permission, so `0o666` lets
    /// every user reach the coordinator (each channel's own mode still decides who is
    /// admitted). Default `0o600`.
    pub socket_mode: u32,
    /// Do not delete the channels when stopping (default: a stopping coordinator deletes
    /// them). A channel lives as long as a process holds its segment: the next coordinator
    /// adopts those that processes still use (it finds them in the processes it may inspect,
    /// and clients hand theirs back when they reconnect); one nobody holds is gone.
    pub keep_channels: bool,
    /// Largest frame storage of a channel a client may have created, in bytes (default
    /// [`DEFAULT_MAX_CHANNEL_BYTES`]): an SPSC ring's capacity, or an MPMC or broadcast
    /// channel's slots, each `max_frame_size` plus a 16-byte header rounded up to 64 (what
    /// `ChannelInfo::capacity_bytes` shows). Any user who can reach the socket can create
    /// channels, and each one's memory is allocated up front (charged to the coordinator's
    /// memory); the segment's header and participant tables on top (at most 2048 entries of 128
    /// bytes) count in [`CoordinatorConfig::max_bytes_per_uid`].
    pub max_channel_bytes: u64,
    /// Most channels owned by one user (default [`DEFAULT_MAX_CHANNELS_PER_UID`]), so that one
    /// user cannot take the whole namespace (4096 channels).
    pub max_channels_per_uid: usize,
    /// Most bytes of segments owned by one user, all channels together (default
    /// [`DEFAULT_MAX_BYTES_PER_UID`]).
    pub max_bytes_per_uid: u64,
    /// Most client connections at once (default [`DEFAULT_MAX_CONNECTIONS`]); lowered at start
    /// to what the process's open-file limit allows (six descriptors a connection, and a
    /// reserve of about 450): a soft limit of 1024, common for a program that embeds a
    /// coordinator, allows 96. `shmringd` raises its soft limit to the hard one; an embedded
    /// coordinator leaves the process's limit alone (a program that uses `select` cannot have
    /// descriptors past 1024): raise it before starting one (`setrlimit`, `ulimit -n`,
    /// systemd's `LimitNOFILE=`) if it is to serve many processes.
    pub max_connections: usize,
    /// Most client connections at once of one user (default
    /// [`DEFAULT_MAX_CONNECTIONS_PER_UID`]): a refused client is told the limit. Each process
    /// with live handles keeps one connection, so this is also how many processes of one user
    /// can take part at once.
    pub max_connections_per_uid: usize,
    /// How long a client may take to send a message it has begun (its hello included), and to
    /// take a reply the coordinator has begun to send; a connection that takes longer is
    /// closed (default [`DEFAULT_MESSAGE_TIMEOUT`]).
    pub message_timeout: Duration,
}

/// Default of [`CoordinatorConfig::max_channel_bytes`]: 1 GiB.
pub const DEFAULT_MAX_CHANNEL_BYTES: u64 = 1 << 30;
/// Default of [`CoordinatorConfig::max_channels_per_uid`].
pub const DEFAULT_MAX_CHANNELS_PER_UID: usize = 1024;
/// Default of [`CoordinatorConfig::max_bytes_per_uid`]: 4 GiB.
pub const DEFAULT_MAX_BYTES_PER_UID: u64 = 4 << 30;
/// Default of [`CoordinatorConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;
/// Default of [`CoordinatorConfig::max_connections_per_uid`]: room for a full MPMC channel's
/// producers and consumers, each a process of one user.
pub const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 2048;
// Found in review of step 5: the default per-user cap (256) let one user run fewer participant
// processes than one MPMC channel admits, each process keeping a connection. Checked when
// compiling; and two users' full channels fit the cap in all.
const _: () =
    assert!(DEFAULT_MAX_CONNECTIONS_PER_UID >= 2 * crate::layout::MAX_PARTICIPANTS as usize);
const _: () = assert!(DEFAULT_MAX_CONNECTIONS >= 2 * DEFAULT_MAX_CONNECTIONS_PER_UID);
/// Default of [`CoordinatorConfig::message_timeout`]: 10 s.
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            namespace: DEFAULT_NAMESPACE.to_string(),
            socket: None,
            socket_mode: 0o600,
            keep_channels: false,
            max_channel_bytes: DEFAULT_MAX_CHANNEL_BYTES,
            max_channels_per_uid: DEFAULT_MAX_CHANNELS_PER_UID,
            max_bytes_per_uid: DEFAULT_MAX_BYTES_PER_UID,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_uid: DEFAULT_MAX_CONNECTIONS_PER_UID,
            message_timeout: DEFAULT_MESSAGE_TIMEOUT,
        }
    }
}

impl CoordinatorConfig {
    /// The defaults, serving `namespace`.
    pub fn new(namespace: &str) -> CoordinatorConfig {
        CoordinatorConfig {
            namespace: namespace.to_string(),
            ..CoordinatorConfig::default()
        }
    }

    /// Sets [`CoordinatorConfig::socket`].
    pub fn socket(mut self, path: impl Into<PathBuf>) -> CoordinatorConfig {
        self.socket = Some(path.into());
        self
    }

    /// Sets [`CoordinatorConfig::socket_mode`].
    pub fn socket_mode(mut self, mode: u32) -> CoordinatorConfig {
        self.socket_mode = mode;
        self
    }

    /// Sets [`CoordinatorConfig::keep_channels`].
    pub fn keep_channels(mut self, keep: bool) -> CoordinatorConfig {
        self.keep_channels = keep;
        self
    }

    /// Sets [`CoordinatorConfig::max_channel_bytes`].
    pub fn max_channel_bytes(mut self, bytes: u64) -> CoordinatorConfig {
        self.max_channel_bytes = bytes;
        self
    }

    /// Sets [`CoordinatorConfig::max_channels_per_uid`].
    pub fn max_channels_per_uid(mut self, n: usize) -> CoordinatorConfig {
        self.max_channels_per_uid = n;
        self
    }

    /// Sets [`CoordinatorConfig::max_bytes_per_uid`].
    pub fn max_bytes_per_uid(mut self, bytes: u64) -> CoordinatorConfig {
        self.max_bytes_per_uid = bytes;
        self
    }

    /// Sets [`CoordinatorConfig::max_connections`].
    pub fn max_connections(mut self, n: usize) -> CoordinatorConfig {
        self.max_connections = n;
        self
    }

    /// Sets [`CoordinatorConfig::max_connections_per_uid`].
    pub fn max_connections_per_uid(mut self, n: usize) -> CoordinatorConfig {
        self.max_connections_per_uid = n;
        self
    }

    /// Sets [`CoordinatorConfig::message_timeout`].
    pub fn message_timeout(mut self, timeout: Duration) -> CoordinatorConfig {
        self.message_timeout = timeout;
        self
    }

    fn validate(&self) -> Result<()> {
        validate_namespace(&self.namespace)?;
        if self.socket_mode & !0o777 != 0 {
            return Err(Error::InvalidArgument(format!(
                "socket mode {:o} has bits outside 0o777",
                self.socket_mode
            )));
        }
        for (what, n) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_uid", self.max_connections_per_uid),
        ] {
            if n == 0 {
                return Err(Error::InvalidArgument(format!(
                    "{what} is 0: no client could connect"
                )));
            }
        }
        if self.message_timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "message_timeout is 0: no message could arrive".into(),
            ));
        }
        Ok(())
    }
}

/// A running coordinator. Stops (removing its socket, and its channels unless told to keep
/// them) when [`stop`](Coordinator::stop)ped or dropped.
///
/// ```
/// use shmring::{ChannelConfig, Client, Coordinator, CoordinatorConfig};
///
/// let dir = std::env::temp_dir().join(format!("shmring-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap(); // the socket's directory must exist
/// let ns = format!("doc-{}", std::process::id());
/// let coord = Coordinator::start(CoordinatorConfig::new(&ns).socket(dir.join("c.sock")))?;
/// let client = Client::connect(Some(coord.socket_path()))?;
/// client.create("ticks", &ChannelConfig::spsc())?;
/// let mut tx = client.producer("ticks")?;
/// let mut rx = client.consumer("ticks")?;
/// tx.send(b"hello")?;
/// assert_eq!(&*rx.read()?, b"hello");
/// drop((tx, rx, client));
/// coord.stop();
/// # std::fs::remove_dir(&dir).ok();
/// # for ext in ["lock", "channels"] {
/// #     std::fs::remove_file(shmring::default_socket_path(&ns).with_extension(ext)).ok();
/// # }
/// # Ok::<(), shmring::Error>(())
/// ```
pub struct Coordinator {
    socket: PathBuf,
    namespace: String,
    /// The process that started it. Only there does stopping touch anything: a forked child's
    /// copy of the handle frees its memory and nothing else (the thread, the socket, the
    /// segments and the lock are the parent's).
    pid: u32,
    stop: Option<UnixStream>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("namespace", &self.namespace)
            .field("socket", &self.socket)
            .finish()
    }
}

impl Coordinator {
    /// Starts a coordinator on a new thread of this process. Takes the namespace's lock (one
    /// coordinator per namespace and user), adopts the segments a previous coordinator left,
    /// and listens on the socket. Errors say what is in the way: another coordinator serving
    /// the namespace, a file that is not a stale socket of this user at the socket path, a
    /// missing socket directory, a runtime directory others can write to, and the like.
    pub fn start(config: CoordinatorConfig) -> Result<Coordinator> {
        config.validate()?;
        // Made (mode 0700) or verified (this user's, writable by no one else): the lock and the
        // record of the channels are trusted only because nobody else can write there.
        let dir = default_socket_dir();
        make_default_dir(&dir)?;
        let lock = NamespaceLock::take(&NamespaceLock::path_of(&dir, &config.namespace), None)?;
        let record = record::path(&dir, &config.namespace);
        let started = Coordinator::listen(&config).and_then(|Bound { listener, socket }| {
            let server = UnixStream::pair()
                .map_err(|e| Error::os("creating the stop socket", e))
                .and_then(|(stop_tx, stop_rx)| {
                    Ok((
                        stop_tx,
                        server::Server::new(listener, stop_rx, &config, record)?,
                    ))
                });
            match server {
                Ok((stop_tx, server)) => Ok((socket, stop_tx, server)),
                Err(e) => {
                    socket.remove();
                    Err(e)
                }
            }
        });
        let (socket, stop_tx, mut server) = match started {
            Ok(s) => s,
            Err(e) => {
                lock.release();
                return Err(e);
            }
        };
        let keep = config.keep_channels;
        let ns = config.namespace.clone();
        let path = socket.path.clone();
        // Handed to the thread, and given back if it cannot start.
        let owned = std::sync::Arc::new(std::sync::Mutex::new(Some((socket, lock))));
        let for_thread = std::sync::Arc::clone(&owned);
        let thread = std::thread::Builder::new()
            .name(format!("shmring-coordinator-{}", config.namespace))
            .spawn(move || {
                let taken = for_thread.lock().unwrap_or_else(|e| e.into_inner()).take();
                let Some((socket, lock)) = taken else {
                    return;
                };
                tracing::info!(namespace = %ns, socket = %socket.path.display(), pid = sys::pid(), "coordinator serving");
                let exit = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.run()));
                match exit {
                    Ok(server::Exit::Stopped) if !keep => server.registry.remove_all(),
                    Ok(server::Exit::Stopped) => {}
                    // Not asked to stop: the channels stay for a restarted coordinator to adopt
                    // (their users go on meanwhile).
                    Ok(server::Exit::Failed) => {
                        tracing::error!(namespace = %ns, "coordinator failed; its channels are left for the next one")
                    }
                    Err(_) => {
                        tracing::error!(namespace = %ns, "coordinator panicked (a bug); its channels are left for the next one")
                    }
                }
                socket.remove();
                let clean = matches!(exit, Ok(server::Exit::Stopped))
                    && server.registry.remove_record_if_empty();
                drop(server);
                if clean {
                    lock.remove();
                } else {
                    lock.release();
                }
                tracing::info!(namespace = %ns, "coordinator stopped");
            });
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                if let Some((socket, lock)) = owned.lock().unwrap_or_else(|e| e.into_inner()).take()
                {
                    socket.remove();
                    lock.release();
                }
                return Err(Error::os("starting the coordinator thread", e));
            }
        };
        Ok(Coordinator {
            socket: path,
            namespace: config.namespace,
            pid: sys::pid(),
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Binds the socket (the default one's directory is made by `start`).
    fn listen(config: &CoordinatorConfig) -> Result<Bound> {
        let socket = match &config.socket {
            Some(p) => {
                let dir = p
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                match std::fs::metadata(dir) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(Error::InvalidArgument(format!(
                            "the socket's directory {} is not a directory",
                            dir.display()
                        )));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(Error::NotFound(format!(
                            "the socket's directory {} does not exist: create it first (a \
                             coordinator creates only its default socket directory)",
                            dir.display()
                        )));
                    }
                    Err(e) => return Err(Error::os(format!("inspecting {}", dir.display()), e)),
                }
                p.clone()
            }
            // Made or verified by `start`.
            None => default_socket_path(&config.namespace),
        };
        bind(&socket, config.socket_mode)
    }

    /// The socket clients connect to.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The namespace served.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Whether the coordinator still serves: `false` once it stopped by itself (it failed; the
    /// reason is logged). A supervising program exits then, so that it is restarted. Always
    /// `false` in a child forked from the process that started it (it serves the parent).
    pub fn is_running(&self) -> bool {
        self.pid == sys::pid() && self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops serving: closes every connection, removes the socket and (unless
    /// [`keep_channels`](CoordinatorConfig::keep_channels)) deletes every channel. Processes
    /// that have a channel mapped keep using it. In a child forked from the process that
    /// started the coordinator, only frees the handle: the coordinator goes on serving in the
    /// parent.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.pid != sys::pid() {
            // A forked child's copy. The thread does not exist here (joining it would wait on
            // nothing, or panic), and the stop socket is shared with the parent's thread:
            // writing to it would stop the parent's coordinator. Closing this process's
            // descriptor of it is harmless (the parent's keeps it open).
            if let Some(t) = self.thread.take() {
                std::mem::forget(t);
            }
            drop(self.stop.take());
            return;
        }
        if let Some(mut s) = self.stop.take() {
            let _ = s.write_all(b"x");
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A file's identity: a path names the same file as before only if these are equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(m: &std::fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
        }
    }

    /// What `path` itself (not a link's target) is now, if anything.
    fn at(path: &Path) -> Option<FileId> {
        std::fs::symlink_metadata(path).ok().map(|m| FileId::of(&m))
    }
}

/// The namespace's lock: an exclusive `flock` on `<runtime dir>/<namespace>.lock`, held for the
/// coordinator's life.
///
/// The file lives in the coordinator user's private runtime directory (found in review of step
/// 5: it used to be `/dev/shm/shmring.<namespace>@<uid>.lock`, a predictable name in
/// world-writable `/dev/shm`, where another user could create it first and keep the
/// coordinator from ever starting). A coordinator that stops leaving nothing to adopt removes
/// it (while still holding it); one that leaves channels keeps it. A lock counts only if, once
/// taken, the path names the locked file: a coordinator that opened the file before it was
/// removed and locks it after takes the lock again on the file now at the path (defect 13).
struct NamespaceLock {
    lock: nix::fcntl::Flock<std::fs::File>,
    path: PathBuf,
}

/// How often taking the lock is tried when the file keeps being replaced under us.
const LOCK_ATTEMPTS: usize = 64;

impl NamespaceLock {
    fn path_of(dir: &Path, namespace: &str) -> PathBuf {
        dir.join(format!("{namespace}.lock"))
    }

    /// Takes the lock at `path`; `first`, if given, is the lock file opened earlier (the tests
    /// use it to replay an interleaving).
    fn take(path: &Path, mut first: Option<std::fs::File>) -> Result<NamespaceLock> {
        for _ in 0..LOCK_ATTEMPTS {
            let file = match first.take() {
                Some(f) => f,
                None => NamespaceLock::open(path)?,
            };
            let lock = sys::try_lock(file)?.ok_or_else(|| {
                Error::AlreadyExists(format!(
                    "the namespace is already served by another coordinator (it holds {})",
                    path.display()
                ))
            })?;
            let held = lock
                .metadata()
                .map_err(|e| Error::os(format!("inspecting {}", path.display()), e))?;
            if FileId::at(path) == Some(FileId::of(&held)) {
                return Ok(NamespaceLock {
                    lock,
                    path: path.to_path_buf(),
                });
            }
            // The file was removed between our open and our lock: this lock guards nothing.
            // Unlocked by the drop; try the file at the path now.
        }
        Err(Error::Busy(format!(
            "the namespace lock {} keeps being replaced: try again",
            path.display()
        )))
    }

    /// Opens (creating if needed) the lock file, which must be this user's.
    fn open(path: &Path) -> Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| Error::os(format!("opening the namespace lock {}", path.display()), e))?;
        let owner = file
            .metadata()
            .map_err(|e| Error::os(format!("inspecting {}", path.display()), e))?
            .uid();
        if owner != sys::euid() {
            return Err(Error::PermissionDenied(format!(
                "the namespace lock {} belongs to uid {owner}, not to this user ({}): remove it",
                path.display(),
                sys::euid()
            )));
        }
        Ok(file)
    }

    /// Releases the lock. The file stays: a coordinator that stops with channels left for the
    /// next one keeps its namespace's files.
    fn release(self) {}

    /// Removes the lock file, then releases the lock: a coordinator that stops leaving nothing
    /// to adopt leaves no file behind either (embedded coordinators on temporary sockets would
    /// otherwise leave one per namespace). Safe while held: one that opened the file before the
    /// removal and locks it after finds that the path no longer names it, and takes the lock
    /// again on a new file (`take`). Only the file this lock holds is removed.
    fn remove(self) {
        if let Ok(held) = self.lock.metadata()
            && FileId::at(&self.path) == Some(FileId::of(&held))
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A bound control socket.
struct Bound {
    listener: UnixListener,
    socket: BoundPath,
}

/// The socket file a coordinator bound, and its identity.
struct BoundPath {
    path: PathBuf,
    id: Option<FileId>,
}

impl BoundPath {
    /// Removes the socket file if the path still names the one bound: a file someone put there
    /// since (having removed ours) is theirs.
    fn remove(&self) {
        if self.id.is_some() && FileId::at(&self.path) == self.id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Creates the runtime directory (the default socket's; mode 0700, its parent must exist) if
/// missing. An existing one must be a directory (not a link) of this user's that no one else can
/// write to, or another user could replace the socket, take the namespace's lock or forge its
/// record of channels.
fn make_default_dir(dir: &Path) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Error::os(
                format!("creating runtime directory {}", dir.display()),
                e,
            ));
        }
    }
    let m = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::os(format!("inspecting {}", dir.display()), e))?;
    if !m.is_dir() || m.uid() != sys::euid() || m.permissions().mode() & 0o022 != 0 {
        return Err(Error::PermissionDenied(format!(
            "runtime directory {} is {} of uid {} with mode {:o}: it must be a directory of this \
             user's ({}) writable by no one else (it holds the socket, the namespace's lock and \
             its record of channels); remove it",
            dir.display(),
            kind_of(&m),
            m.uid(),
            m.permissions().mode() & 0o7777,
            sys::euid()
        )));
    }
    Ok(())
}

/// What a file is, in words.
fn kind_of(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a FIFO"
    } else {
        "a device"
    }
}

/// How long probing an existing socket for a live coordinator may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Binds the control socket at `path`. Something already there is removed only if it is a
/// stale socket: a socket (not a link to one), of this user, that nobody listens on. Anything
/// else is an error and stays untouched.
fn bind(path: &Path, mode: u32) -> Result<Bound> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            if !m.file_type().is_socket() {
                return Err(Error::AlreadyExists(format!(
                    "{} is {}, not a socket: a coordinator replaces only a stale socket of its \
                     own; choose another socket path",
                    path.display(),
                    kind_of(&m)
                )));
            }
            if m.uid() != sys::euid() {
                return Err(Error::PermissionDenied(format!(
                    "{} is a socket of uid {}, not of this user ({}): it is left alone; remove it \
                     as its owner or choose another socket path",
                    path.display(),
                    m.uid(),
                    sys::euid()
                )));
            }
            match sys::connect_unix(path, PROBE_TIMEOUT) {
                Ok(_) => {
                    return Err(Error::AlreadyExists(format!(
                        "a coordinator is already listening on {}",
                        path.display()
                    )));
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(Error::AlreadyExists(format!(
                        "a coordinator is already listening on {} (its backlog is full)",
                        path.display()
                    )));
                }
                // Nobody listens: a stale socket (its coordinator died).
                Err(e) if e.raw_os_error() == Some(nix::libc::ECONNREFUSED) => {}
                Err(e) => {
                    return Err(Error::os(
                        format!("probing the existing socket {}", path.display()),
                        e,
                    ));
                }
            }
            if FileId::at(path) != Some(FileId::of(&m)) {
                return Err(Error::AlreadyExists(format!(
                    "{} changed while it was inspected; left alone",
                    path.display()
                )));
            }
            std::fs::remove_file(path)
                .map_err(|e| Error::os(format!("removing stale socket {}", path.display()), e))?;
            tracing::info!(socket = %path.display(), "removed a stale socket");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::os(format!("inspecting {}", path.display()), e)),
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::os(format!("listening on {}", path.display()), e))?;
    let socket = BoundPath {
        path: path.to_path_buf(),
        id: std::fs::symlink_metadata(path)
            .ok()
            .filter(|m| m.file_type().is_socket())
            .map(|m| FileId::of(&m)),
    };
    if socket.id.is_none() {
        return Err(Error::AlreadyExists(format!(
            "{} was replaced right after the coordinator bound it; left alone",
            path.display()
        )));
    }
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        socket.remove();
        return Err(Error::os(
            format!("setting mode {mode:o} on {}", path.display()),
            e,
        ));
    }
    if let Some(warning) = unreachable_for_others(path, mode) {
        tracing::warn!("{warning}");
    }
    Ok(Bound { listener, socket })
}

/// What keeps the users a socket of mode `mode` admits from reaching it: the first directory on
/// its path that those users (other users for a mode granting `o+w`, the group for `g+w`)
/// cannot search. `None` when nothing does, or when the mode admits nobody else.
pub(crate) fn unreachable_for_others(path: &Path, mode: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let (who, bit) = if mode & 0o002 != 0 {
        ("other users", 0o001)
    } else if mode & 0o020 != 0 {
        ("its group", 0o010)
    } else {
        return None;
    };
    let mut dirs: Vec<&Path> = path
        .ancestors()
        .skip(1)
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    dirs.reverse();
    for dir in dirs {
        let m = std::fs::metadata(dir).ok()?;
        // Enough for the group when the group bit is set, or when the others' bit is and
        // the directory is not the group's (then the group searches it as "other").
        let ok = m.mode() & bit != 0 || (bit == 0o010 && m.mode() & 0o001 != 0);
        if !ok {
            return Some(format!(
                "the socket {} has mode {mode:03o}, but {who} cannot reach it: the directory {} \
                 (owner uid {}, mode {:04o}) is not searchable by them (`chmod {}+x {}`)",
                path.display(),
                dir.display(),
                m.uid(),
                m.mode() & 0o7777,
                if bit == 0o001 { "o" } else { "g" },
                dir.display()
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: `shmringd --socket /run/shmring/md.sock --socket-mode 666` in a directory of
    /// mode 0700 admitted nobody else, silently. The coordinator now says which directory keeps
    /// them out.
    #[test]
    fn a_shared_socket_in_a_private_directory_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("shmring-unreach-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("md.sock");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let w = unreachable_for_others(&sock, 0o666).expect("a warning");
        assert!(
            w.contains(&dir.display().to_string()) && w.contains("o+x"),
            "{w}"
        );
        let w = unreachable_for_others(&sock, 0o660).expect("a warning");
        assert!(w.contains("g+x"), "{w}");
        assert_eq!(unreachable_for_others(&sock, 0o600), None);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(unreachable_for_others(&sock, 0o666), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn namespace(tag: &str) -> String {
        format!("u{tag}{}", std::process::id())
    }

    /// Defect 13 (the namespace lock could be held twice): a coordinator that opens the lock
    /// file, then loses the processor while the one holding it stops, then locks the file,
    /// must not hold the namespace while a third coordinator does. B locks the removed file
    /// after A let go; its check that the path still names that file sends it to C's file,
    /// which C holds.
    #[test]
    fn a_lock_on_a_removed_lock_file_does_not_count() {
        let ns = namespace("lockrace");
        let dir = std::env::temp_dir().join(format!("shmring-{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = NamespaceLock::path_of(&dir, &ns);
        let a = NamespaceLock::take(&path, None).unwrap();
        let early = NamespaceLock::open(&path).unwrap(); // B opens the file A holds
        a.remove(); // A stops leaving nothing to adopt: removes the file, unlocks
        assert!(!path.exists(), "removed");
        let c = NamespaceLock::take(&path, None).unwrap(); // C locks a new file
        match NamespaceLock::take(&path, Some(early)) {
            Err(Error::AlreadyExists(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("two coordinators hold namespace {ns:?}"),
        }
        c.release();
        // A file removed by hand between an open and the lock: that lock does not count, the
        // file at the path is locked instead.
        let early = NamespaceLock::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let d = NamespaceLock::take(&path, Some(early)).unwrap();
        assert_eq!(
            FileId::at(&path),
            Some(FileId::of(&d.lock.metadata().unwrap()))
        );
        d.release();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

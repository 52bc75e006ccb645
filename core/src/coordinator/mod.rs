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

mod registry;
mod server;

use crate::error::{Error, Result};
use crate::protocol::validate_namespace;
use crate::sys;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The namespace a coordinator serves and a client connects to unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The environment variable naming the socket clients connect to.
pub const SOCKET_ENV: &str = "SHMRING_SOCKET";

/// Where the coordinator of `namespace` listens by default:
/// `$XDG_RUNTIME_DIR/shmring/<namespace>.sock`, else `/tmp/shmring-<uid>/<namespace>.sock`.
pub fn default_socket_path(namespace: &str) -> PathBuf {
    default_socket_dir().join(format!("{namespace}.sock"))
}

fn default_socket_dir() -> PathBuf {
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
    /// The socket to listen on (`None`: [`default_socket_path`] of the namespace).
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
    /// Largest segment a client may have created, in bytes (default [`DEFAULT_MAX_CHANNEL_BYTES`]):
    /// any user who can reach the socket can create channels, and each one's memory is
    /// allocated up front (charged to the coordinator's memory).
    pub max_channel_bytes: u64,
}

/// Default of [`CoordinatorConfig::max_channel_bytes`]: 1 GiB.
pub const DEFAULT_MAX_CHANNEL_BYTES: u64 = 1 << 30;

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            namespace: DEFAULT_NAMESPACE.to_string(),
            socket: None,
            socket_mode: 0o600,
            keep_channels: false,
            max_channel_bytes: DEFAULT_MAX_CHANNEL_BYTES,
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
}

/// A running coordinator. Stops (removing its socket, and its channels unless told to keep
/// them) when [`stop`](Coordinator::stop)ped or dropped.
///
/// ```
/// use shmring::{ChannelConfig, Client, Coordinator, CoordinatorConfig};
///
/// let dir = std::env::temp_dir().join(format!("shmring-doc-{}", std::process::id()));
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
/// # Ok::<(), shmring::Error>(())
/// ```
pub struct Coordinator {
    socket: PathBuf,
    namespace: String,
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
    /// the namespace, a socket directory others can write to, and the like.
    pub fn start(config: CoordinatorConfig) -> Result<Coordinator> {
        validate_namespace(&config.namespace)?;
        if config.socket_mode & !0o777 != 0 {
            return Err(Error::InvalidArgument(format!(
                "socket mode {:o} has bits outside 0o777",
                config.socket_mode
            )));
        }
        let lock = lock_namespace(&config.namespace)?;
        let lock_path = Path::new("/dev/shm").join(registry::lock_name(&config.namespace));
        let started = Coordinator::listen(&config).and_then(|(socket, listener)| {
            let (stop_tx, stop_rx) =
                UnixStream::pair().map_err(|e| Error::os("creating the stop socket", e))?;
            match server::Server::new(listener, stop_rx, &config) {
                Ok(server) => Ok((socket, stop_tx, server)),
                Err(e) => {
                    let _ = std::fs::remove_file(&socket);
                    Err(e)
                }
            }
        });
        let (socket, stop_tx, mut server) = match started {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&lock_path);
                return Err(e);
            }
        };
        let keep = config.keep_channels;
        let (ns, path) = (config.namespace.clone(), socket.clone());
        let cleanup = [socket.clone(), lock_path.clone()];
        let thread = std::thread::Builder::new()
            .name(format!("shmring-coordinator-{}", config.namespace))
            .spawn(move || {
                tracing::info!(namespace = %ns, socket = %path.display(), pid = sys::pid(), "coordinator serving");
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
                let _ = std::fs::remove_file(&path);
                drop(server);
                // Removed while still held, so a coordinator starting now either fails to lock
                // the old file or creates and locks a new one.
                let _ = std::fs::remove_file(&lock_path);
                drop(lock);
                tracing::info!(namespace = %ns, "coordinator stopped");
            })
            .map_err(|e| {
                for p in &cleanup {
                    let _ = std::fs::remove_file(p);
                }
                Error::os("starting the coordinator thread", e)
            })?;
        Ok(Coordinator {
            socket,
            namespace: config.namespace,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Makes the socket's directory and binds the socket.
    fn listen(config: &CoordinatorConfig) -> Result<(PathBuf, UnixListener)> {
        let socket = match &config.socket {
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    make_dir(dir, false)?;
                }
                p.clone()
            }
            None => {
                make_dir(&default_socket_dir(), true)?;
                default_socket_path(&config.namespace)
            }
        };
        let listener = bind(&socket, config.socket_mode)?;
        Ok((socket, listener))
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
    /// reason is logged). A supervising program exits then, so that it is restarted.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops serving: closes every connection, removes the socket and (unless
    /// [`keep_channels`](CoordinatorConfig::keep_channels)) deletes every channel. Processes
    /// that have a channel mapped keep using it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
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

/// Takes the namespace's lock file in `/dev/shm` (held for the coordinator's life).
fn lock_namespace(namespace: &str) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = Path::new("/dev/shm").join(registry::lock_name(namespace));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
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
    sys::try_lock(file)?.ok_or_else(|| {
        Error::AlreadyExists(format!(
            "namespace {namespace:?} is already served by another coordinator (it holds {})",
            path.display()
        ))
    })
}

/// Creates `dir` (mode 0700) if missing. With `private`, an existing one must belong to this
/// user and be writable by nobody else, or another user could replace the socket.
fn make_dir(dir: &Path, private: bool) -> Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::os(format!("creating socket directory {}", dir.display()), e))?;
        return Ok(());
    }
    if private {
        let m = std::fs::metadata(dir)
            .map_err(|e| Error::os(format!("inspecting {}", dir.display()), e))?;
        if m.uid() != sys::euid() || m.permissions().mode() & 0o022 != 0 {
            return Err(Error::PermissionDenied(format!(
                "socket directory {} belongs to uid {} with mode {:o}: it must be this user's \
                 ({}) and writable by no one else; remove it or pass a socket path",
                dir.display(),
                m.uid(),
                m.permissions().mode() & 0o7777,
                sys::euid()
            )));
        }
    }
    Ok(())
}

/// Binds the control socket, replacing a stale socket file left by a dead coordinator but never
/// a live one's.
fn bind(path: &Path, mode: u32) -> Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(Error::AlreadyExists(format!(
                "a coordinator is already listening on {}",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .map_err(|e| Error::os(format!("removing stale socket {}", path.display()), e))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::os(format!("listening on {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::os(format!("setting mode {mode:o} on {}", path.display()), e))?;
    Ok(listener)
}

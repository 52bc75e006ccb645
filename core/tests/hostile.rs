//! The coordinator against what a local user (or a careless administrator) can do to it: files
//! at its socket path, racing starts, connections that pipeline without reading, stall
//! half-way or pile up, users who create all they can, and descriptors whose close blocks.
//! Each test names the defect of issue 10 ("Step 5"), or of the review after it, that it
//! guards. Those that need a second user run the `shmring` tool as uid 65534 (CI runs as root);
//! without root they are skipped.

#![cfg(all(not(loom), feature = "cli"))]

use shmring::protocol::{
    self, FrameReader, HELLO_ACCEPTED, HELLO_BUSY, MAX_REQUEST, PROTOCOL_VERSION, Reply, Request,
};
use shmring::{ChannelConfig, Client, Coordinator, CoordinatorConfig, Error, Role};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// The unprivileged user the second-user checks run as (`nobody` on Debian).
const OTHER: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

mod common;
use common::watchdog;

/// Taken shared around every start of a child process, and exclusively while this process holds
/// a socket whose last close blocks (`lingering_socket`): a child forked meanwhile holds a copy
/// until its exec, and that exec could then make the last close and block (the child, and the
/// test waiting for it) for the linger's hour. Seen when the trap tests ran beside the others.
static SPAWNS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn spawning() -> std::sync::RwLockReadGuard<'static, ()> {
    SPAWNS.read().unwrap_or_else(|e| e.into_inner())
}

/// A scratch directory (mode 0755, so that another user can reach a socket in it), removed
/// when dropped, and a namespace of this test's own.
struct Place {
    dir: PathBuf,
    ns: String,
}

impl Place {
    fn new(tag: &str) -> Place {
        static N: std::sync::Mutex<u32> = std::sync::Mutex::new(0);
        let n = {
            let mut n = N.lock().unwrap();
            *n += 1;
            *n
        };
        let ns = format!("h{tag}{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("shmring-{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Place { dir, ns }
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("c.sock")
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        // What a coordinator of the namespace keeps in this user's runtime directory: its lock
        // (never removed by a coordinator) and its record of the channels.
        for ext in ["lock", "channels"] {
            let _ = std::fs::remove_file(runtime_file(&self.ns, ext));
        }
    }
}

/// `<runtime dir>/<namespace>.<ext>`: the runtime directory is the default socket's.
fn runtime_file(ns: &str, ext: &str) -> PathBuf {
    shmring::default_socket_path(ns).with_extension(ext)
}

/// A running `shmringd`, stopped (SIGTERM) when dropped.
struct Daemon {
    child: Child,
    sock: PathBuf,
}

impl Daemon {
    fn start(place: &Place, extra: &[&str]) -> Daemon {
        let sock = place.sock();
        let spawn = spawning();
        let mut child = Command::new(env!("CARGO_BIN_EXE_shmringd"))
            .args(["--namespace", &place.ns, "--socket-mode", "666", "--socket"])
            .arg(&sock)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        drop(spawn);
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "shmringd did not start listening"
            );
            assert!(child.try_wait().unwrap().is_none(), "shmringd exited");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The probe connections count against this user's cap until shmringd has seen them
        // close.
        std::thread::sleep(Duration::from_millis(200));
        Daemon { child, sock }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.wait();
    }
}

/// Runs `shmring` against `sock` as user `uid` (this user if `None`).
fn shmring_as(uid: Option<u32>, sock: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shmring"));
    c.arg("--socket").arg(sock).args(args);
    if let Some(u) = uid {
        c.uid(u).gid(u);
    }
    let _spawn = spawning();
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A connection speaking the protocol by hand.
struct Raw {
    stream: UnixStream,
    reader: FrameReader,
}

impl Raw {
    /// Connects and sends the hello (without waiting for the answer).
    fn connect(sock: &Path) -> Raw {
        let mut stream = UnixStream::connect(sock).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The coordinator may refuse and close before the hello is written.
        let _ = stream.write_all(&protocol::client_hello(PROTOCOL_VERSION));
        Raw {
            stream,
            reader: FrameReader::new(16 << 20),
        }
    }

    /// The next frame, or `None` at the end of the stream.
    fn frame(&mut self) -> Option<Vec<u8>> {
        let mut buf = [0u8; 64 << 10];
        loop {
            if let Some(f) = self.reader.next_frame().unwrap() {
                return Some(f);
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.reader.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading from the coordinator: {e}"),
            }
        }
    }

    /// The server's hello: its status and text.
    fn hello(&mut self) -> (u8, String) {
        let f = self.frame().expect("the coordinator answers the hello");
        let (_, status, text) = protocol::parse_server_hello(&f).unwrap();
        (status, text)
    }

    fn send(&mut self, req: &Request) {
        self.stream.write_all(&protocol::encode(req)).unwrap();
    }

    fn reply(&mut self) -> Reply {
        protocol::decode(&self.frame().expect("a reply")).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Defect 1: the coordinator deleted whatever file was at its socket path.

/// Defect 1: a regular file, a directory, a symbolic link (to a file, and to a stale socket)
/// and another user's stale socket at the socket path all stay untouched, and the start fails
/// with an error that says what is there.
#[test]
fn what_is_not_a_stale_socket_of_ours_stays_untouched() {
    let _dog = watchdog("socket path", 60);
    let place = Place::new("path");
    let start = |path: &Path| Coordinator::start(CoordinatorConfig::new(&place.ns).socket(path));

    let file = place.dir.join("passwd");
    std::fs::write(&file, "root:x:0:0::/root:/bin/sh\n").unwrap();
    match start(&file) {
        Err(Error::AlreadyExists(m)) => assert!(m.contains("regular file"), "{m}"),
        other => panic!("a regular file at the socket path: {other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "root:x:0:0::/root:/bin/sh\n"
    );

    let dir = place.dir.join("d");
    std::fs::create_dir(&dir).unwrap();
    match start(&dir) {
        Err(Error::AlreadyExists(m)) => assert!(m.contains("directory"), "{m}"),
        other => panic!("a directory at the socket path: {other:?}"),
    }
    assert!(dir.is_dir());

    let link = place.dir.join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    match start(&link) {
        Err(Error::AlreadyExists(m)) => assert!(m.contains("symbolic link"), "{m}"),
        other => panic!("a link at the socket path: {other:?}"),
    }
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(file.exists());

    // A link to a stale socket of ours: the link is not the socket.
    let stale = place.dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let link2 = place.dir.join("link2");
    std::os::unix::fs::symlink(&stale, &link2).unwrap();
    assert!(matches!(start(&link2), Err(Error::AlreadyExists(_))));
    assert!(std::fs::symlink_metadata(&link2).is_ok() && stale.exists());

    if is_root() {
        // Another user's stale socket.
        let theirs = place.dir.join("theirs.sock");
        drop(UnixListener::bind(&theirs).unwrap());
        std::os::unix::fs::chown(&theirs, Some(OTHER), Some(OTHER)).unwrap();
        match start(&theirs) {
            Err(Error::PermissionDenied(m)) => {
                assert!(m.contains(&format!("uid {OTHER}")), "{m}")
            }
            other => panic!("another user's socket at the socket path: {other:?}"),
        }
        assert_eq!(std::fs::metadata(&theirs).unwrap().uid(), OTHER);
    }
}

/// Defect 1: a stale socket of this user's (its coordinator died) is replaced; a live one is
/// not; a missing directory is an error and is not created; and at stop the coordinator
/// removes its socket only if it is still the one it bound.
#[test]
fn only_a_stale_socket_of_ours_is_replaced_and_only_ours_removed() {
    let _dog = watchdog("stale socket", 60);
    let place = Place::new("stale");
    let sock = place.sock();
    drop(UnixListener::bind(&sock).unwrap()); // left by a dead coordinator
    let coord = Coordinator::start(CoordinatorConfig::new(&place.ns).socket(&sock)).unwrap();
    Client::connect(Some(&sock)).unwrap().list().unwrap();
    // A live socket is refused (by the namespace lock or the socket: another namespace).
    let other_ns = format!("{}x", place.ns);
    match Coordinator::start(CoordinatorConfig::new(&other_ns).socket(&sock)) {
        Err(Error::AlreadyExists(m)) => assert!(m.contains("already listening"), "{m}"),
        other => panic!("a live socket: {other:?}"),
    }
    // Someone replaces the socket with a file: the stopping coordinator leaves it.
    std::fs::remove_file(&sock).unwrap();
    std::fs::write(&sock, "not yours").unwrap();
    coord.stop();
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "not yours");
    std::fs::remove_file(&sock).unwrap();

    let missing = place.dir.join("no/such/dir");
    match Coordinator::start(CoordinatorConfig::new(&place.ns).socket(missing.join("x.sock"))) {
        Err(Error::NotFound(m)) => assert!(m.contains("does not exist"), "{m}"),
        other => panic!("a missing socket directory: {other:?}"),
    }
    assert!(!place.dir.join("no").exists(), "the directory was created");
    let _ = std::fs::remove_file(runtime_file(&other_ns, "lock"));
}

/// Defect 1, as reported: `shmringd --socket /etc/passwd` removed the file. A file in its
/// place, and a socket in a directory that does not exist, make shmringd fail, saying why,
/// and leave everything as it was.
#[test]
fn shmringd_never_removes_a_file_at_its_socket_path() {
    let _dog = watchdog("shmringd socket path", 60);
    let place = Place::new("dpath");
    let file = place.dir.join("passwd");
    std::fs::write(&file, "root:x:0:0\n").unwrap();
    let missing = place.dir.join("nonexistent");
    for (path, says) in [
        (file.clone(), "regular file"),
        (missing.join("x.sock"), "does not exist"),
    ] {
        let spawn = spawning();
        let out = Command::new(env!("CARGO_BIN_EXE_shmringd"))
            .args(["--namespace", &place.ns, "--socket"])
            .arg(&path)
            .output()
            .unwrap();
        drop(spawn);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{}",
            text(&out)
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "root:x:0:0\n");
    assert!(!missing.exists());
}

// ---------------------------------------------------------------------------------------------
// Defect 13: the namespace lock could be held twice.

/// Defect 13: two coordinators starting at once on one namespace: exactly one wins, again and
/// again; and starts racing a stop never leave two holding the namespace.
#[test]
fn racing_starts_leave_exactly_one_coordinator() {
    let _dog = watchdog("racing starts", 120);
    let place = Place::new("race");
    let start = |i: usize| {
        Coordinator::start(
            CoordinatorConfig::new(&place.ns).socket(place.dir.join(format!("{i}.sock"))),
        )
    };
    for _ in 0..30 {
        let barrier = Barrier::new(2);
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| {
                barrier.wait();
                start(0)
            });
            let b = s.spawn(|| {
                barrier.wait();
                start(1)
            });
            (a.join().unwrap(), b.join().unwrap())
        });
        let won: Vec<Coordinator> = [a, b]
            .into_iter()
            .filter_map(|r| match r {
                Ok(c) => Some(c),
                Err(Error::AlreadyExists(_)) => None,
                Err(e) => panic!("unexpected error {e}"),
            })
            .collect();
        assert_eq!(won.len(), 1, "exactly one of two racing starts wins");
        for c in won {
            c.stop();
        }
    }
    // Starts racing the stop of the coordinator in place: the lock is released while two
    // others open and lock its file.
    let mut current = start(9).unwrap();
    for round in 0..100 {
        let socket = 1000 + round;
        let barrier = Arc::new(Barrier::new(3));
        let (x, y) = std::thread::scope(|s| {
            let b = Arc::clone(&barrier);
            let stopper = s.spawn(move || {
                b.wait();
                current.stop();
            });
            let b = Arc::clone(&barrier);
            let x = s.spawn(move || {
                b.wait();
                start(2 * round + 10)
            });
            let b = Arc::clone(&barrier);
            let y = s.spawn(move || {
                b.wait();
                start(2 * round + 11)
            });
            stopper.join().unwrap();
            (x.join().unwrap(), y.join().unwrap())
        });
        let mut won: Vec<Coordinator> = [x, y].into_iter().filter_map(|r| r.ok()).collect();
        assert!(
            won.len() <= 1,
            "round {round}: two coordinators hold namespace {}",
            place.ns
        );
        current = match won.pop() {
            Some(c) => {
                // It really holds the namespace: nobody else gets it.
                assert!(matches!(start(socket), Err(Error::AlreadyExists(_))));
                c
            }
            None => start(socket).expect("the stopped coordinator's namespace is free"),
        };
    }
    current.stop();
}

// ---------------------------------------------------------------------------------------------
// Defect 3: one connection could take every file descriptor of the coordinator.

/// Defect 3, the variant that needs no guessing: a client creates an MPMC channel of 1024
/// producer and 1024 consumer entries and pipelines 2000 opens without reading a reply. Each
/// reply held a duplicated segment descriptor: shmringd's descriptors grew by about 2000.
/// Now the descriptors queued for a connection are capped (its requests wait until it takes
/// its replies), another client is served meanwhile, and every reply still arrives.
#[test]
fn pipelined_opens_cannot_take_the_coordinators_descriptors() {
    let _dog = watchdog("pipelined opens", 120);
    let place = Place::new("fds");
    let d = Daemon::start(&place, &[]);
    let mut raw = Raw::connect(&d.sock);
    assert_eq!(raw.hello().0, HELLO_ACCEPTED);
    raw.send(&Request::Create {
        name: "m".into(),
        config: ChannelConfig::mpmc()
            .capacity(64 << 10)
            .max_frame_size(64)
            .max_producers(1024)
            .max_consumers(1024),
    });
    assert!(matches!(raw.reply(), Reply::Channel(_)));
    let base = fd_count(d.pid());
    const OPENS: usize = 2000;
    let mut writer = raw.stream.try_clone().unwrap();
    let pipeline = std::thread::spawn(move || {
        let mut all = Vec::new();
        for i in 0..OPENS {
            all.extend(protocol::encode(&Request::Open {
                name: "m".into(),
                role: if i % 2 == 0 {
                    Role::Producer
                } else {
                    Role::Consumer
                },
            }));
        }
        writer.write_all(&all).unwrap();
    });
    // While the pipeline stands, the coordinator's descriptors stay bounded...
    let mut most = 0;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        most = most.max(fd_count(d.pid()));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        most <= base + 16,
        "shmringd went from {base} to {most} descriptors"
    );
    // ...and another client is served.
    let other = Client::connect_with_timeout(Some(&d.sock), Duration::from_secs(5)).unwrap();
    let t = Instant::now();
    other.list().unwrap();
    other
        .create(
            "other",
            &ChannelConfig::spsc().capacity(4096).max_frame_size(64),
        )
        .unwrap();
    let tx = other.producer("other").unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    drop(tx);
    // Taking the replies lets the rest through: every open is answered.
    let mut opened = 0;
    for _ in 0..OPENS {
        match raw.reply() {
            Reply::Opened { .. } => opened += 1,
            other => panic!("unexpected reply {other:?}"),
        }
    }
    pipeline.join().unwrap();
    assert_eq!(opened, OPENS);
    assert!(fd_count(d.pid()) <= base + 16);
}

/// Defect 3's caps must not catch a client of the library: one that closes 4000 handles at
/// once pipelines 4000 closes and reads their replies only with its next request.
#[test]
fn a_client_closing_many_handles_at_once_is_still_served() {
    let _dog = watchdog("many closes", 60);
    let place = Place::new("closes");
    let coord = Coordinator::start(CoordinatorConfig::new(&place.ns).socket(place.sock())).unwrap();
    let c = Client::connect(Some(&place.sock())).unwrap();
    let names = ["m0", "m1", "m2", "m3"];
    for name in names {
        c.create(
            name,
            &ChannelConfig::mpmc()
                .capacity(64 << 10)
                .max_frame_size(64)
                .max_consumers(1024),
        )
        .unwrap();
    }
    let consumers: Vec<_> = names
        .iter()
        .flat_map(|name| (0..1000).map(|_| c.consumer(name).unwrap()))
        .collect();
    drop(consumers);
    let t = Instant::now();
    for name in names {
        let s = c.stats(name).unwrap();
        assert!(s.participants.is_empty(), "{:?}", s.participants.len());
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    drop(c);
    coord.stop();
}

/// Found while fixing defect 3: a client that reads a close's reply and the next open's in one
/// `recvmsg` (the kernel joins a reply without a descriptor to the one after it) threw the
/// open's descriptor away with the close's reply ("the coordinator admitted us but sent no
/// segment descriptor"). A fake coordinator sends both before the open is even asked for.
#[test]
fn a_descriptor_read_together_with_a_close_reply_is_kept() {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::os::fd::AsRawFd;
    let _dog = watchdog("close and open replies together", 60);
    let place = Place::new("joined");
    let direct = format!("test-joined-{}", std::process::id());
    struct Unlink(String);
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = shmring::Segment::unlink(&self.0);
        }
    }
    let _unlink = Unlink(direct.clone());
    let _seg = shmring::Segment::create(
        &direct,
        &ChannelConfig::spsc().capacity(4096).max_frame_size(64),
    )
    .unwrap();
    let object = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/dev/shm/shmring-{direct}"))
        .unwrap();
    let listener = UnixListener::bind(place.sock()).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut raw = Raw {
            stream: s.try_clone().unwrap(),
            reader: FrameReader::new(MAX_REQUEST),
        };
        raw.frame().unwrap(); // the hello
        s.write_all(&protocol::server_hello(HELLO_ACCEPTED, "fake"))
            .unwrap();
        // An owner word the segment does not hold: the client refuses the entry (and closes it)
        // once it has the descriptor, or says it got none.
        let opened = protocol::encode(&Reply::Opened {
            index: 0,
            owner: 12345,
            generation: 1,
        });
        let fds = [object.as_raw_fd()];
        let send_with_fd = |s: &UnixStream, bytes: &[u8]| {
            let iov = [std::io::IoSlice::new(bytes)];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(s.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).unwrap();
        };
        assert!(matches!(
            protocol::decode::<Request>(&raw.frame().unwrap()).unwrap(),
            Request::Open { .. }
        ));
        send_with_fd(&s, &opened);
        assert!(matches!(
            protocol::decode::<Request>(&raw.frame().unwrap()).unwrap(),
            Request::Close { .. }
        ));
        // The close's reply, and already the reply to the next open, read in one go (as the
        // kernel may join them): the descriptor comes with the close's reply's bytes.
        let mut both = protocol::encode(&Reply::Done);
        both.extend_from_slice(&opened);
        send_with_fd(&s, &both);
        assert!(matches!(
            protocol::decode::<Request>(&raw.frame().unwrap()).unwrap(),
            Request::Open { .. }
        ));
        // Whatever else comes (the second refusal's close), until the client goes.
        while raw.frame().is_some() {}
    });
    let c = Client::connect(Some(&place.sock())).unwrap();
    for round in 0..2 {
        match c.consumer("x") {
            Err(Error::Busy(m)) => assert!(m.contains("held by pid"), "round {round}: {m}"),
            other => panic!("round {round}: {other:?}"),
        }
    }
    drop(c);
    server.join().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Defect 4: idle and half-sent connections locked everyone out and kept their memory.

/// Defect 4, as reported: connections that each send a hello and 64 KiB - 1 of a 64 KiB frame,
/// then stall. Before: every later client was refused with "no coordinator answers... start
/// shmringd" and RSS grew by ~72 KB per connection, and stayed. Now: a user's connections
/// past its cap are refused with a message naming the limit, another user is still served,
/// the stalled ones are closed after the message timeout, and the memory goes back.
#[test]
fn half_sent_connections_are_capped_timed_out_and_freed() {
    let _dog = watchdog("half-sent connections", 180);
    let place = Place::new("half");
    let d = Daemon::start(
        &place,
        &[
            "--max-connections-per-uid",
            "300",
            "--max-connections",
            "400",
            "--message-timeout",
            "3",
        ],
    );
    let warm = Client::connect(Some(&d.sock)).unwrap();
    warm.list().unwrap();
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));
    let base = rss_kib(d.pid());
    let mut body = (MAX_REQUEST as u32).to_le_bytes().to_vec();
    body.resize(4 + MAX_REQUEST - 1, 0x5a);
    let mut conns = Vec::new();
    for _ in 0..350 {
        let mut r = Raw::connect(&d.sock);
        let _ = r.stream.write_all(&body); // a refused one may be closed already
        conns.push(r);
    }
    let (mut accepted, mut refused) = (Vec::new(), 0);
    for mut r in conns {
        match r.hello() {
            (HELLO_ACCEPTED, _) => accepted.push(r),
            (HELLO_BUSY, text) => {
                assert!(text.contains("limit of 300 connections for uid"), "{text}");
                refused += 1;
            }
            other => panic!("unexpected hello {other:?}"),
        }
    }
    assert_eq!((accepted.len(), refused), (300, 50));
    let during = rss_kib(d.pid());
    // This user is refused, clearly.
    match Client::connect(Some(&d.sock)) {
        Err(Error::Busy(m)) => {
            assert!(m.contains("limit of 300 connections for uid"), "{m}");
            assert!(!m.contains("no coordinator answers"), "{m}");
        }
        other => panic!("a client over its user's cap: {other:?}"),
    }
    // The C ABI and the tool say the same.
    let out = shmring_as(None, &d.sock, &["list"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("limit of 300 connections"),
        "{}",
        text(&out)
    );
    if is_root() {
        let out = shmring_as(Some(OTHER), &d.sock, &["list"]);
        assert!(
            out.status.success(),
            "another user is served: {}",
            text(&out)
        );
    }
    // The message timeout closes the stalled connections...
    for r in &mut accepted {
        assert_eq!(r.frame(), None, "a stalled connection is closed");
    }
    // ...whose memory goes back.
    std::thread::sleep(Duration::from_millis(1500));
    let after = rss_kib(d.pid());
    eprintln!("shmringd RSS: {base} KiB before, {during} KiB stalled, {after} KiB after");
    assert!(
        after <= base + 4096,
        "RSS {base} KiB before, {during} KiB with the stalled connections, {after} KiB after"
    );
    Client::connect(Some(&d.sock)).unwrap().list().unwrap();
}

/// Defect 4: the global cap refuses with its own message, while idle connections that finished
/// their messages are never timed out (a client's connection lives as long as its handles).
#[test]
fn the_global_cap_refuses_clearly_and_idle_clients_stay() {
    let _dog = watchdog("global cap", 60);
    let place = Place::new("glob");
    let d = Daemon::start(
        &place,
        &[
            "--max-connections",
            "4",
            "--max-connections-per-uid",
            "3",
            "--message-timeout",
            "1",
        ],
    );
    let mut idle: Vec<Raw> = (0..3).map(|_| Raw::connect(&d.sock)).collect();
    for r in &mut idle {
        assert_eq!(r.hello().0, HELLO_ACCEPTED);
    }
    let mut fourth = Raw::connect(&d.sock);
    match fourth.hello() {
        (HELLO_BUSY, t) => assert!(t.contains("limit of 3 connections for uid"), "{t}"),
        other => panic!("{other:?}"),
    }
    if is_root() {
        // uid 65534 takes the fourth place; a fifth (of any user) meets the global cap.
        let spawn = spawning();
        let mut held = Command::new(env!("CARGO_BIN_EXE_shmring"))
            .arg("--socket")
            .arg(&d.sock)
            .args(["watch", "--interval", "0.2", "--count", "20"])
            .uid(OTHER)
            .gid(OTHER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        drop(spawn);
        std::thread::sleep(Duration::from_millis(500));
        let out = shmring_as(Some(OTHER), &d.sock, &["list"]);
        assert!(!out.status.success(), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("limit of 4 connections (shmringd --max-connections)"),
            "{}",
            text(&out)
        );
        let _ = held.kill();
        let _ = held.wait();
    }
    // Idle past the message timeout, the greeted connections still answer.
    std::thread::sleep(Duration::from_millis(2500));
    for r in &mut idle {
        r.send(&Request::List);
        assert!(matches!(r.reply(), Reply::Channels(_)));
    }
}

// ---------------------------------------------------------------------------------------------
// Defect 5: no per-user limits.

/// Defect 5: uid 65534 created 4096 channels and root could create no more. Now a user meets
/// its own cap (channels, then bytes), with a refusal that names the limit and differs from the
/// namespace's; root still creates; `shmring list` and `stat` show the limits.
#[test]
fn a_user_meets_its_own_limits_and_others_still_create() {
    if !is_root() {
        eprintln!("skipped: running a client as another user needs root (CI runs as root)");
        return;
    }
    let _dog = watchdog("per-user limits", 60);
    let place = Place::new("quota");
    let d = Daemon::start(
        &place,
        &[
            "--max-channels-per-uid",
            "3",
            "--max-bytes-per-uid",
            "4194304",
        ],
    );
    let as_other = |args: &[&str]| shmring_as(Some(OTHER), &d.sock, args);
    for name in ["a", "b", "c"] {
        let out = as_other(&[
            "create",
            name,
            "--capacity",
            "64K",
            "--max-frame-size",
            "1K",
            "--mode",
            "666",
        ]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = as_other(&["create", "d", "--capacity", "64K", "--max-frame-size", "1K"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("uid {OTHER} owns 3 channels"))
            && err.contains("--max-channels-per-uid")
            && !err.contains("namespace has"),
        "{}",
        text(&out)
    );
    let root = Client::connect(Some(&d.sock)).unwrap();
    root.create(
        "r",
        &ChannelConfig::spsc()
            .capacity(64 << 10)
            .max_frame_size(1024),
    )
    .expect("root still creates");
    // Bytes: two small channels and a 4 MiB one do not fit in 4 MiB.
    assert!(as_other(&["delete", "c"]).status.success());
    let out = as_other(&["create", "big", "--capacity", "4M"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-bytes-per-uid"), "{}", text(&out));
    // The tool shows the limits and the user's use of them.
    let out = as_other(&["list"]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains(&format!("uid {OTHER}: 2 of 3 channels")),
        "{}",
        text(&out)
    );
    let out = as_other(&["stat", "a"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("of 3 channels"),
        "{}",
        text(&out)
    );
    let out = as_other(&["stat", "a", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["limits"]["max_channels_per_uid"], 3);
    assert_eq!(v["limits"]["max_bytes_per_uid"], 4 << 20);
    assert_eq!(v["limits"]["channels"], 2);
    let l = root.limits().unwrap();
    assert_eq!((l.uid, l.channels, l.namespace_channels), (0, 1, 3));
    // The default, unless the open-file limit allows fewer connections in all.
    assert_eq!(
        l.max_connections_per_uid,
        (shmring::DEFAULT_MAX_CONNECTIONS_PER_UID as u64).min(l.max_connections)
    );
}

/// Defect 5, embedded: the limits are `CoordinatorConfig` fields, and the namespace cap keeps
/// its own message.
#[test]
fn embedded_per_user_limits() {
    let _dog = watchdog("embedded limits", 60);
    let place = Place::new("emb");
    let coord = Coordinator::start(
        CoordinatorConfig::new(&place.ns)
            .socket(place.sock())
            .max_channels_per_uid(2)
            .max_bytes_per_uid(1 << 20),
    )
    .unwrap();
    let c = Client::connect(Some(&place.sock())).unwrap();
    let small = ChannelConfig::spsc().capacity(4096).max_frame_size(64);
    c.create("one", &small).unwrap();
    c.create("two", &small).unwrap();
    match c.create("three", &small) {
        Err(Error::Busy(m)) => assert!(m.contains("limit of 2 channels per user"), "{m}"),
        other => panic!("{other:?}"),
    }
    c.delete("two").unwrap();
    match c.create(
        "big",
        &ChannelConfig::spsc().capacity(1 << 20).max_frame_size(64),
    ) {
        Err(Error::Busy(m)) => assert!(m.contains("limit of 1 MiB per user"), "{m}"),
        other => panic!("{other:?}"),
    }
    c.create("two", &small).unwrap();
    drop(c);
    coord.stop();
}

/// A coordinator that starts removes the named segments an older shmringd left in `/dev/shm`
/// (segments are sealed memfds now), but only files of its own user: an object another user
/// put there under the namespace's prefix is not the coordinator's to delete (step 5: never
/// delete a file the program did not create; a root coordinator used to remove it).
#[test]
fn another_users_object_under_the_namespace_prefix_stays() {
    if !is_root() {
        eprintln!("skipped: needs root to make a file of another user");
        return;
    }
    let _dog = watchdog("planted object", 60);
    let place = Place::new("planted");
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let theirs = PathBuf::from(format!("/dev/shm/shmring.{}@{uid}.7.planted", place.ns));
    let ours = PathBuf::from(format!("/dev/shm/shmring.{}@{uid}.8.old", place.ns));
    std::fs::write(&theirs, b"another user's").unwrap();
    std::os::unix::fs::chown(&theirs, Some(OTHER), Some(OTHER)).unwrap();
    std::fs::write(&ours, b"an older shmringd's").unwrap();
    let coord = Coordinator::start(CoordinatorConfig::new(&place.ns).socket(place.sock()));
    let kept = std::fs::read(&theirs);
    let _ = std::fs::remove_file(&theirs);
    let ours_left = ours.exists();
    let _ = std::fs::remove_file(&ours);
    coord.unwrap().stop();
    assert_eq!(kept.unwrap(), b"another user's");
    assert!(!ours_left, "the older shmringd's segment was not removed");
}

/// A client hands the segments it holds back to a coordinator that restarted, but only to one
/// running as the user that created them: whoever else listens on the socket now (here a
/// program of uid 65534 that took the socket's place) is not given their descriptors, which
/// would let it read and write the channels (found in review of step 5: the hand-back went to
/// any listener).
#[test]
fn segments_are_handed_back_only_to_a_coordinator_of_their_user() {
    if !is_root() {
        eprintln!("skipped: needs root to run a program as another user");
        return;
    }
    let _dog = watchdog("hand-back to another user", 60);
    let place = Place::new("handback");
    std::fs::set_permissions(&place.dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock = place.sock();
    let coord = Coordinator::start(
        CoordinatorConfig::new(&place.ns)
            .socket(&sock)
            .keep_channels(true),
    )
    .unwrap();
    let client = Client::connect(Some(&sock)).unwrap();
    client
        .create(
            "x",
            &ChannelConfig::spsc().capacity(4096).max_frame_size(64),
        )
        .unwrap();
    let _tx = client.producer("x").unwrap();
    coord.stop();
    let mut impostor = impostor(&sock, &place.ns);
    // The client reconnects for its next request (the impostor answers nothing to it).
    let _ = client.list();
    let status = impostor.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "the segment's descriptor was handed to another user's listener"
    );
}

/// A program of uid 65534 listening on `sock`: accepts one connection, answers the hello as a
/// coordinator of namespace `ns` would, and exits 3 if the first request that follows came with
/// a descriptor, 0 otherwise. Returns once it listens.
fn impostor(sock: &Path, ns: &str) -> Child {
    let hello: String = protocol::server_hello(HELLO_ACCEPTED, ns)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let script = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(1)
open(sys.argv[1] + ".ready", "w").close()
c, _ = s.accept()
c.recv(65536)
c.sendall(bytes.fromhex(sys.argv[2]))
msg, anc, flags, addr = c.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
fds = [a for a in anc if a[0] == socket.SOL_SOCKET and a[1] == socket.SCM_RIGHTS]
sys.exit(3 if fds else 0)
"#;
    let spawn = spawning();
    let child = Command::new("python3")
        .args(["-c", script])
        .arg(sock)
        .arg(&hello)
        .uid(OTHER)
        .gid(OTHER)
        .spawn()
        .expect("python3 runs");
    drop(spawn);
    let ready = PathBuf::from(format!("{}.ready", sock.display()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the impostor did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// Another user that takes a user's runtime directory (`/tmp/shmring-<uid>` when
/// `XDG_RUNTIME_DIR` is unset can be made by anyone first) and listens there is not taken for
/// that user's coordinator: the client refuses a coordinator in its own runtime directory that
/// runs as neither its user nor root, saying so (found in review of step 5: channels created
/// "privately" went to the other user's coordinator).
#[test]
fn a_coordinator_of_another_user_in_ones_runtime_directory_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to run a program as another user");
        return;
    }
    let _dog = watchdog("squatted runtime directory", 60);
    let place = Place::new("squat");
    std::fs::set_permissions(&place.dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let runtime = place.dir.join("shmring");
    std::fs::create_dir(&runtime).unwrap();
    std::os::unix::fs::chown(&runtime, Some(OTHER), Some(OTHER)).unwrap();
    let sock = runtime.join(format!("{}.sock", place.ns));
    let mut squatter = impostor(&sock, &place.ns);
    let spawn = spawning();
    let out = Command::new(env!("CARGO_BIN_EXE_shmring"))
        .args(["--namespace", &place.ns, "list"])
        .env("XDG_RUNTIME_DIR", &place.dir)
        .env_remove("SHMRING_SOCKET")
        .output()
        .unwrap();
    drop(spawn);
    let _ = squatter.kill();
    let _ = squatter.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the squatter was used: {out:?}");
    assert!(err.contains(&format!("runs as uid {OTHER}")), "{err}");
}
/// Found in review of step 5 (F5): the namespace lock was `/dev/shm/shmring.<ns>@<uid>.lock`,
/// a predictable name in world-writable `/dev/shm`; uid 65534 touched it first and the user's
/// coordinator failed with "Permission denied" for good. The lock lives in the user's private
/// runtime directory now: a file at the old name is nobody's business (and is left alone).
#[test]
fn a_file_at_the_old_dev_shm_lock_name_does_not_stop_the_coordinator() {
    if !is_root() {
        eprintln!("skipped: needs root to make a file of another user");
        return;
    }
    let _dog = watchdog("planted lock", 60);
    let place = Place::new("oldlock");
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let planted = PathBuf::from(format!("/dev/shm/shmring.{}@{uid}.lock", place.ns));
    std::fs::write(&planted, b"").unwrap();
    std::os::unix::fs::chown(&planted, Some(OTHER), Some(OTHER)).unwrap();
    let coord = Coordinator::start(CoordinatorConfig::new(&place.ns).socket(place.sock()));
    let kept = std::fs::metadata(&planted).map(|m| m.uid());
    let _ = std::fs::remove_file(&planted);
    let coord = coord.expect("a file another user put at the old lock name is no obstacle");
    assert_eq!(kept.unwrap(), OTHER, "the planted file is left alone");
    assert!(runtime_file(&place.ns, "lock").exists());
    coord.stop();
}

/// The sealed memfds of this process whose names start with `prefix`, opened read-write
/// through `/proc/self/fd` (what a participant holding a segment can write).
fn own_memfds(prefix: &str) -> Vec<(String, std::fs::File)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        if let Some(n) = link
            .to_str()
            .and_then(|l| l.strip_prefix("/memfd:"))
            .and_then(|l| l.strip_suffix(" (deleted)"))
            .filter(|n| n.starts_with(prefix))
            && !found.iter().any(|(m, _): &(String, _)| m == n)
            && let Ok(f) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(e.path())
        {
            found.push((n.to_string(), f));
        }
    }
    found
}

/// Rewrites a segment's header as a participant holding a writable descriptor can: `edit`,
/// then a fresh checksum (plain FNV, anyone can compute it).
fn rewrite_header(f: &std::fs::File, edit: impl FnOnce(&mut shmring::layout::SegmentHeader)) {
    use std::os::unix::fs::FileExt;
    let mut raw = [0u8; shmring::layout::HEADER_SIZE];
    f.read_exact_at(&mut raw, 0).unwrap();
    // SAFETY: SegmentHeader is repr(C) plain integers, HEADER_SIZE bytes (asserted by the
    // library); read_unaligned copies it out of the byte buffer.
    let mut h: shmring::layout::SegmentHeader =
        unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
    edit(&mut h);
    h.checksum = h.compute_checksum();
    // SAFETY: as above, the other way.
    unsafe { std::ptr::write_unaligned(raw.as_mut_ptr().cast(), h) };
    // The state word (offset 12) is left as it is now: only the fields before it and after it.
    f.write_all_at(&raw[..shmring::layout::STATE_OFFSET], 0)
        .unwrap();
    let after = shmring::layout::STATE_OFFSET + 4;
    f.write_all_at(&raw[after..], after as u64).unwrap();
}

/// Found in review of step 5 (F3): a restarted coordinator took a channel's owner, group and
/// mode from its segment's header, which every admitted participant can rewrite (with a fresh
/// checksum). uid 65534, admitted as a consumer to root's 0666 channel, made itself the owner:
/// after a restart `list` showed owner 65534 and its `delete` succeeded (refused before). The
/// coordinator's own record decides now; the header's claim is ignored.
#[test]
fn a_rewritten_header_does_not_change_a_channels_owner_across_a_restart() {
    if !is_root() {
        eprintln!("skipped: needs root to run the tool as another user");
        return;
    }
    let _dog = watchdog("header takeover", 120);
    let place = Place::new("takeover");
    let sock = place.sock();
    let d = Daemon::start(&place, &["--keep-channels"]);
    let o = shmring_as(None, &sock, &["create", "x", "--mode", "666"]);
    assert!(o.status.success(), "{}", text(&o));
    let client = Client::connect(Some(&sock)).unwrap();
    let rx = client.consumer("x").unwrap();
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let held = own_memfds(&format!("shmring.{}@{uid}.", place.ns));
    assert_eq!(held.len(), 1, "the consumer holds the segment");
    rewrite_header(&held[0].1, |h| {
        h.owner_uid = OTHER;
        h.owner_gid = OTHER;
        h.mode = 0o600;
    });
    let o = shmring_as(Some(OTHER), &sock, &["delete", "x"]);
    assert!(
        !o.status.success(),
        "refused before the restart: {}",
        text(&o)
    );
    drop(d); // SIGTERM; the channel is kept
    let _d = Daemon::start(&place, &["--keep-channels"]);
    let s = client.stats("x").expect("adopted");
    assert_eq!(
        (s.info.owner_uid, s.info.mode),
        (uid, 0o666),
        "owner and mode as created, not as the header claims"
    );
    let o = shmring_as(Some(OTHER), &sock, &["delete", "x"]);
    assert!(
        !o.status.success(),
        "refused after the restart: {}",
        text(&o)
    );
    assert!(client.stats("x").is_ok(), "still there");
    drop((rx, held, client));
}

/// Found in review of step 5: a restarting coordinator looked at `/proc/<pid>/fd/<n>` (link,
/// then `stat`), then opened that path read-write; the process could `dup2` another file onto
/// `n` in between, and the coordinator (root, perhaps) opened that file: a device, a FIFO,
/// anything the process can name. Descriptors are copied with `pidfd_getfd` now, which opens
/// nothing. Here a thread keeps swapping a descriptor between a memfd named like a segment of
/// the namespace and a plain file watched for opens (inotify); coordinators start and stop
/// meanwhile. Before the fix the file was opened within the first few starts.
#[test]
fn a_descriptor_swapped_during_the_scan_is_never_opened() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let _dog = watchdog("swapped descriptor", 120);
    let place = Place::new("swap");
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let name = std::ffi::CString::new(format!("shmring.{}@{uid}.1.x", place.ns)).unwrap();
    // SAFETY: memfd_create with a valid C string; the descriptor is owned by the OwnedFd.
    let memfd = unsafe {
        let fd = libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        OwnedFd::from_raw_fd(fd)
    };
    let bait_path = place.dir.join("bait");
    std::fs::write(&bait_path, b"not a segment").unwrap();
    let bait = std::fs::File::open(&bait_path).unwrap();
    // SAFETY: plain system calls on a valid C string; the descriptor is owned by the OwnedFd.
    let inotify = unsafe {
        let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
        assert!(fd >= 0);
        let p = std::ffi::CString::new(bait_path.to_str().unwrap()).unwrap();
        assert!(libc::inotify_add_watch(fd, p.as_ptr(), libc::IN_OPEN) >= 0);
        OwnedFd::from_raw_fd(fd)
    };
    let opened = || {
        let mut buf = [0u8; 4096];
        // SAFETY: read into a buffer we own, of its size.
        let n = unsafe { libc::read(inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        n > 0
    };
    // The descriptor number the scan finds: swapped between the memfd and the bait.
    // SAFETY: dup of a descriptor we own; the result is owned by the OwnedFd.
    let slot = unsafe { OwnedFd::from_raw_fd(libc::dup(memfd.as_raw_fd())) };
    // Dropping the sender stops the swapper.
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let swapper = {
        let (slot, memfd, bait) = (slot.as_raw_fd(), memfd.as_raw_fd(), bait.as_raw_fd());
        std::thread::spawn(move || {
            while let Err(std::sync::mpsc::TryRecvError::Empty) = stopped.try_recv() {
                // SAFETY: dup2 onto a descriptor number this test owns (`slot`).
                unsafe {
                    libc::dup2(memfd, slot);
                    libc::dup2(bait, slot);
                }
            }
            // SAFETY: as above.
            unsafe { libc::dup2(memfd, slot) };
        })
    };
    let mut seen = false;
    for _ in 0..50 {
        let coord = Coordinator::start(CoordinatorConfig::new(&place.ns).socket(place.sock()))
            .expect("the coordinator starts");
        coord.stop();
        if opened() {
            seen = true;
            break;
        }
    }
    drop(stop);
    swapper.join().unwrap();
    drop((slot, memfd, bait));
    assert!(
        !seen,
        "the coordinator opened a file swapped in during its scan"
    );
}

// ---------------------------------------------------------------------------------------------
// Found in review of step 5 (F1): a client froze the coordinator with a descriptor whose close
// blocks.

/// Found in review of step 5: the coordinator closed descriptors a client sent on its event
/// loop, so a client handing it a TCP socket that lingers on unsent data (SO_LINGER, a peer
/// that never reads) as an Adopt request's descriptor, and closing its own copy first, made the
/// coordinator's close the last one, blocked in the kernel for as long as the linger: every
/// other client went unanswered. (Any user may do this; the test does it as itself.) Another
/// client's `list` must still be answered, and the attacker's request too.
#[test]
fn a_descriptor_whose_close_blocks_does_not_stop_the_coordinator() {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::os::fd::AsRawFd;
    let _dog = watchdog("a blocking close", 120);
    let place = Place::new("linger");
    let daemon = Daemon::start(&place, &[]);
    // The attacker's request is answered (refused: not a segment) while its close blocks.
    let (trap, mut attacker) = stick_this_users_closer(&daemon.sock);
    let adopt = protocol::encode(&Request::Adopt {
        name: "trap".into(),
        generation: 1,
    });

    // A hang check: the coordinator answers within seconds while the close is blocked.
    let mut other = Raw::connect(&daemon.sock);
    other
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(other.hello().0, HELLO_ACCEPTED);
    other.send(&Request::List);
    assert!(matches!(other.reply(), Reply::Channels(_)));

    // What waits behind the blocked close is bounded: the attacker keeps handing descriptors
    // back (each refused, so each to be closed); once its user has 64 waiting its connection
    // is no longer read, the coordinator's descriptors stay bounded, and another user is
    // served. When the close completes, the attacker's requests are all answered.
    let before = fd_count(daemon.pid());
    let null = std::fs::File::open("/dev/null").unwrap();
    let fds = [null.as_raw_fd()];
    let mut sent = 0;
    for _ in 0..400 {
        let iov = [std::io::IoSlice::new(&adopt)];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        match sendmsg::<()>(
            attacker.stream.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(n) => {
                // A whole frame, or the rest of it without a descriptor.
                attacker.stream.write_all(&adopt[n..]).unwrap();
                sent += 1;
            }
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("sending descriptors: {e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = fd_count(daemon.pid());
    eprintln!("descriptors of shmringd: {before} before, {after} after {sent} sent");
    assert!(
        after <= before + 64 + 8,
        "shmringd went from {before} to {after} descriptors ({sent} sent)"
    );
    if is_root() {
        let o = shmring_as(Some(OTHER), &daemon.sock, &["list"]);
        assert!(o.status.success(), "{}", text(&o));
    }
    // A connection of the paused user that hangs up is dropped, not reported again and again
    // (epoll reports a hang-up whatever the interest): the coordinator does not spin.
    let late = Raw::connect(&daemon.sock);
    std::thread::sleep(Duration::from_millis(100));
    drop(late);
    std::thread::sleep(Duration::from_millis(100));
    let cpu_ms = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", daemon.pid())).unwrap();
        let f: Vec<u64> = stat[stat.rfind(')').unwrap() + 2..]
            .split(' ')
            .skip(11)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        (f[0] + f[1]) * 1000 / hz
    };
    let (c0, t0) = (cpu_ms(), Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let (used, over) = (cpu_ms() - c0, t0.elapsed().as_millis() as u64);
    assert!(
        used * 2 < over,
        "shmringd used {used} ms of CPU in {over} ms while idle: it spins"
    );
    drop(trap);
    for i in 0..sent {
        match attacker.reply() {
            Reply::Error { .. } => {}
            other => panic!("reply {i} of {sent}: {other:?}"),
        }
    }
    drop(daemon);
}

/// Found in review of step 5: one closer thread closed every user's descriptors and connection
/// sockets in order, so while it was stuck on one client's lingering socket every later close
/// queued behind it, still counted against the user whose client caused it: another user
/// reached its 64 pending closes after 64 ordinary disconnects, and its 65th `shmring list`
/// was never read ("did not answer in time"). Now each user's closes have a thread of their
/// own: a stuck close holds up only the closes of the user who caused it.
#[test]
fn a_stuck_close_does_not_hold_up_another_users_closes() {
    if !is_root() {
        eprintln!("skipped: needs root to run a client as uid {OTHER}");
        return;
    }
    let _dog = watchdog("a stuck close and another user", 300);
    let place = Place::new("stuckuid");
    let daemon = Daemon::start(&place, &[]);
    let (trap, _attacker) = stick_this_users_closer(&daemon.sock);

    // Each run connects and disconnects: a close of uid 65534's for each, past its 64.
    for i in 0..100 {
        let o = shmring_as(Some(OTHER), &daemon.sock, &["list"]);
        assert!(o.status.success(), "run {i}: {}", text(&o));
    }
    drop(trap);
    drop(daemon);
}

/// Found in review of step 5: with this user's closer stuck (`stick_this_users_closer`), each
/// connection it opened and dropped still cost a close queued behind the stuck one, counted in
/// the total of 1024 at which no connection is accepted: a loop of this user's clients stopped
/// every user's new connections. Now a connection of a user at its 64 waiting closes is refused,
/// and closed at once when nothing but its hello is in flight in it.
#[test]
fn a_user_with_a_stuck_close_cannot_fill_the_closers_total() {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    use std::os::fd::AsRawFd;
    if !is_root() {
        eprintln!("skipped: needs root to run a client as uid {OTHER}");
        return;
    }
    let _dog = watchdog("a stuck close and many connections", 300);
    let place = Place::new("stucktotal");
    let daemon = Daemon::start(&place, &[]);
    let (trap, _attacker) = stick_this_users_closer(&daemon.sock);
    let addr = UnixAddr::new(&daemon.sock).unwrap();
    let hello = protocol::client_hello(PROTOCOL_VERSION);
    let mut made = 0;
    'conns: for _ in 0..1200 {
        // Non-blocking, so that a listener no longer accepted from fails the test, not hangs it.
        let s = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let mut tries = 0;
        loop {
            match connect(s.as_raw_fd(), &addr) {
                Ok(()) => break,
                Err(nix::errno::Errno::EAGAIN) if tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    eprintln!("connection {made}: {e}");
                    break 'conns;
                }
            }
        }
        let _ = nix::unistd::write(&s, &hello);
        made += 1;
    }
    eprintln!("{made} connections opened and dropped");
    std::thread::sleep(Duration::from_millis(500));
    let o = shmring_as(Some(OTHER), &daemon.sock, &["list"]);
    assert!(o.status.success(), "after {made} connections: {}", text(&o));
    drop(trap);
    drop(daemon);
}

/// Sticks this user's closer on a lingering socket (`lingering_socket`) sent by a client with
/// an Adopt request, the coordinator's close being the last. Returns the trap's listener (whose
/// drop ends the close) and the client.
fn stick_this_users_closer(sock: &Path) -> (std::net::TcpListener, Raw) {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::os::fd::AsRawFd;
    let (trap, tcp, no_spawns) = lingering_socket();
    let mut attacker = Raw::connect(sock);
    assert_eq!(attacker.hello().0, HELLO_ACCEPTED);
    let adopt = protocol::encode(&Request::Adopt {
        name: "trap".into(),
        generation: 1,
    });
    // The descriptor travels with the first byte; the request is completed only after this
    // process closed its copy, so that the coordinator's close is the last.
    let fds = [tcp.as_raw_fd()];
    let iov = [std::io::IoSlice::new(&adopt[..1])];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(
        attacker.stream.as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    drop(tcp);
    drop(no_spawns);
    attacker.stream.write_all(&adopt[1..]).unwrap();
    attacker
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(matches!(attacker.reply(), Reply::Error { .. }));
    std::thread::sleep(Duration::from_millis(200));
    (trap, attacker)
}

/// A TCP connection on loopback to a listener that never accepts, set to linger an hour on
/// the data it could not send: its last close blocks (until the listener is closed, which resets
/// the connection). Returns the listener and the connection, and the exclusive hold on
/// [`SPAWNS`]: to be dropped only once this process's copy of the connection is closed.
fn lingering_socket() -> (
    std::net::TcpListener,
    std::net::TcpStream,
    std::sync::RwLockWriteGuard<'static, ()>,
) {
    use nix::sys::socket::{setsockopt, sockopt::Linger};
    use std::os::fd::AsRawFd;
    let no_spawns = SPAWNS.write().unwrap_or_else(|e| e.into_inner());
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp = std::net::TcpStream::connect(trap.local_addr().unwrap()).unwrap();
    setsockopt(
        &tcp,
        Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 3600,
        },
    )
    .unwrap();
    tcp.set_nonblocking(true).unwrap();
    let chunk = vec![0u8; 64 << 10];
    let mut full = false;
    for _ in 0..1024 {
        match (&tcp).write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                full = true;
                break;
            }
            Err(e) => panic!("filling the trap: {e}"),
        }
    }
    assert!(full, "the trap's send queue never filled");
    let mut unsent: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int to the pointer given, which outlives the call.
    let r = unsafe { libc::ioctl(tcp.as_raw_fd(), libc::TIOCOUTQ, &mut unsent) };
    assert_eq!(r, 0);
    assert!(unsent > 0, "data waits in the trap's send queue");
    (trap, tcp, no_spawns)
}

/// Found in review of step 5: closing a client's connection socket releases the descriptors
/// still in flight in its receive queue, in the closing thread. A connection refused at the
/// per-user cap, which had sent a lingering socket with its hello before the coordinator
/// accepted it, froze the coordinator the same way. (The coordinator is stopped with SIGSTOP
/// while the descriptor is sent and this process's copy closed, so that its close is the last.)
#[test]
fn a_refused_connection_holding_a_blocking_descriptor_does_not_stop_the_coordinator() {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::os::fd::AsRawFd;
    let _dog = watchdog("a blocking close in flight", 120);
    let place = Place::new("inflight");
    let daemon = Daemon::start(&place, &["--max-connections-per-uid", "1"]);
    let mut holder = Raw::connect(&daemon.sock);
    holder
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(holder.hello().0, HELLO_ACCEPTED);
    let (trap, tcp, no_spawns) = lingering_socket();
    struct Cont(u32);
    impl Drop for Cont {
        fn drop(&mut self) {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
        }
    }
    // SAFETY: kill has no memory effects.
    assert_eq!(unsafe { libc::kill(daemon.pid() as i32, libc::SIGSTOP) }, 0);
    let cont = Cont(daemon.pid());
    let refused = UnixStream::connect(&daemon.sock).unwrap();
    let hello = protocol::client_hello(PROTOCOL_VERSION);
    let fds = [tcp.as_raw_fd()];
    let iov = [std::io::IoSlice::new(&hello)];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(refused.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).unwrap();
    drop(tcp);
    drop(no_spawns);
    drop(cont);
    refused
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut refused = Raw {
        stream: refused,
        reader: FrameReader::new(MAX_REQUEST),
    };
    assert_eq!(refused.hello().0, HELLO_BUSY);
    std::thread::sleep(Duration::from_millis(200));
    // A hang check: the coordinator answers within seconds while the close is blocked.
    holder.send(&Request::List);
    assert!(matches!(holder.reply(), Reply::Channels(_)));
    drop(trap);
    drop(daemon);
}

/// Found in review of step 5: the per-user byte limit counted only served channels, and a
/// delete freed the quota while the processes holding the channel kept its memory. Looping
/// "create a 1 MiB channel, open a consumer, delete" under a 4 MiB limit went on for ever
/// (40 rounds held 40 MiB, `limits` said 0 bytes used). Now the held deleted channels stay
/// charged: a create is refused once they reach the limit, and allowed again once their
/// holders have closed them.
#[test]
fn deleted_channels_still_held_count_against_the_byte_limit() {
    let _dog = watchdog("deleted channels held", 60);
    let place = Place::new("held");
    let coord = Coordinator::start(
        CoordinatorConfig::new(&place.ns)
            .socket(place.sock())
            .max_bytes_per_uid(4 << 20),
    )
    .unwrap();
    let c = Client::connect(Some(&place.sock())).unwrap();
    let mib = ChannelConfig::spsc().capacity(1 << 20).max_frame_size(64);
    let mut held = Vec::new();
    let mut refused = None;
    for i in 0..40 {
        let name = format!("d{i}");
        match c.create(&name, &mib) {
            Ok(_) => {}
            Err(Error::Busy(m)) => {
                refused = Some((i, m));
                break;
            }
            Err(e) => panic!("round {i}: {e}"),
        }
        held.push(c.consumer(&name).unwrap());
        c.delete(&name).unwrap();
    }
    let (round, message) = refused.expect("the held deleted channels were never charged");
    // 1 MiB and a header each: with three held, a fourth would pass 4 MiB.
    assert_eq!(round, 3, "refused in round {round}: {message}");
    assert!(message.contains("deleted channels"), "{message}");
    let l = c.limits().unwrap();
    assert!(l.bytes > 3 << 20, "limits show the held bytes: {l:?}");
    assert_eq!(l.channels, 0);

    // The holders close: the memory is gone, and so is the charge (the closes travel without
    // waiting for an answer, so the create is tried until they have arrived).
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.create("again", &mib) {
            Ok(_) => break,
            Err(Error::Busy(m)) => {
                assert!(Instant::now() < deadline, "still refused: {m}");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(c.limits().unwrap().bytes < 2 << 20);
    drop(c);
    coord.stop();
}

/// Allocated bytes of an object (its `st_blocks`, in 512-byte units).
fn allocated(f: &std::fs::File) -> u64 {
    f.metadata().unwrap().blocks() * 512
}

/// Found in review of step 5: the per-user byte limit could be bypassed by keeping a
/// descriptor of a segment after closing the handle: the books forgot the handle, the delete
/// charged nothing, and the memory (the coordinator's) lived on for as long as the descriptor
/// did. Before: creating a 4 MiB channel, opening a producer, keeping a `dup` of its segment,
/// closing the producer and deleting the channel, eight times under an 8 MiB limit, left every
/// segment's 4 MiB allocated (`st_blocks` of the kept descriptors) with `limits` saying 0
/// bytes used. Now a deleted segment no admitted process holds is freed but for its first page
/// (the header, still saying deleted), and a consumer that still maps it gets `Closed` (here
/// one whose admission was given up by a forged close), never the freed ring's zeros as
/// frames.
#[test]
fn a_kept_descriptor_of_a_deleted_channel_does_not_keep_its_memory() {
    let _dog = watchdog("kept descriptors of deleted channels", 60);
    let place = Place::new("kept");
    let coord = Coordinator::start(
        CoordinatorConfig::new(&place.ns)
            .socket(place.sock())
            .max_bytes_per_uid(8 << 20),
    )
    .unwrap();
    let c = Client::connect(Some(&place.sock())).unwrap();
    let cfg = ChannelConfig::spsc().capacity(4 << 20).max_frame_size(64);
    let prefix = format!("shmring.{}@", place.ns);
    let kept_of = |name: &str| {
        own_memfds(&prefix)
            .into_iter()
            .find(|(n, _)| n.ends_with(&format!(".{name}")))
            .map(|(_, f)| f)
            .expect("the segment's descriptor")
    };
    // Well below the segment's 4 MiB: the first page (and nothing else) stays.
    let freed = |f: &std::fs::File| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while allocated(f) > 64 << 10 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        allocated(f)
    };
    let mut kept = Vec::new();
    for i in 0..8 {
        let name = format!("k{i}");
        c.create(&name, &cfg)
            .unwrap_or_else(|e| panic!("round {i}: {e}"));
        let p = c.producer(&name).unwrap();
        let f = kept_of(&name);
        assert!(allocated(&f) >= 4 << 20, "round {i}: allocated at create");
        drop(p);
        c.delete(&name).unwrap();
        let left = freed(&f);
        assert!(
            left <= 64 << 10,
            "round {i}: {left} bytes of the deleted segment still allocated (limits: {:?})",
            c.limits().unwrap()
        );
        kept.push(f);
    }

    // A straggler: a consumer that still maps the channel, with frames in the ring, whose
    // admission is given up (a close of its entry, as a hostile process of the same user can
    // send), then the delete.
    let info = c.create("s", &cfg).unwrap();
    let mut p = c.producer("s").unwrap();
    let mut k = c.consumer("s").unwrap();
    for _ in 0..3 {
        p.send(b"frame").unwrap();
    }
    drop(p);
    let f = kept_of("s");
    let at = shmring::Geometry::new(&cfg)
        .unwrap()
        .participant_offset(Role::Consumer, k.index())
        .unwrap();
    let mut owner = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut owner, at as u64).unwrap();
    let mut raw = Raw::connect(&place.sock());
    assert_eq!(raw.hello().0, HELLO_ACCEPTED);
    raw.send(&Request::Close {
        name: "s".into(),
        generation: info.generation,
        role: Role::Consumer,
        index: k.index(),
        owner: u64::from_ne_bytes(owner),
    });
    assert!(matches!(raw.reply(), Reply::Done));
    c.delete("s").unwrap();
    let left = freed(&f);
    assert!(
        left <= 64 << 10,
        "{left} bytes of the straggler's segment still allocated"
    );
    let mut buf = [0u8; 64];
    match k.try_recv(&mut buf) {
        Err(Error::Closed(_) | Error::Corrupted(_)) => {}
        other => panic!("a consumer of the freed segment got {other:?}"),
    }
    drop(k);
    drop((kept, f, raw));
    drop(c);
    coord.stop();
}

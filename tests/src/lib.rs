//! Helpers shared by the multi-process tests and their helper program (`shmring-peer`).
//!
//! * [`Rng`] and [`spsc_frame`]/[`mpmc_frame`]: deterministic frame sizes and contents, so a
//!   receiving process can check every byte it gets without being told what was sent.
//! * [`Watchdog`]: every test that could hang runs under one; on expiry it kills the test's
//!   helper processes, unlinks its segments and fails the test instead of hanging.
//! * [`serial`]: multi-process tests take this lock so they do not oversubscribe the cores.
//! * [`Place`]: a coordinator embedded in the test, with a namespace, socket and scratch
//!   directory of its own, removed when dropped.
//! * [`SharedFile`], [`FrameLog`]: what a helper records there is in the page cache the moment
//!   it is stored, so it survives the helper's SIGKILL (crash tests read it afterwards).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A coordinator embedded in the test process, serving a namespace and socket of its own, with
/// a scratch directory; stopped, and its files removed, when dropped.
pub struct Place {
    /// The scratch directory (the socket is in it).
    pub dir: PathBuf,
    /// The coordinator's socket.
    pub socket: PathBuf,
    /// Its namespace: `TAG<pid>-<n>`.
    pub ns: String,
    coordinator: Option<shmring::Coordinator>,
}

impl Place {
    /// A new place; `tag` starts its namespace (letters, digits, `-`).
    pub fn new(tag: &str) -> Place {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let ns = format!(
            "{tag}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("shmring-{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("c.sock");
        let coordinator =
            shmring::Coordinator::start(shmring::CoordinatorConfig::new(&ns).socket(&socket))
                .unwrap();
        Place {
            dir,
            socket,
            ns,
            coordinator: Some(coordinator),
        }
    }

    /// A client of this place's coordinator.
    pub fn client(&self) -> shmring::Client {
        shmring::Client::connect(Some(&self.socket)).unwrap()
    }

    /// `program`, finding this place's coordinator through `SHMRING_SOCKET`, with the
    /// sanitizers' options (leaks detected, the first report fatal) and no standard input.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("SHMRING_SOCKET", &self.socket)
            .env("ASAN_OPTIONS", "detect_leaks=1")
            .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
            .stdin(Stdio::null());
        c
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(c) = self.coordinator.take() {
            c.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        remove_runtime_files(&self.ns);
    }
}

/// splitmix64: small, fast, and the same in every process for the same seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Fills `buf` with the bytes of frame `seq` of stream `seed`.
pub fn fill(seed: u64, seq: u64, buf: &mut [u8]) {
    let mut r = Rng::new(seed ^ seq.wrapping_mul(0x2545_f491_4f6c_dd1d));
    for chunk in buf.chunks_mut(8) {
        let w = r.next_u64().to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// The length of SPSC frame `seq` of stream `seed`: random in `0..=max`, with a bias towards
/// both small frames and the largest one so wrap-around and padding happen often.
pub fn spsc_len(seed: u64, seq: u64, max: usize) -> usize {
    let mut r = Rng::new(seed.rotate_left(17) ^ seq);
    match r.below(10) {
        0 => max,
        1..=5 => r.below(65) as usize,
        _ => r.below(max as u64 + 1) as usize,
    }
}

/// SPSC frame `seq` of stream `seed` (frames up to `max` bytes).
pub fn spsc_frame(seed: u64, seq: u64, max: usize, out: &mut Vec<u8>) {
    out.resize(spsc_len(seed, seq, max), 0);
    fill(seed, seq, out);
}

/// Bytes an MPMC test frame starts with: producer id (u32) and sequence number (u64).
pub const MPMC_HEADER: usize = 12;

/// MPMC frame `seq` of producer `id`: its header, then 0 to `max - 12` bytes of content.
pub fn mpmc_frame(id: u32, seq: u64, max: usize, out: &mut Vec<u8>) {
    let extra = Rng::new(u64::from(id) << 40 ^ seq).below((max - MPMC_HEADER) as u64 + 1);
    out.resize(MPMC_HEADER + extra as usize, 0);
    out[..4].copy_from_slice(&id.to_le_bytes());
    out[4..12].copy_from_slice(&seq.to_le_bytes());
    fill(u64::from(id), seq, &mut out[MPMC_HEADER..]);
}

/// Checks an MPMC test frame and returns its (producer id, sequence number).
pub fn check_mpmc_frame(frame: &[u8], max: usize) -> Result<(u32, u64), String> {
    if frame.len() < MPMC_HEADER {
        return Err(format!("frame of {} bytes has no header", frame.len()));
    }
    let id = u32::from_le_bytes(frame[..4].try_into().unwrap());
    let seq = u64::from_le_bytes(frame[4..12].try_into().unwrap());
    let mut want = Vec::new();
    mpmc_frame(id, seq, max, &mut want);
    if frame != &want[..] {
        return Err(format!("frame {seq} of producer {id} has wrong contents"));
    }
    Ok((id, seq))
}

/// FNV-1a 64, continued from `h` (start from [`FNV_START`]).
pub fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The FNV-1a 64 offset basis.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// A segment name no other test or run uses.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Serialises the tests that start several busy processes: on a 2-core machine, two such tests
/// at once would mostly measure the scheduler.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Owned {
    pids: Vec<u32>,
    segments: Vec<String>,
}

/// Fails a test that runs longer than its limit: kills the helper processes it started and
/// unlinks its segments, then panics. Dropping the watchdog (the test finished) disarms it.
pub struct Watchdog {
    owned: Arc<Mutex<Owned>>,
    done: Arc<(Mutex<bool>, std::sync::Condvar)>,
    what: String,
    limit: Duration,
    fired: Arc<Mutex<bool>>,
}

impl Watchdog {
    /// Arms a watchdog of `limit` for the test `what`.
    pub fn new(what: &str, limit: Duration) -> Watchdog {
        let owned = Arc::new(Mutex::new(Owned::default()));
        let done = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let fired = Arc::new(Mutex::new(false));
        let (o, d, f, w) = (owned.clone(), done.clone(), fired.clone(), what.to_string());
        std::thread::spawn(move || {
            let (lock, cv) = &*d;
            let deadline = Instant::now() + limit;
            let mut finished = lock.lock().unwrap();
            while !*finished {
                let now = Instant::now();
                if now >= deadline {
                    *f.lock().unwrap() = true;
                    let o = o.lock().unwrap();
                    eprintln!(
                        "watchdog: {w} still running after {limit:?}: killing helpers {:?}",
                        o.pids
                    );
                    for &pid in &o.pids {
                        // SAFETY: kill has no memory effects; a stale pid at worst hits nothing
                        // (helpers are our children and are reaped only by their Child).
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    }
                    for s in &o.segments {
                        let _ = shmring::Segment::unlink(s);
                    }
                    // Helpers killed: the test's waits return and its assertions fail. If the
                    // test thread is stuck in-process, abort so the run fails rather than hangs.
                    drop(o);
                    drop(finished);
                    std::thread::sleep(Duration::from_secs(10));
                    if !*lock.lock().unwrap() {
                        eprintln!(
                            "watchdog: {w} did not finish after its helpers were killed: aborting"
                        );
                        std::process::abort();
                    }
                    return;
                }
                finished = cv.wait_timeout(finished, deadline - now).unwrap().0;
            }
        });
        Watchdog {
            owned,
            done,
            what: what.to_string(),
            limit,
            fired,
        }
    }

    /// Starts `cmd` as a helper process that the watchdog kills on expiry.
    pub fn spawn(&self, cmd: &mut Command) -> Helper {
        self.spawn_with_stdin(cmd.stdin(Stdio::null()))
    }

    /// Like [`spawn`](Watchdog::spawn), with the helper's standard input a pipe:
    /// [`Helper::stdin`] is its writing end.
    pub fn spawn_piped(&self, cmd: &mut Command) -> Helper {
        self.spawn_with_stdin(cmd.stdin(Stdio::piped()))
    }

    fn spawn_with_stdin(&self, cmd: &mut Command) -> Helper {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: cannot start {cmd:?}: {e}", self.what));
        self.owned.lock().unwrap().pids.push(child.id());
        Helper {
            child,
            what: format!("{:?}", cmd),
            lines: None,
            early: String::new(),
        }
    }

    /// Creates a segment that the watchdog (and [`SegmentGuard`]) unlinks.
    pub fn segment(&self, name: &str, cfg: &shmring::ChannelConfig) -> SegmentGuard {
        let seg = shmring::Segment::create(name, cfg)
            .unwrap_or_else(|e| panic!("{}: creating {name}: {e}", self.what));
        self.owned.lock().unwrap().segments.push(name.to_string());
        SegmentGuard {
            seg,
            name: name.to_string(),
        }
    }

    /// Panics if the watchdog expired (the helpers' failures are then its doing).
    pub fn check(&self) {
        assert!(
            !*self.fired.lock().unwrap(),
            "{}: hung, killed by the watchdog after {:?}",
            self.what,
            self.limit
        );
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, cv) = &*self.done;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
}

/// A helper process. Killed when dropped, if still running.
pub struct Helper {
    child: Child,
    what: String,
    lines: Option<std::io::BufReader<std::process::ChildStdout>>,
    early: String,
}

/// What a helper printed and how it ended.
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Helper {
    /// The writing end of the standard input of a helper started with
    /// [`Watchdog::spawn_piped`] (taken once; dropping it closes the pipe).
    pub fn stdin(&mut self) -> std::process::ChildStdin {
        self.child
            .stdin
            .take()
            .expect("spawned with spawn_piped, stdin taken once")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the helper's standard output up to a line equal to `line`; panics if the helper
    /// ends first.
    pub fn expect_line(&mut self, line: &str) {
        use std::io::BufRead;
        if self.lines.is_none() {
            let out = self.child.stdout.take().expect("stdout is piped");
            self.lines = Some(std::io::BufReader::new(out));
        }
        let reader = self.lines.as_mut().unwrap();
        loop {
            let mut l = String::new();
            if reader.read_line(&mut l).unwrap_or(0) == 0 {
                panic!(
                    "helper {} ended before printing {line:?}: {}",
                    self.what, self.early
                );
            }
            self.early.push_str(&l);
            if l.trim_end() == line {
                return;
            }
        }
    }

    /// Kills the helper with SIGKILL and collects how it ended: `Err` with its output if it
    /// had already exited by itself (a helper of the crash tests only ends by being killed).
    pub fn kill(mut self) -> Result<(), Output> {
        let already = matches!(self.child.try_wait(), Ok(Some(_)));
        if !already {
            let _ = self.child.kill();
        }
        let out = self.wait();
        use std::os::unix::process::ExitStatusExt;
        if already || out.status.signal() != Some(libc::SIGKILL) {
            return Err(out);
        }
        Ok(())
    }

    /// Waits for the helper to end and collects its output.
    pub fn wait(mut self) -> Output {
        use std::io::Read;
        let mut stdout = std::mem::take(&mut self.early);
        let mut stderr = String::new();
        if let Some(mut o) = self.lines.take() {
            let _ = o.read_to_string(&mut stdout);
        } else if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_string(&mut stdout);
        }
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let status = self.child.wait().expect("waiting for a helper");
        Output {
            status,
            stdout,
            stderr,
        }
    }

    /// Waits and panics unless the helper exited with status 0; returns its standard output.
    pub fn success(self) -> String {
        let what = self.what.clone();
        let out = self.wait();
        assert!(
            out.status.success(),
            "helper {what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            out.stdout,
            out.stderr
        );
        out.stdout
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A created segment, unlinked when dropped.
pub struct SegmentGuard {
    /// The segment.
    pub seg: shmring::Segment,
    /// Its name.
    pub name: String,
}

impl Drop for SegmentGuard {
    fn drop(&mut self) {
        let _ = shmring::Segment::unlink(&self.name);
    }
}

/// The segments a coordinator's process (or any process using its channels) holds: a
/// coordinator's segments are sealed memfds with no name in `/dev/shm`, named
/// `shmring.<namespace>@<uid>.<generation>.<channel>`. Returns `(name, path)` per distinct name
/// starting with `prefix`, where `path` is `/proc/<pid>/fd/<n>`: opening it (as root or as the
/// same user) opens the segment itself.
pub fn memfds(pid: u32, prefix: &str) -> Vec<(String, std::path::PathBuf)> {
    let mut found: Vec<(String, std::path::PathBuf)> = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        if let Some(n) = link
            .to_str()
            .and_then(|l| l.strip_prefix("/memfd:"))
            .and_then(|l| l.strip_suffix(" (deleted)"))
            .filter(|n| n.starts_with(prefix))
            && !found.iter().any(|(m, _)| m == n)
        {
            found.push((n.to_string(), e.path()));
        }
    }
    found.sort();
    found
}

/// Parses `key=value` words of a helper's summary line.
pub fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// Makes this process die with SIGKILL when its parent dies (helpers call it first), so an
/// aborted test run leaves no spinning helpers behind.
pub fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integers only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// A file mapped shared into the process, viewed as 64-bit words. Stores land in the page
/// cache at once: a process killed right after a store has still made it.
pub struct SharedFile {
    ptr: *mut u64,
    words: usize,
}

// SAFETY: the mapping is shared memory accessed only through atomics.
unsafe impl Send for SharedFile {}
// SAFETY: as for Send.
unsafe impl Sync for SharedFile {}

impl SharedFile {
    /// Creates (or truncates) `path` to `words` zeroed words (a sparse file) and maps it.
    pub fn create(path: &std::path::Path, words: usize) -> SharedFile {
        let f = std::fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        f.set_len((words * 8) as u64).unwrap();
        drop(f);
        SharedFile::open(path)
    }

    /// Maps an existing file.
    pub fn open(path: &std::path::Path) -> SharedFile {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let len = f.metadata().unwrap().len() as usize;
        assert!(
            len >= 8 && len.is_multiple_of(8),
            "{}: {len} bytes",
            path.display()
        );
        // SAFETY: a fresh shared mapping of a file we hold open; checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap {}", path.display());
        SharedFile {
            ptr: ptr.cast(),
            words: len / 8,
        }
    }

    /// Word `i`.
    pub fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.words, "word {i} of a {}-word file", self.words);
        // SAFETY: in bounds (asserted), 8-aligned (the mapping is page-aligned); AtomicU64 has
        // the layout of u64 and the mapping lives as long as self.
        unsafe { &*(self.ptr.add(i) as *const AtomicU64) }
    }

    /// Its size in words.
    pub fn words(&self) -> usize {
        self.words
    }
}

impl Drop for SharedFile {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `open`; no reference outlives self.
        unsafe { libc::munmap(self.ptr.cast(), self.words * 8) };
    }
}

/// One received frame as a consumer recorded it: its producer incarnation, its sequence
/// number, and whether it came flagged redelivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Logged {
    /// The producer incarnation that sent it.
    pub incarnation: u32,
    /// Its sequence number in that incarnation's stream.
    pub seq: u64,
    /// Flagged redelivered.
    pub redelivered: bool,
}

/// A log of received frames in a [`SharedFile`]: word 0 counts the entries, each entry is
/// two words (incarnation | redelivered << 32, seq), written before the count that covers it.
pub struct FrameLog(SharedFile);

impl FrameLog {
    /// A new log with room for `entries`.
    pub fn create(path: &std::path::Path, entries: usize) -> FrameLog {
        FrameLog(SharedFile::create(path, 1 + 2 * entries))
    }

    /// An existing log.
    pub fn open(path: &std::path::Path) -> FrameLog {
        FrameLog(SharedFile::open(path))
    }

    /// Appends an entry; `false` if the log is full.
    pub fn append(&self, e: Logged) -> bool {
        let n = self.0.word(0).load(Ordering::Relaxed) as usize;
        if 1 + 2 * (n + 1) > self.0.words() {
            return false;
        }
        let tag = u64::from(e.incarnation) | (u64::from(e.redelivered) << 32);
        self.0.word(1 + 2 * n).store(tag, Ordering::Relaxed);
        self.0.word(2 + 2 * n).store(e.seq, Ordering::Relaxed);
        self.0.word(0).store(n as u64 + 1, Ordering::Release);
        true
    }

    /// The entries recorded.
    pub fn entries(&self) -> Vec<Logged> {
        let n = self.0.word(0).load(Ordering::Acquire) as usize;
        (0..n)
            .map(|i| {
                let tag = self.0.word(1 + 2 * i).load(Ordering::Relaxed);
                Logged {
                    incarnation: tag as u32,
                    redelivered: tag >> 32 != 0,
                    seq: self.0.word(2 + 2 * i).load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// How many entries are recorded.
    pub fn len(&self) -> u64 {
        self.0.word(0).load(Ordering::Acquire)
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the crash tests check of a run: `committed[inc]` frames of each producer incarnation
/// saw their send return; `delivered` is every frame any consumer recorded. Every committed
/// frame was delivered; each incarnation's delivered sequence numbers have no gap; a frame
/// delivered more than once came flagged redelivered every time but at most once. Returns a
/// summary, or what is wrong.
pub fn check_delivery(
    committed: &std::collections::HashMap<u32, u64>,
    delivered: &[Logged],
) -> Result<String, String> {
    use std::collections::HashMap;
    let mut seen: HashMap<u32, Vec<(u32, u32)>> = HashMap::new(); // per seq: (plain, flagged)
    for d in delivered {
        let Some(&n) = committed.get(&d.incarnation) else {
            return Err(format!(
                "frame of unknown producer incarnation {}",
                d.incarnation
            ));
        };
        let v = seen.entry(d.incarnation).or_default();
        // A producer may have committed one frame more than it recorded (killed in between).
        if d.seq > n {
            return Err(format!(
                "incarnation {} recorded {n} commits but frame {} was delivered",
                d.incarnation, d.seq
            ));
        }
        if v.len() <= d.seq as usize {
            v.resize(d.seq as usize + 1, (0, 0));
        }
        let slot = &mut v[d.seq as usize];
        if d.redelivered {
            slot.1 += 1;
        } else {
            slot.0 += 1;
        }
    }
    let (mut frames, mut duplicates, mut flagged) = (0u64, 0u64, 0u64);
    for (&inc, &n) in committed {
        let v = seen.remove(&inc).unwrap_or_default();
        if (v.len() as u64) < n {
            return Err(format!(
                "incarnation {inc}: {n} frames committed, only {} delivered (first missing: {})",
                v.len(),
                v.len()
            ));
        }
        for (seq, &(plain, redelivered)) in v.iter().enumerate() {
            if plain + redelivered == 0 {
                return Err(format!("incarnation {inc}: frame {seq} missing (a gap)"));
            }
            if plain > 1 {
                return Err(format!(
                    "incarnation {inc}: frame {seq} delivered {plain} times unflagged"
                ));
            }
            frames += 1;
            duplicates += u64::from(plain + redelivered - 1);
            flagged += u64::from(redelivered);
        }
    }
    Ok(format!(
        "frames={frames} duplicates={duplicates} flagged_redelivered={flagged}"
    ))
}

/// Removes what a coordinator of this user keeps of namespace `ns` in the user's runtime
/// directory, which it never removes itself: its lock and its record of the channels. For
/// tests, whose namespaces are their own.
pub fn remove_runtime_files(ns: &str) {
    for ext in ["lock", "channels"] {
        let _ = std::fs::remove_file(shmring::default_socket_path(ns).with_extension(ext));
    }
}

/// A test's view of a broadcast channel's segment, mapped through a [`SharedFile`] (a path
/// from [`memfds`]): the producer's published position and each slot's `seq` word, read as
/// the channel's own code reads them (`core/src/broadcast.rs`: `2p + 1` while position `p` is
/// being written, `2p + 2` once it is committed).
pub struct BroadcastView {
    file: SharedFile,
    slots: u64,
    stride: u64,
    data: u64,
    producer_line: u64,
    participants: u64,
    max_producers: u64,
    max_consumers: u64,
}

impl BroadcastView {
    /// Maps the segment at `path` and reads its geometry from the header.
    pub fn open(path: &std::path::Path) -> BroadcastView {
        use shmring::layout::SegmentHeader;
        use std::mem::offset_of;
        let file = SharedFile::open(path);
        let u64_at = |off: usize| {
            assert!(off.is_multiple_of(8));
            file.word(off / 8).load(Ordering::Relaxed)
        };
        // Little-endian: a u32 at offset 8k + 4 is the high half of word k.
        let u32_at = |off: usize| {
            let w = file.word(off / 8).load(Ordering::Relaxed);
            (w >> (8 * (off % 8))) as u32
        };
        let kind = u32_at(offset_of!(SegmentHeader, kind));
        assert_eq!(
            kind,
            shmring::Kind::Broadcast as u32,
            "not a broadcast segment"
        );
        let slots = u64_at(offset_of!(SegmentHeader, capacity));
        let stride = u64::from(u32_at(offset_of!(SegmentHeader, slot_stride)));
        let data = u64_at(offset_of!(SegmentHeader, data));
        let producer_line = u64_at(offset_of!(SegmentHeader, producer_line));
        let participants = u64_at(offset_of!(SegmentHeader, participants));
        let max_producers = u64::from(u32_at(offset_of!(SegmentHeader, max_producers)));
        let max_consumers = u64::from(u32_at(offset_of!(SegmentHeader, max_consumers)));
        assert!(slots.is_power_of_two() && stride.is_multiple_of(8) && data.is_multiple_of(8));
        BroadcastView {
            file,
            slots,
            stride,
            data,
            producer_line,
            participants,
            max_producers,
            max_consumers,
        }
    }

    /// The segment of broadcast channel `channel` that process `pid` holds.
    pub fn of_process(pid: u32, channel: &str) -> BroadcastView {
        let path = memfds(pid, "shmring.")
            .into_iter()
            .find(|(n, _)| n.ends_with(&format!(".{channel}")))
            .unwrap_or_else(|| panic!("process {pid} holds no segment of channel {channel}"))
            .1;
        BroadcastView::open(&path)
    }

    /// Slots of the ring.
    pub fn slots(&self) -> u64 {
        self.slots
    }

    /// The producer's published position (`position` of the producer line).
    pub fn position(&self) -> u64 {
        self.file
            .word(self.producer_line as usize / 8)
            .load(Ordering::Acquire)
    }

    /// The `seq` word of the slot of `pos`.
    pub fn seq(&self, pos: u64) -> u64 {
        let off = self.data + (pos % self.slots) * self.stride;
        self.file.word(off as usize / 8).load(Ordering::Acquire)
    }

    /// The first position not committed, walking from the published position as a successor
    /// producer does (a producer killed between a commit and its position store leaves the
    /// position one behind). Only meaningful while no producer runs.
    pub fn committed_end(&self) -> u64 {
        let from = self.position();
        (from..=from + self.slots)
            .find(|&p| self.seq(p) != 2 * p + 2)
            .expect("every slot is committed past the published position")
    }

    /// The `released` word of the subscriber entry that process `pid` owns, if any: what holds
    /// a `Block` producer back (it never writes a position at or past `released` plus the
    /// slot count).
    pub fn released_of(&self, pid: u32) -> Option<u64> {
        use shmring::layout::{LINE, Participant, decode_owner};
        (0..self.max_consumers).find_map(|i| {
            let entry = self.participants as usize + (self.max_producers + i) as usize * LINE;
            let owner = self.file.word(entry / 8).load(Ordering::Relaxed);
            (decode_owner(owner).0 == pid).then(|| {
                self.file
                    .word((entry + std::mem::offset_of!(Participant, released)) / 8)
                    .load(Ordering::Acquire)
            })
        })
    }

    /// Whether the slot of `pos` is marked as being written at `pos` (a producer claimed it
    /// and has not committed).
    pub fn being_written(&self, pos: u64) -> bool {
        self.seq(pos) == 2 * pos + 1
    }
}

/// One frame as a broadcast subscriber recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// The producer incarnation that sent it.
    pub incarnation: u32,
    /// Its sequence number (the broadcast torture numbers frames by ring position).
    pub seq: u64,
    /// What the subscriber's `missed()` said right after receiving it, where that is exact
    /// (a frame received alone, or the last of a batch that stopped at its limit).
    pub missed: Option<u64>,
}

/// What a broadcast subscriber records in a [`SharedFile`]: word 0 counts the entries, word 1
/// is its join position plus one (zero until known), word 2 how often it reopened to pin its
/// join; each entry is three words (incarnation, seq, missed or `u64::MAX`), written before
/// the count that covers it.
pub struct SubscriberLog(SharedFile);

impl SubscriberLog {
    const HEAD: usize = 3;

    /// A new log with room for `entries`.
    pub fn create(path: &std::path::Path, entries: usize) -> SubscriberLog {
        SubscriberLog(SharedFile::create(path, Self::HEAD + 3 * entries))
    }

    /// An existing log.
    pub fn open(path: &std::path::Path) -> SubscriberLog {
        SubscriberLog(SharedFile::open(path))
    }

    /// Records the join position, and how many opens it took to pin it.
    pub fn set_join(&self, pos: u64, reopens: u64) {
        self.0.word(2).store(reopens, Ordering::Relaxed);
        self.0.word(1).store(pos + 1, Ordering::Release);
    }

    /// The join position, once recorded.
    pub fn join(&self) -> Option<u64> {
        self.0.word(1).load(Ordering::Acquire).checked_sub(1)
    }

    /// How often the subscriber reopened before its join was pinned.
    pub fn reopens(&self) -> u64 {
        self.0.word(2).load(Ordering::Relaxed)
    }

    /// Appends an entry; `false` if the log is full.
    pub fn append(&self, e: Received) -> bool {
        let n = self.0.word(0).load(Ordering::Relaxed) as usize;
        let at = Self::HEAD + 3 * n;
        if at + 3 > self.0.words() {
            return false;
        }
        self.0
            .word(at)
            .store(u64::from(e.incarnation), Ordering::Relaxed);
        self.0.word(at + 1).store(e.seq, Ordering::Relaxed);
        self.0
            .word(at + 2)
            .store(e.missed.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.0.word(0).store(n as u64 + 1, Ordering::Release);
        true
    }

    /// The entries recorded.
    pub fn entries(&self) -> Vec<Received> {
        let n = self.len() as usize;
        (0..n)
            .map(|i| {
                let at = Self::HEAD + 3 * i;
                let missed = self.0.word(at + 2).load(Ordering::Relaxed);
                Received {
                    incarnation: self.0.word(at).load(Ordering::Relaxed) as u32,
                    seq: self.0.word(at + 1).load(Ordering::Relaxed),
                    missed: (missed != u64::MAX).then_some(missed),
                }
            })
            .collect()
    }

    /// The last entry recorded.
    pub fn last(&self) -> Option<Received> {
        let n = self.len() as usize;
        let at = Self::HEAD + 3 * n.checked_sub(1)?;
        let missed = self.0.word(at + 2).load(Ordering::Relaxed);
        Some(Received {
            incarnation: self.0.word(at).load(Ordering::Relaxed) as u32,
            seq: self.0.word(at + 1).load(Ordering::Relaxed),
            missed: (missed != u64::MAX).then_some(missed),
        })
    }

    /// How many entries are recorded.
    pub fn len(&self) -> u64 {
        self.0.word(0).load(Ordering::Acquire)
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Positions `[first, end)` of a broadcast stream, committed by producer `incarnation`, whose
/// frames are numbered by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The producer incarnation.
    pub incarnation: u32,
    /// Its first position (where its predecessor's commits ended).
    pub first: u64,
    /// The first position it did not commit.
    pub end: u64,
}

/// Checks what one broadcast subscriber recorded against the committed stream (contiguous
/// ranges, in order): it joined at `join` (`None`: killed before it knew, and then it recorded
/// nothing) and received `got`, in order. Every frame is the one committed at its position,
/// never a frame a dead producer left uncommitted there; positions strictly increase from the
/// join on; and every position from the join to a received frame was either received or
/// counted in the subscriber's `missed` at that frame, exactly. `lossless` (BLOCK): nothing is
/// missed, so the frames are exactly the positions from the join on. `to_end`: the subscriber
/// lived until the stream ended and caught up, so its last frame is the last one committed.
/// Returns (frames received, frames counted missed at its last exact record).
pub fn check_subscriber(
    stream: &[Committed],
    join: Option<u64>,
    got: &[Received],
    lossless: bool,
    to_end: bool,
) -> Result<(u64, u64), String> {
    let Some(join) = join else {
        return if got.is_empty() {
            Ok((0, 0))
        } else {
            Err(format!("{} frames recorded but no join", got.len()))
        };
    };
    let start = stream.first().map_or(0, |c| c.first);
    let end = stream.last().map_or(start, |c| c.end);
    if join < start || join > end {
        return Err(format!(
            "joined at {join}, outside the stream's positions [{start}, {end})"
        ));
    }
    let owner = |pos: u64| {
        let i = stream.partition_point(|c| c.end <= pos);
        stream.get(i).filter(|c| c.first <= pos)
    };
    let mut missed = 0;
    let mut prev: Option<u64> = None;
    for (i, r) in got.iter().enumerate() {
        let at = || format!("frame {i} (position {}, joined at {join})", r.seq);
        if r.seq < join || r.seq >= end || prev.is_some_and(|p| r.seq <= p) {
            return Err(format!(
                "{}: out of order, a duplicate, or outside [{join}, {end}) (previous: {prev:?})",
                at()
            ));
        }
        match owner(r.seq) {
            Some(c) if c.incarnation == r.incarnation => {}
            c => {
                return Err(format!(
                    "{}: sent by incarnation {}, but that position was committed by {c:?}",
                    at(),
                    r.incarnation
                ));
            }
        }
        if lossless && r.seq != join + i as u64 {
            return Err(format!(
                "{}: a gap, position {} was lost",
                at(),
                join + i as u64
            ));
        }
        if let Some(m) = r.missed {
            // Positions join..=seq: each received or counted missed, exactly once.
            if r.seq - join + 1 != i as u64 + 1 + m || m < missed {
                return Err(format!(
                    "{}: {} positions since the join, {} received and {m} counted missed \
                     (before: {missed})",
                    at(),
                    r.seq - join + 1,
                    i + 1
                ));
            }
            missed = m;
        }
        prev = Some(r.seq);
    }
    if to_end && end > join && prev != Some(end - 1) {
        return Err(format!(
            "lived to the end, but its last frame is at {prev:?}, not the last committed {}",
            end - 1
        ));
    }
    Ok((got.len() as u64, missed))
}

// ---------------------------------------------------------------------------------------------
// C and C++ programs of the tests

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The directory holding this build's `libshmring.so`: the test binary's own (`deps`).
pub fn lib_dir() -> PathBuf {
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(
        dir.join("libshmring.so").exists(),
        "{} has no libshmring.so (is shmring-ffi a dev-dependency of this crate?)",
        dir.display()
    );
    dir
}

#[derive(Clone, Copy, Debug)]
pub enum Build {
    Plain,
    /// -fsanitize=address,undefined, stopping at the first report.
    Sanitized,
}

/// Compiles `source` (C11, or C++17 for `.cpp`) warning-free against include/ and this build's
/// library; returns the program.
pub fn compile(source: &str, out_dir: &Path, build: Build) -> PathBuf {
    let src = root().join(source);
    let cpp = source.ends_with(".cpp");
    let stem = src.file_stem().unwrap().to_str().unwrap();
    let exe = out_dir.join(match build {
        Build::Plain => stem.to_string(),
        Build::Sanitized => format!("{stem}-san"),
    });
    let lib = lib_dir();
    let mut cmd = Command::new(if cpp { "g++" } else { "gcc" });
    cmd.arg(if cpp { "-std=c++17" } else { "-std=c11" })
        .args([
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-O1",
            "-g",
            "-pthread",
        ])
        .arg("-I")
        .arg(root().join("include"));
    if let Build::Sanitized = build {
        cmd.args([
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer",
        ]);
    }
    cmd.arg(&src)
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(&lib)
        .arg("-lshmring")
        .arg(format!("-Wl,-rpath,{}", lib.display()));
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run the compiler: {e}"));
    assert!(
        out.status.success(),
        "{source} does not compile warning-free:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

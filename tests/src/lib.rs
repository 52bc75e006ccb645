//! Helpers shared by the multi-process tests and their helper program (`shmring-peer`).
//!
//! * [`Rng`] and [`spsc_frame`]/[`mpmc_frame`]: deterministic frame sizes and contents, so a
//!   receiving process can check every byte it gets without being told what was sent.
//! * [`Watchdog`]: every test that could hang runs under one; on expiry it kills the test's
//!   helper processes, unlinks its segments and fails the test instead of hanging.
//! * [`serial`]: multi-process tests take this lock so they do not oversubscribe the cores.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
        let child = cmd
            .stdin(Stdio::null())
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

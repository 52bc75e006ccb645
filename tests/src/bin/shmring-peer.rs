//! Helper program of the multi-process tests: one producer or consumer role per process.
//!
//! Every blocking call has a timeout, so a helper never hangs: it exits non-zero instead. A
//! helper ends with one summary line of `key=value` words on standard output.

use shmring::{Error, Segment, WaitStrategy};
use shmring_tests::{
    FNV_START, Rng, check_mpmc_frame, die_with_parent, fill, fnv, mpmc_frame, spsc_frame, spsc_len,
};
use std::process::exit;
use std::time::{Duration, Instant};

/// Longest any single blocking call of a helper may wait.
const OP_TIMEOUT: Duration = Duration::from_secs(60);

fn usage() -> ! {
    eprintln!(
        "usage: shmring-peer ROLE ARGS...
  spsc-produce NAME COUNT SEED WAIT        send COUNT frames of stream SEED
  spsc-consume NAME COUNT SEED WAIT        receive and check them
  mpmc-produce NAME ID COUNT WAIT          send COUNT frames tagged with ID
  mpmc-consume NAME OUTFILE WAIT           receive until a zero-length frame, log (id, seq)
  pingpong NAME_IN NAME_OUT ROUNDS WAIT US echo ROUNDS frames from NAME_IN to NAME_OUT,
                                           sleeping US microseconds before each echo
  strict-produce NAME COUNT SEED WAIT      send under seccomp strict mode (no system calls)
  strict-consume NAME COUNT SEED WAIT      receive and check under seccomp strict mode
  victim NAME producer|consumer MILLIS     use the channel while it is being scribbled on
  foreign-sigbus NAME FILE                 open segment NAME (installing the SIGBUS guard),
                                           then touch a page of FILE past its end: must die
  daemon SOCKET NAMESPACE                  run a coordinator until SIGTERM (prints ready)
  daemon-as UID GID SOCKET NAMESPACE       the same, as user UID and group GID
  client-produce SOCKET CHANNEL INC COMMITS WAIT [FIRST]
                                           open a producer through the coordinator and send
                                           frames of incarnation INC, numbered from FIRST
                                           (default 0), until killed, counting returned sends
                                           in the shared file COMMITS
  client-consume SOCKET CHANNEL LOG WAIT   open a consumer through the coordinator and record
                                           every frame in the shared file LOG before
                                           releasing it, until killed (WAIT may also be
                                           poll: try_read, and poll(2) on its descriptor)
  client-subscribe SOCKET CHANNEL LOG WAIT subscribe to a broadcast channel through the
                                           coordinator, record the position it joined at,
                                           then every frame and its missed count in the
                                           shared file LOG, until killed
  client-flood SOCKET CHANNEL              open a producer through the coordinator (print
                                           refused: ERROR if that fails) and send 8-byte
                                           frames as fast as it can, spinning, until killed
  hold-claim SOCKET CHANNEL                claim a slot, print held, wait to be killed
  hold-frame SOCKET CHANNEL                print opened, read a frame, print it, wait to be
                                           killed
  send-one SOCKET CHANNEL LEN BYTE         open a producer, print sending, send one message of
                                           LEN bytes BYTE (waiting as long as it takes), print
                                           sent, wait to be killed
  park SOCKET CHANNEL                      wait for a frame, parked, to be killed
  armed-then-blocked SOCKET CHANNEL        open a consumer and its pollable descriptor (armed),
                                           then wait 50 ms in a blocking receive (parked),
                                           which times out; print armed, wait to be killed
  as-user UID GID SOCKET PRIVATE PUBLIC COORDINATOR_PID
                                           drop to UID/GID, then try the two channels and
                                           their segments
WAIT is spin, yield or park."
    );
    exit(2)
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("shmring-peer: {msg}");
    exit(1)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| usage())
}

/// Waits in poll(2), at most `ms`, for `fd` to be readable.
fn poll_in(fd: std::os::fd::RawFd, ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd we own; `fd` belongs to a handle that outlives the call.
    unsafe { libc::poll(&mut p, 1, ms) };
}

fn wait_arg(args: &[String], i: usize) -> WaitStrategy {
    match args.get(i).map(String::as_str) {
        Some("spin") => WaitStrategy::Spin,
        Some("yield") => WaitStrategy::Yield,
        Some("park") => WaitStrategy::Park,
        _ => usage(),
    }
}

fn open(name: &str) -> Segment {
    Segment::open(name).unwrap_or_else(|e| fail(format!("opening {name}: {e}")))
}

fn main() {
    die_with_parent();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("spsc-produce") => spsc_produce(&args),
        Some("spsc-consume") => spsc_consume(&args),
        Some("mpmc-produce") => mpmc_produce(&args),
        Some("mpmc-consume") => mpmc_consume(&args),
        Some("pingpong") => pingpong(&args),
        Some("strict-produce") => strict::produce(&args),
        Some("strict-consume") => strict::consume(&args),
        Some("victim") => victim(&args),
        Some("foreign-sigbus") => foreign_sigbus(&args),
        Some("daemon") => coordinated::daemon(&args),
        Some("daemon-as") => {
            let (uid, gid): (u32, u32) = (arg(&args, 1), arg(&args, 2));
            // The runtime directory (where the coordinator keeps its lock and record of
            // channels) is the new user's own, /tmp/shmring-<uid>, not this user's.
            // SAFETY: this process has one thread: nobody reads the environment meanwhile.
            unsafe { std::env::remove_var("XDG_RUNTIME_DIR") };
            // SAFETY: plain system calls with integer arguments; this process has one thread.
            let dropped = unsafe {
                libc::setgroups(0, std::ptr::null()) == 0
                    && libc::setresgid(gid, gid, gid) == 0
                    && libc::setresuid(uid, uid, uid) == 0
            };
            if !dropped {
                fail(format!(
                    "cannot become uid {uid}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            coordinated::daemon(&args[2..])
        }
        Some("client-produce") => coordinated::produce(&args),
        Some("client-consume") => coordinated::consume(&args),
        Some("client-subscribe") => coordinated::subscribe(&args),
        Some("client-flood") => coordinated::flood(&args),
        Some("hold-claim") => coordinated::hold_claim(&args),
        Some("hold-frame") => coordinated::hold_frame(&args),
        Some("send-one") => coordinated::send_one(&args),
        Some("park") => coordinated::park(&args),
        Some("armed-then-blocked") => coordinated::armed_then_blocked(&args),
        Some("as-user") => coordinated::as_user(&args),
        _ => usage(),
    }
}

/// Sends frames through every producer API, chosen at random per frame: copy, zero-copy, and
/// batches of 2-5.
fn spsc_produce(args: &[String]) {
    let (name, count, seed): (String, u64, u64) = (arg(args, 1), arg(args, 2), arg(args, 3));
    let seg = open(&name);
    let mut tx = seg.producer().unwrap_or_else(|e| fail(e));
    tx.set_wait_strategy(wait_arg(args, 4));
    let max = tx.max_frame_size();
    let (mut sum, mut bytes, mut seq) = (FNV_START, 0u64, 0u64);
    let mut buf = Vec::with_capacity(max);
    let mut api = Rng::new(seed ^ 0xA11);
    while seq < count {
        match api.below(10) {
            0..=6 => {
                spsc_frame(seed, seq, max, &mut buf);
                tx.send_timeout(&buf, OP_TIMEOUT)
                    .unwrap_or_else(|e| fail(format!("send {seq}: {e}")));
                (sum, bytes, seq) = (fnv(sum, &buf), bytes + buf.len() as u64, seq + 1);
            }
            7 | 8 => {
                let len = spsc_len(seed, seq, max);
                let mut claim = tx
                    .claim_timeout(len, OP_TIMEOUT)
                    .unwrap_or_else(|e| fail(format!("claim {seq}: {e}")));
                fill(seed, seq, &mut claim);
                sum = fnv(sum, &claim);
                claim.commit();
                (bytes, seq) = (bytes + len as u64, seq + 1);
            }
            _ => {
                let k = 2 + api.below(4);
                let mut batch = tx.batch();
                for _ in 0..k.min(count - seq) {
                    spsc_frame(seed, seq, max, &mut buf);
                    batch
                        .send_timeout(&buf, OP_TIMEOUT)
                        .unwrap_or_else(|e| fail(format!("batch send {seq}: {e}")));
                    (sum, bytes, seq) = (fnv(sum, &buf), bytes + buf.len() as u64, seq + 1);
                }
            }
        }
    }
    println!("frames={count} bytes={bytes} checksum={sum}");
}

/// Receives through every consumer API, checking each frame byte for byte.
fn spsc_consume(args: &[String]) {
    let (name, count, seed): (String, u64, u64) = (arg(args, 1), arg(args, 2), arg(args, 3));
    let seg = open(&name);
    let mut rx = seg.consumer().unwrap_or_else(|e| fail(e));
    rx.set_wait_strategy(wait_arg(args, 4));
    let max = rx.max_frame_size();
    let (mut sum, mut bytes, mut seq) = (FNV_START, 0u64, 0u64);
    let mut want = Vec::with_capacity(max);
    let mut buf = vec![0u8; max];
    let mut api = Rng::new(seed ^ 0xC0);
    let mut check = |seq: u64, got: &[u8], redelivered: bool, sum: &mut u64, bytes: &mut u64| {
        spsc_frame(seed, seq, max, &mut want);
        if got != &want[..] || redelivered {
            fail(format!(
                "frame {seq}: got {} bytes, expected {} (redelivered: {redelivered})",
                got.len(),
                want.len()
            ));
        }
        *sum = fnv(*sum, got);
        *bytes += got.len() as u64;
    };
    while seq < count {
        match api.below(10) {
            0..=5 => {
                let r = rx
                    .recv_timeout(&mut buf, OP_TIMEOUT)
                    .unwrap_or_else(|e| fail(format!("recv {seq}: {e}")));
                check(
                    seq,
                    &buf[..r.len],
                    r.flags.is_redelivered(),
                    &mut sum,
                    &mut bytes,
                );
                seq += 1;
            }
            6 | 7 => {
                let f = rx
                    .read_timeout(OP_TIMEOUT)
                    .unwrap_or_else(|e| fail(format!("read {seq}: {e}")));
                check(seq, &f, f.is_redelivered(), &mut sum, &mut bytes);
                seq += 1;
            }
            _ => {
                let max_n = (1 + api.below(8)).min(count - seq) as usize;
                let first = seq;
                let n = rx
                    .drain_timeout(max_n, OP_TIMEOUT, |f, flags| {
                        check(seq, f, flags.is_redelivered(), &mut sum, &mut bytes);
                        seq += 1;
                    })
                    .unwrap_or_else(|e| fail(format!("drain at {seq}: {e}")));
                assert_eq!(seq - first, n as u64);
            }
        }
    }
    println!("frames={count} bytes={bytes} checksum={sum}");
}

fn mpmc_produce(args: &[String]) {
    let (name, id, count): (String, u32, u64) = (arg(args, 1), arg(args, 2), arg(args, 3));
    let seg = open(&name);
    let mut tx = seg.producer().unwrap_or_else(|e| fail(e));
    tx.set_wait_strategy(wait_arg(args, 4));
    let max = tx.max_frame_size();
    let mut buf = Vec::with_capacity(max);
    let mut api = Rng::new(u64::from(id));
    let mut seq = 0;
    while seq < count {
        if api.below(4) == 0 {
            let len = {
                mpmc_frame(id, seq, max, &mut buf);
                buf.len()
            };
            let mut claim = tx
                .claim_timeout(max, OP_TIMEOUT)
                .unwrap_or_else(|e| fail(format!("claim {seq}: {e}")));
            claim[..len].copy_from_slice(&buf);
            claim.commit_len(len).unwrap_or_else(|e| fail(e));
            seq += 1;
        } else {
            let k = (1 + api.below(4)).min(count - seq);
            let frames: Vec<Vec<u8>> = (seq..seq + k)
                .map(|s| {
                    let mut f = Vec::new();
                    mpmc_frame(id, s, max, &mut f);
                    f
                })
                .collect();
            tx.send_batch(frames.iter().map(|f| &f[..]))
                .unwrap_or_else(|e| fail(format!("send {seq}: {e}")));
            seq += k;
        }
    }
    // The stream ends with the last attached producer's finish.
    tx.finish().unwrap_or_else(|e| fail(format!("finish: {e}")));
    println!("frames={count}");
}

/// Receives until the stream is finished (`Closed`); writes (producer id u32, seq u64) of every
/// frame, in the order received, to OUTFILE.
fn mpmc_consume(args: &[String]) {
    let (name, out): (String, String) = (arg(args, 1), arg(args, 2));
    let seg = open(&name);
    let mut rx = seg.consumer().unwrap_or_else(|e| fail(e));
    rx.set_wait_strategy(wait_arg(args, 3));
    let max = rx.max_frame_size();
    let mut log = Vec::new();
    let mut api = Rng::new(std::process::id().into());
    let mut n = 0u64;
    let mut take = |f: &[u8], redelivered: bool, log: &mut Vec<u8>| {
        if redelivered {
            fail("a frame was flagged redelivered, but no consumer died");
        }
        let (id, seq) = check_mpmc_frame(f, max).unwrap_or_else(|e| fail(e));
        log.extend_from_slice(&id.to_le_bytes());
        log.extend_from_slice(&seq.to_le_bytes());
        n += 1;
    };
    loop {
        let r = if api.below(3) == 0 {
            rx.drain_timeout(4, OP_TIMEOUT, |f, flags| {
                take(f, flags.is_redelivered(), &mut log)
            })
            .map(drop)
        } else {
            rx.read_timeout(OP_TIMEOUT)
                .map(|f| take(&f, f.is_redelivered(), &mut log))
        };
        match r {
            Ok(()) => {}
            Err(Error::Closed(_)) => break, // finished, and everything received
            Err(e) => fail(format!("receive: {e}")),
        }
    }
    std::fs::write(&out, &log).unwrap_or_else(|e| fail(format!("writing {out}: {e}")));
    println!("frames={n}");
}

/// Echoes frames from one channel to another; used with the park strategy, a lost wake-up
/// stops the exchange and a timeout reports it. Sleeping before each echo makes the other side
/// outlast its spin phase and park.
fn pingpong(args: &[String]) {
    let (a, b, rounds): (String, String, u64) = (arg(args, 1), arg(args, 2), arg(args, 3));
    let wait = wait_arg(args, 4);
    let delay = Duration::from_micros(arg(args, 5));
    let (sa, sb) = (open(&a), open(&b));
    let mut rx = sa.consumer().unwrap_or_else(|e| fail(e));
    let mut tx = sb.producer().unwrap_or_else(|e| fail(e));
    rx.set_wait_strategy(wait);
    tx.set_wait_strategy(wait);
    let mut buf = [0u8; 64];
    for i in 0..rounds {
        let r = rx
            .recv_timeout(&mut buf, Duration::from_secs(2))
            .unwrap_or_else(|e| fail(format!("round {i}: no ping: {e}")));
        std::thread::sleep(delay);
        tx.send_timeout(&buf[..r.len], OP_TIMEOUT)
            .unwrap_or_else(|e| fail(format!("round {i}: {e}")));
    }
    println!("rounds={rounds}");
}

/// Opens a segment, so that the library's SIGBUS guard is installed, then faults on a mapping
/// of its own (a page of FILE past the file's end): the guard must pass that fault on, and the
/// process die of SIGBUS as it would without shmring.
fn foreign_sigbus(args: &[String]) {
    use std::os::fd::AsRawFd;
    let (name, file): (String, String) = (arg(args, 1), arg(args, 2));
    let seg = open(&name);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&file)
        .unwrap_or_else(|e| fail(e));
    f.set_len(8192).unwrap_or_else(|e| fail(e));
    // SAFETY: a fresh shared mapping of a file this process holds open; checked below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        fail("mmap");
    }
    f.set_len(0).unwrap_or_else(|e| fail(e));
    println!("touching");
    // SAFETY: deliberately reads a mapped page past the end of its file: the kernel raises
    // SIGBUS, which must kill this process.
    let v = unsafe { std::ptr::read_volatile(p.cast::<u8>().add(4096)) };
    drop(seg);
    fail(format!("read {v} past the end of a file and lived"));
}

/// Uses one side of a channel whose memory another process scribbles on, for MILLIS ms, with
/// 5 ms timeouts. Counts outcomes; a call that overruns its timeout by over 2 s is a hang, and
/// a watchdog thread aborts the process (a non-zero exit the test reports).
fn victim(args: &[String]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let (name, role, millis): (String, String, u64) = (arg(args, 1), arg(args, 2), arg(args, 3));
    let seg = open(&name);
    static CALL_START: AtomicU64 = AtomicU64::new(0);
    let epoch = Instant::now();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let start = CALL_START.load(Ordering::Relaxed);
            let now = epoch.elapsed().as_micros() as u64;
            if start != 0 && now.saturating_sub(start) > 2_000_000 {
                eprintln!("shmring-peer: a call with a 5 ms timeout has run for over 2 s: hang");
                exit(3);
            }
        }
    });
    let timeout = Duration::from_millis(5);
    let end = Instant::now() + Duration::from_millis(millis);
    let mut counts = std::collections::BTreeMap::<&'static str, u64>::new();
    let mut rng = Rng::new(u64::from(std::process::id()));
    let mut buf = vec![0u8; 1 << 16];
    let mut max_call = Duration::ZERO;
    let classify = |r: Result<(), Error>| match r {
        Ok(()) => "ok",
        Err(Error::Corrupted(_)) => "corrupted",
        // The state word is shared memory too: a scribble that reads as deleted or finished
        // ends receives (and sends into a full ring) as a delete or a finish would.
        Err(Error::Closed(_)) => "closed",
        Err(Error::TimedOut(_)) => "timed_out",
        Err(Error::WouldBlock(_)) => "would_block",
        Err(Error::FrameTooLarge { .. }) => "too_large",
        Err(Error::BufferTooSmall { .. }) => "too_small",
        Err(e) => fail(format!("unexpected error: {e}")),
    };
    println!("ready");
    match role.as_str() {
        "producer" => {
            let mut tx = match seg.producer() {
                Ok(tx) => tx,
                Err(e) => fail(format!("attach: {e}")),
            };
            let max = tx.max_frame_size();
            while Instant::now() < end {
                let len = rng.below(max as u64 + 1) as usize;
                let t = Instant::now();
                CALL_START.store(epoch.elapsed().as_micros() as u64 | 1, Ordering::Relaxed);
                let r = match rng.below(4) {
                    0 => tx.try_send(&buf[..len]),
                    1 => tx.claim_timeout(len, timeout).map(|c| c.commit()),
                    2 => tx
                        .try_send_batch([&buf[..len / 2], &buf[..len / 3]])
                        .map(drop),
                    _ => tx.send_timeout(&buf[..len], timeout),
                };
                CALL_START.store(0, Ordering::Relaxed);
                max_call = max_call.max(t.elapsed());
                *counts.entry(classify(r)).or_default() += 1;
            }
        }
        "consumer" => {
            let mut rx = match seg.consumer() {
                Ok(rx) => rx,
                Err(e) => fail(format!("attach: {e}")),
            };
            while Instant::now() < end {
                let t = Instant::now();
                CALL_START.store(epoch.elapsed().as_micros() as u64 | 1, Ordering::Relaxed);
                let r = match rng.below(4) {
                    0 => rx.try_recv(&mut buf).map(drop),
                    1 => rx.read_timeout(timeout).map(|f| {
                        std::hint::black_box(f.iter().fold(0u8, |a, &b| a ^ b));
                    }),
                    2 => rx
                        .drain_timeout(8, timeout, |f, _| {
                            std::hint::black_box(f.len());
                        })
                        .map(drop),
                    _ => rx.recv_timeout(&mut buf, timeout).map(drop),
                };
                CALL_START.store(0, Ordering::Relaxed);
                max_call = max_call.max(t.elapsed());
                *counts.entry(classify(r)).or_default() += 1;
            }
        }
        _ => usage(),
    }
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("{} max_call_us={}", summary.join(" "), max_call.as_micros());
}

/// Roles that run their data path under seccomp strict mode, where any system call but read,
/// write, exit and sigreturn kills the process with SIGKILL. Setup (opening the segment,
/// allocating buffers) happens before; the result is written with write(2) and the process
/// ends with exit(2), both allowed.
mod strict {
    use super::*;

    fn enter() {
        // SAFETY: prctl with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_STRICT) };
        if r != 0 {
            fail(format!(
                "cannot enter seccomp strict mode: {}",
                std::io::Error::last_os_error()
            ));
        }
    }

    /// Writes `key=value` words without allocating, then exits the thread (the only one).
    fn report_and_exit(words: &[(&str, u64)]) -> ! {
        let mut out = [0u8; 256];
        let mut n = 0;
        for (i, (k, v)) in words.iter().enumerate() {
            if i > 0 {
                out[n] = b' ';
                n += 1;
            }
            out[n..n + k.len()].copy_from_slice(k.as_bytes());
            n += k.len();
            out[n] = b'=';
            n += 1;
            let mut digits = [0u8; 20];
            let (mut v, mut d) = (*v, 0);
            loop {
                digits[d] = b'0' + (v % 10) as u8;
                d += 1;
                v /= 10;
                if v == 0 {
                    break;
                }
            }
            for i in (0..d).rev() {
                out[n] = digits[i];
                n += 1;
            }
        }
        out[n] = b'\n';
        // SAFETY: write(2) of a live stack buffer, then exit(2) of this thread, the process's
        // only one; both are allowed in strict mode and touch no Rust state.
        unsafe {
            libc::write(1, out.as_ptr().cast(), n + 1);
            libc::syscall(libc::SYS_exit, 0);
        }
        unreachable!("exit returned")
    }

    pub(super) fn produce(args: &[String]) {
        let (name, count, seed): (String, u64, u64) = (arg(args, 1), arg(args, 2), arg(args, 3));
        let seg = open(&name);
        let mut tx = seg.producer().unwrap_or_else(|e| fail(e));
        tx.set_wait_strategy(wait_arg(args, 4));
        let max = tx.max_frame_size();
        let mut buf = vec![0u8; max];
        enter();
        let mut sum = FNV_START;
        for seq in 0..count {
            let len = spsc_len(seed, seq, max);
            fill(seed, seq, &mut buf[..len]);
            // No timeout: a deadline would read the clock. A hang here is the test's watchdog's.
            if tx.send(&buf[..len]).is_err() {
                report_and_exit(&[("error_at", seq)]);
            }
            sum = fnv(sum, &buf[..len]);
        }
        report_and_exit(&[("frames", count), ("checksum", sum)]);
    }

    pub(super) fn consume(args: &[String]) {
        let (name, count, seed): (String, u64, u64) = (arg(args, 1), arg(args, 2), arg(args, 3));
        let seg = open(&name);
        let mut rx = seg.consumer().unwrap_or_else(|e| fail(e));
        rx.set_wait_strategy(wait_arg(args, 4));
        let max = rx.max_frame_size();
        let (mut buf, mut want) = (vec![0u8; max], vec![0u8; max]);
        enter();
        let mut sum = FNV_START;
        for seq in 0..count {
            let Ok(r) = rx.recv(&mut buf) else {
                report_and_exit(&[("error_at", seq)]);
            };
            let len = spsc_len(seed, seq, max);
            fill(seed, seq, &mut want[..len]);
            if r.len != len || buf[..len] != want[..len] {
                report_and_exit(&[("mismatch_at", seq)]);
            }
            sum = fnv(sum, &buf[..len]);
        }
        report_and_exit(&[("frames", count), ("checksum", sum)]);
    }
}

/// Roles that go through a coordinator: the daemon itself, and producers and consumers that
/// are admitted by it and get killed by the crash tests.
mod coordinated {
    use super::*;
    use shmring::{Client, Coordinator, CoordinatorConfig};
    use shmring_tests::{FrameLog, Logged, SharedFile};
    use std::io::Write;
    use std::path::Path;

    fn client(socket: &str) -> Client {
        Client::connect(Some(Path::new(socket))).unwrap_or_else(|e| fail(e))
    }

    /// Opens through the coordinator, retrying while the channel is busy: a killed
    /// predecessor's entry is free once the coordinator has repaired it.
    fn admitted<T>(what: &str, mut open: impl FnMut() -> Result<T, Error>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match open() {
                Ok(h) => return h,
                Err(Error::Busy(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => fail(format!("opening {what}: {e}")),
            }
        }
    }

    pub(super) fn daemon(args: &[String]) {
        let (socket, ns): (String, String) = (arg(args, 1), arg(args, 2));
        // SAFETY: sigset manipulation and sigprocmask on this (the only) thread, before the
        // coordinator's thread starts and inherits the mask.
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            set
        };
        let coord = Coordinator::start(CoordinatorConfig::new(&ns).socket(&socket))
            .unwrap_or_else(|e| fail(e));
        println!("ready");
        let _ = std::io::stdout().flush();
        let mut sig = 0;
        // SAFETY: waits for a signal of a valid set.
        unsafe { libc::sigwait(&set, &mut sig) };
        coord.stop();
    }

    pub(super) fn produce(args: &[String]) {
        let (socket, channel, inc, commits): (String, String, u32, String) =
            (arg(args, 1), arg(args, 2), arg(args, 3), arg(args, 4));
        let commits = SharedFile::open(Path::new(&commits));
        let c = client(&socket);
        let mut tx = admitted(&channel, || c.producer(&channel));
        tx.set_wait_strategy(wait_arg(args, 5));
        // Messages longer than a frame where the channel takes them (sent, never claimed).
        let (max, claimable) = (tx.max_message_size(), tx.max_frame_size());
        let first: u64 = args.get(6).map_or(0, |_| arg(args, 6));
        let mut rng = Rng::new(u64::from(inc));
        let mut buf = Vec::with_capacity(max);
        // Sends that returned.
        let mut sent = 0u64;
        println!("producing");
        let _ = std::io::stdout().flush();
        loop {
            let seq = first + sent;
            mpmc_frame(inc, seq, max, &mut buf);
            let r = if rng.below(2) == 0 || buf.len() > claimable {
                tx.send_timeout(&buf, Duration::from_millis(200))
            } else {
                tx.claim_timeout(buf.len(), Duration::from_millis(200))
                    .map(|mut claim| {
                        claim.copy_from_slice(&buf);
                        if rng.below(16) == 0 {
                            // Hold the claim a while: a kill now leaves it uncommitted.
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        claim.commit();
                    })
            };
            match r {
                Ok(()) => {
                    sent += 1;
                    commits
                        .word(0)
                        .store(sent, std::sync::atomic::Ordering::Release);
                }
                Err(Error::TimedOut(_)) => continue, // no consumer right now
                Err(e) => fail(format!("send {seq}: {e}")),
            }
            if sent.is_multiple_of(8) {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }

    pub(super) fn consume(args: &[String]) {
        let (socket, channel, log): (String, String, String) =
            (arg(args, 1), arg(args, 2), arg(args, 3));
        let log = FrameLog::open(Path::new(&log));
        let c = client(&socket);
        let mut rx = admitted(&channel, || c.consumer(&channel));
        // WAIT `poll`: wait in poll(2) on the consumer's descriptor, as an event loop does.
        let fd = if args.get(4).map(String::as_str) == Some("poll") {
            Some(rx.fd().unwrap_or_else(|e| fail(format!("fd: {e}"))))
        } else {
            rx.set_wait_strategy(wait_arg(args, 4));
            None
        };
        let max = rx.max_message_size();
        let mut rng = Rng::new(u64::from(std::process::id()));
        println!("consuming");
        let _ = std::io::stdout().flush();
        loop {
            let got = match fd {
                Some(fd) => match rx.try_read() {
                    Err(Error::WouldBlock(_)) => {
                        poll_in(fd, 200);
                        continue;
                    }
                    r => r,
                },
                None => rx.read_timeout(Duration::from_millis(200)),
            };
            let f = match got {
                Ok(f) => f,
                Err(Error::TimedOut(_)) => continue,
                Err(e) => fail(format!("read: {e}")),
            };
            let (incarnation, seq) = check_mpmc_frame(&f, max).unwrap_or_else(|e| fail(e));
            let entry = Logged {
                incarnation,
                seq,
                redelivered: f.is_redelivered(),
            };
            if !log.append(entry) {
                fail("the frame log is full");
            }
            if rng.below(16) == 0 {
                // Hold the frame a while: a kill now leaves it read and unreleased.
                std::thread::sleep(Duration::from_micros(200));
            }
            drop(f);
        }
    }

    /// A broadcast subscriber for the crash tests. It first pins the position it joined at:
    /// after opening, it reads the producer's published position from the segment, then
    /// asks its handle for its lag. The handle's cursor is a position loaded when it joined,
    /// no later than the one read here, and the lag is a later load minus the cursor, so a
    /// lag of zero means all three are the same position: the join. Otherwise it reopens.
    /// Then it records every frame with its `missed()`, receiving one frame at a time or in
    /// batches, holding some frames and stalling now and then (a slow subscriber: a `Block`
    /// producer waits for it, a `DropOldest` one laps it).
    pub(super) fn subscribe(args: &[String]) {
        use shmring_tests::{BroadcastView, Received, SubscriberLog};
        let (socket, channel, log): (String, String, String) =
            (arg(args, 1), arg(args, 2), arg(args, 3));
        let log = SubscriberLog::open(Path::new(&log));
        let c = client(&socket);
        let mut reopens = 0u64;
        let mut rx = loop {
            let rx = admitted(&channel, || c.consumer(&channel));
            let view = BroadcastView::of_process(std::process::id(), &channel);
            let pos = view.position();
            match rx.lag() {
                Some(0) => {
                    log.set_join(pos, reopens);
                    break rx;
                }
                Some(_) if reopens < 10_000 => reopens += 1,
                other => fail(format!(
                    "no join pinned after {reopens} reopens: lag {other:?}"
                )),
            }
        };
        rx.set_wait_strategy(wait_arg(args, 4));
        let max = rx.max_frame_size();
        let mut rng = Rng::new(u64::from(std::process::id()));
        let mut buf = vec![0u8; max];
        let record = |f: &[u8], missed: Option<u64>| {
            let (incarnation, seq) = check_mpmc_frame(f, max).unwrap_or_else(|e| fail(e));
            let r = Received {
                incarnation,
                seq,
                missed,
            };
            if !log.append(r) {
                fail("the subscriber log is full");
            }
        };
        let t = Duration::from_millis(200);
        println!("consuming");
        let _ = std::io::stdout().flush();
        loop {
            let r = match rng.below(8) {
                0..=3 => {
                    // In place (the frame borrows the handle): recorded once released.
                    let len = rx.read_timeout(t).map(|f| {
                        buf[..f.len()].copy_from_slice(&f);
                        if rng.below(16) == 0 {
                            // Hold the frame a while: a kill now leaves it read and unreleased.
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        f.len()
                    });
                    len.map(|len| record(&buf[..len], Some(rx.missed())))
                }
                4 | 5 => rx
                    .recv_timeout(&mut buf, t)
                    .map(|got| record(&buf[..got.len], Some(rx.missed()))),
                _ => {
                    // `missed()` after a batch is exact for its last frame only if the batch
                    // stopped at its limit: otherwise it looked once more, and may have been
                    // lapped then.
                    let limit = 1 + rng.below(4) as usize;
                    let mut frames = Vec::new();
                    rx.drain_timeout(limit, t, |f, _| frames.push(f.to_vec()))
                        .map(|n| {
                            for (i, f) in frames.iter().enumerate() {
                                let last = i + 1 == n && n == limit;
                                record(f, last.then(|| rx.missed()));
                            }
                        })
                }
            };
            match r {
                Ok(()) => {}
                Err(Error::TimedOut(_)) => continue,
                Err(e) => fail(format!("receive: {e}")),
            }
            if rng.below(256) == 0 {
                // A stall: under `Block` the producer waits for it, under `DropOldest` it
                // gets lapped.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// Sends 8-byte frames (a sequence number) with `try_send` in a tight loop, so that a kill
    /// lands anywhere in the send path, between a record's header store and its tail store
    /// included. A refused admission is printed on standard output, for the test to show.
    pub(super) fn flood(args: &[String]) {
        let (socket, channel): (String, String) = (arg(args, 1), arg(args, 2));
        let c = client(&socket);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut tx = loop {
            match c.producer(&channel) {
                Ok(tx) => break tx,
                Err(Error::Busy(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                Err(e) => {
                    println!("refused: {e}");
                    let _ = std::io::stdout().flush();
                    exit(1);
                }
            }
        };
        tx.set_wait_strategy(WaitStrategy::Spin);
        println!("producing");
        let _ = std::io::stdout().flush();
        let mut seq = 0u64;
        loop {
            match tx.try_send(&seq.to_le_bytes()) {
                Ok(()) => seq += 1,
                Err(Error::WouldBlock(_)) => std::hint::spin_loop(),
                Err(e) => fail(format!("send {seq}: {e}")),
            }
        }
    }

    pub(super) fn hold_claim(args: &[String]) {
        let (socket, channel): (String, String) = (arg(args, 1), arg(args, 2));
        let c = client(&socket);
        let mut tx = c.producer(&channel).unwrap_or_else(|e| fail(e));
        let mut claim = tx.try_claim(8).unwrap_or_else(|e| fail(e));
        claim.copy_from_slice(b"never!!!");
        println!("held");
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_secs(600));
        fail("was not killed");
    }

    pub(super) fn hold_frame(args: &[String]) {
        let (socket, channel): (String, String) = (arg(args, 1), arg(args, 2));
        let c = client(&socket);
        let mut rx = c.consumer(&channel).unwrap_or_else(|e| fail(e));
        println!("opened");
        let _ = std::io::stdout().flush();
        let f = rx.read_timeout(OP_TIMEOUT).unwrap_or_else(|e| fail(e));
        println!("held {}", String::from_utf8_lossy(&f));
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_secs(600));
        fail("was not killed");
    }

    pub(super) fn send_one(args: &[String]) {
        let (socket, channel, len, byte): (String, String, usize, u8) =
            (arg(args, 1), arg(args, 2), arg(args, 3), arg(args, 4));
        let c = client(&socket);
        let mut tx = admitted(&channel, || c.producer(&channel));
        println!("sending");
        let _ = std::io::stdout().flush();
        tx.send(&vec![byte; len])
            .unwrap_or_else(|e| fail(format!("send: {e}")));
        println!("sent");
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_secs(600));
        fail("was not killed");
    }

    pub(super) fn armed_then_blocked(args: &[String]) {
        let (socket, channel): (String, String) = (arg(args, 1), arg(args, 2));
        let c = client(&socket);
        let mut rx = c.consumer(&channel).unwrap_or_else(|e| fail(e));
        rx.fd().unwrap_or_else(|e| fail(e));
        rx.set_wait_strategy(WaitStrategy::Park);
        let mut buf = [0u8; 64];
        match rx.recv_timeout(&mut buf, Duration::from_millis(50)) {
            Err(Error::TimedOut(_)) => {}
            other => fail(format!("expected a time-out, got {other:?}")),
        }
        println!("armed");
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_secs(600));
        fail("was not killed");
    }

    pub(super) fn park(args: &[String]) {
        let (socket, channel): (String, String) = (arg(args, 1), arg(args, 2));
        let c = client(&socket);
        let mut rx = c.consumer(&channel).unwrap_or_else(|e| fail(e));
        rx.set_wait_strategy(WaitStrategy::Park);
        println!("parking");
        let _ = std::io::stdout().flush();
        let _ = rx.read_timeout(Duration::from_secs(600));
        fail("was not killed");
    }

    /// Drops to another user, then reports, one `key=value` word each, what the coordinator
    /// let it do with a 0600 and a 0666 channel of root's, and what it could do to their
    /// segments behind the coordinator's back: find them in `/dev/shm` or in the coordinator's
    /// `/proc/<pid>/fd`, open its own descriptor of the shared one again by path, or shrink or
    /// grow it (a hostile participant holding a writable descriptor).
    pub(super) fn as_user(args: &[String]) {
        let (uid, gid, socket, private, public, coordinator): (
            u32,
            u32,
            String,
            String,
            String,
            u32,
        ) = (
            arg(args, 1),
            arg(args, 2),
            arg(args, 3),
            arg(args, 4),
            arg(args, 5),
            arg(args, 6),
        );
        // SAFETY: plain system calls with integer arguments; this process has one thread.
        let dropped = unsafe {
            libc::setgroups(0, std::ptr::null()) == 0
                && libc::setresgid(gid, gid, gid) == 0
                && libc::setresuid(uid, uid, uid) == 0
        };
        if !dropped {
            fail(format!(
                "cannot become uid {uid}: {}",
                std::io::Error::last_os_error()
            ));
        }
        let c = client(&socket);
        let verdict = |r: Result<(), Error>| match r {
            Ok(()) => "ok".to_string(),
            Err(Error::PermissionDenied(_)) => "denied".to_string(),
            Err(e) => format!("error:{}", e.to_string().replace(' ', "_")),
        };
        let io_verdict = |r: std::io::Result<()>| match r {
            Ok(()) => "ok".to_string(),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
                "denied".to_string()
            }
            Err(e) => format!("error:{}", e.to_string().replace(' ', "_")),
        };
        let mut out = Vec::new();
        out.push(format!(
            "private_open={}",
            verdict(c.producer(&private).map(drop))
        ));
        out.push(format!(
            "private_stat={}",
            verdict(c.stats(&private).map(drop))
        ));
        let mut tx = c.producer(&public);
        let public_send = tx
            .as_mut()
            .map_err(|e| Error::Corrupted(e.to_string()))
            .and_then(|tx| tx.send_timeout(b"from another user", OP_TIMEOUT));
        out.push(format!("public_send={}", verdict(public_send)));
        out.push(format!("public_delete={}", verdict(c.delete(&public))));
        // Neither channel has a name anywhere in /dev/shm this user could open, or even see.
        let named = |channel: &str| {
            let seen = std::fs::read_dir("/dev/shm")
                .map(|d| {
                    d.filter_map(|e| e.ok()).any(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.starts_with("shmring.") && n.ends_with(&format!(".{channel}"))
                    })
                })
                .unwrap_or(false);
            if seen { "visible" } else { "absent" }
        };
        out.push(format!("private_named={}", named(&private)));
        out.push(format!("public_named={}", named(&public)));
        // The coordinator's descriptors are not this user's to look at.
        out.push(format!(
            "coordinator_fds={}",
            io_verdict(std::fs::read_dir(format!("/proc/{coordinator}/fd")).map(drop))
        ));
        // This process's own descriptor of the shared channel, handed over on admission.
        let own = shmring_tests::memfds(std::process::id(), "shmring.")
            .into_iter()
            .find(|(n, _)| n.ends_with(&format!(".{public}")));
        match own {
            None => out.push("public_fd=missing".into()),
            Some((_, path)) => {
                let fd: i32 = path
                    .file_name()
                    .and_then(|n| n.to_str()?.parse().ok())
                    .unwrap_or(-1);
                out.push("public_fd=held".into());
                out.push(format!(
                    "public_reopen={}",
                    io_verdict(
                        std::fs::OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open(&path)
                            .map(drop)
                    )
                ));
                let truncate = |len: i64| {
                    // SAFETY: ftruncate on a descriptor this process holds.
                    let r = unsafe { libc::ftruncate(fd, len) };
                    io_verdict(if r == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    })
                };
                out.push(format!("public_shrink_0={}", truncate(0)));
                out.push(format!("public_shrink_4096={}", truncate(4096)));
                out.push(format!("public_grow={}", truncate(1 << 30)));
            }
        }
        // The channel still works for this participant after the attempts.
        let again = tx
            .as_mut()
            .map_err(|e| Error::Corrupted(e.to_string()))
            .and_then(|tx| tx.send_timeout(b"still flowing", OP_TIMEOUT));
        out.push(format!("public_send_after={}", verdict(again)));
        println!("{}", out.join(" "));
    }
}

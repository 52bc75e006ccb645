//! shmring demo: two processes exchange frames, and the demo says how fast.
//!
//! The parent runs a coordinator on one of its threads (embedded mode: no daemon to start),
//! creates two SPSC channels through it (`ping`, `pong`) and a small control file, and starts
//! itself again as the child. The child connects to the coordinator, is admitted to the
//! channels, and echoes every frame. The
//! parent measures round trips (send one frame, receive the echo), pinned to two CPUs, in
//! interleaved rounds against the physical floor: the same two processes bouncing one cache
//! line with plain atomics. Each round reports its own ratio to the floor, because the two
//! virtual CPUs of a cloud machine move between host cores from run to run. Then it streams
//! frames one way for a throughput figure.
//!
//! Usage: demo [--rounds N] [--iterations N] [--frames N] [--cpus A,B] [--quick]

use hdrhistogram::Histogram;
use shmring::{
    ChannelConfig, Client, Consumer, Coordinator, CoordinatorConfig, Producer, WaitStrategy,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PAYLOADS: [usize; 3] = [8, 56, 64];

/// Phases the parent asks the child to run, through the control block.
const PHASE_FLOOR: u64 = 1;
const PHASE_ECHO: u64 = 2;
const PHASE_STREAM: u64 = 3;
const PHASE_EXIT: u64 = 4;

/// The control block: a command, its iteration count and an acknowledgement on one cache line;
/// the floor's ping-pong word alone on another (128-byte aligned, as shmring pads its cursors).
#[repr(C, align(128))]
struct Line(AtomicU64, AtomicU64, AtomicU64);

#[repr(C)]
struct Control {
    cmd: Line,
    floor: Line,
}

struct Options {
    rounds: usize,
    iterations: u64,
    stream_frames: u64,
    cpus: Option<(usize, usize)>,
}

fn parse() -> Options {
    let mut o = Options {
        rounds: 7,
        iterations: 200_000,
        stream_frames: 20_000_000,
        cpus: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| die(&format!("{what} needs a number")))
        };
        match a.as_str() {
            "--rounds" => o.rounds = num("--rounds").max(1) as usize,
            "--iterations" => o.iterations = num("--iterations").max(1),
            "--frames" => o.stream_frames = num("--frames").max(1),
            "--quick" => {
                o.rounds = 3;
                o.iterations = 20_000;
                o.stream_frames = 2_000_000;
            }
            "--cpus" => {
                let v = args.next().unwrap_or_default();
                let cpus: Vec<usize> = v.split(',').filter_map(|c| c.parse().ok()).collect();
                match cpus[..] {
                    [a, b] if a != b => o.cpus = Some((a, b)),
                    _ => die("--cpus takes two different CPU numbers: --cpus 0,1"),
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: demo [--rounds N] [--iterations N] [--frames N] [--cpus A,B] [--quick]\n\
                     Measures shmring round trips against a one-cache-line atomic ping-pong\n\
                     between the same two processes, then one-way throughput."
                );
                std::process::exit(0);
            }
            other => die(&format!("unknown argument {other:?} (try --help)")),
        }
    }
    o
}

fn die(msg: &str) -> ! {
    eprintln!("demo: {msg}");
    std::process::exit(2)
}

/// Like `die`, once the coordinator runs: unwinds, so that stopping it removes the channels.
fn fatal(msg: &str) -> ! {
    eprintln!("demo: {msg}");
    std::panic::resume_unwind(Box::new(()))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(&args[2], &args[3], args[4].parse().ok());
        return;
    }
    parent(parse());
}

/// Pins the calling process to `cpu`; false if the CPU is not available.
fn pin(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Maps the control file shared by parent and child.
fn map_control(path: &str, create: bool) -> &'static Control {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(create)
        .open(path)
        .unwrap_or_else(|e| die(&format!("{path}: {e}")));
    file.set_len(4096).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a shared mapping of a 4096-byte file we hold open, checked below. It is leaked
    // on purpose: both processes use it until they exit.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap of the control file");
    // SAFETY: page-aligned, 4096 >= size_of::<Control>() bytes of atomics (valid for any bits).
    unsafe { &*(p as *const Control) }
}

fn spin_until(word: &AtomicU64, value: u64) {
    while word.load(Ordering::Acquire) != value {
        std::hint::spin_loop();
    }
}

fn child(socket: &str, control: &str, cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        pin(cpu);
    }
    let ctl = map_control(control, false);
    let client = Client::connect(Some(std::path::Path::new(socket)))
        .unwrap_or_else(|e| die(&format!("child: {e}")));
    let mut rx = client
        .consumer("ping")
        .unwrap_or_else(|e| die(&format!("child: {e}")));
    let mut tx = client
        .producer("pong")
        .unwrap_or_else(|e| die(&format!("child: {e}")));
    rx.set_wait_strategy(WaitStrategy::Spin);
    tx.set_wait_strategy(WaitStrategy::Spin);
    let mut seen = 0;
    loop {
        let cmd = loop {
            let c = ctl.cmd.0.load(Ordering::Acquire);
            if c != seen {
                break c;
            }
            std::hint::spin_loop();
        };
        seen = cmd;
        let (phase, n) = (cmd & 0xff, ctl.cmd.1.load(Ordering::Relaxed));
        match phase {
            PHASE_FLOOR => {
                for i in 0..n {
                    spin_until(&ctl.floor.0, 2 * i + 1);
                    ctl.floor.0.store(2 * i + 2, Ordering::Release);
                }
            }
            PHASE_ECHO => {
                for _ in 0..n {
                    let frame = rx.read().unwrap();
                    tx.send(&frame).unwrap();
                }
            }
            PHASE_STREAM => {
                let mut left = n;
                while left > 0 {
                    left -= rx.drain(left.min(1024) as usize, |_, _| {}).unwrap() as u64;
                }
            }
            _ => {
                ctl.cmd.2.store(cmd, Ordering::Release);
                return;
            }
        }
        ctl.cmd.2.store(cmd, Ordering::Release);
    }
}

/// Tells the child to run `phase` for `n` iterations; `round` makes each command distinct.
fn command(ctl: &Control, round: u64, phase: u64, n: u64) -> u64 {
    let cmd = round << 8 | phase;
    // Relaxed: published by the Release store of the command.
    ctl.cmd.1.store(n, Ordering::Relaxed);
    ctl.cmd.0.store(cmd, Ordering::Release);
    cmd
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()
}

fn floor_round(ctl: &Control, round: u64, n: u64, h: &mut Histogram<u64>) {
    ctl.floor.0.store(0, Ordering::Release);
    let cmd = command(ctl, round, PHASE_FLOOR, n);
    for i in 0..n {
        let t = Instant::now();
        ctl.floor.0.store(2 * i + 1, Ordering::Release);
        spin_until(&ctl.floor.0, 2 * i + 2);
        h.saturating_record(t.elapsed().as_nanos() as u64);
    }
    spin_until(&ctl.cmd.2, cmd);
}

fn echo_round(
    ctl: &Control,
    round: u64,
    n: u64,
    payload: &[u8],
    tx: &mut Producer,
    rx: &mut Consumer,
    h: &mut Histogram<u64>,
) {
    let cmd = command(ctl, round, PHASE_ECHO, n);
    let mut buf = [0u8; 256];
    for _ in 0..n {
        let t = Instant::now();
        tx.send(payload).unwrap();
        let got = rx.recv(&mut buf).unwrap();
        h.saturating_record(t.elapsed().as_nanos() as u64);
        debug_assert_eq!(got.len, payload.len());
    }
    spin_until(&ctl.cmd.2, cmd);
}

/// Fraction of CPU time the whole machine spent busy over `d`, from /proc/stat.
fn busy_fraction(d: Duration) -> Option<f64> {
    let sample = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
        Some((v.iter().sum(), idle))
    };
    let (t0, i0) = sample()?;
    std::thread::sleep(d);
    let (t1, i1) = sample()?;
    let total = t1.checked_sub(t0)?.max(1);
    Some(1.0 - (i1 - i0) as f64 / total as f64)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// A duration in nanoseconds, in the unit that keeps it short.
fn duration(ns: u64) -> String {
    match ns {
        0..10_000 => format!("{ns} ns"),
        10_000..10_000_000 => format!("{:.1} us", ns as f64 / 1e3),
        _ => format!("{:.1} ms", ns as f64 / 1e6),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Removes the demo's files when dropped, also when it panics (the coordinator removes the
/// channels when it stops).
struct Cleanup {
    control: String,
    dir: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.control);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn parent(o: Options) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let placement = o.cpus.or((cpus >= 2).then_some((0, 1)));
    let base = format!("demo-{}", std::process::id());
    let cleanup = Cleanup {
        control: format!("/dev/shm/shmring-{base}.ctl"),
        dir: std::env::temp_dir().join(format!("shmring-{base}")),
    };
    // The coordinator runs on a thread of this process: no daemon to start.
    let socket = cleanup.dir.join("coordinator.sock");
    let coordinator = Coordinator::start(CoordinatorConfig::new(&base).socket(&socket))
        .unwrap_or_else(|e| die(&format!("starting the coordinator: {e}")));
    let die = fatal;
    let client = Client::connect(Some(&socket)).unwrap_or_else(|e| die(&e.to_string()));
    let cfg = ChannelConfig::spsc().capacity(1 << 20).max_frame_size(4096);
    for name in ["ping", "pong"] {
        client
            .create(name, &cfg)
            .unwrap_or_else(|e| die(&e.to_string()));
    }
    let ctl = map_control(&cleanup.control, true);
    let mut tx = client
        .producer("ping")
        .unwrap_or_else(|e| die(&e.to_string()));
    let mut rx = client
        .consumer("pong")
        .unwrap_or_else(|e| die(&e.to_string()));
    tx.set_wait_strategy(WaitStrategy::Spin);
    rx.set_wait_strategy(WaitStrategy::Spin);

    let busy = busy_fraction(Duration::from_millis(300));
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child.arg("--child").arg(&socket).arg(&cleanup.control);
    child.arg(placement.map_or("-".to_string(), |(_, b)| b.to_string()));
    let mut child = child
        .spawn()
        .unwrap_or_else(|e| die(&format!("starting the child: {e}")));
    let pinned = placement.is_some_and(|(a, _)| pin(a));

    println!("shmring demo: two processes exchanging frames over shared memory");
    println!(
        "coordinator embedded in the parent (namespace {base}, socket {}); channels ping and pong created through it",
        socket.display()
    );
    println!(
        "machine: {}, {cpus} CPUs, Linux {}; parent pid {} {}, child pid {}{}",
        cpu_model(),
        kernel(),
        std::process::id(),
        placement.map_or("unpinned".into(), |(a, _)| format!("on CPU {a}")),
        child.id(),
        placement.map_or(String::new(), |(_, b)| format!(" on CPU {b}")),
    );
    if !pinned && placement.is_some() {
        println!("note: pinning failed; processes float between CPUs");
    }
    match busy {
        Some(b) if b > 0.10 => println!(
            "WARNING: the machine was {:.0}% busy before the run: other work disturbs these figures",
            b * 100.0
        ),
        Some(b) => println!("machine idle before the run ({:.0}% busy)", b * 100.0),
        None => println!("could not read /proc/stat to check that the machine is idle"),
    }
    println!(
        "\nround trip = send one frame, receive its echo; both sides busy-spin. {} rounds of {} round trips per cell,\n\
         cells interleaved; every round trip is timed (two clock reads, ~40 ns, are included in every figure).\n",
        o.rounds, o.iterations
    );

    let n = o.iterations;
    let mut floor_all = histogram();
    let mut ring_all: Vec<Histogram<u64>> = PAYLOADS.iter().map(|_| histogram()).collect();
    let mut ratios: Vec<Vec<f64>> = PAYLOADS.iter().map(|_| Vec::new()).collect();
    let mut floors = Vec::new();
    let payloads: Vec<Vec<u8>> = PAYLOADS.iter().map(|&p| vec![0x5a; p]).collect();
    // Warm-up: caches, page tables, branch predictors.
    let mut scratch = histogram();
    floor_round(ctl, 1, n / 4 + 1, &mut scratch);
    echo_round(
        ctl,
        2,
        8 * (n / 32 + 1),
        &payloads[2],
        &mut tx,
        &mut rx,
        &mut scratch,
    );

    print!("{:<7}{:>14}", "round", "atomic floor");
    for p in PAYLOADS {
        print!("{:>24}", format!("shmring spsc {p} B"));
    }
    println!(
        "\n{:<7}{:>14}{}",
        "",
        "p50",
        "           p50     ratio".repeat(PAYLOADS.len())
    );
    let mut id = 10;
    for r in 0..o.rounds {
        let mut f = histogram();
        id += 1;
        floor_round(ctl, id, n, &mut f);
        let fp50 = f.value_at_quantile(0.5) as f64;
        floors.push(fp50);
        floor_all.add(&f).unwrap();
        print!("{:<7}{:>11} ns", r + 1, fp50);
        for (i, p) in payloads.iter().enumerate() {
            let mut h = histogram();
            id += 1;
            echo_round(ctl, id, n, p, &mut tx, &mut rx, &mut h);
            let p50 = h.value_at_quantile(0.5) as f64;
            ratios[i].push(p50 / fp50);
            ring_all[i].add(&h).unwrap();
            print!("{:>11} ns {:>8.2}x", p50, p50 / fp50);
        }
        println!();
    }
    print!("{:<7}{:>11} ns", "median", median(&mut floors.clone()));
    for (i, r) in ratios.iter_mut().enumerate() {
        let med_p50 = ring_all[i].value_at_quantile(0.5);
        print!("{:>11} ns {:>8.2}x", med_p50, median(r));
    }
    println!("   (ratio column: median of the rounds' ratios)\n");

    println!("all rounds together:");
    println!(
        "{:<22}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "", "p50", "p90", "p99", "p99.9", "max"
    );
    let row = |name: &str, h: &Histogram<u64>| {
        let cells: String = [0.5, 0.9, 0.99, 0.999]
            .iter()
            .map(|&q| h.value_at_quantile(q))
            .chain([h.max()])
            .map(|v| format!("{:>10}", duration(v)))
            .collect();
        println!("{name:<22}{cells}");
    };
    row("atomic floor", &floor_all);
    for (i, p) in PAYLOADS.iter().enumerate() {
        row(&format!("shmring spsc {p} B"), &ring_all[i]);
    }

    // Throughput: the parent sends, the child drains.
    let frames = o.stream_frames;
    id += 1;
    let cmd = command(ctl, id, PHASE_STREAM, frames);
    let payload = [0x42u8; 64];
    let t = Instant::now();
    for _ in 0..frames {
        tx.send(&payload).unwrap();
    }
    spin_until(&ctl.cmd.2, cmd);
    let secs = t.elapsed().as_secs_f64();
    println!(
        "\nthroughput, 64-byte frames one way (copy API, the receiver drains in batches): {:.1} M frames/s, {:.2} GB/s of payload",
        frames as f64 / secs / 1e6,
        frames as f64 * 64.0 / secs / 1e9
    );

    id += 1;
    let cmd = command(ctl, id, PHASE_EXIT, 0);
    spin_until(&ctl.cmd.2, cmd);
    let status = child.wait().unwrap();
    if !status.success() {
        die(&format!("the child exited with {status}"));
    }
    let stats = client.stats("ping").unwrap_or_else(|e| die(&e.to_string()));
    println!(
        "\nthe coordinator counted {} frames into ping and {} out; stopping it removes the channels",
        stats.frames_in, stats.frames_out
    );
    drop((tx, rx, client));
    coordinator.stop();
}

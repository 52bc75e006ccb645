//! The ping-pong of `shmring bench`, over iceoryx2 publish-subscribe instead of shmring
//! channels, printing the same JSON so that the two can be read side by side.
//!
//! Two processes (this one and itself started again as the peer), pinned to two CPUs. A round
//! trip: the parent loans a sample, copies the frame into it and sends it; the peer, busy-polling
//! its subscriber, receives it, loans a sample, copies the frame into it and sends it back; the
//! parent, busy-polling, receives the echo and copies it out. That is the work `shmring bench`
//! does per round trip (copy in, read in place and copy back, copy out). The atomic floor (the
//! same two processes bouncing one cache line) is measured in the same run, in interleaved
//! rounds, so that the ratio to it can be compared with the ratios `shmring bench` prints.
//!
//! Usage: iceoryx2-pingpong [--payload 8,64,1024,65536] [--iterations 10000] [--rounds 5]
//!                          [--cpus 0,1] [--json FILE]

use hdrhistogram::Histogram;
use iceoryx2::port::update_connections::UpdateConnections;
use iceoryx2::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const OP_SETUP: u64 = 1;
const OP_FLOOR: u64 = 2;
const OP_ICEORYX: u64 = 3;
const OP_EXIT: u64 = 4;

/// How long either side waits for the other before declaring the run broken.
const PATIENCE: Duration = Duration::from_secs(20);

type Res<T> = Result<T, String>;

// ---------------------------------------------------------------------------------------------
// The control page the two processes share: commands, acknowledgements, the floor's word.

/// Word indices, each on a cache-line pair of its own.
const CMD_SEQ: usize = 0;
const CMD_OP: usize = 1;
const CMD_PAYLOAD: usize = 2;
const CMD_ITERATIONS: usize = 3;
const ACK_READY: usize = 16;
const ACK_DONE: usize = 32;
const ACK_ERROR: usize = 33;
const FLOOR: usize = 48;
const WORDS: usize = 64;

struct Control {
    map: memmap2::MmapMut,
}

impl Control {
    fn map(path: &Path, create: bool) -> Res<Control> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        if create {
            file.set_len((WORDS * 8) as u64)
                .map_err(|e| format!("sizing {}: {e}", path.display()))?;
        }
        // SAFETY: a shared mapping of a file both processes only touch through atomics.
        let map = unsafe { memmap2::MmapMut::map_mut(&file) }
            .map_err(|e| format!("mapping {}: {e}", path.display()))?;
        if map.len() < WORDS * 8 {
            return Err(format!("{} is too short", path.display()));
        }
        Ok(Control { map })
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < WORDS);
        // SAFETY: the mapping is page-aligned and WORDS * 8 bytes long (checked in `map`), so
        // word i is 8-aligned and in bounds; AtomicU64 is valid for any bits.
        unsafe { &*(self.map.as_ptr().add(i * 8) as *const AtomicU64) }
    }
}

/// Spins until `word` holds `value`; false if `patience` passes first. The clock is first
/// read after 2^16 spins, so a round trip that ends sooner never pays for it.
fn spin_until(word: &AtomicU64, value: u64, patience: Duration) -> bool {
    let mut n = 0u32;
    let mut deadline = None;
    while word.load(Ordering::Acquire) != value {
        std::hint::spin_loop();
        n = n.wrapping_add(1);
        if n.is_multiple_of(1 << 16) {
            let now = Instant::now();
            if now > *deadline.get_or_insert(now + patience) {
                return false;
            }
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------
// The report: the schema of `shmring bench --json`.

#[derive(Serialize)]
struct Report {
    machine: Machine,
    pingpong: Vec<PingRow>,
    throughput: Vec<ThroughputRow>,
    memcpy_bytes_per_s: f64,
}

#[derive(Serialize, Clone)]
struct Machine {
    cpu: String,
    cores: usize,
    kernel: String,
}

#[derive(Serialize)]
struct PingRow {
    transport: &'static str,
    payload: usize,
    samples: u64,
    rtt_ns: Rtt,
}

#[derive(Serialize)]
struct Rtt {
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

/// Always empty here: this program compares round trips only.
#[derive(Serialize)]
struct ThroughputRow {}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
    }
}

/// Memcpy bandwidth as `shmring bench` measures it: 64 KiB copies between two 1 MiB buffers.
fn memcpy_bandwidth(duration: Duration) -> f64 {
    const BLOCK: usize = 64 << 10;
    const SPAN: usize = 1 << 20;
    let src = vec![0x17u8; SPAN];
    let mut dst = vec![0u8; SPAN];
    dst.copy_from_slice(&src);
    let start = Instant::now();
    let mut copies = 0usize;
    while start.elapsed() < duration {
        for _ in 0..64 {
            let b = copies % (SPAN / BLOCK) * BLOCK;
            dst[b..b + BLOCK].copy_from_slice(std::hint::black_box(&src[b..b + BLOCK]));
            std::hint::black_box(&dst);
            copies += 1;
        }
    }
    (copies * BLOCK) as f64 / start.elapsed().as_secs_f64()
}

fn pin(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only read
    // and write the set we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return false;
        }
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

// ---------------------------------------------------------------------------------------------
// iceoryx2 ports.

/// One process's ends for one payload size: it publishes on `out` and subscribes to `inn`.
struct Ports {
    tx: iceoryx2::port::publisher::Publisher<ipc::Service, [u8], ()>,
    rx: iceoryx2::port::subscriber::Subscriber<ipc::Service, [u8], ()>,
}

fn service_name(run: u64, payload: usize, dir: &str) -> String {
    format!("shmring-comparison-{run}/{payload}/{dir}")
}

fn ports(node: &Node<ipc::Service>, run: u64, payload: usize, parent: bool) -> Res<Ports> {
    let (out, inn) = if parent {
        ("ping", "pong")
    } else {
        ("pong", "ping")
    };
    let open = |dir: &str| {
        let name: ServiceName = service_name(run, payload, dir)
            .as_str()
            .try_into()
            .map_err(|e| format!("service name: {e:?}"))?;
        node.service_builder(&name)
            .publish_subscribe::<[u8]>()
            .max_publishers(1)
            .max_subscribers(1)
            .history_size(0)
            .subscriber_max_buffer_size(1)
            .enable_safe_overflow(true)
            .open_or_create()
            .map_err(|e| format!("opening service {dir}: {e:?}"))
    };
    let out = open(out)?;
    let inn = open(inn)?;
    let tx = out
        .publisher_builder()
        .initial_max_slice_len(payload)
        .create()
        .map_err(|e| format!("creating a publisher: {e:?}"))?;
    let rx = inn
        .subscriber_builder()
        .create()
        .map_err(|e| format!("creating a subscriber: {e:?}"))?;
    Ok(Ports { tx, rx })
}

impl Ports {
    fn send(&self, frame: &[u8]) -> Res<()> {
        let sample = self
            .tx
            .loan_slice_uninit(frame.len())
            .map_err(|e| format!("loan: {e:?}"))?;
        sample
            .write_from_slice(frame)
            .send()
            .map_err(|e| format!("send: {e:?}"))?;
        Ok(())
    }

    /// Busy-polls until a sample comes, then passes it to `f`.
    fn receive(&self, f: impl FnOnce(&[u8]) -> Res<()>) -> Res<()> {
        let mut n = 0u32;
        let mut deadline = None;
        loop {
            if let Some(sample) = self.rx.receive().map_err(|e| format!("receive: {e:?}"))? {
                return f(sample.payload());
            }
            n = n.wrapping_add(1);
            if n.is_multiple_of(1 << 12) {
                let now = Instant::now();
                if now > *deadline.get_or_insert(now + PATIENCE) {
                    return Err("the other process stopped sending".into());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The peer.

fn run_peer(control: &Path, run: u64, cpu: Option<usize>) -> Res<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err("PR_SET_PDEATHSIG failed".into());
    }
    // The parent is `run` (its pid); if it died before the line above, stop now.
    if u64::from(std::os::unix::process::parent_id()) != run {
        return Err("the parent process is gone".into());
    }
    if let Some(c) = cpu
        && !pin(c)
    {
        eprintln!("iceoryx2-pingpong peer: could not pin to CPU {c}; running unpinned");
    }
    let ctl = Control::map(control, false)?;
    let node = NodeBuilder::new()
        .create::<ipc::Service>()
        .map_err(|e| format!("creating a node: {e:?}"))?;
    let mut mine: Option<Ports> = None;
    let mut seen = 0;
    loop {
        let seq = loop {
            let s = ctl.word(CMD_SEQ).load(Ordering::Acquire);
            if s != seen {
                break s;
            }
            std::thread::sleep(Duration::from_micros(20));
        };
        seen = seq;
        let op = ctl.word(CMD_OP).load(Ordering::Relaxed);
        let payload = ctl.word(CMD_PAYLOAD).load(Ordering::Relaxed) as usize;
        let n = ctl.word(CMD_ITERATIONS).load(Ordering::Relaxed);
        let result = match op {
            OP_EXIT => {
                ctl.word(ACK_DONE).store(seq, Ordering::Release);
                return Ok(());
            }
            OP_SETUP => {
                mine = None;
                ports(&node, run, payload, false).map(|p| mine = Some(p))
            }
            OP_FLOOR => {
                ctl.word(ACK_READY).store(seq, Ordering::Release);
                let floor = ctl.word(FLOOR);
                (0..n).try_for_each(|i| {
                    if !spin_until(floor, 2 * i + 1, PATIENCE) {
                        return Err("the parent stopped (atomic floor)".to_string());
                    }
                    floor.store(2 * i + 2, Ordering::Release);
                    Ok(())
                })
            }
            OP_ICEORYX => match &mine {
                Some(p) => {
                    ctl.word(ACK_READY).store(seq, Ordering::Release);
                    (0..n).try_for_each(|_| p.receive(|frame| p.send(frame)))
                }
                None => Err("no ports set up".into()),
            },
            other => Err(format!("unknown command {other}")),
        };
        if let Err(e) = &result {
            ctl.word(ACK_ERROR).store(1, Ordering::Relaxed);
            eprintln!("iceoryx2-pingpong peer: {e}");
        }
        ctl.word(ACK_DONE).store(seq, Ordering::Release);
        result?;
    }
}

// ---------------------------------------------------------------------------------------------
// The parent.

struct Options {
    payloads: Vec<usize>,
    iterations: u64,
    rounds: u32,
    cpus: Option<(usize, usize)>,
    json: Option<PathBuf>,
}

const USAGE: &str = "usage: iceoryx2-pingpong [--payload 8,64,1024,65536] [--iterations 10000] \
                     [--rounds 5] [--cpus 0,1] [--json FILE]";

fn options(args: &[String]) -> Res<Options> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut o = Options {
        payloads: vec![8, 64, 1024, 65536],
        iterations: 10_000,
        rounds: 5,
        cpus: (cores >= 2).then_some((0, 1)),
        json: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value\n{USAGE}"));
        let bad = |v: &str| format!("{a} {v}: not valid\n{USAGE}");
        match a.as_str() {
            "--payload" => {
                let v = value()?;
                o.payloads = v
                    .split(',')
                    .map(|p| p.trim().parse().ok().filter(|&p| p > 0))
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad(v))?;
            }
            "--iterations" => {
                let v = value()?;
                o.iterations = v.parse().ok().filter(|&n| n > 0).ok_or_else(|| bad(v))?;
            }
            "--rounds" => {
                let v = value()?;
                o.rounds = v.parse().ok().filter(|&n| n > 0).ok_or_else(|| bad(v))?;
            }
            "--cpus" => {
                let v = value()?;
                let c: Vec<usize> = v.split(',').filter_map(|c| c.trim().parse().ok()).collect();
                o.cpus = match c[..] {
                    [a, b] if a != b => Some((a, b)),
                    _ => return Err(bad(v)),
                };
            }
            "--json" => o.json = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    Ok(o)
}

/// The parent's side of the conversation with the peer.
struct Talk<'a> {
    ctl: &'a Control,
    seq: u64,
}

impl Talk<'_> {
    fn command(&mut self, op: u64, payload: usize, iterations: u64) {
        self.seq += 1;
        self.ctl.word(CMD_OP).store(op, Ordering::Relaxed);
        self.ctl
            .word(CMD_PAYLOAD)
            .store(payload as u64, Ordering::Relaxed);
        self.ctl
            .word(CMD_ITERATIONS)
            .store(iterations, Ordering::Relaxed);
        // Release: the arguments are visible to a peer that sees the new sequence.
        self.ctl.word(CMD_SEQ).store(self.seq, Ordering::Release);
    }

    /// Waits for acknowledgement `word` (ready or done) of the current command.
    fn wait(&self, word: usize) -> Res<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if spin_until(self.ctl.word(word), self.seq, Duration::from_millis(1)) {
                break;
            }
            let done = self.ctl.word(ACK_DONE).load(Ordering::Acquire) == self.seq;
            if done || Instant::now() > deadline {
                if self.ctl.word(word).load(Ordering::Acquire) == self.seq {
                    break;
                }
                return Err("the peer process did not answer".into());
            }
        }
        if self.ctl.word(ACK_ERROR).load(Ordering::Relaxed) != 0 {
            return Err("the peer process failed (see its message above)".into());
        }
        Ok(())
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid bounds")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// As `shmring bench` prints times.
fn ns(v: u64) -> String {
    match v {
        0..1000 => format!("{v} ns"),
        1000..10_000 => format!("{:.2} µs", v as f64 / 1e3),
        10_000..1_000_000 => format!("{:.1} µs", v as f64 / 1e3),
        _ => format!("{:.2} ms", v as f64 / 1e6),
    }
}

/// Kills the peer and removes the control file, also on failure.
struct Cleanup {
    control: PathBuf,
    peer: Option<std::process::Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut p) = self.peer.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = std::fs::remove_file(&self.control);
    }
}

fn run(o: &Options) -> Res<()> {
    let pid = std::process::id();
    let machine = machine();
    let mut cleanup = Cleanup {
        control: PathBuf::from(format!("/dev/shm/iceoryx2-pingpong-{pid}.ctl")),
        peer: None,
    };
    let ctl = Control::map(&cleanup.control, true)?;
    let node = NodeBuilder::new()
        .create::<ipc::Service>()
        .map_err(|e| format!("creating a node: {e:?}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let mut peer = std::process::Command::new(exe);
    peer.arg("peer")
        .arg(&cleanup.control)
        .arg(pid.to_string())
        .stdin(std::process::Stdio::null());
    if let Some((_, b)) = o.cpus {
        peer.arg(b.to_string());
    }
    cleanup.peer = Some(
        peer.spawn()
            .map_err(|e| format!("starting the peer: {e}"))?,
    );
    let pinned = o.cpus.is_some_and(|(a, _)| pin(a));
    println!(
        "iceoryx2-pingpong: {}, {} cores, Linux {}",
        machine.cpu, machine.cores, machine.kernel
    );
    println!(
        "two processes{}; {} rounds of {} round trips per cell, floor and iceoryx2 interleaved",
        match (pinned, o.cpus) {
            (true, Some((a, b))) => format!(" pinned to CPUs {a} and {b}"),
            _ => ", unpinned".into(),
        },
        o.rounds,
        o.iterations
    );
    let mut talk = Talk { ctl: &ctl, seq: 0 };
    let mut report = Report {
        machine,
        pingpong: Vec::new(),
        throughput: Vec::new(),
        memcpy_bytes_per_s: 0.0,
    };
    for &payload in &o.payloads {
        let mine = ports(&node, u64::from(pid), payload, true)?;
        talk.command(OP_SETUP, payload, 0);
        talk.wait(ACK_DONE)?;
        mine.tx
            .update_connections()
            .map_err(|e| format!("connecting: {e:?}"))?;
        let frame = vec![0x5au8; payload];
        let mut buf = vec![0u8; payload];
        let names = ["atomic-floor", "iceoryx2-pubsub-spin"];
        let mut all = [histogram(), histogram()];
        let mut p50s = [Vec::new(), Vec::new()];
        for _ in 0..o.rounds {
            for (i, hist) in all.iter_mut().enumerate() {
                let mut h = histogram();
                ctl.word(FLOOR).store(0, Ordering::Relaxed);
                talk.command(
                    if i == 0 { OP_FLOOR } else { OP_ICEORYX },
                    payload,
                    o.iterations,
                );
                talk.wait(ACK_READY)?;
                for n in 0..o.iterations {
                    let t0 = Instant::now();
                    if i == 0 {
                        ctl.word(FLOOR).store(2 * n + 1, Ordering::Release);
                        if !spin_until(ctl.word(FLOOR), 2 * n + 2, PATIENCE) {
                            return Err("the peer stopped answering (atomic floor)".into());
                        }
                    } else {
                        mine.send(&frame)?;
                        mine.receive(|echo| {
                            buf.copy_from_slice(echo);
                            Ok(())
                        })?;
                    }
                    h.saturating_record(t0.elapsed().as_nanos() as u64);
                }
                talk.wait(ACK_DONE)?;
                p50s[i].push(h.value_at_quantile(0.5) as f64);
                hist.add(&h)
                    .map_err(|e| format!("merging histograms: {e:?}"))?;
            }
        }
        println!("\n{payload}-byte frames");
        println!(
            "{:<22}{:>10}{:>10}{:>10}{:>10}{:>10}  {:>10}",
            "", "p50", "p90", "p99", "p99.9", "max", "vs floor"
        );
        for (i, h) in all.iter().enumerate() {
            let cells: String = [0.5, 0.9, 0.99, 0.999]
                .iter()
                .map(|&q| h.value_at_quantile(q))
                .chain([h.max()])
                .map(|v| format!("{:>10}", ns(v)))
                .collect();
            let vs = if i == 0 {
                String::new()
            } else {
                let r = p50s[1].iter().zip(&p50s[0]).map(|(a, b)| a / b).collect();
                format!("{:.2}x", median(r))
            };
            println!("{:<22}{cells}  {vs:>10}", names[i]);
            report.pingpong.push(PingRow {
                transport: names[i],
                payload,
                samples: h.len(),
                rtt_ns: Rtt {
                    p50: h.value_at_quantile(0.5),
                    p90: h.value_at_quantile(0.9),
                    p99: h.value_at_quantile(0.99),
                    p999: h.value_at_quantile(0.999),
                    max: h.max(),
                },
            });
        }
    }
    talk.command(OP_EXIT, 0, 0);
    talk.wait(ACK_DONE)?;
    if let Some(mut p) = cleanup.peer.take() {
        let _ = p.wait();
    }
    report.memcpy_bytes_per_s = memcpy_bandwidth(Duration::from_millis(200));
    if let Some(path) = &o.json {
        let text = serde_json::to_string_pretty(&report).expect("the report serialises");
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

fn main() {
    iceoryx2::prelude::set_log_level(iceoryx2::prelude::LogLevel::Error);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("peer") {
        match (args.get(1), args.get(2).and_then(|r| r.parse().ok())) {
            (Some(control), Some(run)) => run_peer(
                Path::new(control),
                run,
                args.get(3).and_then(|c| c.parse().ok()),
            ),
            _ => Err("usage: iceoryx2-pingpong peer CONTROL RUN [CPU]".into()),
        }
    } else {
        options(&args).and_then(|o| run(&o))
    };
    if let Err(e) = result {
        eprintln!("iceoryx2-pingpong: {e}");
        std::process::exit(1);
    }
}

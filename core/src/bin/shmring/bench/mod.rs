//! `shmring bench`: round-trip latency and throughput between two processes, shmring against
//! the physical floors and against what one would use instead, measured in one run.
//!
//! The bench runs a coordinator on a thread of its own process (no daemon), creates the channels
//! it measures, and starts itself again as the peer process (`shmring bench-peer`), pinned to
//! another CPU. The two talk through a control page in `/dev/shm`: the parent writes a command
//! (what to measure, how many times), the peer sets its end up, says it is ready, and echoes
//! (ping-pong) or consumes (throughput) until done. Ping-pong cells are measured in interleaved
//! rounds, every transport once per round, so that each round's ratio to the atomic floor
//! compares figures taken with the two virtual CPUs placed the same way on the host.
//!
//! The broadcast fan-out rows (`fanout`) need a third process: a second peer (`--index 1`,
//! with command and acknowledgement lines of its own) is started for them, so that this
//! process publishes to two subscriber processes. Where there is no third CPU, the two
//! subscribers share the peer's.

/// Prints a line of the report (as `println!`, without its panic on a closed output): see
/// [`say_line`].
macro_rules! say {
    ($($t:tt)*) => {
        $crate::bench::say_line(format_args!($($t)*))
    };
}

mod interrupt;
mod machine;
mod peer;
mod shared;
mod svg;
mod transport;

/// Writes a line of the report to standard output. Output closed early (`shmring bench | head`):
/// the reader has what it wanted, so the run stops quietly, cleaning up as an interrupt does,
/// and exits 0 (it used to panic with "failed printing to stdout: Broken pipe").
pub(crate) fn say_line(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => interrupt::abandon(0, None),
        Err(e) => interrupt::abandon(1, Some(&format!("shmring bench: writing the report: {e}"))),
    }
}

use hdrhistogram::Histogram;
use machine::Machine;
use serde::Serialize;
use shared::{Line, Shared, spin_until};
use shmring::{Client, Coordinator, CoordinatorConfig, Kind, Overflow, WaitStrategy};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use transport::{
    Api, Ends, PATIENCE, Res, Transport, create_channels, create_fanout_channel, memcpy_bandwidth,
    produce,
};

pub(crate) const OP_PINGPONG: u64 = 1;
pub(crate) const OP_THROUGHPUT: u64 = 2;
pub(crate) const OP_EXIT: u64 = 3;
pub(crate) const OP_FANOUT: u64 = 4;
pub(crate) const OP_MESSAGES: u64 = 5;
pub(crate) const OP_FLOOR: u64 = 6;

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Round-trip latency, then throughput (with the broadcast fan-out).
    All,
    /// Round-trip latency only.
    Pingpong,
    /// Throughput only (with the broadcast fan-out).
    Throughput,
    /// The broadcast fan-out rows only: one producer, two subscriber processes.
    Fanout,
    /// Messages longer than the ring (`--message-size`) through a 1 MiB ring, against the
    /// two-process copy floor.
    Messages,
    /// Round trips of 64-byte frames (shmring-spsc-spin, shmring-mpmc-spin) while the two
    /// channels are resized back and forth, against the same without resizes.
    Resize,
}

/// `shmring bench` options.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// What to measure
    #[arg(value_enum, default_value = "all")]
    mode: Mode,
    /// Frame sizes in bytes, comma-separated (suffixes K, M) [default: 8,64,1024,65536]
    #[arg(long, value_delimiter = ',', value_parser = crate::parse_size)]
    payload: Option<Vec<u64>>,
    /// Round trips per transport and payload in each round [default: 10000; --quick: 2000]
    #[arg(long)]
    iterations: Option<u64>,
    /// Rounds of ping-pong, every transport once per round [default: 5; --quick: 3]
    #[arg(long)]
    rounds: Option<u32>,
    /// Message sizes of the `messages` runs, through a 1 MiB ring (suffixes K, M)
    /// [default: 1M,16M]
    #[arg(long, value_delimiter = ',', value_parser = crate::parse_size)]
    message_size: Option<Vec<u64>>,
    /// Seconds of streaming per throughput measurement [default: 1; --quick: 0.2]
    #[arg(long)]
    duration: Option<f64>,
    /// The CPUs to pin the processes to: this one (the producer of the throughput runs), the
    /// peer, and optionally a third for the second subscriber of the broadcast fan-out
    /// [default: the first two this process may use, and the third if it may use three;
    /// without a third, the two subscribers share the second CPU]
    #[arg(long, value_parser = parse_cpus)]
    cpus: Option<Cpus>,
    /// Transports to compare, comma-separated [default: all]
    #[arg(long, value_enum, value_delimiter = ',')]
    transports: Option<Vec<Transport>>,
    /// A run of under 30 s (fewer round trips, shorter streams)
    #[arg(long)]
    quick: bool,
    /// Pause before each round trip of the sleeping transports (futex-floor, shmring-spsc-park),
    /// so that the echoing side is asleep when the frame comes, in microseconds (keep it above
    /// the futex floor's 20 µs of spinning)
    #[arg(long, default_value = "50")]
    think_us: u64,
    /// Write the results as JSON to FILE
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the latency-by-percentile plot (64-byte frames, or the first payload) to FILE
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

/// `--cpus`: two different CPUs, and optionally a third for the fan-out's second subscriber.
#[derive(Clone, Copy, Debug)]
struct Cpus(usize, usize, Option<usize>);

fn parse_cpus(s: &str) -> Result<Cpus, String> {
    let v: Vec<usize> = s.split(',').filter_map(|c| c.trim().parse().ok()).collect();
    match v[..] {
        [a, b] if a != b => Ok(Cpus(a, b, None)),
        [a, b, c] if a != b && a != c && b != c => Ok(Cpus(a, b, Some(c))),
        _ => Err(format!(
            "{s:?}: give two different CPU numbers, e.g. 0,1 (or three, e.g. 0,1,2, to give \
             the fan-out's second subscriber a CPU of its own)"
        )),
    }
}

/// The options with their defaults applied.
struct Plan {
    mode: Mode,
    payloads: Vec<usize>,
    iterations: u64,
    rounds: u32,
    duration: Duration,
    message_sizes: Vec<usize>,
    cpus: Option<(usize, usize)>,
    /// The CPU of the fan-out's second subscriber: a third one, or the peer's.
    fanout_cpu: Option<usize>,
    transports: Vec<Transport>,
    think: Duration,
}

impl Plan {
    fn of(a: &BenchArgs) -> Res<Plan> {
        let payloads: Vec<usize> = a
            .payload
            .clone()
            .unwrap_or_else(|| vec![8, 64, 1024, 65536])
            .into_iter()
            .map(|p| p as usize)
            .collect();
        if let Some(p) = payloads.iter().find(|&&p| p == 0 || p > 16 << 20) {
            return Err(format!(
                "payload {p}: frames of 1 byte to 16 MiB are measured"
            ));
        }
        let mut transports = a
            .transports
            .clone()
            .unwrap_or_else(|| Transport::ALL.to_vec());
        transports.sort();
        transports.dedup();
        let message_sizes: Vec<usize> = a
            .message_size
            .clone()
            .unwrap_or_else(|| vec![1 << 20, 16 << 20])
            .into_iter()
            .map(|m| m as usize)
            .collect();
        if let Some(m) = message_sizes.iter().find(|&&m| m == 0 || m > 1 << 30) {
            return Err(format!(
                "--message-size {m}: messages of 1 byte to 1 GiB are measured"
            ));
        }
        let duration = a.duration.unwrap_or(if a.quick { 0.2 } else { 1.0 });
        if !(duration.is_finite() && duration > 0.0) {
            return Err(format!(
                "--duration {duration} must be a positive number of seconds"
            ));
        }
        if a.svg.is_some()
            && matches!(
                a.mode,
                Mode::Throughput | Mode::Fanout | Mode::Messages | Mode::Resize
            )
        {
            return Err("--svg plots round trips: run `pingpong` or `all` with it".into());
        }
        let allowed = machine::allowed_cpus();
        let (cpus, third) = match (a.cpus, allowed.as_slice()) {
            (Some(Cpus(x, y, z)), _) => {
                if let Some(c) = [Some(x), Some(y), z]
                    .into_iter()
                    .flatten()
                    .find(|c| !allowed.contains(c))
                {
                    let list: Vec<String> = allowed.iter().map(|c| c.to_string()).collect();
                    return Err(format!(
                        "--cpus: CPU {c} is not available to this process (available: {}); \
                         pick from those",
                        list.join(",")
                    ));
                }
                (Some((x, y)), z)
            }
            // The first two (three) CPUs this process may run on.
            (None, [x, y, rest @ ..]) => (Some((*x, *y)), rest.first().copied()),
            (None, _) => (None, None),
        };
        Ok(Plan {
            mode: a.mode,
            payloads,
            iterations: a
                .iterations
                .unwrap_or(if a.quick { 2000 } else { 10_000 })
                .max(1),
            rounds: a.rounds.unwrap_or(if a.quick { 3 } else { 5 }).max(1),
            duration: Duration::from_secs_f64(duration),
            message_sizes,
            cpus,
            fanout_cpu: third.or(cpus.map(|(_, b)| b)),
            transports,
            think: Duration::from_micros(a.think_us),
        })
    }
}

/// The JSON report (the schema scripts compare runs with).
#[derive(Serialize)]
struct Report {
    machine: Machine,
    pingpong: Vec<PingRow>,
    /// With the ping-pong: what a consumer waiting on its descriptor costs while idle.
    idle_fd: Option<IdleFd>,
    throughput: Vec<ThroughputRow>,
    memcpy_bytes_per_s: f64,
    /// Messages longer than the ring, against the two-process copy floor.
    messages: Vec<MessageRow>,
    /// Round trips while the channels are resized, and without.
    resize: Vec<ResizeRow>,
}

#[derive(Serialize)]
struct ResizeRow {
    transport: &'static str,
    payload: usize,
    /// `steady` (no resize), `moving` (the first round trips after each resize, which carry
    /// the moves) or `resizing` (the others of the runs with resizes).
    cell: &'static str,
    samples: u64,
    /// Resizes made during the cell (each of both channels counts one).
    resizes: u64,
    rtt_ns: Rtt,
}

#[derive(Serialize)]
struct MessageRow {
    transport: &'static str,
    message_bytes: usize,
    ring_bytes: u64,
    messages_per_s: f64,
    bytes_per_s: f64,
    /// bytes_per_s over the copy floor's, same message size, same run.
    of_floor: f64,
}

#[derive(Serialize)]
struct IdleFd {
    seconds: f64,
    cpu_ns: u64,
    wakeups: u64,
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

impl Rtt {
    /// The percentiles of `h`.
    fn of(h: &Histogram<u64>) -> Rtt {
        Rtt {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[derive(Serialize)]
struct ThroughputRow {
    transport: &'static str,
    api: &'static str,
    payload: usize,
    frames_per_s: f64,
    bytes_per_s: f64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds")
}

/// A duration in nanoseconds, in the unit that keeps it short.
fn ns(v: u64) -> String {
    match v {
        0..1000 => format!("{v} ns"),
        1000..10_000 => format!("{:.2} µs", v as f64 / 1e3),
        10_000..1_000_000 => format!("{:.1} µs", v as f64 / 1e3),
        _ => format!("{:.2} ms", v as f64 / 1e6),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Removes the bench's files and stops its peers, also when it fails.
struct Cleanup {
    control: PathBuf,
    dir: PathBuf,
    /// The peers still running (SIGKILL ends a stopped one too).
    peers: Vec<std::process::Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for mut p in self.peers.drain(..) {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = std::fs::remove_file(&self.control);
        let _ = std::fs::remove_dir_all(&self.dir);
        remove_runtime_files(std::process::id());
    }
}

/// Removes what the bench's coordinator kept of its namespace (`bench-<pid>`, the bench's own)
/// in the user's runtime directory: its lock and its record of the channels.
pub(crate) fn remove_runtime_files(pid: u32) {
    for ext in ["lock", "channels"] {
        let _ = std::fs::remove_file(
            shmring::default_socket_path(&format!("bench-{pid}")).with_extension(ext),
        );
    }
}

/// The parent's side of the conversation with a peer.
struct Conversation<'a> {
    /// The peer's command and acknowledgement lines (`Control::lines`).
    cmd: &'a Line,
    ack: &'a Line,
    seq: u64,
    /// The peer process, watched while waiting for it.
    peer: u32,
}

impl Conversation<'_> {
    /// Sends a command and waits until the peer is ready for it (`wait_ready`) or done.
    fn command(&mut self, args: [u64; 6], wait_ready: bool) -> Res<u64> {
        self.seq += 1;
        for (i, a) in args.iter().enumerate() {
            self.cmd.0[i + 1].store(*a, Ordering::Relaxed);
        }
        // Release: the arguments above are visible to a peer that sees the new sequence.
        self.cmd.0[0].store(self.seq, Ordering::Release);
        if wait_ready {
            self.wait(0)?;
        }
        Ok(self.seq)
    }

    /// A failure of the measurement itself, with the peer's end if it ended.
    fn explain(&self, e: String) -> String {
        match machine::exited(self.peer) {
            Some(how) => format!("{e}: the peer process {how}"),
            None => e,
        }
    }

    /// Waits for acknowledgement word `i` (0: ready, 1: done) of the current command: until
    /// it comes, the peer reports an error, the peer process exits, or `PATIENCE` passes.
    fn wait(&self, i: usize) -> Res<()> {
        let deadline = Instant::now() + PATIENCE;
        let ok = loop {
            if spin_until(&self.ack.0[i], self.seq, Duration::from_millis(1)) {
                break true;
            }
            if self.ack.0[1].load(Ordering::Acquire) == self.seq {
                // Done without the acknowledgement asked for: it failed.
                break self.ack.0[i].load(Ordering::Acquire) == self.seq;
            }
            if let Some(how) = machine::exited(self.peer) {
                return Err(format!("the peer process {how} (see its message above)"));
            }
            if Instant::now() > deadline {
                break false;
            }
        };
        if self.ack.0[3].load(Ordering::Relaxed) != 0 {
            return Err("the peer process failed (see its message above)".into());
        }
        if !ok {
            return Err(format!(
                "the peer process (pid {}) did not answer within {PATIENCE:?}: is the machine \
                 overloaded, or is the peer stopped?",
                self.peer
            ));
        }
        Ok(())
    }
}

/// `shmring bench`.
pub fn run(args: &BenchArgs) -> Res<()> {
    let plan = Plan::of(args)?;
    let machine = Machine::this();
    let busy = machine::busy_fraction(Duration::from_millis(300));
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("shmring-bench-{pid}"));
    {
        use std::os::unix::fs::DirBuilderExt;
        // Made here, ours alone: an existing one (another user's) is refused.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| {
                format!(
                    "creating {}: {e} (left by a bench that was killed? remove it)",
                    dir.display()
                )
            })?;
    }
    let control = PathBuf::from(format!("/dev/shm/shmring-bench-{pid}.ctl"));
    interrupt::catch(&control, &dir, pid);
    let mut cleanup = Cleanup {
        control,
        dir: dir.clone(),
        peers: Vec::new(),
    };
    let shared = Shared::map(&cleanup.control, true).map_err(|e| format!("control page: {e}"))?;
    let ctl = shared.control();
    let socket = dir.join("coordinator.sock");
    let coordinator =
        Coordinator::start(CoordinatorConfig::new(&format!("bench-{pid}")).socket(&socket))
            .map_err(|e| format!("starting the coordinator: {e}"))?;
    let client = Client::connect(Some(&socket)).map_err(|e| format!("connecting: {e}"))?;
    for &p in &plan.payloads {
        for kind in [Kind::Spsc, Kind::Mpmc, Kind::Broadcast] {
            create_channels(&client, kind, p)?;
        }
    }
    let mut ends = Ends::parent(client.clone(), &dir)?;
    let start_peer = |cleanup: &mut Cleanup, index: usize, cpu: Option<usize>| -> Res<u32> {
        let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
        let mut peer = std::process::Command::new(exe);
        peer.arg("bench-peer")
            .arg("--control")
            .arg(&cleanup.control)
            .arg("--socket")
            .arg(&socket)
            .arg("--dir")
            .arg(&dir)
            .arg("--index")
            .arg(index.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        if let Some(cpu) = cpu {
            peer.arg("--cpu").arg(cpu.to_string());
        }
        peer.arg("--parent").arg(pid.to_string());
        let child = peer
            .spawn()
            .map_err(|e| format!("starting a peer process: {e}"))?;
        let peer_pid = child.id();
        interrupt::peer_started(peer_pid);
        cleanup.peers.push(child);
        Ok(peer_pid)
    };
    let peer_pid = start_peer(&mut cleanup, 0, plan.cpus.map(|(_, b)| b))?;
    let pinned = plan.cpus.is_some_and(|(a, _)| machine::pin(a));

    say!("shmring bench: {machine}");
    say!(
        "two processes: this one (pid {pid}{}) and its peer (pid {peer_pid}{}); coordinator embedded, no daemon",
        if pinned {
            format!(", CPU {}", plan.cpus.unwrap().0)
        } else {
            ", unpinned".into()
        },
        plan.cpus
            .map_or(String::new(), |(_, b)| format!(", CPU {b}")),
    );
    match busy {
        Some(b) if b > 0.10 => say!(
            "WARNING: the machine was {:.0}% busy before the run: other work disturbs these figures",
            b * 100.0
        ),
        Some(b) => say!("machine idle before the run ({:.0}% busy)", b * 100.0),
        None => say!("could not read /proc/stat to check that the machine is idle"),
    }
    let mut talk = Conversation {
        cmd: &ctl.cmd,
        ack: &ctl.ack,
        seq: 0,
        peer: peer_pid,
    };
    let port = ends.tcp_port();
    let mut report = Report {
        machine: machine.clone(),
        pingpong: Vec::new(),
        idle_fd: None,
        throughput: Vec::new(),
        memcpy_bytes_per_s: 0.0,
        messages: Vec::new(),
        resize: Vec::new(),
    };
    let mut plots: BTreeMap<usize, Vec<(Transport, Histogram<u64>)>> = BTreeMap::new();

    if matches!(plan.mode, Mode::All | Mode::Pingpong) {
        let sleepers: Vec<&str> = plan
            .transports
            .iter()
            .filter(|t| t.sleeps())
            .map(|t| t.name())
            .collect();
        say!(
            "\nping-pong: round trip = send a frame, receive its echo; {} rounds of {} round trips per cell, \
             transports interleaved;\nevery round trip timed (two clock reads, ~40 ns, included){}",
            plan.rounds,
            plan.iterations,
            if sleepers.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} pause {} µs before each round trip so that the echoing side sleeps",
                    sleepers.join(" and "),
                    plan.think.as_micros()
                )
            }
        );
        say!("{}", PINGPONG_LEGEND);
        for &payload in &plan.payloads {
            let mut all: Vec<(Transport, Histogram<u64>)> =
                plan.transports.iter().map(|&t| (t, histogram())).collect();
            let mut p50s: Vec<Vec<f64>> = vec![Vec::new(); plan.transports.len()];
            for _ in 0..plan.rounds {
                for (i, &t) in plan.transports.iter().enumerate() {
                    let mut h = histogram();
                    ctl.floor.0[0].store(0, Ordering::Relaxed);
                    ctl.futex_a.0.store(0, Ordering::Relaxed);
                    ctl.futex_b.0.store(0, Ordering::Relaxed);
                    let think = if t.sleeps() {
                        plan.think
                    } else {
                        Duration::ZERO
                    };
                    // The stream transports connect while the parent accepts: commanded first,
                    // set up here, then waited for.
                    talk.command(
                        [
                            OP_PINGPONG,
                            t.id(),
                            payload as u64,
                            plan.iterations,
                            u64::from(port),
                            0,
                        ],
                        false,
                    )?;
                    ends.prepare(t, payload, port)?;
                    talk.wait(0)?;
                    ends.ping(ctl, t, payload, plan.iterations, think, port, &mut h)
                        .map_err(|e| talk.explain(e))?;
                    talk.wait(1)?;
                    p50s[i].push(h.value_at_quantile(0.5) as f64);
                    all[i]
                        .1
                        .add(&h)
                        .map_err(|e| format!("merging histograms: {e:?}"))?;
                }
            }
            print_pingpong(payload, &plan, &all, &p50s);
            for (t, h) in &all {
                report.pingpong.push(PingRow {
                    transport: t.name(),
                    payload,
                    samples: h.len(),
                    rtt_ns: Rtt::of(h),
                });
            }
            plots.insert(payload, all);
        }
        // As long as a throughput cell: 1 s by default.
        let span = plan.duration;
        let (cpu, wakeups) = transport::idle_fd_cost(span)?;
        say!(
            "idle: a consumer waiting in poll on its descriptor, nothing sent, for {:.1} s used \
             {:.3} ms of CPU ({:.3} ms per second; {wakeups} wake-ups, the rechecks)",
            span.as_secs_f64(),
            cpu.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e3 / span.as_secs_f64()
        );
        report.idle_fd = Some(IdleFd {
            seconds: span.as_secs_f64(),
            cpu_ns: cpu.as_nanos() as u64,
            wakeups,
        });
    }

    report.memcpy_bytes_per_s = memcpy_bandwidth(plan.duration);
    if matches!(plan.mode, Mode::All | Mode::Throughput) {
        say!(
            "\nthroughput: one producer process, one consumer process, {:.1} s per cell; copy: send and recv \
             copy each frame;\nzero-copy: the producer fills each claimed frame in place, the consumer reads \
             every byte in place (drain);\nmemcpy ({} KiB blocks between {} MiB buffers, one core): {:.2} GB/s",
            plan.duration.as_secs_f64(),
            transport::MEMCPY_BLOCK >> 10,
            transport::MEMCPY_SPAN >> 20,
            report.memcpy_bytes_per_s / 1e9
        );
        say!(
            "columns: frames/s and bytes/s the consumer received per second of sending; \
             memcpy: bytes/s against memcpy's bandwidth above"
        );
        say!(
            "{:>9}  {:<14} {:<10} {:>12} {:>11} {:>10}",
            "payload",
            "transport",
            "api",
            "frames/s",
            "bytes/s",
            "memcpy"
        );
        for &payload in &plan.payloads {
            for (kind, name) in [(Kind::Spsc, "shmring-spsc"), (Kind::Mpmc, "shmring-mpmc")] {
                for api in [Api::Copy, Api::ZeroCopy] {
                    ends.channels(kind, payload, WaitStrategy::Spin)?;
                    talk.command(
                        [
                            OP_THROUGHPUT,
                            u64::from(kind == Kind::Mpmc),
                            payload as u64,
                            0,
                            0,
                            u64::from(api == Api::ZeroCopy),
                        ],
                        true,
                    )?;
                    let start = Instant::now();
                    let sent = {
                        let (tx, _) = ends.channels(kind, payload, WaitStrategy::Spin)?;
                        produce(tx, api, payload, plan.duration).map_err(|e| talk.explain(e))?
                    };
                    talk.wait(1)?;
                    let secs = start.elapsed().as_secs_f64();
                    let received = ctl.ack.0[2].load(Ordering::Relaxed);
                    if received != sent {
                        return Err(format!(
                            "{name} {} {payload} B: sent {sent} frames, the peer received {received}",
                            api.name()
                        ));
                    }
                    let fps = sent as f64 / secs;
                    let bps = fps * payload as f64;
                    say!(
                        "{:>7} B  {:<14} {:<10} {:>12} {:>11} {:>10}",
                        payload,
                        name,
                        api.name(),
                        per_second(fps, ""),
                        per_second(bps, "B"),
                        share(bps / report.memcpy_bytes_per_s)
                    );
                    report.throughput.push(ThroughputRow {
                        transport: name,
                        api: api.name(),
                        payload,
                        frames_per_s: fps,
                        bytes_per_s: bps,
                    });
                }
            }
        }
    }
    if matches!(plan.mode, Mode::All | Mode::Messages) {
        messages(&plan, &client, &dir, ctl, &mut talk, &mut report)?;
    }
    if matches!(plan.mode, Mode::All | Mode::Resize) {
        resize(&plan, &client, &mut ends, ctl, &mut talk, &mut report)?;
    }
    if matches!(plan.mode, Mode::All | Mode::Throughput | Mode::Fanout) {
        let second_pid = start_peer(&mut cleanup, 1, plan.fanout_cpu)?;
        let (cmd, ack) = ctl.lines(1);
        let mut second = Conversation {
            cmd,
            ack,
            seq: 0,
            peer: second_pid,
        };
        fanout(
            &plan,
            &client,
            &mut ends,
            [&mut talk, &mut second],
            &mut report,
        )?;
        second.command([OP_EXIT, 0, 0, 0, 0, 0], false)?;
        second.wait(1)?;
    }
    talk.command([OP_EXIT, 0, 0, 0, 0, 0], false)?;
    talk.wait(1)?;
    for mut p in cleanup.peers.drain(..) {
        let _ = p.wait();
    }
    drop(ends);
    drop(client);
    coordinator.stop();

    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).expect("the report serialises");
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        say!("\nwrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        let payload = if plots.contains_key(&64) {
            Some(64)
        } else {
            plots.keys().next().copied()
        };
        let Some(payload) = payload else {
            return Err("--svg needs the ping-pong measurement".into());
        };
        let series: Vec<(&str, &Histogram<u64>)> =
            plots[&payload].iter().map(|(t, h)| (t.name(), h)).collect();
        let text = svg::plot(
            &format!("shmring round-trip latency by percentile, {payload}-byte frames"),
            &machine.to_string(),
            &series,
        );
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        say!("wrote {}", path.display());
    }
    Ok(())
}

/// Round trips of 64-byte frames while both channels of the pair are resized between 64 KiB
/// and 1 MiB, against the same pair left alone (`steady`), cells interleaved over the rounds.
/// A cell is `RESIZE_CHUNKS` runs of round trips; in a resizing cell, one of the two channels
/// is resized before each run (the resize itself is not timed), and the run's first
/// `MOVING` round trips, which carry the producer's and the consumer's moves to the new
/// segment, are counted apart (`moving`) from the rest (`resizing`). Every round trip must get
/// its echo: a frame lost or repeated would stall the ping-pong or desynchronise it (the
/// receive times out).
fn resize(
    plan: &Plan,
    client: &Client,
    ends: &mut Ends,
    ctl: &shared::Control,
    talk: &mut Conversation<'_>,
    report: &mut Report,
) -> Res<()> {
    const RESIZE_CHUNKS: u64 = 8;
    const MOVING: u64 = 4;
    const PAYLOAD: usize = 64;
    let chunk = (plan.iterations / RESIZE_CHUNKS).max(MOVING + 1);
    say!(
        "\nresize: round trips of {PAYLOAD}-byte frames; one of the pair's two channels resized (64 KiB <-> 1 MiB) \
         before every\n{chunk} round trips: `moving`, the first {MOVING} after each resize (they carry the \
         moves to the new segment), `resizing`,\nthe rest; `steady`: the same runs without resizes; {} rounds, \
         cells interleaved",
        plan.rounds
    );
    say!(
        "{:<18} {:<9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "transport",
        "cell",
        "samples",
        "p50",
        "p99",
        "p99.9",
        "max",
        "resizes",
        "p99.9 x"
    );
    for t in [Transport::ShmringSpscSpin, Transport::ShmringMpmcSpin] {
        let Some((kind, _)) = t.shmring() else {
            continue;
        };
        let names = [
            transport::channel_name(kind, PAYLOAD, "ping"),
            transport::channel_name(kind, PAYLOAD, "pong"),
        ];
        let (mut steady, mut resizing, mut moving) = (histogram(), histogram(), histogram());
        let mut made = [0u64; 2];
        for _ in 0..plan.rounds {
            for busy in [false, true] {
                for c in 0..RESIZE_CHUNKS {
                    if busy {
                        let which = (c % 2) as usize;
                        let capacity = if made[which] % 2 == 0 {
                            1 << 20
                        } else {
                            64 << 10
                        };
                        match client.resize(&names[which], capacity) {
                            Ok(_) => made[which] += 1,
                            // The last one is still under way (cannot be, after a run of
                            // round trips: counted out of `resizes` if it does).
                            Err(shmring::Error::Busy(_)) => {}
                            Err(e) => return Err(format!("resizing {}: {e}", names[which])),
                        }
                    }
                    for (n, first) in [(MOVING, true), (chunk - MOVING, false)] {
                        let into = match (busy, first) {
                            (false, _) => &mut steady,
                            (true, true) => &mut moving,
                            (true, false) => &mut resizing,
                        };
                        talk.command([OP_PINGPONG, t.id(), PAYLOAD as u64, n, 0, 0], false)?;
                        ends.prepare(t, PAYLOAD, 0)?;
                        talk.wait(0)?;
                        let mut h = histogram();
                        ends.ping(ctl, t, PAYLOAD, n, Duration::ZERO, 0, &mut h)
                            .map_err(|e| talk.explain(e))?;
                        talk.wait(1)?;
                        into.add(&h)
                            .map_err(|e| format!("merging histograms: {e:?}"))?;
                    }
                }
            }
        }
        let made = made[0] + made[1];
        let p999 = steady.value_at_quantile(0.999).max(1) as f64;
        for (cell, h, n) in [
            ("steady", &steady, 0),
            ("resizing", &resizing, made),
            ("moving", &moving, made),
        ] {
            say!(
                "{:<18} {:<9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8.2}x",
                t.name(),
                cell,
                h.len(),
                ns(h.value_at_quantile(0.5)),
                ns(h.value_at_quantile(0.99)),
                ns(h.value_at_quantile(0.999)),
                ns(h.max()),
                n,
                h.value_at_quantile(0.999) as f64 / p999
            );
            report.resize.push(ResizeRow {
                transport: t.name(),
                payload: PAYLOAD,
                cell,
                samples: h.len(),
                resizes: n,
                rtt_ns: Rtt::of(h),
            });
        }
    }
    say!(
        "every round trip got its echo: no frame lost or repeated across {} resizes",
        report
            .resize
            .iter()
            .filter(|r| r.cell == "resizing")
            .map(|r| r.resizes)
            .sum::<u64>()
    );
    Ok(())
}

/// What the columns of a ping-pong table mean.
const PINGPONG_LEGEND: &str = "\
columns: p50 to max: round-trip time percentiles over all rounds; / atomic-floor and \
/ futex-floor: this row's p50\nover that floor's (the median of the rounds' ratios; spinning \
transports and the kernel's against atomic-floor, the ones\nthat sleep against futex-floor); \
uds / this: uds's p50 over this row's (above 1x: faster than a Unix socket)";

/// Why a shmring row is slower than a Unix socket (`uds / this` of `r`, below 1).
fn slower_than_uds_note(t: Transport, r: f64, think: Duration, futex_p50: Option<u64>) -> String {
    if t.sleeps() {
        format!(
            "note: {} is slower than uds here ({r:.1}x): it pauses {} µs before each round trip \
             so that the echoing side is asleep, and each round trip then pays a futex \
             wake-up\n(futex-floor is the least one costs{}); uds runs without the pause. On a \
             busy machine the wake-up, not the ring, sets its time: compare it with futex-floor",
            t.name(),
            think.as_micros(),
            futex_p50
                .map(|p| format!(": {} at p50", ns(p)))
                .unwrap_or_default()
        )
    } else {
        format!(
            "note: {} is slower than uds here ({r:.1}x): a spinning handle needs a CPU of its \
             own, and the machine gave it less (see how busy it was, above)",
            t.name()
        )
    }
}

/// A rate in the unit that fits it: `75.7 M/s`, `352 k/s`, `23.1 GB/s` (`unit` "B": bytes).
fn per_second(v: f64, unit: &str) -> String {
    let (div, prefix) = [(1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")]
        .into_iter()
        .find(|&(d, _)| v >= d)
        .unwrap_or((1.0, ""));
    let x = v / div;
    let digits = if x >= 100.0 || prefix.is_empty() {
        0
    } else if x >= 10.0 {
        1
    } else {
        2
    };
    format!("{x:.digits$} {prefix}{unit}/s")
}

/// A ratio as a percentage with the digits that show it: `2.3%`, `94%`, `154%`.
fn share(r: f64) -> String {
    let p = r * 100.0;
    if p >= 10.0 {
        format!("{p:.0}%")
    } else if p >= 0.1 {
        format!("{p:.1}%")
    } else {
        format!("{p:.2}%")
    }
}

/// A frame count, short.
fn count(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.2} M", n as f64 / 1e6)
    } else {
        n.to_string()
    }
}

/// A peer stopped (SIGSTOP) for one cell, and continued (SIGCONT) when this is dropped, also
/// when the cell fails. A bench that is interrupted or fails meanwhile kills it (`Cleanup`,
/// `interrupt`): SIGKILL ends a stopped process.
struct Stopped(u32);

impl Stopped {
    /// Stops `pid` and waits until it is stopped.
    fn new(pid: u32) -> Res<Stopped> {
        use nix::sys::signal::{Signal, kill};
        kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGSTOP)
            .map_err(|e| format!("stopping the subscriber (pid {pid}): {e}"))?;
        let stopped = Stopped(pid);
        let deadline = Instant::now() + PATIENCE;
        while !machine::stopped(pid) {
            if Instant::now() > deadline {
                return Err(format!(
                    "the subscriber (pid {pid}) did not stop within {PATIENCE:?}"
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(stopped)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        let _ = kill(nix::unistd::Pid::from_raw(self.0 as i32), Signal::SIGCONT);
    }
}

/// The broadcast fan-out: this process publishes on a broadcast channel, the two peers
/// subscribe to it, one cell per row, for each payload:
///
/// * `shmring-broadcast-fanout-block`: overflow `block`, both subscribers running;
/// * `shmring-broadcast-fanout-drop-oldest`: overflow `drop-oldest`, both running; and
///   `shmring-broadcast-fanout-drop-oldest-received`: what the subscriber that received fewer
///   frames received, per second of the same cell (the rest it missed);
/// * `shmring-broadcast-drop-oldest-stopped`: overflow `drop-oldest`, the second subscriber
///   stopped (SIGSTOP) from before the first frame to after the last: what a stopped
///   subscriber costs the producer, against the row above.
///
/// `frames_per_s` is what the producer sent per second of sending (copies, `send`), whoever
/// received it. Each subscriber's frames received plus missed must equal the frames sent, and
/// under `block` none may be missed: a cell where they do not fails the run.
///
/// Placement: the producer has its CPU to itself; the subscribers share the peer's CPU unless
/// there is a third (`Plan::fanout_cpu`). Subscribers that share a CPU wait by yielding it
/// (`WaitStrategy::Yield`), so that one that has caught up lets the other run rather than
/// spinning out its time slice while the producer waits for the other (`block`) or laps it
/// (`drop-oldest`); each on a CPU of its own, they busy-spin. The producer busy-spins.
fn fanout(
    plan: &Plan,
    client: &Client,
    ends: &mut Ends,
    talks: [&mut Conversation; 2],
    report: &mut Report,
) -> Res<()> {
    let shared = match plan.cpus {
        Some((_, b)) => plan.fanout_cpu == Some(b),
        None => true,
    };
    let cpu = |c: Option<usize>| c.map_or("unpinned".to_string(), |c| format!("CPU {c}"));
    say!(
        "\nbroadcast fan-out: one producer process (this one, {}), two subscriber processes (pid {}, {}; \
         pid {}, {}){};\nsend and recv copy each frame, {:.1} s per cell; the subscribers {}; \
         frames/s: frames the producer sent per second of sending;\nreceived + missed: each \
         subscriber's frames of the cell (drop-oldest: a lapped subscriber skips to the oldest \
         intact frame and counts what it skipped)",
        cpu(plan.cpus.map(|(a, _)| a)),
        talks[0].peer,
        cpu(plan.cpus.map(|(_, b)| b)),
        talks[1].peer,
        cpu(plan.fanout_cpu),
        if shared && plan.cpus.is_some() {
            ": three processes on two CPUs, the subscribers share one"
        } else {
            ""
        },
        plan.duration.as_secs_f64(),
        if shared {
            "share a CPU and wait by yielding it, so that one that has caught up lets the other run"
        } else {
            "busy-spin"
        },
    );
    say!(
        "{:>9}  {:<46} {:>12} {:>11}   received + missed, per subscriber",
        "payload",
        "transport",
        "frames/s",
        "bytes/s"
    );
    // Subscribers wait a cell's length longer than usual: one stays stopped that long.
    let patience_ms = plan.duration.as_millis() as u64;
    let [first, second] = talks;
    for &payload in &plan.payloads {
        for overflow in [Overflow::Block, Overflow::DropOldest] {
            create_fanout_channel(client, overflow, payload)?;
        }
        let mut running_fps = f64::NAN;
        for (overflow, stop, name) in [
            (Overflow::Block, false, "shmring-broadcast-fanout-block"),
            (
                Overflow::DropOldest,
                false,
                "shmring-broadcast-fanout-drop-oldest",
            ),
            (
                Overflow::DropOldest,
                true,
                "shmring-broadcast-drop-oldest-stopped",
            ),
        ] {
            let cmd = [
                OP_FANOUT,
                u64::from(overflow == Overflow::DropOldest),
                payload as u64,
                patience_ms,
                0,
                u64::from(shared),
            ];
            first.command(cmd, true)?;
            second.command(cmd, true)?;
            let tx = ends.fanout_producer(overflow, payload)?;
            let stopped = if stop {
                Some(Stopped::new(second.peer)?)
            } else {
                None
            };
            let start = Instant::now();
            let sent = produce(tx, Api::Copy, payload, plan.duration)
                .map_err(|e| second.explain(first.explain(e)))?;
            let secs = start.elapsed().as_secs_f64();
            drop(stopped);
            let mut subs = Vec::new();
            for talk in [&*first, &*second] {
                talk.wait(1)?;
                subs.push((
                    talk.ack.0[2].load(Ordering::Relaxed),
                    talk.ack.0[4].load(Ordering::Relaxed),
                ));
            }
            for (i, &(received, missed)) in subs.iter().enumerate() {
                let exact = match overflow {
                    Overflow::Block => received == sent && missed == 0,
                    Overflow::DropOldest => received + missed == sent,
                };
                if !exact {
                    return Err(format!(
                        "{name} {payload} B: the producer sent {sent} frames, subscriber {} \
                         received {received} and missed {missed}",
                        i + 1
                    ));
                }
            }
            let fps = sent as f64 / secs;
            let mut row = |transport: &'static str, fps: f64, note: String| {
                say!(
                    "{:>7} B  {:<46} {:>12} {:>11}   {note}",
                    payload,
                    transport,
                    per_second(fps, ""),
                    per_second(fps * payload as f64, "B"),
                );
                report.throughput.push(ThroughputRow {
                    transport,
                    api: Api::Copy.name(),
                    payload,
                    frames_per_s: fps,
                    bytes_per_s: fps * payload as f64,
                });
            };
            let each: Vec<String> = subs
                .iter()
                .enumerate()
                .map(|(i, &(r, m))| {
                    format!(
                        "{} + {}{}",
                        count(r),
                        count(m),
                        if stop && i == 1 { " (stopped)" } else { "" }
                    )
                })
                .collect();
            let mut note = each.join(", ");
            if stop {
                note += &format!(
                    "; {:.2}x the producer's rate with both running",
                    fps / running_fps
                );
            }
            row(name, fps, note);
            if overflow == Overflow::DropOldest && !stop {
                running_fps = fps;
                let fewest = subs.iter().map(|&(r, _)| r).min().unwrap_or(0);
                row(
                    "shmring-broadcast-fanout-drop-oldest-received",
                    fewest as f64 / secs,
                    "frames the subscriber that received fewer received, per second of the row above".into(),
                );
            }
        }
    }
    Ok(())
}

/// The ring of the messages runs: 1 MiB, in 64 KiB frames (broadcast, MPMC: 16 slots; MPMC
/// messages go through its pool).
const MESSAGE_RING: u64 = 1 << 20;

/// Messages longer than the ring: the two-process copy floor (this process copies a message
/// into a buffer both map, the peer copies it out, in turn), then shmring-spsc and
/// shmring-broadcast (one subscriber) streaming messages of the same size through a 1 MiB ring,
/// and shmring-mpmc passing them through its pool, `send` and `recv` copying each, both sides
/// busy-spinning.
fn messages(
    plan: &Plan,
    client: &Client,
    dir: &Path,
    ctl: &shared::Control,
    talk: &mut Conversation,
    report: &mut Report,
) -> Res<()> {
    say!(
        "\nmessages longer than the ring: one producer process, one consumer process, {:.1} s per cell;\n\
         copy-floor: this process copies each message into a buffer both processes map, the peer copies it out, in turn;\n\
         shmring: send splits each message into records that stream through a {} ring, recv puts it back together\n\
         in the consumer's buffer; of floor: bytes/s over copy-floor's",
        plan.duration.as_secs_f64(),
        shmring::units::format_size_exact(MESSAGE_RING),
    );
    say!(
        "{:>9}  {:<18} {:>12} {:>11} {:>9}",
        "message",
        "transport",
        "messages/s",
        "bytes/s",
        "of floor"
    );
    for &size in &plan.message_sizes {
        let message = vec![0x5au8; size];
        // The floor: a buffer both map, handed back and forth through the floor's line.
        let path = dir.join(format!("floor-{size}"));
        let bulk =
            shared::Bulk::map(&path, size, true).map_err(|e| format!("{}: {e}", path.display()))?;
        ctl.floor.0[0].store(0, Ordering::Relaxed);
        ctl.floor.0[1].store(0, Ordering::Relaxed);
        talk.command([OP_FLOOR, 0, size as u64, 0, 0, 0], true)?;
        let start = Instant::now();
        let mut n = 0u64;
        while n == 0 || start.elapsed() < plan.duration {
            bulk.write_from(&message);
            n += 1;
            ctl.floor.0[0].store(n, Ordering::Release);
            if !spin_until(&ctl.floor.0[1], n, transport::PATIENCE) {
                return Err(talk.explain("the peer stopped copying the floor's buffer".into()));
            }
        }
        let secs = start.elapsed().as_secs_f64();
        ctl.floor.0[0].store(u64::MAX, Ordering::Release);
        talk.wait(1)?;
        drop(bulk);
        let _ = std::fs::remove_file(&path);
        let floor = n as f64 * size as f64 / secs;
        let mut row = |transport: &'static str, mps: f64| {
            let bps = mps * size as f64;
            say!(
                "{:>9}  {:<18} {:>12} {:>11} {:>9}",
                shmring::units::format_size(size as u64),
                transport,
                per_second(mps, ""),
                per_second(bps, "B"),
                share(bps / floor)
            );
            report.messages.push(MessageRow {
                transport,
                message_bytes: size,
                ring_bytes: MESSAGE_RING,
                messages_per_s: mps,
                bytes_per_s: bps,
                of_floor: bps / floor,
            });
        };
        row("copy-floor", n as f64 / secs);
        for (kind, code, name) in [
            (Kind::Spsc, 0, "shmring-spsc"),
            (Kind::Broadcast, 1, "shmring-broadcast"),
            (Kind::Mpmc, 2, "shmring-mpmc"),
        ] {
            let channel = transport::create_message_channel(client, kind, size)?;
            talk.command([OP_MESSAGES, code, size as u64, 0, 0, 0], true)?;
            let mut tx = client
                .producer(&channel)
                .map_err(|e| format!("opening {channel}: {e}"))?;
            tx.set_wait_strategy(WaitStrategy::Spin);
            let start = Instant::now();
            let mut n = 0u64;
            while n == 0 || start.elapsed() < plan.duration {
                tx.send_timeout(&message, transport::PATIENCE)
                    .map_err(|e| talk.explain(format!("sending a message: {e}")))?;
                n += 1;
            }
            let secs = start.elapsed().as_secs_f64();
            tx.send_timeout(&[], transport::PATIENCE)
                .map_err(|e| talk.explain(format!("sending the end: {e}")))?;
            talk.wait(1)?;
            let received = talk.ack.0[2].load(Ordering::Relaxed);
            if received != n {
                return Err(format!(
                    "{name} {size} B messages: sent {n}, the peer received {received} whole"
                ));
            }
            drop(tx);
            client
                .delete(&channel)
                .map_err(|e| format!("deleting {channel}: {e}"))?;
            row(name, n as f64 / secs);
        }
    }
    Ok(())
}

/// Prints one payload's ping-pong: each round's p50 and its ratio to the atomic floor of the
/// same round, then every transport's percentiles over all rounds with the ratios that matter.
fn print_pingpong(
    payload: usize,
    plan: &Plan,
    all: &[(Transport, Histogram<u64>)],
    p50s: &[Vec<f64>],
) {
    let floor = plan
        .transports
        .iter()
        .position(|&t| t == Transport::AtomicFloor);
    let futex = plan
        .transports
        .iter()
        .position(|&t| t == Transport::FutexFloor);
    let uds = plan.transports.iter().position(|&t| t == Transport::Uds);
    say!("\n{payload}-byte frames");
    say!(
        "{:<23}{:>10}{:>10}{:>10}{:>10}{:>10}  {:>15}  {:>14}  {:>11}",
        "",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "/ atomic-floor",
        "/ futex-floor",
        "uds / this"
    );
    let ratio =
        |a: usize, b: usize| median(p50s[a].iter().zip(&p50s[b]).map(|(x, y)| x / y).collect());
    let mut slower_than_uds = Vec::new();
    for (i, (t, h)) in all.iter().enumerate() {
        let cells: String = [0.5, 0.9, 0.99, 0.999]
            .iter()
            .map(|&q| h.value_at_quantile(q))
            .chain([h.max()])
            .map(|v| format!("{:>10}", ns(v)))
            .collect();
        // The ratio of p50s taken round by round, then their median (module docs); the
        // sleeping transports are compared with the futex floor, each in its own column.
        let against = |floor: Option<usize>, here: bool| {
            floor
                .filter(|&r| r != i && here)
                .map(|r| format!("{:.2}x", ratio(i, r)))
                .unwrap_or_default()
        };
        let vs_atomic = against(floor, !t.sleeps());
        let vs_futex = against(futex, t.sleeps());
        let faster = uds
            .filter(|&u| u != i && t.name().starts_with("shmring"))
            .map(|u| {
                let r = ratio(u, i);
                if r < 1.0 {
                    slower_than_uds.push((*t, r));
                }
                format!("{r:.1}x")
            })
            .unwrap_or_default();
        say!(
            "{:<23}{cells}  {vs_atomic:>15}  {vs_futex:>14}  {faster:>11}",
            t.name()
        );
    }
    // A figure below 1x in `uds / this` is explained, not left bare.
    let futex_p50 = futex.map(|f| all[f].1.value_at_quantile(0.5));
    for (t, r) in slower_than_uds {
        say!("{}", slower_than_uds_note(t, r, plan.think, futex_p50));
    }
    // Two shmring transports against each other, round by round as above: a broadcast
    // channel with one subscriber against SPSC, and what a message pool beside the slots costs
    // small frames.
    let at = |t| plan.transports.iter().position(|&x| x == t);
    for (a, b) in [
        (Transport::ShmringBroadcastSpin, Transport::ShmringSpscSpin),
        (Transport::ShmringMpmcPoolSpin, Transport::ShmringMpmcSpin),
    ] {
        let (Some(i), Some(j)) = (at(a), at(b)) else {
            continue;
        };
        let ratios: Vec<f64> = p50s[i].iter().zip(&p50s[j]).map(|(x, y)| x / y).collect();
        let rounds: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        say!(
            "{} / {}, p50: {:.2}x (median of the rounds: {})",
            a.name(),
            b.name(),
            median(ratios.clone()),
            rounds.join(", ")
        );
    }
}

/// `shmring bench-peer` (started by `shmring bench`).
pub fn run_peer(
    control: &Path,
    socket: &Path,
    dir: &Path,
    cpu: Option<usize>,
    parent: u32,
    index: usize,
) -> Res<()> {
    peer::run(control, socket, dir, cpu, parent, index)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found trying the bench as a new user: throughput mixed units ("0.02 M", "0.00x").
    #[test]
    fn rates_and_shares_take_the_unit_that_fits_the_row() {
        assert_eq!(per_second(75.72e6, ""), "75.7 M/s");
        assert_eq!(per_second(0.35e6, ""), "350 k/s");
        assert_eq!(per_second(3.5e3, ""), "3.50 k/s");
        assert_eq!(per_second(12.0, ""), "12 /s");
        assert_eq!(per_second(23.13e9, "B"), "23.1 GB/s");
        assert_eq!(per_second(0.61e9, "B"), "610 MB/s");
        assert_eq!(share(0.94), "94%");
        assert_eq!(share(1.54), "154%");
        assert_eq!(share(0.023), "2.3%");
        assert_eq!(share(0.0004), "0.04%");
        assert!(
            PINGPONG_LEGEND.contains("/ atomic-floor") && PINGPONG_LEGEND.contains("uds / this")
        );
    }

    /// Found trying the bench as a new user: `shmring-spsc-park` at 0.7x in `uds / this` was
    /// a bare number.
    #[test]
    fn a_park_row_slower_than_uds_is_explained() {
        let note = slower_than_uds_note(
            Transport::ShmringSpscPark,
            0.7,
            Duration::from_micros(50),
            Some(6960),
        );
        assert!(
            note.contains("shmring-spsc-park is slower than uds here (0.7x)")
                && note.contains("pauses 50 µs")
                && note.contains("futex-floor is the least one costs: 6.96 µs at p50"),
            "{note}"
        );
    }
}

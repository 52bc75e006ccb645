//! The stream-processing demo: ticks hash-partitioned over 4 partitions, a consumer group of
//! processors computing per-symbol sliding-window averages (window 60 ticks, shift 10) and
//! flagging anomalies, with exactly-once state through checkpoints, while processors are
//! killed and replaced; at the end every output is compared with a single-process reference.
//!
//!     cargo run --release --bin stream -- [--ticks N] [--symbols S] [--rate TICKS_PER_S]
//!         [--processors P] [--kill-every 2s] [--python] [--seed N] [--quiet]
//!     cargo run --release --bin stream -- bench [--ticks N] [--kills K]
//!
//! Runs a coordinator on a thread of this process (no daemon needed) and, as processes of
//! their own: a tick generator (`stream generate ...`), P processors (`stream process ...`)
//! and with `--python` one more processor written in Python (examples/stream/processor.py,
//! through the C ABI). Processors send their outputs to an MPMC channel that this process
//! collects; an output produced again by a processor's successor (the work after the last
//! checkpoint of a killed one is redone) is the same output, and is counted once.

mod bench;
mod logic;

use logic::{Generator, Output, PARTITIONS, State, Tick};
use shmring::{ChannelConfig, Client, Coordinator, CoordinatorConfig, Error};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TICKS: &str = "ticks";
const RESULTS: &str = "results";
const GROUP: &str = "processors";

struct Options {
    ticks: u64,
    symbols: u32,
    rate: u64,
    processors: usize,
    kill_every: Option<Duration>,
    python: bool,
    seed: u64,
    quiet: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = match s.strip_suffix("ms") {
        Some(n) => (n, 1e-3),
        None => (s.strip_suffix('s').unwrap_or(s), 1.0),
    };
    n.parse::<f64>()
        .ok()
        .filter(|v| *v > 0.0)
        .map(|v| Duration::from_secs_f64(v * unit))
        .ok_or_else(|| format!("{s:?} is not a duration (e.g. 2s, 500ms)"))
}

fn options(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        ticks: 2_000_000,
        symbols: 40,
        rate: 400_000,
        processors: 3,
        kill_every: None,
        python: false,
        seed: 7,
        quiet: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        let num = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{a}: {v:?} is not a number"))
        };
        match a.as_str() {
            "--ticks" => o.ticks = num(value()?)?,
            "--symbols" => o.symbols = num(value()?)?.clamp(1, 10_000) as u32,
            "--rate" => o.rate = num(value()?)?,
            "--processors" => o.processors = num(value()?)?.clamp(1, 12) as usize,
            "--kill-every" => o.kill_every = Some(parse_duration(&value()?)?),
            "--seed" => o.seed = num(value()?)?,
            "--python" => o.python = true,
            "--quiet" => o.quiet = true,
            "-h" | "--help" => {
                return Err("usage: stream [--ticks N] [--symbols S] [--rate TICKS_PER_S (0: as fast as it goes)] \
                     [--processors P] [--kill-every 2s] [--python] [--seed N] [--quiet]"
                    .into());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(o)
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("generate") => generate(&args[1..]),
        Some("process") => process(),
        Some("bench") => bench::run(&args[1..]),
        Some("bench-produce") => bench::produce(&args[1..]),
        Some("bench-member") => bench::member(),
        _ => match options(&args) {
            Ok(o) => supervise(o),
            Err(e) => {
                eprintln!("{e}");
                return std::process::ExitCode::from(2);
            }
        },
    };
    match r {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("stream: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// `stream generate TICKS SYMBOLS SEED RATE`: sends the ticks, keyed by symbol, then finishes.
fn generate(args: &[String]) -> Res<bool> {
    let n = |i: usize| -> u64 { args.get(i).and_then(|a| a.parse().ok()).unwrap_or(0) };
    let (ticks, symbols, seed, rate) = (n(0), n(1) as u32, n(2), n(3));
    let client = Client::connect(None)?;
    let mut tx = client.keyed_producer(TICKS)?;
    let mut g = Generator::new(symbols, seed);
    let start = Instant::now();
    for i in 0..ticks {
        if rate > 0 && i % 1000 == 0 {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let t = g.tick();
        tx.send_keyed(Tick::key(t.symbol).as_bytes(), &t.encode())?;
    }
    tx.finish()?;
    Ok(true)
}

/// `stream process`: a member of the processors' group, exactly-once through checkpoints.
fn process() -> Res<bool> {
    let client = Client::connect(None)?;
    let mut group = client.group_consumer(TICKS, GROUP)?;
    group.set_checkpointed(true)?;
    let mut out = client.producer(RESULTS)?;
    let mut states: HashMap<u32, State> = HashMap::new();
    let mut dirty: HashMap<u32, u32> = HashMap::new();
    let mut buf = [0u8; 64];
    loop {
        let r = group.recv_timeout(&mut buf, Duration::from_millis(20));
        // Partitions given to another member: their state here is stale.
        for p in group.revoked() {
            states.remove(&p);
            dirty.remove(&p);
        }
        match r {
            Ok(r) => {
                let p = r.partition;
                let tick = Tick::decode(&buf[..r.len]).ok_or("a short tick")?;
                let state = states.entry(p).or_insert_with(|| {
                    group
                        .checkpoint(p)
                        .and_then(State::decode)
                        .unwrap_or_default()
                });
                let mut failed = None;
                state.apply(&tick, &mut |o: Output| {
                    if let Err(e) = out.send(&o.encode()) {
                        failed.get_or_insert(e);
                    }
                });
                if let Some(e) = failed {
                    return Err(e.into());
                }
                let d = dirty.entry(p).or_default();
                *d += 1;
                if *d >= 512 {
                    commit(&mut group, &states, &mut dirty, p)?;
                }
            }
            Err(Error::TimedOut(_)) => {
                let ps: Vec<u32> = dirty.keys().copied().collect();
                for p in ps {
                    commit(&mut group, &states, &mut dirty, p)?;
                }
            }
            Err(Error::Closed(_)) => {
                let ps: Vec<u32> = dirty.keys().copied().collect();
                for p in ps {
                    commit(&mut group, &states, &mut dirty, p)?;
                }
                return Ok(true);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Commits partition `p`'s state (its outputs were sent first).
fn commit(
    group: &mut shmring::GroupConsumer,
    states: &HashMap<u32, State>,
    dirty: &mut HashMap<u32, u32>,
    p: u32,
) -> Res<()> {
    dirty.remove(&p);
    let Some(s) = states.get(&p) else {
        return Ok(());
    };
    match group.commit(p, &s.encode()) {
        // Taken by another member meanwhile: it redoes this work from the last checkpoint.
        Ok(()) | Err(Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A processor process, and what it is.
struct Proc {
    child: Child,
    python: bool,
}

fn spawn_processor(me: &Path, socket: &Path, python: bool) -> Res<Proc> {
    let child = if python {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or("no repository root")?;
        let mut c = Command::new("python3");
        c.arg(root.join("examples/stream/processor.py"))
            .env("PYTHONPATH", root.join("python"));
        if let Some(lib) = library(me) {
            c.env("SHMRING_LIB", lib);
        }
        c
    } else {
        let mut c = Command::new(me);
        c.arg("process");
        c
    }
    .env("SHMRING_SOCKET", socket)
    .stdin(Stdio::null())
    .spawn()?;
    Ok(Proc { child, python })
}

/// This build's `libshmring.so` (built beside this program: shmring-ffi is a dependency).
fn library(me: &Path) -> Option<PathBuf> {
    let dir = me.parent()?;
    [dir.join("deps/libshmring.so"), dir.join("libshmring.so")]
        .into_iter()
        .find(|p| p.is_file())
}

/// Collected outputs by (kind, symbol, index), with how many came twice.
#[derive(Default)]
struct Collected {
    outputs: BTreeMap<(u32, u32, u64), f64>,
    repeated: u64,
    conflicting: u64,
}

impl Collected {
    fn drain(&mut self, rx: &mut shmring::Consumer) -> Res<()> {
        let mut buf = [0u8; 64];
        loop {
            match rx.try_recv(&mut buf) {
                Ok(r) => {
                    let o = Output::decode(&buf[..r.len]).ok_or("a short output")?;
                    match self.outputs.insert((o.kind, o.symbol, o.index), o.value) {
                        None => {}
                        Some(v) if v.to_bits() == o.value.to_bits() => self.repeated += 1,
                        Some(_) => self.conflicting += 1,
                    }
                }
                Err(Error::WouldBlock(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn supervise(o: Options) -> Res<bool> {
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("shmring-stream-{pid}"));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("coordinator.sock");
    let coordinator =
        Coordinator::start(CoordinatorConfig::new(&format!("stream-{pid}")).socket(&socket))?;
    let r = run(&o, &socket);
    coordinator.stop();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn run(o: &Options, socket: &Path) -> Res<bool> {
    let client = Client::connect(Some(socket))?;
    // A partition's checkpoint holds the windows of every symbol that hashes to it.
    let checkpoint = (o.symbols as u64 * 512 + 4096).min(64 << 20) as u32;
    client.create(
        TICKS,
        &ChannelConfig::spsc()
            .capacity(1 << 20)
            .max_frame_size(64)
            .partitions(PARTITIONS)
            .checkpoint_size(checkpoint),
    )?;
    client.create(
        RESULTS,
        &ChannelConfig::mpmc()
            .capacity(64 << 10)
            .max_frame_size(64)
            .max_producers(32)
            .max_consumers(1),
    )?;
    let mut rx = client.consumer(RESULTS)?;
    let me = std::env::current_exe()?;
    let mut procs = Vec::new();
    for _ in 0..o.processors {
        procs.push(spawn_processor(&me, socket, false)?);
    }
    if o.python {
        procs.push(spawn_processor(&me, socket, true)?);
    }
    let mut generator = Command::new(&me)
        .args([
            "generate",
            &o.ticks.to_string(),
            &o.symbols.to_string(),
            &o.seed.to_string(),
            &o.rate.to_string(),
        ])
        .env("SHMRING_SOCKET", socket)
        .stdin(Stdio::null())
        .spawn()?;
    let mut got = Collected::default();
    let start = Instant::now();
    let mut next_kill = o.kill_every.map(|k| start + k);
    let mut next_print = start;
    let mut kills = 0u32;
    let mut rng = o.seed ^ 0x5851_f42d_4c95_7f2d;
    let mut generated = false;
    let tty = !o.quiet && is_tty();
    let mut printed_lines = 0;
    loop {
        got.drain(&mut rx)?;
        if !generated && let Some(status) = generator.try_wait()? {
            if !status.success() {
                return Err(format!("the generator failed: {status}").into());
            }
            generated = true;
        }
        // Processors that ended (their partitions' stream finished) or failed.
        let mut i = 0;
        while i < procs.len() {
            if let Some(status) = procs[i].child.try_wait()? {
                if !status.success() {
                    return Err(format!("a processor failed: {status}").into());
                }
                procs.remove(i);
            } else {
                i += 1;
            }
        }
        let stats = client.stats(TICKS)?;
        let drained = stats.partitions.iter().all(|p| p.depth == 0);
        if generated && drained && procs.is_empty() {
            break;
        }
        if generated && !drained && procs.is_empty() {
            // Every processor ended, but a partition still holds ticks: one more takes them.
            procs.push(spawn_processor(&me, socket, false)?);
        }
        if let Some(at) = next_kill
            && Instant::now() >= at
            && !generated
            && !procs.is_empty()
        {
            rng = rng
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let victim = (rng >> 33) as usize % procs.len();
            let mut p = procs.remove(victim);
            let _ = p.child.kill();
            let _ = p.child.wait();
            kills += 1;
            procs.push(spawn_processor(&me, socket, p.python)?);
            next_kill = o.kill_every.map(|k| at + k);
        }
        if !o.quiet && Instant::now() >= next_print {
            printed_lines = table(&stats, &got, kills, start, tty, printed_lines)?;
            next_print += Duration::from_millis(500);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    got.drain(&mut rx)?;
    let secs = start.elapsed().as_secs_f64();
    let stats = client.stats(TICKS)?;
    if !o.quiet {
        table(&stats, &got, kills, start, tty, printed_lines)?;
    }
    // The reference: the same ticks through one state per partition, in one process.
    let mut reference: BTreeMap<(u32, u32, u64), f64> = BTreeMap::new();
    let mut states: HashMap<u32, State> = HashMap::new();
    let mut g = Generator::new(o.symbols, o.seed);
    for _ in 0..o.ticks {
        let t = g.tick();
        let p = shmring::partition_of(Tick::key(t.symbol).as_bytes(), PARTITIONS);
        states.entry(p).or_default().apply(&t, &mut |out: Output| {
            reference.insert((out.kind, out.symbol, out.index), out.value);
        });
    }
    let same = reference.len() == got.outputs.len()
        && reference
            .iter()
            .zip(&got.outputs)
            .all(|((k1, v1), (k2, v2))| k1 == k2 && v1.to_bits() == v2.to_bits())
        && got.conflicting == 0;
    let windows = got.outputs.keys().filter(|k| k.0 == 1).count();
    let anomalies = got.outputs.len() - windows;
    println!(
        "{} ticks of {} symbols in {secs:.2} s ({:.0} ticks/s), {} processors killed and replaced; \
         {windows} windows and {anomalies} anomalies ({} outputs produced again after a kill or a rebalance, \
         counted once); {} redelivered ticks",
        o.ticks,
        o.symbols,
        o.ticks as f64 / secs,
        kills,
        got.repeated,
        stats.redelivered
    );
    if same {
        println!("identical to the reference: every window and anomaly of a single-process run");
    } else {
        let missing = reference
            .keys()
            .filter(|k| !got.outputs.contains_key(k))
            .count();
        let extra = got
            .outputs
            .keys()
            .filter(|k| !reference.contains_key(k))
            .count();
        println!(
            "DIFFERENT from the reference: {missing} outputs missing, {extra} extra, {} conflicting",
            got.conflicting
        );
    }
    Ok(same)
}

fn is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal()
}

/// Prints the live table (over the previous one on a terminal); returns its line count.
fn table(
    s: &shmring::ChannelStats,
    got: &Collected,
    kills: u32,
    start: Instant,
    tty: bool,
    previous: usize,
) -> Res<usize> {
    let mut out = std::io::stdout().lock();
    if tty && previous > 0 {
        write!(out, "\x1b[{previous}A")?;
    }
    let windows = got.outputs.keys().filter(|k| k.0 == 1).count();
    let mut lines = vec![format!(
        "t={:>5.1}s  ticks in {:>10} ({:>9.0}/s)  windows {:>8}  anomalies {:>5}  repeated {:>6}  kills {:>3}  members {}",
        start.elapsed().as_secs_f64(),
        s.frames_in,
        s.rate_in,
        windows,
        got.outputs.len() - windows,
        got.repeated,
        kills,
        s.group.as_ref().map_or(0, |g| g.1.len())
    )];
    for p in &s.partitions {
        lines.push(format!(
            "  partition {}  depth {:>8} B  in {:>10}  out {:>10}  checkpoints {:>6}  owner {}",
            p.index,
            p.depth,
            p.frames_in,
            p.frames_out,
            p.checkpoints,
            p.owner
                .map_or("-".into(), |(m, pid)| format!("member {m} (pid {pid})"))
        ));
    }
    for l in &lines {
        if tty {
            writeln!(out, "\x1b[2K{l}")?;
        } else {
            writeln!(out, "{l}")?;
        }
    }
    out.flush()?;
    Ok(lines.len())
}

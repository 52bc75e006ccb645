//! `shmring-bridge-bench`: the bridges between two hosts, against Zenoh's own pub/sub between
//! the same hosts, in one run; and the processes the two-namespace test starts (`role ...`).
//!
//! `shmring-bridge-bench run` needs root: it makes two network namespaces joined by a veth
//! pair (see `testbed`) and removes them at the end.

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use shmring::units::parse_size;
use shmring::{ChannelConfig, Client, Coordinator, CoordinatorConfig, FrameFlags};
use shmring_bridge::testbed::{self, ADDR_A, Hosts};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use zenoh::Wait;
use zenoh::qos::CongestionControl;

#[derive(Parser, Debug)]
#[command(name = "shmring-bridge-bench")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Throughput of 64 B and 64 KiB frames, and the round trip, through the bridges and
    /// through Zenoh alone, across a veth pair between two network namespaces (root only)
    Run {
        /// Frames per throughput run of 64 B frames (64 KiB runs send a sixteenth)
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// Round trips per latency run
        #[arg(long, default_value_t = 20_000)]
        round_trips: u64,
        /// Rounds: each scenario runs this many times, interleaved; medians are reported
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Run only the throughput or only the round-trip part
        #[arg(long)]
        only: Option<String>,
        /// Arguments added to every exporter's (e.g. "--spin-us 0")
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        export_args: String,
    },
    /// One process of a scenario (started by `run` and by the tests)
    #[command(subcommand)]
    Role(Role),
}

#[derive(Subcommand, Debug)]
enum Role {
    /// A coordinator on `socket`, until killed
    Coordinator {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        namespace: String,
    },
    /// Produce `count` checkable frames (sizes from `min` to `max`), then finish the channel
    Produce {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        channel: String,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "8", value_parser = parse_size)]
        min: u64,
        #[arg(long, default_value = "8", value_parser = parse_size)]
        max: u64,
        /// Create the channel (SPSC) with this capacity if it does not exist
        #[arg(long, value_parser = parse_size)]
        capacity: Option<u64>,
        /// Only the sequence number changes from frame to frame (a throughput run: filling
        /// each frame's bytes would be most of the cost)
        #[arg(long)]
        plain: bool,
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Consume and check the frames `produce` sent until the channel ends
    Consume {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        channel: String,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Stop receiving for `pause-ms` after this many frames
        #[arg(long)]
        pause_after: Option<u64>,
        #[arg(long, default_value_t = 2000)]
        pause_ms: u64,
        /// Frames received so far, rewritten every 10 000
        #[arg(long)]
        progress: Option<PathBuf>,
        /// Check the sequence numbers only (frames sent with `produce --plain`)
        #[arg(long)]
        plain: bool,
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Zenoh alone: publish `count` samples of `size` bytes once a subscriber says it is ready
    Zpub {
        #[arg(long)]
        connect: Vec<String>,
        #[arg(long)]
        listen: Vec<String>,
        #[arg(long)]
        key: String,
        #[arg(long)]
        count: u64,
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    /// Zenoh alone: receive `count` samples, report the rate
    Zsub {
        #[arg(long)]
        connect: Vec<String>,
        #[arg(long)]
        listen: Vec<String>,
        #[arg(long)]
        key: String,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        report: PathBuf,
    },
    /// Round trips: send on `out`, wait for the echo on `in` (shmring channels, or Zenoh keys
    /// with --zenoh)
    Ping {
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long)]
        connect: Vec<String>,
        #[arg(long)]
        listen: Vec<String>,
        #[arg(long)]
        zenoh: bool,
        #[arg(long = "out")]
        out_: String,
        #[arg(long = "in")]
        in_: String,
        #[arg(long)]
        count: u64,
        #[arg(long, value_parser = parse_size)]
        size: u64,
        #[arg(long)]
        report: PathBuf,
    },
    /// Echo what comes on `in` to `out`
    Pong {
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long)]
        connect: Vec<String>,
        #[arg(long)]
        listen: Vec<String>,
        #[arg(long)]
        zenoh: bool,
        #[arg(long = "in")]
        in_: String,
        #[arg(long = "out")]
        out_: String,
        #[arg(long)]
        count: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let r = match args.command {
        Cmd::Run {
            frames,
            round_trips,
            rounds,
            only,
            export_args,
        } => run(frames, round_trips, rounds, only.as_deref(), &export_args),
        Cmd::Role(role) => play(role),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmring-bridge-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The frame `seq` of a checkable stream: its length, and byte `i`.
pub fn frame_len(seed: u64, seq: u64, min: u64, max: u64) -> usize {
    let mut x = seed ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (min + x % (max - min + 1)) as usize
}

fn fill(buf: &mut [u8], seed: u64, seq: u64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in buf[8..].iter_mut().enumerate() {
        *b = (seq as usize * 31 + i * 7 + seed as usize) as u8;
    }
}

fn check(frame: &[u8], seed: u64, count: u64) -> Result<u64, String> {
    if frame.len() < 8 {
        return Err(format!("a frame of {} bytes", frame.len()));
    }
    let seq = u64::from_le_bytes(frame[..8].try_into().unwrap());
    if seq >= count {
        return Err(format!("sequence number {seq} out of range"));
    }
    for (i, b) in frame[8..].iter().enumerate() {
        if *b != (seq as usize * 31 + i * 7 + seed as usize) as u8 {
            return Err(format!("frame {seq}: byte {} damaged", i + 8));
        }
    }
    Ok(seq)
}

fn write_report(path: &Path, v: serde_json::Value) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, v.to_string()).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

fn session(connect: Vec<String>, listen: Vec<String>) -> Result<zenoh::Session, String> {
    shmring_bridge::session::open(&shmring_bridge::Endpoints { connect, listen })
        .map_err(|e| e.to_string())
}

fn play(role: Role) -> Result<(), String> {
    let err = |e: shmring::Error| e.to_string();
    match role {
        Role::Coordinator { socket, namespace } => {
            let _c = Coordinator::start(CoordinatorConfig::new(&namespace).socket(&socket))
                .map_err(err)?;
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Role::Produce {
            socket,
            channel,
            count,
            seed,
            min,
            max,
            capacity,
            plain,
            report,
        } => {
            let client = Client::connect(Some(&socket)).map_err(err)?;
            if let Some(cap) = capacity {
                let mut c = ChannelConfig::spsc();
                c.capacity = cap;
                c.max_frame_size = (max.max(8) as u32).max(c.max_frame_size.min(cap as u32 / 4));
                match client.create(&channel, &c) {
                    Ok(_) | Err(shmring::Error::AlreadyExists(_)) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            let mut p = client.producer(&channel).map_err(err)?;
            let mut buf = vec![0u8; max.max(8) as usize];
            let (mut max_wait, start) = (Duration::ZERO, Instant::now());
            for seq in 0..count {
                let len = frame_len(seed, seq, min.max(8), max.max(8));
                if plain {
                    buf[..8].copy_from_slice(&seq.to_le_bytes());
                } else {
                    fill(&mut buf[..len], seed, seq);
                }
                let t = Instant::now();
                p.send(&buf[..len]).map_err(err)?;
                max_wait = max_wait.max(t.elapsed());
            }
            let elapsed = start.elapsed();
            p.finish().map_err(err)?;
            if let Some(r) = report {
                write_report(
                    &r,
                    serde_json::json!({
                        "sent": count,
                        "elapsed_s": elapsed.as_secs_f64(),
                        "longest_send_s": max_wait.as_secs_f64(),
                    }),
                )?;
            }
            Ok(())
        }
        Role::Consume {
            socket,
            channel,
            count,
            seed,
            pause_after,
            pause_ms,
            progress,
            plain,
            report,
        } => {
            let client = Client::connect(Some(&socket)).map_err(err)?;
            // The importer may create the channel a moment after this starts.
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut c = loop {
                match client.consumer(&channel) {
                    Ok(c) => break c,
                    Err(shmring::Error::NotFound(_)) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => return Err(e.to_string()),
                }
            };
            let mut buf = vec![0u8; c.max_message_size()];
            let (mut expected, mut received, mut duplicates, mut flagged) =
                (0u64, 0u64, 0u64, 0u64);
            let mut first: Option<Instant> = None;
            let mut paused = false;
            loop {
                let r = match c.recv(&mut buf) {
                    Ok(r) => r,
                    Err(shmring::Error::Closed(_)) => break,
                    Err(e) => return Err(e.to_string()),
                };
                first.get_or_insert_with(Instant::now);
                received += 1;
                let redelivered = r.flags.contains(FrameFlags::REDELIVERED);
                flagged += u64::from(redelivered);
                let seq = if plain {
                    check(&buf[..r.len.min(8)], seed, count)?
                } else {
                    check(&buf[..r.len], seed, count)?
                };
                if seq == expected {
                    expected += 1;
                } else if seq < expected && redelivered {
                    duplicates += 1;
                } else if seq < expected {
                    return Err(format!(
                        "frame {seq} came again after {} without the redelivered flag",
                        expected - 1
                    ));
                } else {
                    return Err(format!(
                        "frame {seq} came after {}: frames {expected}..{seq} are missing",
                        expected as i64 - 1
                    ));
                }
                if !paused && pause_after.is_some_and(|k| expected >= k) {
                    paused = true;
                    std::thread::sleep(Duration::from_millis(pause_ms));
                }
                if let Some(p) = &progress
                    && received.is_multiple_of(10_000)
                {
                    write_report(p, serde_json::json!(expected))?;
                }
            }
            let elapsed = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
            if let Some(r) = report {
                write_report(
                    &r,
                    serde_json::json!({
                        "in_order": expected,
                        "received": received,
                        "duplicates": duplicates,
                        "flagged": flagged,
                        "elapsed_s": elapsed,
                    }),
                )?;
            }
            if expected != count {
                return Err(format!(
                    "the stream ended after {expected} of {count} frames"
                ));
            }
            Ok(())
        }
        Role::Zpub {
            connect,
            listen,
            key,
            count,
            size,
        } => {
            let s = session(connect, listen)?;
            let ready = s
                .declare_subscriber(format!("{key}/ready"))
                .wait()
                .map_err(|e| e.to_string())?;
            ready.recv().map_err(|e| e.to_string())?;
            let p = s
                .declare_publisher(key)
                .congestion_control(CongestionControl::Block)
                .wait()
                .map_err(|e| e.to_string())?;
            let buf = vec![7u8; size as usize];
            for _ in 0..count {
                p.put(buf.clone()).wait().map_err(|e| e.to_string())?;
            }
            // Let the last samples leave before the session closes.
            std::thread::sleep(Duration::from_secs(2));
            Ok(())
        }
        Role::Zsub {
            connect,
            listen,
            key,
            count,
            report,
        } => {
            let s = session(connect, listen)?;
            let sub = s
                .declare_subscriber(key.clone())
                .with(zenoh::handlers::FifoChannel::new(1024))
                .wait()
                .map_err(|e| e.to_string())?;
            let ready = s
                .declare_publisher(format!("{key}/ready"))
                .wait()
                .map_err(|e| e.to_string())?;
            let first = loop {
                ready.put(vec![1u8]).wait().map_err(|e| e.to_string())?;
                if let Some(x) = sub
                    .recv_timeout(Duration::from_millis(100))
                    .map_err(|e| e.to_string())?
                {
                    break x;
                }
            };
            let start = Instant::now();
            let mut bytes = first.payload().len() as u64;
            for _ in 1..count {
                let x = sub.recv().map_err(|e| e.to_string())?;
                bytes += x.payload().len() as u64;
            }
            write_report(
                &report,
                serde_json::json!({
                    "received": count, "bytes": bytes, "elapsed_s": start.elapsed().as_secs_f64()
                }),
            )
        }
        Role::Ping {
            socket,
            connect,
            listen,
            zenoh,
            out_,
            in_,
            count,
            size,
            report,
        } => {
            let mut hist = Histogram::<u64>::new(3).unwrap();
            let buf = vec![1u8; size as usize];
            let warmup = count / 10;
            if zenoh {
                let s = session(connect, listen)?;
                let sub = s
                    .declare_subscriber(in_)
                    .wait()
                    .map_err(|e| e.to_string())?;
                let p = s
                    .declare_publisher(out_)
                    .congestion_control(CongestionControl::Block)
                    .express(true)
                    .wait()
                    .map_err(|e| e.to_string())?;
                // The first answer says the echo is up.
                loop {
                    p.put(buf.clone()).wait().map_err(|e| e.to_string())?;
                    if sub
                        .recv_timeout(Duration::from_millis(100))
                        .map_err(|e| e.to_string())?
                        .is_some()
                    {
                        break;
                    }
                }
                while sub.try_recv().map_err(|e| e.to_string())?.is_some() {}
                for i in 0..count + warmup {
                    let t = Instant::now();
                    p.put(buf.clone()).wait().map_err(|e| e.to_string())?;
                    sub.recv().map_err(|e| e.to_string())?;
                    if i >= warmup {
                        hist.record(t.elapsed().as_nanos() as u64).unwrap();
                    }
                }
            } else {
                let client = Client::connect(socket.as_deref()).map_err(err)?;
                let mut tx = client.producer(&out_).map_err(err)?;
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut rx = loop {
                    match client.consumer(&in_) {
                        Ok(c) => break c,
                        Err(shmring::Error::NotFound(_)) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                };
                let mut back = vec![0u8; size.max(64) as usize];
                for i in 0..count + warmup {
                    let t = Instant::now();
                    tx.send(&buf).map_err(err)?;
                    rx.recv(&mut back).map_err(err)?;
                    if i >= warmup {
                        hist.record(t.elapsed().as_nanos() as u64).unwrap();
                    }
                }
                tx.finish().map_err(err)?;
            }
            write_report(
                &report,
                serde_json::json!({
                    "p50_us": hist.value_at_quantile(0.5) as f64 / 1e3,
                    "p99_us": hist.value_at_quantile(0.99) as f64 / 1e3,
                    "max_us": hist.max() as f64 / 1e3,
                }),
            )
        }
        Role::Pong {
            socket,
            connect,
            listen,
            zenoh,
            in_,
            out_,
            count,
        } => {
            if zenoh {
                let s = session(connect, listen)?;
                let sub = s
                    .declare_subscriber(in_)
                    .wait()
                    .map_err(|e| e.to_string())?;
                let p = s
                    .declare_publisher(out_)
                    .congestion_control(CongestionControl::Block)
                    .express(true)
                    .wait()
                    .map_err(|e| e.to_string())?;
                loop {
                    let x = sub.recv().map_err(|e| e.to_string())?;
                    p.put(x.payload().clone())
                        .wait()
                        .map_err(|e| e.to_string())?;
                }
            }
            let client = Client::connect(socket.as_deref()).map_err(err)?;
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut rx = loop {
                match client.consumer(&in_) {
                    Ok(c) => break c,
                    Err(shmring::Error::NotFound(_)) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => return Err(e.to_string()),
                }
            };
            let mut tx = client.producer(&out_).map_err(err)?;
            let mut buf = vec![0u8; rx.max_message_size()];
            let _ = count;
            loop {
                match rx.recv(&mut buf) {
                    Ok(r) => tx.send(&buf[..r.len]).map_err(err)?,
                    Err(shmring::Error::Closed(_)) => {
                        tx.finish().map_err(err)?;
                        return Ok(());
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let t = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&t).map_err(|e| format!("{}: {e}", path.display()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The benchmark.
fn run(
    frames: u64,
    round_trips: u64,
    rounds: usize,
    only: Option<&str>,
    export_args: &str,
) -> Result<(), String> {
    let extra: Vec<&str> = export_args.split_whitespace().collect();
    if let Some(why) = testbed::unavailable() {
        return Err(format!("{why}: run the benchmark as root"));
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let bridge = me.with_file_name("shmring-bridge");
    if !bridge.exists() {
        return Err(format!(
            "{} is missing: cargo build --release -p shmring-bridge",
            bridge.display()
        ));
    }
    testbed::clean_up_on_signals();
    let mut hosts = Hosts::new("bench")?;
    let (sock_a, sock_b) = (hosts.path("a.sock"), hosts.path("b.sock"));
    let (a, b) = (hosts.a.clone(), hosts.b.clone());
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let pid = std::process::id();
    hosts.spawn(
        &a,
        "coordinator-a",
        &me,
        &[
            "role",
            "coordinator",
            "--socket",
            &s(&sock_a),
            "--namespace",
            &format!("bench-a-{pid}"),
        ],
    );
    hosts.spawn(
        &b,
        "coordinator-b",
        &me,
        &[
            "role",
            "coordinator",
            "--socket",
            &s(&sock_b),
            "--namespace",
            &format!("bench-b-{pid}"),
        ],
    );
    testbed::wait_for_file(&sock_a, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    testbed::wait_for_file(&sock_b, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let limit = Duration::from_secs(300);
    let mut port = 7447;
    println!(
        "two hosts: network namespaces {a} and {b}, a veth pair ({ADDR_A} and {}), {rounds} rounds interleaved, medians",
        testbed::ADDR_B
    );
    println!();
    println!("throughput, host a -> host b:");
    let sizes: &[u64] = if only == Some("latency") {
        &[]
    } else {
        &[64, 64 << 10]
    };
    for &size in sizes {
        let n = if size > 64 { frames / 16 } else { frames };
        let (mut zenoh_rates, mut bridge_rates) = (vec![], vec![]);
        for round in 0..rounds {
            port += 1;
            let listen = format!("tcp/{ADDR_A}:{port}");
            let key = format!("bench/z{round}/{size}");
            let report = hosts.path(&format!("zsub-{size}-{round}.json"));
            let sub = hosts.spawn(
                &b,
                "zsub",
                &me,
                &[
                    "role",
                    "zsub",
                    "--connect",
                    &listen,
                    "--key",
                    &key,
                    "--count",
                    &n.to_string(),
                    "--report",
                    &s(&report),
                ],
            );
            let publ = hosts.spawn(
                &a,
                "zpub",
                &me,
                &[
                    "role",
                    "zpub",
                    "--listen",
                    &listen,
                    "--key",
                    &key,
                    "--count",
                    &n.to_string(),
                    "--size",
                    &size.to_string(),
                ],
            );
            hosts.wait(sub, limit)?;
            hosts.kill(publ);
            let r = read_json(&report)?;
            zenoh_rates.push(n as f64 / r["elapsed_s"].as_f64().unwrap());

            port += 1;
            let listen = format!("tcp/{ADDR_A}:{port}");
            let channel = format!("t{round}-{size}");
            let key = format!("bench/b{round}/{size}");
            let report = hosts.path(&format!("consume-{size}-{round}.json"));
            let cap = if size > 64 { "8M" } else { "4M" };
            let prod = hosts.spawn(
                &a,
                "produce",
                &me,
                &[
                    "role",
                    "produce",
                    "--socket",
                    &s(&sock_a),
                    "--channel",
                    &channel,
                    "--count",
                    &n.to_string(),
                    "--min",
                    &size.to_string(),
                    "--max",
                    &size.to_string(),
                    "--capacity",
                    cap,
                ],
            );
            // The channel exists once the producer created it.
            std::thread::sleep(Duration::from_millis(300));
            let sock_a_s = s(&sock_a);
            let mut args = vec![
                "--socket",
                &sock_a_s,
                "export",
                "--channel",
                &channel,
                "--key",
                &key,
                "--listen",
                &listen,
            ];
            args.extend(&extra);
            let exp = hosts.spawn(&a, "export", &bridge, &args);
            let imp = hosts.spawn(
                &b,
                "import",
                &bridge,
                &[
                    "--socket",
                    &s(&sock_b),
                    "import",
                    "--key",
                    &key,
                    "--channel",
                    &channel,
                    "--connect",
                    &listen,
                    "--capacity",
                    cap,
                ],
            );
            let cons = hosts.spawn(
                &b,
                "consume",
                &me,
                &[
                    "role",
                    "consume",
                    "--socket",
                    &s(&sock_b),
                    "--channel",
                    &channel,
                    "--count",
                    &n.to_string(),
                    "--report",
                    &s(&report),
                ],
            );
            for (i, what) in [
                (cons, "consumer"),
                (prod, "producer"),
                (imp, "importer"),
                (exp, "exporter"),
            ] {
                let st = hosts.wait(i, limit)?;
                if !st.success() {
                    return Err(format!("the {what} failed ({st})\n{}", hosts.logs()));
                }
            }
            let r = read_json(&report)?;
            bridge_rates.push(n as f64 / r["elapsed_s"].as_f64().unwrap());
        }
        let (z, br) = (median(zenoh_rates.clone()), median(bridge_rates.clone()));
        let mb = |r: f64| r * size as f64 / 1e6;
        println!(
            "  {:>6} B frames: zenoh pub/sub {:>9.0} frames/s ({:>6.0} MB/s)   bridges {:>9.0} frames/s ({:>6.0} MB/s)   bridges/zenoh {:.2}x   (rounds: zenoh {:?}, bridges {:?})",
            size,
            z,
            mb(z),
            br,
            mb(br),
            br / z,
            zenoh_rates
                .iter()
                .map(|r| r.round() as u64)
                .collect::<Vec<_>>(),
            bridge_rates
                .iter()
                .map(|r| r.round() as u64)
                .collect::<Vec<_>>(),
        );
    }
    if only == Some("throughput") {
        return Ok(());
    }
    println!();
    println!("round trip, 64 B, host a -> host b -> host a ({round_trips} round trips):");
    let (mut z50, mut z99, mut b50, mut b99) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        port += 1;
        let listen = format!("tcp/{ADDR_A}:{port}");
        let report = hosts.path(&format!("zping-{round}.json"));
        let (ping, pong) = (format!("rt/z{round}/ping"), format!("rt/z{round}/pong"));
        let po = hosts.spawn(
            &b,
            "zpong",
            &me,
            &[
                "role",
                "pong",
                "--zenoh",
                "--connect",
                &listen,
                "--in",
                &ping,
                "--out",
                &pong,
                "--count",
                "0",
            ],
        );
        let pi = hosts.spawn(
            &a,
            "zping",
            &me,
            &[
                "role",
                "ping",
                "--zenoh",
                "--listen",
                &listen,
                "--out",
                &ping,
                "--in",
                &pong,
                "--count",
                &round_trips.to_string(),
                "--size",
                "64",
                "--report",
                &s(&report),
            ],
        );
        hosts.wait(pi, limit)?;
        hosts.kill(po);
        let r = read_json(&report)?;
        z50.push(r["p50_us"].as_f64().unwrap());
        z99.push(r["p99_us"].as_f64().unwrap());

        // shmring ping on a: channel ping-out exported to b's ping-in; b's pong-out exported
        // back to a's pong-in.
        port += 1;
        let listen = format!("tcp/{ADDR_A}:{port}");
        // Zenoh peers do not route between other peers: each exporter listens, its importer
        // connects to it.
        let listen_b = format!("tcp/{}:{port}", testbed::ADDR_B);
        let report = hosts.path(&format!("ping-{round}.json"));
        let c = |x: &str| format!("r{round}-{x}");
        let client_a = Client::connect(Some(&sock_a)).map_err(|e| e.to_string())?;
        let client_b = Client::connect(Some(&sock_b)).map_err(|e| e.to_string())?;
        let mut cfg = ChannelConfig::spsc();
        cfg.capacity = 1 << 20;
        client_a
            .create(&c("ping"), &cfg)
            .map_err(|e| e.to_string())?;
        client_b
            .create(&c("pong"), &cfg)
            .map_err(|e| e.to_string())?;
        let mut procs = vec![];
        let (sa, sb) = (s(&sock_a), s(&sock_b));
        let (ping_c, pong_c, ping_k, pong_k) = (c("ping"), c("pong"), c("k-ping"), c("k-pong"));
        for (ns, sock, what, args) in [
            (
                &a,
                &sa,
                "export",
                [
                    "export",
                    "--channel",
                    &ping_c,
                    "--key",
                    &ping_k,
                    "--listen",
                    &listen,
                ],
            ),
            (
                &b,
                &sb,
                "import",
                [
                    "import",
                    "--key",
                    &ping_k,
                    "--channel",
                    &ping_c,
                    "--connect",
                    &listen,
                ],
            ),
            (
                &b,
                &sb,
                "export",
                [
                    "export",
                    "--channel",
                    &pong_c,
                    "--key",
                    &pong_k,
                    "--listen",
                    &listen_b,
                ],
            ),
            (
                &a,
                &sa,
                "import",
                [
                    "import",
                    "--key",
                    &pong_k,
                    "--channel",
                    &pong_c,
                    "--connect",
                    &listen_b,
                ],
            ),
        ] {
            let mut all: Vec<&str> = vec!["--socket", sock];
            all.extend(args);
            if what == "export" {
                all.extend(&extra);
            }
            procs.push(hosts.spawn(ns, what, &bridge, &all));
        }
        let po = hosts.spawn(
            &b,
            "pong",
            &me,
            &[
                "role",
                "pong",
                "--socket",
                &s(&sock_b),
                "--in",
                &c("ping"),
                "--out",
                &c("pong"),
                "--count",
                "0",
            ],
        );
        let pi = hosts.spawn(
            &a,
            "ping",
            &me,
            &[
                "role",
                "ping",
                "--socket",
                &s(&sock_a),
                "--out",
                &c("ping"),
                "--in",
                &c("pong"),
                "--count",
                &round_trips.to_string(),
                "--size",
                "64",
                "--report",
                &s(&report),
            ],
        );
        let st = hosts.wait(pi, limit)?;
        if !st.success() {
            return Err(format!("ping failed ({st})\n{}", hosts.logs()));
        }
        // The finished ping channel ends the chain: pong finishes its channel, and every
        // bridge ends once its stream did.
        hosts.wait(po, limit)?;
        for p in procs {
            hosts.wait(p, limit)?;
        }
        let r = read_json(&report)?;
        b50.push(r["p50_us"].as_f64().unwrap());
        b99.push(r["p99_us"].as_f64().unwrap());
    }
    let (z50, z99, b50, b99) = (median(z50), median(z99), median(b50), median(b99));
    println!("  zenoh pub/sub:  p50 {z50:>7.1} us   p99 {z99:>7.1} us");
    println!("  through bridges: p50 {b50:>7.1} us   p99 {b99:>7.1} us");
    println!(
        "  added by the four bridges: p50 {:>7.1} us   p99 {:>7.1} us  ({:.2}x and {:.2}x zenoh's)",
        b50 - z50,
        b99 - z99,
        b50 / z50,
        b99 / z99
    );
    Ok(())
}

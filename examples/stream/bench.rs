//! `stream bench`: what the demo's design costs and how fast it recovers.
//!
//! * Keyed throughput: one producer process sends 64-byte ticks of 100 keys over 4
//!   partitions; this process, the group's one member, receives them (2 processes). Beside it,
//!   in the same run, the original design's approach: Python `multiprocessing.Queue`, one per
//!   partition, a producer process and 4 processor processes (`mpqueue.py`).
//! * Rebalance after a SIGKILL: two member processes share the partitions while ticks flow; one
//!   is killed, and the time from the kill until every partition it held is assigned to the
//!   survivor and delivers frames again is measured, over `--kills` kills.

use shmring::{ChannelConfig, Client, Coordinator, CoordinatorConfig, Error};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const KEYS: usize = 100;

fn keys() -> Vec<Vec<u8>> {
    (0..KEYS)
        .map(|k| format!("SYM{k:03}").into_bytes())
        .collect()
}

fn config() -> ChannelConfig {
    ChannelConfig::spsc()
        .capacity(1 << 20)
        .max_frame_size(64)
        .partitions(4)
}

/// `stream bench-produce TICKS [plain]`: 64-byte ticks, keys in turn, then the end of the
/// stream; `plain`: the same frames through one SPSC channel, without keys.
pub fn produce(args: &[String]) -> Res<bool> {
    let ticks: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(0);
    let client = Client::connect(None)?;
    if args.get(1).map(String::as_str) == Some("plain") {
        let mut tx = client.producer("plain")?;
        tx.set_wait_strategy(shmring::WaitStrategy::Spin);
        let mut frame = [0u8; 64];
        for i in 0..ticks {
            frame[..8].copy_from_slice(&i.to_le_bytes());
            tx.send(&frame)?;
        }
        tx.finish()?;
        return Ok(true);
    }
    let mut tx = client.keyed_producer("bench")?;
    tx.set_wait_strategy(shmring::WaitStrategy::Spin);
    let keys = keys();
    let mut frame = [0u8; 64];
    for i in 0..ticks {
        frame[..8].copy_from_slice(&i.to_le_bytes());
        tx.send_keyed(&keys[i as usize % KEYS], &frame)?;
    }
    tx.finish()?;
    Ok(true)
}

/// `stream bench-member`: a group member that receives until the stream ends.
pub fn member() -> Res<bool> {
    let client = Client::connect(None)?;
    let mut g = client.group_consumer("bench", "bench")?;
    let mut buf = [0u8; 64];
    loop {
        match g.recv_timeout(&mut buf, Duration::from_millis(50)) {
            Ok(_) | Err(Error::TimedOut(_)) => {}
            Err(Error::Closed(_)) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
    }
}

fn start(tag: &str) -> Res<(Coordinator, std::path::PathBuf, Client)> {
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("shmring-stream-bench-{tag}-{pid}"));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("coordinator.sock");
    let coordinator = Coordinator::start(
        CoordinatorConfig::new(&format!("stream-bench-{tag}-{pid}")).socket(&socket),
    )?;
    let client = Client::connect(Some(&socket))?;
    client.create("bench", &config())?;
    Ok((coordinator, socket, client))
}

/// Receives with `recv` until the stream ends; how many frames, and the seconds from the first.
fn receive_all(
    mut recv: impl FnMut(&mut [u8]) -> shmring::Result<shmring::Received>,
) -> Res<(u64, f64)> {
    let mut buf = [0u8; 64];
    let mut got = 0u64;
    let mut first = None;
    loop {
        match recv(&mut buf) {
            Ok(_) => {
                first.get_or_insert_with(Instant::now);
                got += 1;
            }
            Err(Error::WouldBlock(_)) => std::hint::spin_loop(),
            Err(Error::Closed(_)) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok((got, first.map_or(0.0, |f| f.elapsed().as_secs_f64())))
}

fn keyed_throughput(me: &Path, ticks: u64) -> Res<f64> {
    let (coordinator, socket, client) = start("tp")?;
    let mut g = client.group_consumer("bench", "bench")?;
    g.set_wait_strategy(shmring::WaitStrategy::Spin);
    let mut producer = Command::new(me)
        .args(["bench-produce", &ticks.to_string()])
        .env("SHMRING_SOCKET", &socket)
        .stdin(Stdio::null())
        .spawn()?;
    let (got, secs) = receive_all(|buf| g.try_recv(buf))?;
    producer.wait()?;
    drop(g);
    coordinator.stop();
    let _ = std::fs::remove_dir_all(socket.parent().unwrap());
    if got != ticks {
        return Err(format!("received {got} of {ticks} ticks").into());
    }
    Ok(ticks as f64 / secs)
}

/// The same frames through one plain SPSC channel of the same ring size, between the same two
/// processes: what the partitions and the group cost on top of a ring.
fn plain_throughput(me: &Path, ticks: u64) -> Res<f64> {
    let (coordinator, socket, client) = start("pl")?;
    client.create(
        "plain",
        &ChannelConfig::spsc().capacity(1 << 20).max_frame_size(64),
    )?;
    let mut rx = client.consumer("plain")?;
    let mut producer = Command::new(me)
        .args(["bench-produce", &ticks.to_string(), "plain"])
        .env("SHMRING_SOCKET", &socket)
        .stdin(Stdio::null())
        .spawn()?;
    let (got, secs) = receive_all(|buf| rx.try_recv(buf))?;
    producer.wait()?;
    drop(rx);
    coordinator.stop();
    let _ = std::fs::remove_dir_all(socket.parent().unwrap());
    if got != ticks {
        return Err(format!("received {got} of {ticks} frames").into());
    }
    Ok(ticks as f64 / secs)
}

fn mpqueue(ticks: u64) -> Option<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("stream/mpqueue.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(ticks.to_string())
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ticks_per_s="))
        .and_then(|v| v.parse().ok())
}

/// One kill: two members, ticks flowing; returns the time until the victim's partitions flow
/// again under the survivor.
fn rebalance_once(me: &Path) -> Res<Duration> {
    let (coordinator, socket, client) = start("rb")?;
    let spawn = || {
        Command::new(me)
            .arg("bench-member")
            .env("SHMRING_SOCKET", &socket)
            .stdin(Stdio::null())
            .spawn()
    };
    let mut a = spawn()?;
    let mut b = spawn()?;
    let mut tx = client.keyed_producer("bench")?;
    let keys = keys();
    let frame = [0u8; 64];
    let mut i = 0usize;
    let mut send = |tx: &mut shmring::KeyedProducer, n: usize| -> Res<()> {
        for _ in 0..n {
            tx.send_keyed(&keys[i % KEYS], &frame)?;
            i += 1;
        }
        Ok(())
    };
    // Both members hold two partitions and frames flow.
    let settled = Instant::now();
    loop {
        send(&mut tx, 100)?;
        let s = client.stats("bench")?;
        let owners: std::collections::BTreeSet<u32> = s
            .partitions
            .iter()
            .filter_map(|p| p.owner.map(|o| o.1))
            .collect();
        if owners.len() == 2 && s.info.consumers == 4 {
            break;
        }
        if settled.elapsed() > Duration::from_secs(20) {
            return Err("the members never settled".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let victim = a.id();
    let s = client.stats("bench")?;
    let moved: Vec<u32> = s
        .partitions
        .iter()
        .filter(|p| p.owner.map(|o| o.1) == Some(victim))
        .map(|p| p.index)
        .collect();
    let out_before: Vec<u64> = s.partitions.iter().map(|p| p.frames_out).collect();
    let killed = Instant::now();
    a.kill()?;
    a.wait()?;
    let took = loop {
        send(&mut tx, 16)?;
        let s = client.stats("bench")?;
        let flowing = moved.iter().all(|&p| {
            let part = &s.partitions[p as usize];
            part.owner.map(|o| o.1) == Some(b.id()) && part.frames_out > out_before[p as usize]
        });
        if flowing {
            break killed.elapsed();
        }
        if killed.elapsed() > Duration::from_secs(20) {
            return Err("the victim's partitions never flowed again".into());
        }
    };
    tx.finish()?;
    let _ = b.kill();
    let _ = b.wait();
    coordinator.stop();
    let _ = std::fs::remove_dir_all(socket.parent().unwrap());
    Ok(took)
}

/// `stream bench [--ticks N] [--kills K]`.
pub fn run(args: &[String]) -> Res<bool> {
    let mut ticks = 20_000_000u64;
    let mut kills = 10usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().and_then(|v| v.parse::<u64>().ok());
        match (a.as_str(), v) {
            ("--ticks", Some(v)) => ticks = v.max(1),
            ("--kills", Some(v)) => kills = v.max(1) as usize,
            _ => {
                return Err(
                    format!("usage: stream bench [--ticks N] [--kills K] (at {a:?})").into(),
                );
            }
        }
    }
    let me = std::env::current_exe()?;
    println!(
        "keyed throughput: 64-byte ticks of {KEYS} keys over 4 partitions, a producer process and a member process"
    );
    // Interleaved, round by round, so that each ratio compares two runs minutes apart at most
    // (the vCPUs' placement, and so the figures, change from minute to minute on a VM).
    let rounds = 3;
    let mut keyed = Vec::new();
    let mut plain = Vec::new();
    let mut ratios = Vec::new();
    for _ in 0..rounds {
        let k = keyed_throughput(&me, ticks / rounds)?;
        let p = plain_throughput(&me, ticks / rounds)?;
        keyed.push(k);
        plain.push(p);
        ratios.push(k / p);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (shm, plain, ratio) = (median(&mut keyed), median(&mut plain), median(&mut ratios));
    println!(
        "  shmring send_keyed -> group member      {shm:>12.0} ticks/s   (median of {rounds} rounds)"
    );
    println!(
        "  one plain SPSC channel, send -> recv    {plain:>12.0} frames/s  (partitioned: {ratio:.2}x of it, median of the rounds' ratios)"
    );
    let py_ticks = (ticks / 40).clamp(10_000, 500_000);
    match mpqueue(py_ticks) {
        Some(q) => println!(
            "  multiprocessing.Queue, 4 processors     {q:>12.0} ticks/s   (shmring {:.0}x)",
            shm / q
        ),
        None => println!("  multiprocessing.Queue: python3 not available, not measured"),
    }
    println!(
        "rebalance after a SIGKILL: two members, one killed; until its partitions flow again under the other ({kills} kills)"
    );
    let mut times = Vec::new();
    for _ in 0..kills {
        times.push(rebalance_once(&me)?);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "  median {:.2} ms, max {:.2} ms, min {:.2} ms",
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
        ms(times[0])
    );
    Ok(true)
}

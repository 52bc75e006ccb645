//! One producer, two subscriber processes on a broadcast channel: every frame reaches both.
//!
//!     cargo run --release --bin broadcast -- [FRAMES] [block|drop-oldest]
//!
//! Runs a coordinator on a thread of this process (no daemon needed), creates the channel,
//! starts two subscribers (this program again: `broadcast subscribe SOCKET K`), waits until
//! each says it has opened the channel (a subscriber receives what is published after it
//! opened), then publishes FRAMES frames (default 100000) and finishes the stream. Each subscriber
//! checks that its frames are intact and in order, and prints how many it received and missed:
//! none under `block` (the producer waits for the slower subscriber); under `drop-oldest` the
//! producer never waits, and received + missed = FRAMES.

use shmring::{ChannelConfig, Client, Coordinator, CoordinatorConfig, Error, Overflow};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Frame `i`: 8 to 256 bytes, `i` (little-endian) then the bytes `i + j` (examples/c/frames.h).
fn frame(i: u64, buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&i.to_le_bytes());
    buf.extend((8..8 + i * 37 % 249).map(|j| (i + j) as u8));
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("subscribe") {
        return Ok(subscribe(&args[1], &args[2])?);
    }
    let frames: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let overflow = match args.get(1).map(String::as_str) {
        Some("drop-oldest") => Overflow::DropOldest,
        _ => Overflow::Block,
    };

    let pid = std::process::id();
    let socket = std::env::temp_dir().join(format!("shmring-rust-broadcast-{pid}.sock"));
    let coordinator = Coordinator::start(
        CoordinatorConfig::new(&format!("broadcast-example-{pid}")).socket(&socket),
    )?;
    let client = Client::connect(Some(&socket))?;
    let config = ChannelConfig::broadcast()
        .max_frame_size(256)
        .max_consumers(2)
        .overflow(overflow);
    client.create("ticks", &config)?;
    let mut tx = client.producer("ticks")?;

    let me = std::env::current_exe()?;
    let mut subscribers = Vec::new();
    for k in ["1", "2"] {
        let mut child = Command::new(&me)
            .arg("subscribe")
            .arg(&socket)
            .arg(k)
            .stdout(Stdio::piped())
            .spawn()?;
        let out = BufReader::new(child.stdout.take().expect("piped"));
        subscribers.push((child, out));
    }
    // Both subscribers in: a frame published before one opens never reaches it.
    for (_, out) in &mut subscribers {
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim_end() != "subscribed" {
            return Err("a subscriber failed to open the channel".into());
        }
    }

    let mut buf = Vec::new();
    for i in 0..frames {
        frame(i, &mut buf);
        match overflow {
            Overflow::Block => tx.send(&buf)?, // waits for the slower subscriber
            Overflow::DropOldest => tx.try_send(&buf)?, // never full: never waits
        }
    }
    tx.finish()?; // the end: each subscriber receives what is left, then `Closed`
    println!("producer: published={frames} overflow={overflow}");

    let mut ok = true;
    for (mut child, mut out) in subscribers {
        std::io::copy(&mut out, &mut std::io::stdout())?; // what it printed after "subscribed"
        ok &= child.wait()?.success();
    }
    coordinator.stop();
    println!("{}", if ok { "ok" } else { "a subscriber failed" });
    std::process::exit(if ok { 0 } else { 1 });
}

/// A subscriber: receives until the producer finishes the stream, checking every byte.
fn subscribe(socket: &str, k: &str) -> Result<(), Error> {
    let client = Client::connect(Some(socket.as_ref()))?;
    let mut rx = client.consumer("ticks")?;
    println!("subscribed"); // frames published from now on reach this subscriber
    let mut received = 0u64;
    let mut want = Vec::new();
    loop {
        let f = match rx.read_timeout(Duration::from_secs(10)) {
            Ok(f) => f,                     // released when dropped
            Err(Error::Closed(_)) => break, // finished, and everything received
            Err(e) => return Err(e),
        };
        let i = u64::from_le_bytes(f[..8].try_into().expect("frames have 8 bytes or more"));
        frame(i, &mut want);
        let intact = *f == want[..];
        drop(f);
        // In order, none lost unsaid: the frames before i were all received or missed.
        if !intact || i != received + rx.missed() {
            eprintln!("subscriber {k}: frame {i} out of order or damaged");
            std::process::exit(1);
        }
        received += 1;
    }
    println!("subscriber {k}: received={received} missed={}", rx.missed());
    Ok(())
}

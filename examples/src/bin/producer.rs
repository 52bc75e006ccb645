//! Sends frames over a named shmring channel to `consumer`, started in another terminal.
//!
//!     cargo run --release --bin producer -- [CHANNEL] [COUNT]
//!
//! Creates the channel (replacing a stale one of that name), sends COUNT frames (default 10)
//! and a final empty frame, waits up to 10 s for the consumer to take them, and removes the
//! channel's name.

use shmring::{ChannelConfig, Segment, WaitStrategy};
use std::io::Write;
use std::time::{Duration, Instant};

fn main() -> Result<(), shmring::Error> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "hello".into());
    let count: u32 = args.next().and_then(|c| c.parse().ok()).unwrap_or(10);

    let _ = Segment::unlink(&name); // a channel left by an earlier run
    let seg = Segment::create(
        &name,
        &ChannelConfig::spsc()
            .capacity(64 << 10)
            .max_frame_size(1024),
    )?;
    let mut tx = seg.producer()?;
    tx.set_wait_strategy(WaitStrategy::Park); // sleep, not spin, while the ring is full
    println!("producer: channel {name:?} created; start `consumer {name}` to read it");

    for i in 1..=count {
        if i % 2 == 1 {
            // Copy: the frame is copied into the ring.
            let text = format!("hello #{i} from pid {}", std::process::id());
            tx.send_timeout(text.as_bytes(), Duration::from_secs(30))?;
        } else {
            // Zero-copy: claim the largest frame, write in place, commit what was written.
            let mut claim = tx.claim_timeout(1024, Duration::from_secs(30))?;
            let mut space = &mut claim[..];
            write!(
                space,
                "hello #{i} from pid {} (written in place)",
                std::process::id()
            )
            .expect("fits in 1024 bytes");
            let written = 1024 - space.len();
            claim.commit_len(written)?;
        }
    }
    tx.send(&[])?; // an empty frame says "that's all"

    let deadline = Instant::now() + Duration::from_secs(10);
    while seg.stats().depth > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = seg.stats().depth;
    Segment::unlink(&name)?;
    if left > 0 {
        println!("producer: no consumer took the frames within 10 s; channel removed");
    } else {
        println!("producer: {count} frames delivered; channel removed");
    }
    Ok(())
}

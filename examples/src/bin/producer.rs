//! Sends frames over a channel of a running coordinator to `consumer`, started in another
//! terminal.
//!
//!     cargo run --release --bin shmringd &                # the coordinator
//!     cargo run --release --bin producer -- [CHANNEL] [COUNT]
//!
//! Creates the channel (or uses the one of that name), sends COUNT frames (default 10),
//! finishes the stream (the consumer then gets `Closed`), waits up to 10 s for the consumer to
//! take them, and deletes the channel if it created it. The coordinator is found at `SHMRING_SOCKET`, else at the default socket.

use shmring::{ChannelConfig, Client, Error, WaitStrategy};
use std::io::Write;
use std::time::{Duration, Instant};

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "hello".into());
    let count: u32 = args.next().and_then(|c| c.parse().ok()).unwrap_or(10);

    let client = Client::connect(None)?;
    let config = ChannelConfig::spsc()
        .capacity(64 << 10)
        .max_frame_size(1024);
    let created = match client.create(&name, &config) {
        Ok(_) => true,
        Err(Error::AlreadyExists(_)) => false,
        Err(e) => return Err(e),
    };
    let mut tx = client.producer(&name)?;
    tx.set_wait_strategy(WaitStrategy::Park); // sleep, not spin, while the ring is full
    println!("producer: sending on channel {name:?}; start `consumer {name}` to read it");

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
    tx.finish()?; // "that's all": the consumer receives what was sent, then `Closed`

    let deadline = Instant::now() + Duration::from_secs(10);
    while client.stats(&name)?.info.depth > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = client.stats(&name)?.info.depth;
    if created {
        client.delete(&name)?;
    }
    if left > 0 {
        println!("producer: no consumer took the frames within 10 s");
    } else {
        println!("producer: {count} frames delivered");
    }
    Ok(())
}

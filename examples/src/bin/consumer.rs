//! Reads the frames `producer` sends over a channel of a running coordinator.
//!
//!     cargo run --release --bin consumer -- [CHANNEL]
//!
//! Waits up to 10 s for the channel to exist, then prints every frame until the producer
//! finishes the stream. The coordinator is found at `SHMRING_SOCKET`, else at the default
//! socket.

use shmring::{Client, Error, WaitStrategy};
use std::time::{Duration, Instant};

fn main() -> Result<(), Error> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "hello".into());
    let client = Client::connect(None)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rx = loop {
        match client.consumer(&name) {
            Ok(rx) => break rx,
            Err(Error::NotFound(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => return Err(e),
        }
    };
    rx.set_wait_strategy(WaitStrategy::Park);
    let mut received = 0;
    // Waits for each frame; ends when the producer finishes the stream (`Producer::finish`).
    for frame in &mut rx {
        let frame = frame?;
        received += 1;
        println!(
            "consumer: {}{}",
            String::from_utf8_lossy(&frame),
            if frame.is_redelivered() {
                " (redelivered)"
            } else {
                ""
            }
        );
    }
    println!("consumer: {received} frames");
    Ok(())
}

//! Reads the frames `producer` sends over a channel of a running coordinator.
//!
//!     cargo run --release --bin consumer -- [CHANNEL]
//!
//! Waits up to 10 s for the channel to exist, then prints every frame until an empty one. The
//! coordinator is found at `SHMRING_SOCKET`, else at the default socket.

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
    loop {
        let frame = rx.read_timeout(Duration::from_secs(30))?; // zero-copy view
        if frame.is_empty() {
            break;
        }
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
    } // each frame is released when it goes out of scope
    println!("consumer: {received} frames");
    Ok(())
}

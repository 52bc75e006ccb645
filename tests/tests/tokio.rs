//! The `tokio` feature: one task `select!`s over two channels and a `UnixStream`, fed by other
//! processes (two producers, `tests/c/poll_mix.c produce`, and a shell writing the socket).
//! Every frame and line arrives, in order, on a current-thread runtime: the waiting is the
//! reactor's, with no thread per channel.

use shmring::tokio::{AsyncConsumer, AsyncProducer};
use shmring::{ChannelConfig, Error, set_fd_recheck_interval};
use shmring_tests::{Build, Helper, Place, Watchdog, serial};
use std::os::fd::OwnedFd;
use std::process::Command;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// Frame `i` of `poll_mix produce` (see tests/c/poll_mix.c).
fn expected(i: u64) -> Vec<u8> {
    let len = 8 + ((i * 13) % 57) as usize;
    let mut f = i.to_le_bytes().to_vec();
    f.extend((8..len).map(|j| (i.wrapping_mul(31).wrapping_add(j as u64 * 7)) as u8));
    f
}

#[test]
fn select_over_two_channels_and_a_unix_stream() {
    let _serial = serial();
    let dog = Watchdog::new("tokio select", Duration::from_secs(120));
    // Only a working wake-up makes a descriptor readable in time (no recheck for a minute).
    set_fd_recheck_interval(Duration::from_secs(60));
    let place = Place::new("tokio");
    let client = place.client();
    client
        .create(
            "a",
            &ChannelConfig::spsc().max_frame_size(64).capacity(16 << 10),
        )
        .unwrap();
    client
        .create(
            "b",
            &ChannelConfig::mpmc().max_frame_size(64).capacity(16 << 10),
        )
        .unwrap();
    let exe = shmring_tests::compile("tests/c/poll_mix.c", &place.dir, Build::Plain);
    const FRAMES: u64 = 20_000;
    const LINES: u64 = 200;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (a, b, lines) = rt.block_on(async {
        let mut a = AsyncConsumer::new(client.consumer("a").unwrap()).unwrap();
        let mut b = AsyncConsumer::new(client.consumer("b").unwrap()).unwrap();
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut stream = tokio::io::BufReader::new(tokio::net::UnixStream::from_std(ours).unwrap());
        // The other processes: two producers and a shell writing numbered lines.
        let producers: Vec<Helper> = ["a", "b"]
            .iter()
            .map(|ch| {
                dog.spawn(
                    place
                        .command(&exe)
                        .args(["produce", ch, &FRAMES.to_string()]),
                )
            })
            .collect();
        let writer = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "i=0; while [ $i -lt {LINES} ]; do echo line$i; i=$((i+1)); sleep 0.002; done"
                ),
            ])
            .stdout(OwnedFd::from(theirs))
            .spawn()
            .unwrap();
        let (mut got_a, mut got_b, mut got_lines) = (0u64, 0u64, 0u64);
        let (mut a_done, mut b_done, mut lines_done) = (false, false, false);
        let mut buf = [0u8; 64];
        let mut line = String::new();
        while !(a_done && b_done && lines_done) {
            tokio::select! {
                r = a.recv(&mut buf), if !a_done => match r {
                    Ok(r) => {
                        assert_eq!(&buf[..r.len], &expected(got_a)[..], "channel a, frame {got_a}");
                        got_a += 1;
                    }
                    Err(Error::Closed(_)) => a_done = true,
                    Err(e) => panic!("channel a: {e}"),
                },
                f = b.read(), if !b_done => match f {
                    Ok(f) => {
                        assert_eq!(&f[..], &expected(got_b)[..], "channel b, frame {got_b}");
                        got_b += 1;
                    }
                    Err(Error::Closed(_)) => b_done = true,
                    Err(e) => panic!("channel b: {e}"),
                },
                n = stream.read_line(&mut line), if !lines_done => {
                    if n.unwrap() == 0 {
                        lines_done = true;
                    } else {
                        assert_eq!(line.trim_end(), format!("line{got_lines}"));
                        got_lines += 1;
                        line.clear();
                    }
                }
            }
        }
        for p in producers {
            p.success();
        }
        let mut writer = writer;
        assert!(writer.wait().unwrap().success());
        (got_a, got_b, got_lines)
    });
    dog.check();
    assert_eq!((a, b, lines), (FRAMES, FRAMES, LINES));
}

/// An async producer waits for room in the reactor while an async consumer on the same
/// runtime makes it: a ring of 16 frames carries 10 000, sent alternately copied and claimed.
#[test]
fn an_async_producer_and_consumer_share_one_thread() {
    let _dog = Watchdog::new("tokio one thread", Duration::from_secs(60));
    set_fd_recheck_interval(Duration::from_secs(60));
    let seg =
        shmring::Segment::anonymous(&ChannelConfig::spsc().max_frame_size(64).capacity(16 * 64))
            .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got = rt.block_on(async {
        let mut tx = AsyncProducer::new(seg.producer().unwrap()).unwrap();
        let mut rx = AsyncConsumer::new(seg.consumer().unwrap()).unwrap();
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                let sender = tokio::task::spawn_local(async move {
                    for i in 0u64..10_000 {
                        if i % 2 == 0 {
                            tx.send(&i.to_le_bytes()).await.unwrap();
                        } else {
                            let mut c = tx.claim(8).await.unwrap();
                            c.copy_from_slice(&i.to_le_bytes());
                            c.commit();
                        }
                    }
                    tx.finish().unwrap();
                });
                let mut n = 0u64;
                while let Some(f) = rx.next().await {
                    assert_eq!(f.unwrap().into_vec(), n.to_le_bytes());
                    n += 1;
                }
                sender.await.unwrap();
                n
            })
            .await
    });
    assert_eq!(got, 10_000);
}

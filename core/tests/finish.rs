//! End of stream: `Producer::finish`, `Consumer::producers`, `Consumer::iter`, for every kind
//! of channel, in one process (the coordinator's part, with a producer killed and repaired, is
//! in `tests/tests/end_of_stream.rs`).

#![cfg(not(loom))]

use shmring::{ChannelConfig, Error, Overflow, Segment, WaitStrategy};
use std::time::Duration;

mod common;
use common::watchdog;

const T: Duration = Duration::from_secs(20);

/// One channel of each kind (broadcast under both overflow policies), small enough to fill.
fn kinds() -> [ChannelConfig; 4] {
    [
        ChannelConfig::spsc().capacity(4096).max_frame_size(256),
        ChannelConfig::mpmc()
            .capacity(4096)
            .max_frame_size(256)
            .max_producers(3),
        ChannelConfig::broadcast()
            .capacity(4096)
            .max_frame_size(256),
        ChannelConfig::broadcast()
            .capacity(4096)
            .max_frame_size(256)
            .overflow(Overflow::DropOldest),
    ]
}

fn frame(i: usize) -> Vec<u8> {
    (0..(i % 200)).map(|j| (i * 7 + j * 13) as u8).collect()
}

fn is_closed<T: std::fmt::Debug>(r: shmring::Result<T>) -> bool {
    match r {
        Err(Error::Closed(m)) => {
            assert!(m.contains("finish"), "{m}");
            true
        }
        other => {
            eprintln!("not closed: {other:?}");
            false
        }
    }
}

#[test]
fn consumers_drain_what_was_sent_then_get_closed() {
    let _dog = watchdog("drain then closed", 120);
    for cfg in kinds() {
        let seg = Segment::anonymous(&cfg).unwrap();
        let mut tx = seg.producer().unwrap();
        let mut rx = seg.consumer().unwrap();
        for i in 0..10 {
            tx.send(&frame(i)).unwrap();
        }
        // A batch left staged is published by the finish.
        let mut batch = tx.batch();
        batch.try_send(&frame(10)).unwrap();
        drop(batch);
        tx.finish().unwrap();
        assert_eq!(rx.producers(), 0, "{:?}", cfg.kind);
        let mut buf = [0u8; 256];
        for i in 0..11 {
            let got = rx.try_recv(&mut buf).unwrap();
            assert_eq!(&buf[..got.len], &frame(i)[..], "{:?} frame {i}", cfg.kind);
        }
        // Every form of receive says Closed, and keeps saying it.
        assert!(is_closed(rx.try_recv(&mut buf)), "{:?}", cfg.kind);
        assert!(is_closed(rx.recv(&mut buf)));
        assert!(is_closed(rx.read_timeout(T).map(|f| f.len())));
        assert!(is_closed(rx.read().map(|f| f.len())));
        assert!(is_closed(rx.try_drain(8, |_, _| {})));
        assert!(is_closed(rx.drain(8, |_, _| {})));
    }
}

/// A consumer blocked in a receive (with each wait strategy, parked ones asleep in the futex)
/// wakes up `Closed` when the producer finishes, after receiving what was sent before.
#[test]
fn a_blocked_consumer_wakes_up_closed() {
    let _dog = watchdog("blocked consumer", 120);
    for strategy in [WaitStrategy::Spin, WaitStrategy::Yield, WaitStrategy::Park] {
        for cfg in kinds() {
            let seg = Segment::anonymous(&cfg).unwrap();
            let mut tx = seg.producer().unwrap();
            let mut rx = seg.consumer().unwrap();
            rx.set_wait_strategy(strategy);
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                let end = loop {
                    match rx.read() {
                        Ok(f) => got.push(f.to_vec()),
                        Err(e) => break e,
                    }
                };
                (got, end)
            });
            tx.send(b"one").unwrap();
            // Long enough for a parked reader to be asleep in FUTEX_WAIT.
            std::thread::sleep(Duration::from_millis(50));
            tx.finish().unwrap();
            let (got, end) = reader.join().unwrap();
            assert_eq!(got, [b"one".to_vec()], "{strategy:?} {:?}", cfg.kind);
            assert!(is_closed::<()>(Err(end)), "{strategy:?} {:?}", cfg.kind);
        }
    }
}

/// Frames committed just before the finish are never lost to the `Closed` that follows it:
/// the consumer believes the finish only after loading it with Acquire and finding the ring
/// still empty.
#[test]
fn nothing_sent_before_the_finish_is_lost() {
    let _dog = watchdog("nothing lost", 300);
    for cfg in kinds() {
        for round in 0..200 {
            let seg = Segment::anonymous(&cfg).unwrap();
            let mut tx = seg.producer().unwrap();
            let mut rx = seg.consumer().unwrap();
            tx.set_wait_strategy(WaitStrategy::Spin);
            rx.set_wait_strategy(WaitStrategy::Spin);
            let n = 1 + round % 50;
            let writer = std::thread::spawn(move || {
                for i in 0..n {
                    tx.send(&frame(i)).unwrap();
                }
                tx.finish().unwrap();
            });
            let mut count = 0;
            let mut missed = 0;
            loop {
                match rx.recv(&mut [0u8; 256]) {
                    Ok(_) => count += 1,
                    Err(Error::Closed(_)) => break,
                    Err(e) => panic!("{:?}: {e}", cfg.kind),
                }
                missed = rx.missed();
            }
            writer.join().unwrap();
            assert_eq!(
                count as u64 + missed.max(rx.missed()),
                n as u64,
                "{:?} round {round}",
                cfg.kind
            );
        }
    }
}

/// A producer that attaches after a finish continues the stream; its own finish ends it again.
#[test]
fn a_producer_attaching_after_a_finish_continues_the_stream() {
    let _dog = watchdog("reopen", 60);
    for cfg in kinds() {
        let seg = Segment::anonymous(&cfg).unwrap();
        let mut rx = seg.consumer().unwrap();
        let mut tx = seg.producer().unwrap();
        tx.send(b"first").unwrap();
        tx.finish().unwrap();
        assert_eq!(&*rx.try_read().unwrap(), b"first");
        assert!(is_closed(rx.try_read().map(|f| f.len())));

        let mut tx = seg.producer().unwrap();
        assert_eq!(rx.producers(), 1);
        assert!(matches!(rx.try_read(), Err(Error::WouldBlock(_))));
        tx.send(b"second").unwrap();
        assert_eq!(&*rx.try_read().unwrap(), b"second");
        tx.finish().unwrap();
        assert!(is_closed(rx.read_timeout(T).map(|f| f.len())));
    }
}

/// A producer that is dropped (or, with a coordinator, dies) does not finish the stream; the
/// consumer can tell that nobody is left.
#[test]
fn a_dropped_producer_does_not_finish_the_stream() {
    for cfg in kinds() {
        let seg = Segment::anonymous(&cfg).unwrap();
        let mut rx = seg.consumer().unwrap();
        assert_eq!(rx.producers(), 0);
        let mut tx = seg.producer().unwrap();
        assert_eq!(rx.producers(), 1);
        tx.send(b"x").unwrap();
        drop(tx);
        assert_eq!(rx.producers(), 0);
        assert_eq!(&*rx.try_read().unwrap(), b"x");
        assert!(matches!(rx.try_read(), Err(Error::WouldBlock(_))));
        assert!(matches!(
            rx.read_timeout(Duration::from_millis(30)),
            Err(Error::TimedOut(_))
        ));
    }
}

/// With several MPMC producers, the stream ends with the finish of the last one attached.
#[test]
fn mpmc_ends_with_the_last_producers_finish() {
    let cfg = ChannelConfig::mpmc()
        .capacity(4096)
        .max_frame_size(64)
        .max_producers(3);
    let seg = Segment::anonymous(&cfg).unwrap();
    let mut rx = seg.consumer().unwrap();
    let (mut a, mut b, c) = (
        seg.producer().unwrap(),
        seg.producer().unwrap(),
        seg.producer().unwrap(),
    );
    assert_eq!(rx.producers(), 3);
    a.send(b"a").unwrap();
    a.finish().unwrap();
    assert_eq!(rx.producers(), 2);
    assert_eq!(&*rx.try_read().unwrap(), b"a");
    assert!(matches!(rx.try_read(), Err(Error::WouldBlock(_))));
    drop(c); // leaves without finishing
    assert!(matches!(rx.try_read(), Err(Error::WouldBlock(_))));
    b.send(b"b").unwrap();
    b.finish().unwrap();
    assert_eq!(rx.producers(), 0);
    assert_eq!(&*rx.try_read().unwrap(), b"b");
    assert!(is_closed(rx.try_read().map(|f| f.len())));
    // Every consumer of the channel sees it.
    let mut other = seg.consumer().unwrap();
    assert!(is_closed(other.try_read().map(|f| f.len())));
}

/// A finish racing with a producer's arrival never leaves that producer attached to a finished
/// stream: either its arrival takes the mark back, or the finisher sees it and does.
#[test]
fn a_finish_racing_an_arriving_producer_leaves_the_stream_open() {
    let _dog = watchdog("finish race", 120);
    let cfg = ChannelConfig::mpmc()
        .capacity(1024)
        .max_frame_size(64)
        .max_producers(2);
    let seg = Segment::anonymous(&cfg).unwrap();
    let mut rx = seg.consumer().unwrap();
    for round in 0..2000 {
        let first = seg.producer().unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let (s, b) = (seg.clone(), std::sync::Arc::clone(&barrier));
        let arriving = std::thread::spawn(move || {
            b.wait();
            s.producer().unwrap()
        });
        barrier.wait();
        first.finish().unwrap();
        let second = arriving.join().unwrap();
        assert!(
            matches!(rx.try_read(), Err(Error::WouldBlock(_))),
            "round {round}: a producer is attached, yet the stream reads as finished"
        );
        drop(second);
    }
}

#[test]
fn the_iterator_ends_at_the_finish() {
    let _dog = watchdog("iterator", 60);
    for cfg in kinds() {
        let seg = Segment::anonymous(&cfg).unwrap();
        let mut tx = seg.producer().unwrap();
        let mut rx = seg.consumer().unwrap();
        let writer = std::thread::spawn(move || {
            for i in 0..100 {
                tx.send(&frame(i)).unwrap();
            }
            tx.finish().unwrap();
        });
        let mut got = Vec::new();
        for f in &mut rx {
            let f = f.unwrap();
            assert!(!f.is_redelivered());
            got.push(f.into_vec());
        }
        writer.join().unwrap();
        let sent: Vec<Vec<u8>> = (0..100).map(frame).collect();
        if cfg.overflow == Overflow::Block {
            assert_eq!(got, sent, "{:?}", cfg.kind);
        } else {
            assert_eq!(got.len() as u64 + rx.missed(), 100);
        }
        // Fused: it stays ended.
        let mut it = rx.iter();
        assert!(it.next().is_none());
        assert!(it.next().is_none());
    }
}

/// An error other than `Closed` is yielded once, then the iterator ends.
#[test]
fn the_iterator_yields_an_error_then_ends() {
    use std::os::unix::fs::FileExt;
    let _dog = watchdog("iterator error", 60);
    let name = format!("finish-iter-{}", std::process::id());
    let seg = Segment::create(
        &name,
        &ChannelConfig::spsc().capacity(4096).max_frame_size(256),
    )
    .unwrap();
    let mut rx = seg.consumer().unwrap();
    // A record header no producer writes (every bit set: an unknown type), where the
    // consumer looks for its next frame.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/shmring-{name}"))
        .unwrap();
    file.write_at(&[0xff; 8], seg.geometry().data as u64)
        .unwrap();
    Segment::unlink(&name).unwrap();
    let mut it = rx.iter();
    match it.next() {
        Some(Err(Error::Corrupted(_))) => {}
        other => panic!("{other:?}"),
    }
    assert!(it.next().is_none());
}

//! The public API, in one process: round trips, errors, batches, zero-copy, admission.

#![cfg(not(loom))]

use shmring::{ChannelConfig, Error, Kind, Segment, WaitStrategy};
use std::time::Duration;

fn both() -> [ChannelConfig; 2] {
    [
        ChannelConfig::spsc().capacity(4096).max_frame_size(256),
        ChannelConfig::mpmc().capacity(4096).max_frame_size(256),
    ]
}

fn frame(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 7 + j * 13) as u8).collect()
}

#[test]
fn copy_round_trip_every_size() {
    for cfg in both() {
        let seg = Segment::anonymous(&cfg).unwrap();
        let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
        let mut buf = vec![0u8; 256];
        for len in 0..=256 {
            tx.try_send(&frame(len, len)).unwrap();
            let got = rx.try_recv(&mut buf).unwrap();
            assert_eq!(got.len, len, "{:?}", cfg.kind);
            assert_eq!(&buf[..len], &frame(len, len)[..]);
            assert!(!got.flags.is_redelivered());
        }
        assert!(matches!(
            rx.try_recv(&mut buf),
            Err(Error::WouldBlock("empty"))
        ));
    }
}

#[test]
fn full_ring_would_block_then_drains_in_order() {
    for cfg in both() {
        let seg = Segment::anonymous(&cfg).unwrap();
        let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
        let mut sent = 0;
        loop {
            match tx.try_send(&frame(sent, 100)) {
                Ok(()) => sent += 1,
                Err(Error::WouldBlock("full")) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(sent > 0);
        let e = tx
            .send_timeout(&frame(sent, 100), Duration::from_millis(5))
            .unwrap_err();
        assert!(matches!(e, Error::TimedOut(_)), "{e}");
        assert!(e.is_back_pressure());
        let mut buf = [0u8; 256];
        for i in 0..sent {
            let got = rx.try_recv(&mut buf).unwrap();
            assert_eq!(
                &buf[..got.len],
                &frame(i, 100)[..],
                "frame {i} of {:?}",
                cfg.kind
            );
        }
        assert!(rx.try_recv(&mut buf).is_err());
    }
}

#[test]
fn errors_say_what_is_wrong() {
    for cfg in both() {
        let seg = Segment::anonymous(&cfg).unwrap();
        let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
        match tx.try_send(&[0u8; 257]) {
            Err(Error::FrameTooLarge { len: 257, max: 256 }) => {}
            other => panic!("{other:?}"),
        }
        tx.try_send(&[1u8; 100]).unwrap();
        let mut small = [0u8; 10];
        match rx.try_recv(&mut small) {
            Err(Error::BufferTooSmall {
                needed: 100,
                cap: 10,
            }) => {}
            other => panic!("{other:?}"),
        }
        // The frame was left unread.
        let mut big = [0u8; 100];
        assert_eq!(rx.try_recv(&mut big).unwrap().len, 100);
        let e = rx
            .recv_timeout(&mut big, Duration::from_millis(2))
            .unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
    }
}

#[test]
fn zero_copy_claim_commit_abort() {
    for cfg in both() {
        let seg = Segment::anonymous(&cfg).unwrap();
        let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
        let mut c = tx.try_claim(200).unwrap();
        assert_eq!(c.len(), 200);
        c[..5].copy_from_slice(b"hello");
        c.commit_len(5).unwrap();
        tx.try_claim(50).unwrap().abort();
        drop(tx.try_claim(60).unwrap()); // dropping aborts too
        let c = tx.try_claim(10).unwrap();
        assert!(matches!(c.commit_len(11), Err(Error::InvalidArgument(_))));
        let mut c = tx.try_claim(3).unwrap();
        c.copy_from_slice(b"abc");
        c.commit();
        let f = rx.try_read().unwrap();
        assert_eq!(&*f, b"hello");
        f.release();
        assert_eq!(&*rx.try_read().unwrap(), b"abc");
        assert!(
            rx.try_read().is_err(),
            "aborted claims must not be delivered"
        );
    }
}

#[test]
fn batch_is_invisible_until_published() {
    for cfg in both() {
        let seg = Segment::anonymous(&cfg).unwrap();
        let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
        let mut batch = tx.batch();
        for i in 0..5 {
            batch.try_send(&frame(i, 20 + i)).unwrap();
        }
        let mut c = batch.try_claim(4).unwrap();
        c.copy_from_slice(b"last");
        c.commit();
        assert_eq!(batch.len(), 6);
        if cfg.kind == Kind::Spsc {
            // MPMC slots become visible one by one; SPSC publishes the batch with one store.
            assert!(matches!(
                rx.try_recv(&mut [0u8; 256]),
                Err(Error::WouldBlock(_))
            ));
        }
        batch.publish();
        let mut got = Vec::new();
        let n = rx.try_drain(100, |f, _| got.push(f.to_vec())).unwrap();
        assert_eq!(n, 6);
        for (i, g) in got.iter().take(5).enumerate() {
            assert_eq!(g, &frame(i, 20 + i));
        }
        assert_eq!(got[5], b"last");
        assert!(matches!(
            rx.try_drain(10, |_, _| {}),
            Err(Error::WouldBlock(_))
        ));
    }
}

#[test]
fn send_batch_and_drain_limits() {
    for cfg in both() {
        let seg = Segment::anonymous(&cfg).unwrap();
        let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
        let frames: Vec<Vec<u8>> = (0..10).map(|i| frame(i, 30)).collect();
        assert_eq!(
            tx.try_send_batch(frames.iter().map(|f| &f[..])).unwrap(),
            10
        );
        let mut seen = 0;
        assert_eq!(
            rx.try_drain(4, |f, _| {
                assert_eq!(f, &frames[seen][..]);
                seen += 1;
            })
            .unwrap(),
            4
        );
        assert_eq!(rx.try_drain(100, |_, _| seen += 1).unwrap(), 6);
        assert_eq!(seen, 10);
        tx.send_batch(frames.iter().map(|f| &f[..])).unwrap();
        assert_eq!(
            rx.drain_timeout(100, Duration::from_millis(10), |_, _| {})
                .unwrap(),
            10
        );
    }
}

#[test]
fn try_send_batch_stops_when_full() {
    let seg =
        Segment::anonymous(&ChannelConfig::spsc().capacity(1024).max_frame_size(100)).unwrap();
    let (mut tx, _rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
    let f = [0u8; 100];
    let n = tx.try_send_batch(std::iter::repeat_n(&f[..], 100)).unwrap();
    assert!(n > 0 && n < 100, "{n}");
    assert!(matches!(
        tx.try_send_batch([&f[..]]),
        Err(Error::WouldBlock(_))
    ));
}

#[test]
fn spsc_admits_one_of_each() {
    let seg = Segment::anonymous(&ChannelConfig::spsc()).unwrap();
    let tx = seg.producer().unwrap();
    let rx = seg.consumer().unwrap();
    let e = seg.producer().unwrap_err();
    assert!(matches!(e, Error::Busy(_)), "{e}");
    assert!(
        e.to_string().contains(&std::process::id().to_string()),
        "{e}"
    );
    assert!(matches!(seg.consumer(), Err(Error::Busy(_))));
    drop(tx);
    drop(rx);
    let _tx = seg.producer().unwrap();
    let _rx = seg.consumer().unwrap();
}

#[test]
fn mpmc_admits_up_to_its_maximum() {
    let seg = Segment::anonymous(&ChannelConfig::mpmc().max_producers(3).max_consumers(2)).unwrap();
    let p: Vec<_> = (0..3).map(|_| seg.producer().unwrap()).collect();
    let c: Vec<_> = (0..2).map(|_| seg.consumer().unwrap()).collect();
    assert!(matches!(seg.producer(), Err(Error::Busy(_))));
    assert!(matches!(seg.consumer(), Err(Error::Busy(_))));
    let stats = seg.stats();
    assert_eq!(stats.producers.len(), 3);
    assert_eq!(stats.consumers.len(), 2);
    drop((p, c));
    assert!(seg.stats().producers.is_empty());
}

#[test]
fn stats_count_frames_and_bytes() {
    for cfg in both() {
        let seg = Segment::anonymous(&cfg).unwrap();
        let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
        for i in 0..10 {
            tx.try_send(&frame(i, 10)).unwrap();
        }
        assert!(seg.stats().depth > 0);
        rx.try_drain(4, |_, _| {}).unwrap();
        let mut buf = [0u8; 64];
        while rx.try_recv(&mut buf).is_ok() {}
        let s = seg.stats();
        assert_eq!((s.producers[0].frames, s.producers[0].bytes), (10, 100));
        assert_eq!((s.consumers[0].frames, s.consumers[0].bytes), (10, 100));
        assert_eq!(s.depth, 0);
        assert_eq!(s.producers[0].pid, std::process::id());
    }
}

#[test]
fn named_segments_create_open_unlink() {
    let name = format!("api-test-{}", std::process::id());
    let _ = Segment::unlink(&name);
    let cfg = ChannelConfig::mpmc()
        .capacity(8192)
        .max_frame_size(64)
        .mode(0o640);
    let a = Segment::create(&name, &cfg).unwrap();
    assert!(matches!(
        Segment::create(&name, &cfg),
        Err(Error::AlreadyExists(_))
    ));
    let meta = std::fs::metadata(format!("/dev/shm/shmring-{name}")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o640,
        "mode must not be subject to the umask"
    );
    let b = Segment::open(&name).unwrap();
    assert_eq!(a.geometry(), b.geometry());
    let mut tx = a.producer().unwrap();
    let mut rx = b.consumer().unwrap();
    tx.send(b"across mappings").unwrap();
    assert_eq!(&*rx.read().unwrap(), b"across mappings");
    Segment::unlink(&name).unwrap();
    assert!(matches!(Segment::open(&name), Err(Error::NotFound(_))));
    // The mappings outlive the name.
    tx.send(b"still works").unwrap();
    assert_eq!(&*rx.read().unwrap(), b"still works");
}

#[test]
fn bad_names_and_configs_are_refused() {
    for name in ["", ".hidden", "a/b", "../x", "sp ace", &"x".repeat(65)] {
        assert!(
            matches!(
                Segment::create(name, &ChannelConfig::spsc()),
                Err(Error::InvalidArgument(_))
            ),
            "{name:?}"
        );
    }
    let e =
        Segment::anonymous(&ChannelConfig::spsc().capacity(1024).max_frame_size(1000)).unwrap_err();
    assert!(e.to_string().contains("at least 2000 bytes"), "{e}");
    assert!(Segment::anonymous(&ChannelConfig::mpmc().max_producers(0)).is_err());
}

#[test]
fn open_refuses_foreign_and_half_made_objects() {
    let pid = std::process::id();
    // Not a shmring segment at all.
    let junk = format!("api-junk-{pid}");
    std::fs::write(format!("/dev/shm/shmring-{junk}"), vec![0xAAu8; 8192]).unwrap();
    let e = Segment::open(&junk).unwrap_err();
    assert!(matches!(e, Error::Corrupted(_)), "{e}");
    // A creator that never finished: zero state, waited for, then reported.
    let half = format!("api-half-{pid}");
    std::fs::write(format!("/dev/shm/shmring-{half}"), vec![0u8; 8192]).unwrap();
    let e = Segment::open_timeout(&half, Duration::from_millis(20)).unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)), "{e}");
    // Empty object (created, not yet sized).
    let empty = format!("api-empty-{pid}");
    std::fs::write(format!("/dev/shm/shmring-{empty}"), b"").unwrap();
    let e = Segment::open_timeout(&empty, Duration::from_millis(20)).unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)), "{e}");
    // A segment of another layout version.
    let other = format!("api-version-{pid}");
    let seg = Segment::create(&other, &ChannelConfig::spsc()).unwrap();
    drop(seg);
    let path = format!("/dev/shm/shmring-{other}");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&99u32.to_ne_bytes());
    std::fs::write(&path, bytes).unwrap();
    let e = Segment::open(&other).unwrap_err();
    assert!(matches!(e, Error::Incompatible(_)), "{e}");
    for n in [junk, half, empty, other] {
        Segment::unlink(&n).unwrap();
    }
}

#[test]
fn threads_exchange_with_every_wait_strategy() {
    for strategy in [WaitStrategy::Spin, WaitStrategy::Yield, WaitStrategy::Park] {
        for cfg in both() {
            let seg = Segment::anonymous(&cfg).unwrap();
            let mut tx = seg.producer().unwrap();
            let mut rx = seg.consumer().unwrap();
            tx.set_wait_strategy(strategy);
            rx.set_wait_strategy(strategy);
            const N: usize = 20_000;
            let t = std::thread::spawn(move || {
                for i in 0..N {
                    tx.send(&frame(i, i % 200)).unwrap();
                    if i % 1000 == 0 {
                        // Let the consumer fall asleep now and then.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            });
            let mut buf = [0u8; 256];
            for i in 0..N {
                let got = rx.recv_timeout(&mut buf, Duration::from_secs(20)).unwrap();
                assert_eq!(&buf[..got.len], &frame(i, i % 200)[..]);
            }
            t.join().unwrap();
        }
    }
}

/// A producer parked for space that only an empty, fully released ring can give (a padding
/// record plus a largest record) must be woken when the consumer finds the ring empty and gives
/// back its last, unbatched space; otherwise both sides sleep forever.
#[test]
fn parked_producer_is_woken_when_the_consumer_empties_the_ring() {
    let seg =
        Segment::anonymous(&ChannelConfig::spsc().capacity(4096).max_frame_size(2040)).unwrap();
    let mut tx = seg.producer().unwrap();
    let mut rx = seg.consumer().unwrap();
    tx.set_wait_strategy(WaitStrategy::Park);
    rx.set_wait_strategy(WaitStrategy::Park);
    let producer = std::thread::spawn(move || {
        for len in [2040usize, 8, 2040] {
            // The third needs 2032 bytes of padding + 2048 + 8: the whole ring.
            tx.send_timeout(&vec![len as u8; len], Duration::from_secs(10))
                .unwrap();
        }
    });
    let mut buf = vec![0u8; 2040];
    for len in [2040usize, 8, 2040] {
        // Slow enough that the producer is asleep in FUTEX_WAIT, not spinning.
        std::thread::sleep(Duration::from_millis(100));
        // The producer waits up to 10 s: if it sleeps through the space it needs, this 2 s
        // timeout expires first.
        let got = rx
            .recv_timeout(&mut buf, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("frame of {len} bytes never came: {e}"));
        assert_eq!(got.len, len);
    }
    producer.join().unwrap();
}

/// A zero-copy claim leaked with `mem::forget` (never committed, never aborted) would leave its
/// MPMC slot unwritten and every consumer waiting at its position: the producer's next claim
/// aborts it.
#[test]
fn a_leaked_mpmc_claim_does_not_wedge_the_ring() {
    let seg = Segment::anonymous(&ChannelConfig::mpmc().capacity(1024).max_frame_size(64)).unwrap();
    let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
    std::mem::forget(tx.try_claim(8).unwrap());
    tx.try_send(b"after").unwrap();
    assert_eq!(&*rx.try_read().unwrap(), b"after");
    std::mem::forget(tx.try_claim(8).unwrap());
    drop(tx); // the drop aborts it too
    assert!(matches!(rx.try_read(), Err(Error::WouldBlock(_))));
    assert_eq!(seg.stats().depth, 0);
}

//! Messages longer than a frame, in one process: split by `send`, put back together by every
//! receive, whole and in order; the limits and what a message left unfinished costs.

#![cfg(not(loom))]

use shmring::{ChannelConfig, Error, Overflow, Segment};
use std::time::Duration;

mod common;
use common::watchdog;

/// A 4 KiB SPSC ring of 256-byte frames carrying messages up to 1 MiB.
fn spsc() -> ChannelConfig {
    ChannelConfig::spsc()
        .capacity(4096)
        .max_frame_size(256)
        .max_message_size(1 << 20)
}

/// Message `i`, `len` bytes, every byte depending on both.
fn message(i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(7) ^ (j >> 8)) as u8)
        .collect()
}

/// Lengths that cross every boundary: a frame, a record of a message, the ring.
const LENGTHS: [usize; 14] = [
    1,
    255,
    256,
    257,
    1015,
    1016,
    1017,
    2048,
    3000,
    4096,
    4097,
    10_000,
    65_536,
    1 << 20,
];

#[test]
fn every_receive_returns_whole_messages_in_order() {
    let _dog = watchdog("every_receive_returns_whole_messages_in_order", 60);
    let seg = Segment::anonymous(&spsc()).unwrap();
    let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
    assert_eq!(tx.max_message_size(), 1 << 20);
    assert_eq!(rx.max_message_size(), 1 << 20);
    let sender = std::thread::spawn(move || {
        for round in 0..4 {
            for (i, &len) in LENGTHS.iter().enumerate() {
                tx.send(&message(round * 100 + i, len)).unwrap();
            }
        }
        tx
    });
    let mut buf = vec![0u8; 1 << 20];
    let mut drained = std::collections::VecDeque::new();
    for round in 0..4 {
        for (i, &len) in LENGTHS.iter().enumerate() {
            let want = message(round * 100 + i, len);
            // Each round receives another way.
            let got: Vec<u8> = match round {
                0 => {
                    let r = rx.recv(&mut buf).unwrap();
                    buf[..r.len].to_vec()
                }
                1 => rx.read().unwrap().to_vec(),
                2 => loop {
                    match rx.try_recv(&mut buf) {
                        Ok(r) => break buf[..r.len].to_vec(),
                        Err(Error::WouldBlock(_)) => std::thread::yield_now(),
                        Err(e) => panic!("{e}"),
                    }
                },
                _ => {
                    while drained.is_empty() {
                        let n = rx
                            .drain_timeout(8, Duration::from_secs(30), |bytes, _| {
                                drained.push_back(bytes.to_vec())
                            })
                            .unwrap();
                        assert_eq!(n, drained.len());
                    }
                    drained.pop_front().unwrap()
                }
            };
            assert_eq!(got.len(), len, "round {round}, message {i}");
            assert!(
                got == want,
                "round {round}, message {i} of {len} bytes differs"
            );
        }
    }
    sender.join().unwrap();
    assert_eq!(rx.missed(), 0);
}

#[test]
fn a_message_that_fits_the_ring_is_published_at_once() {
    let _dog = watchdog("a_message_that_fits_the_ring_is_published_at_once", 60);
    let seg = Segment::anonymous(&spsc()).unwrap();
    let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
    let msg = message(1, 2000);
    tx.try_send(&msg).unwrap();
    // Its records are all there: one non-waiting receive takes it whole.
    let mut buf = vec![0u8; 2000];
    assert_eq!(rx.try_recv(&mut buf).unwrap().len, 2000);
    assert!(buf == msg);
    // Full: a message needing more room than is free is refused whole, nothing written.
    tx.try_send(&message(2, 3000)).unwrap();
    assert!(matches!(
        tx.try_send(&message(3, 3000)),
        Err(Error::WouldBlock(_))
    ));
    tx.try_send(b"small").unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(rx.try_recv(&mut buf).unwrap().len, 3000);
    assert_eq!(rx.try_recv(&mut buf).unwrap().len, 5);
    assert!(matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock(_))));
}

#[test]
fn limits_are_stated() {
    let _dog = watchdog("limits_are_stated", 60);
    let seg = Segment::anonymous(&spsc()).unwrap();
    let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
    // Longer than max_message_size.
    match tx.send(&vec![0u8; (1 << 20) + 1]) {
        Err(Error::FrameTooLarge { len, max }) => {
            assert_eq!((len, max), ((1 << 20) + 1, 1 << 20))
        }
        other => panic!("{other:?}"),
    }
    // Claims stay limited to a frame.
    assert!(matches!(
        tx.try_claim(257),
        Err(Error::FrameTooLarge { max: 256, .. })
    ));
    // A message longer than the ring cannot be sent without waiting.
    match tx.try_send(&message(0, 5000)) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("send_timeout"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A short buffer is told the message's length, and the message stays.
    tx.send(&message(4, 3000)).unwrap();
    let mut small = [0u8; 100];
    assert!(matches!(
        rx.try_recv(&mut small),
        Err(Error::BufferTooSmall {
            needed: 3000,
            cap: 100
        })
    ));
    let mut buf = vec![0u8; 3000];
    assert_eq!(rx.try_recv(&mut buf).unwrap().len, 3000);
    assert!(buf == message(4, 3000));
    // A channel without max_message_size keeps refusing long frames as before.
    let plain =
        Segment::anonymous(&ChannelConfig::spsc().capacity(4096).max_frame_size(256)).unwrap();
    assert!(matches!(
        plain.producer().unwrap().try_send(&[0u8; 257]),
        Err(Error::FrameTooLarge { max: 256, .. })
    ));
    // An MPMC channel's slot must hold a reference to a message in its pool.
    let e = Segment::anonymous(
        &ChannelConfig::mpmc()
            .max_frame_size(16)
            .max_message_size(1 << 20),
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    // Below max_frame_size.
    assert!(Segment::anonymous(&spsc().max_message_size(100)).is_err());
}

#[test]
fn a_message_streamed_in_part_is_dropped_and_counted_never_delivered() {
    let _dog = watchdog(
        "a_message_streamed_in_part_is_dropped_and_counted_never_delivered",
        60,
    );
    let seg = Segment::anonymous(&spsc()).unwrap();
    let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
    // 20 000 bytes through a 4 KiB ring that nobody empties: part of it is written, then the
    // send times out.
    assert!(matches!(
        tx.send_timeout(&message(1, 20_000), Duration::from_millis(50)),
        Err(Error::TimedOut(_))
    ));
    let mut buf = vec![0u8; 1 << 20];
    // The consumer takes the part that arrived, and waits for the rest.
    assert!(matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock(_))));
    assert_eq!(rx.missed(), 0);
    // The next message begins: the unfinished one is dropped.
    tx.send(&message(2, 3000)).unwrap();
    let got = rx.try_recv(&mut buf).unwrap();
    assert_eq!(got.len, 3000);
    assert!(buf[..3000] == message(2, 3000)[..]);
    assert_eq!(rx.missed(), 1);
    // So it is before a whole frame.
    assert!(
        tx.send_timeout(&message(3, 20_000), Duration::from_millis(50))
            .is_err()
    );
    assert!(matches!(rx.try_read(), Err(Error::WouldBlock(_))));
    tx.send(b"frame").unwrap();
    // Into a buffer far shorter than the dropped message: the frame is what comes next.
    let mut small = [0u8; 16];
    assert_eq!(rx.try_recv(&mut small).unwrap().len, 5);
    assert_eq!(&small[..5], b"frame");
    tx.send(b"frame").unwrap();
    assert_eq!(&*rx.read().unwrap(), b"frame");
    tx.send(b"another").unwrap();
    assert_eq!(&*rx.read().unwrap(), b"another");
    tx.send(&message(4, 10)).unwrap();
    assert_eq!(&*rx.read().unwrap(), &message(4, 10)[..]);
    // (The consumer gives its space back when it finds the ring empty; the message below
    // needs nearly all of it.)
    assert!(matches!(rx.try_read(), Err(Error::WouldBlock(_))));
    tx.send(&message(5, 3000)).unwrap();
    assert!(*rx.read().unwrap() == message(5, 3000)[..]);
    assert_eq!(rx.missed(), 2);
}

#[test]
fn a_message_unfinished_when_the_channel_ends_is_dropped() {
    let _dog = watchdog("a_message_unfinished_when_the_channel_ends_is_dropped", 60);
    let seg = Segment::anonymous(&spsc()).unwrap();
    let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
    assert!(
        tx.send_timeout(&message(1, 20_000), Duration::from_millis(20))
            .is_err()
    );
    let mut buf = vec![0u8; 1 << 20];
    assert!(matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock(_))));
    tx.finish().unwrap();
    assert!(matches!(rx.try_recv(&mut buf), Err(Error::Closed(_))));
    assert_eq!(rx.missed(), 1);
}

#[test]
fn a_receive_that_times_out_midway_keeps_what_arrived() {
    let _dog = watchdog("a_receive_that_times_out_midway_keeps_what_arrived", 60);
    let seg = Segment::anonymous(&spsc()).unwrap();
    let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
    let msg = message(9, 50_000);
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let sender = {
        let msg = msg.clone();
        std::thread::spawn(move || {
            // Only once the consumer timed out waiting.
            go_rx.recv().unwrap();
            tx.send(&msg).unwrap();
            tx
        })
    };
    let mut buf = vec![0u8; 50_000];
    assert!(matches!(
        rx.recv_timeout(&mut buf, Duration::from_millis(10)),
        Err(Error::TimedOut(_))
    ));
    go_tx.send(()).unwrap();
    // Alternate between a short timeout into one buffer and zero-copy reads: the message
    // arrives whole whichever call finishes it.
    let mut other = vec![0u8; 60_000];
    let got = loop {
        match rx.recv_timeout(&mut other, Duration::from_micros(50)) {
            Ok(r) => break other[..r.len].to_vec(),
            Err(Error::TimedOut(_)) => {}
            Err(e) => panic!("{e}"),
        }
        match rx.read_timeout(Duration::from_micros(50)) {
            Ok(f) => break f.to_vec(),
            Err(Error::TimedOut(_)) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert!(got == msg);
    assert_eq!(rx.missed(), 0);
    sender.join().unwrap();
}

/// A broadcast channel of 16 slots of 256-byte frames carrying messages up to 1 MiB.
fn broadcast(overflow: Overflow) -> ChannelConfig {
    ChannelConfig::broadcast()
        .capacity(4096)
        .max_frame_size(256)
        .max_consumers(3)
        .max_message_size(1 << 20)
        .overflow(overflow)
}

/// Slots a message of `len` bytes takes on a channel of 256-byte frames.
fn slots(len: usize) -> u64 {
    if len <= 256 {
        1
    } else {
        (len as u64 + 8).div_ceil(256)
    }
}

#[test]
fn every_subscriber_receives_every_message_whole() {
    let _dog = watchdog("every_subscriber_receives_every_message_whole", 60);
    let seg = Segment::anonymous(&broadcast(Overflow::Block)).unwrap();
    let mut tx = seg.producer().unwrap();
    let subscribers: Vec<_> = (0..2).map(|_| seg.consumer().unwrap()).collect();
    let readers: Vec<_> = subscribers
        .into_iter()
        .enumerate()
        .map(|(k, mut rx)| {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                for round in 0..3 {
                    for (i, &len) in LENGTHS.iter().enumerate() {
                        let got = if (round + k) % 2 == 0 {
                            let r = rx.recv(&mut buf).unwrap();
                            buf[..r.len].to_vec()
                        } else {
                            rx.read().unwrap().to_vec()
                        };
                        assert!(
                            got == message(round * 100 + i, len),
                            "subscriber {k}, round {round}, message {i} of {len} bytes"
                        );
                    }
                }
                assert!(matches!(rx.recv(&mut buf), Err(Error::Closed(_))));
                rx.missed()
            })
        })
        .collect();
    for round in 0..3 {
        for (i, &len) in LENGTHS.iter().enumerate() {
            tx.send(&message(round * 100 + i, len)).unwrap();
        }
    }
    tx.finish().unwrap();
    for r in readers {
        assert_eq!(r.join().unwrap(), 0);
    }
}

#[test]
fn a_lapped_subscriber_drops_messages_whole_and_counts_every_slot() {
    lapped_subscriber(&[10, 300, 1000, 3000, 8, 5000, 700], 3000);
}

/// Messages all of one length (12 slots of 16): a lap in the middle of one lands in the middle
/// of another, whose last records would complete the first. Failed before a lap between two
/// calls dropped the message being assembled: glued messages were delivered.
#[test]
fn a_subscriber_lapped_between_two_calls_never_glues_two_messages() {
    lapped_subscriber(&[3000], 20_000);
}

fn lapped_subscriber(lengths: &'static [usize], count: usize) {
    let _dog = watchdog("lapped subscriber", 60);
    let seg = Segment::anonymous(&broadcast(Overflow::DropOldest)).unwrap();
    let mut tx = seg.producer().unwrap();
    let mut rx = seg.consumer().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let (mut delivered, mut last) = (0u64, None);
        loop {
            match rx.recv(&mut buf) {
                Ok(r) => {
                    // Message i: its index in the first 8 bytes.
                    let i = u64::from_le_bytes(buf[..8].try_into().unwrap()) as usize;
                    let len = lengths[i % lengths.len()];
                    assert_eq!(r.len, len, "message {i}");
                    assert!(buf[..len] == indexed(i, len)[..], "message {i} damaged");
                    assert!(last < Some(i), "message {i} after {last:?}");
                    last = Some(i);
                    delivered += slots(len);
                    // A slow subscriber: lapped now and then.
                    if i.is_multiple_of(7) {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
                Err(Error::Closed(_)) => return (delivered, rx.missed()),
                Err(e) => panic!("{e}"),
            }
        }
    });
    let mut published = 0;
    for i in 0..count {
        let len = lengths[i % lengths.len()];
        // Never waits under DROP_OLDEST, not even for a message longer than the ring.
        tx.try_send(&indexed(i, len)).unwrap();
        published += slots(len);
    }
    tx.finish().unwrap();
    let (delivered, missed) = reader.join().unwrap();
    assert_eq!(
        delivered + missed,
        published,
        "delivered {delivered}, missed {missed}"
    );
    assert!(
        missed > 0,
        "the subscriber was never lapped: the test proves nothing"
    );
}

/// Message `i` of at least 8 bytes: its index, then `message`'s bytes.
fn indexed(i: usize, len: usize) -> Vec<u8> {
    let mut m = message(i, len.max(8));
    m[..8].copy_from_slice(&(i as u64).to_le_bytes());
    m.truncate(len.max(8));
    m
}

#[test]
fn broadcast_limits_and_a_producer_that_gives_up_midway() {
    let _dog = watchdog("broadcast_limits_and_a_producer_that_gives_up_midway", 60);
    let seg = Segment::anonymous(&broadcast(Overflow::Block)).unwrap();
    let mut tx = seg.producer().unwrap();
    let mut rx = seg.consumer().unwrap();
    // 16 slots: a message of 20 slots cannot go without waiting.
    assert!(matches!(
        tx.try_send(&message(0, 20 * 256)),
        Err(Error::InvalidArgument(_))
    ));
    // One of 10 goes whole, then one that needs more than what is free is refused whole.
    tx.try_send(&message(1, 2500)).unwrap();
    assert!(matches!(
        tx.try_send(&message(2, 2500)),
        Err(Error::WouldBlock(_))
    ));
    let mut buf = vec![0u8; 1 << 20];
    assert_eq!(rx.try_recv(&mut buf).unwrap().len, 2500);
    assert!(buf[..2500] == message(1, 2500)[..]);
    // A message that times out midway: the subscriber takes what came, then drops it.
    assert!(matches!(
        tx.send_timeout(&message(3, 10_000), Duration::from_millis(30)),
        Err(Error::TimedOut(_))
    ));
    assert!(matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock(_))));
    assert!(matches!(
        tx.send_timeout(&message(3, 10_000), Duration::from_millis(30)),
        Err(Error::TimedOut(_))
    ));
    assert!(matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock(_))));
    tx.send(b"frame").unwrap();
    assert_eq!(rx.try_recv(&mut buf).unwrap().len, 5);
    // Both unfinished messages are counted, in slots, as soon as the next record shows they
    // are over: the first got 14 slots (the subscriber had released 8 of message 1's 10,
    // so the producer could go 16 past that), the second a whole ring of 16.
    assert_eq!(rx.missed(), 30);
}

/// An MPMC channel of 64 slots of 64-byte frames carrying messages up to 1 MiB in its pool.
fn mpmc() -> ChannelConfig {
    ChannelConfig::mpmc()
        .capacity(64 * 64)
        .max_frame_size(64)
        .max_producers(2)
        .max_consumers(2)
        .max_message_size(1 << 20)
}

#[test]
fn mpmc_messages_go_whole_to_exactly_one_consumer() {
    let _dog = watchdog("mpmc_messages_go_whole_to_exactly_one_consumer", 60);
    let seg = Segment::anonymous(&mpmc()).unwrap();
    let producers: Vec<_> = (0..2usize)
        .map(|k| {
            let mut tx = seg.producer().unwrap();
            std::thread::spawn(move || {
                for i in 0..300usize {
                    let len = LENGTHS[i % LENGTHS.len()];
                    tx.send(&indexed(k * 1000 + i, len)).unwrap();
                }
            })
        })
        .collect();
    let consumers: Vec<_> = (0..2)
        .map(|c| {
            let mut rx = seg.consumer().unwrap();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    // Copied, lent in place, drained: every receive takes pool messages.
                    let r: Option<Vec<u8>> = match got.len() % 3 {
                        0 => match rx.recv_timeout(&mut buf, Duration::from_millis(500)) {
                            Ok(r) => Some(buf[..r.len].to_vec()),
                            Err(Error::TimedOut(_)) => None,
                            Err(e) => panic!("{e}"),
                        },
                        1 => match rx.read_timeout(Duration::from_millis(500)) {
                            Ok(f) => Some(f.to_vec()),
                            Err(Error::TimedOut(_)) => None,
                            Err(e) => panic!("{e}"),
                        },
                        _ => {
                            let mut one = None;
                            match rx.drain_timeout(1, Duration::from_millis(500), |b, _| {
                                one = Some(b.to_vec())
                            }) {
                                Ok(_) => one,
                                Err(Error::TimedOut(_)) => None,
                                Err(e) => panic!("{e}"),
                            }
                        }
                    };
                    match r {
                        Some(m) => got.push(m),
                        None => return (c, got),
                    }
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    for h in consumers {
        let (_, got) = h.join().unwrap();
        for m in got {
            let i = u64::from_le_bytes(m[..8].try_into().unwrap()) as usize;
            let len = LENGTHS[(i % 1000) % LENGTHS.len()];
            assert!(m == indexed(i, len), "message {i} damaged");
            assert!(seen.insert(i), "message {i} delivered twice");
        }
    }
    assert_eq!(seen.len(), 600, "every message delivered");
    // Every chunk is back in the pool: one more of the largest goes at once.
    let mut tx = seg.producer().unwrap();
    tx.try_send(&vec![1u8; 1 << 20]).unwrap();
}

/// Review of the pool: a drain whose callback panics gives back the rest of its batch
/// undelivered, as for frames, and now frees the chunks of the messages among them (before, they
/// stayed taken with nothing referencing them, until a death's repair).
#[test]
fn a_drain_cut_short_gives_the_pool_back() {
    let _dog = watchdog("a_drain_cut_short_gives_the_pool_back", 60);
    let seg = Segment::anonymous(&mpmc()).unwrap();
    let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
    for i in 0..3 {
        tx.send(&indexed(i, 5000)).unwrap();
    }
    assert_eq!(
        seg.stats().pool_used,
        3,
        "three messages of one 8 KiB chunk"
    );
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = rx.try_drain(3, |_, _| panic!("the application fails"));
    }));
    assert!(r.is_err());
    assert_eq!(seg.stats().pool_used, 0, "every chunk back");
    assert!(matches!(
        rx.try_recv(&mut [0u8; 64]),
        Err(Error::WouldBlock(_))
    ));
}

/// Review of the pool: a producer whose message found the pool full waits on the pool's frees,
/// also through its descriptor: the descriptor stays quiet while the pool is full (slots free),
/// and turns readable when a consumer frees chunks. Before, it watched the ring, was readable at
/// once, and an event loop spun.
#[test]
fn a_descriptor_of_a_producer_waiting_for_the_pool_waits_for_it() {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::BorrowedFd;
    let _dog = watchdog("a_descriptor_of_a_producer_waiting_for_the_pool", 60);
    shmring::set_fd_recheck_interval(Duration::from_secs(60));
    let readable = |fd, ms: u16| {
        // SAFETY: the producer owning `fd` outlives the call.
        let mut fds = [PollFd::new(
            unsafe { BorrowedFd::borrow_raw(fd) },
            PollFlags::POLLIN,
        )];
        poll(&mut fds, PollTimeout::from(ms)).expect("poll");
        fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
    };
    let seg = Segment::anonymous(&mpmc()).unwrap();
    let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
    let fd = tx.fd().unwrap();
    // Fill the pool (1 MiB messages; it holds two), slots to spare.
    while tx.try_send(&vec![3u8; 1 << 20]).is_ok() {}
    assert!(matches!(
        tx.try_send(&vec![3u8; 1 << 20]),
        Err(Error::WouldBlock(_))
    ));
    assert!(!readable(fd, 200), "readable while the pool is still full");
    let mut buf = vec![0u8; 1 << 20];
    assert_eq!(rx.try_recv(&mut buf).unwrap().len, 1 << 20);
    assert!(
        readable(fd, 10_000),
        "a free of the pool did not wake the descriptor"
    );
    tx.try_send(&vec![4u8; 1 << 20]).unwrap();
}

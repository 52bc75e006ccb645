//! Regression tests of the ring and handle defects of issue 10 ("Step 5"), items 6 to 11: lost
//! wake-ups on MPMC skips (6), waits that trusted one shared word (7), unbounded MPMC skip loops
//! (8), the SPSC attach after a producer killed mid-publish (9), the MPMC copy receive's
//! double read (10) and arithmetic overflow on hostile cursors (11); and a lost wake-up found in
//! review of step 5 (a drain whose callback panics); and defects of broadcast channels found in
//! review of step 6. White-box: they write the segment's words directly, as a hostile or dying
//! process would. Each test names the item it guards and what it showed before the fix.

use crate::layout::{Role, decode_owner, encode_header, encode_owner};
use crate::region::Memory;
use crate::sync::AtomicU32;
use crate::sync::Ordering::{Relaxed, Release};
use crate::{ChannelConfig, Error, Segment, WaitStrategy};
use std::time::{Duration, Instant};

/// Frees entry `index` of `role`, as a coordinator does for a dead owner.
fn evict(seg: &Segment, role: Role, index: u32) {
    let p = seg.mem.participant(role, index).unwrap();
    let (pid, inc) = decode_owner(p.owner.load(Relaxed));
    assert_ne!(pid, 0, "entry {index} of {role} is not held");
    p.owner.store(encode_owner(0, inc), Relaxed);
}

/// An MPMC segment of `slots` slots for frames up to 48 bytes.
fn mpmc(slots: u64, producers: u32, consumers: u32) -> Segment {
    Segment::anonymous(
        &ChannelConfig::mpmc()
            .capacity(slots * 48)
            .max_frame_size(48)
            .max_producers(producers)
            .max_consumers(consumers),
    )
    .unwrap()
}

/// Waits until someone is counted in the `waiters` of the line (`producer`: the producer line,
/// where consumers wait; else the consumer line, where producers wait).
fn until_counted(mem: &Memory, producer: bool) {
    let line = if producer {
        mem.producer_line()
    } else {
        mem.consumer_line()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while line.waiters.load(Relaxed) == 0 {
        assert!(Instant::now() < deadline, "nobody parked within 10 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The consumer line's futex word: bumped by every wake-up of a waiting producer.
fn consumer_wakes(mem: &Memory) -> u32 {
    mem.consumer_line().futex.load(Relaxed)
}

/// Item 6, the scenario: producers A and B hold both slots of a two-slot ring, P
/// parks in `send()`, A aborts, C's `try_recv` releases the skip and finds nothing. Before the
/// fix C woke nobody (P slept for good, and so did a consumer blocked in `recv()`); the futex
/// word stayed put.
#[test]
fn item6_released_skip_wakes_a_parked_producer() {
    let seg = mpmc(2, 3, 1);
    let (mut a, mut b, mut p) = (
        seg.producer().unwrap(),
        seg.producer().unwrap(),
        seg.producer().unwrap(),
    );
    let mut c = seg.consumer().unwrap();
    let claim_a = a.try_claim(8).unwrap();
    let claim_b = b.try_claim(8).unwrap();
    std::thread::scope(|s| {
        let parked = s.spawn(move || {
            p.set_wait_strategy(WaitStrategy::Park);
            p.send_timeout(b"from P", Duration::from_secs(20))
        });
        until_counted(&seg.mem, false);
        drop(claim_a);
        let before = consumer_wakes(&seg.mem);
        let mut buf = [0u8; 48];
        assert!(matches!(c.try_recv(&mut buf), Err(Error::WouldBlock(_))));
        assert_ne!(
            consumer_wakes(&seg.mem),
            before,
            "releasing the skip woke the parked producer"
        );
        drop(claim_b);
        let got = c.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
        assert_eq!(&buf[..got.len], b"from P");
        parked.join().unwrap().unwrap();
    });
}

/// Item 6, a drain that meets only a skip: the same lost wake-up through `try_drain`.
#[test]
fn item6_drain_of_skips_wakes_a_parked_producer() {
    let seg = mpmc(2, 3, 1);
    let (mut a, mut b, mut p) = (
        seg.producer().unwrap(),
        seg.producer().unwrap(),
        seg.producer().unwrap(),
    );
    let mut c = seg.consumer().unwrap();
    let claim_a = a.try_claim(8).unwrap();
    let claim_b = b.try_claim(8).unwrap();
    std::thread::scope(|s| {
        let parked = s.spawn(move || p.send_timeout(b"from P", Duration::from_secs(20)));
        until_counted(&seg.mem, false);
        drop(claim_a);
        let before = consumer_wakes(&seg.mem);
        assert!(matches!(
            c.try_drain(8, |_, _| panic!("no frame")),
            Err(Error::WouldBlock(_))
        ));
        assert_ne!(consumer_wakes(&seg.mem), before, "the drain woke nobody");
        drop(claim_b);
        parked.join().unwrap().unwrap();
        let mut got = Vec::new();
        c.try_drain(8, |f, _| got.push(f.to_vec())).unwrap();
        assert_eq!(got, vec![b"from P".to_vec()]);
    });
}

/// Item 6, a leaked `Frame`: the next receive releases it and, finding the ring empty, must
/// wake the producer waiting for that slot.
#[test]
fn item6_release_of_a_leaked_frame_wakes_a_parked_producer() {
    let seg = mpmc(2, 2, 2);
    let (mut q, mut p) = (seg.producer().unwrap(), seg.producer().unwrap());
    let (mut c, mut c2) = (seg.consumer().unwrap(), seg.consumer().unwrap());
    q.try_send(b"one").unwrap();
    std::mem::forget(c.try_read().unwrap()); // holds position 0
    q.try_send(b"two").unwrap();
    let mut buf = [0u8; 48];
    assert_eq!(c2.try_recv(&mut buf).unwrap().len, 3); // position 1 released
    std::thread::scope(|s| {
        // Position 2 lives in the slot position 0 holds.
        let parked = s.spawn(move || p.send_timeout(b"three", Duration::from_secs(20)));
        until_counted(&seg.mem, false);
        let before = consumer_wakes(&seg.mem);
        assert!(matches!(c.try_recv(&mut buf), Err(Error::WouldBlock(_))));
        assert_ne!(consumer_wakes(&seg.mem), before, "the release woke nobody");
        parked.join().unwrap().unwrap();
        let got = c.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
        assert_eq!(&buf[..got.len], b"three");
    });
}

/// Item 6, the producer side: a leaked claim aborted by a send that then finds the ring full
/// must still wake the consumer asleep at the leaked position (before the fix only a send that
/// succeeded woke it).
#[test]
fn item6_abort_of_a_leaked_claim_wakes_a_parked_consumer() {
    let seg = mpmc(2, 2, 1);
    let (mut x, mut y) = (seg.producer().unwrap(), seg.producer().unwrap());
    let mut c = seg.consumer().unwrap();
    std::mem::forget(x.try_claim(8).unwrap()); // position 0, never committed
    let held = y.try_claim(8).unwrap(); // position 1
    std::thread::scope(|s| {
        let parked = s.spawn(move || {
            let mut buf = [0u8; 48];
            // Steps over the skip that position 0 becomes, then waits for position 1.
            let got = c.recv_timeout(&mut buf, Duration::from_secs(20)).unwrap();
            buf[..got.len].to_vec()
        });
        until_counted(&seg.mem, true);
        let before = seg.mem.producer_line().futex.load(Relaxed);
        assert!(matches!(x.try_send(b"x"), Err(Error::WouldBlock(_))));
        assert_ne!(
            seg.mem.producer_line().futex.load(Relaxed),
            before,
            "the abort of the leaked claim woke nobody"
        );
        let mut held = held;
        held.copy_from_slice(b"from Y!!");
        held.commit();
        assert_eq!(parked.join().unwrap(), b"from Y!!");
    });
}

/// Item 7: a consumer parked in a blocking receive while another process zeroes the producer
/// line's `waiters` word. Before the fix no send woke it: `recv_timeout(10 s)` returned the
/// frame only at its deadline (a plain `recv()` never). Now it is late by at most a recheck,
/// and it counts itself back in, so later wake-ups are prompt again.
#[test]
fn item7_zeroed_waiters_word_costs_a_recheck_at_most() {
    let seg = Segment::anonymous(&ChannelConfig::spsc().capacity(4096).max_frame_size(64)).unwrap();
    let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
    let waiters = &seg.mem.producer_line().waiters;
    std::thread::scope(|s| {
        let parked = s.spawn(move || {
            rx.set_wait_strategy(WaitStrategy::Park);
            let mut buf = [0u8; 64];
            let mut got = Vec::new();
            for _ in 0..5 {
                let r = rx.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
                got.push(buf[..r.len].to_vec());
            }
            got
        });
        until_counted(&seg.mem, true);
        std::thread::sleep(Duration::from_millis(50)); // asleep by now
        waiters.store(0, Relaxed);
        // It counts itself in again at its next recheck.
        let deadline = Instant::now() + Duration::from_secs(2);
        while waiters.load(Relaxed) == 0 {
            assert!(
                Instant::now() < deadline,
                "the sleeper never counted itself in again"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        waiters.store(0, Relaxed);
        let sent = Instant::now();
        for i in 0..5u8 {
            tx.send(&[i; 3]).unwrap();
        }
        let got = parked.join().unwrap();
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "the frames arrived {:?} after they were sent",
            sent.elapsed()
        );
        assert_eq!(got, (0..5u8).map(|i| vec![i; 3]).collect::<Vec<_>>());
    });
    assert_eq!(
        waiters.load(Relaxed),
        0,
        "the count is never taken below zero"
    );
}

/// Item 7, the producer side: a producer parked on a full ring whose consumer line's `waiters`
/// was zeroed. Before the fix `send_timeout(10 s)` returned only at its deadline although the
/// ring had drained.
#[test]
fn item7_producer_parked_on_a_zeroed_waiters_word_sees_the_drained_ring() {
    let seg = Segment::anonymous(&ChannelConfig::spsc().capacity(256).max_frame_size(64)).unwrap();
    let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
    while tx.try_send(&[7; 40]).is_ok() {}
    std::thread::scope(|s| {
        let parked = s.spawn(move || {
            tx.set_wait_strategy(WaitStrategy::Park);
            tx.send_timeout(&[8; 40], Duration::from_secs(10))
        });
        until_counted(&seg.mem, false);
        std::thread::sleep(Duration::from_millis(50));
        seg.mem.consumer_line().waiters.store(0, Relaxed);
        let drained = Instant::now();
        while rx.try_drain(100, |_, _| {}).is_ok() {}
        parked.join().unwrap().unwrap();
        assert!(
            drained.elapsed() < Duration::from_secs(2),
            "the producer saw the drained ring {:?} late",
            drained.elapsed()
        );
    });
}

/// Item 7, damaged MPMC cursors under a blocked call, for every wait strategy. Before the fix a
/// blocked call watched one slot's sequence word, which the damage never changed, until its
/// deadline (for ever without one), while a fresh handle got `Corrupted` at once.
#[test]
fn item7_blocked_calls_report_damaged_mpmc_cursors() {
    for wait in [WaitStrategy::Spin, WaitStrategy::Yield, WaitStrategy::Park] {
        // A consumer on an empty ring whose dequeue cursor jumps ahead of the enqueue cursor.
        let seg = mpmc(4, 1, 1);
        let mut rx = seg.consumer().unwrap();
        rx.set_wait_strategy(wait);
        let mut tx = seg.producer().unwrap();
        tx.try_send(b"a").unwrap();
        let mut buf = [0u8; 48];
        rx.try_recv(&mut buf).unwrap();
        std::thread::scope(|s| {
            let blocked = s.spawn(move || {
                let t = Instant::now();
                (
                    rx.recv_timeout(&mut buf, Duration::from_secs(10)),
                    t.elapsed(),
                )
            });
            std::thread::sleep(Duration::from_millis(50));
            seg.mem.consumer_line().position.store(9, Relaxed);
            let (r, waited) = blocked.join().unwrap();
            assert!(matches!(r, Err(Error::Corrupted(_))), "{wait:?}: {r:?}");
            assert!(waited < Duration::from_secs(2), "{wait:?}: {waited:?}");
        });

        // A producer on a full ring whose enqueue cursor jumps laps ahead of the consumers.
        let seg = mpmc(4, 1, 1);
        let mut tx = seg.producer().unwrap();
        tx.set_wait_strategy(wait);
        while tx.try_send(b"b").is_ok() {}
        std::thread::scope(|s| {
            let blocked = s.spawn(move || {
                let t = Instant::now();
                (tx.send_timeout(b"c", Duration::from_secs(10)), t.elapsed())
            });
            std::thread::sleep(Duration::from_millis(50));
            seg.mem.producer_line().position.store(4 * 5, Relaxed);
            let (r, waited) = blocked.join().unwrap();
            assert!(matches!(r, Err(Error::Corrupted(_))), "{wait:?}: {r:?}");
            assert!(waited < Duration::from_secs(2), "{wait:?}: {waited:?}");
        });
    }
}

/// Sets its flag (to 1) when dropped: stops a helper thread of a scoped test even if the test
/// panics (the scope would otherwise wait for it for ever).
struct StopOnDrop<'a>(&'a AtomicU32);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(1, Relaxed);
    }
}

/// A writer that commits a skip into each slot as soon as a consumer frees it, in position
/// order, without taking positions: it presents skips as fast as they are taken. Stops when
/// told, or after `limit`.
fn skip_writer(mem: &Memory, stop: &AtomicU32, limit: Duration) {
    let started = Instant::now();
    let skip = encode_header(0, crate::layout::RecordType::Skip, 0, 0);
    let mut p = mem.consumer_line().position.load(Relaxed);
    for round in 0u64.. {
        if round % 1024 == 0 && (stop.load(Relaxed) != 0 || started.elapsed() > limit) {
            return;
        }
        if mem.slot_seq(p).load(Relaxed) == p {
            mem.slot_header(p).store(skip, Relaxed);
            mem.slot_seq(p).store(p + 1, Release);
            p += 1;
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Item 8: a writer that keeps presenting skips kept an MPMC `try_recv`/`try_drain` inside
/// for as long as it kept up (28-60 ms measured; here up to the writer's 2 s). Now a call
/// steps over a capacity's worth of skips and one more at most, then returns `WouldBlock`. Each call finds
/// the ring full of skips (the writer refills it between calls), so before the fix any skip
/// the writer added during a call took it past a capacity.
#[test]
fn item8_skip_stream_cannot_hold_a_non_blocking_receive() {
    let seg = mpmc(1024, 1, 1);
    let slots = seg.mem.geometry().capacity;
    let mut rx = seg.consumer().unwrap();
    let stop = AtomicU32::new(0);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| skip_writer(&seg.mem, &stop, Duration::from_secs(2)));
        let deq = &seg.mem.consumer_line().position;
        let (mut most, mut longest) = (0, Duration::ZERO);
        let started = Instant::now();
        for call in 0u32.. {
            if started.elapsed() > Duration::from_millis(300) {
                break;
            }
            // Lets the writer fill the ring.
            std::thread::sleep(Duration::from_micros(200));
            let (before, t) = (deq.load(Relaxed), Instant::now());
            let r = if call % 2 == 0 {
                rx.try_recv(&mut [0u8; 48]).map(drop)
            } else {
                rx.try_drain(1000, |_, _| panic!("no frame")).map(drop)
            };
            longest = longest.max(t.elapsed());
            assert!(matches!(r, Err(Error::WouldBlock(_))), "{r:?}");
            most = most.max(deq.load(Relaxed) - before);
        }
        assert!(
            most <= slots + 1,
            "one call stepped over {most} skips of a {slots}-slot ring (longest call {longest:?})"
        );
    });
}

/// Item 9: an SPSC producer killed between a record's header store (Release) and its tail
/// store leaves the published tail one record behind; the live consumer reads that record and
/// publishes a head past the stale tail. Before the fix every successor's attach failed, for
/// good, with `Corrupted("SPSC cursors out of order: head 336, tail 224 ...")`.
#[test]
fn item9_spsc_producer_killed_between_header_and_tail_store() {
    for consumed in [3u8, 2] {
        let seg =
            Segment::anonymous(&ChannelConfig::spsc().capacity(4096).max_frame_size(512)).unwrap();
        let mut rx = seg.consumer().unwrap();
        let mut tx = seg.producer().unwrap();
        for i in 0..3u8 {
            tx.try_send(&[i; 100]).unwrap(); // 112-byte records
        }
        // The third record's tail store never happened.
        std::mem::forget(tx);
        let line = seg.mem.producer_line();
        line.position.store(2 * 112, Relaxed);
        evict(&seg, Role::Producer, 0);
        // The consumer reads what was published; an empty ring publishes its head.
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        for _ in 0..consumed {
            let len = rx.try_recv(&mut buf).unwrap().len;
            assert_eq!(len, 100);
            got.push(buf[0]);
        }
        if consumed == 3 {
            assert!(rx.try_recv(&mut buf).is_err());
            assert_eq!(seg.mem.consumer_line().position.load(Relaxed), 3 * 112);
        }

        let mut tx = seg.producer().expect("a successor is admitted");
        tx.try_send(&[3; 100]).unwrap();
        rx.try_drain(10, |f, flags| {
            assert!(!flags.is_redelivered());
            got.push(f[0]);
        })
        .unwrap();
        assert_eq!(
            got,
            vec![0, 1, 2, 3],
            "nothing lost, duplicated or invented"
        );
    }
}

/// Item 9, the bounds that remain: a tail more than a ring behind the head is still damage.
#[test]
fn item9_spsc_tail_a_ring_behind_the_head_is_damage() {
    let seg =
        Segment::anonymous(&ChannelConfig::spsc().capacity(4096).max_frame_size(512)).unwrap();
    drop(seg.producer().unwrap());
    seg.mem.consumer_line().position.store(8192, Relaxed);
    assert!(matches!(seg.producer(), Err(Error::Corrupted(_))));
}

/// Item 10: an MPMC copy receive read the slot header before its CAS (the fits check) and
/// again after it (the delivered length). A writer flipping the length between 4 and 40
/// bytes got `Received { len: 40 }` for a 16-byte buffer (`&buf[..len]` panics, and the C
/// ABI hands the length out as `*out_len`). Now the delivered length never exceeds the
/// buffer: it is `BufferTooSmall` before the take, `Corrupted` after it.
#[test]
fn item10_mpmc_copy_receive_never_reports_more_than_the_buffer() {
    let seg = mpmc(4, 1, 1);
    let mut tx = seg.producer().unwrap();
    let mut rx = seg.consumer().unwrap();
    let stop = AtomicU32::new(0);
    let mem = &seg.mem;
    let (mut delivered, mut corrupted) = (0u32, 0u32);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            // Flips the length of every slot's header between 4 and 40 (data, both legal).
            let words: Vec<_> = (0..4).map(|p| mem.slot_header(p)).collect();
            let (short, long) = (
                encode_header(4, crate::layout::RecordType::Data, 0, 0),
                encode_header(40, crate::layout::RecordType::Data, 0, 0),
            );
            while stop.load(Relaxed) == 0 {
                for w in &words {
                    w.store(short, Relaxed);
                }
                for w in &words {
                    w.store(long, Relaxed);
                }
            }
        });
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(500) {
            let _ = tx.try_send(b"abcd");
            let mut buf = [0u8; 16];
            match rx.try_recv(&mut buf) {
                Ok(r) => {
                    assert!(
                        r.len <= buf.len(),
                        "delivered {} of a {}-byte buffer",
                        r.len,
                        16
                    );
                    delivered += 1;
                }
                Err(Error::Corrupted(_)) => corrupted += 1,
                Err(Error::BufferTooSmall { .. } | Error::WouldBlock(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
    });
    assert!(
        delivered > 0,
        "nothing was delivered ({corrupted} corrupted)"
    );
}

/// Item 11: cursors near `u64::MAX` made `pos + size` overflow in the SPSC ring: a panic in
/// debug builds, a wrap and a frame delivered from nonsense positions (release). Now both
/// builds report `Corrupted` on attach. (Run in the debug profile by `cargo test -p shmring`,
/// where it panicked before the fix; `cargo test --release` checks the `Corrupted`.)
#[test]
fn item11_hostile_spsc_cursors_near_the_top_are_corruption() {
    // 16 bytes before the end of a 4096-byte ring's last lap: a 16-byte record fits there and
    // ends exactly at 2^64.
    let far = (u64::MAX - 4095) + 4080;
    let lap = |pos: u64| crate::layout::lap_tag(pos, 12);

    // A producer resuming at a head and tail near the top.
    let seg =
        Segment::anonymous(&ChannelConfig::spsc().capacity(4096).max_frame_size(512)).unwrap();
    seg.mem.consumer_line().position.store(far, Relaxed);
    seg.mem.producer_line().position.store(far, Relaxed);
    let r = seg.producer().and_then(|mut tx| tx.try_send(&[1; 100]));
    assert!(matches!(r, Err(Error::Corrupted(_))), "{r:?}");

    // A consumer resuming there, with a record waiting.
    let seg =
        Segment::anonymous(&ChannelConfig::spsc().capacity(4096).max_frame_size(512)).unwrap();
    seg.mem.consumer_line().position.store(far, Relaxed);
    seg.mem.record_word(far).store(
        encode_header(8, crate::layout::RecordType::Data, 0, lap(far)),
        Relaxed,
    );
    let r = seg
        .consumer()
        .and_then(|mut rx| rx.try_recv(&mut [0u8; 512]));
    assert!(matches!(r, Err(Error::Corrupted(_))), "{r:?}");

    // MPMC cursors near the top: `Corrupted`, without overflow, blocking or not.
    for cursor in [u64::MAX, u64::MAX - 1] {
        let seg = mpmc(4, 1, 1);
        seg.mem.consumer_line().position.store(cursor, Relaxed);
        seg.mem.producer_line().position.store(cursor, Relaxed);
        let mut rx = seg.consumer().unwrap();
        let r = rx.recv_timeout(&mut [0u8; 48], Duration::from_millis(100));
        assert!(matches!(r, Err(Error::Corrupted(_))), "{r:?}");
        let mut tx = seg.producer().unwrap();
        let r = tx.send_timeout(b"x", Duration::from_millis(100));
        assert!(matches!(r, Err(Error::Corrupted(_))), "{r:?}");
    }

    // Statistics continued from hostile counters wrap instead of overflowing.
    let seg = mpmc(4, 1, 1);
    for role in [Role::Producer, Role::Consumer] {
        let p = seg.mem.participant(role, 0).unwrap();
        p.frames.store(u64::MAX, Relaxed);
        p.bytes.store(u64::MAX, Relaxed);
    }
    let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
    let mut batch = tx.batch();
    batch.try_send(b"x").unwrap();
    assert_eq!(batch.len(), 1);
    drop(batch);
    assert_eq!(rx.try_drain(10, |_, _| {}).unwrap(), 1);
    let _ = seg.stats();
}

/// Found in review of step 5: a `try_drain` whose callback panics releases the rest of its
/// batch on unwinding (`MpmcRelease`), but woke nobody, so a producer parked for one of those
/// slots waited for its recheck. The consumer line's futex word must change.
#[test]
fn a_drain_whose_callback_panics_wakes_a_parked_producer() {
    let seg = mpmc(2, 2, 1);
    let (mut q, mut p) = (seg.producer().unwrap(), seg.producer().unwrap());
    let mut c = seg.consumer().unwrap();
    q.try_send(b"one").unwrap();
    q.try_send(b"two").unwrap();
    std::thread::scope(|s| {
        let parked = s.spawn(move || {
            p.set_wait_strategy(WaitStrategy::Park);
            p.send_timeout(b"three", Duration::from_secs(20))
        });
        until_counted(&seg.mem, false);
        let before = consumer_wakes(&seg.mem);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            c.try_drain(8, |_, _| panic!("the application's callback fails"))
        }));
        assert!(r.is_err(), "the callback panicked");
        assert_ne!(
            consumer_wakes(&seg.mem),
            before,
            "the slots released on unwinding woke nobody"
        );
        parked.join().unwrap().unwrap();
        let mut buf = [0u8; 48];
        let got = c.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
        assert_eq!(&buf[..got.len], b"three");
    });
}

/// Found in review of step 6 (broadcast, issue 11): a broadcast producer killed between its
/// commit and its position store leaves the position one behind. Its successor resumed past
/// the committed frame but left the position as it was, so its first scan's limit came from
/// a tail the position did not show: a subscriber joining before the successor's first commit
/// took the stale position for its join and was protected there, and under `Block` the
/// producer overwrote that frame while the subscriber held it in place, then lapped it past
/// a frame committed after the join (`missed` 2 on a `Block` channel). The successor now
/// publishes the tail it resumes at before its first scan.
#[test]
fn broadcast_successor_publishes_its_tail_before_a_subscriber_joins_below_it() {
    let seg = Segment::anonymous(
        &ChannelConfig::broadcast()
            .capacity(4 * 64)
            .max_frame_size(64)
            .max_consumers(1),
    )
    .unwrap();
    let mut tx = seg.producer().unwrap();
    for i in 0..3u8 {
        tx.try_send(&[i]).unwrap();
    }
    // Killed after committing position 2, before storing the position 3.
    seg.mem.producer_line().position.store(2, Relaxed);
    std::mem::forget(tx);
    evict(&seg, Role::Producer, 0);
    let mut tx = seg.producer().unwrap();
    // Its first claim (position 3) scans the subscribers: there are none yet.
    let mut claim = tx.try_claim(1).unwrap();
    let mut rx = seg.consumer().unwrap();
    claim[0] = 3;
    claim.commit();
    // The subscriber reads its first frame in place and holds it while the producer goes
    // as far as the ring lets it.
    let f = rx.try_read().unwrap();
    let held = f.to_vec();
    let mut sent = Vec::new();
    for i in 4..=8u8 {
        if tx.try_send(&[i]).is_err() {
            break;
        }
        sent.push(i);
    }
    assert_eq!(&*f, &held[..], "a frame held in place was overwritten");
    assert_eq!(held, [3], "the first frame after the join");
    drop(f);
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while let Ok(r) = rx.try_recv(&mut buf) {
        got.extend_from_slice(&buf[..r.len]);
    }
    assert_eq!(got, sent, "every frame after the held one, in order");
    assert_eq!(rx.missed(), 0, "nothing missed on a Block channel");
}

/// Found in review of step 6 (broadcast, issue 11): a subscriber whose join straddles a commit
/// (its first load of the position saw `p0`, its second `p1 > p0`) while the producer's scan
/// came before the join's fence may be lapped on the positions below `p1` (module docs of
/// `broadcast.rs`, *Join*; here, its one frame of history), never on those at or past `p1`. A
/// lapped subscriber skipped to the
/// producer's tail plus one less a ring, which on a `Block` channel whose producer had filled
/// the ring up to the limit that scan gave it is `p1 + 1`: the frame at `p1`, committed after
/// the join and intact in its slot, was skipped and counted missed. A `Block` subscriber now
/// skips no further than its join.
#[test]
fn broadcast_block_joiner_lapped_in_its_history_keeps_the_frames_after_its_join() {
    use crate::broadcast::{ConsumerCore, ProducerCore};
    use crate::sync::Ordering::Acquire;
    let seg = Segment::anonymous(
        &ChannelConfig::broadcast()
            .capacity(2 * 16)
            .max_frame_size(16)
            .max_consumers(1)
            .history(1),
    )
    .unwrap();
    let mem = &*seg.mem;
    assert_eq!(mem.geometry().capacity, 2, "two slots");
    let send = |p: &mut ProducerCore, i: u8| p.try_send(mem, &[i; 16]);
    // The subscriber's entry, admitted; a subscriber that held it before closed (its
    // `released` says gone) and this one has not joined yet.
    let entry = mem.participant(Role::Consumer, 0).unwrap();
    entry
        .owner
        .store(encode_owner(std::process::id(), 2), Relaxed);
    entry.released.store(u64::MAX, Relaxed);
    let mut p = ProducerCore::attach(mem).unwrap();
    send(&mut p, 0).unwrap();
    // The subscriber's first load of the position, before the commit of position 1.
    let p0 = mem.producer_line().position.load(Acquire);
    assert_eq!(p0, 1);
    send(&mut p, 1).unwrap();
    // The producer claims position 2, at its cached limit: it scans, before the join's
    // fence, and finds no subscriber to wait for.
    let (pos, bytes) = p.try_claim(mem, 16).unwrap();
    // The subscriber finishes its join: its second load finds 2.
    crate::broadcast::join_from(mem, entry, p0).unwrap();
    let mut c = ConsumerCore::attach(mem, 0).unwrap();
    mem.copy_in(bytes, &[2; 16]);
    p.commit(mem, pos, 16, 0);
    send(&mut p, 3).unwrap();
    assert!(
        matches!(send(&mut p, 4), Err(Error::WouldBlock(_))),
        "the producer waits for the subscriber"
    );
    // Position 1 (history) was overwritten; positions 2 and 3 were committed after the join.
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    while let Ok((len, _)) = c.try_recv(mem, &mut buf, &mut crate::message::Assembly::default()) {
        assert_eq!(buf[..len], [buf[0]; 16], "intact");
        got.push(buf[0]);
    }
    assert_eq!(got, [2, 3], "every frame committed after the join");
    assert_eq!(c.missed(), 0, "nothing missed on a Block channel");
}

/// Found in review of step 6 (broadcast, issue 11): a subscriber entry never used before had
/// `released` zero. A subscriber admitted to it (its owner word set, as the coordinator does
/// before the process maps the segment and joins) so held a `Block` producer that was a ring
/// past position zero back before it had joined: `WouldBlock("full")` here, and a parked
/// producer slept until a recheck. Free subscriber entries now say gone from the start.
#[test]
fn broadcast_subscriber_admitted_but_not_joined_holds_nobody_back() {
    let seg = Segment::anonymous(
        &ChannelConfig::broadcast()
            .capacity(4 * 64)
            .max_frame_size(64)
            .max_consumers(2),
    )
    .unwrap();
    let mut tx = seg.producer().unwrap();
    for i in 0..8u8 {
        tx.try_send(&[i]).unwrap();
    }
    crate::segment::take_entry(&seg.mem, Role::Consumer, std::process::id(), 0).unwrap();
    tx.try_send(&[8])
        .expect("a subscriber that has not joined holds nobody back");
}

/// Found in review of step 6: a slot scribbled with the sequence word of a far position (the
/// right slot, a position a million laps ahead) made a lapped subscriber skip to that
/// position, past everything the producer would write for years: it missed every frame from
/// then on and waited for good. A slot's position is now trusted only a lap past the
/// producer's published position.
#[test]
fn broadcast_slot_scribbled_with_a_far_position_costs_at_most_a_lap() {
    let seg = Segment::anonymous(
        &ChannelConfig::broadcast()
            .capacity(4 * 64)
            .max_frame_size(64)
            .max_consumers(1)
            .overflow(crate::layout::Overflow::DropOldest),
    )
    .unwrap();
    let mut tx = seg.producer().unwrap();
    let mut rx = seg.consumer().unwrap();
    tx.try_send(&[0]).unwrap();
    // Position 0's slot now claims position 4 << 20 is committed there (same slot).
    let far = 4u64 << 20;
    seg.mem.slot_seq(0).store(2 * far + 2, Relaxed);
    let mut buf = [0u8; 64];
    assert!(rx.try_recv(&mut buf).is_err());
    for i in 1..=8u8 {
        tx.try_send(&[i]).unwrap();
    }
    let mut got = Vec::new();
    while let Ok(r) = rx.try_recv(&mut buf) {
        got.push(buf[..r.len][0]);
    }
    assert!(!got.is_empty(), "frames after the scribble still arrive");
    assert_eq!(*got.last().unwrap(), 8);
    assert!(rx.missed() <= 8, "missed {}", rx.missed());
}

/// Review of step 9 (messages longer than a frame): records a hostile writer puts in an SPSC
/// ring. Before the fixes an empty `PART` record was accepted (a run of them kept a receive
/// from finishing), a run of orphan `PART` records or of `FIRST` records kept a non-waiting
/// receive inside for as long as the writer kept writing, and a `FIRST` record claiming a huge
/// message made `read` allocate all of it at once.
#[test]
fn hostile_records_of_split_messages() {
    use crate::layout::{RecordType, lap_tag};
    let cfg = ChannelConfig::spsc()
        .capacity(4096)
        .max_frame_size(64)
        .max_message_size(1 << 40);
    let lap = |pos: u64| lap_tag(pos, 12);
    // Writes records `(type, length, first payload word)` one after the other from position 0,
    // then publishes them (the first header last).
    let write = |seg: &Segment, recs: &[(RecordType, u32, u64)]| {
        let mut pos = 0u64;
        let mut first = None;
        for &(ty, len, word) in recs {
            let payload = seg.mem.range(pos as usize + 8, 8).unwrap();
            seg.mem.copy_in(payload, &word.to_ne_bytes());
            let h = encode_header(len, ty, 0, lap(pos));
            if first.is_none() {
                first = Some((pos, h));
            } else {
                seg.mem.record_word(pos).store(h, Relaxed);
            }
            pos += crate::layout::record_size(len as usize) as u64;
        }
        let (p, h) = first.unwrap();
        seg.mem.record_word(p).store(h, Release);
    };

    // An empty PART: damage, not a record to step over forever.
    let seg = Segment::anonymous(&cfg).unwrap();
    write(&seg, &[(RecordType::Part, 0, 0)]);
    let r = seg.consumer().unwrap().try_recv(&mut [0u8; 64]);
    assert!(matches!(r, Err(Error::Corrupted(_))), "{r:?}");

    // A FIRST record with no byte of its message after the prefix: damage too.
    let seg = Segment::anonymous(&cfg).unwrap();
    write(&seg, &[(RecordType::First, 8, 100)]);
    let r = seg.consumer().unwrap().try_recv(&mut [0u8; 64]);
    assert!(matches!(r, Err(Error::Corrupted(_))), "{r:?}");

    // FIRST records one after the other, each claiming a terabyte: a receive ends after a few
    // (the rest are there for the next call), and `read` holds only what arrived.
    let seg = Segment::anonymous(&cfg).unwrap();
    let recs: Vec<_> = (0..150)
        .map(|_| (RecordType::First, 16, 1u64 << 40))
        .collect();
    write(&seg, &recs);
    let mut rx = seg.consumer().unwrap();
    let r = rx.try_read().map(|f| f.len());
    assert!(matches!(r, Err(Error::WouldBlock("message"))), "{r:?}");
    assert!(
        rx.asm_capacity() < 1 << 20,
        "{} bytes held",
        rx.asm_capacity()
    );
    assert_eq!(rx.missed(), 2, "two messages begun and dropped");

    // Orphan PART records filling the ring: stepped over, a ring's worth per call.
    let seg = Segment::anonymous(&cfg).unwrap();
    let recs: Vec<_> = (0..255).map(|_| (RecordType::Part, 8, 0)).collect();
    write(&seg, &recs);
    let mut rx = seg.consumer().unwrap();
    let r = rx.try_recv(&mut [0u8; 64]);
    assert!(matches!(r, Err(Error::WouldBlock(_))), "{r:?}");
    assert_eq!(
        rx.missed(),
        1,
        "the rest of one message whose start was never seen"
    );
}

/// A broadcast channel that splits messages needs room for the length prefix in a slot.
#[test]
fn a_broadcast_channel_of_tiny_frames_cannot_split_messages() {
    let cfg = ChannelConfig::broadcast()
        .capacity(64)
        .max_frame_size(8)
        .max_message_size(100);
    let r = Segment::anonymous(&cfg);
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    let ok = ChannelConfig::broadcast()
        .capacity(64)
        .max_frame_size(16)
        .max_message_size(100);
    assert!(Segment::anonymous(&ok).is_ok());
}

/// Found in review of step 10: a partition's consumer that stepped over padding (the ring
/// wrapped) and then found the next frame too long for its buffer had its read position past
/// its delivered mark; a checkpoint committed there, and a death before the release, left a
/// checkpoint past the delivered mark, which every successor refused as corrupted: the
/// partition could never be read again. The checkpoint now raises the delivered mark to it.
#[test]
fn a_checkpoint_after_padding_is_accepted_by_the_successor() {
    let seg = Segment::anonymous(
        &ChannelConfig::spsc()
            .capacity(64)
            .max_frame_size(24)
            .checkpoint_size(16),
    )
    .unwrap();
    let mut tx = seg.producer().unwrap();
    let mut c1 = seg.consumer().unwrap();
    let mut buf = [0u8; 24];
    // Two records of 24 bytes at 0 and 24, taken and committed.
    for i in 0..2u8 {
        tx.try_send(&[i; 16]).unwrap();
        assert_eq!(c1.try_take_held(&mut buf).unwrap().len, 16);
    }
    c1.commit_held(Some(b"two")).unwrap();
    // The third (a 32-byte record) does not fit in the 16 bytes left: padding, then offset 0.
    tx.try_send(&[2; 24]).unwrap();
    let mut small = [0u8; 8];
    assert!(matches!(
        c1.try_take_held(&mut small),
        Err(Error::BufferTooSmall { needed: 24, .. })
    ));
    // Killed between the checkpoint and the release.
    c1.checkpoint_held(b"two, again").unwrap();
    std::mem::forget(c1);
    evict(&seg, Role::Consumer, 0);
    crate::spsc::publish_released(&seg.mem, seg.mem.participant(Role::Consumer, 0).unwrap())
        .unwrap();
    let mut c2 = seg.consumer().unwrap();
    let state = c2.resume_from_checkpoint().unwrap();
    assert_eq!(state.as_deref(), Some(&b"two, again"[..]));
    let got = c2.try_take_held(&mut buf).unwrap();
    assert_eq!((got.len, &buf[..24]), (24, &[2u8; 24][..]));
}

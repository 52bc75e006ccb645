//! White-box tests of the state a coordinator's repair relies on. A test "kills" a participant
//! by leaking its handle and frees its table entry by hand, as the coordinator does once it has
//! confirmed the death and repaired what the entry held (tests/tests/crash.rs does it with real
//! processes and a real coordinator).

use crate::layout::{Role, decode_claim, decode_owner, encode_owner};
use crate::sync::Ordering::Relaxed;
use crate::{ChannelConfig, Error, Segment};

/// Frees entry `index` of `role`, as a coordinator does for a dead owner.
fn evict(seg: &Segment, role: Role, index: u32) {
    let p = seg.mem.participant(role, index).unwrap();
    let (pid, inc) = decode_owner(p.owner.load(Relaxed));
    assert_ne!(pid, 0, "entry {index} of {role} is not held");
    p.owner.store(encode_owner(0, inc), Relaxed);
}

fn spsc() -> Segment {
    Segment::anonymous(&ChannelConfig::spsc().capacity(4096).max_frame_size(512)).unwrap()
}

#[test]
fn spsc_consumer_successor_resumes_and_flags_unreleased_frames() {
    let seg = spsc();
    let mut tx = seg.producer().unwrap();
    for i in 0..4u8 {
        tx.try_send(&[i; 40]).unwrap();
    }
    let mut rx = seg.consumer().unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(rx.try_recv(&mut buf).unwrap().len, 40); // frame 0: released
    let f = rx.try_read().unwrap(); // frame 1: handed out...
    assert_eq!(f[0], 1);
    std::mem::forget(f); // ...and the process dies before releasing it
    std::mem::forget(rx);
    evict(&seg, Role::Consumer, 0);

    let mut rx = seg.consumer().unwrap();
    let mut got = Vec::new();
    rx.try_drain(10, |f, flags| got.push((f[0], flags.is_redelivered())))
        .unwrap();
    assert_eq!(got, vec![(1, true), (2, false), (3, false)]);
}

#[test]
fn spsc_drain_interrupted_by_a_panic_loses_nothing() {
    let seg = spsc();
    let mut tx = seg.producer().unwrap();
    for i in 0..5u8 {
        tx.try_send(&[i; 8]).unwrap();
    }
    let mut rx = seg.consumer().unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rx.try_drain(10, |f, _| assert!(f[0] < 2, "dies on frame 2"))
    }));
    assert!(r.is_err());
    std::mem::forget(rx);
    evict(&seg, Role::Consumer, 0);
    let mut rx = seg.consumer().unwrap();
    let mut got = Vec::new();
    rx.try_drain(10, |f, flags| got.push((f[0], flags.is_redelivered())))
        .unwrap();
    // Frames 0..=2 were handed to the callback: all redelivered, flagged. 3 and 4 were not.
    assert_eq!(
        got,
        vec![(0, true), (1, true), (2, true), (3, false), (4, false)]
    );
}

#[test]
fn spsc_producer_successor_finds_the_true_end() {
    let seg = spsc();
    let mut rx = seg.consumer().unwrap();
    let mut tx = seg.producer().unwrap();
    for i in 0..3u8 {
        tx.try_send(&[i; 100]).unwrap();
    }
    // A fourth frame staged in a batch, never published: the producer dies mid-batch.
    let mut batch = tx.batch();
    batch.try_send(&[9; 100]).unwrap();
    std::mem::forget(batch);
    std::mem::forget(tx);
    // And its last tail store was lost: the published tail lags by two records.
    let line = seg.mem.producer_line();
    line.position
        .store(line.position.load(Relaxed) - 2 * 112, Relaxed);
    evict(&seg, Role::Producer, 0);

    let mut tx = seg.producer().unwrap();
    tx.try_send(&[3; 100]).unwrap();
    let mut got = Vec::new();
    rx.try_drain(10, |f, _| got.push(f[0])).unwrap();
    assert_eq!(
        got,
        vec![0, 1, 2, 3],
        "no frame lost, none duplicated, none invented"
    );
}

#[test]
fn spsc_attach_rejects_inconsistent_cursors() {
    let seg = spsc();
    drop(seg.producer().unwrap());
    seg.mem.consumer_line().position.store(4, Relaxed); // not 8-aligned
    assert!(matches!(seg.producer(), Err(Error::Corrupted(_))));
    assert!(matches!(seg.consumer(), Err(Error::Corrupted(_))));
    seg.mem.consumer_line().position.store(0, Relaxed);
    // A delivered mark far beyond the ring.
    seg.mem
        .participant(Role::Consumer, 0)
        .unwrap()
        .claim
        .store(1 << 40, Relaxed);
    assert!(matches!(seg.consumer(), Err(Error::Corrupted(_))));
}

#[test]
fn mpmc_claim_records_name_the_positions_taken() {
    let seg =
        Segment::anonymous(&ChannelConfig::mpmc().capacity(64 * 16).max_frame_size(64)).unwrap();
    let mut a = seg.producer().unwrap();
    let mut b = seg.producer().unwrap();
    let claim = |role, i| decode_claim(seg.mem.participant(role, i).unwrap().claim.load(Relaxed));
    a.try_send(b"a0").unwrap();
    let pending = b.try_claim(8).unwrap(); // b holds position 1, uncommitted
    assert_eq!(claim(Role::Producer, 0), (0, 1));
    assert_eq!(claim(Role::Producer, 1), (1, 1));
    drop(pending);
    a.try_send_batch([&b"a2"[..], b"a3", b"a4"]).unwrap();
    assert_eq!(claim(Role::Producer, 0), (4, 1));

    let mut c = seg.consumer().unwrap();
    let f = c.try_read().unwrap();
    assert_eq!(&*f, b"a0");
    assert_eq!(claim(Role::Consumer, 0), (0, 1));
    drop(f);
    // Position 1 was aborted (a skip), so the next read takes 1 and then 2.
    let f = c.try_read().unwrap();
    assert_eq!(&*f, b"a2");
    assert_eq!(claim(Role::Consumer, 0), (2, 1));
    drop(f);
    assert_eq!(c.try_drain(10, |_, _| {}).unwrap(), 2);
    assert_eq!(
        claim(Role::Consumer, 0),
        (3, 2),
        "one claim record for the batch"
    );
}

#[test]
fn mpmc_corrupt_slot_is_reported_and_released() {
    let seg =
        Segment::anonymous(&ChannelConfig::mpmc().capacity(64 * 4).max_frame_size(64)).unwrap();
    let mut tx = seg.producer().unwrap();
    let mut rx = seg.consumer().unwrap();
    tx.try_send(b"first").unwrap();
    tx.try_send(b"second").unwrap();
    // Scribble a length past max_frame_size into the first slot's header.
    let h = seg.mem.slot_header(0);
    h.store((h.load(Relaxed) & !0xffff_ffff) | 100_000, Relaxed);
    assert!(matches!(rx.try_read(), Err(Error::Corrupted(_))));
    // The bad slot was released, so the ring goes on.
    assert_eq!(&*rx.try_read().unwrap(), b"second");
    for _ in 0..8 {
        tx.try_send(b"more").unwrap();
        assert_eq!(&*rx.try_read().unwrap(), b"more");
    }
}

#[test]
fn spsc_head_is_published_in_batches_and_when_the_ring_is_empty() {
    let seg = spsc(); // 4096-byte ring: the head is published every 1024 bytes
    let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
    for i in 0..100u8 {
        tx.try_send(&[i; 8]).unwrap(); // 16-byte records
    }
    let head = || seg.mem.consumer_line().position.load(Relaxed);
    let released = || {
        seg.mem
            .participant(Role::Consumer, 0)
            .unwrap()
            .released
            .load(Relaxed)
    };
    let mut buf = [0u8; 8];
    for _ in 0..10 {
        rx.try_recv(&mut buf).unwrap();
    }
    assert_eq!(
        (head(), released()),
        (0, 160),
        "released privately, head not yet published"
    );
    for _ in 10..70 {
        rx.try_recv(&mut buf).unwrap();
    }
    assert_eq!(head(), 1024, "published once a quarter ring was released");
    for _ in 70..100 {
        rx.try_recv(&mut buf).unwrap();
    }
    assert!(head() < 1600);
    assert!(rx.try_recv(&mut buf).is_err());
    assert_eq!(head(), 1600, "an empty ring publishes everything");
    // A successor of a consumer that died between batches resumes at its released position.
    tx.try_send(&[200; 8]).unwrap();
    rx.try_recv(&mut buf).unwrap();
    assert_eq!((head(), released()), (1600, 1616));
    std::mem::forget(rx);
    evict(&seg, Role::Consumer, 0);
    let mut rx = seg.consumer().unwrap();
    assert!(
        rx.try_recv(&mut buf).is_err(),
        "the received frame is not delivered again"
    );
}

/// A finish racing a producer's admission (`segment::finish_stream` against `reopen`), in the
/// two interleavings the store-buffer pattern has to handle, and the stale take-back that the
/// state word's count of finishes rules out.
#[test]
fn a_finish_mark_is_taken_back_only_by_its_own_finisher_and_only_once() {
    use crate::layout::{STATE_FINISHED, STATE_READY, state_of};
    use crate::segment::{confirm_finished, mark_finished};
    let seg = Segment::anonymous(&ChannelConfig::mpmc().max_producers(2)).unwrap();
    let state = || state_of(seg.mem.state().load(Relaxed));
    let mut rx = seg.consumer().unwrap();

    // A producer whose admission looked at the state before the mark (so it did not take the
    // mark back): the finisher's count after its fence sees it, and takes its own mark back.
    let marked = mark_finished(&seg.mem).expect("no producer is attached");
    let p = seg.mem.participant(Role::Producer, 0).unwrap();
    let (_, inc) = decode_owner(p.owner.load(Relaxed));
    p.owner.store(encode_owner(4242, inc + 1), Relaxed); // admitted without `reopen`
    assert!(!confirm_finished(&seg.mem, marked));
    assert_eq!(state(), STATE_READY);
    assert!(matches!(
        rx.try_recv(&mut [0; 8]),
        Err(Error::WouldBlock(_))
    ));
    evict(&seg, Role::Producer, 0);

    // A producer admitted after the mark (`take_entry` runs `reopen`) takes it back itself...
    let stale = mark_finished(&seg.mem).unwrap();
    let tx = seg.producer().unwrap();
    assert_eq!(state(), STATE_READY);
    // ...and finishes in turn, while the first finisher has not yet confirmed: the first
    // finisher's take-back of its own (stale) mark must not undo the second finish.
    tx.finish().unwrap();
    assert_eq!(state(), STATE_FINISHED);
    let p = seg.mem.participant(Role::Producer, 1).unwrap();
    let (_, inc) = decode_owner(p.owner.load(Relaxed));
    p.owner.store(encode_owner(4243, inc + 1), Relaxed); // seen by the stale confirm
    assert!(!confirm_finished(&seg.mem, stale));
    assert_eq!(state(), STATE_FINISHED, "a later finish was taken back");
    evict(&seg, Role::Producer, 1);
    assert!(matches!(rx.try_recv(&mut [0; 8]), Err(Error::Closed(_))));
}

//! Frames held until a downstream acknowledges them (`Consumer::try_recv_held`), and the
//! redelivered flag set by a producer (`Claim::commit_flagged`): what the bridge to other hosts
//! stands on.

#![cfg(not(loom))]

use shmring::{ChannelConfig, Error, FrameFlags, Segment};

fn segment(tag: &str, config: &ChannelConfig) -> (Segment, String) {
    let name = format!("held-{tag}-{}", std::process::id());
    (Segment::create(&name, config).unwrap(), name)
}

#[test]
fn held_frames_are_released_in_order_and_rewound_with_their_flags() {
    let (seg, name) = segment("order", &ChannelConfig::spsc());
    let mut tx = seg.producer().unwrap();
    let mut rx = seg.consumer().unwrap();
    for i in 0u8..5 {
        let mut c = tx.claim(8).unwrap();
        c.fill(i);
        let flags = if i == 2 {
            FrameFlags::REDELIVERED
        } else {
            FrameFlags::NONE
        };
        c.commit_flagged(8, flags).unwrap();
    }
    let mut buf = [0u8; 64];
    let mut positions = vec![];
    for i in 0u8..3 {
        let r = rx.try_recv_held(&mut buf).unwrap();
        assert_eq!((r.len, buf[0]), (8, i));
        assert_eq!(r.flags.is_redelivered(), i == 2, "frame {i}");
        positions.push(rx.held_position());
    }
    // Frames 0 and 1 acknowledged; 2 sent but not; the rest not taken.
    rx.release_held(positions[1]).unwrap();
    rx.rewind_held();
    for i in 2u8..5 {
        let r = rx.try_recv_held(&mut buf).unwrap();
        assert_eq!(
            buf[0], i,
            "after the rewind, the first frame not released comes again"
        );
        assert_eq!(
            r.flags.is_redelivered(),
            i == 2,
            "a rewind keeps each frame's own flag (frame {i})"
        );
    }
    assert!(matches!(
        rx.try_recv_held(&mut buf),
        Err(Error::WouldBlock(_))
    ));
    // A position already released is refused.
    assert!(matches!(
        rx.release_held(positions[0]),
        Err(Error::InvalidArgument(_))
    ));
    rx.release_held(rx.held_position()).unwrap();
    drop((tx, rx));
    Segment::unlink(&name).unwrap();
}

#[test]
fn frames_held_by_a_dropped_consumer_go_to_the_next_one_flagged() {
    let (seg, name) = segment("drop", &ChannelConfig::spsc());
    let mut tx = seg.producer().unwrap();
    for i in 0u8..4 {
        tx.send(&[i; 16]).unwrap();
    }
    let mut buf = [0u8; 64];
    {
        let mut rx = seg.consumer().unwrap();
        rx.try_recv_held(&mut buf).unwrap();
        let p = rx.held_position();
        rx.try_recv_held(&mut buf).unwrap();
        rx.try_recv_held(&mut buf).unwrap();
        rx.release_held(p).unwrap();
        // Dropped holding frames 1 and 2.
    }
    let mut rx = seg.consumer().unwrap();
    for (i, flagged) in [(1u8, true), (2, true), (3, false)] {
        let r = rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf[0], i);
        assert_eq!(r.flags.is_redelivered(), flagged, "frame {i}");
    }
    drop((tx, rx));
    Segment::unlink(&name).unwrap();
}

#[test]
fn a_flag_committed_by_the_producer_reaches_the_consumer_of_every_kind() {
    let mut broadcast = ChannelConfig::broadcast();
    broadcast.max_consumers = 2;
    for (tag, config) in [
        ("spsc", ChannelConfig::spsc()),
        ("mpmc", ChannelConfig::mpmc()),
        ("bcast", broadcast),
    ] {
        let (seg, name) = segment(&format!("flag-{tag}"), &config);
        let mut rx = seg.consumer().unwrap();
        let mut tx = seg.producer().unwrap();
        tx.claim(4)
            .unwrap()
            .commit_flagged(4, FrameFlags::REDELIVERED)
            .unwrap();
        tx.claim(4)
            .unwrap()
            .commit_flagged(4, FrameFlags::NONE)
            .unwrap();
        assert!(matches!(
            tx.claim(4).unwrap().commit_flagged(5, FrameFlags::NONE),
            Err(Error::InvalidArgument(_))
        ));
        let mut buf = [0u8; 64];
        assert!(
            rx.try_recv(&mut buf).unwrap().flags.is_redelivered(),
            "{tag}"
        );
        assert!(
            !rx.try_recv(&mut buf).unwrap().flags.is_redelivered(),
            "{tag}"
        );
        drop((tx, rx));
        Segment::unlink(&name).unwrap();
    }
}

#[test]
fn frames_cannot_be_held_where_they_are_released_as_received() {
    for (tag, config) in [
        ("mpmc", ChannelConfig::mpmc()),
        ("split", {
            let mut c = ChannelConfig::spsc();
            c.max_message_size = 1 << 20;
            c
        }),
    ] {
        let (seg, name) = segment(&format!("refuse-{tag}"), &config);
        let mut rx = seg.consumer().unwrap();
        let mut buf = [0u8; 64];
        assert!(
            matches!(rx.try_recv_held(&mut buf), Err(Error::InvalidArgument(_))),
            "{tag}"
        );
        drop(rx);
        Segment::unlink(&name).unwrap();
    }
}

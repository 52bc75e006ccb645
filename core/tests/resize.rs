//! Online resize: a live channel gets a new capacity while its producer and consumers keep
//! running; every frame arrives once, in order, and nobody re-opens a handle.

#![cfg(not(loom))]

use shmring::{ChannelConfig, Client, Coordinator, Error, Overflow, WaitStrategy};
use std::time::Duration;

mod common;
use common::{RemoveDir, watchdog};

/// A coordinator of a namespace of its own, a client of it, and the guard (dropped last).
fn setup(tag: &str) -> (Client, Coordinator, RemoveDir) {
    common::coordinator("rs", tag)
}

/// Frame `i`: its number, then `len - 8` bytes that depend on it.
fn frame(i: u64, len: usize) -> Vec<u8> {
    let mut f = i.to_le_bytes().to_vec();
    f.extend((8..len.max(8)).map(|j| (i as usize ^ j) as u8));
    f
}

fn number(f: &[u8]) -> u64 {
    u64::from_le_bytes(f[..8].try_into().unwrap())
}

/// Sends at least `n` frames of varying length from one thread, and on until every resize is
/// made (a resize waits for the last one to be complete, which takes a send from the
/// producer), while another receives them, resizing the channel through `sizes` meanwhile;
/// checks every frame once, whole, in order.
fn resized_under_load(config: ChannelConfig, tag: &str, sizes: &[u64], n: u64) {
    use std::sync::Arc;
    use std::sync::Mutex;
    let (client, _coord, _dir) = setup(tag);
    client.create("c", &config).unwrap();
    let mut rx = client.consumer("c").unwrap();
    let mut tx = client.producer("c").unwrap();
    // Messages longer than a frame where the channel takes them.
    let max = (config.max_message_size as usize).max(config.max_frame_size as usize);
    let resized = Arc::new(Mutex::new(false));
    let total = Arc::new(Mutex::new(u64::MAX));
    let sender = {
        let (resized, total) = (resized.clone(), total.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while i < n || !*resized.lock().unwrap() {
                tx.send(&frame(i, 8 + (i as usize * 37) % (max - 8)))
                    .unwrap();
                i += 1;
            }
            *total.lock().unwrap() = i;
            tx
        })
    };
    let resizer = {
        let client = client.clone();
        let sizes = sizes.to_vec();
        std::thread::spawn(move || {
            let mut done = 0;
            for &size in &sizes {
                // Spread over the run.
                std::thread::sleep(Duration::from_millis(20));
                // The previous resize must be complete before the next: Busy until then.
                loop {
                    match client.resize("c", size) {
                        Ok(_) => {
                            done += 1;
                            break;
                        }
                        Err(Error::Busy(_)) => std::thread::sleep(Duration::from_millis(2)),
                        Err(e) => panic!("resize to {size}: {e}"),
                    }
                }
            }
            *resized.lock().unwrap() = true;
            done
        })
    };
    let mut buf = vec![0u8; max];
    let mut i = 0;
    while i < *total.lock().unwrap() {
        let got = match rx.recv_timeout(&mut buf, Duration::from_millis(10)) {
            Ok(got) => got,
            Err(Error::TimedOut(_)) => continue,
            Err(e) => panic!("{e}"),
        };
        let f = &buf[..got.len];
        assert_eq!(number(f), i, "frame {i} arrives {i}th");
        assert_eq!(f, &frame(i, got.len)[..], "frame {i} whole");
        i += 1;
    }
    let tx = sender.join().unwrap();
    assert_eq!(resizer.join().unwrap(), sizes.len());
    let stats = client.stats("c").unwrap();
    assert_eq!(stats.resizes, sizes.len() as u64);
    // The counters go on across the resizes.
    assert_eq!((stats.frames_in, stats.frames_out), (i, i));
    drop(tx);
    assert!(
        matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock(_))),
        "nothing more"
    );
}

#[test]
fn an_spsc_channel_grows_and_shrinks_under_load() {
    let _dog = watchdog("an_spsc_channel_grows_and_shrinks_under_load", 120);
    resized_under_load(
        ChannelConfig::spsc()
            .capacity(64 << 10)
            .max_frame_size(1024),
        "spsc",
        &[4 << 20, 128 << 10, 1 << 20],
        200_000,
    );
}

#[test]
fn a_broadcast_channel_grows_and_shrinks_under_load() {
    let _dog = watchdog("a_broadcast_channel_grows_and_shrinks_under_load", 120);
    resized_under_load(
        ChannelConfig::broadcast()
            .capacity(64 << 10)
            .max_frame_size(1024),
        "bcast",
        &[4 << 20, 128 << 10, 1 << 20],
        200_000,
    );
}

#[test]
fn an_mpmc_channel_grows_and_shrinks_under_load() {
    let _dog = watchdog("an_mpmc_channel_grows_and_shrinks_under_load", 120);
    resized_under_load(
        ChannelConfig::mpmc()
            .capacity(64 << 10)
            .max_frame_size(1024),
        "mpmc",
        &[4 << 20, 128 << 10, 1 << 20],
        200_000,
    );
}

/// Messages longer than a frame through an MPMC channel's pool, across resizes.
#[test]
fn an_mpmc_channel_with_a_pool_is_resized_under_load() {
    let _dog = watchdog("an_mpmc_channel_with_a_pool_is_resized_under_load", 120);
    resized_under_load(
        ChannelConfig::mpmc()
            .capacity(16 << 10)
            .max_frame_size(1024)
            .max_message_size(64 << 10),
        "mpool",
        &[1 << 20, 16 << 10, 256 << 10],
        20_000,
    );
}

#[test]
fn a_producer_blocked_on_a_full_ring_moves_to_the_grown_one() {
    let _dog = watchdog(
        "a_producer_blocked_on_a_full_ring_moves_to_the_grown_one",
        60,
    );
    let (client, _coord, _dir) = setup("blocked");
    client
        .create(
            "c",
            &ChannelConfig::spsc().capacity(4096).max_frame_size(256),
        )
        .unwrap();
    let mut rx = client.consumer("c").unwrap();
    let mut tx = client.producer("c").unwrap();
    let sender = std::thread::spawn(move || {
        // Far more than the ring holds: blocks until the resize gives it room.
        for i in 0..1000u64 {
            tx.send(&frame(i, 100)).unwrap();
        }
        tx
    });
    while client.stats("c").unwrap().info.depth < 3000 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let info = client.resize("c", 1 << 20).unwrap();
    assert_eq!(info.capacity_bytes, 1 << 20);
    // The producer finishes without the consumer taking anything.
    let tx = sender.join().unwrap();
    let stats = client.stats("c").unwrap();
    assert!(stats.draining_generation != 0, "the old ring is still full");
    assert!(stats.info.depth > 0 && stats.draining_depth > 0);
    let mut buf = [0u8; 256];
    for i in 0..1000u64 {
        let got = rx.recv(&mut buf).unwrap();
        assert_eq!(number(&buf[..got.len]), i);
    }
    drop((tx, rx));
    // Drained and left: the old generation is retired.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client.stats("c").unwrap().draining_generation != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "old generation retired"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_second_resize_waits_for_the_first_and_a_bad_capacity_is_refused() {
    let _dog = watchdog(
        "a_second_resize_waits_for_the_first_and_a_bad_capacity_is_refused",
        60,
    );
    let (client, _coord, _dir) = setup("busy");
    client.create("c", &ChannelConfig::spsc()).unwrap();
    let rx = client.consumer("c").unwrap();
    let mut tx = client.producer("c").unwrap();
    tx.send(b"before").unwrap();
    client.resize("c", 4 << 20).unwrap();
    // The producer that has not moved yet keeps its place in the new ring: one at a time.
    assert!(matches!(client.producer("c"), Err(Error::Busy(_))));
    match client.resize("c", 2 << 20) {
        Err(Error::Busy(m)) => assert!(m.contains("still moving"), "{m}"),
        other => panic!("second resize while the first is under way: {other:?}"),
    }
    drop((rx, tx));
    // Nobody left: the first one completes, after the frame left in the old ring is taken.
    let mut rx = client.consumer("c").unwrap();
    assert_eq!(&*rx.read().unwrap(), b"before");
    let mut tx = client.producer("c").unwrap();
    tx.send(b"after").unwrap();
    assert_eq!(&*rx.read().unwrap(), b"after");
    drop((rx, tx));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client.resize("c", 2 << 20) {
            Ok(info) => {
                assert_eq!(info.capacity_bytes, 2 << 20);
                break;
            }
            Err(Error::Busy(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    }
    // A capacity that cannot hold two of the channel's frames is refused, the channel intact.
    match client.resize("c", 1024) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("capacity"), "{m}"),
        other => panic!("resize below two frames: {other:?}"),
    }
    assert_eq!(client.stats("c").unwrap().info.capacity_bytes, 2 << 20);
}

#[test]
fn a_finished_stream_stays_finished_across_a_resize() {
    let _dog = watchdog("a_finished_stream_stays_finished_across_a_resize", 60);
    let (client, _coord, _dir) = setup("finish");
    client
        .create("c", &ChannelConfig::broadcast().overflow(Overflow::Block))
        .unwrap();
    let mut rx = client.consumer("c").unwrap();
    rx.set_wait_strategy(WaitStrategy::Park);
    let mut tx = client.producer("c").unwrap();
    tx.send(b"one").unwrap();
    client.resize("c", 4 << 20).unwrap();
    tx.send(b"two").unwrap(); // in the new ring
    tx.finish().unwrap();
    assert_eq!(&*rx.read().unwrap(), b"one");
    assert_eq!(&*rx.read().unwrap(), b"two");
    assert!(matches!(rx.read(), Err(Error::Closed(_))));
}

/// An event loop polling the consumer's descriptor keeps receiving across resizes, and one
/// polling the producer's keeps sending: the same descriptors, now watching the new segment.
/// With either backend, and the recheck stretched to a minute (a lost wake-up hangs the
/// watchdog rather than pass for a slow one).
#[test]
fn polled_handles_follow_with_the_same_descriptors() {
    let _dog = watchdog("polled_handles_follow_with_the_same_descriptors", 120);
    shmring::set_fd_recheck_interval(Duration::from_secs(60));
    for backend in [shmring::FdBackend::Uring, shmring::FdBackend::Thread] {
        shmring::set_fd_backend(backend);
        polled_across_resizes(&format!("{backend:?}"));
    }
}

/// Waits until `fd` is readable.
fn wait_readable(fd: std::os::fd::RawFd) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::BorrowedFd;
    // SAFETY: the handle owns the descriptor and outlives this borrow.
    let mut fds = [PollFd::new(
        unsafe { BorrowedFd::borrow_raw(fd) },
        PollFlags::POLLIN,
    )];
    poll(&mut fds, PollTimeout::NONE).unwrap();
}

fn polled_across_resizes(tag: &str) {
    use std::sync::Arc;
    use std::sync::Mutex;
    let (client, _coord, _dir) = setup(&format!("poll{tag}"));
    client
        .create(
            "c",
            &ChannelConfig::spsc().capacity(4096).max_frame_size(256),
        )
        .unwrap();
    let mut rx = client.consumer("c").unwrap();
    let rx_fd = match rx.fd() {
        Ok(fd) => fd,
        Err(e) => {
            println!("{tag}: no pollable descriptor here ({e}); skipped");
            return;
        }
    };
    let mut tx = client.producer("c").unwrap();
    // At least this many frames, and on until the resizes are made (see `resized_under_load`).
    const N: u64 = 20_000;
    let resized = Arc::new(Mutex::new(false));
    let total = Arc::new(Mutex::new(u64::MAX));
    let sender = {
        let (resized, total) = (resized.clone(), total.clone());
        std::thread::spawn(move || {
            let fd = tx.fd().unwrap();
            let mut i = 0;
            while i < N || !*resized.lock().unwrap() {
                match tx.try_send(&frame(i, 64)) {
                    Ok(()) => i += 1,
                    Err(Error::WouldBlock(_)) => {
                        assert_eq!(tx.fd().unwrap(), fd, "the same descriptor");
                        wait_readable(fd);
                    }
                    Err(e) => panic!("{e}"),
                }
                if i % 1000 == 999 {
                    // Let the ring run dry now and then: the consumer waits in poll.
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            *total.lock().unwrap() = i;
            // The consumer may be waiting in poll for a frame that will not come: one more.
            tx.send(&frame(i, 64)).unwrap();
            tx
        })
    };
    let resizer = {
        let client = client.clone();
        std::thread::spawn(move || {
            for size in [1 << 20, 8192, 64 << 10] {
                std::thread::sleep(Duration::from_millis(5));
                while let Err(Error::Busy(_)) = client.resize("c", size) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            *resized.lock().unwrap() = true;
        })
    };
    let mut buf = [0u8; 256];
    let mut i = 0;
    while i < *total.lock().unwrap() {
        match rx.try_recv(&mut buf) {
            Ok(got) => {
                assert_eq!(number(&buf[..got.len]), i, "{tag}");
                i += 1;
                if i % 3000 == 0 {
                    // A full ring now and then: the producer waits in poll.
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            Err(Error::WouldBlock(_)) => {
                assert_eq!(rx.fd().unwrap(), rx_fd, "the same descriptor");
                wait_readable(rx_fd);
            }
            Err(e) => panic!("{e}"),
        }
    }
    resizer.join().unwrap();
    drop(sender.join().unwrap());
    assert_eq!(client.stats("c").unwrap().resizes, 3, "{tag}");
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD).unwrap();
    let (s, us) = (u.user_time(), u.system_time());
    Duration::from_micros(
        (s.tv_sec() as u64 + us.tv_sec() as u64) * 1_000_000
            + s.tv_usec() as u64
            + us.tv_usec() as u64,
    )
}

/// A producer that waits, parked, for room in a ring a resize replaces does not spin: an MPMC
/// send on a full old ring moves to the new one at once (nothing of it was taken in the old
/// one), and an SPSC message streaming through the old ring waits there, asleep, to finish
/// where it began. (Found in review: both woke for the `moved` word and spun at full speed.)
#[test]
fn producers_waiting_in_a_replaced_ring_do_not_spin() {
    let _dog = watchdog("producers_waiting_in_a_replaced_ring_do_not_spin", 60);
    let (client, _coord, _dir) = setup("nospin");
    // MPMC: 4 slots, full; a fifth send waits, then lands in the grown ring.
    client
        .create(
            "m",
            &ChannelConfig::mpmc()
                .capacity(4 * 64)
                .max_frame_size(64)
                .max_producers(1),
        )
        .unwrap();
    let mut rx = client.consumer("m").unwrap();
    let mut tx = client.producer("m").unwrap();
    for i in 0..4 {
        tx.send(&frame(i, 16)).unwrap();
    }
    let sender = std::thread::spawn(move || {
        tx.send(&frame(4, 16)).unwrap(); // waits for room, then moves
        tx
    });
    std::thread::sleep(Duration::from_millis(50));
    client.resize("m", 64 * 64).unwrap();
    let tx = sender.join().unwrap();
    let mut buf = [0u8; 64];
    for i in 0..5 {
        let got = rx.recv_timeout(&mut buf, Duration::from_secs(5)).unwrap();
        assert_eq!(number(&buf[..got.len]), i);
    }
    drop((tx, rx));

    // SPSC: a 64 KiB message through a 4 KiB ring, the consumer not reading; resized midway.
    client
        .create(
            "s",
            &ChannelConfig::spsc()
                .capacity(4096)
                .max_frame_size(256)
                .max_message_size(64 << 10),
        )
        .unwrap();
    let mut rx = client.consumer("s").unwrap();
    let mut tx = client.producer("s").unwrap();
    let big: Vec<u8> = (0..64 << 10).map(|i| (i % 251) as u8).collect();
    let want = big.clone();
    let sender = std::thread::spawn(move || {
        let before = thread_cpu();
        tx.send(&big).unwrap(); // streams: waits for the consumer, in the old ring
        let spent = thread_cpu() - before;
        (tx, spent)
    });
    std::thread::sleep(Duration::from_millis(50));
    client.resize("s", 1 << 20).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let mut buf = vec![0u8; 64 << 10];
    let got = rx.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
    assert_eq!(&buf[..got.len], &want[..], "the message, whole");
    let (mut tx, spent) = sender.join().unwrap();
    assert!(
        spent < Duration::from_millis(200),
        "the producer spent {spent:?} of CPU waiting 400 ms for room"
    );
    // Its next send moves to the new ring.
    tx.send(b"next").unwrap();
    let got = rx.recv_timeout(&mut buf, Duration::from_secs(5)).unwrap();
    assert_eq!(&buf[..got.len], b"next");
}

/// MPMC end of stream across a resize: a producer that has not moved still counts as
/// attached (a finish by one that moved does not end the stream under it), and its own finish,
/// made from the old ring, ends the stream where the consumers are. (Found in review: the
/// first ended the stream early, the second was lost in the old ring.)
#[test]
fn an_mpmc_stream_ends_with_its_last_producer_across_a_resize() {
    let _dog = watchdog(
        "an_mpmc_stream_ends_with_its_last_producer_across_a_resize",
        60,
    );
    let (client, _coord, _dir) = setup("mfinish");
    client
        .create(
            "m",
            &ChannelConfig::mpmc().max_frame_size(64).max_producers(2),
        )
        .unwrap();
    let mut rx = client.consumer("m").unwrap();
    let a = client.producer("m").unwrap();
    let mut b = client.producer("m").unwrap();
    client.resize("m", 4 << 20).unwrap();
    // A third producer would take A's place in the new ring: refused.
    assert!(matches!(client.producer("m"), Err(Error::Busy(_))));
    b.send(b"from b").unwrap(); // moves
    assert_eq!(
        &*rx.read_timeout(Duration::from_secs(5)).unwrap(),
        b"from b"
    );
    b.finish().unwrap();
    match rx.read_timeout(Duration::from_millis(200)) {
        Err(Error::TimedOut(_)) => {}
        other => panic!("A is still attached, the stream goes on: {other:?}"),
    }
    a.finish().unwrap(); // from the old ring
    assert!(matches!(
        rx.read_timeout(Duration::from_secs(5)),
        Err(Error::Closed(_))
    ));
}

/// Deleting a channel while a resize is under way leaves nothing charged once its users are
/// gone: the entries taken in the new generation for those still in the old one go with it.
/// (Found in review: they stayed in the books, and the new generation's memory stayed charged
/// until the process exited.)
#[test]
fn a_channel_deleted_during_a_resize_is_not_charged_once_closed() {
    let _dog = watchdog(
        "a_channel_deleted_during_a_resize_is_not_charged_once_closed",
        60,
    );
    let (client, _coord, _dir) = setup("delres");
    client.create("c", &ChannelConfig::spsc()).unwrap();
    let rx = client.consumer("c").unwrap();
    let tx = client.producer("c").unwrap();
    client.resize("c", 4 << 20).unwrap();
    client.delete("c").unwrap();
    drop((rx, tx));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let used = client.limits().unwrap().bytes;
        if used == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{used} bytes still charged after the delete and the closes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

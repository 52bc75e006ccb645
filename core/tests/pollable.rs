//! Pollable descriptors (`Consumer::fd`, `Producer::fd`) in one process, for every kind of
//! channel and both backends: readable when frames arrive or room is made, quiet once a
//! non-waiting call found nothing, readable for good when the stream ends or the channel is
//! deleted. Several processes, crash repair and the C ABI are in `tests/tests/pollable.rs`.

#![cfg(not(loom))]

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use shmring::{
    ChannelConfig, Client, Coordinator, CoordinatorConfig, Error, FdBackend, Overflow, Segment,
    set_fd_backend, set_fd_recheck_interval,
};
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

mod common;
use common::watchdog;

/// The backend and the recheck interval are process-wide settings: tests take turns.
static BACKEND: Mutex<()> = Mutex::new(());

/// Takes this test's turn and stretches the recheck to a minute: only a working wake-up then
/// makes a descriptor readable within the tests' waits (a recheck would hide a broken one).
fn turn() -> std::sync::MutexGuard<'static, ()> {
    let t = BACKEND.lock().unwrap_or_else(|e| e.into_inner());
    set_fd_recheck_interval(Duration::from_secs(60));
    t
}

fn backends() -> [FdBackend; 2] {
    [FdBackend::Uring, FdBackend::Thread]
}

fn kinds() -> [ChannelConfig; 4] {
    [
        ChannelConfig::spsc().capacity(4096).max_frame_size(256),
        ChannelConfig::mpmc().capacity(4096).max_frame_size(256),
        ChannelConfig::broadcast()
            .capacity(4096)
            .max_frame_size(256),
        ChannelConfig::broadcast()
            .capacity(4096)
            .max_frame_size(256)
            .overflow(Overflow::DropOldest),
    ]
}

/// Whether `fd` is readable within `ms` milliseconds.
fn readable(fd: RawFd, ms: u16) -> bool {
    // SAFETY: the handle owning `fd` outlives the call.
    let mut fds = [PollFd::new(
        unsafe { BorrowedFd::borrow_raw(fd) },
        PollFlags::POLLIN,
    )];
    poll(&mut fds, PollTimeout::from(ms)).expect("poll");
    fds[0]
        .revents()
        .is_some_and(|r| r.contains(PollFlags::POLLIN))
}

/// Waits (up to 10 s) for `fd` to be readable.
fn wait_readable(fd: RawFd, what: &str) {
    assert!(
        readable(fd, 10_000),
        "{what}: the descriptor never became readable"
    );
}

#[test]
fn a_consumer_descriptor_wakes_for_frames_and_is_quiet_when_drained() {
    let _dog = watchdog("consumer descriptor", 120);
    let _turn = turn();
    for backend in backends() {
        set_fd_backend(backend);
        for cfg in kinds() {
            let what = format!("{backend:?} {:?} {:?}", cfg.kind, cfg.overflow);
            let seg = Segment::anonymous(&cfg).unwrap();
            let mut rx = seg.consumer().unwrap();
            let mut tx = seg.producer().unwrap();
            let fd = rx.fd().unwrap();
            assert_eq!(rx.fd().unwrap(), fd, "{what}: one descriptor per handle");
            let mut buf = [0u8; 256];
            assert!(matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock(_))));
            assert!(!readable(fd, 0), "{what}: readable with nothing sent");
            for round in 0u32..20 {
                let sender = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(2));
                    for i in 0..3u32 {
                        tx.send(&(round * 3 + i).to_le_bytes()).unwrap();
                    }
                    tx
                });
                let mut got = Vec::new();
                while got.len() < 3 {
                    wait_readable(fd, &what);
                    loop {
                        match rx.try_recv(&mut buf) {
                            Ok(r) => got.push(u32::from_le_bytes(buf[..r.len].try_into().unwrap())),
                            Err(Error::WouldBlock(_)) => break,
                            Err(e) => panic!("{what}: {e}"),
                        }
                    }
                }
                assert_eq!(got, [round * 3, round * 3 + 1, round * 3 + 2], "{what}");
                tx = sender.join().unwrap();
            }
            tx.finish().unwrap();
            wait_readable(fd, &what);
            assert!(
                matches!(rx.try_recv(&mut buf), Err(Error::Closed(_))),
                "{what}"
            );
            assert!(
                readable(fd, 0),
                "{what}: Closed leaves the descriptor readable"
            );
            assert!(
                matches!(rx.try_recv(&mut buf), Err(Error::Closed(_))),
                "{what}"
            );
        }
    }
}

#[test]
fn a_producer_descriptor_wakes_when_room_is_made() {
    let _dog = watchdog("producer descriptor", 120);
    let _turn = turn();
    for backend in backends() {
        set_fd_backend(backend);
        // DropOldest never fills.
        for cfg in kinds().into_iter().take(3) {
            let what = format!("{backend:?} {:?}", cfg.kind);
            let seg = Segment::anonymous(&cfg).unwrap();
            let mut rx = seg.consumer().unwrap();
            let mut tx = seg.producer().unwrap();
            let fd = tx.fd().unwrap();
            let mut sent = 0u32;
            loop {
                match tx.try_send(&sent.to_le_bytes()) {
                    Ok(()) => sent += 1,
                    Err(Error::WouldBlock(_)) => break,
                    Err(e) => panic!("{what}: {e}"),
                }
            }
            assert!(!readable(fd, 0), "{what}: readable with the ring full");
            let total = sent + 500;
            let reader = std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                for i in 0..total {
                    if i % 50 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let r = rx.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
                    assert_eq!(u32::from_le_bytes(buf[..r.len].try_into().unwrap()), i);
                }
                rx
            });
            while sent < total {
                wait_readable(fd, &what);
                loop {
                    match tx.try_send(&sent.to_le_bytes()) {
                        Ok(()) if sent + 1 == total => {
                            sent += 1;
                            break;
                        }
                        Ok(()) => sent += 1,
                        Err(Error::WouldBlock(_)) => break,
                        Err(e) => panic!("{what}: {e}"),
                    }
                }
            }
            let mut rx = reader.join().unwrap();
            let mut buf = [0u8; 256];
            assert!(
                matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock(_))),
                "{what}"
            );
        }
    }
}

/// Deleting the channel makes both sides' descriptors readable, and their calls `Closed`.
#[test]
fn deleting_a_channel_wakes_every_descriptor() {
    let _dog = watchdog("delete wakes descriptors", 120);
    let _turn = turn();
    let ns = format!("pollable{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("shmring-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("coordinator.sock");
    let coordinator = Coordinator::start(CoordinatorConfig::new(&ns).socket(&socket)).unwrap();
    let client = Client::connect(Some(&socket)).unwrap();
    for backend in backends() {
        set_fd_backend(backend);
        for (i, cfg) in kinds().into_iter().take(3).enumerate() {
            let name = format!("del{i}");
            let what = format!("{backend:?} {:?}", cfg.kind);
            client.create(&name, &cfg).unwrap();
            let mut rx = client.consumer(&name).unwrap();
            let mut tx = client.producer(&name).unwrap();
            let (rfd, tfd) = (rx.fd().unwrap(), tx.fd().unwrap());
            let mut buf = [0u8; 256];
            assert!(matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock(_))));
            while tx.try_send(b"x").is_ok() {}
            assert!(!readable(tfd, 0), "{what}: readable with the ring full");
            client.delete(&name).unwrap();
            wait_readable(tfd, &what);
            wait_readable(rfd, &what);
            assert!(matches!(tx.try_send(b"x"), Err(Error::Closed(_))), "{what}");
            while rx.try_recv(&mut buf).is_ok() {}
            assert!(
                matches!(rx.try_recv(&mut buf), Err(Error::Closed(_))),
                "{what}"
            );
            assert!(
                readable(rfd, 0) && readable(tfd, 0),
                "{what}: stays readable"
            );
        }
    }
    drop(client);
    drop(coordinator);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A consumer that keeps receiving leaves nobody counted: the producer's publishes find no
/// waiter (no system call), and the descriptor is quiet once drained.
#[test]
fn a_receiving_consumer_is_not_counted_as_a_waiter() {
    let _dog = watchdog("not counted", 60);
    let _turn = turn();
    for backend in backends() {
        set_fd_backend(backend);
        let seg = Segment::anonymous(&ChannelConfig::spsc()).unwrap();
        let mut rx = seg.consumer().unwrap();
        let mut tx = seg.producer().unwrap();
        rx.fd().unwrap();
        let mut buf = [0u8; 64];
        assert!(matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock(_))));
        let counted = |seg: &Segment| seg.stats().waiting_consumers;
        assert_eq!(counted(&seg), 1, "{backend:?}: armed is counted");
        tx.send(b"a").unwrap();
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(
            counted(&seg),
            0,
            "{backend:?}: a received frame counts it out"
        );
        drop(rx);
        assert_eq!(counted(&seg), 0, "{backend:?}");
    }
}

/// A blocking call of a handle that has a descriptor waits by its own strategy and does not
/// arm the descriptor: a spinning consumer is not counted as a waiter (which would cost the
/// producer a system call per publish), and neither is a producer spinning on a full ring.
#[test]
fn a_blocking_call_does_not_arm_the_descriptor() {
    let _dog = watchdog("blocking calls leave the descriptor alone", 60);
    let _turn = turn();
    set_fd_backend(FdBackend::Auto);
    let seg = Segment::anonymous(&ChannelConfig::spsc().capacity(1024).max_frame_size(64)).unwrap();
    let mut rx = seg.consumer().unwrap();
    let mut tx = seg.producer().unwrap();
    rx.fd().unwrap();
    tx.fd().unwrap();
    rx.set_wait_strategy(shmring::WaitStrategy::Spin);
    tx.set_wait_strategy(shmring::WaitStrategy::Spin);
    let waiting = |seg: &Segment| {
        let s = seg.stats();
        (s.waiting_consumers, s.waiting_producers)
    };
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        rx.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
        rx
    });
    std::thread::sleep(Duration::from_millis(50));
    // (The producer's descriptor was armed when made: counted until it sends.)
    assert_eq!(waiting(&seg).0, 0, "a spinning consumer was counted");
    tx.send(b"x").unwrap();
    let mut rx = reader.join().unwrap();
    while tx.try_send(&[7; 64]).is_ok() {}
    // The failed try_send armed the producer's descriptor: counted until it sends again.
    assert_eq!(waiting(&seg), (0, 1));
    let writer = std::thread::spawn(move || {
        tx.send_timeout(&[8; 64], Duration::from_secs(10)).unwrap();
        tx
    });
    std::thread::sleep(Duration::from_millis(50));
    let mut buf = [0u8; 64];
    while rx.try_recv(&mut buf).is_ok() {}
    let _tx = writer.join().unwrap();
    assert_eq!(waiting(&seg).1, 0, "a producer that sent is counted out");
}

/// The thread that armed the descriptor need not be the one that polls it (tokio moves tasks
/// between workers): the arming thread sleeps, spins, or has exited, and a frame sent then
/// still makes the descriptor readable for the polling thread.
#[test]
fn a_descriptor_armed_by_one_thread_wakes_a_poll_in_another() {
    let _dog = watchdog("armed elsewhere", 60);
    let _turn = turn();
    for backend in backends() {
        set_fd_backend(backend);
        for armer in ["sleeps", "spins", "exits"] {
            let what = format!("{backend:?}, the arming thread {armer}");
            let seg = Segment::anonymous(&ChannelConfig::spsc()).unwrap();
            let mut tx = seg.producer().unwrap();
            let mut rx = seg.consumer().unwrap();
            let fd = rx.fd().unwrap();
            let (armed_tx, armed_rx) = std::sync::mpsc::channel();
            // A channel as the stop flag (the crate forbids std's atomics outside its shim).
            let (stop, stop2) = std::sync::mpsc::channel::<()>();
            let mut armer_thread = Some(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                assert!(matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock(_))));
                armed_tx.send(rx).unwrap();
                match armer {
                    "sleeps" => std::thread::sleep(Duration::from_secs(1)),
                    "spins" => {
                        while let Err(std::sync::mpsc::TryRecvError::Empty) = stop2.try_recv() {
                            std::hint::spin_loop();
                        }
                    }
                    _ => {}
                }
            }));
            let mut rx = armed_rx.recv().unwrap();
            if armer == "exits" {
                armer_thread.take().unwrap().join().unwrap();
            }
            tx.send(b"hello").unwrap();
            let mut buf = [0u8; 64];
            let mut got = false;
            for _ in 0..10 {
                assert!(readable(fd, 5_000), "{what}: never readable");
                match rx.try_recv(&mut buf) {
                    Ok(r) => {
                        assert_eq!(&buf[..r.len], b"hello", "{what}");
                        got = true;
                        break;
                    }
                    Err(Error::WouldBlock(_)) => {} // a cancelled request: armed again here
                    Err(e) => panic!("{what}: {e}"),
                }
            }
            assert!(got, "{what}: the frame never came");
            drop(stop);
            if let Some(t) = armer_thread {
                t.join().unwrap();
            }
        }
    }
}

/// With nothing sent, an armed descriptor still becomes readable once per recheck interval,
/// and the receive then made finds nothing and arms it again.
#[test]
fn an_idle_descriptor_becomes_readable_at_each_recheck() {
    let _dog = watchdog("recheck", 60);
    let _turn = turn();
    set_fd_recheck_interval(Duration::from_millis(30));
    for backend in backends() {
        set_fd_backend(backend);
        let seg = Segment::anonymous(&ChannelConfig::spsc()).unwrap();
        let _tx = seg.producer().unwrap();
        let mut rx = seg.consumer().unwrap();
        let fd = rx.fd().unwrap();
        let mut buf = [0u8; 64];
        for round in 0..5 {
            wait_readable(fd, &format!("{backend:?} recheck {round}"));
            assert!(matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock(_))));
        }
    }
}

/// Found in review: a blocking drain whose callback panicked lost the descriptor (it was moved
/// out of the handle for the call), so `fd()` then made a new one with another number under
/// an event loop still polling the old.
#[test]
fn a_panic_in_a_blocking_drain_keeps_the_descriptor() {
    let _dog = watchdog("panic keeps the descriptor", 60);
    let _turn = turn();
    set_fd_backend(FdBackend::Auto);
    let seg = Segment::anonymous(&ChannelConfig::spsc()).unwrap();
    let mut tx = seg.producer().unwrap();
    let mut rx = seg.consumer().unwrap();
    let fd = rx.fd().unwrap();
    tx.send(b"boom").unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rx.drain_timeout(8, Duration::from_secs(5), |_, _| {
            panic!("the callback panics")
        })
    }));
    assert!(caught.is_err());
    assert_eq!(rx.fd().unwrap(), fd, "the descriptor changed");
    let mut buf = [0u8; 64];
    assert!(matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock(_))));
    tx.send(b"after").unwrap();
    wait_readable(fd, "after the panic");
    assert_eq!(rx.try_recv(&mut buf).unwrap().len, 5);
}

/// A descriptor is armed when made: an event loop may wait on it before its first call, and
/// it is readable at once when a frame is already waiting (consumer) or there is room
/// (producer).
#[test]
fn a_descriptor_is_armed_when_made() {
    let _dog = watchdog("armed when made", 60);
    let _turn = turn();
    for backend in backends() {
        set_fd_backend(backend);
        let seg = Segment::anonymous(&ChannelConfig::spsc()).unwrap();
        let mut tx = seg.producer().unwrap();
        let mut rx = seg.consumer().unwrap();
        let rfd = rx.fd().unwrap();
        assert!(!readable(rfd, 0), "{backend:?}: readable with nothing sent");
        tx.send(b"one").unwrap();
        wait_readable(rfd, &format!("{backend:?}: a frame sent after the making"));
        let seg = Segment::anonymous(&ChannelConfig::spsc()).unwrap();
        let mut tx = seg.producer().unwrap();
        let mut rx = seg.consumer().unwrap();
        tx.send(b"two").unwrap();
        let rfd = rx.fd().unwrap();
        assert!(
            readable(rfd, 0),
            "{backend:?}: a frame waiting when it was made"
        );
        let tfd = tx.fd().unwrap();
        assert!(
            readable(tfd, 0),
            "{backend:?}: a producer's is readable when made"
        );
    }
}

/// Found in review: a blocking receive that returned a frame counted an armed descriptor out
/// without making it readable, so a loop that then polled (not receiving until `WouldBlock`
/// first) waited for good with the waker thread (nothing watches a handle that is not counted).
/// Counting out now makes the descriptor readable.
#[test]
fn a_poll_after_a_blocking_receive_sees_the_next_frame() {
    let _dog = watchdog("poll after a blocking receive", 120);
    let _turn = turn();
    for backend in backends() {
        for wait in [shmring::WaitStrategy::Park, shmring::WaitStrategy::Yield] {
            set_fd_backend(backend);
            let what = format!("{backend:?} {wait:?}");
            let seg = Segment::anonymous(&ChannelConfig::spsc()).unwrap();
            let mut tx = seg.producer().unwrap();
            let mut rx = seg.consumer().unwrap();
            rx.set_wait_strategy(wait);
            let fd = rx.fd().unwrap();
            let mut buf = [0u8; 64];
            assert!(matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock(_))));
            let sender = std::thread::spawn(move || {
                tx.send(b"a").unwrap();
                std::thread::sleep(Duration::from_millis(100));
                tx.send(b"b").unwrap();
                tx
            });
            let r = rx.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
            assert_eq!(&buf[..r.len], b"a", "{what}");
            let mut got_b = false;
            for _ in 0..20 {
                wait_readable(fd, &what);
                match rx.try_recv(&mut buf) {
                    Ok(r) => {
                        assert_eq!(&buf[..r.len], b"b", "{what}");
                        got_b = true;
                        break;
                    }
                    Err(Error::WouldBlock(_)) => {}
                    Err(e) => panic!("{what}: {e}"),
                }
            }
            assert!(got_b, "{what}: the second frame never came");
            let _tx = sender.join().unwrap();
        }
    }
}

/// Found in review: a producer waiting on a full SPSC ring was woken by every frame the
/// consumer released (one `FUTEX_WAKE` on the consumer's side and one readiness on the
/// producer's), although room comes only when the consumer publishes its head, once per
/// quarter ring or when it finds the ring empty. It is now woken only then.
#[test]
fn a_full_spsc_producer_is_woken_when_room_is_published_not_per_frame() {
    let _dog = watchdog("producer woken per head publish", 60);
    let _turn = turn();
    for backend in backends() {
        set_fd_backend(backend);
        let seg =
            Segment::anonymous(&ChannelConfig::spsc().capacity(4096).max_frame_size(48)).unwrap();
        let mut tx = seg.producer().unwrap();
        let mut rx = seg.consumer().unwrap();
        let fd = tx.fd().unwrap();
        let mut sent = 0u32;
        while tx.try_send(&[sent as u8; 48]).is_ok() {
            sent += 1;
        }
        assert!(!readable(fd, 0), "{backend:?}");
        let mut buf = [0u8; 64];
        rx.try_recv(&mut buf).unwrap();
        rx.try_recv(&mut buf).unwrap();
        assert!(
            !readable(fd, 50),
            "{backend:?}: woken by releases that published no room"
        );
        let mut received = 2;
        // (The waker thread needs a moment to pass a wake-up on.)
        while !readable(fd, 20) {
            rx.try_recv(&mut buf).unwrap();
            received += 1;
            assert!(received < sent, "{backend:?}: never woken");
        }
        assert!(
            tx.try_send(&[0; 48]).is_ok(),
            "{backend:?}: woken without room"
        );
    }
}

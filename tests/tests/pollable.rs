//! Pollable descriptors across processes: the C program `tests/c/poll_mix.c` polls two channel
//! descriptors and a pipe in one `poll()` while two producer processes send and this test
//! writes the pipe; a crashed participant's repair wakes the descriptors it held back. Each
//! runs with both backends (`SHMRING_FD_WAKER=uring` and `thread`), under a watchdog; no test
//! asserts a duration (the figures are printed).

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use shmring::{ChannelConfig, Error, FdBackend, set_fd_backend, set_fd_recheck_interval};
use shmring_tests::{Build, Helper, Watchdog, serial};
use std::io::Write;
use std::os::fd::{BorrowedFd, RawFd};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// This test's place (`shmring_tests::Place`).
struct Place(shmring_tests::Place);

impl std::ops::Deref for Place {
    type Target = shmring_tests::Place;
    fn deref(&self) -> &shmring_tests::Place {
        &self.0
    }
}

impl Place {
    fn new(tag: &str) -> Place {
        Place(shmring_tests::Place::new(&format!("poll{tag}")))
    }

    /// `exe` with this place's coordinator and the descriptor backend `backend`; rechecks
    /// every 60 s, so that only a working wake-up makes a descriptor readable in time.
    fn fd_command(&self, exe: &Path, backend: &str) -> Command {
        let mut cmd = self.command(exe);
        cmd.env("SHMRING_FD_WAKER", backend)
            .env("SHMRING_FD_RECHECK_MS", "60000");
        cmd
    }
}

fn number(text: &str, key: &str) -> u64 {
    shmring_tests::field(text, key).unwrap_or_else(|| panic!("no {key}= in {text:?}"))
}

/// The C test: one process polls two channel descriptors (an SPSC and an MPMC channel)
/// and a pipe in one `poll()`; two producer processes send 20 000 frames each in bursts, and
/// this test writes 100 chunks into the pipe. Every frame and byte arrives, in order, and the
/// consumer does not busy-wait: poll returns after which it found nothing are a handful (the
/// rechecks and races), not the thousands a spinning loop makes.
#[test]
fn two_channels_and_a_pipe_in_one_poll() {
    let _serial = serial();
    let dog = Watchdog::new("two channels and a pipe", Duration::from_secs(240));
    const FRAMES: u64 = 20_000;
    const CHUNKS: usize = 100;
    const CHUNK: usize = 64;
    for (backend, build) in [
        ("uring", Build::Plain),
        ("thread", Build::Plain),
        ("auto", Build::Sanitized),
    ] {
        let place = Place::new("mix");
        let exe = shmring_tests::compile("tests/c/poll_mix.c", &place.dir, build);
        let client = place.client();
        client
            .create(
                "a",
                &ChannelConfig::spsc().capacity(16 << 10).max_frame_size(64),
            )
            .unwrap();
        client
            .create(
                "b",
                &ChannelConfig::mpmc().capacity(16 << 10).max_frame_size(64),
            )
            .unwrap();
        let (f, p) = (FRAMES.to_string(), (CHUNKS * CHUNK).to_string());
        let mut consumer = dog.spawn_piped(
            place
                .fd_command(&exe, backend)
                .args(["consume", "a", &f, "b", &f, &p]),
        );
        let mut pipe = consumer.stdin();
        consumer.expect_line("opened");
        let producers: Vec<Helper> = ["a", "b"]
            .iter()
            .map(|ch| dog.spawn(place.fd_command(&exe, backend).args(["produce", ch, &f])))
            .collect();
        let mut sent = 0usize;
        for _ in 0..CHUNKS {
            let chunk: Vec<u8> = (sent..sent + CHUNK).map(|k| (k % 251) as u8).collect();
            pipe.write_all(&chunk).unwrap();
            sent += CHUNK;
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(pipe);
        for p in producers {
            p.success();
        }
        let said = consumer.success();
        dog.check();
        let (polls, empty, wall_us, cpu_us) = (
            number(&said, "polls"),
            number(&said, "empty"),
            number(&said, "wall_us"),
            number(&said, "cpu_us"),
        );
        println!("{backend} {build:?}: {}", said.trim());
        assert_eq!(number(&said, "a"), FRAMES);
        assert_eq!(number(&said, "b"), FRAMES);
        assert_eq!(number(&said, "pipe"), (CHUNKS * CHUNK) as u64);
        // Two armed descriptors recheck 10 times a second each; a wake-up racing a receive
        // gives one more. A busy loop gives one per poll, thousands in this run.
        let allowed = 50 + 2 * (wall_us / 50_000);
        assert!(
            empty <= allowed,
            "{backend}: {empty} of {polls} poll returns found nothing (at most {allowed} \
             expected in {wall_us} µs): the consumer busy-waits"
        );
        assert!(
            polls < 2 * FRAMES,
            "{backend}: {polls} polls for {} frames: not batching",
            2 * FRAMES
        );
        let _ = cpu_us;
    }
}

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

fn peer(dog: &Watchdog, place: &Place, args: &[&str]) -> Helper {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shmring-peer"));
    cmd.arg(args[0]).arg(&place.socket).args(&args[1..]);
    dog.spawn(&mut cmd)
}

/// A producer armed behind a broadcast subscriber that holds a frame, and an MPMC consumer
/// armed behind a producer that holds a claim at the head: when the holder is SIGKILLed, the
/// coordinator's repair (the subscriber's entry freed, the claim turned into a skip) makes the
/// descriptor readable, and the call it was waiting for succeeds.
#[test]
fn a_repaired_ring_wakes_the_descriptors_it_held_back() {
    let _serial = serial();
    let dog = Watchdog::new("repair wakes descriptors", Duration::from_secs(180));
    // Only a working wake-up makes a descriptor readable within the tests' waits.
    set_fd_recheck_interval(Duration::from_secs(60));
    for backend in [FdBackend::Uring, FdBackend::Thread] {
        set_fd_backend(backend);
        let place = Place::new("repair");
        let client = place.client();

        // A broadcast producer behind a dead subscriber.
        client
            .create(
                "b",
                &ChannelConfig::broadcast().capacity(4096).max_frame_size(64),
            )
            .unwrap();
        let mut holder = peer(&dog, &place, &["hold-frame", "b"]);
        holder.expect_line("opened");
        let mut tx = client.producer("b").unwrap();
        let fd = tx.fd().unwrap();
        tx.send(b"first").unwrap();
        holder.expect_line("held first");
        while tx.try_send(b"more").is_ok() {}
        assert!(
            !readable(fd, 50),
            "{backend:?}: readable behind a live subscriber"
        );
        holder.kill().expect("the subscriber was running");
        assert!(
            readable(fd, 10_000),
            "{backend:?}: the repair did not wake the producer's descriptor"
        );
        let mut sent = false;
        for _ in 0..100 {
            match tx.try_send(b"after") {
                Ok(()) => {
                    sent = true;
                    break;
                }
                Err(Error::WouldBlock(_)) => assert!(readable(fd, 10_000)),
                Err(e) => panic!("{backend:?}: {e}"),
            }
        }
        assert!(sent, "{backend:?}: no room after the repair");
        drop(tx);

        // An MPMC consumer behind a dead producer's claim.
        client.create("m", &ChannelConfig::mpmc()).unwrap();
        let mut rx = client.consumer("m").unwrap();
        let fd = rx.fd().unwrap();
        let mut holder = peer(&dog, &place, &["hold-claim", "m"]);
        holder.expect_line("held");
        let mut tx = client.producer("m").unwrap();
        tx.send(b"behind the claim").unwrap();
        let mut buf = [0u8; 64];
        assert!(
            matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock(_))),
            "{backend:?}: the claim at the head holds the frame back"
        );
        assert!(
            !readable(fd, 50),
            "{backend:?}: readable behind a live claim"
        );
        holder.kill().expect("the producer was running");
        let mut got = None;
        for _ in 0..100 {
            assert!(
                readable(fd, 10_000),
                "{backend:?}: the repair did not wake the consumer's descriptor"
            );
            match rx.try_recv(&mut buf) {
                Ok(r) => {
                    got = Some(buf[..r.len].to_vec());
                    break;
                }
                Err(Error::WouldBlock(_)) => {}
                Err(e) => panic!("{backend:?}: {e}"),
            }
        }
        assert_eq!(
            got.as_deref(),
            Some(&b"behind the claim"[..]),
            "{backend:?}"
        );
        dog.check();
    }
    set_fd_backend(FdBackend::Auto);
}

/// Found in review: a consumer whose descriptor was armed, then blocked in a receive that timed
/// out, then was SIGKILLed, left the channel's waiter count at 1 for good after the repair
/// (the blocking wait's `parked` mark replaced the descriptor's, so the repair took back
/// nothing), and every later frame cost its producer a `FUTEX_WAKE`. A blocking call now counts
/// the descriptor out first and arms it again when it times out.
#[test]
fn a_killed_consumer_armed_and_then_blocked_is_counted_out_by_the_repair() {
    let _serial = serial();
    let dog = Watchdog::new("armed then blocked", Duration::from_secs(120));
    for backend in ["uring", "thread"] {
        let place = Place::new("armblock");
        let client = place.client();
        client.create("c", &ChannelConfig::spsc()).unwrap();
        let waiters = || {
            let prefix = format!("shmring.{}@", place.ns);
            let (_, path) = shmring_tests::memfds(std::process::id(), &prefix)
                .into_iter()
                .find(|(n, _)| n.ends_with(".c"))
                .expect("the channel's memfd");
            let mut word = [0u8; 4];
            use std::os::unix::fs::FileExt;
            std::fs::File::open(path)
                .unwrap()
                .read_exact_at(&mut word, (shmring::layout::PRODUCER_LINE + 8) as u64)
                .unwrap();
            u32::from_ne_bytes(word)
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shmring-peer"));
        cmd.args(["armed-then-blocked"])
            .arg(&place.socket)
            .arg("c")
            .env("SHMRING_FD_WAKER", backend);
        let mut helper = dog.spawn(&mut cmd);
        helper.expect_line("armed");
        assert_eq!(
            waiters(),
            1,
            "{backend}: the re-armed descriptor is counted once"
        );
        helper.kill().expect("the consumer was running");
        // The repair frees the entry; then the count must be back to zero.
        let mut tx = None;
        for _ in 0..1000 {
            if let Ok(p) = client.producer("c")
                && client.consumer("c").is_ok()
            {
                tx = Some(p);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            tx.is_some(),
            "{backend}: the dead consumer's entry was never repaired"
        );
        assert_eq!(
            waiters(),
            0,
            "{backend}: the dead consumer is still counted"
        );
        dog.check();
    }
}

/// Found in review: with the waker-thread backend, a process forked from one whose thread had
/// started made descriptors that nothing watched (the thread does not survive `fork`), so they
/// never became readable. Each process now starts its own waker thread.
#[test]
fn a_forked_child_gets_a_waker_of_its_own() {
    let _serial = serial();
    let dog = Watchdog::new("forked child's descriptors", Duration::from_secs(120));
    for backend in ["thread", "uring"] {
        let place = Place::new("fork");
        let exe = shmring_tests::compile("tests/c/poll_mix.c", &place.dir, Build::Plain);
        let client = place.client();
        client.create("a", &ChannelConfig::spsc()).unwrap();
        client.create("b", &ChannelConfig::spsc()).unwrap();
        let said = dog
            .spawn(place.fd_command(&exe, backend).args(["fork", "a", "b"]))
            .success();
        assert!(said.contains("child received"), "{backend}: {said}");
        dog.check();
    }
}

//! Broadcast channels across processes, through the C ABI: `tests/c/broadcast_fanout.c` runs as
//! the channel's creator, its producer and its subscribers, each a process of its own, against
//! a coordinator embedded in this test (found through `SHMRING_SOCKET`). Every subscriber
//! checks every byte of every frame, and that frame `i` arrives after exactly `i` frames were
//! received or counted missed. Three subscribers receive a million frames each under BLOCK; a
//! SIGSTOPped subscriber under DROP_OLDEST holds nothing back and counts all it missed; a
//! subscriber SIGKILLed while the BLOCK producer waits on it stops holding it back once the
//! coordinator repairs it. Every test runs under a watchdog; none asserts a duration (the
//! figures are printed).

use shmring::{Client, Kind, Overflow};
use shmring_tests::{Build, Helper, Watchdog, serial};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// This test's place (`shmring_tests::Place`), with the C program's roles.
struct Place(shmring_tests::Place);

impl std::ops::Deref for Place {
    type Target = shmring_tests::Place;
    fn deref(&self) -> &shmring_tests::Place {
        &self.0
    }
}

impl Place {
    fn new(tag: &str) -> Place {
        Place(shmring_tests::Place::new(&format!("bcast{tag}")))
    }

    /// Compiles `tests/c/broadcast_fanout.c` warning-free against include/ and this build's
    /// library; `sanitized`: under AddressSanitizer and UndefinedBehaviorSanitizer, stopping at
    /// the first report.
    fn compile(&self, sanitized: bool) -> PathBuf {
        let build = if sanitized {
            Build::Sanitized
        } else {
            Build::Plain
        };
        shmring_tests::compile("tests/c/broadcast_fanout.c", &self.dir, build)
    }

    /// `broadcast_fanout ARGS` as a helper of `dog`, connecting to this place's coordinator.
    fn spawn(&self, dog: &Watchdog, exe: &Path, args: &[&str]) -> Helper {
        dog.spawn(self.command(exe).args(args))
    }

    /// Creates broadcast channel `name` from C and checks what the coordinator made of it.
    fn create(&self, dog: &Watchdog, exe: &Path, name: &str, policy: &str, slots: u64) {
        let said = self
            .spawn(dog, exe, &["create", name, policy, &slots.to_string(), "3"])
            .success();
        assert_eq!(said.trim(), format!("created slots={slots}"));
        let info = self.client().stats(name).unwrap().info;
        assert_eq!(info.kind, Kind::Broadcast);
        let want = match policy {
            "block" => Overflow::Block,
            _ => Overflow::DropOldest,
        };
        assert_eq!((info.overflow, info.history), (want, 0), "{info:?}");
        assert_eq!((info.max_producers, info.max_consumers), (1, 3), "{info:?}");
    }

    /// Three subscribers to `name`, each open (so each receives every frame published from now
    /// on); `stall_at` makes the first one stop reading at that frame.
    fn subscribers(
        &self,
        dog: &Watchdog,
        exe: &Path,
        name: &str,
        stall_at: Option<u64>,
    ) -> Vec<Helper> {
        (0..3)
            .map(|k| {
                let stall = stall_at.filter(|_| k == 0).map(|s| s.to_string());
                let mut args = vec!["subscribe", name];
                args.extend(stall.as_deref());
                let mut s = self.spawn(dog, exe, &args);
                s.expect_line("subscribed");
                s
            })
            .collect()
    }
}

/// The `key=value` number of a helper's output.
fn number(text: &str, key: &str) -> u64 {
    shmring_tests::field(text, key).unwrap_or_else(|| panic!("no {key}= in {text:?}"))
}

/// (received, missed) of a subscriber that finished.
fn done(sub: Helper) -> (u64, u64) {
    let said = sub.success();
    let line = said
        .lines()
        .find(|l| l.starts_with("done "))
        .unwrap_or_else(|| panic!("a subscriber ended without its summary: {said:?}"));
    (number(line, "received"), number(line, "missed"))
}

/// Sends `sig` to helper `pid`.
fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory effects; the pid is a helper of this test, not yet reaped.
    let r = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig})");
}

/// Waits until process `pid` is stopped (state `T` in `/proc/<pid>/stat`).
fn wait_stopped(pid: u32) {
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .next();
        if state == Some("T") {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

const MILLION: u64 = 1_000_000;

/// Done when, 1: a C program's three subscriber processes each receive 1 000 000 frames, all
/// intact and in order, under `SHMRING_OVERFLOW_BLOCK`.
#[test]
fn three_c_subscribers_each_receive_a_million_frames_intact_and_in_order_under_block() {
    let _serial = serial();
    let dog = Watchdog::new("broadcast fan-out under block", Duration::from_secs(300));
    let place = Place::new("fan");
    let exe = place.compile(false);
    place.create(&dog, &exe, "fan", "block", 1024);
    let subs = place.subscribers(&dog, &exe, "fan", None);
    let start = Instant::now();
    let n = MILLION.to_string();
    let said = place
        .spawn(&dog, &exe, &["publish", "fan", &n, "block"])
        .success();
    assert_eq!(number(&said, "published"), MILLION);
    for s in subs {
        assert_eq!(done(s), (MILLION, 0));
    }
    let took = start.elapsed();
    println!(
        "broadcast block fan-out: 3 subscriber processes x {MILLION} frames in {took:?} \
         ({:.2} M frames/s published)",
        MILLION as f64 / took.as_secs_f64() / 1e6
    );
    let stats = place.client().stats("fan").unwrap();
    assert_eq!(stats.frames_in, MILLION, "the frames, and no end frame");
    assert_eq!(stats.frames_out, 3 * MILLION, "each to every subscriber");
    dog.check();
}

/// Done when, 2: under `SHMRING_OVERFLOW_DROP_OLDEST` a SIGSTOPped subscriber holds the
/// producer back not at all (every send and claim with timeout 0 succeeds), and every
/// subscriber's received plus `shmring_consumer_missed` equals what was sent.
#[test]
fn a_stopped_subscriber_under_drop_oldest_costs_the_producer_nothing_and_counts_every_loss() {
    let _serial = serial();
    let dog = Watchdog::new(
        "broadcast drop-oldest, one stopped",
        Duration::from_secs(300),
    );
    let place = Place::new("drop");
    let exe = place.compile(false);
    let slots = 256;
    place.create(&dog, &exe, "drop", "drop-oldest", slots);
    let mut subs = place.subscribers(&dog, &exe, "drop", None);
    let stopped = subs[0].pid();
    signal(stopped, libc::SIGSTOP);
    wait_stopped(stopped);

    // The producer pauses half-way; the stopped subscriber resumes, then the producer does.
    let n = MILLION.to_string();
    let half = MILLION / 2;
    let mut producer = place.spawn(
        &dog,
        &exe,
        &["publish", "drop", &n, "drop-oldest", &half.to_string()],
    );
    producer.expect_line("paused");
    signal(stopped, libc::SIGCONT);
    signal(producer.pid(), libc::SIGUSR1);
    let said = producer.success();
    assert_eq!(number(&said, "published"), MILLION, "{said}");

    for (k, s) in subs.drain(..).enumerate() {
        let (received, missed) = done(s);
        println!("drop-oldest subscriber {k}: received={received} missed={missed}");
        assert_eq!(received + missed, MILLION, "subscriber {k}");
        if k == 0 {
            // Stopped while `half` frames were published: all but the last `slots` of them
            // were overwritten before it could read them.
            assert!(missed >= half - slots, "subscriber 0 missed only {missed}");
        }
    }
    let stats = place.client().stats("drop").unwrap();
    assert_eq!(stats.frames_in, MILLION, "the frames, and no end frame");
    dog.check();
}

/// Done when, 3: under `SHMRING_OVERFLOW_BLOCK` a subscriber that stops reading holds the
/// producer back; SIGKILLed, it stops doing so once the coordinator repairs it (its pidfd, no
/// timeout), and the live subscribers still receive every frame in order. Prints the time from
/// the SIGKILL to the producer's next frame.
#[test]
fn a_subscriber_killed_while_the_block_producer_waits_on_it_stops_holding_it_back() {
    let _serial = serial();
    let dog = Watchdog::new("broadcast block, one killed", Duration::from_secs(300));
    let place = Place::new("kill");
    let exe = place.compile(false);
    let slots = 256;
    let frames = 200_000u64;
    place.create(&dog, &exe, "kill", "block", slots);
    let mut subs = place.subscribers(&dog, &exe, "kill", Some(1000));
    let n = frames.to_string();
    let producer = place.spawn(&dog, &exe, &["publish", "kill", &n, "block"]);
    subs[0].expect_line("stalled");
    let stalled = subs[0].pid();

    // Once the stalled subscriber lags by a whole ring, the producer cannot publish another
    // frame before that subscriber releases one: it waits on it.
    let client = place.client();
    let lag = |c: &Client| {
        let s = c.stats("kill").unwrap();
        let p = s.participants.iter().find(|p| p.pid == stalled).cloned();
        (p.and_then(|p| p.lag), s.frames_in)
    };
    let blocked_at = loop {
        match lag(&client) {
            (Some(l), frames_in) if l == slots => break frames_in,
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    assert!(
        blocked_at < frames,
        "the producer got past {blocked_at} frames"
    );
    // Still blocked a moment later: nothing else lets it go on.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(lag(&client), (Some(slots), blocked_at));

    let killed = Instant::now();
    subs.remove(0)
        .kill()
        .expect("the stalled subscriber was still alive");
    while client.stats("kill").unwrap().frames_in == blocked_at {
        std::thread::sleep(Duration::from_micros(100));
    }
    let resumed = killed.elapsed();
    println!(
        "broadcast block: the producer, blocked on a subscriber at frame {blocked_at}, went on \
         {resumed:?} after that subscriber's SIGKILL"
    );

    let said = producer.success();
    assert_eq!(number(&said, "published"), frames);
    for s in subs {
        assert_eq!(done(s), (frames, 0));
    }
    let stats = client.stats("kill").unwrap();
    assert_eq!(stats.repairs, 1, "the killed subscriber was repaired");
    assert_eq!(stats.frames_in, frames, "the frames, and no end frame");
    dog.check();
}

/// The program of the tests above under AddressSanitizer and UndefinedBehaviorSanitizer, with
/// fewer frames: both policies, and a subscriber stalled holding a frame in place, then killed.
#[test]
fn the_fanout_program_runs_clean_under_sanitizers() {
    let _serial = serial();
    let dog = Watchdog::new("broadcast fan-out, sanitized", Duration::from_secs(300));
    let place = Place::new("san");
    let exe = place.compile(true);
    let frames = 20_000u64;
    let n = frames.to_string();
    for policy in ["block", "drop-oldest"] {
        place.create(&dog, &exe, policy, policy, 64);
        let subs = place.subscribers(&dog, &exe, policy, None);
        let said = place
            .spawn(&dog, &exe, &["publish", policy, &n, policy])
            .success();
        assert_eq!(number(&said, "published"), frames);
        for s in subs {
            let (received, missed) = done(s);
            assert_eq!(received + missed, frames, "{policy}");
            if policy == "block" {
                assert_eq!(missed, 0);
            }
        }
    }
    place.create(&dog, &exe, "stall", "block", 64);
    let mut subs = place.subscribers(&dog, &exe, "stall", Some(100));
    let producer = place.spawn(&dog, &exe, &["publish", "stall", &n, "block"]);
    subs[0].expect_line("stalled");
    subs.remove(0)
        .kill()
        .expect("the stalled subscriber was still alive");
    assert_eq!(number(&producer.success(), "published"), frames);
    for s in subs {
        assert_eq!(done(s), (frames, 0));
    }
    dog.check();
}

/// A subscriber that the coordinator shows as admitted (`consumers` in the channel's statistics,
/// its entry in `shmring stat`) receives every frame published from then on, or counts it
/// missed. Before the join moved into the admission (`segment::take_entry`), the subscriber
/// joined only when its process attached, and a frame published in between neither reached it
/// nor was counted: this test failed within a few rounds.
#[test]
fn a_subscriber_counted_by_the_coordinator_receives_what_is_published_from_then_on() {
    let _serial = serial();
    let dog = Watchdog::new("broadcast admitted before joined", Duration::from_secs(120));
    let place = Place::new("join");
    let client = place.client();
    let config = shmring::ChannelConfig::broadcast()
        .capacity(64 * 64)
        .max_frame_size(64);
    for round in 0..2000 {
        let name = format!("j{round}");
        client.create(&name, &config).unwrap();
        let mut tx = client.producer(&name).unwrap();
        let sub_client = place.client();
        let sub = std::thread::spawn(move || {
            let mut rx = sub_client.consumer(&name).unwrap();
            let first = match rx.read_timeout(Duration::from_millis(500)) {
                Ok(f) => Some(f[0]),
                Err(shmring::Error::TimedOut(_)) => None,
                Err(e) => panic!("{e}"),
            };
            (first, rx.missed())
        });
        let name = format!("j{round}");
        while client.stats(&name).unwrap().info.consumers < 1 {
            std::hint::spin_loop();
        }
        tx.send(&[0]).unwrap(); // the subscriber is admitted: this frame is its first
        tx.send(&[1]).unwrap();
        let (first, missed) = sub.join().unwrap();
        assert_eq!(
            (first, missed),
            (Some(0), 0),
            "round {round}: a subscriber admitted before frame 0 was published did not receive \
             it, nor count it missed"
        );
        drop(tx);
        client.delete(&name).unwrap();
    }
    dog.check();
}

//! Crash repair: producer and consumer processes admitted by a coordinator are SIGKILLed, and
//! the channel must lose nothing committed, deliver duplicates only flagged, and never wedge.
//! Also the coordinator itself is SIGKILLed mid-stream and restarted.
//!
//! The coordinator runs embedded in the test process (except where it is the one killed);
//! producers and consumers are `shmring-peer` helpers recording what they committed and
//! received in shared files that survive their deaths. Every test runs under a watchdog.

use shmring::{ChannelConfig, Client, Coordinator, CoordinatorConfig, Error, Kind, Overflow};
use shmring_tests::{
    BroadcastView, Committed, FrameLog, Helper, Logged, Rng, SharedFile, SubscriberLog, Watchdog,
    check_delivery, check_mpmc_frame, check_subscriber, serial,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

fn peer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shmring-peer"))
}

/// A scratch directory, a namespace and a socket for one test.
struct Place {
    dir: PathBuf,
    ns: String,
    sock: PathBuf,
}

impl Place {
    fn new(tag: &str) -> Place {
        static N: AtomicU32 = AtomicU32::new(0);
        let ns = format!(
            "{tag}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("shmring-{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("coordinator.sock");
        Place { dir, ns, sock }
    }

    fn coordinator(&self) -> Coordinator {
        Coordinator::start(CoordinatorConfig::new(&self.ns).socket(&self.sock)).unwrap()
    }

    fn client(&self) -> Client {
        Client::connect(Some(&self.sock)).unwrap()
    }

    /// What of the namespace has a name in `/dev/shm`: nothing, since channels are sealed
    /// memfds and the lock is in the user's runtime directory.
    fn segments(&self) -> Vec<String> {
        std::fs::read_dir("/dev/shm")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(&format!("shmring.{}@", self.ns)))
            .collect()
    }

    /// The path (`/proc/self/fd/<n>`) of channel `channel`'s segment, held by the coordinator
    /// embedded in this process.
    fn segment_path(&self, channel: &str) -> std::path::PathBuf {
        shmring_tests::memfds(std::process::id(), &format!("shmring.{}@", self.ns))
            .into_iter()
            .find(|(n, _)| n.ends_with(&format!(".{channel}")))
            .unwrap_or_else(|| panic!("no segment of channel {channel} in this process"))
            .1
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        // What the coordinator keeps of the namespace in the user's runtime directory.
        for ext in ["lock", "channels"] {
            let _ =
                std::fs::remove_file(shmring::default_socket_path(&self.ns).with_extension(ext));
        }
    }
}

fn spawn_role(dog: &Watchdog, place: &Place, args: &[&str]) -> Helper {
    let mut cmd = peer();
    cmd.arg(args[0]).arg(&place.sock).args(&args[1..]);
    dog.spawn(&mut cmd)
}

/// Waits until the coordinator shows no participant of `channel` (every dead one repaired).
fn wait_until_vacant(client: &Client, channel: &str) {
    let deadline = Instant::now() + T;
    loop {
        let s = client.stats(channel).unwrap();
        if s.participants.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "entries still held 10 s after their owners died: {:?}",
            s.participants
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Drains `channel` through a fresh consumer until it stays empty; returns what it read.
fn drain(client: &Client, channel: &str) -> Vec<Logged> {
    let mut rx = client.consumer(channel).unwrap();
    let max = rx.max_message_size();
    let mut got = Vec::new();
    loop {
        match rx.read_timeout(Duration::from_millis(300)) {
            Ok(f) => {
                let (incarnation, seq) = check_mpmc_frame(&f, max).unwrap();
                got.push(Logged {
                    incarnation,
                    seq,
                    redelivered: f.is_redelivered(),
                });
            }
            Err(Error::TimedOut(_)) => break,
            Err(e) => panic!("draining: {e}"),
        }
    }
    got
}

/// An MPMC producer killed while holding a claim: the consumers, stuck at its position, move
/// on once the coordinator turns it into a skip. Prints the time from SIGKILL to the next frame
/// arriving.
#[test]
fn dead_producer_claim_becomes_a_skip() {
    let _serial = serial();
    let dog = Watchdog::new(
        "dead_producer_claim_becomes_a_skip",
        Duration::from_secs(120),
    );
    let place = Place::new("skip");
    let coord = place.coordinator();
    let client = place.client();
    client
        .create(
            "c",
            &ChannelConfig::mpmc().capacity(1024).max_frame_size(64),
        )
        .unwrap();
    let mut rx = client.consumer("c").unwrap();
    let mut tx = client.producer("c").unwrap();
    let mut times = Vec::new();
    let kills = recovery_kills();
    for round in 0..kills {
        let mut holder = spawn_role(&dog, &place, &["hold-claim", "c"]);
        holder.expect_line("held");
        tx.send_timeout(&[round], T).unwrap();
        assert!(
            matches!(rx.try_read(), Err(Error::WouldBlock(_))),
            "the consumer waits at the held position"
        );
        let killed = Instant::now();
        holder.kill().expect("the holder was still holding");
        let f = rx.read_timeout(T).expect("the channel flows again");
        times.push(killed.elapsed());
        assert_eq!(&*f, &[round]);
        assert!(!f.is_redelivered());
    }
    let s = client.stats("c").unwrap();
    let n = u64::from(kills);
    assert_eq!((s.repairs, s.skipped, s.redelivered), (n, n, 0));
    report("mpmc producer killed holding a claim", &mut times);
    drop((tx, rx, client));
    coord.stop();
    dog.check();
    assert!(place.segments().is_empty());
}

/// An MPMC consumer killed while holding a frame: the frame is delivered again, flagged.
#[test]
fn dead_consumer_frame_is_delivered_again() {
    let _serial = serial();
    let dog = Watchdog::new(
        "dead_consumer_frame_is_delivered_again",
        Duration::from_secs(120),
    );
    let place = Place::new("redeliver");
    let coord = place.coordinator();
    let client = place.client();
    // Two slots: the second round's frame goes into the held slot's next lap (moved in place).
    client
        .create(
            "c",
            &ChannelConfig::mpmc().capacity(2 * 64).max_frame_size(64),
        )
        .unwrap();
    let mut tx = client.producer("c").unwrap();
    let mut rx = client.consumer("c").unwrap();
    let mut times = Vec::new();
    let kills = recovery_kills();
    for round in 0..kills {
        let digit = round % 10;
        let (a, b) = ([b'a', b'0' + digit], [b'b', b'0' + digit]);
        tx.send_timeout(&a, T).unwrap();
        let mut holder = spawn_role(&dog, &place, &["hold-frame", "c"]);
        holder.expect_line(&format!("held a{digit}"));
        tx.send_timeout(&b, T).unwrap();
        let killed = Instant::now();
        holder.kill().expect("the holder was still holding");
        let mut got = Vec::new();
        for _ in 0..2 {
            let f = rx.read_timeout(T).expect("both frames arrive");
            if got.is_empty() {
                times.push(killed.elapsed());
            }
            got.push((f.to_vec(), f.is_redelivered()));
        }
        got.sort();
        assert_eq!(
            got,
            vec![(a.to_vec(), true), (b.to_vec(), false)],
            "round {round}"
        );
        assert!(matches!(rx.try_read(), Err(Error::WouldBlock(_))));
    }
    let s = client.stats("c").unwrap();
    let n = u64::from(kills);
    assert_eq!((s.repairs, s.redelivered, s.skipped), (n, n, 0));
    report("mpmc consumer killed holding a frame", &mut times);
    drop((tx, rx, client));
    coord.stop();
    dog.check();
}

/// An SPSC consumer killed holding a frame: its successor resumes exactly there, the held
/// frame first and flagged, nothing it had released delivered again.
#[test]
fn spsc_consumer_successor_resumes_where_the_dead_one_stopped() {
    let _serial = serial();
    let dog = Watchdog::new("spsc_consumer_successor", Duration::from_secs(120));
    let place = Place::new("resume");
    let coord = place.coordinator();
    let client = place.client();
    client
        .create(
            "c",
            &ChannelConfig::spsc().capacity(4096).max_frame_size(64),
        )
        .unwrap();
    let mut tx = client.producer("c").unwrap();
    let mut times = Vec::new();
    let mut next = 0u32;
    let kills = recovery_kills();
    for _ in 0..kills {
        for i in next..next + 3 {
            tx.send_timeout(format!("{i}").as_bytes(), T).unwrap();
        }
        let mut holder = spawn_role(&dog, &place, &["hold-frame", "c"]);
        holder.expect_line(&format!("held {next}"));
        let killed = Instant::now();
        holder.kill().expect("the holder was still holding");
        // The entry is free once the coordinator has repaired it.
        let mut rx = loop {
            match client.consumer("c") {
                Ok(rx) => break rx,
                Err(Error::Busy(_)) => std::thread::sleep(Duration::from_micros(100)),
                Err(e) => panic!("{e}"),
            }
        };
        let f = rx.read_timeout(T).unwrap();
        times.push(killed.elapsed());
        assert_eq!(
            (&*f, f.is_redelivered()),
            (format!("{next}").as_bytes(), true)
        );
        drop(f);
        for i in next + 1..next + 3 {
            let f = rx.read_timeout(T).unwrap();
            assert_eq!(
                (&*f, f.is_redelivered()),
                (format!("{i}").as_bytes(), false)
            );
        }
        next += 3;
    }
    let s = client.stats("c").unwrap();
    let n = u64::from(kills);
    assert_eq!((s.repairs, s.redelivered), (n, n));
    report(
        "spsc consumer killed holding a frame (until the successor reads)",
        &mut times,
    );
    drop((tx, client));
    coord.stop();
    dog.check();
}

/// An SPSC consumer killed holding a message longer than a frame (lent by `read`, put back
/// together from three records): its successor receives the whole message again, flagged, then
/// the next ones unflagged. Before the fix, finishing the message released its records at once,
/// and a consumer killed before it was done with the message lost it.
#[test]
fn spsc_consumer_killed_holding_a_message_leaves_it_whole_to_its_successor() {
    let _serial = serial();
    let dog = Watchdog::new(
        "spsc_consumer_killed_holding_a_message",
        Duration::from_secs(120),
    );
    let place = Place::new("msgresume");
    let coord = place.coordinator();
    let client = place.client();
    client
        .create(
            "c",
            &ChannelConfig::spsc()
                .capacity(16 << 10)
                .max_frame_size(64)
                .max_message_size(4000),
        )
        .unwrap();
    let mut tx = client.producer("c").unwrap();
    // Message i: its number, then dots up to 3000 bytes (printable: the holder prints it).
    let message = |i: u32| {
        let mut m = format!("{i}").into_bytes();
        m.resize(3000, b'.');
        m
    };
    let mut next = 0u32;
    for _ in 0..recovery_kills().min(50) {
        for i in next..next + 3 {
            tx.send_timeout(&message(i), T).unwrap();
        }
        let mut holder = spawn_role(&dog, &place, &["hold-frame", "c"]);
        holder.expect_line(&format!("held {}", String::from_utf8_lossy(&message(next))));
        holder.kill().expect("the holder was still holding");
        let mut rx = loop {
            match client.consumer("c") {
                Ok(rx) => break rx,
                Err(Error::Busy(_)) => std::thread::sleep(Duration::from_micros(100)),
                Err(e) => panic!("{e}"),
            }
        };
        for i in next..next + 3 {
            let f = rx.read_timeout(T).unwrap();
            assert!(*f == message(i)[..], "message {i}");
            assert_eq!(f.is_redelivered(), i == next, "message {i}");
        }
        assert_eq!(rx.missed(), 0);
        next += 3;
    }
    drop((tx, client));
    coord.stop();
    dog.check();
}

/// A consumer killed while parked on the futex leaves no count in the line's waiters: the
/// producer's sends make no FUTEX_WAKE for a sleeper that is gone.
#[test]
fn dead_parked_consumer_is_no_longer_counted_as_waiting() {
    let _serial = serial();
    let dog = Watchdog::new("dead_parked_consumer", Duration::from_secs(120));
    let place = Place::new("park");
    let coord = place.coordinator();
    let client = place.client();
    client
        .create(
            "c",
            &ChannelConfig::spsc().capacity(4096).max_frame_size(64),
        )
        .unwrap();
    let waiters = || {
        let f = SharedFile::open(&place.segment_path("c"));
        // The producer line's second word holds `waiters` (u32) in its low half.
        f.word(shmring::layout::PRODUCER_LINE / 8 + 1)
            .load(Ordering::Relaxed) as u32
    };
    let mut parked = spawn_role(&dog, &place, &["park", "c"]);
    parked.expect_line("parking");
    let deadline = Instant::now() + T;
    while waiters() == 0 {
        assert!(Instant::now() < deadline, "the consumer never parked");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(waiters(), 1);
    parked.kill().unwrap();
    wait_until_vacant(&client, "c");
    assert_eq!(waiters(), 0, "the dead sleeper's count was taken back");
    drop(client);
    coord.stop();
    dog.check();
}

/// Found in review of step 5: deleting a channel that processes still held freed its owner's
/// byte quota while they kept its memory. Held deleted channels now stay charged until their
/// holders die: with a 4 MiB limit, three 1 MiB channels deleted while a process holds each
/// leave no room for a fourth (before the fix every create passed), and once the holders are
/// killed the user creates again.
#[test]
fn deleted_channels_stay_charged_until_their_holders_die() {
    let _serial = serial();
    let dog = Watchdog::new("deleted_channels_charged", Duration::from_secs(120));
    let place = Place::new("charged");
    let coord = Coordinator::start(
        CoordinatorConfig::new(&place.ns)
            .socket(&place.sock)
            .max_bytes_per_uid(4 << 20),
    )
    .unwrap();
    let client = place.client();
    let mib = ChannelConfig::spsc().capacity(1 << 20).max_frame_size(64);
    let mut holders = Vec::new();
    for i in 0..3 {
        let name = format!("d{i}");
        client.create(&name, &mib).unwrap();
        let mut h = spawn_role(&dog, &place, &["hold-claim", &name]);
        h.expect_line("held");
        holders.push(h);
        client.delete(&name).unwrap();
    }
    match client.create("d3", &mib) {
        Err(Error::Busy(m)) => assert!(m.contains("deleted channels"), "{m}"),
        other => panic!("a fourth channel while three deleted ones are held: {other:?}"),
    }
    for h in holders {
        h.kill().expect("the holder was running");
    }
    let deadline = Instant::now() + T;
    loop {
        match client.create("d3", &mib) {
            Ok(_) => break,
            Err(Error::Busy(m)) => {
                assert!(
                    Instant::now() < deadline,
                    "still refused after the holders died: {m}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    }
    drop(client);
    coord.stop();
    dog.check();
}

/// Kills per recovery measurement: `SHMRING_RECOVERY_KILLS` (default 10, at most 250). The
/// README's figures come from a run with more, under load.
fn recovery_kills() -> u8 {
    std::env::var("SHMRING_RECOVERY_KILLS")
        .ok()
        .and_then(|v| v.parse::<u8>().ok())
        .unwrap_or(10)
        .clamp(1, 250)
}

fn report(what: &str, times: &mut [Duration]) {
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |q: usize| us(times[(times.len() * q / 100).min(times.len() - 1)]);
    println!(
        "recovery, {what}: SIGKILL to the channel flowing again: min {:.0} us, median {:.0} us, p90 {:.0} us, p99 {:.0} us, max {:.0} us ({} kills)",
        us(times[0]),
        at(50),
        at(90),
        at(99),
        us(times[times.len() - 1]),
        times.len()
    );
}

/// Issue 10, item 9: SPSC producers SIGKILLed at random while they stream as fast as they can
/// to a spinning consumer. A producer killed between a record's header store and its tail
/// store leaves the published tail one record behind, and the consumer, reading that record at
/// once, publishes a head past it. Before the fix the repair did nothing about it and every
/// successor's attach failed, for good, with `Corrupted("SPSC cursors out of order: head ...,
/// tail ...")`; through the C ABI the first refusal came within a few hundred kills. Runs for
/// `SHMRING_MIDPUBLISH_SECS` seconds (default 3); every successor must be admitted, and the
/// consumer must never see damage.
#[test]
fn spsc_producers_killed_mid_publish_are_succeeded() {
    let _serial = serial();
    let dog = Watchdog::new(
        "spsc_producers_killed_mid_publish",
        Duration::from_secs(120),
    );
    let place = Place::new("midpub");
    let coord = place.coordinator();
    let client = place.client();
    client
        .create(
            "c",
            &ChannelConfig::spsc().capacity(4096).max_frame_size(64),
        )
        .unwrap();
    let secs: u64 = std::env::var("SHMRING_MIDPUBLISH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (kills, received) = std::thread::scope(|s| {
        let consumer = s.spawn(|| {
            let mut rx = client.consumer("c").unwrap();
            rx.set_wait_strategy(shmring::WaitStrategy::Spin);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match rx.try_drain(usize::MAX, |f, _| assert_eq!(f.len(), 8)) {
                    Ok(k) => n += k as u64,
                    Err(Error::WouldBlock(_)) => std::hint::spin_loop(),
                    Err(e) => panic!("the consumer saw {e}"),
                }
            }
            n
        });
        // Stops the consumer even if an assertion below fails.
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let guard = Stop(&stop);
        let mut rng = Rng::new(0x9d);
        let started = Instant::now();
        let mut kills = 0u32;
        while started.elapsed() < Duration::from_secs(secs) {
            let mut p = spawn_role(&dog, &place, &["client-flood", "c"]);
            // A refused successor prints why, which this panic shows.
            p.expect_line("producing");
            std::thread::sleep(Duration::from_micros(rng.below(2000)));
            if let Err(out) = p.kill() {
                panic!(
                    "a producer ended by itself ({}):
{}
{}",
                    out.status, out.stdout, out.stderr
                );
            }
            kills += 1;
        }
        // The last successor is admitted and its frames arrive.
        let mut p = spawn_role(&dog, &place, &["client-flood", "c"]);
        p.expect_line("producing");
        std::thread::sleep(Duration::from_millis(20));
        p.kill().expect("the last producer was running");
        drop(guard);
        (kills, consumer.join().unwrap())
    });
    println!(
        "spsc producers killed mid-stream: {kills} kills in {secs} s, every successor admitted, \
         {received} frames received"
    );
    assert!(received > 0);
    drop(client);
    coord.stop();
    dog.check();
}

/// One lane of the torture: a producer or consumer role, respawned after every kill.
struct Lane {
    producer: bool,
    helper: Option<Helper>,
}

/// Kill torture: producers and consumers are SIGKILLed at random moments and respawned while
/// frames stream; afterwards nothing committed is missing, there are no gaps, duplicates are
/// flagged, and the channel drains to empty.
/// `cfg` is an SPSC or MPMC channel (broadcast has `broadcast_torture`), with as many
/// producers and consumers as processes run at once.
fn torture(cfg: ChannelConfig) {
    torture_killing(cfg, true)
}

/// [`torture`], killing consumers too if `consumers_die` (else producers only).
fn torture_killing(cfg: ChannelConfig, consumers_die: bool) {
    torture_resizing(cfg, consumers_die, None)
}

/// Resizes channel `t` back and forth between the two capacities of `sizes` until `stop`, a
/// few milliseconds apart (a resize refused while the last one is under way is tried again);
/// returns how many it made.
fn resizer(
    client: &Client,
    sizes: [u64; 2],
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let client = client.clone();
    std::thread::spawn(move || {
        let mut rng = Rng::new(0x7e51);
        let mut made = 0u64;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_micros(2000 + rng.below(8000)));
            match client.resize("t", sizes[(made % 2) as usize]) {
                Ok(_) => made += 1,
                Err(Error::Busy(_)) => {}
                Err(e) => panic!("resize: {e}"),
            }
        }
        made
    })
}

/// [`torture_killing`], resizing the channel between the two capacities of `resize`
/// meanwhile, if given.
fn torture_resizing(cfg: ChannelConfig, consumers_die: bool, resize: Option<[u64; 2]>) {
    let (kind, producers, consumers) = (
        cfg.kind,
        cfg.max_producers as usize,
        cfg.max_consumers as usize,
    );
    let _serial = serial();
    let kills_wanted = torture_kills();
    let dog = Watchdog::new(&format!("torture {kind}"), Duration::from_secs(600));
    let place = Place::new("torture");
    let coord = place.coordinator();
    let client = place.client();
    client.create("t", &cfg).unwrap();
    let mut commit_files: HashMap<u32, PathBuf> = HashMap::new();
    let mut logs: Vec<PathBuf> = Vec::new();
    let mut next_inc = 1u32;
    let mut spawn = |producer: bool| -> Helper {
        if producer {
            let inc = next_inc;
            next_inc += 1;
            let path = place.dir.join(format!("commits-{inc}"));
            SharedFile::create(&path, 1);
            commit_files.insert(inc, path.clone());
            spawn_role(
                &dog,
                &place,
                &[
                    "client-produce",
                    "t",
                    &inc.to_string(),
                    path.to_str().unwrap(),
                    "park",
                ],
            )
        } else {
            let path = place.dir.join(format!("log-{}", logs.len()));
            FrameLog::create(&path, 1 << 20);
            logs.push(path.clone());
            // Every other consumer waits in poll(2) on its pollable descriptor.
            let wait = if logs.len().is_multiple_of(2) {
                "poll"
            } else {
                "park"
            };
            spawn_role(
                &dog,
                &place,
                &["client-consume", "t", path.to_str().unwrap(), wait],
            )
        }
    };
    let mut lanes: Vec<Lane> = (0..producers + consumers)
        .map(|i| Lane {
            producer: i < producers,
            helper: None,
        })
        .collect();
    for l in &mut lanes {
        l.helper = Some(spawn(l.producer));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let resizing = resize.map(|sizes| resizer(&client, sizes, stop.clone()));
    let mut rng = Rng::new(0x5eed);
    let started = Instant::now();
    for _ in 0..kills_wanted {
        std::thread::sleep(Duration::from_micros(1000 + rng.below(19_000)));
        let victims = if consumers_die {
            producers + consumers
        } else {
            producers
        };
        let l = &mut lanes[rng.below(victims as u64) as usize];
        if let Err(out) = l.helper.take().unwrap().kill() {
            panic!(
                "a helper ended by itself ({}):\n{}\n{}",
                out.status, out.stdout, out.stderr
            );
        }
        l.helper = Some(spawn(l.producer));
    }
    let tortured = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let resizes = resizing.map(|r| r.join().expect("the resizer"));
    for l in &mut lanes {
        if let Err(out) = l.helper.take().unwrap().kill() {
            panic!("a helper ended by itself ({}):\n{}", out.status, out.stderr);
        }
    }
    wait_until_vacant(&client, "t");
    let mut delivered: Vec<Logged> = logs
        .iter()
        .flat_map(|p| FrameLog::open(p).entries())
        .collect();
    let received = delivered.len();
    delivered.extend(drain(&client, "t"));
    let s = client.stats("t").unwrap();
    assert_eq!(s.info.depth, 0, "the channel drains to empty");
    assert_eq!(s.draining_depth, 0, "the generation a resize replaced too");
    if let Some(n) = resizes {
        println!("torture {kind}: {n} resizes, {} counted", s.resizes);
        assert!(n > 0 && s.resizes == n, "resized meanwhile");
    }
    assert_eq!(
        s.pool_used, 0,
        "every chunk of the message pool is back (of {})",
        s.pool_chunks
    );
    let committed: HashMap<u32, u64> = commit_files
        .iter()
        .map(|(&inc, p)| (inc, SharedFile::open(p).word(0).load(Ordering::Acquire)))
        .collect();
    let total: u64 = committed.values().sum();
    match check_delivery(&committed, &delivered) {
        Ok(summary) => println!(
            "torture {kind}: {kills_wanted} kills in {:.1} s, {total} frames committed by {} producer \
             incarnations, {received} received by {} consumer incarnations and {} in the final \
             drain; {summary}; coordinator: {} repairs, {} redelivered, {} skipped",
            tortured.as_secs_f64(),
            committed.len(),
            logs.len(),
            delivered.len() - received,
            s.repairs,
            s.redelivered,
            s.skipped
        ),
        Err(e) => panic!("torture {kind}: {e}"),
    }
    assert!(total > 0, "nothing was committed");
    assert!(s.repairs > 0, "no repair happened");
    drop(client);
    coord.stop();
    dog.check();
    assert!(place.segments().is_empty(), "{:?}", place.segments());
}

#[test]
fn kill_torture_mpmc() {
    torture(
        ChannelConfig::mpmc()
            .capacity(32 * 64)
            .max_frame_size(64)
            .max_producers(2)
            .max_consumers(2),
    );
}

/// [`kill_torture_mpmc`] while the channel is resized between 32 and 256 slots every few
/// milliseconds: producers killed with positions claimed in a ring being replaced, consumers
/// killed holding frames there (whose redelivery the others wait for before they follow).
#[test]
fn kill_torture_mpmc_resized() {
    torture_resizing(
        ChannelConfig::mpmc()
            .capacity(32 * 64)
            .max_frame_size(64)
            .max_producers(2)
            .max_consumers(2),
        true,
        Some([256 * 64, 32 * 64]),
    );
}

/// The same with messages of up to 16 KiB through the pool, which each new ring has its own
/// of.
#[test]
fn kill_torture_mpmc_messages_resized() {
    torture_resizing(
        ChannelConfig::mpmc()
            .capacity(32 * 64)
            .max_frame_size(64)
            .max_producers(2)
            .max_consumers(2)
            .max_message_size(16 << 10),
        true,
        Some([256 * 64, 32 * 64]),
    );
}

/// Messages of up to 16 KiB on an MPMC channel of 64-byte frames: each goes through the pool
/// (eight 4 KiB chunks), its reference through a slot. Producers killed between taking chunks
/// and enqueuing them, consumers killed holding a message or between releasing its slot and
/// freeing its chunks: nothing committed is lost, nothing delivered twice unflagged, and the
/// pool never runs dry for good (a repair gives back what the dead held).
#[test]
fn kill_torture_mpmc_messages() {
    torture(
        ChannelConfig::mpmc()
            .capacity(32 * 64)
            .max_frame_size(64)
            .max_producers(2)
            .max_consumers(2)
            .max_message_size(16 << 10),
    );
}

#[test]
fn kill_torture_spsc() {
    torture(ChannelConfig::spsc().capacity(8 << 10).max_frame_size(64));
}

/// Kill torture while the channel is resized between 8 KiB and 64 KiB every few milliseconds:
/// producers killed before, during and after moving to a new ring, consumers killed in the
/// old one, in the new one, and between the two. Nothing committed is lost, there are no gaps
/// in any producer's sequence, and duplicates are flagged.
#[test]
fn kill_torture_spsc_resized() {
    torture_resizing(
        ChannelConfig::spsc().capacity(8 << 10).max_frame_size(64),
        true,
        Some([64 << 10, 8 << 10]),
    );
}

/// The same with messages of up to 6 000 bytes (each split into records of 64-byte frames).
#[test]
fn kill_torture_spsc_messages_resized() {
    torture_resizing(
        ChannelConfig::spsc()
            .capacity(8 << 10)
            .max_frame_size(64)
            .max_message_size(6000),
        true,
        Some([64 << 10, 8 << 10]),
    );
}

/// Messages of up to 6 000 bytes through an 8 KiB SPSC ring of 64-byte frames: each split
/// into up to three records, written only once all fit, held by the consumer until whole. A
/// producer killed midway leaves nothing a consumer delivers; a consumer killed midway leaves
/// the whole message to its successor, flagged redelivered.
#[test]
fn kill_torture_spsc_messages() {
    torture(
        ChannelConfig::spsc()
            .capacity(8 << 10)
            .max_frame_size(64)
            .max_message_size(6000),
    );
}

/// Messages of up to 64 KiB, most of them longer than the 8 KiB ring: they stream through it.
/// Producers are killed (midway through a message, as often as not): nothing committed is
/// lost and no part of a message is delivered. (A consumer killed midway through a message
/// that streams loses it, counted in `missed`: the ring cannot hold it for a successor.)
#[test]
fn kill_torture_spsc_streamed_messages() {
    torture_killing(
        ChannelConfig::spsc()
            .capacity(8 << 10)
            .max_frame_size(64)
            .max_message_size(64 << 10),
        false,
    );
}

/// A helper of the crash tests ended by itself: they only end by being killed.
fn died(out: shmring_tests::Output) -> ! {
    panic!(
        "a helper ended by itself ({}):\n{}\n{}",
        out.status, out.stdout, out.stderr
    )
}

/// Kills per torture run: `SHMRING_TORTURE_KILLS` (default 300).
fn torture_kills() -> u32 {
    std::env::var("SHMRING_TORTURE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// Broadcast kill torture: one producer and three subscribers, each a `shmring-peer` process
/// admitted by the embedded coordinator, SIGKILLed at random moments and respawned. Frames are
/// numbered by ring position: after each producer kill the test reads from the segment where
/// the committed frames end (the first position not committed, as a successor resumes) and
/// starts the successor numbering there; the dead producer's log of returned sends must
/// account for all of its range but at most one frame (killed between commit and log). Each
/// subscriber pins the position it joined at and records every frame with its missed count.
/// After the random kills, one producer is killed holding a claim, and one subscriber is
/// stopped: under `Block` the producer must halt exactly a ring ahead of what it released and
/// go on once it is SIGKILLed; under `DropOldest` it must lap the stopped subscriber, which
/// then resumes. Then, for every subscriber process: every frame is the one committed at its
/// position (never what a dead producer left uncommitted there), in order, no duplicate, and
/// every position from its join to its last record was received or counted missed, exactly.
/// Under `Block` nothing is missed, so those are exactly the positions from the join on; the
/// subscribers alive at the end catch up to the last frame committed.
fn broadcast_torture(overflow: Overflow) {
    const SUBSCRIBERS: usize = 3;
    const SLOTS: u64 = 16;
    let _serial = serial();
    let kills_wanted = torture_kills();
    let lossless = overflow == Overflow::Block;
    // Only a `DropOldest` channel (or one with history) marks a slot being written: on a
    // `Block` channel without history a half-written slot still holds the previous lap's frame
    // and cannot be told from one the producer has not reached (the per-frame check below is
    // what shows that it is never delivered).
    let marks = !lossless;
    let what = format!("broadcast torture ({overflow})");
    let dog = Watchdog::new(&what, Duration::from_secs(600));
    let place = Place::new("btorture");
    let coord = place.coordinator();
    let client = place.client();
    let cfg = ChannelConfig::broadcast()
        .capacity(SLOTS * 64)
        .max_frame_size(64)
        .max_consumers(SUBSCRIBERS as u32)
        .overflow(overflow);
    client.create("t", &cfg).unwrap();
    let view = BroadcastView::open(&place.segment_path("t"));
    assert_eq!(view.slots(), SLOTS);

    // Producer incarnations: (incarnation, first position, log of returned sends).
    let mut producers: Vec<(u32, u64, PathBuf)> = Vec::new();
    let spawn_producer = |producers: &mut Vec<(u32, u64, PathBuf)>, first: u64| {
        let inc = producers.len() as u32 + 1;
        let path = place.dir.join(format!("commits-{inc}"));
        SharedFile::create(&path, 1);
        producers.push((inc, first, path.clone()));
        spawn_role(
            &dog,
            &place,
            &[
                "client-produce",
                "t",
                &inc.to_string(),
                path.to_str().unwrap(),
                "park",
                &first.to_string(),
            ],
        )
    };
    let mut logs: Vec<PathBuf> = Vec::new();
    let spawn_subscriber = |logs: &mut Vec<PathBuf>| {
        let path = place.dir.join(format!("sub-{}", logs.len()));
        SubscriberLog::create(&path, 1 << 20);
        logs.push(path.clone());
        spawn_role(
            &dog,
            &place,
            &["client-subscribe", "t", path.to_str().unwrap(), "park"],
        )
    };
    // Where the dead producer's commits end (its successor starts there), and whether it
    // died with that slot marked being written.
    let mut ends: Vec<u64> = Vec::new();
    let kill_producer = |p: Helper, ends: &mut Vec<u64>| {
        p.kill().unwrap_or_else(|out| died(out));
        let end = view.committed_end();
        ends.push(end);
        (end, view.being_written(end))
    };

    let mut producer = spawn_producer(&mut producers, 0);
    // The subscriber processes running now, each with the index of its log.
    let mut subscribers: Vec<(Helper, usize)> = (0..SUBSCRIBERS)
        .map(|_| (spawn_subscriber(&mut logs), logs.len() - 1))
        .collect();
    let (mut producer_kills, mut subscriber_kills, mut half_written) = (0u32, 0u32, 0u32);
    let mut rng = Rng::new(0xb40c);
    let started = Instant::now();
    for k in 0..kills_wanted {
        std::thread::sleep(Duration::from_micros(1000 + rng.below(19_000)));
        // The first kill is a subscriber's, so that a run of few kills has both.
        let lane = if k == 0 {
            0
        } else {
            rng.below(SUBSCRIBERS as u64 + 1) as usize
        };
        if lane == SUBSCRIBERS {
            let (end, marked) = kill_producer(producer, &mut ends);
            half_written += u32::from(marked);
            producer = spawn_producer(&mut producers, end);
            producer_kills += 1;
        } else {
            let (h, _) = subscribers.swap_remove(lane);
            h.kill().unwrap_or_else(|out| died(out));
            subscribers.push((spawn_subscriber(&mut logs), logs.len() - 1));
            subscriber_kills += 1;
        }
    }
    let tortured = started.elapsed();
    // However few kills were asked for, one producer dies holding a claim (on a channel that
    // marks: the slot of its published position marked being written), and a successor takes
    // over from there.
    let deadline = Instant::now() + T;
    if marks {
        loop {
            while !view.being_written(view.position()) {
                assert!(
                    Instant::now() < deadline,
                    "{what}: the producer never held a claim"
                );
                std::hint::spin_loop();
            }
            let (end, marked) = kill_producer(producer, &mut ends);
            producer = spawn_producer(&mut producers, end);
            producer_kills += 1;
            if marked {
                half_written += 1;
                break;
            }
        }
    }
    // A subscriber stopped (SIGSTOP) once it has joined. Under `Block` the producer comes to
    // a halt exactly a ring ahead of what it released, and goes on once the subscriber is
    // SIGKILLed and repaired (checked below). Under `DropOldest` the producer never waits:
    // it laps the stopped subscriber, which resumes and must count what it missed.
    let (stopped, i) = subscribers.swap_remove(0);
    let joined = SubscriberLog::open(&logs[i]);
    let deadline = Instant::now() + T;
    while joined.join().is_none() {
        assert!(
            Instant::now() < deadline,
            "{what}: a subscriber never joined"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: kill has no memory effects; the helper is our child and not yet reaped.
    unsafe { libc::kill(stopped.pid() as i32, libc::SIGSTOP) };
    let deadline = Instant::now() + T;
    loop {
        let released = view
            .released_of(stopped.pid())
            .expect("the stopped subscriber holds its entry");
        let position = view.position();
        if lossless {
            assert!(
                position <= released + SLOTS,
                "{what}: the producer is at {position}, past a stopped subscriber's \
                 released {released} plus the ring"
            );
            if position == released + SLOTS {
                break;
            }
        } else if position >= released + 2 * SLOTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the producer stopped at {position} (a stopped subscriber released \
             {released})"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    if lossless {
        stopped.kill().unwrap_or_else(|out| died(out));
        subscribers.push((spawn_subscriber(&mut logs), logs.len() - 1));
        subscriber_kills += 1;
    } else {
        // SAFETY: as above.
        unsafe { libc::kill(stopped.pid() as i32, libc::SIGCONT) };
        subscribers.push((stopped, i));
    }

    // The producer is not stuck behind a dead subscriber: with the last ones running, it
    // still commits (a few laps of the ring).
    let (_, _, last_log) = producers.last().unwrap();
    let commits = SharedFile::open(last_log);
    let before = commits.word(0).load(Ordering::Acquire);
    let deadline = Instant::now() + T;
    while commits.word(0).load(Ordering::Acquire) < before + 4 * SLOTS {
        assert!(
            Instant::now() < deadline,
            "{what}: the producer made no progress after the last kill ({before} commits)"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let (end, marked) = kill_producer(producer, &mut ends);
    half_written += u32::from(marked);

    // Every subscriber alive now catches up to the last frame committed.
    for (_, i) in &subscribers {
        let log = SubscriberLog::open(&logs[*i]);
        let deadline = Instant::now() + T;
        loop {
            let caught_up = match (log.join(), log.last()) {
                (Some(_), Some(r)) => r.seq + 1 >= end,
                (Some(j), None) => j >= end,
                (None, _) => false,
            };
            if caught_up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: subscriber {i} did not catch up to position {end}: joined at {:?}, \
                 last frame {:?}",
                log.join(),
                log.last()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let survivors: Vec<usize> = subscribers.iter().map(|(_, i)| *i).collect();
    for (h, _) in subscribers {
        h.kill().unwrap_or_else(|out| died(out));
    }
    wait_until_vacant(&client, "t");

    // The committed stream, incarnation by incarnation.
    let mut stream = Vec::new();
    let mut unlogged = 0;
    for ((inc, first, path), end) in producers.iter().zip(&ends) {
        let logged = SharedFile::open(path).word(0).load(Ordering::Acquire);
        let n = end - first;
        assert!(
            n == logged || n == logged + 1,
            "{what}: producer incarnation {inc} committed positions [{first}, {end}) but \
             logged {logged} returned sends"
        );
        unlogged += n - logged;
        stream.push(Committed {
            incarnation: *inc,
            first: *first,
            end: *end,
        });
    }
    let (mut received, mut missed, mut joined, mut reopens) = (0u64, 0u64, 0u32, 0u64);
    for (i, path) in logs.iter().enumerate() {
        let log = SubscriberLog::open(path);
        let got = log.entries();
        let to_end = survivors.contains(&i);
        match check_subscriber(&stream, log.join(), &got, lossless, to_end) {
            Ok((r, m)) => (received, missed) = (received + r, missed + m),
            Err(e) => panic!("{what}: subscriber {i}: {e}"),
        }
        joined += u32::from(log.join().is_some());
        reopens += log.reopens();
    }
    let s = client.stats("t").unwrap();
    println!(
        "{what}: {} kills in {:.1} s ({producer_kills} of the producer, {half_written} of them \
         with a slot marked being written, {unlogged} between a commit and its log; \
         {subscriber_kills} of subscribers); {end} frames committed by {} producer \
         incarnations; {} subscriber processes ({joined} joined, {reopens} reopens to pin a \
         join) received {received} and missed {missed}; coordinator: {} repairs",
        producer_kills + subscriber_kills,
        tortured.as_secs_f64(),
        producers.len(),
        logs.len(),
        s.repairs
    );
    assert!(
        producer_kills > 0 && subscriber_kills > 0,
        "{what}: kills on both sides"
    );
    assert!(
        !marks || half_written > 0,
        "{what}: no producer was killed with a slot marked being written"
    );
    assert!(received > 0, "{what}: nothing received");
    if lossless {
        assert_eq!(missed, 0);
    } else {
        assert!(missed > 0, "{what}: no subscriber was lapped");
    }
    assert_eq!(s.info.depth, 0);
    drop(client);
    coord.stop();
    dog.check();
    assert!(place.segments().is_empty(), "{:?}", place.segments());
}

#[test]
fn kill_torture_broadcast_block() {
    broadcast_torture(Overflow::Block);
}

#[test]
fn kill_torture_broadcast_drop_oldest() {
    broadcast_torture(Overflow::DropOldest);
}

/// The coordinator is SIGKILLed mid-stream: producer and consumer keep exchanging frames; a
/// restarted coordinator adopts the channel, notices when the consumer it never admitted dies,
/// repairs its entry and admits a new consumer; nothing committed is lost. For a broadcast
/// channel (`Block`) the dead subscriber holds the producer back until that repair, each
/// subscriber receives every frame from its join on, and the second one, alive until the
/// producer's end, every frame up to the last.
fn coordinator_killed(kind: Kind) {
    let _serial = serial();
    let dog = Watchdog::new("coordinator_killed", Duration::from_secs(120));
    let place = Place::new("restart");
    let sock = place.sock.to_str().unwrap().to_string();
    let daemon = || {
        let mut d = dog.spawn(peer().args(["daemon", &sock, &place.ns]));
        d.expect_line("ready");
        d
    };
    let d1 = daemon();
    let client = place.client();
    let cfg = match kind {
        Kind::Spsc => ChannelConfig::spsc().capacity(8 << 10).max_frame_size(64),
        Kind::Mpmc => ChannelConfig::mpmc().capacity(32 * 64).max_frame_size(64),
        Kind::Broadcast => ChannelConfig::broadcast()
            .capacity(32 * 64)
            .max_frame_size(64),
    };
    let broadcast = kind == Kind::Broadcast;
    client.create("t", &cfg).unwrap();
    let commits = place.dir.join("commits");
    SharedFile::create(&commits, 1);
    let logs = [place.dir.join("log-0"), place.dir.join("log-1")];
    for l in &logs {
        if broadcast {
            SubscriberLog::create(l, 1 << 20);
        } else {
            FrameLog::create(l, 1 << 20);
        }
    }
    // Frames consumer `i` has recorded.
    let received = |i: usize| {
        if broadcast {
            SubscriberLog::open(&logs[i]).len()
        } else {
            FrameLog::open(&logs[i]).len()
        }
    };
    let consume = |i: usize| {
        let role = if broadcast {
            "client-subscribe"
        } else {
            "client-consume"
        };
        let mut c = spawn_role(
            &dog,
            &place,
            &[role, "t", logs[i].to_str().unwrap(), "park"],
        );
        c.expect_line("consuming");
        c
    };
    let mut producer = spawn_role(
        &dog,
        &place,
        &[
            "client-produce",
            "t",
            "1",
            commits.to_str().unwrap(),
            "park",
        ],
    );
    producer.expect_line("producing");
    let consumer = consume(0);
    let grows = |i: usize, what: &str| {
        let before = received(i);
        let deadline = Instant::now() + T;
        while received(i) < before + 100 {
            assert!(Instant::now() < deadline, "{what}: frames stopped flowing");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    grows(0, "before the coordinator is killed");
    d1.kill().expect("the coordinator was running");
    grows(0, "while no coordinator runs");

    let d2 = daemon();
    consumer.kill().expect("the consumer was running");
    let consumer = consume(1);
    grows(1, "through a consumer the new coordinator admitted");
    producer.kill().expect("the producer was running");
    let logged = SharedFile::open(&commits).word(0).load(Ordering::Acquire);
    if broadcast {
        // Where the committed frames end, in the segment the new coordinator holds; the
        // second subscriber catches up to there before it is killed.
        let end = BroadcastView::of_process(d2.pid(), "t").committed_end();
        assert!(
            end == logged || end == logged + 1,
            "{end} frames committed, {logged} sends returned"
        );
        let log = SubscriberLog::open(&logs[1]);
        let deadline = Instant::now() + T;
        while log.last().is_none_or(|r| r.seq + 1 < end) {
            assert!(
                Instant::now() < deadline,
                "the second subscriber stopped at {:?}, before {end}",
                log.last()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        consumer.kill().expect("the consumer was running");
        wait_until_vacant(&client, "t");
        let stream = [Committed {
            incarnation: 1,
            first: 0,
            end,
        }];
        for (i, path) in logs.iter().enumerate() {
            let log = SubscriberLog::open(path);
            match check_subscriber(&stream, log.join(), &log.entries(), true, i == 1) {
                Ok((n, _)) => println!(
                    "coordinator killed ({kind}): subscriber {i} joined at {:?} and received \
                     {n} of the {end} frames committed",
                    log.join()
                ),
                Err(e) => panic!("coordinator killed ({kind}): subscriber {i}: {e}"),
            }
        }
    } else {
        consumer.kill().expect("the consumer was running");
        wait_until_vacant(&client, "t");
        let mut delivered: Vec<Logged> = logs
            .iter()
            .flat_map(|p| FrameLog::open(p).entries())
            .collect();
        delivered.extend(drain(&client, "t"));
        let committed: HashMap<u32, u64> = [(1, logged)].into();
        match check_delivery(&committed, &delivered) {
            Ok(summary) => {
                println!("coordinator killed ({kind}): {logged} frames committed; {summary}")
            }
            Err(e) => panic!("coordinator killed ({kind}): {e}"),
        }
    }
    let s = client.stats("t").unwrap();
    assert_eq!(s.info.depth, 0);
    assert_eq!(
        s.repairs, 3,
        "the first consumer, the producer and the second consumer"
    );
    drop(client);
    // SIGTERM: a graceful stop removes the namespace's segments.
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(d2.pid() as i32, libc::SIGTERM) };
    let out = d2.wait();
    assert!(out.status.success(), "{}", out.stderr);
    dog.check();
    assert!(place.segments().is_empty(), "{:?}", place.segments());
}

#[test]
fn coordinator_killed_spsc() {
    coordinator_killed(Kind::Spsc);
}

#[test]
fn coordinator_killed_mpmc() {
    coordinator_killed(Kind::Mpmc);
}

#[test]
fn coordinator_killed_broadcast() {
    coordinator_killed(Kind::Broadcast);
}

/// Issue 11: a broadcast producer blocked (`Block`, parked) behind a subscriber that holds
/// the oldest frame goes on once that subscriber is SIGKILLed, as soon as the coordinator has
/// repaired it (no timeout). Prints the time from SIGKILL to the producer's send returning.
#[test]
fn producer_blocked_behind_a_dead_subscriber_goes_on() {
    use shmring::layout::{PARKED_ON_CONSUMER, PARTICIPANTS, Participant};
    const SLOTS: u64 = 4;
    let _serial = serial();
    let dog = Watchdog::new(
        "producer_blocked_behind_a_dead_subscriber",
        Duration::from_secs(120),
    );
    let place = Place::new("bblocked");
    let coord = place.coordinator();
    let client = place.client();
    let cfg = ChannelConfig::broadcast()
        .capacity(SLOTS * 64)
        .max_frame_size(64)
        .max_consumers(2);
    client.create("c", &cfg).unwrap();
    let seg = SharedFile::open(&place.segment_path("c"));
    // The producer's entry (the first of the table) says it sleeps on the consumer line.
    let parked_word = PARTICIPANTS + std::mem::offset_of!(Participant, parked);
    assert!(parked_word.is_multiple_of(8));
    let parked = || seg.word(parked_word / 8).load(Ordering::Relaxed) as u32 == PARKED_ON_CONSUMER;
    let mut tx = client.producer("c").unwrap();
    tx.set_wait_strategy(shmring::WaitStrategy::Park);
    let mut times = Vec::new();
    let kills = recovery_kills();
    for round in 0..kills {
        let mut holder = spawn_role(&dog, &place, &["hold-frame", "c"]);
        holder.expect_line("opened");
        tx.send_timeout(b"held", T).unwrap();
        holder.expect_line("held held");
        // The holder released nothing: the producer fills the ring up to the held frame.
        for _ in 1..SLOTS {
            tx.try_send(b"more").unwrap();
        }
        assert!(
            matches!(tx.try_send(b"more"), Err(Error::WouldBlock(_))),
            "round {round}: the ring is full behind the holder"
        );
        let (back, killed, sent) = std::thread::scope(|s| {
            let sender = s.spawn(move || {
                let r = tx.send_timeout(b"next", T);
                (tx, r, Instant::now())
            });
            let deadline = Instant::now() + T;
            while !parked() {
                assert!(Instant::now() < deadline, "the producer never parked");
                std::thread::sleep(Duration::from_millis(1));
            }
            let killed = Instant::now();
            holder.kill().expect("the holder was still holding");
            let (tx, r, sent) = sender.join().unwrap();
            r.unwrap_or_else(|e| panic!("round {round}: the producer stayed blocked: {e}"));
            (tx, killed, sent)
        });
        tx = back;
        times.push(sent.duration_since(killed));
    }
    let s = client.stats("c").unwrap();
    assert_eq!(s.repairs, u64::from(kills));
    report(
        "broadcast subscriber killed while the producer is parked behind it (to the send \
         returning)",
        &mut times,
    );
    drop((tx, client));
    coord.stop();
    dog.check();
}

/// The index, in 64-bit words of the segment, of the owner word of `role`'s entry `index` in a
/// channel with `max_producers` producer entries (layout.rs: the participant table follows the
/// repair line, producers first, one 128-byte line each, the owner word first).
fn owner_word(role: shmring::Role, index: usize, max_producers: usize) -> usize {
    let entry = match role {
        shmring::Role::Producer => index,
        shmring::Role::Consumer => max_producers + index,
    };
    (shmring::layout::PARTICIPANTS + entry * shmring::layout::LINE) / 8
}

/// Defect 12 (step 5): an owner word overwritten with a value that names no process the
/// coordinator admitted left the entry taken for good ("taken by pids [4290549390]"): every
/// later open got `Busy` until the channel was deleted. The coordinator now treats such a word
/// as damage: it frees an entry nobody holds, and gives a live holder its word back.
#[test]
fn scribbled_owner_words_are_damage_the_coordinator_puts_right() {
    use shmring::Role::{Consumer, Producer};
    use shmring::layout::{decode_owner, encode_owner};
    let _serial = serial();
    let dog = Watchdog::new("scribbled_owner_words", Duration::from_secs(60));
    let place = Place::new("owners");
    let coord = place.coordinator();
    let client = place.client();
    client.create("s", &ChannelConfig::spsc()).unwrap();
    let seg = SharedFile::open(&place.segment_path("s"));
    let bogus = encode_owner(4_290_549_390, 1);

    // A free entry's word names a pid no process can have: `stat` shows no such holder.
    seg.word(owner_word(Producer, 0, 1))
        .store(bogus, Ordering::Relaxed);
    let s = client.stats("s").unwrap();
    assert!(
        s.participants.is_empty(),
        "the stray entry was reclaimed: {:?}",
        s.participants
    );
    // ... and one naming a live process the coordinator never admitted there (pid 1): the next
    // open succeeds (before the fix: Busy, for good).
    seg.word(owner_word(Producer, 0, 1))
        .store(encode_owner(1, 9), Ordering::Relaxed);
    let mut tx = client
        .producer("s")
        .expect("the entry was reclaimed, not left taken");
    seg.word(owner_word(Consumer, 0, 1))
        .store(bogus, Ordering::Relaxed);
    let mut rx = client.consumer("s").expect("the consumer entry too");
    tx.send_timeout(b"after the damage", T).unwrap();
    assert_eq!(&*rx.read_timeout(T).unwrap(), b"after the damage");

    // A held entry's word overwritten: the holder gets its word back, and its close frees it.
    let word = owner_word(Producer, 0, 1);
    let held = seg.word(word).load(Ordering::Relaxed);
    assert_eq!(decode_owner(held).0, std::process::id());
    seg.word(word).store(bogus, Ordering::Relaxed);
    let s = client.stats("s").unwrap();
    assert_eq!(seg.word(word).load(Ordering::Relaxed), held, "restored");
    assert!(s.participants.iter().all(|p| p.pid == std::process::id()));
    assert!(
        matches!(client.producer("s"), Err(Error::Busy(_))),
        "still held"
    );
    drop(tx);
    let _tx = client.producer("s").expect("free once its holder closed");
    drop((_tx, rx, client));
    coord.stop();
    dog.check();
}

/// Defect 12 (step 5), in the repair: an MPMC consumer dies holding a frame after its owner
/// word was overwritten. Before the fix the repair took the changed word for a close, skipped
/// the entry, lost the frame's redelivery and left the entry taken; now it is repaired and
/// freed as the dead consumer's.
#[test]
fn a_dead_consumer_with_a_scribbled_owner_word_is_still_repaired() {
    use shmring::layout::{decode_owner, encode_owner};
    let _serial = serial();
    let dog = Watchdog::new("scribbled_dead_owner", Duration::from_secs(60));
    let place = Place::new("deadowner");
    let coord = place.coordinator();
    let client = place.client();
    let cfg = ChannelConfig::mpmc()
        .capacity(4 * 64)
        .max_frame_size(64)
        .max_consumers(2);
    client.create("c", &cfg).unwrap();
    let seg = SharedFile::open(&place.segment_path("c"));
    let mut tx = client.producer("c").unwrap();
    tx.send_timeout(b"held", T).unwrap();
    let mut holder = spawn_role(&dog, &place, &["hold-frame", "c"]);
    holder.expect_line("held held");
    let max_producers = cfg.max_producers as usize;
    let word = (0..2)
        .map(|i| owner_word(shmring::Role::Consumer, i, max_producers))
        .find(|&w| decode_owner(seg.word(w).load(Ordering::Relaxed)).0 == holder.pid())
        .expect("the holder's entry");
    seg.word(word)
        .store(encode_owner(4_290_549_390, 3), Ordering::Relaxed);
    holder.kill().expect("the holder was still holding");
    let mut rx = client.consumer("c").unwrap();
    let f = rx
        .read_timeout(T)
        .expect("the dead consumer's frame comes back");
    assert_eq!(&*f, b"held");
    assert!(f.is_redelivered());
    drop(f);
    wait_until_vacant_but(&client, "c", std::process::id());
    let s = client.stats("c").unwrap();
    assert_eq!((s.repairs, s.redelivered), (1, 1));
    drop((tx, rx, client));
    coord.stop();
    dog.check();
}

/// Waits until the coordinator shows no participant of `channel` but those of process `pid`.
fn wait_until_vacant_but(client: &Client, channel: &str, pid: u32) {
    let deadline = Instant::now() + T;
    loop {
        let s = client.stats(channel).unwrap();
        if s.participants.iter().all(|p| p.pid == pid) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "entries still held: {:?}",
            s.participants
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A producer SIGKILLed in the middle of a message longer than the ring (SPSC: streaming it;
/// broadcast: a slot at a time), and the consumer takes the first part of it: the consumer
/// never delivers that part. It drops it when the next producer's message begins, counts it
/// in `missed` (SPSC: one message; broadcast: the slots it took of it), and delivers the next
/// message whole. The same with the next message begun by a whole frame.
#[test]
fn a_producer_killed_midway_through_a_message_leaves_no_part_of_it() {
    let _serial = serial();
    let dog = Watchdog::new(
        "producer killed midway through a message",
        Duration::from_secs(120),
    );
    let place = Place::new("msgkill");
    let coord = place.coordinator();
    let client = place.client();
    for (kind, missed_per_message) in [(Kind::Spsc, None), (Kind::Broadcast, Some(()))] {
        let cfg = match kind {
            Kind::Spsc => ChannelConfig::spsc()
                .capacity(64 << 10)
                .max_frame_size(1024)
                .max_message_size(1 << 20),
            _ => ChannelConfig::broadcast()
                .capacity(16 * 4096)
                .max_frame_size(4096)
                .max_consumers(1)
                .max_message_size(1 << 20),
        };
        let name = format!("{kind}-m");
        client.create(&name, &cfg).unwrap();
        let mut rx = client.consumer(&name).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut missed = 0;
        for (round, next) in [(0u8, 300_000usize), (1, 5)] {
            // A message of 1 MiB, four times the ring and more: the producer blocks midway.
            let mut big = spawn_role(&dog, &place, &["send-one", &name, "1048576", "7"]);
            big.expect_line("sending");
            // The producer fills the ring and waits for room; it is killed there, and the
            // consumer takes what came of the message (the first part). (Taken before the kill,
            // the first part can turn into the whole message: each receive releases room, and a
            // producer quick enough keeps the receive going to the end.)
            let deadline = Instant::now() + T;
            // (Depth: bytes for SPSC, slots behind for a broadcast subscriber.)
            let full = if kind == Kind::Spsc { 32 << 10 } else { 8 };
            while client.stats(&name).unwrap().info.depth < full {
                assert!(
                    Instant::now() < deadline,
                    "{kind}: the producer wrote nothing"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(20));
            big.kill().expect("the producer was still sending");
            wait_until_producers(&client, &name, 0);
            match rx.try_recv(&mut buf) {
                Err(Error::WouldBlock(_)) => {}
                other => panic!("{kind} round {round}: part of a message delivered: {other:?}"),
            }
            // The next producer: a message (round 0) or a whole frame (round 1).
            let byte = 9 + round;
            let mut after = spawn_role(
                &dog,
                &place,
                &["send-one", &name, &next.to_string(), &byte.to_string()],
            );
            after.expect_line("sending");
            let got = rx.recv_timeout(&mut buf, T).unwrap();
            assert_eq!(got.len, next, "{kind} round {round}");
            assert!(
                buf[..next].iter().all(|&b| b == byte),
                "{kind} round {round}: not whole"
            );
            after.expect_line("sent");
            after.kill().unwrap();
            wait_until_producers(&client, &name, 0);
            assert!(
                rx.missed() > missed,
                "{kind} round {round}: the dropped message counts"
            );
            if missed_per_message.is_none() {
                assert_eq!(rx.missed(), missed + 1, "{kind} round {round}");
            }
            missed = rx.missed();
        }
        drop(rx);
        client.delete(&name).unwrap();
    }
    drop(client);
    coord.stop();
    dog.check();
}

/// Waits until the coordinator counts `n` producers of `channel` (the dead repaired).
fn wait_until_producers(client: &Client, channel: &str, n: u32) {
    let deadline = Instant::now() + T;
    while client.stats(channel).unwrap().info.producers != n {
        assert!(
            Instant::now() < deadline,
            "{channel}: still not {n} producers"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

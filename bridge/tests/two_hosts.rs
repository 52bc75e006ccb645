//! Two hosts on one machine: network namespaces joined by a veth pair (see `testbed`). A
//! coordinator, a producer and an exporting bridge on one; a coordinator, an importing bridge
//! and a consumer on the other. Needs root (CI runs it as root); elsewhere it fails unless
//! SHMRING_BRIDGE_SKIP_NETNS=1 says to skip it.

use shmring_bridge::testbed::{self, ADDR_A, Hosts};
use std::path::Path;
use std::time::{Duration, Instant};

const FRAMES: u64 = 1_000_000;
/// The consumer stops for 2 s after this many frames.
const PAUSE_AT: u64 = 200_000;
/// The importing bridge is killed and restarted here...
const KILL_IMPORTER_AT: u64 = 450_000;
/// ...and the exporting one here.
const KILL_EXPORTER_AT: u64 = 700_000;
/// What every wait is bounded by: a hang fails the test instead.
const LIMIT: Duration = Duration::from_secs(240);

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_default())
        .unwrap_or(serde_json::Value::Null)
}

fn progress(hosts: &Hosts) -> u64 {
    read_json(&hosts.path("progress.json"))
        .as_u64()
        .unwrap_or(0)
}

/// Waits until the consumer took `n` frames in order.
fn wait_progress(hosts: &mut Hosts, consumer: usize, n: u64) {
    let deadline = Instant::now() + LIMIT;
    while progress(hosts) < n {
        assert!(
            hosts.running(consumer),
            "the consumer ended before frame {n}\n{}",
            hosts.logs()
        );
        assert!(
            Instant::now() < deadline,
            "no frame {n} after {LIMIT:?}\n{}",
            hosts.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_million_frames_cross_two_hosts_through_a_pause_and_both_bridges_killed() {
    if let Some(why) = testbed::unavailable() {
        if std::env::var_os("SHMRING_BRIDGE_SKIP_NETNS").is_some() {
            eprintln!("skipped: {why}");
            return;
        }
        panic!("{why}: run as root (CI does), or set SHMRING_BRIDGE_SKIP_NETNS=1 to skip");
    }
    let bench = Path::new(env!("CARGO_BIN_EXE_shmring-bridge-bench"));
    let bridge = Path::new(env!("CARGO_BIN_EXE_shmring-bridge"));
    let mut hosts = Hosts::new("t").unwrap();
    let (a, b) = (hosts.a.clone(), hosts.b.clone());
    let (sock_a, sock_b) = (hosts.path("a.sock"), hosts.path("b.sock"));
    let (sa, sb) = (
        sock_a.to_str().unwrap().to_string(),
        sock_b.to_str().unwrap().to_string(),
    );
    let pid = std::process::id().to_string();
    hosts.spawn(
        &a,
        "coordinator-a",
        bench,
        &[
            "role",
            "coordinator",
            "--socket",
            &sa,
            "--namespace",
            &format!("bt-a-{pid}"),
        ],
    );
    hosts.spawn(
        &b,
        "coordinator-b",
        bench,
        &[
            "role",
            "coordinator",
            "--socket",
            &sb,
            "--namespace",
            &format!("bt-b-{pid}"),
        ],
    );
    testbed::wait_for_file(&sock_a, LIMIT).unwrap();
    testbed::wait_for_file(&sock_b, LIMIT).unwrap();

    // The exporting channel: small (1 MiB) so that the 2 s pause must reach the producer.
    let client_a = shmring::Client::connect(Some(&sock_a)).unwrap();
    let mut config = shmring::ChannelConfig::spsc();
    config.capacity = 1 << 20;
    config.max_frame_size = 4096;
    client_a.create("frames", &config).unwrap();

    let listen = format!("tcp/{ADDR_A}:7447");
    let export_args = [
        "--socket",
        &sa,
        "export",
        "--channel",
        "frames",
        "--key",
        "test/frames",
        "--listen",
        &listen,
    ];
    let import_args = [
        "--socket",
        &sb,
        "import",
        "--key",
        "test/frames",
        "--channel",
        "frames",
        "--connect",
        &listen,
        "--capacity",
        "1M",
        "--max-frame-size",
        "4K",
    ];
    let mut exporter = hosts.spawn(&a, "export", bridge, &export_args);
    let mut importer = hosts.spawn(&b, "import", bridge, &import_args);
    let (count, prog, consumer_report, producer_report) = (
        FRAMES.to_string(),
        hosts.path("progress.json"),
        hosts.path("consumer.json"),
        hosts.path("producer.json"),
    );
    let consumer = hosts.spawn(
        &b,
        "consume",
        bench,
        &[
            "role",
            "consume",
            "--socket",
            &sb,
            "--channel",
            "frames",
            "--count",
            &count,
            "--seed",
            "77",
            "--pause-after",
            &PAUSE_AT.to_string(),
            "--pause-ms",
            "2000",
            "--progress",
            prog.to_str().unwrap(),
            "--report",
            consumer_report.to_str().unwrap(),
        ],
    );
    let producer = hosts.spawn(
        &a,
        "produce",
        bench,
        &[
            "role",
            "produce",
            "--socket",
            &sa,
            "--channel",
            "frames",
            "--count",
            &count,
            "--seed",
            "77",
            "--min",
            "8",
            "--max",
            "2048",
            "--report",
            producer_report.to_str().unwrap(),
        ],
    );

    // Kill the importing bridge midway and start another.
    wait_progress(&mut hosts, consumer, KILL_IMPORTER_AT);
    hosts.kill(importer);
    std::thread::sleep(Duration::from_millis(200));
    importer = hosts.spawn(&b, "import", bridge, &import_args);

    // Then the exporting one: its held frames go to its successor, flagged redelivered.
    wait_progress(&mut hosts, consumer, KILL_EXPORTER_AT);
    hosts.kill(exporter);
    std::thread::sleep(Duration::from_millis(200));
    exporter = hosts.spawn(&a, "export", bridge, &export_args);

    for (i, what) in [
        (consumer, "consumer"),
        (producer, "producer"),
        (importer, "importing bridge"),
        (exporter, "exporting bridge"),
    ] {
        let status = hosts
            .wait(i, LIMIT)
            .unwrap_or_else(|e| panic!("{e}\n{}", hosts.logs()));
        assert!(
            status.success(),
            "the {what} failed: {status}\n{}",
            hosts.logs()
        );
    }
    // The consumer checked every frame's bytes, that they came in order, that a frame came
    // twice only flagged redelivered, and that all came.
    let c = read_json(&consumer_report);
    let p = read_json(&producer_report);
    eprintln!("consumer: {c}\nproducer: {p}");
    assert_eq!(c["in_order"], FRAMES, "{}", hosts.logs());
    // Back-pressure reached the producer: while the consumer stopped for 2 s, with 1 MiB
    // rings and bounded queues between, the producer's sends waited.
    let longest = p["longest_send_s"].as_f64().unwrap();
    assert!(
        longest >= 0.5,
        "the producer never waited long ({longest} s): the pause did not reach it"
    );
    // The importer's restart repeats at most the frames produced since its last
    // acknowledgement (256); the exporter's repeats at most what its ring held, all flagged.
    let dups = c["duplicates"].as_u64().unwrap();
    assert!(
        dups <= 256 + (1 << 20) / 16,
        "{dups} frames delivered twice"
    );
    let imports = hosts.log("import");
    assert!(
        imports.matches("new stream").count() >= 2,
        "the restarts were not seen by the importer\n{imports}"
    );
}

//! The examples run as the README says: a producer/consumer pair through a coordinator (embedded
//! here, found through `SHMRING_SOCKET`). Each process is killed if it outlives its limit.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` to completion, killing it (and failing) after `limit`.
fn run(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start example");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{cmd:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn producer_and_consumer_talk() {
    let ns = format!("example-{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("shmring-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("coordinator.sock");
    let coordinator =
        shmring::Coordinator::start(shmring::CoordinatorConfig::new(&ns).socket(&socket)).unwrap();
    let name = "greetings";
    let mut consumer = Command::new(env!("CARGO_BIN_EXE_consumer"));
    consumer
        .arg(name)
        .env("SHMRING_SOCKET", &socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let consumer = consumer.spawn().unwrap();
    let producer = run(
        Command::new(env!("CARGO_BIN_EXE_producer"))
            .args([name, "5"])
            .env("SHMRING_SOCKET", &socket),
        Duration::from_secs(60),
    );
    assert!(
        producer.status.success(),
        "{}",
        String::from_utf8_lossy(&producer.stderr)
    );
    let out = consumer.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("hello #5 from pid"), "{text}");
    assert!(text.contains("consumer: 5 frames"), "{text}");
    assert!(String::from_utf8_lossy(&producer.stdout).contains("5 frames delivered"));
    coordinator.stop();
    let _ = std::fs::remove_dir_all(&dir);
    // What the coordinator keeps of the namespace in the user's runtime directory.
    for ext in ["lock", "channels"] {
        let _ = std::fs::remove_file(shmring::default_socket_path(&ns).with_extension(ext));
    }
}

/// The broadcast example: a producer and two subscriber processes, with the coordinator in
/// the producer's process, under both overflow policies. Its runtime directory is a scratch one
/// (the coordinator keeps its namespace's lock and record of channels there).
#[test]
fn broadcast_reaches_both_subscribers() {
    let runtime =
        std::env::temp_dir().join(format!("shmring-example-bcast-{}", std::process::id()));
    std::fs::create_dir_all(&runtime).unwrap();
    let frames = 100_000u64;
    for policy in ["block", "drop-oldest"] {
        let out = run(
            Command::new(env!("CARGO_BIN_EXE_broadcast"))
                .args([&frames.to_string(), policy])
                .env("XDG_RUNTIME_DIR", &runtime),
            Duration::from_secs(120),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("producer: published={frames} overflow={policy}")),
            "{text}"
        );
        for k in 1..=2 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("subscriber {k}: ")))
                .unwrap_or_else(|| panic!("no line of subscriber {k}: {text}"));
            let number = |key: &str| -> u64 {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
                    .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
            };
            let (received, missed) = (number("received"), number("missed"));
            match policy {
                "block" => assert_eq!((received, missed), (frames, 0), "{text}"),
                _ => assert_eq!(received + missed, frames, "{text}"),
            }
        }
        assert_eq!(text.lines().last(), Some("ok"), "{text}");
    }
    let _ = std::fs::remove_dir_all(&runtime);
}

/// The stream-processing demo as the README runs it, shorter: processors (one in Python) are
/// killed every 300 ms and replaced, and every window and anomaly must still be exactly those
/// of a single-process run over the same ticks.
#[test]
fn the_stream_demo_with_kills_matches_its_reference() {
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_stream")).args([
            "--ticks",
            "300000",
            "--rate",
            "150000",
            "--kill-every",
            "300ms",
            "--python",
            "--quiet",
        ]),
        Duration::from_secs(240),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("identical to the reference"), "{stdout}");
    let kills: u32 = stdout
        .split(" processors killed")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(kills >= 2, "the demo killed {kills} processors: {stdout}");
}

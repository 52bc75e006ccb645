//! The `shmringd` daemon and the `shmring` CLI, run as a user runs them.

#![cfg(all(not(loom), feature = "cli"))]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Kills the daemon if the test ends early (a failed assertion) or hangs.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cli(socket: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmring"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("shmring {args:?} still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().unwrap()
}

fn ok(socket: &Path, args: &[&str]) -> String {
    let out = cli(socket, args);
    assert!(
        out.status.success(),
        "shmring {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn daemon_and_cli_manage_channels() {
    let help = Command::new(env!("CARGO_BIN_EXE_shmringd"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--socket",
        "--namespace",
        "--socket-mode",
        "--keep-channels",
    ] {
        assert!(help.contains(flag), "shmringd --help lacks {flag}:\n{help}");
    }
    let ns = format!("cli{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("shmring-{ns}"));
    let sock = dir.join("d.sock");
    let mut daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_shmringd"))
            .args(["--namespace", &ns, "--socket"])
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "shmringd did not start listening"
        );
        assert!(daemon.0.try_wait().unwrap().is_none(), "shmringd exited");
        std::thread::sleep(Duration::from_millis(5));
    }

    let created = json(&ok(
        &sock,
        &[
            "create",
            "jobs",
            "--kind",
            "mpmc",
            "--capacity",
            "64K",
            "--max-frame-size",
            "256",
            "--mode",
            "660",
            "--json",
        ],
    ));
    assert_eq!(created["kind"], "mpmc");
    assert_eq!(created["slots"], 256);
    assert_eq!(created["mode"], 0o660);
    let text = ok(&sock, &["create", "ticks"]);
    assert!(text.starts_with("created spsc channel ticks"), "{text}");

    let list = json(&ok(&sock, &["list", "--json"]));
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["jobs", "ticks"]);
    let table = ok(&sock, &["list"]);
    assert!(
        table.contains("jobs") && table.contains("256 slots"),
        "{table}"
    );

    let stat = json(&ok(&sock, &["stat", "jobs", "--json"]));
    assert_eq!(stat["info"]["max_frame_size"], 256);
    assert_eq!(stat["frames_in"], 0);
    assert_eq!(stat["repairs"], 0);
    let text = ok(&sock, &["stat", "ticks"]);
    assert!(
        text.contains("repairs") && text.contains("participants"),
        "{text}"
    );

    let missing = cli(&sock, &["stat", "nope"]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("no channel \"nope\""), "{err}");

    let lines = ok(
        &sock,
        &["watch", "--json", "--count", "2", "--interval", "0.05"],
    );
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(json(lines[1])["channels"].as_array().unwrap().len(), 2);

    // SHMRING_SOCKET names the coordinator when --socket is not given.
    let env = Command::new(env!("CARGO_BIN_EXE_shmring"))
        .arg("list")
        .env("SHMRING_SOCKET", &sock)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&env.stdout).contains("ticks"));

    assert_eq!(ok(&sock, &["delete", "jobs"]), "deleted jobs\n");
    let segments = || {
        std::fs::read_dir("/dev/shm")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(&format!("shmring.{ns}@")))
            .count()
    };
    assert_eq!(segments(), 2, "ticks and the namespace lock");

    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = daemon.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "shmringd ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success());
    assert!(!sock.exists(), "the socket is removed");
    assert_eq!(segments(), 0, "the namespace's segments are removed");
    let _ = std::fs::remove_dir_all(&dir);
}

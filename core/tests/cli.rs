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

/// Runs `shmring` with `args` to completion, killing it (and failing) after `limit`; returns
/// its output and its pid.
fn shmring(args: &[&str], limit: Duration) -> (Output, u32) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmring"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("shmring {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = child.id();
    (child.wait_with_output().unwrap(), pid)
}

fn cli(socket: &Path, args: &[&str]) -> Output {
    let socket = socket.to_str().unwrap();
    let all: Vec<&str> = ["--socket", socket].iter().chain(args).copied().collect();
    shmring(&all, Duration::from_secs(30)).0
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
        "--max-channels-per-uid",
        "--max-bytes-per-uid",
        "--max-connections",
        "--max-connections-per-uid",
        "--message-timeout",
    ] {
        assert!(help.contains(flag), "shmringd --help lacks {flag}:\n{help}");
    }
    let ns = format!("cli{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("shmring-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("d.sock");
    let mut daemon = listening(
        Command::new(env!("CARGO_BIN_EXE_shmringd"))
            .args(["--namespace", &ns, "--socket"])
            .arg(&sock)
            .stderr(Stdio::piped()),
        &sock,
    );

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
    assert_eq!(created["mode"], "0660");
    let text = ok(&sock, &["create", "ticks"]);
    assert!(text.starts_with("created spsc channel ticks"), "{text}");
    let text = ok(&sock, &["create", "frames", "--max-message-size", "8M"]);
    assert!(text.contains("messages up to 8 MiB"), "{text}");
    let stat = ok(&sock, &["stat", "frames"]);
    assert!(
        stat.contains("frames up to 64 KiB, messages up to 8 MiB"),
        "{stat}"
    );
    let stat = json(&ok(&sock, &["stat", "frames", "--json"]));
    assert_eq!(stat["info"]["max_message_size"], 8 << 20);
    let refused = cli(
        &sock,
        &[
            "create",
            "m",
            "--kind",
            "mpmc",
            "--max-frame-size",
            "8",
            "--max-message-size",
            "8M",
        ],
    );
    assert!(!refused.status.success());
    let text = ok(
        &sock,
        &["create", "m", "--kind", "mpmc", "--max-message-size", "1M"],
    );
    assert!(text.contains("messages up to 1 MiB"), "{text}");
    ok(&sock, &["delete", "m"]);
    ok(&sock, &["delete", "frames"]);

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

    // A broadcast channel: its policy and history as created, each subscriber's lag and
    // misses in `stat`; an overflow policy on another kind is refused with the reason.
    let created = json(&ok(
        &sock,
        &[
            "create",
            "feed",
            "--kind",
            "broadcast",
            "--overflow",
            "drop-oldest",
            "--history",
            "4",
            "--capacity",
            "8K",
            "--max-frame-size",
            "64",
            "--json",
        ],
    ));
    assert_eq!(created["kind"], "broadcast");
    assert_eq!(created["overflow"], "drop-oldest");
    assert_eq!(
        (created["history"].clone(), created["slots"].clone()),
        (4.into(), 128.into())
    );
    let client = shmring::Client::connect(Some(&sock)).unwrap();
    let mut tx = client.producer("feed").unwrap();
    let mut rx = client.consumer("feed").unwrap();
    for i in 0..300u32 {
        tx.try_send(&i.to_le_bytes()).unwrap();
    }
    let mut buf = [0u8; 64];
    rx.try_recv(&mut buf).unwrap();
    assert_eq!(u32::from_le_bytes(buf[..4].try_into().unwrap()), 300 - 127);
    let stat = json(&ok(&sock, &["stat", "feed", "--json"]));
    let sub = stat["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "consumer")
        .unwrap()
        .clone();
    assert_eq!(sub["missed"], 300 - 127);
    assert_eq!(stat["info"]["overflow"], "drop-oldest");
    let text = ok(&sock, &["stat", "feed"]);
    assert!(
        text.contains("LAG") && text.contains("MISSED") && text.contains("overflow drop-oldest"),
        "{text}"
    );
    drop((tx, rx, client));
    assert_eq!(ok(&sock, &["delete", "feed"]), "deleted feed\n");
    let refused = cli(&sock, &["create", "odd", "--overflow", "drop-oldest"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("broadcast channels only"), "{err}");

    assert_eq!(ok(&sock, &["delete", "jobs"]), "deleted jobs\n");
    // Channels are sealed memfds the coordinator holds: none has a name in /dev/shm (nor has
    // the namespace's lock, which is in the user's runtime directory).
    let named = || {
        std::fs::read_dir("/dev/shm")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(&format!("shmring.{ns}@")))
            .count()
    };
    // The deleted "feed" goes once the coordinator has handled its holders' closes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while memfds(daemon.0.id(), &format!("shmring.{ns}@")).len() > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        memfds(daemon.0.id(), &format!("shmring.{ns}@")).len(),
        1,
        "ticks"
    );
    assert_eq!(named(), 0, "no segment has a name in /dev/shm");

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
    assert_eq!(named(), 0, "nothing of the namespace is left in /dev/shm");
    let _ = std::fs::remove_dir_all(&dir);
    for ext in ["lock", "channels"] {
        let _ = std::fs::remove_file(shmring::default_socket_path(&ns).with_extension(ext));
    }
}

/// Starts `shmringd` on a socket of its own with `extra` flags; returns it, its socket and its
/// namespace once it listens.
fn daemon(tag: &str, extra: &[&str]) -> (Daemon, std::path::PathBuf, String) {
    let ns = format!("{tag}{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("shmring-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("d.sock");
    let d = listening(
        Command::new(env!("CARGO_BIN_EXE_shmringd"))
            .args(["--namespace", &ns, "--socket"])
            .arg(&sock)
            .args(extra)
            .stderr(Stdio::null()),
        &sock,
    );
    (d, sock, ns)
}

/// Starts `cmd` (shmringd, its stdout discarded) and waits until it listens on `sock`; fails
/// if it exits first or is not listening within 30 s.
fn listening(cmd: &mut Command, sock: &Path) -> Daemon {
    let mut d = Daemon(cmd.stdout(Stdio::null()).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "shmringd did not start listening"
        );
        assert!(d.0.try_wait().unwrap().is_none(), "shmringd {cmd:?} exited");
        std::thread::sleep(Duration::from_millis(5));
    }
    d
}

/// Runs `shmring` with `args` on `socket` and checks that it failed with `code`; returns its
/// standard output and standard error.
fn fails(socket: &Path, args: &[&str], code: i32) -> (String, String) {
    let out = cli(socket, args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "shmring {args:?}:\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

/// Found trying the programs as a new user (step 7): each check below failed before.
#[test]
fn validation_and_messages_a_new_user_meets() {
    // The daemon's size flags take units; the limit is on the capacity asked for.
    let (d, sock, ns) = daemon("val", &["--max-channel-bytes", "1M"]);
    let text = ok(
        &sock,
        &[
            "create",
            "whole",
            "--capacity",
            "1M",
            "--max-frame-size",
            "1K",
        ],
    );
    assert!(text.contains("1 MiB"), "{text}");
    let (_, err) = fails(
        &sock,
        &["create", "m", "--kind", "mpmc", "--capacity", "1M"],
        7,
    );
    assert!(
        err.contains("over this coordinator's limit of 1 MiB per channel")
            && err.contains("--capacity 512 KiB fits"),
        "{err}"
    );
    let (_, err) = fails(&sock, &["create", "t", "--capacity", "1T"], 7);
    assert!(err.contains("takes 1 TiB of frame storage"), "{err}");
    let (_, err) = fails(&sock, &["create", "z", "--max-frame-size", "0"], 7);
    assert!(err.contains("must be between 1 byte and 1 GiB"), "{err}");
    for kind in ["spsc", "mpmc"] {
        let (_, err) = fails(
            &sock,
            &[
                "create",
                "s",
                "--kind",
                kind,
                "--capacity",
                "64K",
                "--max-frame-size",
                "128K",
            ],
            7,
        );
        assert!(
            err.contains("below two frames of max_frame_size 128 KiB")
                && err.contains("at least 256 KiB"),
            "{kind}: {err}"
        );
    }
    for name in [".hidden", "."] {
        let (_, err) = fails(&sock, &["create", name], 7);
        assert!(err.contains("must not start with '.'"), "{name}: {err}");
    }
    // A name that looks like an option: the hint puts it after `--`.
    let (_, err) = fails(&sock, &["stat", "--", "-x"], 3);
    assert!(err.contains("`shmring create -- -x`"), "{err}");

    // --json: errors as JSON on standard output, an exit code per failure.
    let (out, err) = fails(&sock, &["stat", "nosuch", "--json"], 3);
    assert_eq!(err, "");
    let v = json(&out);
    assert_eq!(v["error"]["status"], "not_found", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("nosuch"));
    let (out, _) = fails(&sock, &["create", "whole", "--json"], 4);
    assert_eq!(json(&out)["error"]["status"], "already_exists");
    let (out, _) = fails(&sock, &["create", "u", "--capacity", "1Q", "--json"], 2);
    assert_eq!(json(&out)["error"]["status"], "usage");

    // JSON modes as written; owners by name (and uid).
    ok(&sock, &["create", "grp", "--mode", "660"]);
    let list = json(&ok(&sock, &["list", "--json"]));
    let grp = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "grp")
        .unwrap();
    assert_eq!(grp["mode"], "0660");
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let me = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .unwrap()
        .map(|u| u.name);
    assert_eq!(grp["owner"].as_str().map(str::to_string), me);
    assert_eq!(grp["owner_uid"], uid);
    let table = ok(&sock, &["list"]);
    if let Some(me) = &me {
        assert!(table.contains(&format!("{me} ({uid})")), "{table}");
    }
    assert!(table.contains("0660"), "{table}");

    // watch: no escapes into a pipe; a channel that is not there is an error; --count 0 is
    // refused.
    let text = ok(&sock, &["watch", "--count", "2", "--interval", "0.01"]);
    assert!(!text.contains('\x1b') && text.contains("grp"), "{text:?}");
    fails(&sock, &["watch", "nosuch", "--count", "1"], 3);
    let (_, err) = fails(&sock, &["watch", "--count", "0"], 2);
    assert!(err.contains("at least 1"), "{err}");

    // Standard output closed early (`| head -1`): a quiet exit.
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = Command::new(env!("CARGO_BIN_EXE_shmring"))
        .arg("--socket")
        .arg(&sock)
        .args(["stat", "grp"])
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    drop(d);
    let _ = std::fs::remove_dir_all(sock.parent().unwrap());
    for ext in ["lock", "channels"] {
        let _ = std::fs::remove_file(shmring::default_socket_path(&ns).with_extension(ext));
    }

    // No coordinator: the hint names the daemon to start, not a Rust call; exit code 8.
    let nobody = format!("nobody{}", std::process::id());
    let out = Command::new(env!("CARGO_BIN_EXE_shmring"))
        .args(["--namespace", &nobody, "list"])
        .env_remove("SHMRING_SOCKET")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{err}");
    assert!(
        err.contains(&format!("`shmringd --namespace {nobody}`"))
            && !err.contains("Coordinator::start"),
        "{err}"
    );
    // The exit codes are documented where a user looks.
    let help = Command::new(env!("CARGO_BIN_EXE_shmring"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Exit status:") && help.contains("3  not_found"),
        "{help}"
    );
}

/// Runs `shmring bench` with `args` under a watchdog; returns its output, after checking that
/// it left no process or file behind.
fn bench(args: &[&str]) -> Output {
    let all: Vec<&str> = ["bench"].iter().chain(args).copied().collect();
    let (out, pid) = shmring(&all, Duration::from_secs(180));
    assert_cleaned_up(pid);
    out
}

/// The live `shmring bench-peer` processes that the bench `parent` started.
fn peers_of(parent: u32) -> Vec<u32> {
    let needle = "bench-peer\0";
    let parent_arg = format!("--parent\0{parent}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(") ")
                .next()
                .is_some_and(|rest| rest.starts_with('Z'));
            cmd.contains(needle) && cmd.contains(&parent_arg) && !zombie
        })
        .collect()
}

/// The bench `pid` is gone: so must be its peer, its control page, its coordinator's objects
/// and its directory.
fn assert_cleaned_up(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !peers_of(pid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the peer of bench {pid} outlived it"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let leftovers: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            n.starts_with(&format!("shmring-bench-{pid}."))
                || n.starts_with(&format!("shmring.bench-{pid}@"))
        })
        .collect();
    assert!(leftovers.is_empty(), "bench left {leftovers:?} in /dev/shm");
    for ext in ["lock", "channels"] {
        let f = shmring::default_socket_path(&format!("bench-{pid}")).with_extension(ext);
        assert!(!f.exists(), "bench left {} behind", f.display());
    }
    assert!(
        !std::env::temp_dir()
            .join(format!("shmring-bench-{pid}"))
            .exists(),
        "bench left its directory behind"
    );
}

/// The keys of a JSON object, sorted.
fn keys(v: &serde_json::Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

#[test]
fn bench_quick_writes_the_report_schema_and_the_plot() {
    let dir = std::env::temp_dir().join(format!("shmring-test-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json_path, svg_path) = (dir.join("bench.json"), dir.join("bench.svg"));
    let out = bench(&[
        "--quick",
        "--payload",
        "8,64",
        "--iterations",
        "40",
        "--rounds",
        "2",
        "--duration",
        "0.05",
        "--think-us",
        "5",
        "--json",
        json_path.to_str().unwrap(),
        "--svg",
        svg_path.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("64-byte frames") && stdout.contains("/ atomic-floor"),
        "{stdout}"
    );
    // Found trying the bench as a new user: no legend, one "vs floor" column for two floors,
    // throughput in "0.02 M" and "0.00x".
    assert!(
        stdout.contains("columns: p50 to max")
            && stdout.contains("/ atomic-floor")
            && stdout.contains("/ futex-floor")
            && stdout.contains("uds / this"),
        "{stdout}"
    );
    // The throughput table's rows (the fan-out's counts of frames received may say "6.44 M").
    let throughput_rows: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            l.contains("copy") && (l.contains("shmring-spsc") || l.contains("shmring-mpmc"))
        })
        .collect();
    assert!(!throughput_rows.is_empty(), "{stdout}");
    for row in &throughput_rows {
        assert!(
            !row.contains(" M ") && !row.contains("0.00x") && row.contains("B/s"),
            "{row}\n{stdout}"
        );
    }
    assert!(
        stdout.contains("shmring-broadcast-spin / shmring-spsc-spin, p50:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("shmring-mpmc-pool-spin / shmring-mpmc-spin, p50:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("idle: a consumer waiting in poll on its descriptor"),
        "{stdout}"
    );
    // The fan-out says where its three processes ran.
    assert!(
        stdout.contains("broadcast fan-out: one producer process")
            && stdout.contains("two subscriber processes"),
        "{stdout}"
    );

    let transports = [
        "atomic-floor",
        "shmring-spsc-spin",
        "shmring-mpmc-spin",
        "shmring-mpmc-pool-spin",
        "shmring-broadcast-spin",
        "futex-floor",
        "shmring-spsc-park",
        "shmring-spsc-fd",
        "uds",
        "pipe",
        "tcp",
    ];
    let report = json(&std::fs::read_to_string(&json_path).unwrap());
    assert_eq!(
        keys(&report),
        [
            "idle_fd",
            "machine",
            "memcpy_bytes_per_s",
            "messages",
            "pingpong",
            "resize",
            "throughput"
        ]
    );
    // Round trips while the channels are resized, against the same pair left alone.
    assert!(
        stdout.contains("every round trip got its echo: no frame lost or repeated"),
        "{stdout}"
    );
    let resize = report["resize"].as_array().unwrap();
    assert_eq!(resize.len(), 2 * 3, "{resize:?}");
    for row in resize {
        assert_eq!(
            keys(row),
            [
                "cell",
                "payload",
                "resizes",
                "rtt_ns",
                "samples",
                "transport"
            ]
        );
        let resizes = row["resizes"].as_u64().unwrap();
        match row["cell"].as_str().unwrap() {
            "steady" => assert_eq!(resizes, 0, "{row}"),
            "resizing" | "moving" => assert!(resizes > 0, "{row}"),
            other => panic!("cell {other}"),
        }
        assert!(row["samples"].as_u64().unwrap() > 0, "{row}");
    }
    // Messages longer than the ring, 1 MiB and 16 MiB, each against the copy floor.
    assert!(stdout.contains("messages longer than the ring"), "{stdout}");
    let messages = report["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2 * 4, "{messages:?}");
    for row in messages {
        assert_eq!(
            keys(row),
            [
                "bytes_per_s",
                "message_bytes",
                "messages_per_s",
                "of_floor",
                "ring_bytes",
                "transport"
            ]
        );
        let t = row["transport"].as_str().unwrap();
        assert!(
            [
                "copy-floor",
                "shmring-spsc",
                "shmring-broadcast",
                "shmring-mpmc"
            ]
            .contains(&t),
            "{row}"
        );
        assert_eq!(row["ring_bytes"], 1 << 20);
        assert!(row["bytes_per_s"].as_f64().unwrap() > 0.0, "{row}");
        if t == "copy-floor" {
            assert_eq!(row["of_floor"].as_f64().unwrap(), 1.0, "{row}");
        }
    }
    let idle = &report["idle_fd"];
    assert_eq!(keys(idle), ["cpu_ns", "seconds", "wakeups"]);
    assert!(idle["cpu_ns"].as_u64().is_some() && idle["seconds"].as_f64().unwrap() > 0.0);
    assert!(idle["wakeups"].as_u64().is_some());
    let machine = &report["machine"];
    assert_eq!(keys(machine), ["cores", "cpu", "kernel"]);
    let cpu = machine["cpu"].as_str().unwrap();
    assert!(!cpu.is_empty() && !machine["kernel"].as_str().unwrap().is_empty());
    assert!(machine["cores"].as_u64().unwrap() >= 1);

    let pingpong = report["pingpong"].as_array().unwrap();
    assert_eq!(
        pingpong.len(),
        2 * transports.len(),
        "every transport, both payloads"
    );
    for payload in [8, 64] {
        for t in transports {
            let row = pingpong
                .iter()
                .find(|r| r["transport"] == t && r["payload"] == payload)
                .unwrap_or_else(|| panic!("no ping-pong row for {t} at {payload} B"));
            assert_eq!(keys(row), ["payload", "rtt_ns", "samples", "transport"]);
            assert_eq!(row["samples"], 80, "{t}: 2 rounds of 40");
            let rtt = &row["rtt_ns"];
            assert_eq!(keys(rtt), ["max", "p50", "p90", "p99", "p999"]);
            let q: Vec<u64> = ["p50", "p90", "p99", "p999", "max"]
                .iter()
                .map(|k| rtt[*k].as_u64().unwrap_or_else(|| panic!("{t} {k}: {rtt}")))
                .collect();
            assert!(q[0] > 0, "{t}: a round trip takes time");
            assert!(
                q.windows(2).all(|w| w[0] <= w[1]),
                "{t}: percentiles out of order {q:?}"
            );
        }
    }

    let throughput = report["throughput"].as_array().unwrap();
    let fanout = [
        "shmring-broadcast-fanout-block",
        "shmring-broadcast-fanout-drop-oldest",
        "shmring-broadcast-fanout-drop-oldest-received",
        "shmring-broadcast-drop-oldest-stopped",
    ];
    assert_eq!(
        throughput.len(),
        2 * (2 * 2 + fanout.len()),
        "2 payloads x (2 ring kinds x 2 APIs + the broadcast fan-out's rows)"
    );
    for row in throughput {
        assert_eq!(
            keys(row),
            ["api", "bytes_per_s", "frames_per_s", "payload", "transport"]
        );
        let t = row["transport"].as_str().unwrap();
        assert!(
            ["shmring-spsc", "shmring-mpmc"].contains(&t) || fanout.contains(&t),
            "{row}"
        );
        let api = row["api"].as_str().unwrap();
        assert!(["copy", "zero-copy"].contains(&api));
        assert!(!fanout.contains(&t) || api == "copy", "{row}");
        let fps = row["frames_per_s"].as_f64().unwrap();
        let bps = row["bytes_per_s"].as_f64().unwrap();
        let payload = row["payload"].as_f64().unwrap();
        // A subscriber that was lapped throughout may receive only what the ring held last.
        assert!(fps > 0.0 || t.ends_with("-received"), "{row}");
        assert!((bps - fps * payload).abs() <= 1e-6 * bps, "{row}");
    }
    for payload in [8, 64] {
        let fps = |t: &str| {
            throughput
                .iter()
                .find(|r| r["transport"] == t && r["payload"] == payload)
                .unwrap_or_else(|| panic!("no throughput row for {t} at {payload} B"))
                ["frames_per_s"]
                .as_f64()
                .unwrap()
        };
        // What a subscriber received is part of what the producer sent in the same cell.
        assert!(
            fps("shmring-broadcast-fanout-drop-oldest-received")
                <= fps("shmring-broadcast-fanout-drop-oldest"),
            "{payload} B: a subscriber received more than was sent"
        );
    }
    assert!(report["memcpy_bytes_per_s"].as_f64().unwrap() > 0.0);

    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("<polyline").count(),
        transports.len(),
        "one line per transport"
    );
    for t in transports {
        assert!(svg.contains(t), "the legend names {t}");
    }
    assert!(
        svg.contains("64-byte frames"),
        "the plot is of 64-byte frames"
    );
    let escaped = cpu
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert!(svg.contains(&escaped), "the title names the CPU");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_rejects_bad_options_with_a_remedy() {
    for (args, needle) in [
        (&["--cpus", "1,1"][..], "two different CPU numbers"),
        (&["--cpus", "0,1,1"][..], "two different CPU numbers"),
        (&["--payload", "0"][..], "frames of 1 byte to 16 MiB"),
        (&["--duration=0"][..], "positive number of seconds"),
        (&["--message-size", "0"][..], "messages of 1 byte to 1 GiB"),
        (
            &["messages", "--svg", "x.svg"][..],
            "--svg plots round trips",
        ),
    ] {
        let out = bench(args);
        assert!(!out.status.success(), "bench {args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "bench {args:?}: {err}");
    }
}

/// Runs `shmring bench` with `args`, sends it SIGTERM once `ready(pid)` holds, and checks that
/// it reports the interruption, exits with 128 + SIGTERM and leaves nothing behind. Each wait
/// kills the bench and fails after its deadline.
fn interrupt_bench(args: &[&str], what: &str, ready: impl Fn(u32) -> bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmring"))
        .arg("bench")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ready(pid) {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the bench never reached the point to interrupt: {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the bench ignored SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_cleaned_up(pid);
}

#[test]
fn bench_interrupted_removes_its_files_and_its_peer() {
    interrupt_bench(
        &[
            "pingpong",
            "--payload",
            "8",
            "--transports",
            "atomic-floor,shmring-spsc-spin",
            "--iterations",
            "100000000",
        ],
        "its peer started",
        |pid| {
            let ready = !peers_of(pid).is_empty()
                && Path::new(&format!("/dev/shm/shmring-bench-{pid}.ctl")).exists();
            if ready {
                std::thread::sleep(Duration::from_millis(300)); // into the round trips
            }
            ready
        },
    );
}

/// Whether one of the peers of bench `parent` is stopped (SIGSTOP: state `T`).
fn stopped_peer(parent: u32) -> bool {
    peers_of(parent).iter().any(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .rsplit(") ")
            .next()
            .is_some_and(|rest| rest.starts_with('T'))
    })
}

#[test]
fn bench_interrupted_with_a_subscriber_stopped_kills_it_too() {
    // The fan-out's `drop-oldest-stopped` cell keeps its second subscriber stopped for the
    // whole 5 s cell (after a `block` and a `drop-oldest` cell as long): interrupted then, the
    // bench must not leave it behind, stopped or not (`assert_cleaned_up` counts a stopped
    // peer as alive).
    interrupt_bench(
        &["fanout", "--payload", "8", "--duration", "5"],
        "a stopped subscriber",
        stopped_peer,
    );
}

/// The names of the memfds process `pid` holds whose names start with `prefix`, one per name.
fn memfds(pid: u32, prefix: &str) -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        if let Some(n) = link
            .to_str()
            .and_then(|l| l.strip_prefix("/memfd:"))
            .and_then(|l| l.strip_suffix(" (deleted)"))
            .filter(|n| n.starts_with(prefix))
        {
            names.insert(n.to_string());
        }
    }
    names.into_iter().collect()
}

/// Issue 12: the documented multi-user setup (`shmringd --socket DIR/md.sock --socket-mode
/// 666`) in a directory other users cannot search admitted nobody else, and their error
/// ("permission denied: connecting to the coordinator at ...") did not say why. Now shmringd
/// warns about the directory when it starts, and the refused client's error names it, with
/// what to do; once the directory is searchable, the other user is served.
#[test]
fn a_socket_other_users_cannot_reach_is_explained_on_both_sides() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running the client as another user needs root (CI runs as root)");
        return;
    }
    let ns = format!("cliperm{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("shmring-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let sock = dir.join("md.sock");
    let log = dir.with_extension("log");
    let daemon = listening(
        Command::new(env!("CARGO_BIN_EXE_shmringd"))
            .args(["--namespace", &ns, "--socket-mode", "666", "--socket"])
            .arg(&sock)
            .stderr(std::fs::File::create(&log).unwrap()),
        &sock,
    );
    let warned = std::fs::read_to_string(&log).unwrap();
    assert!(
        warned.contains(&format!("the directory {}", dir.display())) && warned.contains("o+x"),
        "{warned}"
    );
    let as_nobody = || {
        Command::new(env!("CARGO_BIN_EXE_shmring"))
            .arg("--socket")
            .arg(&sock)
            .arg("list")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let refused = as_nobody();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains(&format!("the directory {}", dir.display())) && err.contains("mode 0700"),
        "{err}"
    );
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let served = as_nobody();
    assert!(
        served.status.success(),
        "{}",
        String::from_utf8_lossy(&served.stderr)
    );
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&log);
    for ext in ["lock", "channels"] {
        let _ = std::fs::remove_file(shmring::default_socket_path(&ns).with_extension(ext));
    }
}

/// Issue 12: `shmring bench | head -1` made the bench panic ("failed printing to stdout: Broken
/// pipe") once its reader was gone. Now it stops quietly with status 0, and cleans up as an
/// interrupted run does (no peer, control page, namespace files or directory left).
#[test]
fn bench_into_a_closed_pipe_stops_quietly_and_cleans_up() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmring"))
        .args([
            "bench",
            "pingpong",
            "--payload",
            "8",
            "--transports",
            "atomic-floor",
            "--iterations",
            "2000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("shmring bench:"), "{first}");
    // The reader goes away, as `head -1` does.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the bench outlived its reader");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    assert_cleaned_up(pid);
}

//! The C ABI as C, C++ and Python programs use it: the examples and the status test compile
//! without a warning (C11, C++17, `-Wall -Wextra -Wpedantic -Werror`) and run, also under
//! AddressSanitizer and UndefinedBehaviorSanitizer; checksummed frames cross between C, Rust
//! and Python over SPSC and MPMC channels; the broadcast examples run in C, C++ and Python, and
//! Python creates broadcast channels as asked; the Python package installs into a virtual
//! environment carrying the library, and runs from it; `ffi/install.sh` installs a library that
//! `pkg-config` and CMake find, stripped and with its SONAME, that also links fully
//! statically. The programs link `libshmring.so` from this build's `deps` directory (cargo
//! builds it because this crate dev-depends on shmring-ffi).

use shmring::{ChannelConfig, Client, Kind, Overflow};
use shmring_tests::{Build, Watchdog, compile, lib_dir, root, serial};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A scratch directory of this test.
fn scratch(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "shmring-cabi-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs a program to completion under the watchdog; returns its output. Its runtime directory
/// (`XDG_RUNTIME_DIR`) is a scratch one, removed after: a coordinator the program starts keeps
/// its namespace's lock and record of channels there, and never removes them.
fn run(dog: &Watchdog, cmd: &mut Command) -> Output {
    let runtime = scratch("runtime");
    let out = dog.spawn(cmd.env("XDG_RUNTIME_DIR", &runtime)).wait();
    let _ = std::fs::remove_dir_all(&runtime);
    Output {
        status: out.status,
        stdout: out.stdout.into_bytes(),
        stderr: out.stderr.into_bytes(),
    }
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The `key=value` word of a summary line.
fn word<'a>(text: &'a str, key: &str) -> &'a str {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {text:?}"))
}

// The pattern of examples/c/frames.h (and frames.py), for the Rust ends of the exchanges.
const FRAME_MAX: u32 = 256;
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn frame(i: u64) -> Vec<u8> {
    let len = 8 + (i * 37 % 249) as usize;
    let mut f = i.to_le_bytes().to_vec();
    f.extend((8..len).map(|j| (i + j as u64) as u8));
    f
}

fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// This test's place (`shmring_tests::Place`), which also runs the Python examples.
struct Place(shmring_tests::Place);

impl std::ops::Deref for Place {
    type Target = shmring_tests::Place;
    fn deref(&self) -> &shmring_tests::Place {
        &self.0
    }
}

impl Place {
    fn new(tag: &str) -> Place {
        Place(shmring_tests::Place::new(&format!("cabi-{tag}-")))
    }

    fn python(&self, script: &str) -> Command {
        let mut c = self.command("python3");
        c.arg(root().join("examples/python").join(script))
            .env("PYTHONPATH", root().join("python"))
            .env("SHMRING_LIB", lib_dir().join("libshmring.so"));
        c
    }
}

fn create(client: &Client, name: &str, kind: Kind) {
    let cfg = ChannelConfig::new(kind);
    client
        .create(name, &cfg.capacity(64 << 10).max_frame_size(FRAME_MAX))
        .unwrap();
}

/// Compiles the self-checking C program `source` plain and under the sanitizers and runs each
/// build with a scratch directory of its own as its argument (and `env`), under `dog`;
/// checks that each build's output says `done`.
fn run_c_check(dog: &Watchdog, source: &str, env: &[(&str, String)], done: &str) {
    let tag = Path::new(source).file_stem().unwrap().to_str().unwrap();
    let dir = scratch(tag);
    for build in [Build::Plain, Build::Sanitized] {
        let exe = compile(source, &dir, build);
        let work = dir.join(match build {
            Build::Plain => "plain",
            Build::Sanitized => "san",
        });
        std::fs::create_dir_all(&work).unwrap();
        let out = run(
            dog,
            Command::new(&exe)
                .arg(&work)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .env("ASAN_OPTIONS", "detect_leaks=1")
                .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1"),
        );
        let text = ok(&out, tag);
        assert!(text.contains(done), "{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_status_is_reachable_from_c() {
    let _serial = serial();
    let dog = Watchdog::new("every_status_is_reachable_from_c", Duration::from_secs(120));
    run_c_check(&dog, "tests/c/statuses.c", &[], "all reached");
    dog.check();
}

/// C producer to a Rust consumer and Rust producer to a C consumer, over both kinds.
#[test]
fn frames_cross_between_c_and_rust() {
    let _serial = serial();
    let dog = Watchdog::new("frames_cross_between_c_and_rust", Duration::from_secs(120));
    let place = Place::new("c-rust");
    let producer = compile("examples/c/producer.c", &place.dir, Build::Plain);
    let consumer = compile("examples/c/consumer.c", &place.dir, Build::Plain);
    let client = place.client();
    let count = 20_000u64;
    for kind in [Kind::Spsc, Kind::Mpmc] {
        // C produces, Rust consumes.
        let name = format!("c-to-rust-{kind}");
        create(&client, &name, kind);
        let mut rx = client.consumer(&name).unwrap();
        let mut p = place.command(&producer);
        p.args([&name, &count.to_string(), &kind.to_string()]);
        let sender = dog.spawn(&mut p);
        let mut sum = FNV_START;
        for i in 0.. {
            let f = match rx.read_timeout(Duration::from_secs(30)) {
                Ok(f) => f,
                Err(shmring::Error::Closed(_)) => {
                    assert_eq!(i, count, "C finished the stream after every frame");
                    break;
                }
                Err(e) => panic!("frame {i} from C: {e}"),
            };
            assert_eq!(&*f, &frame(i)[..], "frame {i} from C");
            sum = fnv(sum, &f);
        }
        let said = sender.success();
        assert_eq!(word(&said, "checksum"), format!("{sum:016x}"), "{said}");
        drop(rx);

        // Rust produces, C consumes.
        let name = format!("rust-to-c-{kind}");
        create(&client, &name, kind);
        let receiver = dog.spawn(place.command(&consumer).arg(&name));
        let mut tx = client.producer(&name).unwrap();
        let mut sum = FNV_START;
        for i in 0..count {
            let f = frame(i);
            sum = fnv(sum, &f);
            tx.send_timeout(&f, Duration::from_secs(30)).unwrap();
        }
        tx.finish().unwrap(); // the C consumer stops at SHMRING_CLOSED
        let said = receiver.success();
        assert_eq!(word(&said, "received"), count.to_string(), "{said}");
        assert_eq!(word(&said, "checksum"), format!("{sum:016x}"), "{said}");
    }
    dog.check();
}

/// C producer to a Python consumer, and a Python producer to a C consumer, over both kinds.
#[test]
fn frames_cross_between_c_and_python() {
    let _serial = serial();
    let dog = Watchdog::new(
        "frames_cross_between_c_and_python",
        Duration::from_secs(180),
    );
    let place = Place::new("c-python");
    let producer = compile("examples/c/producer.c", &place.dir, Build::Plain);
    let consumer = compile("examples/c/consumer.c", &place.dir, Build::Plain);
    let count = "3000";
    for kind in ["spsc", "mpmc"] {
        let name = format!("c-to-py-{kind}");
        let receiver = dog.spawn(place.python("consumer.py").arg(&name));
        let sent = ok(
            &run(&dog, place.command(&producer).args([&name, count, kind])),
            "C producer",
        );
        let got = receiver.success();
        assert_eq!(word(&got, "received"), count, "{got}");
        assert_eq!(
            word(&got, "checksum"),
            word(&sent, "checksum"),
            "{sent} / {got}"
        );

        let name = format!("py-to-c-{kind}");
        let receiver = dog.spawn(place.command(&consumer).arg(&name));
        let sent = ok(
            &run(&dog, place.python("producer.py").args([&name, count, kind])),
            "Python producer",
        );
        let got = receiver.success();
        assert_eq!(word(&got, "received"), count, "{got}");
        assert_eq!(
            word(&got, "checksum"),
            word(&sent, "checksum"),
            "{sent} / {got}"
        );
    }
    dog.check();
}

/// The asyncio example receives on its event loop, through `loop.add_reader` on the
/// consumer's descriptor, what a C producer and a Python producer send (SPSC and MPMC), every
/// frame checked, while a timer task shares the loop (its ticks are printed).
#[test]
fn the_python_asyncio_example_receives_beside_a_timer() {
    let _serial = serial();
    let dog = Watchdog::new("python asyncio example", Duration::from_secs(180));
    let place = Place::new("asyncio");
    let producer = compile("examples/c/producer.c", &place.dir, Build::Plain);
    for (kind, from_c) in [("spsc", true), ("mpmc", false)] {
        let name = format!("asyncio-{kind}");
        // No recheck for a minute: only a working wake-up lets the loop see the frames.
        let receiver = dog.spawn(
            place
                .python("asyncio_consumer.py")
                .arg(&name)
                .env("SHMRING_FD_RECHECK_MS", "60000"),
        );
        // Slow enough that the consumer goes idle between frames and waits in the loop.
        let sent = if from_c {
            ok(
                &run(&dog, place.command(&producer).args([&name, "20000", kind])),
                "C producer",
            )
        } else {
            ok(
                &run(
                    &dog,
                    place.python("producer.py").args([&name, "20000", kind]),
                ),
                "Python producer",
            )
        };
        let got = receiver.success();
        assert_eq!(word(&got, "received"), "20000", "{got}");
        assert_eq!(
            word(&got, "checksum"),
            word(&sent, "checksum"),
            "{sent} / {got}"
        );
        println!("{kind}: {}", got.trim());
    }
    dog.check();
}

/// The C examples under AddressSanitizer and UndefinedBehaviorSanitizer: a producer and a
/// consumer exchange frames through this test's coordinator.
#[test]
fn c_examples_run_clean_under_sanitizers() {
    let _serial = serial();
    let dog = Watchdog::new("c_examples_under_sanitizers", Duration::from_secs(180));
    let place = Place::new("san");
    let producer = compile("examples/c/producer.c", &place.dir, Build::Sanitized);
    let consumer = compile("examples/c/consumer.c", &place.dir, Build::Sanitized);
    for kind in ["spsc", "mpmc"] {
        let name = format!("san-{kind}");
        let receiver = dog.spawn(place.command(&consumer).arg(&name));
        let sent = ok(
            &run(&dog, place.command(&producer).args([&name, "5000", kind])),
            "sanitized producer",
        );
        let got = receiver.success();
        assert_eq!(word(&got, "checksum"), word(&sent, "checksum"));
    }
    dog.check();
}

/// The C ping-pong and the C++ example run and say what they measured and did.
#[test]
fn c_pingpong_and_cpp_example_run() {
    let _serial = serial();
    let dog = Watchdog::new("c_pingpong_and_cpp_example", Duration::from_secs(180));
    let dir = scratch("programs");
    let pingpong = compile("examples/c/pingpong.c", &dir, Build::Plain);
    let text = ok(
        &run(&dog, Command::new(&pingpong).args(["20000", "64"])),
        "pingpong",
    );
    let p50: u64 = word(&text, "p50").parse().unwrap();
    assert!(p50 > 0, "{text}");
    let pingpong_san = compile("examples/c/pingpong.c", &dir, Build::Sanitized);
    ok(
        &run(&dog, Command::new(&pingpong_san).args(["2000", "8"])),
        "sanitized pingpong",
    );
    for build in [Build::Plain, Build::Sanitized] {
        let example = compile("examples/cpp/example.cpp", &dir, build);
        let text = ok(&run(&dog, &mut Command::new(&example)), "C++ example");
        assert!(text.trim_end().ends_with("ok"), "{text}");
    }
    dog.check();
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a broadcast example printed for `frames` frames: the producer's line, then each of its
/// two subscribers' received and missed (under block, every frame and none missed; under
/// drop-oldest, received + missed = frames), and "ok" last.
fn check_fan_out(text: &str, frames: u64, policy: &str) {
    let producer = format!("producer: published={frames} overflow={policy}");
    assert!(text.lines().any(|l| l == producer), "{text}");
    for k in 1..=2 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("subscriber {k}: ")))
            .unwrap_or_else(|| panic!("no line of subscriber {k} in {text:?}"));
        let received: u64 = word(line, "received")
            .parse()
            .unwrap_or_else(|e| panic!("{e}: {text:?}"));
        let missed: u64 = word(line, "missed")
            .parse()
            .unwrap_or_else(|e| panic!("{e}: {text:?}"));
        match policy {
            "block" => assert_eq!((received, missed), (frames, 0), "{text}"),
            _ => assert_eq!(received + missed, frames, "{text}"),
        }
    }
    assert_eq!(text.lines().last(), Some("ok"), "{text}");
}

/// The broadcast examples (a producer and two subscribers) in C, C++ and Python run under
/// both overflow policies; the C and C++ ones also under the sanitizers.
#[test]
fn broadcast_examples_run_in_c_cpp_and_python() {
    let _serial = serial();
    let dog = Watchdog::new("broadcast_examples", Duration::from_secs(300));
    let dir = scratch("broadcast");
    for build in [Build::Plain, Build::Sanitized] {
        let frames = match build {
            Build::Plain => 100_000u64,
            Build::Sanitized => 20_000,
        };
        for source in ["examples/c/broadcast.c", "examples/cpp/broadcast.cpp"] {
            let exe = compile(source, &dir, build);
            for policy in ["block", "drop-oldest"] {
                let out = run(
                    &dog,
                    Command::new(&exe)
                        .args([&frames.to_string(), policy])
                        .env("ASAN_OPTIONS", "detect_leaks=1")
                        .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1"),
                );
                check_fan_out(&ok(&out, source), frames, policy);
            }
        }
    }
    for policy in ["block", "drop-oldest"] {
        let out = run(
            &dog,
            Command::new("python3")
                .arg(root().join("examples/python/broadcast.py"))
                .args(["3000", policy])
                .env("PYTHONPATH", root().join("python"))
                .env("SHMRING_LIB", lib_dir().join("libshmring.so")),
        );
        check_fan_out(&ok(&out, "broadcast.py"), 3000, policy);
    }
    dog.check();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Python module's `shmring_channel_config` matches the header's, field for field: every
/// setting a Python program gives a broadcast channel is the one the coordinator creates.
#[test]
fn python_creates_broadcast_channels_as_asked() {
    let _serial = serial();
    let dog = Watchdog::new("python_broadcast_config", Duration::from_secs(120));
    let place = Place::new("py-config");
    let script = r#"
import shmring
with shmring.Client() as client:
    client.create("cfg", kind="broadcast", capacity=64 * 256, max_frame_size=256, mode=0o640,
                  max_consumers=3, overflow="drop-oldest", history=7)
    client.create("plain", kind="broadcast")
    # End of stream from Python: producers counted, the finish seen, iteration ending there.
    with client.consumer("cfg") as rx:
        assert rx.producers() == 0, rx.producers()
        with client.producer("cfg") as tx:
            assert rx.producers() == 1, rx.producers()
            tx.send(b"one")
            tx.send(b"two")
            tx.finish()
        assert [bytes(f) for f in rx] == [b"one", b"two"]
        assert rx.producers() == 0, rx.producers()
    # Messages longer than a frame: recv grows its buffer to them; stats report the limit.
    client.create("big", kind="spsc", capacity=64 << 10, max_frame_size=1024,
                  max_message_size=1 << 20)
    assert client.stats("big")["max_message_size"] == 1 << 20
    with client.consumer("big") as rx, client.producer("big") as tx:
        assert (tx.max_message_size, rx.max_message_size) == (1 << 20, 1 << 20)
        small, big = b"x" * 10, bytes(range(256)) * 160
        tx.send(big, timeout=5)
        tx.send(small)
        assert rx.recv(timeout=5) == big
        assert rx.recv(timeout=5) == small
        tx.send(big, timeout=5)
        with rx.read(timeout=5) as view:
            assert bytes(view) == big
        assert rx.missed() == 0
        # A live resize: the frame sent before comes first, the producer moves on its next
        # send, the consumer follows once it drained the old ring; a second resize while the
        # first is under way is refused as busy.
        tx.send(small)
        client.resize("big", 1 << 20)
        try:
            client.resize("big", 256 << 10)
            raise AssertionError("a second resize under way was accepted")
        except shmring.Error as e:
            assert e.status == "SHMRING_BUSY", e
        tx.send(big, timeout=5)
        assert rx.recv(timeout=5) == small
        assert rx.recv(timeout=5) == big
        st = client.stats("big")
        assert st["capacity"] == 1 << 20 and st["resizes"] == 1, st
print("created")
"#;
    let out = run(
        &dog,
        place
            .command("python3")
            .arg("-c")
            .arg(script)
            .env("PYTHONPATH", root().join("python"))
            .env("SHMRING_LIB", lib_dir().join("libshmring.so")),
    );
    assert_eq!(ok(&out, "python").trim(), "created");
    let client = place.client();
    let info = client.stats("cfg").unwrap().info;
    assert_eq!(
        (info.kind, info.overflow, info.history, info.slots),
        (Kind::Broadcast, Overflow::DropOldest, 7, 64),
        "{info:?}"
    );
    assert_eq!(
        (
            info.max_frame_size,
            info.mode,
            info.max_producers,
            info.max_consumers
        ),
        (256, 0o640, 1, 3),
        "{info:?}"
    );
    // The defaults are the library's, untouched by the module.
    let info = client.stats("plain").unwrap().info;
    let want = ChannelConfig::broadcast();
    assert_eq!(
        (
            info.overflow,
            info.history,
            info.max_frame_size,
            info.max_consumers
        ),
        (
            want.overflow,
            want.history,
            want.max_frame_size,
            want.max_consumers
        ),
        "{info:?}"
    );
    dog.check();
}

/// Copies the Python package's sources (`python/`, without build output) into `to`.
fn copy_package(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "build" || name == "__pycache__" || name.ends_with(".egg-info") {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_package(&entry.path(), &to.join(&*name));
        } else {
            std::fs::copy(entry.path(), to.join(&*name)).unwrap();
        }
    }
}

/// The Python package installs with pip into a fresh virtual environment, bundling this
/// build's `libshmring.so`, and a Python producer and consumer run with that environment's
/// Python from a directory outside the repository, with no `PYTHONPATH`, `SHMRING_LIB` or
/// `LD_LIBRARY_PATH`: they import the installed package, which loads the library it carries.
/// Needs Python's `venv` (Debian: python3-venv) and PyPI, from which pip fetches setuptools.
#[test]
fn the_python_package_installs_and_runs_with_the_library_it_carries() {
    let _serial = serial();
    let dog = Watchdog::new("python_package", Duration::from_secs(300));
    let place = Place::new("py-package");
    let (venv, source, app) = (
        place.dir.join("venv"),
        place.dir.join("source"),
        place.dir.join("app"),
    );
    copy_package(&root().join("python"), &source);
    let made = run(
        &dog,
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
    );
    assert!(
        made.status.success(),
        "python3 -m venv failed: install python3-venv (apt-get install python3-venv; .ci/run \
         does):\n{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let python = venv.join("bin/python3");
    ok(
        &run(
            &dog,
            Command::new(&python)
                .args(["-m", "pip", "install", "--disable-pip-version-check"])
                .arg(&source)
                .env("SHMRING_LIB", lib_dir().join("libshmring.so")),
        ),
        "pip install python/ (it fetches setuptools from PyPI)",
    );
    std::fs::create_dir_all(&app).unwrap();
    for script in ["producer.py", "consumer.py", "frames.py"] {
        std::fs::copy(
            root().join("examples/python").join(script),
            app.join(script),
        )
        .unwrap();
    }
    // Away from the checkout and from everything that could lead Python or the loader to it.
    fn outside<'c>(c: &'c mut Command, app: &Path) -> &'c mut Command {
        c.current_dir(app)
            .env_remove("PYTHONPATH")
            .env_remove("SHMRING_LIB")
            .env_remove("LD_LIBRARY_PATH")
    }

    let check = r#"
import importlib.metadata, pathlib, shmring
package = pathlib.Path(shmring.__file__).parent
print(f"package={package} library={shmring.LIBRARY}")
print(f"version={importlib.metadata.version('shmring')}")
print(importlib.metadata.distribution("shmring").read_text("WHEEL"))
"#;
    let text = ok(
        &run(
            &dog,
            outside(place.command(&python).args(["-c", check]), &app),
        ),
        "import shmring",
    );
    let package = Path::new(word(&text, "package"));
    assert!(package.starts_with(&venv), "{text}");
    assert_eq!(
        Path::new(word(&text, "library")),
        package.join("libshmring.so"),
        "{text}"
    );
    assert_eq!(word(&text, "version"), env!("CARGO_PKG_VERSION"), "{text}");
    assert!(text.contains("Tag: py3-none-linux_"), "{text}");

    let name = "installed";
    let receiver = dog.spawn(outside(
        place.command(&python).args(["consumer.py", name]),
        &app,
    ));
    let sent = ok(
        &run(
            &dog,
            outside(
                place.command(&python).args(["producer.py", name, "2000"]),
                &app,
            ),
        ),
        "installed Python producer",
    );
    let got = receiver.success();
    assert_eq!(word(&got, "received"), "2000", "{got}");
    assert_eq!(
        word(&got, "checksum"),
        word(&sent, "checksum"),
        "{sent} / {got}"
    );
    dog.check();
}

/// `ffi/install.sh` installs the library, headers and a pkg-config file; a program built with
/// `pkg-config --cflags --libs shmring` runs.
#[test]
fn installed_library_is_found_by_pkg_config() {
    let _serial = serial();
    let dog = Watchdog::new("pkg_config", Duration::from_secs(120));
    let place = Place::new("pkgconfig");
    let prefix = place.dir.join("prefix");
    ok(
        &run(
            &dog,
            Command::new("bash")
                .arg(root().join("ffi/install.sh"))
                .arg("--no-build")
                .arg("--lib-dir")
                .arg(lib_dir())
                .arg(&prefix),
        ),
        "ffi/install.sh",
    );
    let pc = prefix.join("lib/pkgconfig");
    let flags = ok(
        &run(
            &dog,
            Command::new("pkg-config")
                .args(["--cflags", "--libs", "shmring"])
                .env("PKG_CONFIG_PATH", &pc),
        ),
        "pkg-config",
    );
    let exe = place.dir.join("producer");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cc -std=c11 -Wall -Wextra -Wpedantic -Werror {} -o {} {}",
            root().join("examples/c/producer.c").display(),
            exe.display(),
            flags.trim()
        ))
        .output()
        .unwrap();
    ok(&out, "cc $(pkg-config --cflags --libs shmring)");
    let sent = ok(
        &run(&dog, place.command(&exe).args(["pc", "10"])),
        "installed producer",
    );
    assert_eq!(word(&sent, "sent"), "10");
    let stats = place.client().stats("pc").unwrap();
    assert_eq!(stats.frames_in, 10, "ten frames, and no end frame");
    dog.check();
}

/// Installs this build's library with `ffi/install.sh` into `prefix`.
fn install(dog: &Watchdog, prefix: &Path) {
    ok(
        &run(
            dog,
            Command::new("bash")
                .arg(root().join("ffi/install.sh"))
                .arg("--no-build")
                .arg("--lib-dir")
                .arg(lib_dir())
                .arg(prefix),
        ),
        "ffi/install.sh",
    );
}

/// Runs a tool on files; panics, saying how to get the tool, if it is missing.
fn tool(dog: &Watchdog, program: &str, package: &str, args: &[&OsStr]) -> String {
    if Command::new(program).arg("--version").output().is_err() {
        panic!("{program} is missing: install {package} (apt-get install {package}; .ci/run does)");
    }
    ok(&run(dog, Command::new(program).args(args)), program)
}

/// `readelf -d`'s lines about `file`'s needed libraries and SONAME.
fn dynamic(dog: &Watchdog, file: &Path) -> String {
    tool(dog, "readelf", "binutils", &["-d".as_ref(), file.as_ref()])
}

/// The example program of the CMake package, also built statically in its own test.
const ROUNDTRIP: &str = "examples/cmake/roundtrip.c";

/// The installed library is `libshmring.so.VERSION` with the SONAME `libshmring.so.0`, linked
/// to by `libshmring.so.0` and `libshmring.so`; a program linked against it needs
/// `libshmring.so.0`. It exports the `shmring_` functions and nothing else, and neither it nor
/// `libshmring.a` carries debug information.
#[test]
fn installed_library_has_a_soname_and_only_shmring_symbols_and_is_stripped() {
    let _serial = serial();
    let dog = Watchdog::new("installed_library", Duration::from_secs(120));
    let place = Place::new("soname");
    let prefix = place.dir.join("prefix");
    install(&dog, &prefix);
    let lib = prefix.join("lib");
    let real = format!("libshmring.so.{}", env!("CARGO_PKG_VERSION"));
    let soname = format!("libshmring.so.{}", env!("CARGO_PKG_VERSION_MAJOR"));
    assert_eq!(soname, "libshmring.so.0");
    let link =
        |name: &str| std::fs::read_link(lib.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(link(&soname), Path::new(&real));
    assert_eq!(link("libshmring.so"), Path::new(&soname));
    let d = dynamic(&dog, &lib.join(&real));
    assert!(d.contains(&format!("Library soname: [{soname}]")), "{d}");

    let exported = tool(
        &dog,
        "nm",
        "binutils",
        &[
            "-D".as_ref(),
            "--defined-only".as_ref(),
            lib.join(&real).as_ref(),
        ],
    );
    let names: Vec<&str> = exported
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert!(names.contains(&"shmring_send"), "{exported}");
    let others: Vec<&&str> = names
        .iter()
        .filter(|n| !n.starts_with("shmring_"))
        .collect();
    assert!(others.is_empty(), "exported besides shmring_*: {others:?}");

    for file in [real.as_str(), "libshmring.a"] {
        let sections = tool(
            &dog,
            "readelf",
            "binutils",
            &["-S".as_ref(), lib.join(file).as_ref()],
        );
        assert!(
            !sections.contains(".debug_"),
            "{file} has debug information"
        );
    }
    let symtab = tool(
        &dog,
        "readelf",
        "binutils",
        &["-S".as_ref(), lib.join(&real).as_ref()],
    );
    assert!(
        !symtab.contains(".symtab"),
        "{real} has a symbol table besides .dynsym"
    );

    let exe = place.dir.join("roundtrip");
    let out = run(
        &dog,
        Command::new("cc")
            .args([
                "-std=c11",
                "-Wall",
                "-Wextra",
                "-Wpedantic",
                "-Werror",
                "-I",
            ])
            .arg(prefix.join("include"))
            .arg(root().join(ROUNDTRIP))
            .arg("-L")
            .arg(&lib)
            .arg("-lshmring")
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-o")
            .arg(&exe),
    );
    ok(&out, "cc roundtrip.c -lshmring");
    let d = dynamic(&dog, &exe);
    assert!(d.contains(&format!("Shared library: [{soname}]")), "{d}");
    let text = ok(
        &run(&dog, Command::new(&exe).arg(&place.socket)),
        "roundtrip",
    );
    assert!(
        text.contains("received \"hello through shmring\""),
        "{text}"
    );
    assert!(
        place.client().list().unwrap().is_empty(),
        "roundtrip left its channel"
    );
    dog.check();
}

/// `cc -static app.c $(pkg-config --static --cflags --libs shmring)` builds a program with no
/// dynamic section, which runs (a coordinator inside, no daemon). The `.pc` file used to name
/// `-lgcc_s`, which has no static library: "cannot find -lgcc_s".
#[test]
fn a_fully_static_program_builds_with_pkg_config_and_runs() {
    let _serial = serial();
    let dog = Watchdog::new("static", Duration::from_secs(120));
    let dir = scratch("static");
    let prefix = dir.join("prefix");
    install(&dog, &prefix);
    let exe = dir.join("roundtrip");
    let out = run(
        &dog,
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cc -std=c11 -Wall -Wextra -Wpedantic -Werror -static {} -o {} \
                 $(pkg-config --static --cflags --libs shmring)",
                root().join(ROUNDTRIP).display(),
                exe.display()
            ))
            .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")),
    );
    ok(
        &out,
        "cc -static $(pkg-config --static --cflags --libs shmring)",
    );
    let d = dynamic(&dog, &exe);
    assert!(d.contains("no dynamic section"), "not static: {d}");
    let text = ok(
        &run(&dog, Command::new(&exe).arg(dir.join("s.sock"))),
        "static roundtrip",
    );
    assert!(
        text.contains("received \"hello through shmring\""),
        "{text}"
    );
    dog.check();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `examples/cmake` finds the installed library with `find_package(shmring 0.1)`, builds its
/// program against `shmring::shmring` (needing `libshmring.so.0`) and `shmring::shmring_static`
/// (needing no libshmring), warning-free, and both run; a newer major version is not found.
#[test]
fn cmake_finds_the_installed_library() {
    let _serial = serial();
    let dog = Watchdog::new("cmake", Duration::from_secs(300));
    let place = Place::new("cmake");
    let prefix = place.dir.join("prefix");
    install(&dog, &prefix);
    let build = place.dir.join("build");
    let prefix_path = format!("-DCMAKE_PREFIX_PATH={}", prefix.display());
    tool(
        &dog,
        "cmake",
        "cmake",
        &[
            "-S".as_ref(),
            root().join("examples/cmake").as_ref(),
            "-B".as_ref(),
            build.as_ref(),
            prefix_path.as_ref(),
            "-DCMAKE_C_FLAGS=-Wall -Wextra -Wpedantic -Werror".as_ref(),
        ],
    );
    tool(
        &dog,
        "cmake",
        "cmake",
        &["--build".as_ref(), build.as_ref()],
    );
    let soname = format!("libshmring.so.{}", env!("CARGO_PKG_VERSION_MAJOR"));
    for (exe, shared) in [("roundtrip", true), ("roundtrip-static", false)] {
        let d = dynamic(&dog, &build.join(exe));
        assert_eq!(d.contains(&format!("[{soname}]")), shared, "{exe}: {d}");
        let text = ok(
            &run(&dog, Command::new(build.join(exe)).arg(&place.socket)),
            exe,
        );
        assert!(
            text.contains("received \"hello through shmring\""),
            "{exe}: {text}"
        );
    }
    assert!(
        place.client().list().unwrap().is_empty(),
        "roundtrip left its channel"
    );

    let newer = place.dir.join("newer");
    std::fs::create_dir_all(&newer).unwrap();
    let major: u32 = env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap();
    std::fs::write(
        newer.join("CMakeLists.txt"),
        format!(
            "cmake_minimum_required(VERSION 3.16)\nproject(newer LANGUAGES C)\n\
             find_package(shmring {}.0 REQUIRED)\n",
            major + 1
        ),
    )
    .unwrap();
    let out = run(
        &dog,
        Command::new("cmake")
            .arg("-S")
            .arg(&newer)
            .arg("-B")
            .arg(newer.join("build"))
            .arg(&prefix_path),
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("compatible with requested version"),
        "{said}"
    );
    dog.check();
}

/// The programs the README builds in the repository's root (`cc ... -o hello`) are ignored by
/// git.
#[test]
fn programs_the_readme_builds_are_ignored_by_git() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let ignore = std::fs::read_to_string(root().join(".gitignore")).unwrap();
    let ignored: Vec<&str> = ignore.lines().map(str::trim).collect();
    let mut built = Vec::new();
    let mut in_code = false;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        for w in words.windows(2) {
            if in_code && w[0] == "-o" && !w[1].contains('/') {
                built.push(w[1].to_string());
            }
        }
    }
    assert!(built.iter().any(|b| b == "hello"), "found {built:?}");
    let missing: Vec<&String> = built
        .iter()
        .filter(|b| !ignored.contains(&format!("/{b}").as_str()))
        .collect();
    assert!(missing.is_empty(), "not in .gitignore: {missing:?}");
}

/// The README's "Using shmring from C" walkthrough, from the README's own text: its two
/// programs (`hello.c`, `hello_read.c`) compile warning-free, and the three lines that build and
/// run them run as written (in a scratch directory whose `include` and `target/release` are
/// this checkout's headers and this build's library), against a coordinator found through
/// `SHMRING_SOCKET`. The consumer prints the ten frames, ends when the producer finishes, and
/// deletes the channel. Found trying the README as a new user: the walkthrough paired
/// `hello.c` with `examples/c/consumer.c`, which refused its frames ("frame 0 (8 bytes) is not
/// what was sent"), waited for an end frame hello.c never sent, and left the channel behind.
#[test]
fn readme_c_example_works() {
    let _serial = serial();
    let dog = Watchdog::new("readme_c_example", Duration::from_secs(120));
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = &readme[readme.find("## Using shmring from C").expect("the section")..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let blocks = |lang: &str| -> Vec<String> {
        let fence = format!("```{lang}\n");
        let mut out = Vec::new();
        let mut rest = section;
        while let Some(i) = rest.find(&fence) {
            let body = &rest[i + fence.len()..];
            let end = body.find("```").expect("a closed block");
            out.push(body[..end].to_string());
            rest = &body[end + 3..];
        }
        out
    };
    let place = Place::new("readme");
    let c = blocks("c");
    assert_eq!(c.len(), 2, "hello.c and hello_read.c");
    for (name, code) in ["hello.c", "hello_read.c"].iter().zip(&c) {
        let src = place.dir.join(name);
        std::fs::write(&src, code).unwrap();
        // Warning-free under the strictest flags the tests use.
        compile(src.to_str().unwrap(), &place.dir, Build::Plain);
    }
    let run = blocks("sh")
        .into_iter()
        .find(|b| b.contains("./hello_read & ./hello"))
        .expect("the block that builds and runs them");
    std::os::unix::fs::symlink(root().join("include"), place.dir.join("include")).unwrap();
    std::fs::create_dir_all(place.dir.join("target")).unwrap();
    std::os::unix::fs::symlink(lib_dir(), place.dir.join("target/release")).unwrap();
    let out = dog
        .spawn(
            place
                .command("bash")
                .args(["-euc", &format!("{run}wait $!")])
                .current_dir(&place.dir),
        )
        .wait();
    assert!(
        out.status.success(),
        "the README's lines failed:\n{run}\n--- stdout\n{}\n--- stderr\n{}",
        out.stdout,
        out.stderr
    );
    let want: String = (0..10).map(|i| format!("hello #{i}\n")).collect();
    assert_eq!(out.stdout, want, "{}", out.stderr);
    // hello_read deleted the channel: the next walkthrough starts afresh.
    assert!(matches!(
        place.client().stats("hello"),
        Err(shmring::Error::NotFound(_))
    ));
    dog.check();
}

/// The README's "Using shmring from Python" walkthrough, from the README's own text: in a
/// scratch directory that holds a copy of `python/`, this checkout's `examples/` and this
/// build's library as `target/release`, the block's lines run as written (but the first,
/// `cargo build`, which this build stands for): a virtual environment, `pip install ./python`,
/// and the consumer and producer pair, against a coordinator found through `SHMRING_SOCKET`.
/// The consumer receives the thousand frames, the checksums agree, and it deletes the channel
/// (found trying the README: the Python pair left its channel behind, and the next walkthrough
/// met its frames).
#[test]
fn readme_python_walkthrough_works() {
    let _serial = serial();
    let dog = Watchdog::new("readme_python_walkthrough", Duration::from_secs(300));
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .skip(1)
        .map(|b| &b[..b.find("```").expect("a closed block")])
        .find(|b| b.contains("pip install ./python"))
        .expect("the README's Python block");
    let lines: String = block
        .lines()
        .filter(|l| !l.starts_with("cargo build"))
        .map(|l| format!("{l}\n"))
        .collect();
    let place = Place::new("readme-py");
    copy_package(&root().join("python"), &place.dir.join("python"));
    std::os::unix::fs::symlink(root().join("examples"), place.dir.join("examples")).unwrap();
    std::fs::create_dir_all(place.dir.join("target")).unwrap();
    std::os::unix::fs::symlink(lib_dir(), place.dir.join("target/release")).unwrap();
    let out = dog
        .spawn(
            place
                .command("bash")
                .args(["-euc", &format!("{lines}wait $!")])
                .current_dir(&place.dir)
                .env_remove("SHMRING_LIB")
                .env_remove("PYTHONPATH"),
        )
        .wait();
    assert!(
        out.status.success(),
        "the README's lines failed:\n{lines}\n--- stdout\n{}\n--- stderr\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("sent=1000") && out.stdout.contains("received=1000"),
        "{}",
        out.stdout
    );
    let sum = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.contains(key))
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("checksum="))
            })
            .map(str::to_string)
    };
    assert_eq!(
        sum(&out.stdout, "sent="),
        sum(&out.stdout, "received="),
        "{}",
        out.stdout
    );
    assert!(matches!(
        place.client().stats("hello"),
        Err(shmring::Error::NotFound(_))
    ));

    // "Event loops and async": the asyncio line, in the venv the walkthrough made.
    let asyncio = readme
        .split("```sh\n")
        .skip(1)
        .map(|b| &b[..b.find("```").expect("a closed block")])
        .find(|b| b.contains("asyncio_consumer.py"))
        .expect("the README's asyncio line");
    let out = dog
        .spawn(
            place
                .command("bash")
                .args(["-euc", &format!("{asyncio}wait $!")])
                .current_dir(&place.dir)
                .env_remove("SHMRING_LIB")
                .env_remove("PYTHONPATH"),
        )
        .wait();
    assert!(
        out.status.success() && out.stdout.contains("received=1000"),
        "the README's asyncio line failed:\n{asyncio}\n--- stdout\n{}\n--- stderr\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(
        sum(&out.stdout, "sent="),
        sum(&out.stdout, "received="),
        "{}",
        out.stdout
    );
    dog.check();
}

/// Defect 18 of issue 10: a forked child that closes and stops inherited handles (a C program
/// does it by hand; a finalizer at a child's exit does it unasked) leaves the parent's
/// coordinator, channels, entries, claim and held frame as they were. Before, the child
/// panicked inside the library and the parent's clients got `SHMRING_UNAVAILABLE`.
#[test]
fn a_forked_child_that_stops_inherited_handles_leaves_the_parent_alone() {
    let _serial = serial();
    let dog = Watchdog::new("fork_stop", Duration::from_secs(120));
    let namespace = ("SHMRING_NAMESPACE", format!("cfork{}", std::process::id()));
    run_c_check(&dog, "tests/c/fork_stop.c", &[namespace], "parent unharmed");
    let dir = scratch("fork-py");
    // Python: the inherited objects' finalizers run in the child (as in a multiprocessing
    // worker that is torn down), then the parent carries on.
    let script = r#"
import os, sys
import shmring
sock = sys.argv[1]
coord = shmring.Coordinator(sock)
client = shmring.Client(sock)
client.create("py", kind="spsc", capacity=4096, max_frame_size=64)
tx, rx = client.producer("py"), client.consumer("py")
tx.send(b"before", timeout=1)
pid = os.fork()
if pid == 0:
    del tx, rx, client, coord  # their __del__ close and stop them
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
assert os.path.exists(sock), "the parent's socket was removed"
assert rx.recv(timeout=1) == b"before"
tx.send(b"after", timeout=1)
assert rx.recv(timeout=1) == b"after"
fresh = shmring.Client(sock)
assert fresh.stats("py")["producers"] == 1
fresh.close()
tx.close(); rx.close(); client.close(); coord.close()
print("parent unharmed")
"#;
    let sock = dir.join("py.sock");
    let out = run(
        &dog,
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&sock)
            .env("PYTHONPATH", root().join("python"))
            .env("SHMRING_LIB", lib_dir().join("libshmring.so"))
            .env("SHMRING_NAMESPACE", format!("pyfork{}", std::process::id())),
    );
    let text = ok(&out, "python fork");
    assert!(text.contains("parent unharmed"), "{text}");
    dog.check();
    let _ = std::fs::remove_dir_all(&dir);
}

/// End of stream from C (`tests/c/finish.c`): `shmring_producer_finish` on every kind of
/// channel (consumers drain, then `SHMRING_CLOSED`; one asleep in a receive is woken), a
/// producer opened after it, several MPMC producers, and `shmring_consumer_producers`.
#[test]
fn producer_finish_and_the_producers_count_from_c() {
    let _serial = serial();
    let dog = Watchdog::new("finish_from_c", Duration::from_secs(120));
    run_c_check(&dog, "tests/c/finish.c", &[], "all checked");
    dog.check();
}

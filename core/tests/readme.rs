//! The README's command-line walkthroughs, run from the README's own text: each command line of
//! a fenced `sh` block is taken as written (comments dropped) and run with this build's
//! `shmringd` and `shmring` first on the `PATH`, in a runtime directory of the test's own
//! (`XDG_RUNTIME_DIR`), so that the README cannot drift from what the programs do. The only
//! substitution is `/run/shmring`, which becomes a scratch directory.

#![cfg(not(loom))]

mod common;
use common::watchdog;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap()
}

/// The fenced blocks of language `lang`, in order.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_start() == format!("```{lang}") => current = Some(String::new()),
            Some(_) if line.trim_start() == "```" => out.push(current.take().unwrap()),
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

/// The one `sh` block that contains `marker`.
fn block_with(marker: &str) -> String {
    let found: Vec<String> = blocks(&readme(), "sh")
        .into_iter()
        .filter(|b| b.contains(marker))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "README blocks containing {marker:?}: {found:?}"
    );
    found.into_iter().next().unwrap()
}

/// One command line of a block: environment assignments, the words, and whether it runs in
/// the background (`&`).
#[derive(Debug)]
struct Line {
    env: Vec<(String, String)>,
    words: Vec<String>,
    background: bool,
}

/// The command lines of `block`: words split on blanks (the README's commands quote nothing),
/// a word starting with `#` ending the line.
fn lines(block: &str, substitute: &dyn Fn(&str) -> String) -> Vec<Line> {
    let mut out = Vec::new();
    for raw in block.lines() {
        let mut words: Vec<String> = raw
            .split_whitespace()
            .take_while(|w| !w.starts_with('#'))
            .map(substitute)
            .collect();
        if words.is_empty() {
            continue;
        }
        let background = words.last().is_some_and(|w| w == "&");
        if background {
            words.pop();
        }
        let mut env = Vec::new();
        while let Some((k, v)) = words.first().and_then(|w| w.split_once('='))
            && k.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        {
            env.push((k.to_string(), v.to_string()));
            words.remove(0);
        }
        out.push(Line {
            env,
            words,
            background,
        });
    }
    out
}

/// Where this build's programs are.
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_shmring"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs the lines of a block in order. Background lines must be `shmringd`, whose socket
/// (the line's `--socket`, else the default one under `runtime`) must appear before the next
/// line runs; they are stopped with SIGTERM at the end. `as_other`: lines whose comment says
/// "any user" run as uid 65534 when this test runs as root.
fn run_block(block: &str, runtime: &Path, substitute: &dyn Fn(&str) -> String) -> Vec<String> {
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut daemons: Vec<Child> = Vec::new();
    let mut outputs = Vec::new();
    let raw_lines: Vec<&str> = block
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .collect();
    for (line, raw) in lines(block, substitute).into_iter().zip(raw_lines) {
        let mut cmd = Command::new(&line.words[0]);
        cmd.args(&line.words[1..])
            .env("PATH", &path)
            .env("XDG_RUNTIME_DIR", runtime)
            .env_remove("SHMRING_SOCKET")
            .envs(line.env.iter().map(|(k, v)| (k, v)));
        // SAFETY: geteuid has no preconditions.
        if raw.contains("any user") && unsafe { libc::geteuid() } == 0 {
            cmd.uid(65534).gid(65534);
        }
        if line.background {
            assert_eq!(
                line.words[0], "shmringd",
                "only shmringd runs in the background"
            );
            let socket = line
                .words
                .iter()
                .position(|w| w == "--socket")
                .map(|i| PathBuf::from(&line.words[i + 1]))
                .unwrap_or_else(|| runtime.join("shmring/default.sock"));
            let log = runtime.join(format!("shmringd-{}.log", daemons.len()));
            let mut child = cmd
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::os::unix::net::UnixStream::connect(&socket).is_err() {
                let said = || std::fs::read_to_string(&log).unwrap_or_default();
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "{raw}: shmringd exited:\n{}",
                    said()
                );
                assert!(
                    Instant::now() < deadline,
                    "{raw}: no socket at {socket:?}:\n{}",
                    said()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            daemons.push(child);
            continue;
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "README line failed: {raw}\n--- stdout\n{text}\n--- stderr\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(text);
    }
    for mut d in daemons {
        // SAFETY: kill has no memory effects; the pid is our child, not yet reaped.
        unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
        let status = d.wait().unwrap();
        assert!(status.success(), "shmringd did not stop cleanly: {status}");
    }
    outputs
}

/// A scratch directory every user may enter (the multi-user block runs a client as another
/// user).
fn scratch(tag: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = std::env::temp_dir().join(format!("shmring-readme-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// The runtime directory of the test's own, as a user's is (mode 0700).
fn runtime_in(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let r = dir.join("runtime");
    std::fs::create_dir_all(&r).unwrap();
    std::fs::set_permissions(&r, std::fs::Permissions::from_mode(0o700)).unwrap();
    r
}

#[test]
fn the_coordinator_session_runs_as_written() {
    let _dog = watchdog("README coordinator session", 120);
    let dir = scratch("session");
    let runtime = runtime_in(&dir);
    let block = block_with("shmring create prices");
    let outputs = run_block(&block, &runtime, &|w| w.to_string());
    let all = outputs.concat();
    for what in [
        "created spsc channel prices",
        "ticks",
        "broadcast",
        "deleted prices",
    ] {
        assert!(
            all.contains(what),
            "{what:?} not in the session's output:\n{all}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_multi_user_setup_runs_as_written() {
    let _dog = watchdog("README multi-user setup", 120);
    let dir = scratch("multi");
    let runtime = runtime_in(&dir);
    let run_dir = dir.join("run-shmring");
    let block = block_with("/run/shmring/md.sock");
    let substitute = |w: &str| w.replace("/run/shmring", run_dir.to_str().unwrap());
    let outputs = run_block(&block, &runtime, &substitute);
    assert!(outputs.concat().contains("no channels"), "{outputs:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

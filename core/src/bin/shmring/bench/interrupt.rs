//! Ctrl-C, SIGTERM or SIGHUP during a run: remove what the run made, stop the peers, exit.
//! (The peers also die with their parent, on SIGKILL too: see `peer::run`.)

use nix::sys::signal::{SigSet, Signal};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The peers' pids, as they are started.
static PEERS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The run's control page, directory and pid, for [`abandon`].
static RUN: OnceLock<(PathBuf, PathBuf, u32)> = OnceLock::new();

/// Ends the run now: kills the peers (a stopped one too: SIGKILL ends a stopped process),
/// removes the control page, the run's directory and the objects of the run's coordinator
/// namespace (`bench-<pid>`, nobody else's), says `why` if given, and exits with `code`.
pub fn abandon(code: i32, why: Option<&str>) -> ! {
    let peers = PEERS.lock().map(|p| p.clone()).unwrap_or_default();
    for peer in peers {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(peer as i32), Signal::SIGKILL);
    }
    if let Some((control, dir, pid)) = RUN.get() {
        let _ = std::fs::remove_file(control);
        let _ = std::fs::remove_dir_all(dir);
        let prefix = format!("shmring.bench-{pid}@");
        if let Ok(entries) = std::fs::read_dir("/dev/shm") {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        super::remove_runtime_files(*pid);
    }
    if let Some(why) = why {
        eprintln!("{why}");
    }
    std::process::exit(code);
}

/// Blocks the three signals in this thread (and so in the threads it starts later: call it
/// before the coordinator starts) and starts a thread that waits for them. On one, it kills
/// the peers (a stopped one too: SIGKILL ends a stopped process), removes the control page,
/// the run's directory and the objects of the run's coordinator namespace (`bench-<pid>`,
/// nobody else's), and exits with 128 + the signal.
pub fn catch(control: &Path, dir: &Path, pid: u32) {
    let _ = RUN.set((control.to_path_buf(), dir.to_path_buf(), pid));
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return; // the default action then: files are left, the peer still dies with us
    }
    std::thread::spawn(move || {
        let Ok(sig) = set.wait() else { return };
        abandon(
            128 + sig as i32,
            Some(&format!(
                "shmring bench: interrupted ({sig}); its files are removed"
            )),
        );
    });
}

/// Records a peer's pid for the signal thread.
pub fn peer_started(pid: u32) {
    if let Ok(mut p) = PEERS.lock() {
        p.push(pid);
    }
}

//! Ctrl-C, SIGTERM or SIGHUP during a run: remove what the run made, stop the peers, exit.
//! (The peers also die with their parent, on SIGKILL too: see `peer::run`.)

use nix::sys::signal::{SigSet, Signal};
use std::path::Path;
use std::sync::Mutex;

/// The peers' pids, as they are started.
static PEERS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Blocks the three signals in this thread (and so in the threads it starts later: call it
/// before the coordinator starts) and starts a thread that waits for them. On one, it kills
/// the peers (a stopped one too: SIGKILL ends a stopped process), removes the control page,
/// the run's directory and the objects of the run's coordinator namespace (`bench-<pid>`,
/// nobody else's), and exits with 128 + the signal.
pub fn catch(control: &Path, dir: &Path, pid: u32) {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return; // the default action then: files are left, the peer still dies with us
    }
    let (control, dir) = (control.to_path_buf(), dir.to_path_buf());
    std::thread::spawn(move || {
        let Ok(sig) = set.wait() else { return };
        let peers = PEERS.lock().map(|p| p.clone()).unwrap_or_default();
        for peer in peers {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(peer as i32), Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(&control);
        let _ = std::fs::remove_dir_all(&dir);
        let prefix = format!("shmring.bench-{pid}@");
        if let Ok(entries) = std::fs::read_dir("/dev/shm") {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        super::remove_runtime_files(pid);
        eprintln!("shmring bench: interrupted ({sig}); its files are removed");
        std::process::exit(128 + sig as i32);
    });
}

/// Records a peer's pid for the signal thread.
pub fn peer_started(pid: u32) {
    if let Ok(mut p) = PEERS.lock() {
        p.push(pid);
    }
}

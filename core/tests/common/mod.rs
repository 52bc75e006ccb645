//! What several of the crate's integration tests share.

use std::time::Duration;

/// Aborts the test process if a test runs past `secs` (a hang fails instead of stalling CI).
/// Dropping it (the test ended) disconnects the channel, which disarms it.
pub struct Watchdog {
    _disarm: std::sync::mpsc::Sender<()>,
}

/// Arms a [`Watchdog`] for the test `what`.
pub fn watchdog(what: &'static str, secs: u64) -> Watchdog {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            rx.recv_timeout(Duration::from_secs(secs))
        {
            eprintln!("watchdog: {what} still running after {secs} s: aborting");
            std::process::abort();
        }
    });
    Watchdog { _disarm: tx }
}

/// Removes a test's socket directory when the test ends, and what the coordinator keeps of its
/// namespace in the user's runtime directory (its lock and its record of the channels).
#[allow(dead_code)] // not every test that shares this module starts a coordinator
pub struct RemoveDir(pub std::path::PathBuf, pub String);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        for ext in ["lock", "channels"] {
            let _ = std::fs::remove_file(shmring::default_socket_path(&self.1).with_extension(ext));
        }
    }
}

/// A coordinator of a namespace of its own (`<prefix><pid>-<tag>`), a client of it, and the
/// guard that removes what it leaves (drop it last).
#[allow(dead_code)] // not every test that shares this module starts a coordinator
pub fn coordinator(prefix: &str, tag: &str) -> (shmring::Client, shmring::Coordinator, RemoveDir) {
    let ns = format!("{prefix}{}-{tag}", std::process::id());
    let dir = std::env::temp_dir().join(format!("shmring-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("coordinator.sock");
    let coord =
        shmring::Coordinator::start(shmring::CoordinatorConfig::new(&ns).socket(&sock)).unwrap();
    let client = shmring::Client::connect(Some(&sock)).unwrap();
    (client, coord, RemoveDir(dir, ns))
}

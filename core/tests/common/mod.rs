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

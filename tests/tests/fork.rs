//! Defect 18 of issue 10: handles inherited across `fork` belong to the parent. A child that
//! drops or stops them (a finalizer at exit does it unasked) frees its memory and nothing else:
//! the parent's coordinator keeps serving (before, the child's stop stopped it and removed its
//! socket, and panicked in the child), and the parent's entries, cursors, held frames and open
//! claim are as it left them. The C ABI's side is in `c_abi.rs`.

use shmring_tests::Watchdog;
use std::process::Command;
use std::time::Duration;

/// Removes what a helper that failed half-way left in `/dev/shm`: its namespace's segments and
/// lock, and its direct segment.
fn clean_up(ns: &str, helper_pid: u32) {
    let ours = |n: &str| {
        n.starts_with(&format!("shmring.{ns}@")) || n == format!("shmring-test-fork-{helper_pid}")
    };
    for e in std::fs::read_dir("/dev/shm").unwrap().flatten() {
        if e.file_name().to_str().is_some_and(ours) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[test]
fn a_forked_child_dropping_inherited_handles_leaves_the_parent_alone() {
    let dog = Watchdog::new("fork", Duration::from_secs(60));
    for how in ["stop", "drop"] {
        let ns = format!("fork{}{how}", std::process::id());
        let dir = std::env::temp_dir().join(format!("shmring-{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        let helper = dog.spawn(Command::new(env!("CARGO_BIN_EXE_shmring-fork")).args([
            dir.to_str().unwrap(),
            &ns,
            how,
        ]));
        let pid = helper.pid();
        let out = helper.wait();
        clean_up(&ns, pid);
        let _ = std::fs::remove_dir_all(&dir);
        shmring_tests::remove_runtime_files(&ns);
        assert!(
            out.status.success() && out.stdout.contains("parent unharmed"),
            "shmring-fork {how} ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            out.stdout,
            out.stderr
        );
    }
    dog.check();
}

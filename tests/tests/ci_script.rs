//! `.ci/shm-leftovers`, the check behind CI's "no segment left behind" step.
//!
//! Step 5 item 17: CI used to fail whenever any shmring object existed in /dev/shm after the
//! tests, such as the segments of a `shmringd` running on the machine. The check now compares
//! with a snapshot taken before the tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join(".ci/shm-leftovers")
}

fn run(shm: &Path, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(script())
        .args(args)
        .env("SHMRING_SHM_DIR", shm)
        .output()
        .expect("bash runs")
}

#[test]
fn objects_that_were_there_before_the_tests_are_not_leftovers() {
    let dir = std::env::temp_dir().join(format!("shmring-ci-script-{}", std::process::id()));
    let shm = dir.join("shm");
    std::fs::create_dir_all(&shm).unwrap();
    let snapshot = dir.join("before");
    let snapshot = snapshot.to_str().unwrap();
    // A running coordinator's segment, and an object of another program.
    std::fs::write(shm.join("shmring.md@1000.1.quotes"), b"").unwrap();
    std::fs::write(shm.join("other-program"), b"").unwrap();

    let out = run(&shm, &["snapshot", snapshot]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&shm, &["check", snapshot]);
    assert!(
        out.status.success(),
        "an object that was there before the tests was reported: {out:?}"
    );

    // One the tests left behind is reported, and only it.
    std::fs::write(shm.join("shmring-test-123-leak"), b"").unwrap();
    std::fs::write(shm.join("another-program"), b"").unwrap();
    let out = run(&shm, &["check", snapshot]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a leftover was not reported");
    assert!(stderr.contains("shmring-test-123-leak"), "{stderr}");
    assert!(
        !stderr.contains("quotes") && !stderr.contains("program"),
        "{stderr}"
    );

    // Used wrongly, it says how to use it.
    let out = run(&shm, &["check"]);
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

//! Access control: a client running as another user is refused a 0600 channel of root's and
//! admitted to a 0666 one, and can reach neither segment but through the coordinator. Needs
//! root to switch the helper's user (CI runs as root).

use shmring::{ChannelConfig, Client, Coordinator, CoordinatorConfig};
use shmring_tests::{Watchdog, serial};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

/// The unprivileged user and group the helper becomes (`nobody` on Debian).
const OTHER: u32 = 65534;

#[test]
fn another_user_is_refused_a_private_channel_and_admitted_to_a_shared_one() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: switching a helper to another user needs root (CI runs as root)");
        return;
    }
    let _serial = serial();
    let dog = Watchdog::new("permissions", Duration::from_secs(60));
    let ns = format!("perm{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("shmring-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    // The other user must reach the socket: a directory it may enter, a socket it may write.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.join("coordinator.sock");
    let coord =
        Coordinator::start(CoordinatorConfig::new(&ns).socket(&sock).socket_mode(0o666)).unwrap();
    let client = Client::connect(Some(&sock)).unwrap();
    client
        .create("private", &ChannelConfig::spsc().mode(0o600))
        .unwrap();
    client
        .create("public", &ChannelConfig::spsc().mode(0o666))
        .unwrap();
    let mut rx = client.consumer("public").unwrap();

    let helper = dog.spawn(Command::new(env!("CARGO_BIN_EXE_shmring-peer")).args([
        "as-user",
        &OTHER.to_string(),
        &OTHER.to_string(),
        sock.to_str().unwrap(),
        "private",
        "public",
        &std::process::id().to_string(),
    ]));
    let out = helper.success();
    let said = |key: &str| {
        out.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("helper did not report {key}: {out}"))
            .to_string()
    };
    assert_eq!(said("private_open"), "denied", "{out}");
    assert_eq!(said("private_stat"), "denied", "{out}");
    assert_eq!(said("public_send"), "ok", "{out}");
    assert_eq!(
        said("public_delete"),
        "denied",
        "only the owner deletes: {out}"
    );
    // Defect 2 (step 5): a 0666 channel was a 0666 object in /dev/shm that any user could open,
    // scribble over or truncate without asking the coordinator (before the fix, the helper
    // found both names in /dev/shm and opened the shared one). Now no segment has a name.
    assert_eq!(said("private_named"), "absent", "{out}");
    assert_eq!(said("public_named"), "absent", "{out}");
    assert_eq!(
        said("coordinator_fds"),
        "denied",
        "the coordinator's descriptors are not another user's to open: {out}"
    );
    // The admitted participant holds a writable descriptor of the shared channel: it cannot
    // open the object again by path, and its seals refuse every change of size (before the
    // fix, truncating the object killed the coordinator with SIGBUS).
    assert_eq!(said("public_fd"), "held", "{out}");
    assert_eq!(said("public_reopen"), "denied", "{out}");
    assert_eq!(said("public_shrink_0"), "denied", "{out}");
    assert_eq!(said("public_shrink_4096"), "denied", "{out}");
    assert_eq!(said("public_grow"), "denied", "{out}");
    assert_eq!(said("public_send_after"), "ok", "{out}");
    for expected in [&b"from another user"[..], b"still flowing"] {
        let f = rx.read_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(&*f, expected);
    }
    // The coordinator survived the attempts: it answers and samples the channel (once a
    // second) as before.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(coord.is_running());
    let s = client.stats("public").unwrap();
    assert_eq!(s.frames_in, 2);
    drop((rx, client));
    coord.stop();
    dog.check();
    let _ = std::fs::remove_dir_all(&dir);
    shmring_tests::remove_runtime_files(&ns);
}

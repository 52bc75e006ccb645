//! Access control: a client running as another user is refused a 0600 channel of root's and
//! admitted to a 0666 one. Needs root to switch the helper's user (CI runs as root).

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
    assert_eq!(
        said("private_direct"),
        "denied",
        "the segment's own mode keeps it out of /dev/shm too: {out}"
    );
    assert_eq!(said("public_send"), "ok", "{out}");
    assert_eq!(
        said("public_delete"),
        "denied",
        "only the owner deletes: {out}"
    );
    let f = rx.read_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(&*f, b"from another user");
    drop(f);
    let s = client.stats("public").unwrap();
    assert_eq!(s.frames_in, 1);
    drop((rx, client));
    coord.stop();
    dog.check();
    let _ = std::fs::remove_dir_all(&dir);
}

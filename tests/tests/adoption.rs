//! A coordinator that restarts finds its channels again. Segments are sealed memfds with no
//! name in `/dev/shm` (defect 2 of step 5); a restarted coordinator finds them in the processes
//! using them where it may look (`/proc/<pid>/fd`: every process for root, its own user's
//! otherwise: `crash.rs` kills and restarts a root coordinator), and otherwise gets them back
//! from its clients, which hand their segments back whenever they reconnect. Here the
//! coordinator runs as uid 65534 and its clients as root, so it cannot look into them: only the
//! hand-back brings the channel back. A descriptor handed back is untrusted: one that is not the
//! coordinator's own segment of that name is refused. Needs root (CI runs as root).

use shmring::protocol::{self, FrameReader, MAX_REPLY, PROTOCOL_VERSION, Reply, Request};
use shmring::{ChannelConfig, Client, Error};
use shmring_tests::{Watchdog, memfds, serial};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const NOBODY: u32 = 65534;
const T: Duration = Duration::from_secs(5);

/// Sends `req` with `fd` attached, as a client handing a segment back, and returns the reply.
fn hand_back(socket: &Path, req: &Request, fd: &OwnedFd) -> Reply {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(&protocol::client_hello(PROTOCOL_VERSION))
        .unwrap();
    let mut reader = FrameReader::new(MAX_REPLY);
    let mut next = |s: &mut UnixStream| loop {
        if let Some(p) = reader.next_frame().unwrap() {
            return p;
        }
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the coordinator closed the connection");
        reader.push(&buf[..n]);
    };
    let hello = next(&mut s);
    assert!(protocol::parse_server_hello(&hello).is_some());
    let bytes = protocol::encode(req);
    // SAFETY: sendmsg with one iovec over `bytes` and one SCM_RIGHTS message carrying one
    // descriptor, in a buffer sized by CMSG_SPACE and aligned for cmsghdr.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let space = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fd.as_raw_fd());
        assert_eq!(
            libc::sendmsg(s.as_raw_fd(), &msg, 0),
            bytes.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }
    protocol::decode(&next(&mut s)).unwrap()
}

/// A sealed memfd named `name`, holding a copy of the file at `from`: what a root process can
/// forge of a segment of a coordinator running as another user.
fn forge(name: &str, from: &Path) -> OwnedFd {
    let bytes = std::fs::read(from).unwrap();
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: memfd_create with a valid C string; the descriptor is owned by the OwnedFd.
    let fd = unsafe {
        let fd = libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING);
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        OwnedFd::from_raw_fd(fd)
    };
    let mut f = std::fs::File::from(fd);
    f.write_all(&bytes).unwrap();
    let fd = OwnedFd::from(f);
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor we own.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    assert_eq!(r, 0);
    fd
}

/// A namespace of this test, and a scratch directory (mode 0777, so that a coordinator of
/// another user can make its socket there) with the socket's path.
fn place(tag: &str) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let ns = format!("{tag}{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("shmring-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock = dir.join("c.sock");
    (ns, dir, sock)
}

/// A coordinator of namespace `ns` on `sock`, running as uid 65534, once it is ready.
fn daemon_as_nobody(dog: &Watchdog, sock: &Path, ns: &str) -> shmring_tests::Helper {
    let mut d = dog.spawn(Command::new(env!("CARGO_BIN_EXE_shmring-peer")).args([
        "daemon-as",
        &NOBODY.to_string(),
        &NOBODY.to_string(),
        sock.to_str().unwrap(),
        ns,
    ]));
    d.expect_line("ready");
    d
}

#[test]
fn clients_hand_their_segments_back_to_a_restarted_coordinator() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running a coordinator as another user needs root (CI runs as root)");
        return;
    }
    let _serial = serial();
    let dog = Watchdog::new("hand back", Duration::from_secs(60));
    let (ns, dir, sock) = place("handback");
    let daemon = || daemon_as_nobody(&dog, &sock, &ns);
    let d1 = daemon();
    let client = Client::connect(Some(&sock)).unwrap();
    let g = client
        .create("t", &ChannelConfig::mpmc().max_frame_size(64))
        .unwrap()
        .generation;
    let mut tx = client.producer("t").unwrap();
    let rx = client.consumer("t").unwrap();
    tx.send_timeout(b"before", T).unwrap();
    d1.kill().expect("the first coordinator was running");

    let d2 = daemon();
    // The new coordinator could not look into this (root's) process: nobody has handed the
    // channel back yet.
    let bystander = Client::connect(Some(&sock)).unwrap();
    // Found in review of step 5: the channel looked absent, and anyone could create the name
    // again, cutting its users off from it for good. It is awaited, and the name stays taken.
    match bystander.stats("t") {
        Err(Error::Busy(m)) => assert!(m.contains("comes back when one of its users"), "{m}"),
        other => panic!("an awaited channel: {other:?}"),
    }
    assert!(
        matches!(
            bystander.create("t", &ChannelConfig::spsc()),
            Err(Error::Busy(_))
        ),
        "the name of an awaited channel was taken"
    );
    // The client with handles reconnects on its next request and hands the segment back.
    let s = client
        .stats("t")
        .expect("adopted from the client's descriptor");
    assert_eq!(s.info.generation, g);
    assert_eq!(s.participants.len(), 2, "its live participants are watched");
    assert_eq!(bystander.stats("t").unwrap().info.generation, g);

    // Descriptors handed back are untrusted. The real segment, held by this process:
    let prefix = format!("shmring.{ns}@{NOBODY}.");
    let (_, real) = memfds(std::process::id(), &prefix)
        .into_iter()
        .next()
        .expect("the client keeps the segment's descriptor");
    // A copy root forged under the name of a channel the coordinator does not serve: a memfd
    // of the right name, sealed, with a valid header, but not the coordinator's user's.
    let planted = forge(&format!("{prefix}{g}.planted"), &real);
    let reply = hand_back(
        &sock,
        &Request::Adopt {
            name: "planted".into(),
            generation: g,
        },
        &planted,
    );
    assert!(
        matches!(
            reply,
            Reply::Error {
                code: protocol::ErrorCode::PermissionDenied,
                ..
            }
        ),
        "{reply:?}"
    );
    // The real segment, given as another channel: its memfd's name gives it away.
    let real_fd = OwnedFd::from(std::fs::File::open(&real).unwrap());
    let reply = hand_back(
        &sock,
        &Request::Adopt {
            name: "other".into(),
            generation: g,
        },
        &real_fd,
    );
    assert!(
        matches!(
            reply,
            Reply::Error {
                code: protocol::ErrorCode::Corrupted,
                ..
            }
        ),
        "{reply:?}"
    );
    // A named segment (a /dev/shm file, not a sealed memfd) is no segment of a coordinator.
    let name = format!("handback-{}", std::process::id());
    let direct = shmring::Segment::create(&name, &ChannelConfig::spsc()).unwrap();
    let named = OwnedFd::from(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/dev/shm/shmring-{name}"))
            .unwrap(),
    );
    let reply = hand_back(
        &sock,
        &Request::Adopt {
            name: "named".into(),
            generation: g,
        },
        &named,
    );
    assert!(matches!(reply, Reply::Error { .. }), "{reply:?}");
    shmring::Segment::unlink(&name).unwrap();
    drop(direct);
    let names: Vec<String> = bystander
        .list()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["t"], "nothing planted");

    // The adopted channel is served as before: a closed entry is free again, frames are there.
    drop(rx);
    let mut rx = client.consumer("t").expect("the closed entry is free");
    assert_eq!(&*rx.read_timeout(T).unwrap(), b"before");
    drop((tx, rx, client, bystander));
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(d2.pid() as i32, libc::SIGTERM) };
    let out = d2.wait();
    assert!(out.status.success(), "{}", out.stderr);
    dog.check();
    let _ = std::fs::remove_dir_all(&dir);
    remove_runtime_files(&ns);
}

/// Removes what a coordinator running as uid 65534 keeps of namespace `ns` in its runtime
/// directory (`/tmp/shmring-65534`: `daemon-as` drops `XDG_RUNTIME_DIR`): its lock and its
/// record of the channels.
fn remove_runtime_files(ns: &str) {
    let dir = std::path::PathBuf::from(format!("/tmp/shmring-{NOBODY}"));
    for ext in ["lock", "channels"] {
        let _ = std::fs::remove_file(dir.join(format!("{ns}.{ext}")));
    }
}

/// Found in review of step 5 (F3, the plant): a participant holding a deleted generation of a
/// channel set its state word back to READY; after a coordinator restart it handed that
/// segment back first, and it was adopted: the owner's next open of the channel landed in the
/// participant's memory instead of the newer generation. The coordinator's record of its live
/// channels decides now: a deleted generation is not in it and is refused; the live one is
/// served.
#[test]
fn a_deleted_generation_made_ready_again_is_not_adopted() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running a coordinator as another user needs root (CI runs as root)");
        return;
    }
    let _serial = serial();
    let dog = Watchdog::new("plant", Duration::from_secs(60));
    let (ns, dir, sock) = place("plant");
    let daemon = || daemon_as_nobody(&dog, &sock, &ns);
    let d1 = daemon();
    let client = Client::connect(Some(&sock)).unwrap();
    let cfg = ChannelConfig::spsc().max_frame_size(64);
    let g1 = client.create("x", &cfg.mode(0o666)).unwrap().generation;
    let rx = client.consumer("x").unwrap();
    let prefix = format!("shmring.{ns}@{NOBODY}.");
    let (_, path) = memfds(std::process::id(), &prefix)
        .into_iter()
        .find(|(n, _)| *n == format!("{prefix}{g1}.x"))
        .expect("the consumer holds generation 1");
    let old = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    drop(rx);
    client.delete("x").unwrap();
    // The participant makes the deleted generation look live again.
    {
        use std::os::unix::fs::FileExt;
        old.write_all_at(
            &shmring::layout::STATE_READY.to_ne_bytes(),
            shmring::layout::STATE_OFFSET as u64,
        )
        .unwrap();
    }
    let g2 = client.create("x", &cfg.mode(0o600)).unwrap().generation;
    assert!(g2 > g1);
    let mut tx = client.producer("x").unwrap();
    tx.send_timeout(b"live", T).unwrap();
    d1.kill().expect("the first coordinator was running");

    let d2 = daemon();
    let reply = hand_back(
        &sock,
        &Request::Adopt {
            name: "x".into(),
            generation: g1,
        },
        &OwnedFd::from(old),
    );
    assert!(
        matches!(reply, Reply::Error { .. }),
        "a deleted generation handed back was adopted: {reply:?}"
    );
    // The owner's client hands the live generation back when it reconnects.
    let s = client.stats("x").expect("the live generation is adopted");
    assert_eq!((s.info.generation, s.info.mode), (g2, 0o600));
    let mut rx = client.consumer("x").unwrap();
    assert_eq!(&*rx.read_timeout(T).unwrap(), b"live");
    drop((tx, rx, client));
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(d2.pid() as i32, libc::SIGTERM) };
    let out = d2.wait();
    assert!(out.status.success(), "{}", out.stderr);
    dog.check();
    let _ = std::fs::remove_dir_all(&dir);
    remove_runtime_files(&ns);
}

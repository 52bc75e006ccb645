//! Helper of `tests/fork.rs` (defect 18 of issue 10): embeds a coordinator, opens handles of
//! every kind (through it and daemon-less, mid-claim and mid-read), forks, and has the child
//! drop (or stop) every inherited handle, as a finalizer at a child's exit would. The parent
//! then checks that nothing of its own changed, and prints `parent unharmed`.
//!
//! ```text
//! shmring-fork DIR NAMESPACE stop|drop
//! ```
//!
//! Exits non-zero, saying why, on the first thing found changed.

use shmring::{ChannelConfig, Client, Coordinator, CoordinatorConfig, Error, Segment};
use std::path::PathBuf;
use std::time::Duration;

const T: Duration = Duration::from_secs(2);

fn fail(what: impl std::fmt::Display) -> ! {
    eprintln!("shmring-fork: {what}");
    std::process::exit(1);
}

fn check(cond: bool, what: &str) {
    if !cond {
        fail(what);
    }
}

fn main() {
    shmring_tests::die_with_parent();
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, ns, how] = &args[..] else {
        fail("usage: shmring-fork DIR NAMESPACE stop|drop");
    };
    let sock = PathBuf::from(dir).join("fork.sock");
    let ok = |r: Result<(), Error>, what: &str| r.unwrap_or_else(|e| fail(format!("{what}: {e}")));
    let coord = Coordinator::start(CoordinatorConfig::new(ns).socket(&sock))
        .unwrap_or_else(|e| fail(format!("starting: {e}")));
    let client = Client::connect(Some(&sock)).unwrap_or_else(|e| fail(e));
    let small = |c: ChannelConfig| c.capacity(4096).max_frame_size(64);
    client
        .create("s", &small(ChannelConfig::spsc()))
        .unwrap_or_else(|e| fail(e));
    client
        .create("m", &small(ChannelConfig::mpmc()))
        .unwrap_or_else(|e| fail(e));
    let mut stx = client.producer("s").unwrap_or_else(|e| fail(e));
    let mut srx = client.consumer("s").unwrap_or_else(|e| fail(e));
    let mut mtx = client.producer("m").unwrap_or_else(|e| fail(e));
    let mut mrx = client.consumer("m").unwrap_or_else(|e| fail(e));
    let direct = format!("test-fork-{}", std::process::id());
    let seg = Segment::create(&direct, &small(ChannelConfig::spsc())).unwrap_or_else(|e| fail(e));
    let mut dtx = seg.producer().unwrap_or_else(|e| fail(e));
    let mut drx = seg.consumer().unwrap_or_else(|e| fail(e));

    // Mid-operation at the fork: an SPSC frame and an MPMC frame read and held, an MPMC claim
    // open, a frame waiting in the direct segment.
    ok(stx.send_timeout(b"s1", T), "sending s1");
    ok(stx.send_timeout(b"s2", T), "sending s2");
    ok(dtx.send_timeout(b"d1", T), "sending d1");
    ok(mtx.send_timeout(b"m1", T), "sending m1");
    // SAFETY: nothing else is received on `srx`/`mrx` or sent on `mtx` until the held frames
    // are released and the claim committed, below.
    let sheld = unsafe { srx.read_detached(Some(T)) }.unwrap_or_else(|e| fail(e));
    // SAFETY: as above.
    let mheld = unsafe { mrx.read_detached(Some(T)) }.unwrap_or_else(|e| fail(e));
    // SAFETY: as above.
    let claim = unsafe { mtx.claim_detached(8, Some(T)) }.unwrap_or_else(|e| fail(e));

    let mut go = [0 as libc::c_int; 2];
    // SAFETY: pipe fills the two-element array.
    check(unsafe { libc::pipe(go.as_mut_ptr()) } == 0, "pipe");
    // SAFETY: fork in a process whose other thread (the coordinator's) holds no lock the child
    // needs: the child only waits, drops handles and exits.
    let child = unsafe { libc::fork() };
    if child < 0 {
        fail(std::io::Error::last_os_error());
    }
    if child == 0 {
        // Waits until the parent has moved on, so that whatever the drops write over shows.
        let mut b = 0u8;
        // SAFETY: reads one byte into a local.
        unsafe { libc::read(go[0], (&mut b as *mut u8).cast(), 1) };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            drop((stx, srx, mtx, mrx, dtx, drx, seg, client));
            if how == "stop" {
                coord.stop();
            } else {
                drop(coord);
            }
        }));
        // SAFETY: _exit ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(if r.is_ok() { 0 } else { 3 }) };
    }
    let mut buf = [0u8; 64];
    let frame = |got: Result<shmring::Received, Error>, buf: &[u8]| {
        let got = got.unwrap_or_else(|e| fail(e));
        buf[..got.len].to_vec()
    };

    // The parent moves on: releases what it held, commits its claim, consumes everything.
    // SAFETY: the frames are still held (nothing received since): their bytes are readable.
    let (s1, m1) = unsafe {
        (
            std::slice::from_raw_parts(sheld.as_ptr(), sheld.len()).to_vec(),
            std::slice::from_raw_parts(mheld.as_ptr(), mheld.len()).to_vec(),
        )
    };
    check(s1 == b"s1" && m1 == b"m1", "the held frames");
    // SAFETY: the frames and the claim come from these handles, with nothing done since.
    unsafe {
        srx.release_detached(sheld);
        mrx.release_detached(mheld);
        std::ptr::copy_nonoverlapping(b"claimed!".as_ptr(), claim.as_mut_ptr(), 8);
        ok(mtx.commit_detached(claim, 8), "committing the claim");
    }
    check(
        frame(mrx.recv_timeout(&mut buf, T), &buf) == b"claimed!",
        "the claim's frame",
    );
    check(
        frame(srx.recv_timeout(&mut buf, T), &buf) == b"s2",
        "received s2",
    );
    check(
        frame(drx.recv_timeout(&mut buf, T), &buf) == b"d1",
        "received d1",
    );

    // Then fills the rings, so that the slots the child's copies remember hold new frames.
    let fill = |tx: &mut shmring::Producer| {
        let mut n = 0u32;
        while tx.try_send(&n.to_le_bytes()).is_ok() {
            n += 1;
        }
        n
    };
    let (sn, mn) = (fill(&mut stx), fill(&mut mtx));
    check(sn > 2 && mn > 2, "filling the rings");

    // Now the child drops its copies.
    // SAFETY: writes one byte from a local.
    unsafe { libc::write(go[1], b"g".as_ptr().cast(), 1) };
    let mut status = 0;
    // SAFETY: waits for our own child.
    check(
        unsafe { libc::waitpid(child, &mut status, 0) } == child,
        "waitpid",
    );
    check(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        &format!("the child ended with status {status:#x} (a panic in a drop?)"),
    );

    // The coordinator still serves, with its socket, channels and the parent's entries.
    check(coord.is_running(), "the coordinator stopped");
    check(sock.exists(), "the socket was removed");
    let fresh = Client::connect(Some(&sock)).unwrap_or_else(|e| fail(format!("connecting: {e}")));
    for name in ["s", "m"] {
        let s = fresh.stats(name).unwrap_or_else(|e| fail(e));
        check(
            s.participants.len() == 2 && s.participants.iter().all(|p| p.pid == std::process::id()),
            &format!("channel {name}'s entries changed: {:?}", s.participants),
        );
    }
    check(
        matches!(fresh.producer("s"), Err(Error::Busy(_))),
        "the SPSC producer entry was freed",
    );
    check(
        matches!(seg.producer(), Err(Error::Busy(_))),
        "the direct segment's producer entry was freed",
    );
    // Every ring goes on where the parent left it: what filled them arrives, in order...
    for (rx, n, name) in [(&mut srx, sn, "s"), (&mut mrx, mn, "m")] {
        for i in 0..n {
            let f = frame(rx.recv_timeout(&mut buf, T), &buf);
            check(f == i.to_le_bytes(), &format!("frame {i} of {n} on {name}"));
        }
    }
    // ...and a few laps more.
    for i in 0..40u32 {
        let f = i.to_le_bytes();
        ok(stx.send_timeout(&f, T), "sending on s");
        ok(mtx.send_timeout(&f, T), "sending on m");
        ok(dtx.send_timeout(&f, T), "sending on the direct segment");
        check(
            frame(srx.recv_timeout(&mut buf, T), &buf) == f,
            "a frame on s",
        );
        check(
            frame(mrx.recv_timeout(&mut buf, T), &buf) == f,
            "a frame on m",
        );
        check(
            frame(drx.recv_timeout(&mut buf, T), &buf) == f,
            "a frame on the direct segment",
        );
    }
    check(
        matches!(mrx.try_recv(&mut buf), Err(Error::WouldBlock(_))),
        "m holds a frame nobody sent",
    );
    drop((stx, srx, mtx, mrx, dtx, drx, fresh, client));
    coord.stop();
    check(!sock.exists(), "the socket outlived the stop");
    let _ = Segment::unlink(&direct);
    println!("parent unharmed");
}

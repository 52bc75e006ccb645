//! The data path makes no system call while there is work to do.
//!
//! The helpers' `strict-*` roles open their channel, then enter seccomp strict mode: from there
//! on, any system call other than read, write, exit and sigreturn kills the process with
//! SIGKILL. A helper that finishes its frames and reports a matching checksum therefore made no
//! other system call on its data path: no futex wake, no sched_yield, no clock read, no mmap.

use shmring::ChannelConfig;
use shmring_tests::{Helper, SegmentGuard, Watchdog, field, serial, spsc_frame, unique_name};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

fn strict(dog: &Watchdog, role: &str, seg: &SegmentGuard, count: u64, wait: &str) -> Helper {
    dog.spawn(Command::new(env!("CARGO_BIN_EXE_shmring-peer")).args([
        &format!("strict-{role}"),
        &seg.name,
        &count.to_string(),
        "5",
        wait,
    ]))
}

fn finished(h: Helper, role: &str) -> String {
    let out = h.wait();
    assert!(
        out.status.signal() != Some(libc::SIGKILL),
        "the strict {role} was killed by SIGKILL: it made a system call on its data path\n{}",
        out.stderr
    );
    assert!(
        out.status.success(),
        "strict {role}: {}\n{}",
        out.status,
        out.stderr
    );
    out.stdout
}

fn run_pair(cfg: ChannelConfig, count: u64, producer_wait: &str, consumer_wait: &str) {
    let _serial = serial();
    let dog = Watchdog::new("no_syscalls", Duration::from_secs(120));
    let seg = dog.segment(&unique_name("strict"), &cfg);
    let consumer = strict(&dog, "consume", &seg, count, consumer_wait);
    let producer = strict(&dog, "produce", &seg, count, producer_wait);
    let sent = finished(producer, "producer");
    let got = finished(consumer, "consumer");
    dog.check();
    assert_eq!(field(&sent, "frames"), Some(count), "{sent}");
    assert_eq!(field(&got, "frames"), Some(count), "{got}");
    assert_eq!(field(&sent, "checksum"), field(&got, "checksum"));
}

/// Both sides spin through a small ring that is constantly full or empty: waiting by spinning
/// and publishing with nobody asleep cost no system call.
#[test]
fn spsc_spinning_sides_make_no_system_call() {
    run_pair(
        ChannelConfig::spsc().capacity(4096).max_frame_size(512),
        300_000,
        "spin",
        "spin",
    );
}

/// The same over MPMC slots.
#[test]
fn mpmc_spinning_sides_make_no_system_call() {
    run_pair(
        ChannelConfig::mpmc().capacity(8 * 256).max_frame_size(256),
        300_000,
        "spin",
        "spin",
    );
}

/// A producer whose handle would park when full, into a ring that never fills, read by a
/// consumer that never sleeps: its wake-up check finds no waiter and makes no FUTEX_WAKE.
#[test]
fn parking_producer_wakes_nobody_who_is_awake() {
    run_pair(
        ChannelConfig::spsc().capacity(16 << 20).max_frame_size(100),
        100_000,
        "park",
        "spin",
    );
}

/// A consumer whose handle would park when empty, draining a ring that is already full of
/// frames: receiving with work to do makes no system call.
#[test]
fn parking_consumer_with_work_to_do_makes_no_system_call() {
    let _serial = serial();
    let dog = Watchdog::new("parking_consumer", Duration::from_secs(120));
    let seg = dog.segment(
        &unique_name("strict-park"),
        &ChannelConfig::spsc().capacity(16 << 20).max_frame_size(100),
    );
    const COUNT: u64 = 100_000;
    let mut tx = seg.seg.producer().unwrap();
    let mut f = Vec::new();
    for seq in 0..COUNT {
        spsc_frame(5, seq, 100, &mut f);
        tx.try_send(&f).unwrap();
    }
    let got = finished(strict(&dog, "consume", &seg, COUNT, "park"), "consumer");
    dog.check();
    assert_eq!(field(&got, "frames"), Some(COUNT), "{got}");
}

/// The tests above prove something only if a system call would be caught: a consumer that
/// must wait for data with the park strategy spins, then yields (sched_yield) and would sleep
/// (FUTEX_WAIT); strict mode kills it at the first of these.
#[test]
fn strict_mode_catches_a_system_call() {
    let _serial = serial();
    let dog = Watchdog::new("strict_mode_catches", Duration::from_secs(120));
    let seg = dog.segment(
        &unique_name("strict-catch"),
        &ChannelConfig::spsc().capacity(4096).max_frame_size(100),
    );
    let out = strict(&dog, "consume", &seg, 1, "park").wait();
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out:?}");
}

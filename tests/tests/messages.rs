//! Messages longer than a frame across processes, through the C ABI: `tests/c/messages.c`
//! creates the channel, produces and consumes, each a process of its own, against a
//! coordinator embedded in this test (found through `SHMRING_SOCKET`). Messages of 1 byte to
//! 8 MiB go through a 1 MiB ring; every byte is compared and both ends' checksums must agree.
//! Every test runs under a watchdog; none asserts a duration (the figures are printed).

use shmring_tests::{Build, Watchdog, serial};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// This test's place (`shmring_tests::Place`), with the C program.
struct Place(shmring_tests::Place);

impl std::ops::Deref for Place {
    type Target = shmring_tests::Place;
    fn deref(&self) -> &shmring_tests::Place {
        &self.0
    }
}

impl Place {
    fn new(tag: &str) -> Place {
        Place(shmring_tests::Place::new(&format!("msg{tag}")))
    }

    fn compile(&self, build: Build) -> PathBuf {
        shmring_tests::compile("tests/c/messages.c", &self.dir, build)
    }
}

/// The `key=value` number of a helper's output.
fn number(text: &str, key: &str) -> u64 {
    shmring_tests::field(text, key).unwrap_or_else(|| panic!("no {key}= in {text:?}"))
}

/// The hexadecimal `key=` of a helper's output.
fn hex(text: &str, key: &str) -> u64 {
    let v = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {text:?}"));
    u64::from_str_radix(v, 16).unwrap()
}

/// `count` messages of 1 byte to 8 MiB through a 1 MiB channel of `kind` with `consumers`
/// consumer processes: SPSC and broadcast, each must receive all of them, whole and in order;
/// MPMC, each message goes whole to one of them (their counts, bytes and order-independent
/// sums of checksums add up to the producer's). With `resized`, a fourth process resizes the
/// channel meanwhile, from 1 MiB to 64 MiB and back to 4 MiB.
fn through_a_small_ring(kind: &str, build: Build, count: u64, consumers: usize, resized: bool) {
    let _serial = serial();
    let dog = Watchdog::new(
        &format!("{kind} messages through a 1 MiB ring"),
        Duration::from_secs(600),
    );
    let place = Place::new(kind);
    let exe = place.compile(build);
    let max_len = (8u64 << 20).to_string();
    let said = dog
        .spawn(
            place
                .command(&exe)
                .args(["create", "big", kind, "1048576", "65536", &max_len]),
        )
        .success();
    assert_eq!(said.trim(), format!("created max_message_size={max_len}"));
    let shared = kind == "mpmc";
    let receivers: Vec<_> = (0..consumers)
        .map(|_| {
            let mut args = vec!["consume", "big"];
            if shared {
                args.push("any");
            }
            let mut c = dog.spawn(place.command(&exe).args(&args));
            c.expect_line("open");
            c
        })
        .collect();
    let start = Instant::now();
    let producer =
        dog.spawn(
            place
                .command(&exe)
                .args(["produce", "big", &count.to_string(), &max_len]),
        );
    let resizer = resized.then(|| {
        dog.spawn(place.command(&exe).args([
            "resize",
            "big",
            "300",
            &(64u64 << 20).to_string(),
            &(4u64 << 20).to_string(),
        ]))
    });
    let produced = producer.success();
    if let Some(r) = resizer {
        let said = r.success();
        assert!(said.contains("resized=67108864") && said.contains("resized=4194304"));
        assert_eq!(number(&said, "resizes"), 2, "{said}");
    }
    assert_eq!(number(&produced, "produced"), count);
    let bytes = number(&produced, "bytes");
    let (mut all, mut all_bytes, mut all_sum) = (0, 0, 0u64);
    for r in receivers {
        let consumed = r.success();
        assert_eq!(number(&consumed, "missed"), 0, "{consumed}");
        if shared {
            all += number(&consumed, "consumed");
            all_bytes += number(&consumed, "bytes");
            all_sum = all_sum.wrapping_add(hex(&consumed, "sum"));
        } else {
            assert_eq!(number(&consumed, "consumed"), count, "{consumed}");
            assert_eq!(number(&consumed, "bytes"), bytes, "{consumed}");
            assert_eq!(
                hex(&consumed, "checksum"),
                hex(&produced, "checksum"),
                "{consumed}"
            );
        }
    }
    if shared {
        assert_eq!(
            (all, all_bytes),
            (count, bytes),
            "every message to one consumer"
        );
        assert_eq!(all_sum, hex(&produced, "sum"), "the same messages");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{kind}: {count} messages, {:.1} MiB, in {secs:.2} s ({:.0} MiB/s)",
        bytes as f64 / 1048576.0,
        bytes as f64 / 1048576.0 / secs
    );
}

/// Done when: a C program sends 10 000 messages of 1 byte to 8 MiB through a 1 MiB SPSC ring;
/// every one arrives whole, checksummed, in order, while the channel is resized from 1 MiB to
/// 64 MiB and back to 4 MiB.
#[test]
fn ten_thousand_messages_up_to_8_mib_through_a_1_mib_spsc_ring() {
    through_a_small_ring("spsc", Build::Plain, 10_000, 1, true);
}

/// The same through a broadcast ring of 16 slots of 64 KiB, to two subscribers.
#[test]
fn ten_thousand_messages_up_to_8_mib_through_a_1_mib_broadcast_ring() {
    through_a_small_ring("broadcast", Build::Plain, 10_000, 2, true);
}

/// The same through an MPMC ring of 16 slots of 64 KiB, shared by two consumers: every message
/// goes through the pool, whole to one of them (the resized ring's pool, after a resize).
#[test]
fn ten_thousand_messages_up_to_8_mib_through_a_1_mib_mpmc_ring() {
    through_a_small_ring("mpmc", Build::Plain, 10_000, 2, true);
}

/// Fewer, under AddressSanitizer and UndefinedBehaviorSanitizer: the C side's buffers and
/// the lent copies of messages.
#[test]
fn messages_under_the_sanitizers() {
    through_a_small_ring("spsc", Build::Sanitized, 300, 1, true);
}

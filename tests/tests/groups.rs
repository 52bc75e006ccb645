//! A partitioned channel read by a consumer group, through the C ABI, every role a process of
//! its own (`tests/c/groups.c`): 4 partitions, 3 members, 1 000 000 keyed frames over 100
//! keys, one member SIGKILLed midway. Afterwards every frame was delivered, per-key order held
//! in each member's log (a frame delivered again is flagged redelivered), and the survivors
//! own all partitions. Runs under a watchdog; asserts no duration.

use shmring_tests::{Build, Watchdog, serial};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const COUNT: u64 = 1_000_000;
const KEYS: u64 = 100;

/// One record of a member's log: key, partition, sequence number of the key, flags.
fn read_log(path: &std::path::Path) -> Vec<(u32, u32, u64, u32)> {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes
        .chunks_exact(24)
        .map(|r| {
            let u32_at = |i: usize| u32::from_ne_bytes(r[i..i + 4].try_into().unwrap());
            (
                u32_at(0),
                u32_at(4),
                u64::from_ne_bytes(r[8..16].try_into().unwrap()),
                u32_at(16),
            )
        })
        .collect()
}

#[test]
fn three_members_one_killed_every_frame_delivered_in_key_order() {
    let _serial = serial();
    let dog = Watchdog::new(
        "a consumer group with a member killed",
        Duration::from_secs(300),
    );
    let place = shmring_tests::Place::new("grp");
    let exe = shmring_tests::compile("tests/c/groups.c", &place.dir, Build::Plain);
    let said = dog
        .spawn(place.command(&exe).args(["create", "ticks", "4"]))
        .success();
    assert_eq!(said.trim(), "created");
    let logs: Vec<_> = (0..3)
        .map(|i| place.dir.join(format!("m{i}.log")))
        .collect();
    let mut members: Vec<_> = logs
        .iter()
        .map(|log| {
            let mut m = dog.spawn(place.command(&exe).args([
                "member",
                "ticks",
                "procs",
                log.to_str().unwrap(),
            ]));
            m.expect_line("joined");
            m
        })
        .collect();
    let client = place.client();
    // Each member holds one or two partitions before the first frame is sent.
    let start = Instant::now();
    loop {
        let s = client.stats("ticks").unwrap();
        if s.partitions.iter().all(|p| p.owner.is_some()) && s.info.consumers == 4 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "members never settled: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let producer = dog.spawn(place.command(&exe).args([
        "produce",
        "ticks",
        &COUNT.to_string(),
        &KEYS.to_string(),
    ]));
    // Midway: the member with the most in its log is killed.
    let victim = loop {
        let sizes: Vec<u64> = logs
            .iter()
            .map(|l| std::fs::metadata(l).map_or(0, |m| m.len() / 24))
            .collect();
        if sizes.iter().sum::<u64>() >= COUNT / 2 {
            break (0..3).max_by_key(|&i| sizes[i]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let victim_pid = members[victim].pid();
    let killed_at = Instant::now();
    members
        .remove(victim)
        .kill()
        .expect("the victim was running");
    let survivors: Vec<u32> = members.iter().map(|m| m.pid()).collect();
    // The survivors take the victim's partitions over.
    let rebalanced = loop {
        let s = client.stats("ticks").unwrap();
        let owners: Vec<u32> = s
            .partitions
            .iter()
            .filter_map(|p| p.owner.map(|o| o.1))
            .collect();
        if owners.len() == 4 && owners.iter().all(|o| survivors.contains(o)) {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "the victim's partitions were never reassigned: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(producer.success().contains(&format!("produced {COUNT}")));
    let mut owned = Vec::new();
    for m in members {
        let out = m.success();
        let parts = out
            .split_whitespace()
            .find_map(|w| w.strip_prefix("partitions="))
            .unwrap_or_else(|| panic!("no partitions= in {out:?}"));
        owned.extend(
            parts
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| p.parse::<u32>().unwrap()),
        );
    }
    // (The first survivor to end leaves the group, and the other takes its partitions too.)
    owned.sort_unstable();
    owned.dedup();
    assert_eq!(
        owned,
        [0, 1, 2, 3],
        "the survivors own every partition at the end"
    );
    // Every frame delivered; per key, each member's log in order except redelivered frames;
    // a frame logged twice is flagged redelivered the second time.
    let mut seen: HashMap<(u32, u64), u32> = HashMap::new();
    let mut redelivered = 0;
    for (i, log) in logs.iter().enumerate() {
        let mut last: HashMap<u32, u64> = HashMap::new();
        for (key, partition, seq, flags) in read_log(log) {
            let again = flags & 1 != 0;
            redelivered += u64::from(again);
            assert!(key < KEYS as u32 && partition < 4);
            if let Some(&l) = last.get(&key)
                && seq <= l
            {
                assert!(
                    again,
                    "member {i}: key {key} seq {seq} after {l}, not flagged redelivered"
                );
            }
            last.insert(key, seq.max(last.get(&key).copied().unwrap_or(0)));
            let n = seen.entry((key, seq)).or_default();
            *n += 1;
            assert!(
                *n == 1 || again,
                "key {key} seq {seq} delivered twice, second unflagged"
            );
        }
    }
    for key in 0..KEYS as u32 {
        let per_key = COUNT / KEYS;
        for seq in 0..per_key {
            assert!(
                seen.contains_key(&(key, seq)),
                "key {key} seq {seq} never delivered"
            );
        }
    }
    assert_eq!(
        seen.len() as u64,
        COUNT,
        "exactly the frames sent, and no others"
    );
    println!(
        "{COUNT} frames over 4 partitions to 3 members, member {victim} (pid {victim_pid}) killed midway: \
         {redelivered} frames delivered again, flagged; partitions reassigned {:.1} ms after the kill",
        rebalanced.as_secs_f64() * 1e3
    );
}

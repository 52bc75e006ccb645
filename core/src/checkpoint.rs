//! A partition's checkpoint: the state of the consumer-group member that processes it, saved in
//! the partition's segment together with the ring position it covers, so that whoever takes the
//! partition over (after a crash or a rebalance) resumes from exactly that state.
//!
//! The area (layout.rs, "Checkpoint area") holds a count of checkpoints committed and two
//! buffers. Checkpoint `n` is written into buffer `n % 2` while buffer `(n - 1) % 2` still holds
//! the previous one, then the count is stored: a writer killed midway leaves the count at
//! `n - 1`, whose buffer it never touched.
//!
//! The protocol that makes processing exactly-once (ARCHITECTURE.md, "Exactly-once
//! processing"): a member takes frames without releasing them, folds them into its state, and
//! commits a checkpoint of that state at the position after the last frame folded in, *then*
//! releases the frames. Released frames are therefore always covered by a checkpoint; frames
//! covered by the last checkpoint but not released (a crash between the two steps) are passed
//! over by the successor (`spsc::ConsumerCore::resume_at`), and frames taken after it are
//! delivered again, flagged redelivered, to a successor that starts from the checkpoint's
//! state.
//!
//! Only the partition's current consumer writes the area; a successor reads it after the
//! coordinator handed the partition over (the predecessor is dead, or it closed the partition
//! first), which orders the predecessor's stores before the read. The state bytes come from a
//! group member and are checked for length only: they are as trustworthy as the group.

use crate::error::{Error, Result};
use crate::region::Memory;
use crate::sync::Ordering::{Acquire, Relaxed, Release};

fn corrupted(msg: impl Into<String>) -> Error {
    Error::Corrupted(msg.into())
}

fn area(mem: &Memory) -> Result<(usize, u32)> {
    let geo = mem.geometry();
    if geo.checkpoint_size == 0 {
        return Err(Error::InvalidArgument(
            "this channel has no checkpoint area (only the partitions of a partitioned channel do)"
                .into(),
        ));
    }
    Ok((geo.checkpoint, geo.checkpoint_size))
}

/// The most bytes of state a checkpoint of `mem`'s partition holds (zero: no checkpoint area).
pub(crate) fn capacity(mem: &Memory) -> usize {
    mem.geometry().checkpoint_size as usize
}

/// How many checkpoints were committed in the partition.
pub(crate) fn count(mem: &Memory) -> u64 {
    let Ok((at, _)) = area(mem) else { return 0 };
    // Relaxed: a statistic.
    mem.data_word(at).map_or(0, |w| w.load(Relaxed))
}

/// The last checkpoint committed: the position it covers and the state; `None` if none was.
pub(crate) fn read(mem: &Memory) -> Result<Option<(u64, Vec<u8>)>> {
    let (at, cap) = area(mem)?;
    let geo = mem.geometry();
    let words = |off: usize| {
        mem.data_word(off)
            .ok_or_else(|| corrupted("checkpoint area outside the segment"))
    };
    // Acquire: pairs with the Release in `write`, so the buffer it names is whole.
    let n = words(at)?.load(Acquire);
    if n == 0 {
        return Ok(None);
    }
    let buf = geo
        .checkpoint_buffer(n)
        .ok_or_else(|| corrupted("no checkpoint buffer"))?;
    // Relaxed: ordered by the Acquire above.
    let pos = words(buf)?.load(Relaxed);
    // Relaxed: as above.
    let len = words(buf + 8)?.load(Relaxed);
    if len > u64::from(cap) || !pos.is_multiple_of(8) {
        return Err(corrupted(format!(
            "checkpoint {n} states {len} bytes of state at position {pos} (at most {cap} bytes, at an 8-aligned position)"
        )));
    }
    let range = mem
        .range(buf + crate::layout::CHECKPOINT_PREFIX, len as usize)
        .ok_or_else(|| corrupted("checkpoint state outside the segment"))?;
    let mut state = vec![0u8; len as usize];
    mem.copy_out(range, &mut state);
    Ok(Some((pos, state)))
}

/// Commits a checkpoint: `state` covers the partition's frames before ring position `pos`.
pub(crate) fn write(mem: &Memory, pos: u64, state: &[u8]) -> Result<()> {
    let (at, cap) = area(mem)?;
    if state.len() > cap as usize {
        return Err(Error::InvalidArgument(format!(
            "a checkpoint of {} bytes of state is over this channel's checkpoint_size of {cap} \
             bytes (create the channel with a larger checkpoint_size)",
            state.len()
        )));
    }
    let geo = mem.geometry();
    let words = |off: usize| {
        mem.data_word(off)
            .ok_or_else(|| corrupted("checkpoint area outside the segment"))
    };
    let count = words(at)?;
    // Relaxed: only this consumer writes the count (a predecessor's stores are ordered before
    // ours by the coordinator's handover).
    let n = count.load(Relaxed).wrapping_add(1);
    let buf = geo
        .checkpoint_buffer(n)
        .ok_or_else(|| corrupted("no checkpoint buffer"))?;
    // Relaxed: published by the Release store of the count below.
    words(buf)?.store(pos, Relaxed);
    // Relaxed: as above.
    words(buf + 8)?.store(state.len() as u64, Relaxed);
    let range = mem
        .range(buf + crate::layout::CHECKPOINT_PREFIX, state.len())
        .ok_or_else(|| corrupted("checkpoint state outside the segment"))?;
    mem.copy_in(range, state);
    // Release: pairs with the Acquire in `read`; the buffer's words and bytes above come first.
    count.store(n, Release);
    Ok(())
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! The checkpoint-then-release step, with the member killed after any number of its steps
    //! (a take, a checkpoint's write, a release) while the producer keeps sending, and a
    //! successor that starts from what it left: the successor's state must count every frame
    //! exactly once. As in `spsc.rs`'s models, every role is a spawned thread; the main thread
    //! only spawns and joins.
    use super::*;
    use crate::layout::{ChannelConfig, Geometry, Role};
    use crate::spsc::{ConsumerCore, ProducerCore, publish_released};
    use loom::sync::Arc;
    use std::collections::HashSet;
    use std::sync::Mutex;

    const FRAMES: u64 = 3;

    fn memory() -> Arc<Memory> {
        let cfg = ChannelConfig::spsc()
            .capacity(64)
            .max_frame_size(8)
            .checkpoint_size(16);
        Arc::new(Memory::new(Geometry::new(&cfg).unwrap()))
    }

    fn encode(count: u64, sum: u64) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&count.to_ne_bytes());
        b[8..].copy_from_slice(&sum.to_ne_bytes());
        b
    }

    fn decode(b: &[u8]) -> (u64, u64) {
        (
            u64::from_ne_bytes(b[..8].try_into().unwrap()),
            u64::from_ne_bytes(b[8..16].try_into().unwrap()),
        )
    }

    /// Takes the next frame (its value), or `None` if the ring is empty.
    fn take(c: &mut ConsumerCore, mem: &Memory) -> Option<(u64, bool)> {
        let mut buf = [0u8; 8];
        match c.try_take_copy(mem, &mut buf) {
            Ok((8, flags)) => Some((u64::from_ne_bytes(buf), flags != 0)),
            Ok((n, _)) => panic!("a frame of {n} bytes"),
            Err(Error::WouldBlock(_)) => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// Folds frames into (count, sum), committing after each; stops after `steps` steps
    /// (`None`: until every frame is in the state). Returns whether frames were passed over on
    /// resuming.
    fn member(mem: &Memory, steps: Option<u32>) -> bool {
        let mut c = ConsumerCore::attach(mem).unwrap();
        let (mut count, mut sum) = read(mem).unwrap().map_or((0, 0), |(_, s)| decode(&s));
        let passed = match read(mem).unwrap() {
            Some((pos, _)) => c.resume_at(mem, pos).unwrap() > 0,
            None => false,
        };
        let mut left = steps.unwrap_or(u32::MAX);
        let mut step = || {
            left = left.saturating_sub(1);
            left > 0
        };
        while count < FRAMES {
            let Some((v, _)) = take(&mut c, mem) else {
                loom::thread::yield_now();
                continue;
            };
            count += 1;
            sum += v;
            if !step() {
                return passed;
            }
            let pos = c.checkpoint_position(mem);
            write(mem, pos, &encode(count, sum)).unwrap();
            if !step() {
                return passed;
            }
            c.release(mem);
            if !step() {
                return passed;
            }
        }
        if steps.is_none() {
            assert_eq!((count, sum), (FRAMES, FRAMES * (FRAMES + 1) / 2));
        }
        passed
    }

    #[test]
    fn a_successor_counts_every_frame_once_wherever_its_predecessor_died() {
        let passed_over = std::sync::Arc::new(Mutex::new(HashSet::new()));
        for steps in 1..=(3 * FRAMES as u32) {
            let passed_over = passed_over.clone();
            loom::model(move || {
                let mem = memory();
                let (m1, m2, m3) = (mem.clone(), mem.clone(), mem.clone());
                let p = loom::thread::spawn(move || {
                    let mut p = ProducerCore::attach(&m1).unwrap();
                    for v in 1..=FRAMES {
                        loop {
                            match p.try_send(&m1, &v.to_ne_bytes(), true) {
                                Ok(()) => break,
                                Err(Error::WouldBlock(_)) => loom::thread::yield_now(),
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                });
                let first = loom::thread::spawn(move || member(&m2, Some(steps)));
                first.join().unwrap();
                let passed_over = passed_over.clone();
                let next = loom::thread::spawn(move || {
                    // The coordinator's repair of the dead member, then its successor.
                    publish_released(&m3, m3.participant(Role::Consumer, 0).unwrap()).unwrap();
                    let passed = member(&m3, None);
                    passed_over.lock().unwrap().insert(passed);
                });
                next.join().unwrap();
                p.join().unwrap();
            });
        }
        let seen = passed_over.lock().unwrap();
        assert!(
            seen.contains(&true) && seen.contains(&false),
            "a successor that passed over frames covered by a checkpoint, and one that did not, were both reached: {seen:?}"
        );
    }
}

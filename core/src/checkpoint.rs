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

//! The MPMC ring: Dmitry Vyukov's bounded MPMC queue over fixed-size slots, each frame delivered
//! to exactly one consumer, with claim records that make crash repair exact.
//!
//! Slot format in `layout` ("MPMC slot"). With `S` slots, position `p` lives in slot `p % S`, and
//! the slot's `seq` says whose turn it is:
//!
//! | `seq`         | meaning                                                    |
//! |---------------|------------------------------------------------------------|
//! | `p`           | free: the producer of position `p` may write it            |
//! | `p + 1`       | committed: the consumer of position `p` may read it        |
//! | `p + S`       | released: free for the producer of position `p + S`        |
//!
//! * **Claim** (producer): load the enqueue position `p` (Relaxed), load `seq(p)` (**Acquire**,
//!   pairs with the consumer's Release in *Release*: the previous reader is done with the
//!   bytes). If `seq == p`, store the claim record `p << 8 | n` into this producer's participant
//!   line (Release, pairs with the repair's Acquire), then CAS the enqueue position from `p` to `p + n` (**Release** on success, so a
//!   coordinator that loads the position with Acquire also sees the claim record). A batch of
//!   `n` takes consecutive free slots with one CAS.
//! * **Commit**: store the header word (Relaxed), then `seq = p + 1` (**Release**, pairs with the
//!   consumer's Acquire of `seq`). An aborted claim is committed as a `Skip` record: the
//!   position is gone once the CAS succeeded, so it is handed on empty.
//! * **Read** (consumer): the same with the dequeue position, `seq == p + 1` (**Acquire**) and
//!   the claim record in the consumer's participant line.
//! * **Release**: `seq = p + S` (**Release**, pairs with the next producer's Acquire of `seq`).
//!
//! The claim records are what the coordinator's repair (`repair.rs`) uses after a death: a slot
//! of position `p` stuck at `seq == p` (or `p + 1`) whose position the cursor has passed,
//! covered by a dead participant's claim record and by no live one's, was taken by the dead one.
//! No timeout is involved. Positions are 64-bit and never wrap in practice; one at or past
//! [`MAX_POSITION`](crate::layout::MAX_POSITION) is reported as corruption because it could not
//! be written into a claim record.

use crate::error::{Error, Result};
use crate::layout::{
    MAX_CLAIM_COUNT, MAX_POSITION, MPMC_POOL_REF, Participant, RecordType, SLOT_PAYLOAD,
    decode_header, encode_claim, encode_header,
};
use crate::region::{DataRange, Memory, Until, Watch};
use crate::sync::AtomicU64;
use crate::sync::Ordering::{Acquire, Relaxed, Release, SeqCst};

/// A try_ call gives up with `WouldBlock("contended")` after this many lost CAS races (each one
/// means another participant made progress). Keeps a hostile writer that keeps moving the cursor
/// from holding a non-blocking call forever.
const MAX_CAS_RETRIES: u32 = 1 << 16;

/// Sets every slot free for its first lap: `seq(i) = i`. Done by the creator before the segment
/// turns ready (and by the loom model's memory).
pub(crate) fn initialise(mem: &Memory) {
    for i in 0..mem.geometry().capacity {
        // Relaxed: the segment is published to other processes by the Release of its state.
        mem.slot_seq(i).store(i, Relaxed);
    }
}

fn corrupted(what: impl Into<String>) -> Error {
    Error::Corrupted(what.into())
}

/// Which turn of a slot a side waits for: producers want `seq == p`, consumers `seq == p + 1`.
#[derive(Clone, Copy)]
enum Turn {
    Produce,
    Consume,
}

impl Turn {
    /// `seq - p` when the slot of position `p` is this side's.
    #[inline(always)]
    fn offset(self) -> u64 {
        match self {
            Turn::Produce => 0,
            Turn::Consume => 1,
        }
    }
}

/// Takes up to `max` consecutive positions from `cursor` whose slots are at `turn`, recording
/// the claim in `me` before the CAS. Returns the first position and the count.
///
/// With `fits: Some(cap)` (consumers only), a first frame longer than `cap` is not taken:
/// `BufferTooSmall` is returned and the frame stays in the ring. Its header is read before the
/// CAS; if the slot changed hands meanwhile the CAS fails and the check is repeated.
///
/// A call that wrote a claim record and then takes nothing (its CAS lost, then the ring was
/// found full or empty) clears the record again: a claim record that covers a position is
/// then either its holder's or one about to be rewritten, which is what the coordinator's
/// repair relies on (`repair.rs`).
#[inline(always)]
fn take(
    mem: &Memory,
    cursor: &AtomicU64,
    me: &Participant,
    turn: Turn,
    max: u64,
    fits: Option<usize>,
) -> Result<(u64, u64)> {
    let mut wrote_claim = false;
    let r = take_loop(mem, cursor, me, turn, max, fits, &mut wrote_claim);
    if r.is_err() && wrote_claim {
        // Release: pairs with the Acquire in `repair::covered`, like the record it replaces.
        me.claim.store(encode_claim(0, 0), Release);
    }
    r
}

#[inline(always)]
fn take_loop(
    mem: &Memory,
    cursor: &AtomicU64,
    me: &Participant,
    turn: Turn,
    max: u64,
    fits: Option<usize>,
    wrote_claim: &mut bool,
) -> Result<(u64, u64)> {
    let max = max.clamp(1, MAX_CLAIM_COUNT);
    let offset = turn.offset();
    // Relaxed: only a guess; the Acquire of `seq` below is what orders the slot's bytes.
    let mut pos = cursor.load(Relaxed);
    let mut retries = 0;
    loop {
        if pos >= MAX_POSITION {
            return Err(corrupted(format!(
                "MPMC position {pos} is past the largest a claim record can hold"
            )));
        }
        // Acquire: pairs with the Release stores of `seq` in `commit_slot` / `release_slot`.
        let seq = mem.slot_seq(pos).load(Acquire);
        let diff = seq.wrapping_sub(pos + offset) as i64;
        if diff == 0 {
            if let Some(cap) = fits {
                // Relaxed: ordered after the producer's store by the Acquire of `seq` above.
                let h = decode_header(mem.slot_header(pos).load(Relaxed));
                let len = match h.ty {
                    Some(RecordType::Data) => h.len as usize,
                    // A message in the pool: its length is the reference's second word.
                    Some(RecordType::Pool) => pool_ref(mem, pos).map_or(0, |r| r.len),
                    _ => 0,
                };
                if len > cap {
                    // Recheck that the slot is still this position's before reporting it.
                    let now = cursor.load(Relaxed);
                    if now == pos {
                        return Err(Error::BufferTooSmall { needed: len, cap });
                    }
                    pos = now;
                    continue;
                }
            }
            let mut n = 1;
            // Acquire: as above, for every further slot of the batch.
            while n < max && mem.slot_seq(pos + n).load(Acquire) == pos + n + offset {
                n += 1;
            }
            // Release: pairs with the Acquire in `repair::covered`: a coordinator that sees
            // this record also sees everything this participant did before (its commits and
            // releases of earlier positions). Also published by the CAS's Release.
            me.claim.store(encode_claim(pos, n), Release);
            *wrote_claim = true;
            // Release on success: a coordinator that Acquire-loads the cursor sees the claim.
            // SeqCst: a producer's claim is also one side of the resize handshake (see
            // `ProducerCore::try_claim`); a read-modify-write costs the same on x86.
            match cursor.compare_exchange_weak(pos, pos + n, SeqCst, Relaxed) {
                Ok(_) => return Ok((pos, n)),
                Err(now) => pos = now,
            }
        } else if diff < 0 {
            return Err(Error::WouldBlock(match turn {
                Turn::Produce => "full",
                Turn::Consume => "empty",
            }));
        } else {
            // The slot is ahead of `pos`: someone took `pos` after our load. The Acquire above
            // makes the CAS that moved the cursor past `pos` visible now, so an unchanged
            // cursor means the slot lies.
            let now = cursor.load(Relaxed);
            if now == pos {
                return Err(corrupted(format!(
                    "slot sequence {seq} is ahead of cursor position {pos}"
                )));
            }
            pos = now;
        }
        retries += 1;
        if retries > MAX_CAS_RETRIES {
            return Err(Error::WouldBlock("contended"));
        }
    }
}

/// What a side that found the ring full (producer) or empty (consumer) watches: the sequence
/// word of the slot at the cursor's position, until it reaches that side's turn (or passes it,
/// when others took the position meanwhile).
#[inline(always)]
fn watch<'m>(mem: &'m Memory, cursor: &AtomicU64, turn: Turn) -> Watch<'m> {
    // Relaxed: only a hint; `take` re-reads everything it relies on. Wrapping: the cursor may
    // hold anything (`take` reports a position past `MAX_POSITION`).
    let pos = cursor.load(Relaxed);
    Watch::new(
        mem.slot_seq(pos),
        Until::Reached(pos.wrapping_add(turn.offset())),
    )
}

/// Checks the two cursors against each other, for a blocked call that has seen nothing for a
/// while (`wait::Woke::Recheck`): a damaged cursor can leave a ring that looks full or empty
/// for ever, which the operation itself cannot tell from a quiet one. The enqueue position is
/// never behind the dequeue position, nor more than a lap ahead of it, and each bound is
/// checked in the load order under which it holds however the cursors move meanwhile:
///
/// * `deq <= enq`, loading `deq` first: the value `d` was stored by the CAS (Release) of a
///   consumer that had seen `seq(d - 1) == d` (Acquire), stored (Release) by whoever committed
///   position `d - 1` after its CAS took it, moving the enqueue cursor to `d` or past. The
///   Acquire load of `d` makes that CAS happen before the load of `enq` after it.
/// * `enq <= deq + slots`, loading `enq` first: the value `e` was stored by the CAS of a
///   producer (or of a repairing coordinator) that had seen the slot of position `e - 1` free
///   for that lap (Acquire), released (Release) by whoever had taken position `e - 1 - slots`,
///   after its CAS moved the dequeue cursor past it. (The repair's move in place takes
///   `p + slots` only after it saw the dequeue cursor past `p`, with Acquire.)
///
/// Both cursors are also checked to move forward and to stay below `MAX_POSITION`. Returns
/// the dequeue position and the second enqueue position it loaded.
pub(crate) fn check_cursors(mem: &Memory) -> Result<(u64, u64)> {
    let slots = mem.geometry().capacity;
    let (enq, deq) = (&mem.producer_line().position, &mem.consumer_line().position);
    // Acquire (all three): see above.
    let e1 = enq.load(Acquire);
    let d = deq.load(Acquire);
    let e2 = enq.load(Acquire);
    if e2 >= MAX_POSITION || d >= MAX_POSITION || e1 > e2 || d > e2 || e1 > d + slots {
        return Err(corrupted(format!(
            "MPMC cursors out of order: dequeue position {d}, enqueue position {e1} then {e2}, \
             {slots} slots"
        )));
    }
    Ok((d, e2))
}

/// A committed or aborted write: the slot's header, then `seq = pos + 1`.
#[inline(always)]
pub(crate) fn commit_slot(mem: &Memory, pos: u64, header: u64) {
    // Relaxed: published by the Release below.
    mem.slot_header(pos).store(header, Relaxed);
    // Release: pairs with the consumer's Acquire of `seq` in `take`.
    mem.slot_seq(pos).store(pos + 1, Release);
}

/// Positions taken by a producer: `count` slots starting at `first`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Claimed {
    first: u64,
    count: u64,
}

impl Claimed {
    /// Number of slots taken.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// The `i`-th position of the claim.
    pub(crate) fn position(&self, i: u64) -> u64 {
        debug_assert!(i < self.count);
        self.first + i
    }
}

/// The payload bytes of the slot of `pos`, `len` long (`len <= max_frame_size`).
#[inline(always)]
pub(crate) fn payload(mem: &Memory, pos: u64, len: usize) -> Result<DataRange> {
    mem.range(mem.slot_start(pos) + SLOT_PAYLOAD, len)
        .ok_or_else(|| corrupted("slot outside the data region"))
}

/// Producer side: claims slots, commits or aborts them.
#[derive(Debug)]
pub(crate) struct ProducerCore {
    index: u32,
    /// The owner word's incarnation (for pool tags).
    incarnation: u32,
    /// Messages put in the pool so far (the low bits of their tags).
    seq: u32,
    /// Where the next search of the pool starts: after the last run taken.
    hint: u64,
}

impl ProducerCore {
    /// Producer `index` of the participant table (already owned by the caller).
    pub(crate) fn new(index: u32) -> ProducerCore {
        ProducerCore {
            index,
            incarnation: 0,
            seq: 0,
            hint: 0,
        }
    }

    /// The same, owning the entry as `incarnation` (the tags of its messages in the pool say so).
    pub(crate) fn with_incarnation(mut self, incarnation: u32) -> ProducerCore {
        self.incarnation = incarnation;
        self
    }

    /// Starts a message in the pool: records its tag in this producer's entry (so that a repair
    /// running meanwhile leaves the chunks it is about to take alone) and returns it.
    pub(crate) fn begin_pooled(&mut self, mem: &Memory) -> u64 {
        self.seq = self.seq.wrapping_add(1).max(1);
        let tag = pool_tag(self.index, self.incarnation, self.seq);
        // Release: a repair that sees a chunk holding this tag (its Acquire pairs with the
        // allocating CAS, ordered after this store) sees this record too.
        self.me(mem).pool_tag.store(tag, Release);
        tag
    }

    /// Ends the message begun with `begin_pooled`: its chunks are referenced by a slot, or
    /// were freed.
    pub(crate) fn end_pooled(&mut self, mem: &Memory) {
        // Release: after the commit of the slot that references the chunks (a repair that sees
        // the record gone sees the reference).
        self.me(mem).pool_tag.store(0, Release);
    }

    /// Takes consecutive free chunks for a message of `len` bytes under `tag`: `WouldBlock`
    /// if the pool has no such run now. A run found free is taken chunk by chunk; one taken
    /// from under us gives back what we took of it, and the search goes on after it.
    pub(crate) fn try_alloc(&mut self, mem: &Memory, len: usize, tag: u64) -> Result<PoolRef> {
        let n = mem.geometry().pool_chunks;
        let k = chunks_for(mem, len);
        let word = |i: u64| mem.pool_word(i).expect("runs are searched inside the pool");
        let mut start = if self.hint + k <= n { self.hint } else { 0 };
        let mut looked = 0u64;
        while looked <= n + k {
            if start + k > n {
                looked += n - start;
                start = 0;
                continue;
            }
            // Relaxed: a guess; the CAS below decides.
            if let Some(busy) = (start..start + k).find(|&i| word(i).load(Relaxed) != 0) {
                looked += busy + 1 - start;
                start = busy + 1;
                continue;
            }
            let mut taken = start;
            while taken < start + k {
                // AcqRel: Acquire pairs with the Release of `free_pooled` (the last reader is
                // done); Release makes our `pool_tag` record visible with the tag.
                if word(taken)
                    .compare_exchange(0, tag, crate::sync::Ordering::AcqRel, Relaxed)
                    .is_err()
                {
                    break;
                }
                taken += 1;
            }
            if taken == start + k {
                self.hint = start + k;
                return Ok(PoolRef {
                    first: start,
                    len,
                    tag,
                });
            }
            for i in start..taken {
                // Release: as in `free_pooled`.
                let _ = word(i).compare_exchange(tag, 0, Release, Relaxed);
            }
            if taken > start {
                // Release: as in `free_pooled`; a producer that found them taken looks again.
                mem.consumer_line().frees.fetch_add(1, Release);
            }
            looked += taken + 1 - start;
            start = taken + 1;
        }
        Err(Error::WouldBlock("pool full"))
    }

    /// Enqueues a reference to the message `r` in the pool: one slot, committed as `Pool`.
    pub(crate) fn try_send_ref(&mut self, mem: &Memory, r: &PoolRef) -> Result<()> {
        let pos = self.try_claim(mem, MPMC_POOL_REF, 1)?.position(0);
        let bytes = match payload(mem, pos, MPMC_POOL_REF) {
            Ok(b) => b,
            Err(e) => {
                self.abort(mem, pos);
                return Err(e);
            }
        };
        let mut words = [0u8; MPMC_POOL_REF];
        words[..8].copy_from_slice(&r.first.to_ne_bytes());
        words[8..16].copy_from_slice(&(r.len as u64).to_ne_bytes());
        words[16..].copy_from_slice(&r.tag.to_ne_bytes());
        mem.copy_in(bytes, &words);
        commit_slot(
            mem,
            pos,
            encode_header(MPMC_POOL_REF as u32, RecordType::Pool, 0, 0),
        );
        Ok(())
    }

    /// What a producer waiting for room in the pool watches: the consumer line's `frees`.
    pub(crate) fn watch_pool<'m>(&self, mem: &'m Memory, seen: u64) -> Watch<'m> {
        Watch::new(&mem.consumer_line().frees, Until::Changed(seen))
    }

    fn me<'m>(&self, mem: &'m Memory) -> &'m Participant {
        mem.participant(crate::layout::Role::Producer, self.index)
            .expect("participant index was checked on attach")
    }

    /// Takes up to `max` free slots for frames of up to `len` bytes.
    #[inline(always)]
    pub(crate) fn try_claim(&mut self, mem: &Memory, len: usize, max: u64) -> Result<Claimed> {
        let limit = mem.geometry().max_frame_size as usize;
        if len > limit {
            return Err(Error::FrameTooLarge { len, max: limit });
        }
        let cursor = &mem.producer_line().position;
        let (first, count) = take(mem, cursor, self.me(mem), Turn::Produce, max, None)?;
        // SeqCst: pairs with the coordinator's store of `moved` and with the load in
        // `drained_for_good`: either this load sees the segment replaced (and the positions
        // just taken are handed on as skips: nothing is written here any more), or the
        // consumers' later look at the cursor sees this claim, and none of them leaves before
        // it is taken (see "Online resize" in ARCHITECTURE.md).
        crate::sync::seqcst_order();
        if mem.producer_line().moved.load(SeqCst) != 0 {
            for pos in first..first + count {
                self.abort(mem, pos);
            }
            return Err(Error::WouldBlock(MOVED));
        }
        Ok(Claimed { first, count })
    }

    /// What a producer that found the ring full watches (see [`watch`]).
    #[inline(always)]
    pub(crate) fn watch<'m>(&self, mem: &'m Memory) -> Watch<'m> {
        watch(mem, &mem.producer_line().position, Turn::Produce)
    }

    /// Sends a copy of `frame`: claim one slot, then the payload, header and sequence stores
    /// back to back (the header word is computed before the copy).
    #[inline(always)]
    pub(crate) fn try_send(&mut self, mem: &Memory, frame: &[u8]) -> Result<()> {
        let pos = self.try_claim(mem, frame.len(), 1)?.position(0);
        let header = encode_header(frame.len() as u32, RecordType::Data, 0, 0);
        let bytes = match payload(mem, pos, frame.len()) {
            Ok(b) => b,
            Err(e) => {
                // Taken positions are always handed on, or consumers wedge at this one.
                self.abort(mem, pos);
                return Err(e);
            }
        };
        mem.copy_in(bytes, frame);
        commit_slot(mem, pos, header);
        Ok(())
    }

    /// Commits position `pos` of a claim as a frame of `len` bytes.
    #[inline(always)]
    pub(crate) fn commit(&mut self, mem: &Memory, pos: u64, len: usize, flags: u8) {
        debug_assert!(len <= mem.geometry().max_frame_size as usize);
        commit_slot(
            mem,
            pos,
            encode_header(len as u32, RecordType::Data, flags, 0),
        );
    }

    /// Gives up position `pos` of a claim: consumers will step over it.
    #[inline]
    pub(crate) fn abort(&mut self, mem: &Memory, pos: u64) {
        commit_slot(mem, pos, encode_header(0, RecordType::Skip, 0, 0));
    }
}

/// A slot a consumer took: a frame, or nothing to deliver (a skip).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Slot {
    /// A frame: its payload and `FLAG_*` bits.
    Frame {
        /// The payload bytes.
        payload: DataRange,
        /// `FLAG_*` bits.
        flags: u8,
    },
    /// An aborted or repaired position.
    Skip,
    /// A message in the pool: its bytes (contiguous chunks), flags and reference.
    Pooled {
        /// The message's bytes, in the pool.
        payload: DataRange,
        /// `FLAG_*` bits.
        flags: u8,
        /// Where it is and whose it is.
        reference: PoolRef,
    },
}

/// Consumer side: takes committed slots, releases them.
#[derive(Debug)]
pub(crate) struct ConsumerCore {
    index: u32,
}

impl ConsumerCore {
    /// Consumer `index` of the participant table (already owned by the caller).
    pub(crate) fn new(index: u32) -> ConsumerCore {
        ConsumerCore { index }
    }

    fn me<'m>(&self, mem: &'m Memory) -> &'m Participant {
        mem.participant(crate::layout::Role::Consumer, self.index)
            .expect("participant index was checked on attach")
    }

    /// Takes up to `max` committed slots; with `fits`, see [`take`].
    #[inline(always)]
    pub(crate) fn try_take(
        &mut self,
        mem: &Memory,
        max: u64,
        fits: Option<usize>,
    ) -> Result<Claimed> {
        let cursor = &mem.consumer_line().position;
        let (first, count) = take(mem, cursor, self.me(mem), Turn::Consume, max, fits)?;
        Ok(Claimed { first, count })
    }

    /// What a consumer that found the ring empty watches (see [`watch`]).
    #[inline(always)]
    pub(crate) fn watch<'m>(&self, mem: &'m Memory) -> Watch<'m> {
        watch(mem, &mem.consumer_line().position, Turn::Consume)
    }

    /// What the slot of a taken position holds. A slot with a bad header is reported as
    /// corrupted; the caller must still release it, so the ring does not wedge.
    #[inline(always)]
    pub(crate) fn slot(&self, mem: &Memory, pos: u64) -> Result<Slot> {
        // Relaxed: ordered after the producer's store by the Acquire of `seq` in `take`.
        let word = mem.slot_header(pos).load(Relaxed);
        let h = decode_header(word);
        match h.ty {
            Some(RecordType::Data) if h.len <= mem.geometry().max_frame_size => Ok(Slot::Frame {
                payload: payload(mem, pos, h.len as usize)?,
                flags: h.flags,
            }),
            Some(RecordType::Skip) => Ok(Slot::Skip),
            Some(RecordType::Pool) if h.len as usize == MPMC_POOL_REF => {
                let reference = pool_ref(mem, pos)?;
                Ok(Slot::Pooled {
                    payload: reference.bytes(mem)?,
                    flags: h.flags,
                    reference,
                })
            }
            _ => Err(bad_slot(mem, pos, word)),
        }
    }

    /// Releases the slot of `pos`: free for the producer one lap later.
    #[inline(always)]
    pub(crate) fn release(&mut self, mem: &Memory, pos: u64) {
        // Release: pairs with the producer's Acquire of `seq` in `take`.
        mem.slot_seq(pos)
            .store(pos + mem.geometry().capacity, Release);
    }
}

/// A message in the pool: `len` bytes in the chunks from `first` on, held under `tag`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PoolRef {
    /// The first chunk.
    pub(crate) first: u64,
    /// The message's length.
    pub(crate) len: usize,
    /// The tag its chunk words hold (`pool_tag`).
    pub(crate) tag: u64,
}

impl PoolRef {
    /// Chunks the message takes.
    pub(crate) fn chunks(&self, mem: &Memory) -> u64 {
        chunks_for(mem, self.len)
    }

    /// The message's bytes.
    pub(crate) fn bytes(&self, mem: &Memory) -> Result<DataRange> {
        let geo = mem.geometry();
        // No overflow: first < chunks and chunk * chunks fits the data region.
        mem.range(
            geo.pool_data + self.first as usize * geo.pool_chunk as usize,
            self.len,
        )
        .ok_or_else(|| corrupted("a pool reference outside the data region"))
    }
}

/// Chunks a message of `len` bytes takes in the pool (at least one).
pub(crate) fn chunks_for(mem: &Memory, len: usize) -> u64 {
    (len as u64)
        .div_ceil(u64::from(mem.geometry().pool_chunk.max(1)))
        .max(1)
}

/// The tag of a message producer `index` (whose owner word has `incarnation`) puts in the
/// pool: its `seq`-th (never zero). Tags name their producer entry and incarnation, so that a
/// repair can tell whose chunks are whose (`repair::pool_gc`).
pub(crate) fn pool_tag(index: u32, incarnation: u32, seq: u32) -> u64 {
    (u64::from(incarnation & 0x3f_ffff) << 42) | (u64::from(index & 0x3ff) << 32) | u64::from(seq)
}

/// The producer entry and incarnation (its low 22 bits) of a tag.
pub(crate) fn tag_owner(tag: u64) -> (u32, u32) {
    (((tag >> 32) & 0x3ff) as u32, (tag >> 42) as u32)
}

/// Reads and checks the pool reference in the slot of `pos`.
pub(crate) fn pool_ref(mem: &Memory, pos: u64) -> Result<PoolRef> {
    let geo = mem.geometry();
    let mut words = [0u8; MPMC_POOL_REF];
    mem.copy_out(payload(mem, pos, MPMC_POOL_REF)?, &mut words);
    let word = |i: usize| u64::from_ne_bytes(words[8 * i..8 * i + 8].try_into().unwrap());
    let (first, len, tag) = (word(0), word(1), word(2));
    let fits = tag != 0
        && len >= 1
        && len <= geo.max_message_size
        && first < geo.pool_chunks
        && len.div_ceil(u64::from(geo.pool_chunk)) <= geo.pool_chunks - first;
    if !fits {
        return Err(corrupted(format!(
            "bad pool reference at position {pos}: chunk {first}, {len} bytes, tag {tag:#x} \
             ({} chunks of {} bytes, messages up to {})",
            geo.pool_chunks, geo.pool_chunk, geo.max_message_size
        )));
    }
    Ok(PoolRef {
        first,
        // No truncation: at most max_message_size, which fits the address space.
        len: len as usize,
        tag,
    })
}

/// Frees the chunks of `r`: each chunk word that still holds its tag goes back to zero (a word
/// that does not was freed already, by a repair, and may be someone else's now), then the
/// consumer line's `frees` count moves on, for a producer waiting for room in the pool.
/// Returns how many chunks this call freed.
pub(crate) fn free_pooled(mem: &Memory, r: &PoolRef) -> u64 {
    let mut freed = 0;
    for i in r.first..r.first + r.chunks(mem) {
        let Some(w) = mem.pool_word(i) else { break };
        // Release: pairs with the Acquire of the allocating CAS in `try_alloc`: our reads of
        // the chunk happen before the next writer's writes.
        if w.compare_exchange(r.tag, 0, Release, Relaxed).is_ok() {
            freed += 1;
        }
    }
    if freed > 0 {
        // Release: pairs with the Acquire of a waiting producer's watch.
        mem.consumer_line().frees.fetch_add(1, Release);
    }
    freed
}

/// What is wrong with a slot header `ConsumerCore::slot` refused.
#[cold]
#[inline(never)]
fn bad_slot(mem: &Memory, pos: u64, word: u64) -> Error {
    let h = decode_header(word);
    corrupted(format!(
        "bad slot header {word:#018x} at position {pos} (type {:?}, length {}, max frame {})",
        h.ty,
        h.len,
        mem.geometry().max_frame_size
    ))
}

/// Frames committed and not yet taken, as a statistic: the cursors are read without
/// synchronisation and the difference clamped to `[0, slots]`.
/// The `WouldBlock` of a claim in a segment a resize replaced: the producer moves on to the new
/// one and tries again there.
pub(crate) const MOVED: &str = "moved";

/// Whether nothing will ever again be taken from this segment, which a resize replaced: a
/// consumer may leave it for the new one. Every position claimed was taken (the cursors are
/// equal), every slot taken was released (none held by a consumer, live or dead, whose repair
/// could deliver it again here), and this was seen after the replacement: a producer that
/// claims a position after its `moved` load read zero is seen by the look at the cursor here
/// (the SeqCst handshake of `ProducerCore::try_claim`); one that claims later hands it on as a
/// skip. The caller checked `moved` is set (a cheap filter).
pub(crate) fn drained_for_good(mem: &Memory) -> bool {
    let slots = mem.geometry().capacity;
    // SeqCst: pairs with the producers' claim CAS and load in `ProducerCore::try_claim`.
    if mem.producer_line().moved.load(SeqCst) == 0 {
        return false;
    }
    crate::sync::seqcst_order();
    // Acquire: pairs with the consumers' Release CAS of the dequeue position.
    let head = mem.consumer_line().position.load(Acquire);
    // SeqCst: the other load of the handshake.
    if mem.producer_line().position.load(SeqCst) != head || head >= MAX_POSITION {
        return false;
    }
    // Every slot of the last lap released: its `seq` is its position plus the slot count
    // (Acquire: pairs with the Release of `release_slot`; a repair's redelivery enqueues its
    // copy before it releases the held slot, so seeing the slot released, the cursor loaded
    // below shows the copy).
    let released =
        (head.saturating_sub(slots)..head).all(|p| mem.slot_seq(p).load(Acquire) == p + slots);
    // SeqCst: as above.
    released && mem.producer_line().position.load(SeqCst) == head
}

/// Whether every position left between the cursors is a committed skip: what producers that
/// found the segment replaced after their claim leave behind (`ProducerCore::try_claim`), once
/// every consumer has left for the new segment. Nothing there is for anyone.
pub(crate) fn only_skips_left(mem: &Memory) -> bool {
    // Acquire (both): pairs with the cursors' Release CASes.
    let head = mem.consumer_line().position.load(Acquire);
    let tail = mem.producer_line().position.load(Acquire);
    if tail < head || tail - head > mem.geometry().capacity || tail >= MAX_POSITION {
        return false;
    }
    (head..tail).all(|p| {
        // Acquire: pairs with the Release of `commit_slot`; the header is read after it.
        mem.slot_seq(p).load(Acquire) == p + 1
            // Relaxed: ordered by the Acquire above.
            && decode_header(mem.slot_header(p).load(Relaxed)).ty == Some(RecordType::Skip)
    })
}

pub(crate) fn depth_slots(mem: &Memory) -> u64 {
    let deq = mem.consumer_line().position.load(Relaxed);
    let enq = mem.producer_line().position.load(Relaxed);
    enq.saturating_sub(deq).min(mem.geometry().capacity)
}

/// Helpers of the loom models of this ring and of its repair (`repair.rs`): an 8-byte-slot
/// model segment, and one claim-write-commit or one take, without waiting.
#[cfg(all(test, loom))]
pub(crate) mod model {
    use super::*;
    use crate::layout::{ChannelConfig, Geometry};
    use loom::sync::Arc;

    pub(crate) fn memory(slots: u64, producers: u32, consumers: u32) -> Arc<Memory> {
        let cfg = ChannelConfig::mpmc()
            .capacity(slots * 8)
            .max_frame_size(8)
            .max_producers(producers)
            .max_consumers(consumers);
        Arc::new(Memory::new(Geometry::new(&cfg).unwrap()))
    }

    /// Sends `v` if there is a free slot.
    pub(crate) fn try_send(p: &mut ProducerCore, mem: &Memory, v: u64) -> bool {
        match p.try_claim(mem, 8, 1) {
            Ok(c) => {
                let pos = c.position(0);
                mem.copy_in(payload(mem, pos, 8).unwrap(), &v.to_ne_bytes());
                p.commit(mem, pos, 8, 0);
                true
            }
            Err(Error::WouldBlock(_)) => false,
            Err(e) => panic!("{e}"),
        }
    }

    /// Takes one position if there is one, without releasing it: `(pos, Some((value, flags)))`
    /// for a frame, `(pos, None)` for a skip.
    pub(crate) fn try_take(c: &mut ConsumerCore, mem: &Memory) -> Option<(u64, Option<(u64, u8)>)> {
        match c.try_take(mem, 1, None) {
            Ok(t) => {
                let pos = t.position(0);
                Some(match c.slot(mem, pos).unwrap() {
                    Slot::Frame { payload, flags } => {
                        let mut b = [0u8; 8];
                        mem.copy_out(payload, &mut b);
                        (pos, Some((u64::from_ne_bytes(b), flags)))
                    }
                    Slot::Skip => (pos, None),
                    Slot::Pooled { .. } => panic!("these models send nothing through the pool"),
                })
            }
            Err(Error::WouldBlock(_)) => None,
            Err(e) => panic!("{e}"),
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Model checks of claim/commit/consume. Roles in spawned threads, main only joins (loom
    //! issue #392); each test asserts that the outcomes it is about were all reached.
    use super::*;
    use crate::layout::{ChannelConfig, Geometry, Role, decode_claim};
    use loom::sync::Arc;
    use std::collections::HashSet;
    use std::sync::Mutex;
    type Shared<T> = std::sync::Arc<Mutex<T>>;

    use model::{memory, try_send as send};

    /// A resize replaces the segment (the coordinator stores `moved`) while a producer claims a
    /// position and a consumer asks whether it may leave for the new segment
    /// (`drained_for_good`): it never may while a frame sent here is still to come. Both
    /// sides of the race are reached: the frame sent and the consumer staying for it, and the
    /// consumer leaving with the producer's claim handed on as a skip (the producer moves).
    #[test]
    fn a_consumer_never_leaves_a_replaced_ring_that_a_frame_still_comes_to() {
        let outcomes = Shared::new(Mutex::new(HashSet::new()));
        let outcomes2 = outcomes.clone();
        loom::model(move || {
            let mem = memory(2, 1, 1);
            let m = mem.clone();
            let producer = loom::thread::spawn(move || send(&mut ProducerCore::new(0), &m, 7));
            let m = mem.clone();
            let coord = loom::thread::spawn(move || {
                // SeqCst: as the coordinator's store in `Registry::resize`.
                m.producer_line().moved.store(2, SeqCst);
            });
            let m = mem.clone();
            let consumer = loom::thread::spawn(move || drained_for_good(&m));
            let sent = producer.join().unwrap();
            coord.join().unwrap();
            let left = consumer.join().unwrap();
            assert!(!(sent && left), "the consumer left a frame behind");
            outcomes2.lock().unwrap().insert((sent, left));
        });
        let seen = outcomes.lock().unwrap();
        assert!(
            seen.contains(&(true, false)) && seen.contains(&(false, true)),
            "{seen:?}"
        );
    }

    /// A producer sends a message through the pool and a consumer takes it and gives it back,
    /// while a repair's collection of the pool (`repair::pool_gc`) runs with nobody dead: it
    /// never frees the chunk while the producer writes it or the consumer holds it, and the
    /// chunk is free at the end whoever freed it.
    #[test]
    fn pool_collection_never_frees_a_held_chunk() {
        let outcomes = Shared::new(Mutex::new(HashSet::new()));
        let outcomes2 = outcomes.clone();
        loom::model(move || {
            let cfg = ChannelConfig::mpmc()
                .capacity(2 * 24)
                .max_frame_size(24)
                .max_producers(1)
                .max_consumers(1)
                .max_message_size(32);
            let mem = Arc::new(Memory::new(Geometry::new(&cfg).unwrap()));
            // The producer's entry is owned (a live producer, incarnation 1).
            mem.participant(Role::Producer, 0)
                .unwrap()
                .owner
                .store(crate::layout::encode_owner(7, 1), Relaxed);
            let m = mem.clone();
            let producer = loom::thread::spawn(move || {
                let mut p = ProducerCore::new(0).with_incarnation(1);
                let tag = p.begin_pooled(&m);
                let r = p.try_alloc(&m, 8, tag).unwrap();
                m.copy_in(r.bytes(&m).unwrap(), &42u64.to_ne_bytes());
                assert_eq!(
                    m.pool_word(r.first).unwrap().load(Relaxed),
                    tag,
                    "the collection freed a chunk being written"
                );
                p.try_send_ref(&m, &r).unwrap();
                p.end_pooled(&m);
            });
            let m = mem.clone();
            let consumer = loom::thread::spawn(move || {
                let mut c = ConsumerCore::new(0);
                loop {
                    match c.try_take(&m, 1, None) {
                        Ok(t) => {
                            let pos = t.position(0);
                            let Slot::Pooled {
                                payload, reference, ..
                            } = c.slot(&m, pos).unwrap()
                            else {
                                panic!("a message in the pool was sent");
                            };
                            let mut b = [0u8; 8];
                            m.copy_out(payload, &mut b);
                            assert_eq!(u64::from_ne_bytes(b), 42);
                            assert_eq!(
                                m.pool_word(reference.first).unwrap().load(Relaxed),
                                reference.tag,
                                "the collection freed a chunk a consumer holds"
                            );
                            c.release(&m, pos);
                            return free_pooled(&m, &reference);
                        }
                        Err(Error::WouldBlock(_)) => loom::thread::yield_now(),
                        Err(e) => panic!("{e}"),
                    }
                }
            });
            let m = mem.clone();
            let collector = loom::thread::spawn(move || crate::repair::pool_gc(&m, &|_, _| false));
            producer.join().unwrap();
            let by_consumer = consumer.join().unwrap();
            let by_collector = collector.join().unwrap();
            assert_eq!(
                by_consumer + by_collector,
                1,
                "the chunk is freed exactly once"
            );
            assert_eq!(mem.pool_word(0).unwrap().load(Relaxed), 0);
            outcomes2.lock().unwrap().insert(by_collector);
        });
        // Both: the consumer freed it, and the collection did (after the slot's release).
        assert_eq!(
            outcomes.lock().unwrap().len(),
            2,
            "{:?}",
            outcomes.lock().unwrap()
        );
    }

    /// Takes and releases one position: `Some(Some(value))` for a frame, `Some(None)` for a
    /// skip, `None` when the ring is empty.
    fn recv(c: &mut ConsumerCore, mem: &Memory) -> Option<Option<u64>> {
        model::try_take(c, mem).map(|(pos, frame)| {
            c.release(mem, pos);
            frame.map(|(v, _)| v)
        })
    }

    /// Two producers race for one slot of a two-slot ring while a consumer drains: each frame
    /// arrives exactly once, whole, and the claim records name the positions each took.
    #[test]
    fn two_producers_one_consumer() {
        let orders = Shared::new(Mutex::new(HashSet::new()));
        let orders2 = orders.clone();
        loom::model(move || {
            let mem = memory(2, 2, 1);
            let mut handles = Vec::new();
            for id in 0..2u64 {
                let m = mem.clone();
                handles.push(loom::thread::spawn(move || {
                    let mut p = ProducerCore::new(id as u32);
                    while !send(&mut p, &m, 100 + id) {
                        loom::thread::yield_now();
                    }
                    let (first, count) = decode_claim(
                        m.participant(Role::Producer, id as u32)
                            .unwrap()
                            .claim
                            .load(Relaxed),
                    );
                    assert_eq!(count, 1);
                    first
                }));
            }
            let m = mem.clone();
            let orders = orders2.clone();
            let consumer = loom::thread::spawn(move || {
                let mut c = ConsumerCore::new(0);
                let mut got = Vec::new();
                while got.len() < 2 {
                    match recv(&mut c, &m) {
                        Some(Some(v)) => got.push(v),
                        Some(None) => panic!("unexpected skip"),
                        None => loom::thread::yield_now(),
                    }
                }
                got
            });
            let firsts: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let got = consumer.join().unwrap();
            let mut sorted = got.clone();
            sorted.sort();
            assert_eq!(sorted, vec![100, 101]);
            let mut positions = firsts.clone();
            positions.sort();
            assert_eq!(
                positions,
                vec![0, 1],
                "claim records must name distinct positions"
            );
            // The frame at position 0 is the first received.
            let first_sender = firsts.iter().position(|&f| f == 0).unwrap() as u64;
            assert_eq!(got[0], 100 + first_sender);
            orders.lock().unwrap().insert(got);
        });
        let orders = orders.lock().unwrap();
        assert_eq!(
            orders.len(),
            2,
            "both producers must win the first slot in some execution"
        );
    }

    /// `check_cursors` never reports a sound ring as damaged: a checker loads the cursors
    /// while a producer laps a two-slot ring (three frames) and a consumer takes them. Each
    /// role makes a bounded number of attempts. Loading the cursors Relaxed, or checking either
    /// bound in the other load order, makes the model fail.
    #[test]
    fn cursor_check_never_reports_a_sound_ring() {
        let seen = Shared::new(Mutex::new(HashSet::new()));
        let seen2 = seen.clone();
        loom::model(move || {
            let mem = memory(2, 1, 1);
            let m = mem.clone();
            let producer = loom::thread::spawn(move || {
                let mut p = ProducerCore::new(0);
                let mut v = 0;
                for _ in 0..4 {
                    if v < 3 && send(&mut p, &m, v) {
                        v += 1;
                    } else {
                        loom::thread::yield_now();
                    }
                }
            });
            let m = mem.clone();
            let consumer = loom::thread::spawn(move || {
                let mut c = ConsumerCore::new(0);
                for _ in 0..3 {
                    if recv(&mut c, &m).is_none() {
                        loom::thread::yield_now();
                    }
                }
            });
            let m = mem.clone();
            let checker = loom::thread::spawn(move || check_cursors(&m).unwrap());
            producer.join().unwrap();
            consumer.join().unwrap();
            let (_, enq) = checker.join().unwrap();
            seen2.lock().unwrap().insert(enq);
        });
        let seen = seen.lock().unwrap();
        assert!(
            seen.contains(&3),
            "the checker never ran while the producer was a lap on: {seen:?}"
        );
    }

    /// One producer, two consumers on a two-slot ring with an aborted claim in between: the
    /// skip and the frame are each consumed exactly once, and each consumer wins the frame in
    /// some execution. Consumers make a bounded number of attempts; a drainer spawned after
    /// they are joined takes what is left.
    #[test]
    fn one_producer_two_consumers_with_abort() {
        let winners = Shared::new(Mutex::new(HashSet::new()));
        let winners2 = winners.clone();
        loom::model(move || {
            let mem = memory(2, 1, 2);
            let m = mem.clone();
            let producer = loom::thread::spawn(move || {
                let mut p = ProducerCore::new(0);
                let c = p.try_claim(&m, 8, 1).unwrap();
                p.abort(&m, c.position(0));
                assert!(send(&mut p, &m, 7), "a two-slot ring has room for two");
            });
            let consumers: Vec<_> = (0..2u32)
                .map(|id| {
                    let m = mem.clone();
                    loom::thread::spawn(move || {
                        let mut c = ConsumerCore::new(id);
                        let mut got = Vec::new();
                        for _ in 0..2 {
                            match recv(&mut c, &m) {
                                Some(slot) => got.push(slot),
                                None => loom::thread::yield_now(),
                            }
                        }
                        got
                    })
                })
                .collect();
            producer.join().unwrap();
            let mut taken: Vec<Vec<Option<u64>>> =
                consumers.into_iter().map(|h| h.join().unwrap()).collect();
            let m = mem.clone();
            let drainer = loom::thread::spawn(move || {
                let mut c = ConsumerCore::new(0);
                let mut got = Vec::new();
                while let Some(slot) = recv(&mut c, &m) {
                    got.push(slot);
                }
                got
            });
            taken.push(drainer.join().unwrap());
            let all: Vec<Option<u64>> = taken.iter().flatten().copied().collect();
            assert_eq!(all.len(), 2, "two positions, each consumed once: {taken:?}");
            assert_eq!(all.iter().flatten().collect::<Vec<_>>(), vec![&7]);
            let winner = taken.iter().position(|t| t.contains(&Some(7))).unwrap();
            winners2.lock().unwrap().insert(winner);
        });
        let winners = winners.lock().unwrap();
        assert!(
            winners.contains(&0) && winners.contains(&1),
            "each consumer must win the frame in some execution: {winners:?}"
        );
    }
}

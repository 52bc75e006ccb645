//! Crash repair: what the coordinator does to a channel when one of its participants dies, and
//! when it adopts a segment whose previous coordinator died. Ring-level code over a [`Memory`],
//! with no system call, so that loom can check it against live producers and consumers.
//!
//! A dead participant is known to the caller (the coordinator confirmed the death); every other
//! entry with an owner counts as live. Repair never guesses with a timeout: it reads what the
//! dead participant recorded in its entry (layout, "Participant") and decides from the rings'
//! own state, or reports the repair *pending* when a live participant's claim record still
//! covers the position in question, in which case the caller runs it again shortly (the live
//! participant is between a lost CAS and its next claim, a window of a few instructions unless
//! it is descheduled).
//!
//! | dead participant | holds | repair |
//! |---|---|---|
//! | SPSC producer | an unpublished record or batch (zero header) | nothing in the ring: a successor producer walks from the published tail to the first zero header and overwrites what was never published |
//! | SPSC consumer | frames in `[released, delivered)` | the head is published up to `released`, giving the producer the space of everything consumed; a successor resumes at `released` and flags `[released, delivered)` redelivered |
//! | MPMC producer | positions it took and never committed: `seq == p` with the cursor past `p` | committed as `Skip` records, so consumers step over them |
//! | MPMC consumer | positions it took and never released: `seq == p + 1` with the cursor past `p` | each frame enqueued again, flagged redelivered, and its slot released |
//! | anyone parked | one count in a cursor line's `waiters` | taken back |
//!
//! The order of the loads matters where live participants run concurrently. A position is
//! *stuck* when the cursor (loaded with Acquire) is past it and its `seq` still says that the
//! taker has not finished. The CAS that moved the cursor past the position was made by the
//! participant that took it, right after writing a claim record that covers it (Release), so
//! the Acquire load of the cursor makes that record, or a later one of the same participant,
//! visible. If no live record covers the position, the taker is dead, or is live but has since
//! moved on, in which case it finished with the position first: the claim loads are Acquire
//! (pairing with the Release claim stores in `mpmc::take`), so the `seq` loaded again after them
//! shows the finish. Only a position still stuck after that second load is repaired.

use crate::error::{Error, Result};
use crate::layout::{
    FLAG_REDELIVERED, Kind, MAX_POSITION, PARKED_NONE, PARKED_ON_CONSUMER, PARKED_ON_PRODUCER,
    Participant, RecordType, Role, decode_claim, decode_header, encode_claim, encode_header,
};
use crate::mpmc;
use crate::region::Memory;
use crate::spsc;
use crate::sync::Ordering::{Acquire, Relaxed, Release};

/// What one repair pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Positions turned into skip records (MPMC producers).
    pub skipped: u64,
    /// Frames that will be delivered again, flagged redelivered.
    pub redelivered: u64,
    /// Positions given back without a frame to deliver (a consumer held a skip or garbage).
    pub released: u64,
    /// Something could not be decided yet: run the repair again.
    pub pending: bool,
}

impl Repaired {
    fn add(&mut self, other: Repaired) {
        self.skipped += other.skipped;
        self.redelivered += other.redelivered;
        self.released += other.released;
        self.pending |= other.pending;
    }
}

fn corrupted(what: impl Into<String>) -> Error {
    Error::Corrupted(what.into())
}

/// Repairs what the dead owner of entry `index` of `role` left in the rings. `is_dead(role, i)`
/// says which other entries belong to participants known to be dead (their records do not
/// count as live). Does not free the entry: the caller does that once nothing is pending.
/// Returns what was done; on `pending`, call it again later.
pub fn repair_participant(
    mem: &Memory,
    role: Role,
    index: u32,
    is_dead: &dyn Fn(Role, u32) -> bool,
) -> Result<Repaired> {
    let entry = mem
        .participant(role, index)
        .ok_or_else(|| Error::InvalidArgument(format!("no {role} entry {index}")))?;
    let done = match (mem.geometry().kind, role) {
        (Kind::Spsc, Role::Producer) => Repaired::default(),
        (Kind::Spsc, Role::Consumer) => spsc_consumer(mem, entry)?,
        (Kind::Mpmc, _) => {
            let r = mpmc_positions(mem, role, index, entry, is_dead)?;
            if !r.pending {
                // Release: pairs with the Acquire in `covered`; nothing is held any more.
                entry.claim.store(encode_claim(0, 0), Release);
            }
            r
        }
    };
    unpark(mem, entry);
    Ok(done)
}

/// Takes a dead participant's count back out of the `waiters` of the line it was parked on.
fn unpark(mem: &Memory, entry: &Participant) {
    // Relaxed: the owner is dead; its last stores were made visible by its death (the caller
    // learnt of it through the kernel).
    let line = match entry.parked.load(Relaxed) {
        PARKED_ON_PRODUCER => mem.producer_line(),
        PARKED_ON_CONSUMER => mem.consumer_line(),
        _ => return,
    };
    entry.parked.store(PARKED_NONE, Relaxed);
    // Never below zero: a hostile writer may have zeroed the count already, and a wrapped
    // count would cost every publish a FUTEX_WAKE.
    let mut cur = line.waiters.load(Relaxed);
    while cur > 0 {
        // Relaxed: the count is only a hint for wakers (see wait.rs); nothing is published.
        match line
            .waiters
            .compare_exchange_weak(cur, cur - 1, Relaxed, Relaxed)
        {
            Ok(_) => break,
            Err(now) => cur = now,
        }
    }
}

/// SPSC consumer: publish the head up to what it released and count what will be redelivered.
fn spsc_consumer(mem: &Memory, entry: &Participant) -> Result<Repaired> {
    let (released, delivered) = spsc::publish_released(mem, entry)?;
    Ok(Repaired {
        redelivered: spsc::count_frames(mem, released, delivered)?,
        ..Repaired::default()
    })
}

/// Whether a live entry of `role` (other than `except`) has a claim record covering `pos`.
fn covered(
    mem: &Memory,
    role: Role,
    except: Option<u32>,
    pos: u64,
    is_dead: &dyn Fn(Role, u32) -> bool,
) -> bool {
    let n = match role {
        Role::Producer => mem.geometry().max_producers,
        Role::Consumer => mem.geometry().max_consumers,
    };
    (0..n).filter(|&i| Some(i) != except).any(|i| {
        let Some(p) = mem.participant(role, i) else {
            return false;
        };
        // Relaxed: a free entry's record is stale (a participant finishes what it took before
        // it leaves), and a newly admitted owner's record was cleared on admission.
        if p.owner.load(Relaxed) as u32 == 0 || is_dead(role, i) {
            return false;
        }
        // Acquire: pairs with the Release claim stores in `mpmc::take` (see the module docs).
        let (first, count) = decode_claim(p.claim.load(Acquire));
        pos >= first && pos - first < count
    })
}

/// MPMC: repairs the positions of the dead participant's claim record that are still stuck.
fn mpmc_positions(
    mem: &Memory,
    role: Role,
    index: u32,
    entry: &Participant,
    is_dead: &dyn Fn(Role, u32) -> bool,
) -> Result<Repaired> {
    let slots = mem.geometry().capacity;
    // Acquire: the record was written by a process that is now dead (see `unpark`).
    let (first, count) = decode_claim(entry.claim.load(Acquire));
    if count > slots {
        return Err(corrupted(format!(
            "claim record of {role} {index} covers {count} positions of a {slots}-slot ring"
        )));
    }
    let (cursor, turn) = match role {
        Role::Producer => (&mem.producer_line().position, 0),
        Role::Consumer => (&mem.consumer_line().position, 1),
    };
    // Acquire: pairs with the Release of the CAS that moved the cursor past a stuck position,
    // making its taker's claim record visible (module docs).
    let end = cursor.load(Acquire);
    let mut done = Repaired::default();
    for pos in first..first + count {
        // Acquire: pairs with the Release stores of `seq`.
        if pos >= end || mem.slot_seq(pos).load(Acquire) != pos + turn {
            continue; // never taken, or finished
        }
        if covered(mem, role, Some(index), pos, is_dead) {
            done.pending = true;
            continue;
        }
        // Acquire: after the claim loads above, shows a finish by a taker that moved on.
        if mem.slot_seq(pos).load(Acquire) != pos + turn {
            continue;
        }
        match role {
            Role::Producer => {
                mpmc::commit_slot(mem, pos, encode_header(0, RecordType::Skip, 0, 0));
                done.skipped += 1;
            }
            Role::Consumer => done.add(redeliver(mem, pos)?),
        }
    }
    Ok(done)
}

/// Delivers the frame of a position a dead consumer held once more: enqueues a copy flagged
/// redelivered (taking a producer position under the repair line's claim record), then
/// releases the held slot. When the enqueue position is the held slot's own next lap, the frame
/// is moved there in place. A skip or a damaged slot is released without a copy.
fn redeliver(mem: &Memory, pos: u64) -> Result<Repaired> {
    // Relaxed: ordered after the dead consumer's take by the Acquire of `seq` in the caller.
    let h = decode_header(mem.slot_header(pos).load(Relaxed));
    if h.ty != Some(RecordType::Data) || h.len > mem.geometry().max_frame_size {
        release_held(mem, pos);
        return Ok(Repaired {
            released: 1,
            ..Repaired::default()
        });
    }
    let header = encode_header(h.len, RecordType::Data, h.flags | FLAG_REDELIVERED, 0);
    let r = enqueue_again(mem, pos, h.len as usize, header);
    // Release: pairs with the Acquire in `finish_repair_claim`. Whatever happened, the
    // coordinator holds no position now: a record left behind would name a position that
    // someone else may take.
    mem.repair_line().claim.store(encode_claim(0, 0), Release);
    let moved = r?;
    Ok(Repaired {
        redelivered: u64::from(moved),
        pending: !moved,
        ..Repaired::default()
    })
}

/// The enqueue half of `redeliver`: `Ok(false)` if the ring is full or producers kept winning
/// the race (try again later).
fn enqueue_again(mem: &Memory, pos: u64, len: usize, header: u64) -> Result<bool> {
    let slots = mem.geometry().capacity;
    let claim = &mem.repair_line().claim;
    let cursor = &mem.producer_line().position;
    for _ in 0..1024 {
        // Relaxed: a guess; the CAS and the Acquire of `seq` below decide.
        let q = cursor.load(Relaxed);
        if q >= MAX_POSITION || q > pos + slots {
            return Err(corrupted(format!(
                "MPMC enqueue position {q} is past the held position {pos} plus a lap"
            )));
        }
        let in_place = q == pos + slots;
        if !in_place {
            // Acquire: pairs with the consumer's Release of the slot's previous lap.
            let diff = mem.slot_seq(q).load(Acquire).wrapping_sub(q) as i64;
            if diff < 0 {
                return Ok(false); // full: the held slot stays held until consumers free one
            }
            if diff > 0 {
                continue; // someone took q; look again
            }
        }
        // Release: pairs with the Acquire in `finish_repair_claim` of a coordinator that takes
        // over after this one dies.
        claim.store(encode_claim(q, 1), Release);
        // Release on success: as in `mpmc::take`.
        if cursor
            .compare_exchange(q, q + 1, Release, Relaxed)
            .is_err()
        {
            continue;
        }
        if in_place {
            // The next free position is the held slot itself, one lap on (no producer can
            // take it while it is held): the frame is moved there by rewriting its header and
            // sequence.
            mpmc::commit_slot(mem, q, header);
        } else {
            let src = mpmc::payload(mem, pos, len)?;
            let dst = mpmc::payload(mem, q, len)?;
            mem.copy_within(src, dst);
            mpmc::commit_slot(mem, q, header);
            release_held(mem, pos);
        }
        return Ok(true);
    }
    Ok(false)
}

/// Releases a held MPMC slot: free for the producer one lap on.
fn release_held(mem: &Memory, pos: u64) {
    // Release: pairs with the producer's Acquire of `seq` in `mpmc::take`.
    mem.slot_seq(pos)
        .store(pos + mem.geometry().capacity, Release);
}

/// Finishes what a dead coordinator's repair claim left half done, when a coordinator adopts
/// the segment (MPMC; an SPSC repair line never holds a claim). A position it took and never
/// wrote is skipped; a frame it was moving in place is committed where it was going. As for a
/// dead producer, a position that a live producer's claim also covers may be that producer's
/// (the dead coordinator lost the race for it): then the repair is pending.
pub fn finish_repair_claim(mem: &Memory, is_dead: &dyn Fn(Role, u32) -> bool) -> Result<Repaired> {
    let repair = mem.repair_line();
    // Acquire: pairs with the Release claim stores in `enqueue_again`.
    let (q, count) = decode_claim(repair.claim.load(Acquire));
    let mut done = Repaired::default();
    if count == 0 || mem.geometry().kind != Kind::Mpmc {
        return Ok(done);
    }
    if count != 1 {
        return Err(corrupted(format!(
            "repair claim record covers {count} positions; a coordinator takes one at a time"
        )));
    }
    let slots = mem.geometry().capacity;
    // Acquire: pairs with the Release of the CAS that took `q` (module docs).
    let taken = q < mem.producer_line().position.load(Acquire);
    // Acquire: pairs with the Release stores of `seq`.
    let seq = mem.slot_seq(q).load(Acquire);
    if taken && seq == q {
        if covered(mem, Role::Producer, None, q, is_dead) {
            done.pending = true;
            return Ok(done);
        }
        // Acquire: as in `mpmc_positions`.
        if mem.slot_seq(q).load(Acquire) == q {
            // Taken, never written: hand it on empty.
            mpmc::commit_slot(mem, q, encode_header(0, RecordType::Skip, 0, 0));
            done.skipped += 1;
        }
    } else if taken && q >= slots && seq == q - slots + 1 {
        // Taken to move the frame of its previous lap in place (nobody else can take a
        // position whose slot is still held): finish the move.
        // Relaxed: ordered by the Acquire of `seq` above.
        let h = decode_header(mem.slot_header(q).load(Relaxed));
        let header = if h.ty == Some(RecordType::Data) && h.len <= mem.geometry().max_frame_size
        {
            encode_header(h.len, RecordType::Data, h.flags | FLAG_REDELIVERED, 0)
        } else {
            encode_header(0, RecordType::Skip, 0, 0)
        };
        mpmc::commit_slot(mem, q, header);
        done.redelivered += 1;
    }
    // Release: pairs with the Acquire above in a later adoption.
    repair.claim.store(encode_claim(0, 0), Release);
    Ok(done)
}

/// Adds a repair's figures to the channel's counters in the repair line. `freed`: a dead
/// participant's entry was freed.
pub fn count(mem: &Memory, done: &Repaired, freed: bool) {
    let r = mem.repair_line();
    // Relaxed: statistics, written by the coordinator alone.
    if freed {
        r.repairs.fetch_add(1, Relaxed);
    }
    r.redelivered.fetch_add(done.redelivered, Relaxed);
    r.skipped.fetch_add(done.skipped, Relaxed);
}

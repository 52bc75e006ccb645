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
//! | SPSC producer | an unpublished record or batch (zero header) | nothing in the ring: a successor producer walks from the published tail (or the head, if a live consumer already read past a tail the dead one never stored) to the first zero header and overwrites what was never published |
//! | SPSC consumer | frames in `[released, delivered)` | the head is published up to `released`, giving the producer the space of everything consumed; a successor resumes at `released` and flags `[released, delivered)` redelivered |
//! | MPMC producer | positions it took and never committed: `seq == p` with the cursor past `p` | committed as `Skip` records, so consumers step over them |
//! | MPMC consumer | positions it took and never released: `seq == p + 1` with the cursor past `p` | each frame enqueued again, flagged redelivered, and its slot released |
//! | broadcast producer | at most one slot marked being written (`seq == 2p + 1`) | nothing: subscribers read it as empty; a successor resumes at the first uncommitted position and writes it |
//! | broadcast subscriber | its cursor (`released`), which holds a `Block` producer back | `released` set to `GONE`, so the producer's next scan ignores it; the watch of a producer waiting on it fires |
//! | anyone parked | one count in a cursor line's `waiters` | taken back |
//! | MPMC participant, with a message pool | chunks no slot references (a message it was writing, or one whose slot it released before freeing its chunks) | freed by the pool's collection (`pool_gc`), after the rest of the repair |
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
use crate::region::Memory;
use crate::spsc;
use crate::sync::Ordering::{Acquire, Relaxed, Release};
use crate::{broadcast, mpmc};

/// What one repair pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Positions turned into skip records (MPMC producers).
    pub skipped: u64,
    /// Frames that will be delivered again, flagged redelivered.
    pub redelivered: u64,
    /// Positions given back without a frame to deliver (a consumer held a skip or garbage).
    pub released: u64,
    /// Chunks of an MPMC message pool given back (`pool_gc`).
    pub chunks_freed: u64,
    /// Something could not be decided yet: run the repair again.
    pub pending: bool,
    /// Damage found on the way (what was repairable was repaired).
    pub errors: Vec<String>,
}

impl Repaired {
    fn add(&mut self, other: Repaired) {
        self.skipped += other.skipped;
        self.redelivered += other.redelivered;
        self.released += other.released;
        self.chunks_freed += other.chunks_freed;
        self.pending |= other.pending;
        self.errors.extend(other.errors);
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
    // First, whatever else fails: a dead sleeper's count would otherwise stay, and the next
    // owner of the entry could take back a count that is not its own.
    unpark(mem, entry);
    match (mem.geometry().kind, role) {
        (Kind::Spsc, Role::Producer) | (Kind::Broadcast, Role::Producer) => Ok(Repaired::default()),
        (Kind::Broadcast, Role::Consumer) => {
            broadcast::forget_subscriber(entry);
            Ok(Repaired::default())
        }
        (Kind::Spsc, Role::Consumer) => spsc_consumer(mem, entry),
        (Kind::Mpmc, _) => {
            let mut r = mpmc_positions(mem, role, index, entry, is_dead)?;
            if !r.pending {
                // Release: pairs with the Acquire in `covered`; nothing is held any more.
                entry.claim.store(encode_claim(0, 0), Release);
                if role == Role::Producer {
                    // Release: the message it was writing is no longer being written (its
                    // chunks go back below unless a slot references them).
                    entry.pool_tag.store(0, Release);
                }
                r.chunks_freed = pool_gc(mem, is_dead);
            }
            Ok(r)
        }
    }
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
        // Acquire: pairs with the Release of `free_entry`. A free entry's record is stale (a
        // participant finishes what it took before it leaves), and the Acquire makes that
        // finish visible to the second look at the slot; a newly admitted owner's record was
        // cleared on admission.
        if p.owner.load(Acquire) as u32 == 0 || is_dead(role, i) {
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
            Role::Consumer => match redeliver(mem, pos) {
                Ok(r) => done.add(r),
                Err(e) => {
                    // The ring is damaged (its enqueue cursor is out of range): the frame cannot
                    // be enqueued again. Releasing its slot loses it but keeps the ring from
                    // wedging a lap later; the other positions are still repaired.
                    release_held(mem, pos);
                    done.released += 1;
                    done.errors.push(e.to_string());
                }
            },
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
    // A frame, or a reference to a message in the pool (whose chunks stay: the copy of the
    // reference holds them).
    let deliverable = match h.ty {
        Some(RecordType::Data) => h.len <= mem.geometry().max_frame_size,
        Some(RecordType::Pool) => {
            h.len as usize == crate::layout::MPMC_POOL_REF && mpmc::pool_ref(mem, pos).is_ok()
        }
        _ => false,
    };
    let Some(ty) = h.ty.filter(|_| deliverable) else {
        release_held(mem, pos);
        return Ok(Repaired {
            released: 1,
            ..Repaired::default()
        });
    };
    let header = encode_header(h.len, ty, h.flags | FLAG_REDELIVERED, 0);
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
        if cursor.compare_exchange(q, q + 1, Release, Relaxed).is_err() {
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

/// Gives back the chunks of an MPMC message pool that nobody holds: chunks whose tag no slot
/// references (committed, or taken by a consumer) and no live producer is writing (its
/// `pool_tag`). Run after every repair of an MPMC participant: a producer that died between
/// taking chunks and enqueuing their reference, or a consumer that died between releasing a
/// slot and freeing its chunks, leaves such chunks; no other way of leaving them exists.
/// Returns how many were freed.
///
/// Orderings. A chunk's tag is loaded with Acquire (pairs with the allocating CAS, Release),
/// so the producer's `pool_tag` record, stored before that CAS, is visible: a producer still
/// writing the message is seen writing it. A record found cleared was cleared after the commit
/// of the slot that references the chunks (Release, loaded with Acquire here), so the scan of
/// the slots, made after, sees that reference, or its release by the consumer, which frees the
/// chunks itself (both free with a compare-and-swap from the tag: one of the two does it, and
/// a reused chunk, holding another tag, is never touched). A dead producer makes no new
/// reference, so a chunk no slot references then is free for good.
pub fn pool_gc(mem: &Memory, is_dead: &dyn Fn(Role, u32) -> bool) -> u64 {
    let geo = mem.geometry();
    if geo.pool_chunks == 0 {
        return 0;
    }
    let mut candidates = Vec::new();
    for i in 0..geo.pool_chunks {
        let Some(w) = mem.pool_word(i) else { break };
        // Acquire: see above.
        let tag = w.load(Acquire);
        if tag == 0 {
            continue;
        }
        let (index, incarnation) = mpmc::tag_owner(tag);
        let writing = mem.participant(Role::Producer, index).is_some_and(|e| {
            // Acquire: as for the records in `covered`.
            let (pid, owner) = crate::layout::decode_owner(e.owner.load(Acquire));
            pid != 0
                && !is_dead(Role::Producer, index)
                && owner & 0x3f_ffff == incarnation
                && e.pool_tag.load(Acquire) == tag
        });
        if !writing {
            candidates.push((i, tag));
        }
    }
    if candidates.is_empty() {
        return 0;
    }
    let mut referenced = std::collections::HashSet::new();
    for s in 0..geo.capacity {
        // Acquire: pairs with the Release of a slot's commit (or the repair's move).
        let seq = mem.slot_seq(s).load(Acquire);
        // Committed or taken: `seq == p + 1` for the slot's position `p`.
        if seq == 0 || (seq - 1) & geo.mask() != s {
            continue;
        }
        // Relaxed: ordered after the commit by the Acquire above.
        let h = decode_header(mem.slot_header(s).load(Relaxed));
        if h.ty == Some(RecordType::Pool)
            && let Ok(r) = mpmc::pool_ref(mem, seq - 1)
        {
            referenced.insert(r.tag);
        }
    }
    let mut freed = 0;
    for (i, tag) in candidates {
        if referenced.contains(&tag) {
            continue;
        }
        let w = mem.pool_word(i).expect("a chunk found above");
        // Release: as in `mpmc::free_pooled`.
        if w.compare_exchange(tag, 0, Release, Relaxed).is_ok() {
            freed += 1;
        }
    }
    if freed > 0 {
        // Release: as in `mpmc::free_pooled`; the caller wakes waiting producers.
        mem.consumer_line().frees.fetch_add(1, Release);
    }
    freed
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
        let header = if h.ty == Some(RecordType::Data) && h.len <= mem.geometry().max_frame_size {
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

#[cfg(all(test, loom))]
mod loom_tests {
    //! Repair racing live participants. A "dead" participant's thread runs until it stops (its
    //! death); the coordinator's thread starts once it has been joined, as the real one starts
    //! after the kernel reports the death. In the concurrent phase every thread makes a bounded
    //! number of attempts (retry loops would make loom's paths unbounded); threads spawned after
    //! that phase finish the work alone and check the outcome. Main only joins and spawns (loom
    //! issue #392); each test asserts that the interleavings it is about were reached.
    use super::*;
    use crate::layout::{FLAG_REDELIVERED, encode_owner};
    use crate::mpmc::model::{try_send, try_take};
    use crate::mpmc::{ConsumerCore, ProducerCore};
    use loom::sync::Arc;
    use std::collections::HashSet;
    use std::sync::Mutex;
    type Shared<T> = std::sync::Arc<Mutex<T>>;

    /// An MPMC model segment with every entry owned (so each counts as live unless dead).
    fn memory(slots: u64, producers: u32, consumers: u32) -> Arc<Memory> {
        let mem = crate::mpmc::model::memory(slots, producers, consumers);
        for (role, n) in [(Role::Producer, producers), (Role::Consumer, consumers)] {
            for i in 0..n {
                let p = mem.participant(role, i).unwrap();
                p.owner.store(encode_owner(100 + i, 1), Relaxed);
            }
        }
        mem
    }

    /// Everything left in the ring, released: (frames, skips).
    fn drain(c: &mut ConsumerCore, mem: &Memory) -> (Vec<(u64, u8)>, usize) {
        let (mut frames, mut skips) = (Vec::new(), 0);
        while let Some((pos, f)) = try_take(c, mem) {
            c.release(mem, pos);
            match f {
                Some(f) => frames.push(f),
                None => skips += 1,
            }
        }
        (frames, skips)
    }

    fn repair_once(mem: &Memory, role: Role, index: u32) -> Repaired {
        let is_dead = move |r: Role, i: u32| r == role && i == index;
        repair_participant(mem, role, index, &is_dead).unwrap()
    }

    /// A producer dies holding a claim; its repair races a live producer taking the other slot
    /// (whose lost CAS can leave its claim record over the dead one's position for a moment).
    /// Afterwards the dead position is a skip and the live frame arrives exactly once.
    #[test]
    fn dead_producer_claim_is_skipped_while_a_producer_runs() {
        let seen = Shared::new(Mutex::new(HashSet::new()));
        let seen2 = seen.clone();
        loom::model(move || {
            let mem = memory(2, 2, 1);
            let m = mem.clone();
            let dead = loom::thread::spawn(move || {
                let mut p = ProducerCore::new(0);
                p.try_claim(&m, 8, 1).unwrap().position(0)
            });
            let m = mem.clone();
            let live = loom::thread::spawn(move || {
                assert!(
                    try_send(&mut ProducerCore::new(1), &m, 7),
                    "two slots, two claims"
                );
            });
            let dead_pos = dead.join().unwrap();
            let m = mem.clone();
            let coord = loom::thread::spawn(move || repair_once(&m, Role::Producer, 0));
            let first = coord.join().unwrap();
            let first_pending = first.pending;
            live.join().unwrap();
            let m = mem.clone();
            let finish = loom::thread::spawn(move || {
                let mut done = first.clone();
                if first.pending {
                    done = repair_once(&m, Role::Producer, 0);
                    assert!(!done.pending, "nothing live covers the position any more");
                }
                (done, drain(&mut ConsumerCore::new(0), &m))
            });
            let (done, (frames, skips)) = finish.join().unwrap();
            assert_eq!(
                (done.skipped, skips),
                (1, 1),
                "the dead position, skipped once"
            );
            assert_eq!(frames, vec![(7, 0)], "the live frame, once, unflagged");
            seen2.lock().unwrap().insert((dead_pos, first_pending));
        });
        let seen = seen.lock().unwrap();
        assert!(
            seen.contains(&(0, false)) && seen.contains(&(1, false)),
            "each producer takes position 0 in some execution: {seen:?}"
        );
        assert!(
            seen.iter().any(|&(_, pending)| pending),
            "the repair never met a live claim over the dead position: {seen:?}"
        );
    }

    /// A producer that lost the race for a position and died before its next claim leaves a
    /// stale record over the winner's position. While the live winner has not committed, the
    /// position looks stuck: the repair must leave it alone (pending), never skip over it. The
    /// winner goes on to its next position, so its record can stop covering the first between
    /// the repair's two looks at the slot: the second look sees the commit.
    #[test]
    fn a_stale_claim_of_a_dead_producer_never_skips_a_live_position() {
        let seen = Shared::new(Mutex::new(HashSet::new()));
        let seen2 = seen.clone();
        loom::model(move || {
            let mem = memory(2, 2, 1);
            let m = mem.clone();
            let dead = loom::thread::spawn(move || {
                // What `mpmc::take` leaves when its CAS for position 0 lost and it then died.
                let me = m.participant(Role::Producer, 0).unwrap();
                me.claim.store(encode_claim(0, 1), Release);
            });
            dead.join().unwrap();
            let m = mem.clone();
            let live = loom::thread::spawn(move || {
                let mut p = ProducerCore::new(1);
                assert!(try_send(&mut p, &m, 7) && try_send(&mut p, &m, 8));
            });
            let m = mem.clone();
            let coord = loom::thread::spawn(move || repair_once(&m, Role::Producer, 0));
            let first = coord.join().unwrap();
            live.join().unwrap();
            let m = mem.clone();
            let finish = loom::thread::spawn(move || {
                let done = repair_once(&m, Role::Producer, 0);
                (done, drain(&mut ConsumerCore::new(0), &m))
            });
            let (done, (frames, skips)) = finish.join().unwrap();
            assert_eq!(
                first.skipped + done.skipped,
                0,
                "nothing of the dead was stuck"
            );
            assert!(!done.pending);
            assert_eq!((frames, skips), (vec![(7, 0), (8, 0)], 0));
            seen2.lock().unwrap().insert(first.pending);
        });
        assert!(
            seen.lock().unwrap().contains(&true),
            "the repair never looked while the live producer held the position"
        );
    }

    /// A consumer dies holding one of two frames; its repair races a live consumer taking and
    /// releasing. The live consumer's frames and the final drain hold both frames exactly
    /// once, the held one flagged redelivered.
    #[test]
    fn dead_consumer_frame_is_redelivered_while_a_consumer_runs() {
        let seen = Shared::new(Mutex::new(HashSet::new()));
        let seen2 = seen.clone();
        loom::model(move || {
            let mem = memory(2, 1, 2);
            let mut p = ProducerCore::new(0);
            assert!(try_send(&mut p, &mem, 1) && try_send(&mut p, &mem, 2));
            let m = mem.clone();
            // The dead consumer may find nothing: the live one can take both frames first.
            let dead = loom::thread::spawn(move || try_take(&mut ConsumerCore::new(0), &m));
            let m = mem.clone();
            let live = loom::thread::spawn(move || {
                let mut c = ConsumerCore::new(1);
                let mut got = Vec::new();
                for _ in 0..2 {
                    if let Some((pos, f)) = try_take(&mut c, &m) {
                        c.release(&m, pos);
                        got.extend(f);
                    }
                }
                got
            });
            let held = dead.join().unwrap().map(|(_, f)| f.expect("frames only").0);
            let m = mem.clone();
            let coord = loom::thread::spawn(move || repair_once(&m, Role::Consumer, 0));
            let first = coord.join().unwrap();
            let first_pending = first.pending;
            let mut got = live.join().unwrap();
            let m = mem.clone();
            let finish = loom::thread::spawn(move || {
                let mut done = first.clone();
                if first.pending {
                    done = repair_once(&m, Role::Consumer, 0);
                    assert!(!done.pending, "the live consumer freed its slot");
                }
                (done, drain(&mut ConsumerCore::new(1), &m))
            });
            let (done, (rest, skips)) = finish.join().unwrap();
            got.extend(rest);
            got.sort();
            assert_eq!(skips, 0);
            let want = match held {
                Some(h) => {
                    assert_eq!(done.redelivered, 1);
                    let mut w = vec![(h, FLAG_REDELIVERED), (3 - h, 0)];
                    w.sort();
                    w
                }
                None => {
                    assert_eq!(done, Repaired::default(), "nothing was held");
                    vec![(1, 0), (2, 0)]
                }
            };
            assert_eq!(got, want, "both frames once, a held one flagged");
            seen2.lock().unwrap().insert((held, first_pending));
        });
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter().any(|&(h, _)| h == Some(1)) && seen.iter().any(|&(h, _)| h == Some(2)),
            "the dead consumer holds either frame in some execution: {seen:?}"
        );
        assert!(
            seen.iter().any(|&(_, pending)| pending),
            "the repair never found the ring full: {seen:?}"
        );
    }

    /// A consumer dies holding a frame of a four-slot ring; its redelivery races a producer
    /// for the enqueue position. Both frames arrive once, only the held one flagged.
    #[test]
    fn redelivery_races_a_producer_for_the_enqueue_position() {
        let seen = Shared::new(Mutex::new(HashSet::new()));
        let seen2 = seen.clone();
        loom::model(move || {
            let mem = memory(4, 1, 2);
            assert!(try_send(&mut ProducerCore::new(0), &mem, 1));
            let m = mem.clone();
            let dead = loom::thread::spawn(move || {
                try_take(&mut ConsumerCore::new(0), &m).expect("a frame waits")
            });
            dead.join().unwrap();
            let m = mem.clone();
            let producer = loom::thread::spawn(move || {
                assert!(try_send(&mut ProducerCore::new(0), &m, 2), "room for it");
            });
            let m = mem.clone();
            let coord = loom::thread::spawn(move || repair_once(&m, Role::Consumer, 0));
            let done = coord.join().unwrap();
            producer.join().unwrap();
            let m = mem.clone();
            let check = loom::thread::spawn(move || drain(&mut ConsumerCore::new(1), &m));
            let (got, skips) = check.join().unwrap();
            assert!(!done.pending && done.redelivered == 1 && skips == 0);
            let order: Vec<u64> = got.iter().map(|f| f.0).collect();
            let mut sorted = got.clone();
            sorted.sort();
            assert_eq!(sorted, vec![(1, FLAG_REDELIVERED), (2, 0)]);
            seen2.lock().unwrap().insert(order);
        });
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.len(),
            2,
            "each wins the enqueue position in some execution: {seen:?}"
        );
    }
}

//! The broadcast ring: one producer, many subscribers, every frame to every subscriber, over
//! fixed-size slots (the MPMC slot format, `layout` "MPMC slot"), with a per-slot sequence
//! word that doubles as a seqlock.
//!
//! With `S` slots, position `p` lives in slot `p % S`. A slot's `seq` says which position it
//! holds and whether that position is complete:
//!
//! | `seq`      | meaning                                                  |
//! |------------|----------------------------------------------------------|
//! | `0`        | never written                                            |
//! | `2p + 1`   | the producer is writing position `p` (nothing to read)   |
//! | `2p + 2`   | position `p` is committed                                |
//!
//! * **Write** (producer, position `p`): `seq = 2p + 1` (Relaxed), a **Release fence**, the
//!   payload and header (Relaxed), then `seq = 2p + 2` (**Release**). The marker and its fence
//!   are left out on a `Block` channel without history, where no read is validated (below):
//!   there the marker was a second store to the line the waiting subscriber polls. The
//!   producer line's
//!   `position` is then set to `p + 1` (Relaxed; read by joining and lapped subscribers and by
//!   statistics only).
//! * **Read** (subscriber at cursor `c`): load `seq` (**Acquire**, pairs with the commit's
//!   Release). `2c + 2`: the frame is there. A smaller value (an older lap, or `2c + 1`): the
//!   ring is empty for this subscriber. A larger one, for the same slot: the subscriber was
//!   lapped. A read that the producer may overwrite meanwhile (below) is *validated*: copy the
//!   bytes, an **Acquire fence**, load `seq` again (Relaxed); unchanged means the copy is
//!   intact. Otherwise the writer's marker store, made before its Release fence and its first
//!   payload store, is visible to that second load (fence-to-fence synchronisation), so a torn
//!   copy is always detected and never delivered.
//! * **Release** (subscriber): its cursor goes into its participant entry's `released`
//!   (**Release**, pairs with the producer's Acquire in *Scan*), lazily: every quarter ring, and
//!   whenever it finds the ring empty, as the SPSC consumer publishes its head.
//! * **Scan** (producer of a `Block` channel, when its cached limit is reached): a **SeqCst
//!   fence**, then each live subscriber's `released` (Acquire). The producer may write
//!   positions below `min(released) + S`; it caches that limit and does not look at the
//!   subscribers again before reaching it, so a small frame costs one cache-line transfer per
//!   subscriber (its slot's line), and nothing else on the producer's side. A
//!   `DropOldest` producer never scans.
//! * **Join** (a new subscriber, when its entry is taken: by the coordinator at admission, so
//!   that a subscriber it counts receives everything published from then on): load the
//!   producer's position `p0`, store `released = p0 - history`, a **SeqCst fence**, load the
//!   position again: `p1`, stored in the entry's `claim` as the join position. Either the
//!   producer's next scan comes after the fence in the fences' total order, and sees the new
//!   `released`, or it came before, and then `p1` is at least the tail that scan started from,
//!   which bounds the limit it cached: positions at or past `p1` are never overwritten before
//!   this subscriber releases them. Only positions below `p1` (history) may be, so those are
//!   validated reads, as every read of a `DropOldest` channel is. The subscriber's process
//!   attaches later, from its entry's `released` and `claim` (checked); until then its
//!   `released` holds a `Block` producer back, as it should. Every consumer entry of a
//!   broadcast segment starts, and is freed, with `released = GONE`, so a stale value never
//!   constrains the producer.
//! * **Lapped**: the subscriber skips to the oldest intact frame, `tail + 1 - S` (the slot of
//!   `tail` may be mid-write), but on a `Block` channel no further than `p1` (the positions
//!   from there on are protected: a producer that reached `p1 + S` with the limit of a scan
//!   made before the join's fence has left `p1` intact), and counts every skipped position at
//!   or past its join as missed.
//!   Each position after the join is so either delivered or counted, exactly once.
//!
//! A dead subscriber holds the producer back only until its repair (`repair.rs`), which sets
//! its `released` to [`GONE`]; a subscriber that closes does the same. A dead producer leaves
//! at most one slot at `2p + 1`, which subscribers read as empty; its successor resumes at the
//! first position that is not committed, and publishes it before its first scan (a death
//! between a commit and the position store leaves the position behind, and *Join* relies on it
//! showing the tail a scan starts from). Everything read from shared memory is checked: a
//! `seq` of another slot's position, a bad header, a cursor out of range are `Corrupted`.

use crate::error::{Error, Result};
use crate::layout::{
    MAX_POSITION, MESSAGE_PREFIX, Overflow, RecordType, Role, SLOT_PAYLOAD, decode_header,
    decode_owner, encode_header,
};
use crate::message::{Assembled, Assembly, Part, Src};
use crate::region::{DataRange, Memory, Until, Watch};
use crate::sync::Ordering::{Acquire, Relaxed, Release, SeqCst};
use crate::sync::fence;

/// `released` of a subscriber that is gone (closed, or dead and repaired): never a limit.
pub(crate) const GONE: u64 = u64::MAX;

/// A try_ call gives up with `WouldBlock("lapped")` after being lapped this many times in a
/// row, so that a producer that keeps overwriting cannot hold a non-blocking call forever.
const MAX_LAPS_PER_CALL: u32 = 64;

fn corrupted(what: impl Into<String>) -> Error {
    Error::Corrupted(what.into())
}

/// `seq` of a slot while the producer writes position `p`.
#[inline(always)]
const fn writing(p: u64) -> u64 {
    2 * p + 1
}

/// `seq` of a slot holding committed position `p`.
#[inline(always)]
const fn committed(p: u64) -> u64 {
    2 * p + 2
}

/// The payload bytes of the slot of `pos`, `len` long.
#[inline(always)]
fn payload(mem: &Memory, pos: u64, len: usize) -> Result<DataRange> {
    mem.range(mem.slot_start(pos) + SLOT_PAYLOAD, len)
        .ok_or_else(|| corrupted("slot outside the data region"))
}

/// A position read from shared memory, checked.
#[inline(always)]
fn position(v: u64, what: &str) -> Result<u64> {
    if v < MAX_POSITION {
        Ok(v)
    } else {
        Err(bad_position(v, what))
    }
}

#[cold]
#[inline(never)]
fn bad_position(v: u64, what: &str) -> Error {
    corrupted(format!("broadcast {what} {v} is out of range"))
}

/// The producer's private state.
#[derive(Debug)]
pub(crate) struct ProducerCore {
    /// Next position to write.
    tail: u64,
    /// Positions below this may be written without looking at the subscribers again.
    limit: u64,
    /// The subscriber that set `limit` and the `released` it had: what a full producer watches.
    slowest: Option<(u32, u64)>,
    /// Whether a subscriber may read a slot while it is overwritten (a `DropOldest` channel, or
    /// one with history), so that writes must mark the slot first (module docs, *Write*).
    mark: bool,
}

impl ProducerCore {
    /// Takes over the producer side: resumes at the first position that is not committed,
    /// walking from the published tail (a predecessor may have died between a commit and its
    /// tail store), and publishes that tail. The walk is bounded by the slot count.
    pub(crate) fn attach(mem: &Memory) -> Result<ProducerCore> {
        let geo = mem.geometry();
        // Acquire: pairs with nothing in particular; the slots are checked one by one below.
        let published = position(mem.producer_line().position.load(Acquire), "tail")?;
        let mut tail = published;
        for _ in 0..=geo.capacity {
            // Acquire: pairs with the commit's Release.
            if mem.slot_seq(tail).load(Acquire) != committed(tail) {
                if tail != published {
                    // *Join* needs the position to show the tail each scan starts from: a
                    // subscriber joining at the stale position would be protected below our
                    // limit. Relaxed: ordered before the first scan's loads by its SeqCst
                    // fence, as a commit's position store is.
                    mem.producer_line().position.store(tail, Relaxed);
                }
                let limit = if geo.overflow == Overflow::DropOldest {
                    u64::MAX
                } else {
                    0 // scan before the first write
                };
                return Ok(ProducerCore {
                    tail,
                    limit,
                    slowest: None,
                    mark: geo.overflow == Overflow::DropOldest || geo.history > 0,
                });
            }
            tail = position(tail + 1, "tail")?;
        }
        Err(corrupted(
            "every slot of the broadcast ring is committed past the published tail",
        ))
    }

    /// Looks at every live subscriber's `released` and caches the new limit.
    fn scan(&mut self, mem: &Memory) {
        let geo = mem.geometry();
        // SeqCst: pairs with the fence of a joining subscriber (module docs, *Join*); also
        // orders our tail stores before the loads below.
        fence(SeqCst);
        let mut min = self.tail;
        let mut slowest = None;
        for i in 0..geo.max_consumers {
            let Some(e) = mem.participant(Role::Consumer, i) else {
                break;
            };
            // Relaxed: an entry taken or freed meanwhile is covered by *Join* and by `GONE`.
            if decode_owner(e.owner.load(Relaxed)).0 == 0 {
                continue;
            }
            // Acquire: pairs with the subscriber's Release store of `released`: its reads of
            // the slots below happen before our overwrites. A value past the tail (`GONE`, or
            // damage) constrains nothing.
            let r = e.released.load(Acquire);
            if r < min {
                min = r;
                slowest = Some((i, r));
            }
        }
        self.limit = min.saturating_add(geo.capacity);
        self.slowest = slowest;
    }

    /// Reserves the slot of the next position for a frame of `len` bytes and marks it being
    /// written. Returns the position and the payload bytes.
    #[inline(always)]
    pub(crate) fn try_claim(&mut self, mem: &Memory, len: usize) -> Result<(u64, DataRange)> {
        let geo = mem.geometry();
        if len > geo.max_frame_size as usize {
            return Err(Error::FrameTooLarge {
                len,
                max: geo.max_frame_size as usize,
            });
        }
        if self.tail >= self.limit {
            self.scan(mem);
            if self.tail >= self.limit {
                return Err(Error::WouldBlock("full"));
            }
        }
        let pos = self.tail;
        if pos >= MAX_POSITION {
            return Err(bad_position(pos, "tail"));
        }
        let bytes = payload(mem, pos, len)?;
        if self.mark {
            // Relaxed: ordered before the payload stores by the fence below.
            mem.slot_seq(pos).store(writing(pos), Relaxed);
            // Release fence: a subscriber whose validated copy sees any of our payload stores
            // sees the marker above in its second `seq` load (module docs, *Read*).
            fence(Release);
        }
        Ok((pos, bytes))
    }

    /// Commits the claimed position `pos` as a frame of `len` bytes.
    #[inline(always)]
    pub(crate) fn commit(&mut self, mem: &Memory, pos: u64, len: usize, flags: u8) {
        self.commit_as(mem, pos, len, RecordType::Data, flags);
    }

    /// Whether the next `slots` positions may be written now (scanning the subscribers if the
    /// cached limit says no): `WouldBlock` if not. For a split message that a call which does
    /// not wait sends whole or not at all.
    pub(crate) fn try_room(&mut self, mem: &Memory, slots: u64) -> Result<()> {
        if self.tail.saturating_add(slots) > self.limit {
            self.scan(mem);
            if self.tail.saturating_add(slots) > self.limit {
                return Err(Error::WouldBlock("full"));
            }
        }
        Ok(())
    }

    /// Writes and commits one record of a split message: `FIRST` with the message's length
    /// `total` before `data`, or `PART` (`total` is `None`); at most `max_frame_size` bytes.
    pub(crate) fn try_put_fragment(
        &mut self,
        mem: &Memory,
        total: Option<u64>,
        data: &[u8],
    ) -> Result<()> {
        let prefix = if total.is_some() { MESSAGE_PREFIX } else { 0 };
        let len = prefix + data.len();
        let (pos, bytes) = self.try_claim(mem, len)?;
        let (ty, rest) = match total {
            Some(total) => {
                let (head, rest) = bytes
                    .split_at(MESSAGE_PREFIX)
                    .expect("a FIRST record is claimed with room for its prefix");
                mem.copy_in(head, &total.to_ne_bytes());
                (RecordType::First, rest)
            }
            None => (RecordType::Part, bytes),
        };
        mem.copy_in(rest, data);
        self.commit_as(mem, pos, len, ty, 0);
        Ok(())
    }

    /// Commits the claimed position `pos` as a record of type `ty`, `len` bytes.
    #[inline(always)]
    fn commit_as(&mut self, mem: &Memory, pos: u64, len: usize, ty: RecordType, flags: u8) {
        debug_assert!(pos == self.tail && len <= mem.geometry().max_frame_size as usize);
        // Relaxed: published by the Release below.
        mem.slot_header(pos)
            .store(encode_header(len as u32, ty, flags, 0), Relaxed);
        // Release: pairs with the subscriber's Acquire of `seq`.
        mem.slot_seq(pos).store(committed(pos), Release);
        self.tail = pos + 1;
        // Relaxed: read by joiners and lapped subscribers after a fence or as a hint, and by
        // statistics.
        mem.producer_line().position.store(self.tail, Relaxed);
    }

    /// Sends a copy of `frame`.
    #[inline(always)]
    pub(crate) fn try_send(&mut self, mem: &Memory, frame: &[u8]) -> Result<()> {
        let (pos, bytes) = self.try_claim(mem, frame.len())?;
        mem.copy_in(bytes, frame);
        self.commit(mem, pos, frame.len(), 0);
        Ok(())
    }

    /// What a producer that found the ring full watches: the slowest subscriber's `released`.
    #[inline(always)]
    pub(crate) fn watch<'m>(&self, mem: &'m Memory) -> Watch<'m> {
        let (i, r) = self.slowest.unwrap_or((0, 0));
        let word = &mem
            .participant(Role::Consumer, i)
            .expect("a broadcast channel has a consumer entry")
            .released;
        Watch::new(word, Until::Changed(r))
    }
}

/// Where a frame taken by [`ConsumerCore::try_take`] is.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Taken {
    /// In the ring, safe from the producer until released.
    InPlace(DataRange),
    /// Copied and validated into the subscriber's buffer ([`ConsumerCore::scratch`]), this
    /// many bytes: the producer may overwrite the slot at any time.
    Copied(usize),
    /// A split message of this many bytes, put back together in the `Assembly`'s buffer.
    Message(usize),
}

/// A subscriber's private state.
#[derive(Debug)]
pub(crate) struct ConsumerCore {
    index: u32,
    /// Next position to read.
    cursor: u64,
    /// The `released` last stored in the entry.
    published: u64,
    /// Positions released before `released` is stored again (a quarter ring).
    release_batch: u64,
    /// Positions at or past this are never overwritten before this subscriber releases them:
    /// read in place; positions below are validated. On a `Block` channel, the producer's
    /// position at the join; on a `DropOldest` one, `u64::MAX` (every read is validated).
    protected_from: u64,
    /// The producer's position when this subscriber joined: positions below it are history,
    /// whose loss is not counted as missed.
    joined: u64,
    /// Frames lapped and never received since this subscriber joined.
    missed: u64,
    /// Set by every lap (the cursor jumped ahead), cleared by `assemble`: the records of a
    /// message being assembled no longer follow each other.
    jumped: bool,
    /// The `seq` last found at the cursor when the ring was empty (what a wait watches).
    seen: u64,
    /// Validated copies handed out by `try_take`.
    scratch: Vec<u8>,
}

impl ConsumerCore {
    /// Takes over subscriber entry `index`, which [`join`] set up when the entry was taken.
    pub(crate) fn attach(mem: &Memory, index: u32) -> Result<ConsumerCore> {
        let geo = mem.geometry();
        let me = mem
            .participant(Role::Consumer, index)
            .ok_or_else(|| corrupted(format!("no consumer entry {index}")))?;
        // Acquire: pairs with the Release stores in `join` (made by the coordinator, or by this
        // process when it took the entry itself).
        let start = me.released.load(Acquire);
        let joined = me.claim.load(Acquire);
        if joined >= MAX_POSITION || start > joined || joined - start >= geo.capacity {
            return Err(corrupted(format!(
                "broadcast subscriber entry {index} joined at {joined} with its cursor at {start}"
            )));
        }
        Ok(ConsumerCore {
            index,
            cursor: start,
            published: start,
            release_batch: (geo.capacity / 4).max(1),
            protected_from: if geo.overflow == Overflow::DropOldest {
                u64::MAX
            } else {
                joined
            },
            joined,
            missed: 0,
            jumped: false,
            seen: 0,
            scratch: Vec::new(),
        })
    }

    fn me<'m>(&self, mem: &'m Memory) -> &'m crate::layout::Participant {
        mem.participant(Role::Consumer, self.index)
            .expect("participant index was checked on attach")
    }

    /// Frames lapped and never received since this subscriber joined.
    pub(crate) fn missed(&self) -> u64 {
        self.missed
    }

    /// The buffer of [`Taken::Copied`] frames.
    pub(crate) fn scratch(&self) -> &[u8] {
        &self.scratch
    }

    /// Whether a read of `pos` must be validated (the producer may overwrite it meanwhile).
    #[inline(always)]
    fn exposed(&self, pos: u64) -> bool {
        pos < self.protected_from
    }

    /// Looks at the slot of the cursor: `Ok(Some((len, flags, part)))` for a committed frame
    /// or record of a split message (its header checked), `Ok(None)` after a lap (the cursor
    /// moved on: look again), or `WouldBlock` when there is nothing yet.
    #[inline(always)]
    fn peek(&mut self, mem: &Memory) -> Result<Option<(usize, u8, Part)>> {
        let c = self.cursor;
        // Acquire: pairs with the commit's Release store of `seq`.
        let s = mem.slot_seq(c).load(Acquire);
        if s == committed(c) {
            // Relaxed: ordered after the producer's store by the Acquire above.
            let word = mem.slot_header(c).load(Relaxed);
            let h = decode_header(word);
            if h.len <= mem.geometry().max_frame_size {
                let part = match h.ty {
                    Some(RecordType::Data) => Some(Part::Whole),
                    // At least one byte of the message in each record (see `spsc::check_record`).
                    Some(RecordType::First) if h.len as usize > MESSAGE_PREFIX => Some(Part::First),
                    Some(RecordType::Part) if h.len > 0 => Some(Part::More),
                    _ => None,
                };
                if let Some(part) = part {
                    return Ok(Some((h.len as usize, h.flags, part)));
                }
            }
            if self.exposed(c) && self.overwritten(mem, c) {
                // A header torn by an overwrite: lapped, not damage.
                self.lapped(mem, c)?;
                return Ok(None);
            }
            return Err(bad_header(c, word));
        }
        self.not_there(mem, c, s)
    }

    /// The slot of `c` holds `s`, which is not the frame: empty, lapped or damage.
    #[cold]
    #[inline(never)]
    fn not_there(&mut self, mem: &Memory, c: u64, s: u64) -> Result<Option<(usize, u8, Part)>> {
        let cap = mem.geometry().capacity;
        if s == 0 {
            if c < cap {
                self.seen = s;
                return Err(Error::WouldBlock("empty"));
            }
            return Err(corrupted(format!(
                "the slot of broadcast position {c} was never written"
            )));
        }
        let q = (s - 1) / 2;
        if q & (cap - 1) != c & (cap - 1) || q >= MAX_POSITION {
            return Err(corrupted(format!(
                "the slot of broadcast position {c} holds position {q} (seq {s})"
            )));
        }
        if q <= c {
            // An older lap, or position `c` being written.
            self.seen = s;
            return Err(Error::WouldBlock("empty"));
        }
        self.lapped(mem, q)?;
        Ok(None)
    }

    /// Whether the slot of `pos`, read since `seq` said `committed(pos)`, changed (a validated
    /// read's second load).
    #[inline(always)]
    fn overwritten(&self, mem: &Memory, pos: u64) -> bool {
        // Acquire fence: pairs with the producer's Release fence after its marker store.
        fence(Acquire);
        // Relaxed: ordered after our reads of the slot by the fence above.
        mem.slot_seq(pos).load(Relaxed) != committed(pos)
    }

    /// The producer overwrote position `seen_at` (or reached `seen_at`'s slot a lap later):
    /// skip to the oldest intact frame, counting the frames skipped since the join as missed.
    #[cold]
    #[inline(never)]
    fn lapped(&mut self, mem: &Memory, seen_at: u64) -> Result<()> {
        let cap = mem.geometry().capacity;
        // Acquire: a hint for where the producer is, bounded below by what the slot showed
        // (the position store follows the commit, so it may lag), but trusted only a lap past
        // the published position: a slot scribbled with a far position makes a skip of at most
        // a lap, not a jump past everything the producer will ever write.
        let published = position(mem.producer_line().position.load(Acquire), "tail")?;
        let tail = published.max(seen_at.saturating_add(1).min(published.saturating_add(cap)));
        let mut next = (tail + 1).saturating_sub(cap).max(self.cursor + 1);
        // On a `Block` channel only history (below `protected_from`) can be overwritten: the
        // frames from there on are intact however far the producer is. Always a step on.
        if next > self.protected_from {
            next = self.protected_from.max(self.cursor + 1);
        }
        // `next > cursor`, so the difference is never negative.
        self.missed += next.max(self.joined) - self.cursor.max(self.joined);
        self.cursor = next;
        self.jumped = true;
        Ok(())
    }

    /// Copies the next frame into `buf` and releases it. Returns its length and flags. A split
    /// message goes to `assemble`.
    #[inline(always)]
    pub(crate) fn try_recv(
        &mut self,
        mem: &Memory,
        buf: &mut [u8],
        asm: &mut Assembly,
    ) -> Result<(usize, u8)> {
        for _ in 0..MAX_LAPS_PER_CALL {
            let Some((len, flags, part)) = self.peek(mem)? else {
                continue;
            };
            if part != Part::Whole || asm.active() {
                // (A lap that brought us here sets `jumped`, which `assemble` looks at first.)
                match self.assemble(mem, asm, Some(buf))? {
                    Assembled::Message(len, flags) => return Ok((len, flags)),
                    Assembled::Whole => continue,
                }
            }
            if len > buf.len() {
                return Err(Error::BufferTooSmall {
                    needed: len,
                    cap: buf.len(),
                });
            }
            let c = self.cursor;
            mem.copy_out(payload(mem, c, len)?, buf);
            if self.exposed(c) && self.overwritten(mem, c) {
                self.lapped(mem, c)?;
                continue;
            }
            self.cursor = c + 1;
            self.release(mem);
            return Ok((len, flags));
        }
        Err(Error::WouldBlock("lapped"))
    }

    /// Takes the next frame, unreleased: in place when the producer cannot overwrite it before
    /// the release, else as a validated copy in the scratch buffer; a split message, put back
    /// together in `asm`.
    #[inline(always)]
    pub(crate) fn try_take(&mut self, mem: &Memory, asm: &mut Assembly) -> Result<(Taken, u8)> {
        for _ in 0..MAX_LAPS_PER_CALL {
            let Some((len, flags, part)) = self.peek(mem)? else {
                continue;
            };
            if part != Part::Whole || asm.active() {
                match self.assemble(mem, asm, None)? {
                    Assembled::Message(len, flags) => return Ok((Taken::Message(len), flags)),
                    Assembled::Whole => continue,
                }
            }
            let c = self.cursor;
            let bytes = payload(mem, c, len)?;
            if !self.exposed(c) {
                self.cursor = c + 1;
                return Ok((Taken::InPlace(bytes), flags));
            }
            self.scratch.resize(len, 0);
            mem.copy_out(bytes, &mut self.scratch);
            if self.overwritten(mem, c) {
                self.lapped(mem, c)?;
                continue;
            }
            self.cursor = c + 1;
            return Ok((Taken::Copied(len), flags));
        }
        Err(Error::WouldBlock("lapped"))
    }

    /// Receives the split message that starts (or continues) at the cursor, into `dst` (a
    /// caller's buffer; `None`: `asm`'s), as `spsc::ConsumerCore::assemble` does. Each record
    /// is released as it is taken (a subscriber's successor does not receive again what it was
    /// handed), so a message longer than the ring streams through it. A lap midway drops the
    /// message: the records of it taken so far and those skipped are counted missed.
    #[cold]
    #[inline(never)]
    fn assemble(
        &mut self,
        mem: &Memory,
        asm: &mut Assembly,
        mut dst: Option<&mut [u8]>,
    ) -> Result<Assembled> {
        let r = self.assemble_slots(mem, asm, dst.as_deref_mut());
        if !matches!(r, Ok(Assembled::Message(..))) {
            asm.suspend(dst);
        }
        r
    }

    fn assemble_slots(
        &mut self,
        mem: &Memory,
        asm: &mut Assembly,
        mut dst: Option<&mut [u8]>,
    ) -> Result<Assembled> {
        // Bounded as `spsc::ConsumerCore::assemble_records` is: a ring's worth of orphan
        // records, or two messages begun, and the call ends.
        let (mut laps, mut orphaned, mut begun) = (0, 0, 0);
        loop {
            if orphaned > mem.geometry().capacity || begun > 2 {
                return Err(Error::WouldBlock("message"));
            }
            if std::mem::take(&mut self.jumped) {
                // Lapped, here or in an earlier call: the message being assembled lost
                // records.
                asm.abandon();
            }
            let Some((len, flags, part)) = self.peek(mem)? else {
                laps += 1;
                if laps >= MAX_LAPS_PER_CALL {
                    return Err(Error::WouldBlock("lapped"));
                }
                continue;
            };
            let c = self.cursor;
            let range = payload(mem, c, len)?;
            let src = if self.exposed(c) {
                self.scratch.resize(len, 0);
                mem.copy_out(range, &mut self.scratch);
                if self.overwritten(mem, c) {
                    self.lapped(mem, c)?;
                    laps += 1;
                    if laps >= MAX_LAPS_PER_CALL {
                        return Err(Error::WouldBlock("lapped"));
                    }
                    continue;
                }
                Src::Bytes(&self.scratch[..len])
            } else {
                Src::Ring(range)
            };
            let counted = c >= self.joined;
            match part {
                Part::Whole => {
                    asm.whole();
                    return Ok(Assembled::Whole);
                }
                Part::First => {
                    let (total, data) = Assembly::first(mem, src)?;
                    if let Some(d) = &dst
                        && total > d.len()
                    {
                        return Err(Error::BufferTooSmall {
                            needed: total,
                            cap: d.len(),
                        });
                    }
                    asm.start(total, flags, dst.is_none());
                    begun += 1;
                    asm.put(mem, data, dst.as_deref_mut());
                    asm.took(counted);
                }
                Part::More if !asm.active() => {
                    orphaned += 1;
                    asm.orphan(counted);
                }
                Part::More => {
                    asm.fits(len)?;
                    asm.resume(dst.as_deref_mut())?;
                    asm.put(mem, src, dst.as_deref_mut());
                    asm.took(counted);
                }
            }
            self.cursor = c + 1;
            let published = self.published;
            self.release(mem);
            if self.published != published {
                // A producer waiting for this room is woken now: the message streams.
                asm.freed(mem);
            }
            if let Some((len, flags)) = asm.complete(dst.as_deref_mut()) {
                return Ok(Assembled::Message(len, flags));
            }
        }
    }

    /// Releases everything taken: stores `released` every quarter ring.
    #[inline(always)]
    pub(crate) fn release(&mut self, mem: &Memory) {
        if self.cursor - self.published >= self.release_batch {
            self.store_released(mem);
        }
    }

    /// The ring was found empty: gives everything taken back now, so a producer waiting for
    /// room sees it. Returns whether that stored anything (the caller wakes the producer).
    #[inline]
    pub(crate) fn settle_empty(&mut self, mem: &Memory) -> bool {
        if self.cursor != self.published {
            self.store_released(mem);
            return true;
        }
        false
    }

    #[inline(always)]
    fn store_released(&mut self, mem: &Memory) {
        self.published = self.cursor;
        // Release: pairs with the producer's Acquire in `scan`.
        self.me(mem).released.store(self.cursor, Release);
    }

    /// Leaves: the entry's `released` says gone, so it holds nobody back.
    pub(crate) fn close(&mut self, mem: &Memory) {
        // Release: as in `store_released`.
        self.me(mem).released.store(GONE, Release);
    }

    /// What a subscriber that found the ring empty watches: the slot of its cursor.
    #[inline(always)]
    pub(crate) fn watch<'m>(&self, mem: &'m Memory) -> Watch<'m> {
        Watch::new(mem.slot_seq(self.cursor), Until::Changed(self.seen))
    }

    /// Frames between this subscriber's cursor and the producer's tail (a statistic).
    pub(crate) fn lag(&self, mem: &Memory) -> u64 {
        // Relaxed: a statistic.
        mem.producer_line()
            .position
            .load(Relaxed)
            .saturating_sub(self.cursor)
    }
}

#[cold]
#[inline(never)]
fn bad_header(pos: u64, word: u64) -> Error {
    let h = decode_header(word);
    corrupted(format!(
        "bad broadcast slot header {word:#018x} at position {pos} (type {:?}, length {})",
        h.ty, h.len
    ))
}

/// Joins the subscriber whose entry `entry` was just taken (module docs, *Join*): its cursor
/// goes into `released`, the join position into `claim`.
pub(crate) fn join(mem: &Memory, entry: &crate::layout::Participant) -> Result<()> {
    // Acquire: the position is a hint for the history's start, checked below.
    let p0 = position(mem.producer_line().position.load(Acquire), "tail")?;
    join_from(mem, entry, p0)
}

/// The rest of [`join`], after its first load of the position found `p0` (apart so that a
/// test can run the producer between the join's two loads).
pub(crate) fn join_from(mem: &Memory, entry: &crate::layout::Participant, p0: u64) -> Result<()> {
    let geo = mem.geometry();
    let history = u64::from(geo.history).min(geo.capacity - 1);
    let start = p0.saturating_sub(history);
    // Relaxed: ordered before the load below by the SeqCst fence; published to the attaching
    // process by the Release stores below.
    entry.released.store(start, Relaxed);
    // SeqCst: pairs with the producer's fence in `scan` (module docs, *Join*).
    fence(SeqCst);
    // Acquire: as above.
    let p1 = position(mem.producer_line().position.load(Acquire), "tail")?;
    // The history counts back from the join position. `start` only grows here (a damaged tail
    // that moved back makes it smaller, which only holds the producer back more).
    let start = p1.saturating_sub(history);
    // Release: pairs with the Acquire loads in `ConsumerCore::attach`.
    entry.released.store(start, Release);
    entry.claim.store(p1, Release);
    Ok(())
}

/// Sets every subscriber entry's `released` to `GONE` (a new segment, before it turns ready).
pub(crate) fn initialise(mem: &Memory) {
    for i in 0..mem.geometry().max_consumers {
        if let Some(e) = mem.participant(Role::Consumer, i) {
            // Relaxed: published with the segment by the Release of its state.
            e.released.store(GONE, Relaxed);
        }
    }
}

/// For the repair of a dead subscriber: it holds nobody back any more.
pub(crate) fn forget_subscriber(entry: &crate::layout::Participant) {
    // Release: as in `ConsumerCore::close`.
    entry.released.store(GONE, Release);
}

/// Frames a live subscriber of `entry` has not released yet, and what it missed: statistics,
/// read without synchronisation; `None` for a free entry.
pub(crate) fn subscriber_lag(mem: &Memory, entry: &crate::layout::Participant) -> Option<u64> {
    // Relaxed: statistics.
    if decode_owner(entry.owner.load(Relaxed)).0 == 0 {
        return None;
    }
    let released = entry.released.load(Relaxed);
    let tail = mem.producer_line().position.load(Relaxed);
    Some(tail.saturating_sub(released).min(mem.geometry().capacity))
}

/// Frames in the ring not yet released by the slowest live subscriber (a statistic).
pub(crate) fn depth_slots(mem: &Memory) -> u64 {
    let geo = mem.geometry();
    (0..geo.max_consumers)
        .filter_map(|i| subscriber_lag(mem, mem.participant(Role::Consumer, i)?))
        .max()
        .unwrap_or(0)
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Model checks of publish / lap / read and of a subscriber joining a running producer.
    //! Every role runs in a spawned thread and the model's main thread only joins them (loom
    //! issue #392); each test asserts that the outcomes it is about were reached in some
    //! execution, so a model that explored too little fails.
    use super::*;
    use crate::layout::{ChannelConfig, Geometry, encode_owner};
    use loom::sync::Arc;
    use std::collections::HashSet;
    use std::sync::Mutex;
    type Shared<T> = std::sync::Arc<Mutex<T>>;

    /// A segment of `slots` slots for 16-byte frames, with `subscribers` consumer entries.
    fn memory(slots: u64, overflow: Overflow, subscribers: u32) -> Arc<Memory> {
        let cfg = ChannelConfig::broadcast()
            .capacity(slots * 16)
            .max_frame_size(16)
            .max_consumers(subscribers)
            .overflow(overflow);
        Arc::new(Memory::new(Geometry::new(&cfg).unwrap()))
    }

    /// Takes consumer entry `i` and joins it, as admission does before a subscriber attaches.
    fn admit(mem: &Memory, i: u32) {
        let e = mem.participant(Role::Consumer, i).unwrap();
        e.owner.store(encode_owner(100 + i, 1), Relaxed);
        join(mem, e).unwrap();
    }

    /// Frame `i`: two words that must agree.
    fn frame(i: u8) -> Vec<u8> {
        let mut f = vec![i; 8];
        f.extend([i.wrapping_mul(7); 8]);
        f
    }

    fn intact(f: &[u8]) -> u8 {
        assert_eq!(f, &frame(f[0])[..], "a torn frame was delivered");
        f[0]
    }

    fn recv(c: &mut ConsumerCore, mem: &Memory) -> Option<u8> {
        let mut buf = [0u8; 16];
        match c.try_recv(mem, &mut buf, &mut Assembly::default()) {
            Ok((len, _)) => Some(intact(&buf[..len])),
            Err(Error::WouldBlock(_)) => None,
            Err(e) => panic!("{e}"),
        }
    }

    fn send(p: &mut ProducerCore, mem: &Memory, i: u8) -> bool {
        match p.try_send(mem, &frame(i)) {
            Ok(()) => true,
            Err(Error::WouldBlock(_)) => false,
            Err(e) => panic!("{e}"),
        }
    }

    /// One frame, one poll: the subscriber sees nothing or the whole frame.
    #[test]
    fn publish_then_read() {
        let seen = Shared::new(Mutex::new(HashSet::new()));
        let seen2 = seen.clone();
        loom::model(move || {
            let mem = memory(2, Overflow::Block, 1);
            admit(&mem, 0);
            let c = ConsumerCore::attach(&mem, 0).unwrap();
            let (m1, m2) = (mem.clone(), mem.clone());
            let p = loom::thread::spawn(move || {
                let mut p = ProducerCore::attach(&m1).unwrap();
                assert!(send(&mut p, &m1, 1));
            });
            let seen = seen2.clone();
            let s = loom::thread::spawn(move || {
                let mut c = c;
                let got = recv(&mut c, &m2);
                assert!(got.is_none() || got == Some(1));
                seen.lock().unwrap().insert(got.is_some());
            });
            p.join().unwrap();
            s.join().unwrap();
        });
        let seen = seen.lock().unwrap();
        assert!(seen.contains(&true) && seen.contains(&false), "{seen:?}");
    }

    /// `DropOldest` over two slots: the producer publishes three frames without waiting while
    /// the subscriber reads once; then the subscriber drains. Nothing torn is delivered, frames
    /// arrive in order, and received plus missed is exactly what was sent. Some execution must
    /// lap the subscriber in the middle of its read.
    #[test]
    fn lapped_reads_are_detected_and_counted() {
        let seen = Shared::new(Mutex::new(HashSet::new()));
        let seen2 = seen.clone();
        loom::model(move || {
            let mem = memory(2, Overflow::DropOldest, 1);
            admit(&mem, 0);
            let c = ConsumerCore::attach(&mem, 0).unwrap();
            let (m1, m2) = (mem.clone(), mem.clone());
            let p = loom::thread::spawn(move || {
                let mut p = ProducerCore::attach(&m1).unwrap();
                for i in 0..3 {
                    assert!(send(&mut p, &m1, i), "a DropOldest producer never waits");
                }
            });
            let s = loom::thread::spawn(move || {
                let mut c = c;
                let first = recv(&mut c, &m2);
                (c, first)
            });
            p.join().unwrap();
            let (mut c, first) = s.join().unwrap();
            let m3 = mem.clone();
            let seen = seen2.clone();
            let d = loom::thread::spawn(move || {
                let mut got: Vec<u8> = first.into_iter().collect();
                let missed_mid_read = c.missed();
                while let Some(i) = recv(&mut c, &m3) {
                    got.push(i);
                }
                assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
                assert_eq!(
                    got.len() as u64 + c.missed(),
                    3,
                    "{got:?}, missed {}",
                    c.missed()
                );
                seen.lock()
                    .unwrap()
                    .insert((first.is_some(), missed_mid_read > 0));
            });
            d.join().unwrap();
        });
        let seen = seen.lock().unwrap();
        assert!(
            seen.contains(&(false, true)),
            "no execution lapped the subscriber during its read: {seen:?}"
        );
        assert!(seen.contains(&(true, false)), "{seen:?}");
    }

    /// `Block` over two slots: the producer sends three frames, retrying while full, and the
    /// subscriber reads them in place. The producer never overwrites a frame before the
    /// subscriber released it, and it does have to wait in some execution.
    #[test]
    fn block_waits_for_the_subscriber() {
        let seen = Shared::new(Mutex::new(HashSet::new()));
        let seen2 = seen.clone();
        loom::model(move || {
            let mem = memory(2, Overflow::Block, 1);
            admit(&mem, 0);
            let c = ConsumerCore::attach(&mem, 0).unwrap();
            let (m1, m2) = (mem.clone(), mem.clone());
            let seen = seen2.clone();
            let p = loom::thread::spawn(move || {
                let mut p = ProducerCore::attach(&m1).unwrap();
                let mut waited = false;
                for i in 0..3 {
                    while !send(&mut p, &m1, i) {
                        waited = true;
                        loom::thread::yield_now();
                    }
                }
                seen.lock().unwrap().insert(waited);
            });
            let s = loom::thread::spawn(move || {
                let mut c = c;
                for i in 0..3 {
                    loop {
                        match c.try_take(&m2, &mut Assembly::default()) {
                            Ok((Taken::InPlace(r), _)) => {
                                let mut buf = [0u8; 16];
                                m2.copy_out(r, &mut buf);
                                assert_eq!(intact(&buf), i);
                                c.release(&m2);
                                break;
                            }
                            Ok((Taken::Copied(_) | Taken::Message(_), _)) => {
                                panic!("a Block read of a frame is in place")
                            }
                            Err(Error::WouldBlock(_)) => {
                                c.settle_empty(&m2);
                                loom::thread::yield_now();
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
            p.join().unwrap();
            s.join().unwrap();
        });
        assert!(
            seen.lock().unwrap().contains(&true),
            "the producer never waited"
        );
    }

    /// A subscriber joins while the producer runs with no other subscriber (its entry still
    /// says `GONE` from a predecessor, as after a close): every frame the joiner reads in place
    /// stays intact until it releases it, whichever way the join's fence and the producer's
    /// scan are ordered. Without the two SeqCst fences loom finds the producer overwriting a
    /// frame the joiner holds.
    #[test]
    fn a_joiner_is_never_overwritten_in_place() {
        let seen = Shared::new(Mutex::new(HashSet::new()));
        let seen2 = seen.clone();
        loom::model(move || {
            let mem = memory(2, Overflow::Block, 1);
            let mut p = ProducerCore::attach(&mem).unwrap();
            assert!(send(&mut p, &mem, 0));
            assert!(send(&mut p, &mem, 1));
            let (m1, m2) = (mem.clone(), mem.clone());
            let producer = loom::thread::spawn(move || {
                for i in 2..6 {
                    // Full means the joiner holds it back: give up (bounded model).
                    if !send(&mut p, &m1, i) {
                        break;
                    }
                }
            });
            let seen = seen2.clone();
            let joiner = loom::thread::spawn(move || {
                admit(&m2, 0);
                let mut c = ConsumerCore::attach(&m2, 0).unwrap();
                if let Ok((Taken::InPlace(r), _)) = c.try_take(&m2, &mut Assembly::default()) {
                    // Read twice, the producer running in between: a frame held in place
                    // must not change before it is released.
                    let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
                    m2.copy_out(r, &mut a);
                    loom::thread::yield_now();
                    m2.copy_out(r, &mut b);
                    assert_eq!(a, b, "a frame held in place was overwritten");
                    seen.lock().unwrap().insert(intact(&a));
                }
            });
            producer.join().unwrap();
            joiner.join().unwrap();
        });
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty(), "the joiner never read in place");
    }
}

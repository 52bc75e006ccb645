//! The SPSC ring: variable-length records in a byte ring, one producer, one consumer.
//!
//! The record format is in `layout` ("SPSC record"). The algorithm, with its orderings:
//!
//! * **Publish** (producer). A record is written (payload, then header) while its header word
//!   is still zero. Publishing a batch of records: store zero to the header word after the last
//!   record (the *next* header), then store the first record's header with **Release**; the
//!   other records' headers were stored Relaxed before it. One Release store publishes the batch.
//! * **Consume** (consumer). Load the header word at the read position with **Acquire** (pairs
//!   with the Release of *Publish*): zero means empty; otherwise the payload, the following
//!   headers of the batch and the zeroed next header are all visible.
//! * **Release** (consumer). Store the new head with **Release** into the consumer line; the
//!   producer loads it with **Acquire** (only when its cached head says the ring is full) before
//!   overwriting the space, so the consumer's reads happen before the producer's next writes.
//!
//! The consumer never reads the producer's tail and never writes to the data region: a small
//! frame costs one cache-line transfer, the line holding its header and payload. The producer
//! keeps 8 bytes free ahead of its tail for the zeroed next header. Everything read from shared
//! memory (head, headers, lengths) is checked before use and yields `Error::Corrupted`.

use crate::error::{Error, Result};
use crate::layout::{
    CACHE_LINE, FLAG_REDELIVERED, MESSAGE_PREFIX, Participant, RECORD_HEADER, RecordType, Role,
    decode_header, encode_header, lap_tag, record_size,
};
use crate::message::{Assembled, Assembly, Part, Src};
use crate::region::{DataRange, Memory, Until, Watch};
use crate::sync::Ordering::{Acquire, Relaxed, Release};

/// The most cache lines the consumer prefetches ahead while it waits for a record.
const PREFETCH_LINES: usize = 4;

/// SPSC positions (byte counts since the channel was created) at or past this value are
/// reported as corruption when a handle attaches. Positions read from shared memory enter a
/// handle's private state only on attach; bounded there, a handle's own positions stay far
/// from overflowing (a channel reaches 2^63 bytes after 14 years at 20 GB/s), so the data path
/// adds without checks in debug and release builds alike.
pub(crate) const MAX_SPSC_POSITION: u64 = 1 << 63;

fn corrupted(what: impl Into<String>) -> Error {
    Error::Corrupted(what.into())
}

/// Space reserved by [`ProducerCore::try_claim`]: the payload bytes of one record.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Claimed {
    pos: u64,
    payload: DataRange,
}

impl Claimed {
    /// The payload bytes, as long as asked for.
    pub(crate) fn payload(&self) -> DataRange {
        self.payload
    }
}

/// The producer side's private state.
#[derive(Debug)]
pub(crate) struct ProducerCore {
    /// Next position to write; everything before it is committed (published or staged).
    tail: u64,
    /// The consumer's head as last loaded; the ring has `capacity - (tail - head_cache)` free
    /// bytes at least.
    head_cache: u64,
    /// The first staged, unpublished record: its position and header word.
    staged: Option<(u64, u64)>,
}

impl ProducerCore {
    /// Takes over the producer side of `mem`: resumes after the last published record.
    ///
    /// The published tail in the producer line may lag the true end by what a dead predecessor
    /// published without updating it (it died between a header's Release store and its tail
    /// store), and the consumer may have read those records already and published a head past
    /// that tail. The head is a record boundary no later than the true end, so the walk over
    /// committed headers starts at `max(published, head)` and finds the true end (the first
    /// zero header word). The walk is bounded by the capacity.
    pub(crate) fn attach(mem: &Memory) -> Result<ProducerCore> {
        let geo = mem.geometry();
        // Acquire: pairs with the Release in `ConsumerCore::release`.
        let head = mem.consumer_line().position.load(Acquire);
        let published = mem.producer_line().position.load(Relaxed);
        // A tail behind the head by more than a ring, or ahead of it by more, is damage.
        if !head.is_multiple_of(8)
            || !published.is_multiple_of(8)
            || head >= MAX_SPSC_POSITION
            || published >= MAX_SPSC_POSITION
            || published.abs_diff(head) > geo.capacity
        {
            return Err(corrupted(format!(
                "SPSC cursors out of order: head {head}, tail {published}, capacity {}",
                geo.capacity
            )));
        }
        let mut tail = published.max(head);
        loop {
            // Acquire: pairs with the Release that published the record.
            let word = mem.record_word(tail).load(Acquire);
            if word == 0 {
                break;
            }
            let size = check_record(mem, tail, word)?;
            // No overflow: tail <= head + capacity < 2^63 + 2^32 here.
            tail += size as u64;
            if tail - head > geo.capacity {
                return Err(corrupted(
                    "committed records overrun the consumer: the ring holds more than its capacity",
                ));
            }
        }
        Ok(ProducerCore {
            tail,
            head_cache: head,
            staged: None,
        })
    }

    /// Reserves a record for `len` payload bytes, writing a padding record first if the record
    /// would not fit before the end of the ring. Nothing becomes visible to the consumer.
    #[inline(always)]
    pub(crate) fn try_claim(&mut self, mem: &Memory, len: usize) -> Result<Claimed> {
        let geo = mem.geometry();
        if len > geo.max_frame_size as usize {
            return Err(Error::FrameTooLarge {
                len,
                max: geo.max_frame_size as usize,
            });
        }
        self.try_claim_record(mem, len)
    }

    /// `try_claim` for a record of `len` payload bytes, already checked against the limit of
    /// its type (`max_frame_size`, or `max_fragment` for a record of a split message).
    #[inline(always)]
    fn try_claim_record(&mut self, mem: &Memory, len: usize) -> Result<Claimed> {
        let geo = mem.geometry();
        let cap = geo.capacity;
        let size = record_size(len) as u64;
        let off = self.tail & geo.mask();
        let pad = if off + size > cap { cap - off } else { 0 };
        // The record, any padding before it, and the next header word that publish zeroes.
        let need = pad + size + RECORD_HEADER as u64;
        if self.tail - self.head_cache + need > cap {
            // Acquire: pairs with the Release in `ConsumerCore::release`; the consumer's reads of
            // the space we are about to reuse happen before our writes to it.
            let head = mem.consumer_line().position.load(Acquire);
            if head < self.head_cache || head > self.tail || !head.is_multiple_of(8) {
                return Err(corrupted(format!(
                    "SPSC head {head} moved outside [{}, {}]",
                    self.head_cache, self.tail
                )));
            }
            self.head_cache = head;
            if self.tail - head + need > cap {
                return Err(Error::WouldBlock("full"));
            }
        }
        if pad > 0 {
            let word = encode_header(
                (pad as usize - RECORD_HEADER) as u32,
                RecordType::Padding,
                0,
                lap_tag(self.tail, geo.capacity_log2),
            );
            self.stage(mem, self.tail, word);
            self.tail += pad;
        }
        let payload_off = (self.tail & geo.mask()) as usize + RECORD_HEADER;
        let payload = mem
            .range(payload_off, len)
            .ok_or_else(|| corrupted("record outside the data region"))?;
        Ok(Claimed {
            pos: self.tail,
            payload,
        })
    }

    /// Sends a copy of `frame` as one record, published at once if `publish` (see `put`).
    /// Everything is computed before the copy, so that the stores follow it back to back.
    #[inline(always)]
    pub(crate) fn try_send(&mut self, mem: &Memory, frame: &[u8], publish: bool) -> Result<()> {
        let claim = self.try_claim(mem, frame.len())?;
        let word = encode_header(
            frame.len() as u32,
            RecordType::Data,
            0,
            lap_tag(claim.pos, mem.geometry().capacity_log2),
        );
        let end = claim.pos + record_size(frame.len()) as u64;
        mem.copy_in(claim.payload, frame);
        self.put(mem, claim.pos, word, end, publish);
        Ok(())
    }

    /// Commits the first `len` bytes (at most the claimed length) of `claim` as one frame
    /// carrying the `FLAG_*` bits `flags`, published at once if `publish` (see `put`).
    #[inline]
    pub(crate) fn commit(
        &mut self,
        mem: &Memory,
        claim: Claimed,
        len: usize,
        flags: u8,
        publish: bool,
    ) {
        debug_assert!(len <= claim.payload.len() && claim.pos == self.tail);
        let word = encode_header(
            len as u32,
            RecordType::Data,
            flags,
            lap_tag(claim.pos, mem.geometry().capacity_log2),
        );
        let end = claim.pos + record_size(len) as u64;
        self.put(mem, claim.pos, word, end, publish);
    }

    /// Whether the ring has `need` bytes free past the tail (loading the consumer's head if the
    /// cached one says no): `WouldBlock` if not. For a split message, written only once all of
    /// it fits (see `message::spsc_need`).
    pub(crate) fn try_room(&mut self, mem: &Memory, need: u64) -> Result<()> {
        let cap = mem.geometry().capacity;
        if self.tail - self.head_cache + need <= cap {
            return Ok(());
        }
        // Acquire: as in `try_claim_record`.
        let head = mem.consumer_line().position.load(Acquire);
        if head < self.head_cache || head > self.tail || !head.is_multiple_of(8) {
            return Err(corrupted(format!(
                "SPSC head {head} moved outside [{}, {}]",
                self.head_cache, self.tail
            )));
        }
        self.head_cache = head;
        if self.tail - head + need <= cap {
            Ok(())
        } else {
            Err(Error::WouldBlock("full"))
        }
    }

    /// Stages one record of a split message: `FIRST` with the message's length `total` before
    /// `data`, or `PART` (`total` is `None`). `data` is at most `max_fragment` bytes (less the
    /// prefix for a `FIRST`). Published by the caller's next `publish`.
    pub(crate) fn try_put_fragment(
        &mut self,
        mem: &Memory,
        total: Option<u64>,
        data: &[u8],
    ) -> Result<()> {
        let prefix = if total.is_some() { MESSAGE_PREFIX } else { 0 };
        let len = prefix + data.len();
        debug_assert!(len <= mem.geometry().max_fragment as usize);
        let claim = self.try_claim_record(mem, len)?;
        let (ty, payload) = match total {
            Some(total) => {
                let (head, rest) = claim
                    .payload
                    .split_at(MESSAGE_PREFIX)
                    .expect("a FIRST record is claimed with room for its prefix");
                mem.copy_in(head, &total.to_ne_bytes());
                (RecordType::First, rest)
            }
            None => (RecordType::Part, claim.payload),
        };
        mem.copy_in(payload, data);
        let word = encode_header(
            len as u32,
            ty,
            0,
            lap_tag(claim.pos, mem.geometry().capacity_log2),
        );
        let end = claim.pos + record_size(len) as u64;
        self.put(mem, claim.pos, word, end, false);
        Ok(())
    }

    /// The next position to write.
    pub(crate) fn tail(&self) -> u64 {
        self.tail
    }

    /// Takes back the records staged from `pos` on (a split message that could not be
    /// finished); `pos` was the tail, and nothing has been published since.
    pub(crate) fn unstage(&mut self, mem: &Memory, pos: u64) {
        match self.staged {
            Some((first, _)) if first >= pos => self.staged = None,
            // Records staged before `pos` stay; the header at `pos` was stored (Relaxed, not
            // yet visible) and is zeroed again, so that the batch ends there.
            Some(_) => mem.record_word(pos).store(0, Relaxed),
            None => {}
        }
        self.tail = pos;
    }

    /// Adds the record at `pos` (header `word`, ending at `end`) to the ring. With `publish`
    /// and nothing staged (the common case) it is published on the spot, with no code between
    /// the payload and the stores that publish it: zeroed next header, then header. A polling
    /// consumer that takes the record's cache line back between the payload and the header
    /// makes the producer fetch it again, so that window is kept to the copy itself
    /// (ARCHITECTURE.md, "Cache-line transfers"). Otherwise it is staged, and the whole batch
    /// published if `publish`.
    #[inline(always)]
    fn put(&mut self, mem: &Memory, pos: u64, word: u64, end: u64, publish: bool) {
        if publish && self.staged.is_none() {
            // Relaxed: made visible by the Release below (as in `publish`).
            mem.record_word(end).store(0, Relaxed);
            // Release: pairs with the Acquire header load in `ConsumerCore::try_peek`.
            mem.record_word(pos).store(word, Release);
            self.tail = end;
            // Relaxed: as in `publish`.
            mem.producer_line().position.store(end, Relaxed);
        } else {
            self.stage(mem, pos, word);
            self.tail = end;
            if publish {
                self.publish(mem);
            }
        }
    }

    /// What a producer that found the ring full watches: the consumer's head, until it moves
    /// from the value `try_claim` last loaded.
    #[inline(always)]
    pub(crate) fn watch<'m>(&self, mem: &'m Memory) -> Watch<'m> {
        Watch::new(
            &mem.consumer_line().position,
            Until::Changed(self.head_cache),
        )
    }

    /// Stores a header word of a record in the current batch. The first one is held back for
    /// `publish`; later ones are stored now, Relaxed: they become visible with the first.
    #[inline(always)]
    fn stage(&mut self, mem: &Memory, pos: u64, word: u64) {
        if self.staged.is_none() {
            self.staged = Some((pos, word));
        } else {
            // Relaxed: ordered before the consumer's reads by the batch's Release in `publish`.
            mem.record_word(pos).store(word, Relaxed);
        }
    }

    /// Makes every staged record visible to the consumer. Returns whether anything was staged.
    #[inline]
    pub(crate) fn publish(&mut self, mem: &Memory) -> bool {
        let Some((first, word)) = self.staged.take() else {
            return false;
        };
        // Relaxed: made visible by the Release below, before the consumer can reach `tail`.
        mem.record_word(self.tail).store(0, Relaxed);
        // Release: pairs with the Acquire header load in `ConsumerCore::try_peek`.
        mem.record_word(first).store(word, Release);
        // Relaxed: nobody synchronises on the published tail; it seeds a successor's attach walk
        // and the depth statistic, both of which re-validate what they find.
        mem.producer_line().position.store(self.tail, Relaxed);
        true
    }
}

/// Checks a non-zero header word at `pos` and returns the size of its record. Inlined into the
/// receive path, with the message of a failure built out of line.
#[inline(always)]
fn check_record(mem: &Memory, pos: u64, word: u64) -> Result<usize> {
    let geo = mem.geometry();
    let h = decode_header(word);
    let off = pos & geo.mask();
    let size = record_size(h.len as usize) as u64;
    let fits = match h.ty {
        Some(RecordType::Data) => h.len <= geo.max_frame_size && off + size <= geo.capacity,
        // A record of a message carries at least one of its bytes (a producer never writes an
        // empty one, and a run of them would keep a receive from ever finishing).
        Some(RecordType::First) => {
            h.len as usize > MESSAGE_PREFIX
                && h.len <= geo.max_fragment
                && off + size <= geo.capacity
        }
        Some(RecordType::Part) => {
            h.len > 0 && h.len <= geo.max_fragment && off + size <= geo.capacity
        }
        Some(RecordType::Padding) => off + size == geo.capacity,
        Some(RecordType::Pool) => false, // MPMC only
        Some(RecordType::Skip) => off + size <= geo.capacity,
        None => false,
    };
    if fits && h.tag == lap_tag(pos, geo.capacity_log2) {
        Ok(size as usize)
    } else {
        Err(bad_record(mem, pos, word))
    }
}

/// What is wrong with a record header `check_record` refused.
#[cold]
#[inline(never)]
fn bad_record(mem: &Memory, pos: u64, word: u64) -> Error {
    let geo = mem.geometry();
    let h = decode_header(word);
    if h.tag != lap_tag(pos, geo.capacity_log2) {
        return corrupted(format!(
            "record at position {pos} carries lap tag {}, expected {}",
            h.tag,
            lap_tag(pos, geo.capacity_log2)
        ));
    }
    corrupted(format!(
        "bad record header {word:#018x} at position {pos} (type {:?}, length {}, max frame {}, max record of a message {}, ring offset {})",
        h.ty,
        h.len,
        geo.max_frame_size,
        geo.max_fragment,
        pos & geo.mask()
    ))
}

/// A frame (or a record of a split message) found by [`ConsumerCore::try_peek`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peeked {
    end: u64,
    payload: DataRange,
    flags: u8,
    part: Part,
}

impl Peeked {
    /// Whether the record is a whole frame (not part of a split message).
    #[inline(always)]
    pub(crate) fn is_whole(&self) -> bool {
        self.part == Part::Whole
    }

    /// The payload bytes.
    pub(crate) fn payload(&self) -> DataRange {
        self.payload
    }

    /// `FLAG_*` bits (`FLAG_REDELIVERED` for a frame a dead predecessor had been handed).
    pub(crate) fn flags(&self) -> u8 {
        self.flags
    }
}

/// The consumer side's private state.
#[derive(Debug)]
pub(crate) struct ConsumerCore {
    /// Position of the next record to look at.
    read_pos: u64,
    /// The head last stored in the consumer line.
    head: u64,
    /// Frames that start below this position were handed to a predecessor that did not release
    /// them: they are flagged redelivered.
    redeliver_below: u64,
    /// The delivered mark last stored in the consumer's participant entry.
    delivered: u64,
    /// Whether frames were taken and not yet released.
    in_flight: bool,
    /// Released bytes are published (the head stored) once this many have accumulated, or
    /// when the ring is found empty: a producer waiting on a full ring polls the head, and a
    /// store per frame would cost the consumer a cache-line transfer per frame.
    release_batch: u64,
    /// Set when the head was published (a batch released, or the ring found empty): a
    /// producer waiting for room must be woken (see `take_freed`). Only then: a producer
    /// waits for the head, so waking it for a release that did not publish it would cost both
    /// sides a system call for nothing.
    freed: bool,
    /// Size of the last record consumed: the guess for the next one's (prefetch).
    last_size: usize,
    /// The message being assembled is too long for the ring to hold at once: its records are
    /// released as they are taken (see `assemble`).
    streaming: bool,
}

impl ConsumerCore {
    /// Takes over the consumer side of `mem`, resuming exactly where a predecessor stopped.
    pub(crate) fn attach(mem: &Memory) -> Result<ConsumerCore> {
        let geo = mem.geometry();
        let Marks {
            head,
            released,
            delivered,
        } = Marks::load(mem, me(mem))?;
        Ok(ConsumerCore {
            read_pos: released,
            head,
            redeliver_below: delivered,
            delivered,
            in_flight: false,
            release_batch: (geo.capacity / 4).max(RECORD_HEADER as u64),
            freed: false,
            last_size: 0,
            streaming: false,
        })
    }

    /// Looks at the next frame without taking it, stepping over padding and skip records.
    /// `Err(WouldBlock)` when the ring is empty.
    #[inline(always)]
    pub(crate) fn try_peek(&mut self, mem: &Memory) -> Result<Peeked> {
        let geo = mem.geometry();
        let start = self.read_pos;
        loop {
            let pos = self.read_pos;
            // Acquire: pairs with the Release in `ProducerCore::publish`.
            let word = mem.record_word(pos).load(Acquire);
            if word == 0 {
                self.on_empty(mem);
                return Err(Error::WouldBlock("empty"));
            }
            let size = check_record(mem, pos, word)?;
            let h = decode_header(word);
            let part = match h.ty {
                Some(RecordType::Data) => Some(Part::Whole),
                Some(RecordType::First) => Some(Part::First),
                Some(RecordType::Part) => Some(Part::More),
                _ => None,
            };
            if let Some(part) = part {
                let off = (pos & geo.mask()) as usize + RECORD_HEADER;
                let payload = mem
                    .range(off, h.len as usize)
                    .ok_or_else(|| corrupted("record outside the data region"))?;
                // Redelivered: handed to a predecessor that died before releasing it, or sent
                // flagged (a bridge's importer carrying the flag from another host).
                let flags = if pos < self.redeliver_below {
                    FLAG_REDELIVERED
                } else {
                    h.flags & FLAG_REDELIVERED
                };
                return Ok(Peeked {
                    end: pos + size as u64,
                    payload,
                    flags,
                    part,
                });
            }
            // Padding or skip: step over it. A legitimate producer cannot have written more than
            // a capacity beyond our head, so a longer run of such records is corruption (and
            // would otherwise keep us here for as long as a hostile writer keeps writing).
            self.read_pos = pos + size as u64;
            if self.read_pos - start > geo.capacity {
                return Err(corrupted(
                    "more than a capacity of padding and skip records without a frame",
                ));
            }
        }
    }

    /// Called with the ring empty at `read_pos`: gives back all space released but not yet
    /// published (and padding stepped over), if no frame is out.
    #[inline(always)]
    fn on_empty(&mut self, mem: &Memory) {
        if !self.in_flight && self.read_pos != self.head {
            self.store_head(mem);
            self.freed = true;
        }
        self.prefetch_next(mem);
    }

    /// What a consumer that found the ring empty watches: the header word at the read
    /// position, until it is non-zero, prefetching the lines the next record is predicted to
    /// occupy (see `prefetch_next`).
    #[inline(always)]
    pub(crate) fn watch<'m>(&self, mem: &'m Memory) -> Watch<'m> {
        let w = Watch::new(mem.record_word(self.read_pos), Until::Changed(0));
        match self.predicted_lines(mem) {
            Some((off, len)) => w.prefetching(mem, off, len),
            None => w,
        }
    }

    /// Prefetches the lines past the header's that the next record will occupy if it is as
    /// long as the last one, so that polling its header brings them in alongside the header's
    /// line instead of after it (see ARCHITECTURE.md, "Cache-line transfers").
    #[inline(always)]
    fn prefetch_next(&self, mem: &Memory) {
        if let Some((off, len)) = self.predicted_lines(mem) {
            mem.prefetch(off, len);
        }
    }

    /// The data-region bytes, past the header's cache line, of a record at the read position
    /// as long as the last one; `None` if it would fit in the header's line (or wrap).
    #[inline(always)]
    fn predicted_lines(&self, mem: &Memory) -> Option<(usize, usize)> {
        let geo = mem.geometry();
        let off = (self.read_pos & geo.mask()) as usize;
        let first_line_end = (off | (CACHE_LINE - 1)) + 1;
        let end = off + self.last_size;
        (end > first_line_end && end <= geo.capacity as usize).then(|| {
            (
                first_line_end,
                (end - first_line_end).min(PREFETCH_LINES * CACHE_LINE),
            )
        })
    }

    /// Takes the frame `peeked` (the one `try_peek` just returned), first recording in the
    /// consumer's participant entry that it is being handed out, so that a successor flags it
    /// redelivered if this process dies before the head passes it.
    #[inline(always)]
    pub(crate) fn take(&mut self, mem: &Memory, peeked: &Peeked) {
        if peeked.end > self.delivered {
            self.delivered = peeked.end;
            // Relaxed: read only by a successor after this process is gone. The entry is this
            // consumer's own line, which nobody polls.
            me(mem).claim.store(peeked.end, Relaxed);
        }
        self.last_size = (peeked.end - self.read_pos) as usize;
        self.read_pos = peeked.end;
        self.in_flight = true;
    }

    /// Releases every frame taken so far: records the consumer's position in its entry, and
    /// gives the space back to the producer in batches (`release_batch`), in full whenever the
    /// ring is found empty, or with `release_all`.
    #[inline(always)]
    pub(crate) fn release(&mut self, mem: &Memory) {
        self.in_flight = false;
        // Relaxed: read only by a successor after this process is gone.
        me(mem).released.store(self.read_pos, Relaxed);
        if self.read_pos - self.head >= self.release_batch {
            self.store_head(mem);
            self.freed = true;
        }
    }

    /// Whether the head was published since the last call (a batch released, or the ring found
    /// empty): the caller wakes a producer that may be asleep waiting for that space (a record
    /// behind padding can need the whole ring, which only an empty, fully published ring has).
    #[inline(always)]
    pub(crate) fn take_freed(&mut self) -> bool {
        std::mem::take(&mut self.freed)
    }

    /// Releases everything taken and gives all of its space back now (the handle is closing).
    pub(crate) fn release_all(&mut self, mem: &Memory) {
        self.in_flight = false;
        // Relaxed: as in `release`.
        me(mem).released.store(self.read_pos, Relaxed);
        if self.read_pos != self.head {
            self.store_head(mem);
        }
    }

    #[inline(always)]
    fn store_head(&mut self, mem: &Memory) {
        self.head = self.read_pos;
        // Release: pairs with the Acquire head loads in `ProducerCore::{try_claim, attach}`.
        mem.consumer_line().position.store(self.head, Release);
    }

    /// Copies the next frame into `buf` and releases it: `try_peek`, `take`, the copy, then
    /// `release`. Returns its length and flags.
    /// A split message goes to `assemble`.
    #[inline(always)]
    pub(crate) fn try_recv(
        &mut self,
        mem: &Memory,
        buf: &mut [u8],
        asm: &mut Assembly,
    ) -> Result<(usize, u8)> {
        let mut peeked = self.try_peek(mem)?;
        if !peeked.is_whole() || asm.active() {
            match self.assemble(mem, asm, Some(buf))? {
                Assembled::Message(len, flags) => return Ok((len, flags)),
                Assembled::Whole => peeked = self.try_peek(mem)?,
            }
        }
        let r = self.take_copy(mem, &peeked, buf)?;
        self.release(mem);
        Ok(r)
    }

    /// Takes the frame `peeked` and copies it into `buf` (nothing taken, `BufferTooSmall`, if
    /// it is longer); returns its length and flags.
    #[inline(always)]
    fn take_copy(&mut self, mem: &Memory, peeked: &Peeked, buf: &mut [u8]) -> Result<(usize, u8)> {
        let len = peeked.payload.len();
        if len > buf.len() {
            return Err(Error::BufferTooSmall {
                needed: len,
                cap: buf.len(),
            });
        }
        self.take(mem, peeked);
        mem.copy_out(peeked.payload, buf);
        Ok((len, peeked.flags))
    }
}

impl ConsumerCore {
    /// A partition's receive (`partition.rs`): copies the next frame into `buf` and takes it
    /// without releasing it. Frames taken so far are released together by `release`, once a
    /// checkpoint that includes them is committed, or handed back by `rewind`. A partition
    /// carries whole frames only; any other record is corruption.
    pub(crate) fn try_take_copy(&mut self, mem: &Memory, buf: &mut [u8]) -> Result<(usize, u8)> {
        let peeked = self.try_peek(mem)?;
        if !peeked.is_whole() {
            return Err(corrupted(
                "a record of a split message in a partition (partitions carry whole frames)",
            ));
        }
        self.take_copy(mem, &peeked, buf)
    }

    /// The read position, made a position a successor accepts in a checkpoint: the delivered
    /// mark is raised to it if padding or skip records were stepped over past the last frame
    /// taken (`try_peek` moves the read position over them without taking anything), since a
    /// checkpoint past the delivered mark is refused as corrupted (`resume_at`).
    pub(crate) fn checkpoint_position(&mut self, mem: &Memory) -> u64 {
        if self.read_pos > self.delivered {
            self.delivered = self.read_pos;
            // Relaxed: read only by a successor after this process is gone (as in `take`).
            me(mem).claim.store(self.read_pos, Relaxed);
        }
        self.read_pos
    }

    /// Hands back every frame taken and not released: the next receive (or a successor) starts
    /// again at the released position. The frames stay flagged redelivered (they were handed
    /// out).
    pub(crate) fn rewind(&mut self, mem: &Memory) {
        // Relaxed: our own entry.
        let released = me(mem).released.load(Relaxed).max(self.head);
        if released <= self.read_pos {
            self.read_pos = released;
        }
        self.redeliver_below = self.delivered;
        self.in_flight = false;
    }

    /// Whether frames were taken and not released.
    pub(crate) fn holds(&self) -> bool {
        self.in_flight
    }

    /// The position after the last frame taken (what `release_through` takes).
    pub(crate) fn read_position(&self) -> u64 {
        self.read_pos
    }

    /// Releases the frames taken below `pos`, a position `read_position` returned since the
    /// last release or rewind (a record boundary); the frames taken past it stay out.
    /// `InvalidArgument` for a position outside `[released, read position]`.
    pub(crate) fn release_through(&mut self, mem: &Memory, pos: u64) -> Result<()> {
        // Relaxed: our own entry.
        let released = me(mem).released.load(Relaxed).max(self.head);
        if pos < released || pos > self.read_pos {
            return Err(Error::InvalidArgument(format!(
                "held position {pos} is outside the frames held, [{released}, {}]",
                self.read_pos
            )));
        }
        if pos == self.read_pos {
            self.release(mem);
            return Ok(());
        }
        // Relaxed: read only by a successor after this process is gone (as in `release`).
        me(mem).released.store(pos, Relaxed);
        if pos - self.head >= self.release_batch {
            self.head = pos;
            // Release: pairs with the Acquire head loads in `ProducerCore::{try_claim, attach}`.
            mem.consumer_line().position.store(pos, Release);
            self.freed = true;
        }
        Ok(())
    }

    /// Hands back the frames taken and not released to this consumer itself: the next receive
    /// starts again at the first of them. Unlike `rewind`, they keep the flags they had (a
    /// successor after a crash still flags them, from the delivered mark).
    pub(crate) fn rewind_to_released(&mut self, mem: &Memory) {
        // Relaxed: our own entry.
        let released = me(mem).released.load(Relaxed).max(self.head);
        if released <= self.read_pos {
            self.read_pos = released;
        }
        self.in_flight = false;
    }

    /// Moves the read position forward to `pos`, a checkpoint's position: the frames between
    /// the released position and `pos` were taken by a predecessor and are included in the
    /// checkpoint's state, so they are released without being received again. `pos` must be a
    /// record boundary at or below the delivered mark (anything else is a corrupted checkpoint).
    /// Returns how many frames were passed over.
    pub(crate) fn resume_at(&mut self, mem: &Memory, pos: u64) -> Result<u64> {
        if pos <= self.read_pos {
            return Ok(0);
        }
        if pos > self.delivered {
            return Err(corrupted(format!(
                "checkpoint position {pos} is past the delivered mark {}: no consumer took those frames",
                self.delivered
            )));
        }
        let n = count_frames(mem, self.read_pos, pos)?;
        self.read_pos = pos;
        self.release_all(mem);
        Ok(n)
    }
}

impl ConsumerCore {
    /// Receives the split message that starts (or continues) at the read position, into `dst`
    /// (a caller's buffer; `None`: the handle's, `asm`'s). `BufferTooSmall` (nothing taken) if
    /// the message does not fit `dst`; `WouldBlock` if its next record has not arrived (what
    /// arrived is kept in `asm` for the next call); `Whole` if a whole frame comes first, after
    /// a message left unfinished by its producer (dropped and counted).
    ///
    /// The records of a message stay unreleased until its last one is taken: if this consumer
    /// dies meanwhile, a successor resumes at the first record and receives the message again,
    /// flagged redelivered. A message longer than the ring cannot wait like that: the producer
    /// needs its first records' space for its last ones. So when the next record has not
    /// arrived, everything taken is released (and the head published): the producer writes on,
    /// and a successor of this consumer would find the message's start gone and drop the rest.
    /// A message that fits the ring is published all at once (`Producer`), so its records are
    /// never found missing midway, and it keeps the guarantee.
    #[cold]
    #[inline(never)]
    pub(crate) fn assemble(
        &mut self,
        mem: &Memory,
        asm: &mut Assembly,
        mut dst: Option<&mut [u8]>,
    ) -> Result<Assembled> {
        let r = self.assemble_records(mem, asm, dst.as_deref_mut());
        if !matches!(r, Ok(Assembled::Message(..))) {
            asm.suspend(dst);
        }
        r
    }

    fn assemble_records(
        &mut self,
        mem: &Memory,
        asm: &mut Assembly,
        mut dst: Option<&mut [u8]>,
    ) -> Result<Assembled> {
        // What this call stepped over without it going into the message it returns: records of
        // messages whose start it never saw, and messages begun. Past a ring's worth of the
        // first or two of the second, the call ends (`WouldBlock`), so that a writer that keeps
        // such records coming cannot keep a non-waiting call inside (a waiting one comes
        // straight back: the next record is there). A legitimate ring holds less.
        let (mut orphaned, mut begun) = (0, 0);
        loop {
            if orphaned > mem.geometry().capacity || begun > 2 {
                return Err(Error::WouldBlock("message"));
            }
            let peeked = match self.try_peek(mem) {
                Ok(p) => p,
                Err(e) => {
                    if matches!(e, Error::WouldBlock(_)) && self.in_flight {
                        // The next record has not arrived: give back what was taken (see above).
                        self.release(mem);
                        if self.read_pos != self.head {
                            self.store_head(mem);
                            self.freed = true;
                        }
                    }
                    return Err(e);
                }
            };
            match peeked.part {
                Part::Whole => {
                    asm.whole();
                    // Records of the dropped message that were taken: released with the frame.
                    return Ok(Assembled::Whole);
                }
                Part::First => {
                    let (total, data) = Assembly::first(mem, Src::Ring(peeked.payload))?;
                    if let Some(d) = &dst
                        && total > d.len()
                    {
                        return Err(Error::BufferTooSmall {
                            needed: total,
                            cap: d.len(),
                        });
                    }
                    if asm.active() && self.in_flight {
                        // The records of a message its producer never finished: given back.
                        self.release(mem);
                    }
                    asm.start(total, peeked.flags, dst.is_none());
                    begun += 1;
                    self.streaming =
                        crate::message::spsc_need(mem.geometry(), total) > mem.geometry().capacity;
                    self.take(mem, &peeked);
                    asm.put(mem, data, dst.as_deref_mut());
                    asm.took(true);
                }
                Part::More if !asm.active() => {
                    orphaned += peeked.end - self.read_pos;
                    asm.orphan(true);
                    self.take(mem, &peeked);
                    self.release(mem);
                    continue;
                }
                Part::More => {
                    asm.fits(peeked.payload.len())?;
                    asm.resume(dst.as_deref_mut())?;
                    self.take(mem, &peeked);
                    asm.put(mem, Src::Ring(peeked.payload), dst.as_deref_mut());
                    asm.took(true);
                }
            }
            if self.streaming {
                // Too long to be held whole: each record is given back once copied, and a
                // producer waiting for the space is woken as the head moves.
                self.release(mem);
                if self.take_freed() {
                    asm.freed(mem);
                }
            }
            let copied = dst.is_some();
            if let Some((len, flags)) = asm.complete(dst.as_deref_mut()) {
                // A copy is released at once, as `try_recv` releases a frame; a message lent
                // from the handle's buffer (`read`, `drain`) stays taken until the caller is
                // done with it, as a frame lent in place does: a consumer that dies before
                // then leaves it to its successor.
                if copied {
                    self.release(mem);
                }
                return Ok(Assembled::Message(len, flags));
            }
        }
    }
}

/// Where a consumer stands, as recorded in shared memory: the published head, the released
/// position (`>= head`) and the delivered mark (`>= released`), checked.
struct Marks {
    head: u64,
    released: u64,
    delivered: u64,
}

impl Marks {
    /// Reads the marks of the consumer whose entry is `entry` (an SPSC channel has one).
    fn load(mem: &Memory, entry: &Participant) -> Result<Marks> {
        // Relaxed: the consumer line and entry are written only by the consumer, and whoever
        // reads them here has taken over from it (its predecessor is gone).
        let head = mem.consumer_line().position.load(Relaxed);
        // Marks below the head are stale (the head is published after them).
        let released = entry.released.load(Relaxed).max(head);
        let delivered = entry.claim.load(Relaxed).max(released);
        if !head.is_multiple_of(8)
            || !released.is_multiple_of(8)
            || delivered >= MAX_SPSC_POSITION
            || delivered - head > mem.geometry().capacity
        {
            return Err(corrupted(format!(
                "SPSC consumer cursors out of order: head {head}, released {released}, delivered {delivered}"
            )));
        }
        Ok(Marks {
            head,
            released,
            delivered,
        })
    }
}

/// For the repair of a dead consumer: publishes the head up to the position it released, so
/// the producer gets back the space of everything consumed (the dead consumer published it
/// lazily). Returns the released and delivered positions: a successor resumes at the first
/// and flags frames before the second redelivered.
pub(crate) fn publish_released(mem: &Memory, entry: &Participant) -> Result<(u64, u64)> {
    let m = Marks::load(mem, entry)?;
    if m.released > m.head {
        // Release: pairs with the Acquire head loads in `ProducerCore::{try_claim, attach}`, as
        // the consumer's own `store_head` does.
        mem.consumer_line().position.store(m.released, Release);
    }
    Ok((m.released, m.delivered))
}

/// Counts the frames (data records) in `[from, to)`, a range of records that were committed.
pub(crate) fn count_frames(mem: &Memory, from: u64, to: u64) -> Result<u64> {
    let mut pos = from;
    let mut n = 0;
    while pos < to {
        // Acquire: pairs with the Release that published the record.
        let word = mem.record_word(pos).load(Acquire);
        if word == 0 {
            return Err(corrupted(format!(
                "no record at position {pos}, below the delivered mark {to}"
            )));
        }
        pos = pos
            .checked_add(check_record(mem, pos, word)? as u64)
            .filter(|&p| p - from <= mem.geometry().capacity)
            .ok_or_else(|| corrupted("delivered records span more than the ring"))?;
        n += u64::from(decode_header(word).ty == Some(RecordType::Data));
    }
    if pos != to {
        return Err(corrupted(format!(
            "position {to} is not the end of a record (the records from {from} end at {pos})"
        )));
    }
    Ok(n)
}

/// The SPSC consumer's participant entry (an SPSC channel has one), where it keeps its
/// delivered mark.
#[inline(always)]
fn me(mem: &Memory) -> &Participant {
    mem.participant(Role::Consumer, 0)
        .expect("an SPSC segment has one consumer entry")
}

/// Bytes in the ring between the consumer's head and the producer's published tail, as a
/// statistic: both are read without synchronisation and clamped to `[0, capacity]`.
pub(crate) fn depth_bytes(mem: &Memory) -> u64 {
    let head = mem.consumer_line().position.load(Relaxed);
    let tail = mem.producer_line().position.load(Relaxed);
    tail.saturating_sub(head).min(mem.geometry().capacity)
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Model checks of publish/consume. Every role runs in a spawned thread and the model's main
    //! thread only joins them (loom issue #392 stops exploring when a spawned thread starts with
    //! an atomic load while main runs); each test asserts that every interesting outcome was
    //! reached in some execution, so a model that explored too little fails.
    use super::*;
    use crate::layout::{ChannelConfig, Geometry};
    use loom::sync::Arc;
    use std::collections::HashSet;
    use std::sync::Mutex;
    type Shared<T> = std::sync::Arc<Mutex<T>>;

    fn memory(capacity: u64, max_frame: u32) -> Arc<Memory> {
        let cfg = ChannelConfig::spsc()
            .capacity(capacity)
            .max_frame_size(max_frame);
        Arc::new(Memory::new(Geometry::new(&cfg).unwrap()))
    }

    fn frame(i: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|j| i.wrapping_mul(31).wrapping_add(j as u8))
            .collect()
    }

    fn try_send(p: &mut ProducerCore, mem: &Memory, data: &[u8]) -> bool {
        match p.try_claim(mem, data.len()) {
            Ok(c) => {
                mem.copy_in(c.payload(), data);
                p.commit(mem, c, data.len(), 0, true);
                true
            }
            Err(Error::WouldBlock(_)) => false,
            Err(e) => panic!("{e}"),
        }
    }

    fn try_recv(c: &mut ConsumerCore, mem: &Memory) -> Option<Vec<u8>> {
        match c.try_peek(mem) {
            Ok(p) => {
                let mut out = vec![0; p.payload().len()];
                mem.copy_out(p.payload(), &mut out);
                c.take(mem, &p);
                c.release(mem);
                Some(out)
            }
            Err(Error::WouldBlock(_)) => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// One frame, one poll: the consumer sees nothing or the whole frame, never a torn one.
    #[test]
    fn publish_then_consume() {
        let seen = Shared::new(Mutex::new(HashSet::new()));
        let seen2 = seen.clone();
        loom::model(move || {
            let mem = memory(64, 16);
            let (m1, m2) = (mem.clone(), mem.clone());
            let p = loom::thread::spawn(move || {
                let mut p = ProducerCore::attach(&m1).unwrap();
                assert!(try_send(&mut p, &m1, &frame(1, 12)));
            });
            let seen = seen2.clone();
            let c = loom::thread::spawn(move || {
                let mut c = ConsumerCore::attach(&m2).unwrap();
                let got = try_recv(&mut c, &m2);
                if let Some(f) = &got {
                    assert_eq!(f, &frame(1, 12));
                }
                seen.lock().unwrap().insert(got.is_some());
            });
            p.join().unwrap();
            c.join().unwrap();
        });
        let seen = seen.lock().unwrap();
        assert!(seen.contains(&true) && seen.contains(&false), "{seen:?}");
    }

    /// A ring of 64 bytes with 24-byte records (payloads 12-14) wraps with a padding record on
    /// the third frame; the producer has to wait for releases. Frames arrive whole and in order,
    /// and stale headers of the previous lap are never read as records.
    #[test]
    fn wrap_and_reuse() {
        let blocked = Shared::new(Mutex::new(HashSet::new()));
        let blocked2 = blocked.clone();
        loom::model(move || {
            let mem = memory(64, 16);
            let (m1, m2) = (mem.clone(), mem.clone());
            let blocked = blocked2.clone();
            let p = loom::thread::spawn(move || {
                let mut p = ProducerCore::attach(&m1).unwrap();
                let mut waited = false;
                for i in 0..3u8 {
                    while !try_send(&mut p, &m1, &frame(i, 12 + i as usize)) {
                        waited = true;
                        loom::thread::yield_now();
                    }
                }
                blocked.lock().unwrap().insert(waited);
            });
            let c = loom::thread::spawn(move || {
                let mut c = ConsumerCore::attach(&m2).unwrap();
                for i in 0..3u8 {
                    loop {
                        if let Some(f) = try_recv(&mut c, &m2) {
                            assert_eq!(f, frame(i, 12 + i as usize));
                            break;
                        }
                        loom::thread::yield_now();
                    }
                }
                // The next header position (offset 24 of lap 1) holds frame 1's header from lap
                // 0 unless the producer zeroed it: the consumer must see an empty ring.
                assert_eq!(try_recv(&mut c, &m2), None);
            });
            p.join().unwrap();
            c.join().unwrap();
        });
        let blocked = blocked.lock().unwrap();
        assert!(
            blocked.contains(&true),
            "the producer never found the ring full: {blocked:?}"
        );
    }

    /// A producer died between its second record's header store (Release) and its tail
    /// store: the published tail is a record behind. A live consumer reads on, finds the ring
    /// empty and publishes a head past that tail, while a successor producer attaches and
    /// sends a third frame. The successor resumes at the true end whichever it sees, and the
    /// frames arrive once each, in order (before issue 10's item 9 the attach failed as
    /// `Corrupted` once the head was past the tail).
    #[test]
    fn successor_of_a_producer_that_died_between_header_and_tail() {
        let seen = Shared::new(Mutex::new(HashSet::new()));
        let seen2 = seen.clone();
        loom::model(move || {
            let mem = memory(128, 16);
            let mut dead = ProducerCore::attach(&mem).unwrap();
            assert!(try_send(&mut dead, &mem, &frame(0, 8)));
            assert!(try_send(&mut dead, &mem, &frame(1, 8)));
            // The second record's tail store never happened (records are 16 bytes).
            mem.producer_line().position.store(16, Relaxed);
            let (m1, m2) = (mem.clone(), mem.clone());
            let consumer = loom::thread::spawn(move || {
                let mut c = ConsumerCore::attach(&m1).unwrap();
                let mut got = Vec::new();
                for _ in 0..3 {
                    got.extend(try_recv(&mut c, &m1));
                }
                (c, got)
            });
            let successor = loom::thread::spawn(move || {
                // Relaxed: only to record what the attach below can have met.
                let head = m2.consumer_line().position.load(Relaxed);
                let mut p = ProducerCore::attach(&m2).expect("a successor is admitted");
                assert!(try_send(&mut p, &m2, &frame(2, 8)));
                head
            });
            let head = successor.join().unwrap();
            let (mut c, mut got) = consumer.join().unwrap();
            let m = mem.clone();
            let drain = loom::thread::spawn(move || {
                while let Some(f) = try_recv(&mut c, &m) {
                    got.push(f);
                }
                got
            });
            let got = drain.join().unwrap();
            assert_eq!(got, (0..3).map(|i| frame(i, 8)).collect::<Vec<_>>());
            seen2.lock().unwrap().insert(head);
        });
        let seen = seen.lock().unwrap();
        assert!(
            seen.contains(&32),
            "the successor never attached behind a head past the stale tail: {seen:?}"
        );
    }

    /// Two frames published with one Release: the consumer sees neither or both.
    #[test]
    fn batch_publishes_together() {
        let seen = Shared::new(Mutex::new(HashSet::new()));
        let seen2 = seen.clone();
        loom::model(move || {
            let mem = memory(128, 16);
            let (m1, m2) = (mem.clone(), mem.clone());
            let p = loom::thread::spawn(move || {
                let mut p = ProducerCore::attach(&m1).unwrap();
                for i in 0..2u8 {
                    let c = p.try_claim(&m1, 8).unwrap();
                    m1.copy_in(c.payload(), &frame(i, 8));
                    p.commit(&m1, c, 8, 0, false);
                }
                p.publish(&m1);
            });
            let seen = seen2.clone();
            let c = loom::thread::spawn(move || {
                let mut c = ConsumerCore::attach(&m2).unwrap();
                let mut n = 0;
                while let Some(f) = try_recv(&mut c, &m2) {
                    assert_eq!(f, frame(n, 8));
                    n += 1;
                }
                assert!(n == 0 || n == 2, "saw {n} of a batch of 2");
                seen.lock().unwrap().insert(n);
            });
            p.join().unwrap();
            c.join().unwrap();
        });
        let seen = seen.lock().unwrap();
        assert!(seen.contains(&0) && seen.contains(&2), "{seen:?}");
    }
}

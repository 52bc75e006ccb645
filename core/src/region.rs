//! Typed access to the memory of a validated segment: the one place where an offset becomes a
//! pointer.
//!
//! The ring algorithms (`spsc`, `mpmc`) never touch a raw pointer; they ask a [`Memory`] for the
//! cursor lines, the participants, a record or slot word by *position*, and for checked byte
//! ranges of the data region. There are two implementations with the same methods:
//!
//! * normally, a [`Memory`] views a mapping (`memmap2::MmapRaw`) of a segment whose header was
//!   validated by `layout::Geometry::from_header`;
//! * under `--cfg loom` it is a set of heap-allocated loom atomics (payload bytes are modelled as
//!   relaxed atomic words, so loom sees a payload read that is not ordered after its write as a
//!   stale value and the test's byte comparison fails).
//!
//! Every accessor is in bounds by construction: words are reached by masking a position with the
//! local (never shared) geometry, and byte ranges go through [`Memory::range`], which checks them.

#[cfg(not(loom))]
use crate::layout::CACHE_LINE;
use crate::layout::{
    self, CursorLine, Geometry, Participant, RepairLine, Role, SLOT_HEADER_WORD, SLOT_SEQ,
};
use crate::sync::AtomicU64;

/// A checked byte range of the data region. Only [`Memory::range`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DataRange {
    off: usize,
    len: usize,
}

impl DataRange {
    /// Length in bytes.
    #[inline(always)]
    pub(crate) fn len(self) -> usize {
        self.len
    }

    /// The first `n` bytes and the rest; `None` if the range is shorter than `n`.
    pub(crate) fn split_at(self, n: usize) -> Option<(DataRange, DataRange)> {
        (n <= self.len).then_some((
            DataRange {
                off: self.off,
                len: n,
            },
            DataRange {
                off: self.off + n,
                len: self.len - n,
            },
        ))
    }

    /// An empty range (the length of a message held outside the ring is kept elsewhere).
    pub(crate) const EMPTY: DataRange = DataRange { off: 0, len: 0 };
}

#[cfg(not(loom))]
pub(crate) use mapped::{Memory, header_from_bytes};

/// What a blocked call watches between attempts: one shared word and the condition under which
/// the ring may have become ready. Spinning on it is one load and a compare (plus a prefetch
/// for an SPSC consumer), the tightest loop there is: a heavier poll, one that calls out and
/// builds an error per iteration, measured up to twice the round-trip time for records that
/// fill whole cache lines (ARCHITECTURE.md, "Waiting").
pub(crate) struct Watch<'m> {
    word: &'m AtomicU64,
    until: Until,
    prefetch: Option<(&'m Memory, usize, usize)>,
}

/// When a watched word means "try again".
#[derive(Clone, Copy, Debug)]
pub(crate) enum Until {
    /// The word differs from this value.
    Changed(u64),
    /// The word has reached this value (wrapping comparison, as for sequence numbers).
    Reached(u64),
}

impl<'m> Watch<'m> {
    /// Watches `word` until `until`.
    #[inline(always)]
    pub(crate) fn new(word: &'m AtomicU64, until: Until) -> Watch<'m> {
        Watch {
            word,
            until,
            prefetch: None,
        }
    }

    /// Also prefetches `[off, off + len)` of `mem`'s data region on every check.
    #[inline(always)]
    pub(crate) fn prefetching(mut self, mem: &'m Memory, off: usize, len: usize) -> Watch<'m> {
        self.prefetch = Some((mem, off, len));
        self
    }

    /// Whether the ring may be ready. Relaxed: a hint; the operation retried after it decides.
    #[inline(always)]
    pub(crate) fn ready(&self) -> bool {
        let v = self.word.load(crate::sync::Ordering::Relaxed);
        let ready = match self.until {
            Until::Changed(stale) => v != stale,
            Until::Reached(target) => v.wrapping_sub(target) as i64 >= 0,
        };
        if !ready && let Some((mem, off, len)) = self.prefetch {
            mem.prefetch(off, len);
        }
        ready
    }
}

#[cfg(loom)]
pub(crate) use heap::Memory;

/// Byte offset of the word of an SPSC position: masked to the ring, rounded down to 8.
#[inline(always)]
fn record_offset(geo: &Geometry, pos: u64) -> usize {
    (pos & geo.mask() & !7) as usize
}

/// Byte offset of the MPMC slot of a position. `(pos & mask) < slots` and
/// `slots * slot_stride <= data_len` (an MPMC message pool follows the slots), so the whole
/// slot lies in the data region.
#[inline(always)]
fn slot_offset(geo: &Geometry, pos: u64) -> usize {
    (pos & geo.mask()) as usize * geo.slot_stride as usize
}

/// Byte offset of chunk word `i` of an MPMC message pool, if the pool has that chunk: the words
/// lie 8-aligned before the chunks, inside the data region (`Geometry::with_pool`).
#[inline(always)]
fn pool_word_offset(geo: &Geometry, i: u64) -> Option<usize> {
    (i < geo.pool_chunks).then(|| geo.pool_words + 8 * i as usize)
}

#[cfg(not(loom))]
mod mapped {
    use super::*;
    use crate::layout::{HEADER_SIZE, STATE_OFFSET, SegmentHeader};
    use crate::sync::AtomicU32;
    use memmap2::MmapRaw;
    use std::ptr::NonNull;

    /// A validated segment mapping.
    pub(crate) struct Memory {
        base: NonNull<u8>,
        data: NonNull<u8>,
        geo: Geometry,
        /// The mapping's entry in the SIGBUS guard (`guard.rs`): `None` if the table was full.
        guard: Option<crate::guard::Registration>,
        // Keeps the mapping alive for as long as `base` is used.
        _map: MmapRaw,
    }

    impl Drop for Memory {
        fn drop(&mut self) {
            // Before the mapping goes (the fields drop after this): the guard must never
            // replace an address range that is no longer ours.
            if let Some(r) = self.guard.take() {
                crate::guard::unregister(r);
            }
        }
    }

    impl std::fmt::Debug for Memory {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Memory")
                .field("geometry", &self.geo)
                .finish_non_exhaustive()
        }
    }

    // SAFETY: `Memory` is a view of shared memory that every process and thread accesses
    // concurrently by design; all mutation goes through atomics or through byte ranges whose
    // exclusive use the ring protocols arbitrate. The raw pointers are not tied to a thread.
    unsafe impl Send for Memory {}
    // SAFETY: as for `Send`: `&Memory` only hands out atomics and checked ranges.
    unsafe impl Sync for Memory {}

    /// A header from its bytes (read with `pread`, before anything is mapped).
    pub(crate) fn header_from_bytes(bytes: &[u8; HEADER_SIZE]) -> SegmentHeader {
        // SAFETY: the array is exactly size_of::<SegmentHeader>() bytes (asserted in layout);
        // every bit pattern is a valid SegmentHeader (plain integers); read_unaligned copies
        // from a byte array of no particular alignment.
        unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const SegmentHeader) }
    }

    impl Memory {
        /// Views `map`, whose header has been (or, for a segment being created, will be)
        /// validated into `geo`, and registers it with the SIGBUS guard before anything
        /// touches it: from now on, an object shrunk under the mapping ends in `Corrupted`
        /// errors instead of killing the process.
        pub(crate) fn new(map: MmapRaw, geo: Geometry) -> Memory {
            assert!(
                map.len() >= geo.total_size && geo.total_size >= HEADER_SIZE,
                "mapping shorter than its validated geometry"
            );
            let base = NonNull::new(map.as_mut_ptr()).expect("mmap never returns null");
            // SAFETY: geo.data < geo.total_size <= map.len(), so the result is in the mapping.
            let data = unsafe { base.add(geo.data) };
            // The object's part of the mapping, in whole pages (the last page of the object
            // may be partly past its end, which reads as zeros without a fault); the guard
            // page after it stays unregistered, so a stray access there still crashes.
            let page = crate::sys::page_size();
            let len = geo.total_size.div_ceil(page) * page;
            let guard = crate::guard::register(base.as_ptr(), len.min(map.len()));
            Memory {
                base,
                data,
                geo,
                guard,
                _map: map,
            }
        }

        /// Whether this process found the segment's object shrunk under the mapping: the
        /// SIGBUS guard then replaced the mapping with private zero pages whose header says
        /// `DELETED`, so every slow path stops; its callers report `Corrupted`.
        #[inline]
        pub(crate) fn truncated(&self) -> bool {
            self.guard
                .as_ref()
                .is_some_and(crate::guard::Registration::truncated)
        }

        /// Writes the header of a segment this process has just created and nobody uses yet.
        pub(crate) fn write_header(&self, h: &SegmentHeader) {
            // SAFETY: the mapping holds at least HEADER_SIZE bytes (asserted in `new`) and is
            // page-aligned. Until the state turns READY no process reads anything but `state`,
            // which this write leaves at INITIALISING.
            unsafe { std::ptr::write_volatile(self.base.as_ptr() as *mut SegmentHeader, *h) }
        }

        /// # Safety
        /// `off` must be `T`-aligned and `off + size_of::<T>()` at most `total_size`; `T` must be
        /// made of atomics (valid for any bit pattern, shared by design).
        #[inline(always)]
        unsafe fn at<T>(&self, off: usize) -> &T {
            debug_assert!(off.is_multiple_of(std::mem::align_of::<T>()));
            debug_assert!(off + std::mem::size_of::<T>() <= self.geo.total_size);
            // SAFETY: guaranteed by the caller; the mapping lives as long as `self`.
            unsafe { &*(self.base.as_ptr().add(off) as *const T) }
        }

        /// The validated geometry (a local copy).
        #[inline(always)]
        pub(crate) fn geometry(&self) -> &Geometry {
            &self.geo
        }

        /// The header's `state` word.
        pub(crate) fn state(&self) -> &AtomicU32 {
            // SAFETY: STATE_OFFSET is 4-aligned and inside the header of every segment.
            unsafe { self.at(STATE_OFFSET) }
        }

        /// Whether a coordinator deleted the channel. Relaxed: a flag looked at on the slow
        /// paths (an empty or full ring, a wait); the line holding it is written only then.
        #[inline]
        pub(crate) fn deleted(&self) -> bool {
            layout::state_of(self.state().load(crate::sync::Ordering::Relaxed))
                == layout::STATE_DELETED
        }

        /// Whether a consumer finding the ring empty must look further: the channel was
        /// deleted or its stream finished. Relaxed, as `deleted`: the consumer's Acquire load
        /// comes after it (`Consumer::settle_empty`).
        #[inline]
        pub(crate) fn ending(&self) -> bool {
            matches!(
                layout::state_of(self.state().load(crate::sync::Ordering::Relaxed)),
                layout::STATE_DELETED | layout::STATE_FINISHED
            )
        }

        /// The generation of the segment that replaced this one in a resize, zero if none.
        /// Relaxed: a flag, looked at by producers before each send and by consumers on an
        /// empty ring; what they then rely on is ordered by the coordinator's reply and by the
        /// entries of the producers that left (`segment::producers_attached`).
        #[inline(always)]
        pub(crate) fn moved_to(&self) -> u64 {
            self.producer_line()
                .moved
                .load(crate::sync::Ordering::Relaxed)
        }

        /// The producer cursor line.
        #[inline(always)]
        pub(crate) fn producer_line(&self) -> &CursorLine {
            // SAFETY: PRODUCER_LINE is 128-aligned and inside the header area of every segment.
            unsafe { self.at(layout::PRODUCER_LINE) }
        }

        /// The consumer cursor line.
        #[inline(always)]
        pub(crate) fn consumer_line(&self) -> &CursorLine {
            // SAFETY: CONSUMER_LINE is 128-aligned and inside the header area of every segment.
            unsafe { self.at(layout::CONSUMER_LINE) }
        }

        /// The repair line (the coordinator's entry).
        pub(crate) fn repair_line(&self) -> &RepairLine {
            // SAFETY: REPAIR_LINE is 128-aligned and inside the header area of every segment.
            unsafe { self.at(layout::REPAIR_LINE) }
        }

        /// A participant entry, if the table has it.
        #[inline]
        pub(crate) fn participant(&self, role: Role, index: u32) -> Option<&Participant> {
            let off = self.geo.participant_offset(role, index)?;
            // SAFETY: participant_offset only returns 128-aligned offsets of existing entries,
            // all of which lie before the data region.
            Some(unsafe { self.at(off) })
        }

        /// The header word of the SPSC record at `pos`.
        #[inline(always)]
        pub(crate) fn record_word(&self, pos: u64) -> &AtomicU64 {
            let off = record_offset(&self.geo, pos);
            // SAFETY: off is 8-aligned and below data_len (a power of two, at least 64).
            unsafe { self.at(self.geo.data + off) }
        }

        /// Chunk word `i` of the MPMC message pool; `None` past the pool's last chunk.
        #[inline(always)]
        pub(crate) fn pool_word(&self, i: u64) -> Option<&AtomicU64> {
            let off = pool_word_offset(&self.geo, i)?;
            // SAFETY: the word lies in the data region and is 8-aligned (pool_word_offset).
            Some(unsafe { self.at(self.geo.data + off) })
        }

        /// The sequence word of the MPMC slot of `pos`.
        #[inline(always)]
        pub(crate) fn slot_seq(&self, pos: u64) -> &AtomicU64 {
            // SAFETY: the slot lies in the data region (see slot_offset); strides are multiples
            // of 64, so the word is aligned.
            unsafe { self.at(self.geo.data + slot_offset(&self.geo, pos) + SLOT_SEQ) }
        }

        /// The header word of the MPMC slot of `pos`.
        #[inline(always)]
        pub(crate) fn slot_header(&self, pos: u64) -> &AtomicU64 {
            // SAFETY: as for slot_seq.
            unsafe { self.at(self.geo.data + slot_offset(&self.geo, pos) + SLOT_HEADER_WORD) }
        }

        /// Data-region offset of the MPMC slot of `pos`.
        #[inline(always)]
        pub(crate) fn slot_start(&self, pos: u64) -> usize {
            slot_offset(&self.geo, pos)
        }

        /// The 8-byte word at data-region offset `off`; `None` unless it is 8-aligned and inside
        /// the data region.
        pub(crate) fn data_word(&self, off: usize) -> Option<&AtomicU64> {
            (off.is_multiple_of(8) && off < self.geo.data_len).then(|| {
                // SAFETY: 8-aligned (the data region is 4096-aligned) and inside the data
                // region, checked just above.
                unsafe { self.at(self.geo.data + off) }
            })
        }

        /// Checks that `[off, off + len)` lies inside the data region.
        #[inline(always)]
        pub(crate) fn range(&self, off: usize, len: usize) -> Option<DataRange> {
            (off <= self.geo.data_len && len <= self.geo.data_len - off)
                .then_some(DataRange { off, len })
        }

        /// Copies `src` to the start of `r`.
        #[inline(always)]
        pub(crate) fn copy_in(&self, r: DataRange, src: &[u8]) {
            let n = src.len().min(r.len);
            // SAFETY: r lies in the data region (checked when it was made) and n <= r.len; src
            // is a distinct local buffer, so the two do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.data.as_ptr().add(r.off), n) }
        }

        /// Copies the start of `r` into `dst`.
        #[inline(always)]
        pub(crate) fn copy_out(&self, r: DataRange, dst: &mut [u8]) {
            let n = dst.len().min(r.len);
            // SAFETY: as for copy_in, in the other direction.
            unsafe {
                std::ptr::copy_nonoverlapping(self.data.as_ptr().add(r.off), dst.as_mut_ptr(), n)
            }
        }

        /// Copies the bytes of `src` to the start of `dst`, both in the data region (they may
        /// overlap).
        pub(crate) fn copy_within(&self, src: DataRange, dst: DataRange) {
            let n = src.len.min(dst.len);
            // SAFETY: both ranges lie in the data region (checked when they were made) and
            // n is at most either length; `copy` allows overlap.
            unsafe {
                std::ptr::copy(
                    self.data.as_ptr().add(src.off),
                    self.data.as_ptr().add(dst.off),
                    n,
                )
            }
        }

        /// The bytes of `r`.
        ///
        /// # Safety
        /// No `&mut` to an overlapping range may exist in this process while the slice lives:
        /// the ring protocol must give this process the range for reading.
        #[inline(always)]
        pub(crate) unsafe fn slice(&self, r: DataRange) -> &[u8] {
            // SAFETY: in bounds (checked when r was made); exclusivity is the caller's promise.
            // Bytes in shared memory are always initialised.
            unsafe { std::slice::from_raw_parts(self.data.as_ptr().add(r.off), r.len) }
        }

        /// The bytes of `r`, writable.
        ///
        /// # Safety
        /// No other reference to an overlapping range may exist in this process while the
        /// slice lives: the ring protocol must give this process the range for writing.
        #[allow(clippy::mut_from_ref)]
        #[inline(always)]
        pub(crate) unsafe fn slice_mut(&self, r: DataRange) -> &mut [u8] {
            // SAFETY: as for slice, with exclusive access promised by the caller.
            unsafe { std::slice::from_raw_parts_mut(self.data.as_ptr().add(r.off), r.len) }
        }

        /// Hints the CPU to fetch the cache lines of `[off, off + len)` of the data region.
        #[inline(always)]
        pub(crate) fn prefetch(&self, off: usize, len: usize) {
            #[cfg(target_arch = "x86_64")]
            {
                let end = off.saturating_add(len).min(self.geo.data_len);
                let mut at = off & !(CACHE_LINE - 1);
                while at < end {
                    // SAFETY: at < data_len, so the address is inside the mapping; a prefetch
                    // never faults and changes no memory.
                    unsafe {
                        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                        _mm_prefetch::<_MM_HINT_T0>(self.data.as_ptr().add(at) as *const i8);
                    }
                    at += CACHE_LINE;
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (off, len);
        }
    }
}

#[cfg(loom)]
mod heap {
    use super::*;
    use crate::sync::{AtomicU32, Ordering};

    /// The loom stand-in for a segment: the same parts, as heap-allocated loom atomics.
    pub(crate) struct Memory {
        geo: Geometry,
        producer: CursorLine,
        consumer: CursorLine,
        repair: RepairLine,
        participants: Vec<Participant>,
        words: Vec<AtomicU64>,
    }

    fn line() -> CursorLine {
        CursorLine {
            position: AtomicU64::new(0),
            waiters: AtomicU32::new(0),
            futex: AtomicU32::new(0),
            frees: AtomicU64::new(0),
            moved: AtomicU64::new(0),
        }
    }

    impl Memory {
        /// A zeroed model segment of geometry `geo`, initialised as `segment` initialises one.
        pub(crate) fn new(geo: Geometry) -> Memory {
            let n = (geo.max_producers + geo.max_consumers) as usize;
            let m = Memory {
                geo,
                producer: line(),
                consumer: line(),
                repair: RepairLine {
                    owner: AtomicU64::new(0),
                    claim: AtomicU64::new(0),
                    repairs: AtomicU64::new(0),
                    redelivered: AtomicU64::new(0),
                    skipped: AtomicU64::new(0),
                    group_epoch: AtomicU64::new(0),
                },
                participants: (0..n)
                    .map(|_| Participant {
                        owner: AtomicU64::new(0),
                        claim: AtomicU64::new(0),
                        frames: AtomicU64::new(0),
                        bytes: AtomicU64::new(0),
                        released: AtomicU64::new(0),
                        parked: AtomicU32::new(0),
                        reserved: AtomicU32::new(0),
                        start_time: AtomicU64::new(0),
                        missed: AtomicU64::new(0),
                        pool_tag: AtomicU64::new(0),
                    })
                    .collect(),
                words: (0..geo.data_len / 8).map(|_| AtomicU64::new(0)).collect(),
            };
            if geo.kind == crate::layout::Kind::Mpmc {
                crate::mpmc::initialise(&m);
            }
            if geo.kind == crate::layout::Kind::Broadcast {
                crate::broadcast::initialise(&m);
            }
            m
        }

        pub(crate) fn geometry(&self) -> &Geometry {
            &self.geo
        }
        pub(crate) fn producer_line(&self) -> &CursorLine {
            &self.producer
        }
        pub(crate) fn consumer_line(&self) -> &CursorLine {
            &self.consumer
        }
        pub(crate) fn repair_line(&self) -> &RepairLine {
            &self.repair
        }
        pub(crate) fn participant(&self, role: Role, index: u32) -> Option<&Participant> {
            let i = match role {
                Role::Producer => index,
                Role::Consumer => self.geo.max_producers + index,
            };
            self.geo.participant_offset(role, index)?;
            self.participants.get(i as usize)
        }
        pub(crate) fn record_word(&self, pos: u64) -> &AtomicU64 {
            &self.words[record_offset(&self.geo, pos) / 8]
        }
        pub(crate) fn slot_seq(&self, pos: u64) -> &AtomicU64 {
            &self.words[(slot_offset(&self.geo, pos) + SLOT_SEQ) / 8]
        }
        pub(crate) fn pool_word(&self, i: u64) -> Option<&AtomicU64> {
            Some(&self.words[pool_word_offset(&self.geo, i)? / 8])
        }
        pub(crate) fn slot_header(&self, pos: u64) -> &AtomicU64 {
            &self.words[(slot_offset(&self.geo, pos) + SLOT_HEADER_WORD) / 8]
        }
        pub(crate) fn slot_start(&self, pos: u64) -> usize {
            slot_offset(&self.geo, pos)
        }
        pub(crate) fn range(&self, off: usize, len: usize) -> Option<DataRange> {
            (off <= self.geo.data_len && len <= self.geo.data_len - off)
                .then_some(DataRange { off, len })
        }
        pub(crate) fn data_word(&self, off: usize) -> Option<&AtomicU64> {
            (off.is_multiple_of(8) && off < self.geo.data_len).then(|| &self.words[off / 8])
        }
        /// Payloads start 8-aligned and own their last word, so whole-word stores are exact.
        pub(crate) fn copy_in(&self, r: DataRange, src: &[u8]) {
            assert_eq!(r.off % 8, 0);
            for (i, chunk) in src[..src.len().min(r.len)].chunks(8).enumerate() {
                let mut w = [0u8; 8];
                w[..chunk.len()].copy_from_slice(chunk);
                self.words[r.off / 8 + i].store(u64::from_ne_bytes(w), Ordering::Relaxed);
            }
        }
        pub(crate) fn copy_out(&self, r: DataRange, dst: &mut [u8]) {
            assert_eq!(r.off % 8, 0);
            let n = dst.len().min(r.len);
            for (i, chunk) in dst[..n].chunks_mut(8).enumerate() {
                let w = self.words[r.off / 8 + i]
                    .load(Ordering::Relaxed)
                    .to_ne_bytes();
                chunk.copy_from_slice(&w[..chunk.len()]);
            }
        }
        pub(crate) fn copy_within(&self, src: DataRange, dst: DataRange) {
            let mut buf = vec![0u8; src.len.min(dst.len)];
            self.copy_out(src, &mut buf);
            self.copy_in(dst, &buf);
        }
        pub(crate) fn prefetch(&self, _off: usize, _len: usize) {}
    }
}

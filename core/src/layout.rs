//! Every offset, size and constant of a shmring segment, and the one function that validates a
//! segment header. Nothing else in the crate computes an offset into shared memory.
//!
//! A segment is one shared-memory object (a POSIX `shm_open` object or a `memfd`). Everything in
//! it is in the host's byte order. It holds offsets, never pointers, so every process may map it
//! at a different address.
//!
//! ```text
//!  offset                                                      size
//!  0      +-----------------------------------------------+
//!         | SegmentHeader: magic, version, state, kind,   |   256   written once by the creator,
//!         | sizes, offsets, creator, owner, checksum      |         then only `state` changes
//!  256    +-----------------------------------------------+
//!         | producer CursorLine                            |   128   written by producers
//!  384    +-----------------------------------------------+
//!         | consumer CursorLine                            |   128   written by consumers
//!  512    +-----------------------------------------------+
//!         | RepairLine                                     |   128   written by the coordinator
//!  640    +-----------------------------------------------+
//!         | Participant[max_producers]                     | 128 * P  one line per producer
//!         | Participant[max_consumers]                     | 128 * C  one line per consumer
//!         +-----------------------------------------------+  (padded to a 4096-byte boundary)
//!  data   | data region                                    | data_len
//!         |   SPSC: byte ring of variable-length records   |
//!         |   MPMC, broadcast: `slots` fixed-size slots    |
//!         |   (then an MPMC message pool, or a partition's |
//!         |   checkpoint area)                             |
//!         +-----------------------------------------------+  total_size
//! ```
//!
//! Every block that a process writes on the data path sits on its own 128-byte line: two 64-byte
//! cache lines, because Intel's adjacent-line prefetcher fetches lines in pairs and would
//! otherwise recreate false sharing across a 64-byte boundary (crossbeam's `CachePadded` gives
//! the same reason). The figure is fixed here, not taken from the target, so that C and Python
//! readers see the same bytes.
//!
//! # Cursor line (128 bytes)
//!
//! ```text
//!   0        8        12       16       24                                   128
//!  +--------+--------+--------+--------+-------------------------------------+
//!  |position|waiters | futex  | frees  |           (unused, zero)            |
//!  +--------+--------+--------+--------+-------------------------------------+
//! ```
//! * producer line: `position` is the SPSC tail (published after every publish; consumers never
//!   read it on the data path) or the MPMC enqueue position; `waiters`/`futex` belong to
//!   consumers sleeping until data arrives.
//! * consumer line: `position` is the SPSC head (bytes released) or the MPMC dequeue position;
//!   `waiters`/`futex` belong to producers sleeping until space frees up; `frees` counts the
//!   frees of an MPMC message pool's chunks (what a producer waiting for chunks watches).
//!
//! A cursor line holds nothing but what the other side reads: a producer waiting on a full
//! ring spins on the consumer line, so a store there that it does not need would cost the
//! consumer a cache-line transfer.
//!
//! # SPSC record (8-byte aligned, contiguous)
//!
//! ```text
//!   0                   32       40       48                64
//!  +-------------------+--------+--------+-----------------+----------------------+
//!  |   length (u32)    |  type  | flags  |  lap tag (u16)  | payload (length) ... | pad to 8
//!  +-------------------+--------+--------+-----------------+----------------------+
//!   \______________ header: one u64, stored last with Release ______________/
//! ```
//! The header word is zero until the record is committed: a consumer polls the header of the next
//! record instead of the producer's tail, so a small frame crosses between cores in one
//! cache-line transfer. A record never wraps: when it does not fit before the end of the ring,
//! the producer first writes a `PADDING` record up to the end. Before publishing, the producer
//! zeroes the header word just after the last record it wrote (the *next* header), so a consumer
//! can never mistake stale bytes of an earlier lap for a header; for that the producer always
//! keeps 8 bytes free ahead of its tail. The lap tag is `(position >> log2(capacity)) as u16`,
//! a check that the header belongs to the lap the consumer is on.
//!
//! # MPMC slot (`slot_stride` bytes, a multiple of 64)
//!
//! ```text
//!   0        8        16
//!  +--------+--------+-----------------------------+
//!  |  seq   | header |  payload (max_frame_size)   |
//!  +--------+--------+-----------------------------+
//! ```
//! `seq` is the per-slot sequence of Vyukov's bounded queue: `seq == pos` means free for the
//! producer of position `pos`, `seq == pos + 1` committed for the consumer of `pos`, and the
//! consumer sets it to `pos + slots` on release. `header` uses the record header encoding (lap
//! tag unused, zero). A `POOL` record's payload is a reference to a message in the pool: first
//! chunk, length, tag (three `u64`s).
//!
//! # MPMC message pool (channels with messages longer than a frame)
//!
//! After the slots: one `u64` word per chunk (64-aligned), zero when free, else the tag of the
//! message in it; then the chunks (4096-aligned), `pool_chunk` bytes each. Sizes and offsets
//! are derived from the header's (`Geometry::with_pool`).
//!
//! # Checkpoint area (an SPSC partition of a partitioned channel)
//!
//! After the ring (data-region offset `capacity`, 64-aligned): a `u64` count of checkpoints
//! committed on its own 64-byte line, then two buffers of `align_up(16 + checkpoint_size, 64)`
//! bytes, each `[position u64][length u64][state bytes]`. Checkpoint `n` (counted from 1) is in
//! buffer `n % 2`; the count is stored (Release) after the buffer is written, so a reader that
//! loads it (Acquire) finds that buffer whole. Written by the partition's consumer alone; see
//! `checkpoint.rs` and ARCHITECTURE.md, "Exactly-once processing".
//!
//! # Participant (128 bytes, one per admitted producer or consumer)
//!
//! ```text
//!   0        8        16       24       32       40   44   48         56       64      72    128
//!  +--------+--------+--------+--------+--------+----+----+----------+--------+--------+-----+
//!  | owner  | claim  | frames | bytes  |released|park|  0 |start_time| missed |pool tag| (0) |
//!  +--------+--------+--------+--------+--------+----+----+----------+--------+--------+-----+
//! ```
//! `pool tag` is an MPMC producer's: the tag of the message it is writing into the pool (zero:
//! none; see `mpmc.rs`).
//! `owner` is zero when free, else `incarnation << 32 | pid`. `start_time` is the owner's
//! process start time (clock ticks since boot, field 22 of `/proc/<pid>/stat`): with the pid it
//! names the process even after the pid is reused, so a coordinator that adopts a segment can
//! tell a live owner from a dead one. `claim` says what the participant has taken and not
//! released:
//! * MPMC producer or consumer: the positions it is taking, `first << 8 | count`, written
//!   (Release) before the CAS that takes them, and cleared when an attempt ends without taking
//!   anything, so a record that covers a position stuck in the ring is the holder's;
//! * SPSC consumer: its *delivered* position: frames in `[released, delivered)` were handed to
//!   the application and not released; a successor flags them redelivered;
//! * SPSC producer: unused (zero); the producer's state is the tail and the records.
//! * broadcast producer or subscriber: unused (zero).
//!
//! `released` of a broadcast subscriber is its cursor, published lazily like the SPSC head
//! (`broadcast.rs`): the producer of a `BLOCK` channel never overwrites a position at or past
//! the smallest `released` of the live subscribers. `missed` counts the frames a subscriber of a
//! `DROP_OLDEST` channel was lapped on (published with its statistics).
//!
//! `released` is the SPSC consumer's true position: everything before it was consumed. The
//! consumer line's head publishes it to the producer lazily (in batches of a quarter ring, and
//! whenever the ring is found empty), because a producer waiting on a full ring polls the head
//! and a store there per frame would cost a cache-line transfer per frame; a successor resumes
//! at `released`. Values below the head are stale.
//!
//! `park` ([`PARKED_NONE`], [`PARKED_ON_PRODUCER`], [`PARKED_ON_CONSUMER`]) says that the
//! owner is counted in that cursor line's `waiters`: set after its increment, cleared before its
//! decrement, so a coordinator that finds a dead owner's entry parked takes the count back
//! (a death between the two stores leaves one spurious count: a wasted `FUTEX_WAKE` per
//! publish, never a lost wake-up).
//!
//! `frames` and `bytes` are the participant's own counters. Each entry is on its own 128-byte
//! line, written by its owner alone (and by the coordinator once the owner is dead). A
//! coordinator that sees the owner dead can tell exactly what it held (ARCHITECTURE.md,
//! "Failure model").
//!
//! # Repair line (128 bytes)
//!
//! ```text
//!   0        8        16       24          32        40                                128
//!  +--------+--------+--------+-----------+---------+----------------------------------+
//!  | owner  | claim  |repairs |redelivered| skipped |group epoch|   (unused, zero)     |
//!  +--------+--------+--------+-----------+---------+-----------+----------------------+
//! ```
//! `group epoch` is a partition's: the coordinator bumps it in every partition of a partitioned
//! channel when its consumer group's assignment changes (`partition.rs`).
//! The coordinator's own entry. `owner` is the pid of the coordinator that adopted the segment.
//! `claim` is an MPMC claim record (as a producer's) of the position the coordinator is taking
//! to deliver a dead consumer's frame again; a coordinator that adopts the segment finishes
//! whatever its dead predecessor's claim left half done. The counters count repairs (dead
//! participants whose entries were freed), frames delivered again, and positions turned into
//! skip records; they live here so that they survive a restart of the coordinator.
//!
//! # State word (`SegmentHeader::state`, 4 bytes at offset 12)
//!
//! ```text
//!   0        8                                 32
//!  +--------+----------------------------------+
//!  | state  |  finishes (24 bits, wrapping)    |
//!  +--------+----------------------------------+
//! ```
//! The low byte ([`state_of`]) is [`STATE_INITIALISING`], [`STATE_READY`], [`STATE_DELETED`]
//! or [`STATE_FINISHED`]; the upper 24 bits count the finish marks ever made. A producer that
//! finishes a channel stores `FINISHED` with the count one higher; one that finds, after its
//! mark, that a producer attached meanwhile takes the mark back only by a compare-and-swap
//! from exactly the word it stored, so it can never take back a later producer's finish
//! (ARCHITECTURE.md, "End of stream"). A coordinator's delete stores plain `DELETED`, which
//! nothing changes afterwards.

use crate::error::Error;
use crate::sync::{AtomicU32, AtomicU64};

/// `b"shmring\0"` read as a native-endian `u64`: the first eight bytes of every segment.
pub const MAGIC: u64 = u64::from_ne_bytes(*b"shmring\0");
/// Bumped on any change to the bytes described in this module (3: broadcast channels, the
/// header's `overflow` and `history`, the participant's `missed`; 4: the state word's
/// `FINISHED` and its count of finishes; 5: the header's `max_message_size`, the record types
/// `FIRST` and `PART` of a message split over several records; 6: the MPMC message pool, its
/// `POOL` record, the consumer line's `frees`, the participant's `pool_tag`; 7: the producer
/// line's `moved`, set when a resize replaced the segment; 8: the header's
/// `checkpoint_size`, the checkpoint area after an SPSC ring, the repair line's `group_epoch`).
pub const LAYOUT_VERSION: u32 = 8;

/// Size of the segment header block.
pub const HEADER_SIZE: usize = 256;
/// Padding of every block written on the data path (two 64-byte cache lines).
pub const LINE: usize = 128;
/// The hardware cache line, for prefetch arithmetic.
pub const CACHE_LINE: usize = 64;
/// Alignment of the data region.
pub const DATA_ALIGN: usize = 4096;

/// Offset of the producer cursor line.
pub const PRODUCER_LINE: usize = HEADER_SIZE;
/// Offset of the consumer cursor line.
pub const CONSUMER_LINE: usize = PRODUCER_LINE + LINE;
/// Offset of the repair line: the coordinator's own entry (see the module docs).
pub const REPAIR_LINE: usize = CONSUMER_LINE + LINE;
/// Offset of the participant table.
pub const PARTICIPANTS: usize = REPAIR_LINE + LINE;

/// `SegmentHeader::state` while the creator is still writing the segment.
pub const STATE_INITIALISING: u32 = 0;
/// `SegmentHeader::state` once the segment may be used (stored with Release).
pub const STATE_READY: u32 = 1;
/// `SegmentHeader::state` once a coordinator deleted the channel: consumers take what is left
/// in the ring and then get `Closed`; a producer that finds the ring full gets `Closed`.
pub const STATE_DELETED: u32 = 2;
/// `SegmentHeader::state` once the last attached producer finished the stream
/// (`Producer::finish`): consumers take what is left in the ring and then get `Closed`. A
/// producer admitted afterwards turns the state back to `READY` (the stream continues).
pub const STATE_FINISHED: u32 = 3;
/// The bits of the state word that hold the state; the rest count finishes.
pub const STATE_MASK: u32 = 0xff;
/// One finish in the state word's count of finishes.
pub const FINISH_ONE: u32 = 1 << 8;

/// The state ([`STATE_READY`], ...) of a state word.
#[inline(always)]
pub const fn state_of(word: u32) -> u32 {
    word & STATE_MASK
}

/// State word `word` with its state replaced by `state`, its count of finishes kept.
#[inline(always)]
pub const fn with_state(word: u32, state: u32) -> u32 {
    (word & !STATE_MASK) | state
}

/// Size of an SPSC record header.
pub const RECORD_HEADER: usize = 8;
/// Alignment of SPSC records.
pub const RECORD_ALIGN: usize = 8;
/// Smallest SPSC ring, in bytes.
pub const MIN_SPSC_CAPACITY: u64 = 64;
/// Largest ring (SPSC bytes, or MPMC slots times stride), in bytes.
pub const MAX_DATA_LEN: u64 = 1 << 40;
/// Largest frame, in bytes.
pub const MAX_FRAME_SIZE: u32 = 1 << 30;
/// Largest message, in bytes (a message longer than `max_frame_size` is split into records).
pub const MAX_MESSAGE_SIZE: u64 = 1 << 40;
/// Bytes at the start of a `FIRST` record's payload that give the whole message's length.
pub const MESSAGE_PREFIX: usize = 8;
/// Bytes of an MPMC slot's reference to a message in the pool: first chunk, length, tag (three
/// `u64`s).
pub const MPMC_POOL_REF: usize = 24;

/// Offset of `seq` in an MPMC slot.
pub const SLOT_SEQ: usize = 0;
/// Offset of the header word in an MPMC slot.
pub const SLOT_HEADER_WORD: usize = 8;
/// Offset of the payload in an MPMC slot.
pub const SLOT_PAYLOAD: usize = 16;
/// Fewest MPMC slots.
pub const MIN_SLOTS: u64 = 2;
/// Most MPMC producers or consumers.
pub const MAX_PARTICIPANTS: u32 = 1024;

/// Largest number of positions one claim record can describe.
pub const MAX_CLAIM_COUNT: u64 = 255;
/// Positions at or past this value cannot be written in a claim record; a ring whose cursor
/// reaches it reports `Corrupted` (at 10^9 frames a second it takes over two years).
pub const MAX_POSITION: u64 = 1 << 56;

/// The kind of ring a segment holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u32)]
pub enum Kind {
    /// One producer, one consumer, variable-length records in a byte ring.
    Spsc = 1,
    /// Many producers, many consumers, fixed-size slots; each frame goes to one consumer.
    Mpmc = 2,
    /// One producer, many subscribers, fixed-size slots; every frame goes to every subscriber.
    Broadcast = 3,
}

impl Kind {
    fn from_u32(v: u32) -> Option<Kind> {
        match v {
            1 => Some(Kind::Spsc),
            2 => Some(Kind::Mpmc),
            3 => Some(Kind::Broadcast),
            _ => None,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Spsc => "spsc",
            Kind::Mpmc => "mpmc",
            Kind::Broadcast => "broadcast",
        })
    }
}

/// The first 256 bytes of a segment. Plain integers: it is written once, before `state` turns
/// `STATE_READY`, and read by copying it out (see `region::read_header`); `state` alone is
/// accessed atomically, through `region`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`LAYOUT_VERSION`].
    pub layout_version: u32,
    /// The state word: [`STATE_INITIALISING`], [`STATE_READY`], [`STATE_DELETED`] or
    /// [`STATE_FINISHED`] in the low byte, a count of finishes above (see the module docs).
    pub state: u32,
    /// A [`Kind`] as `u32`.
    pub kind: u32,
    /// Broadcast: an [`Overflow`] policy as `u32`; other kinds: zero.
    pub overflow: u32,
    /// Bytes of the whole segment.
    pub total_size: u64,
    /// SPSC: bytes of the ring; MPMC: number of slots. A power of two.
    pub capacity: u64,
    /// Largest frame payload, bytes.
    pub max_frame_size: u32,
    /// MPMC: bytes per slot; SPSC: zero.
    pub slot_stride: u32,
    /// Entries of the producer participant table.
    pub max_producers: u32,
    /// Entries of the consumer participant table.
    pub max_consumers: u32,
    /// Offset of the producer cursor line.
    pub producer_line: u64,
    /// Offset of the consumer cursor line.
    pub consumer_line: u64,
    /// Offset of the participant table.
    pub participants: u64,
    /// Offset of the data region.
    pub data: u64,
    /// Bytes of the data region.
    pub data_len: u64,
    /// Process that created the segment.
    pub creator_pid: u32,
    /// Permission bits the segment was created with.
    pub mode: u32,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_ns: u64,
    /// Opaque number chosen by the creator (a coordinator numbers a channel's incarnations).
    pub generation: u64,
    /// The channel owner's user id (the creating process's, unless a coordinator created it on
    /// someone's behalf); `mode` applies to it.
    pub owner_uid: u32,
    /// The channel owner's group id.
    pub owner_gid: u32,
    /// Broadcast: frames a new subscriber is offered from before it joined; otherwise zero.
    pub history: u64,
    /// Largest message payload, bytes (at least `max_frame_size`).
    pub max_message_size: u64,
    /// FNV-1a 64 of the fields above and `checkpoint_size`, with `state` counted as zero.
    pub checksum: u64,
    /// Bytes of consumer state each of the checkpoint area's two buffers holds (an SPSC
    /// partition of a partitioned channel; zero: no checkpoint area).
    pub checkpoint_size: u64,
    /// Zero.
    pub reserved: [u64; 12],
}

/// Offset of `SegmentHeader::state` (the only header field accessed atomically).
pub const STATE_OFFSET: usize = std::mem::offset_of!(SegmentHeader, state);

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<SegmentHeader>() == HEADER_SIZE);
    assert!(offset_of!(SegmentHeader, magic) == 0);
    assert!(offset_of!(SegmentHeader, layout_version) == 8);
    assert!(STATE_OFFSET == 12);
    assert!(offset_of!(SegmentHeader, kind) == 16);
    assert!(offset_of!(SegmentHeader, overflow) == 20);
    assert!(offset_of!(SegmentHeader, total_size) == 24);
    assert!(offset_of!(SegmentHeader, capacity) == 32);
    assert!(offset_of!(SegmentHeader, max_frame_size) == 40);
    assert!(offset_of!(SegmentHeader, slot_stride) == 44);
    assert!(offset_of!(SegmentHeader, max_producers) == 48);
    assert!(offset_of!(SegmentHeader, max_consumers) == 52);
    assert!(offset_of!(SegmentHeader, producer_line) == 56);
    assert!(offset_of!(SegmentHeader, data) == 80);
    assert!(offset_of!(SegmentHeader, data_len) == 88);
    assert!(offset_of!(SegmentHeader, creator_pid) == 96);
    assert!(offset_of!(SegmentHeader, created_unix_ns) == 104);
    assert!(offset_of!(SegmentHeader, generation) == 112);
    assert!(offset_of!(SegmentHeader, owner_uid) == 120);
    assert!(offset_of!(SegmentHeader, owner_gid) == 124);
    assert!(offset_of!(SegmentHeader, history) == 128);
    assert!(offset_of!(SegmentHeader, max_message_size) == 136);
    assert!(offset_of!(SegmentHeader, checksum) == 144);
    assert!(offset_of!(SegmentHeader, checkpoint_size) == 152);
};

impl SegmentHeader {
    /// FNV-1a 64 over every field before `checksum`, in order, with `state` as zero.
    pub fn compute_checksum(&self) -> u64 {
        let mut h = Fnv::new();
        h.u64(self.magic);
        h.u32(self.layout_version);
        h.u32(0); // state changes after the checksum is written
        h.u32(self.kind);
        h.u32(self.overflow);
        h.u64(self.total_size);
        h.u64(self.capacity);
        h.u32(self.max_frame_size);
        h.u32(self.slot_stride);
        h.u32(self.max_producers);
        h.u32(self.max_consumers);
        h.u64(self.producer_line);
        h.u64(self.consumer_line);
        h.u64(self.participants);
        h.u64(self.data);
        h.u64(self.data_len);
        h.u32(self.creator_pid);
        h.u32(self.mode);
        h.u64(self.created_unix_ns);
        h.u64(self.generation);
        h.u32(self.owner_uid);
        h.u32(self.owner_gid);
        h.u64(self.history);
        h.u64(self.max_message_size);
        h.u64(self.checkpoint_size);
        h.0
    }
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_ne_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_ne_bytes());
    }
}

/// A cursor and the futex that sleepers on its owner's progress wait on. See the module docs.
#[repr(C, align(128))]
pub struct CursorLine {
    /// SPSC tail or head; MPMC enqueue or dequeue position.
    pub position: AtomicU64,
    /// Number of parties asleep (or about to sleep) on `futex`.
    pub waiters: AtomicU32,
    /// Event count: bumped by the owner of this line before it wakes sleepers.
    pub futex: AtomicU32,
    /// Consumer line of an MPMC channel with a message pool: bumped each time chunks are freed
    /// (what a producer waiting for pool space watches); otherwise zero.
    pub frees: AtomicU64,
    /// The generation of the segment that replaced this one when the coordinator resized the
    /// channel (zero: not replaced), on both lines. Written once, by the coordinator;
    /// producers look at the producer line's before each send (and MPMC producers again after
    /// each claim) and move there, consumers at it when the ring is empty; MPMC consumers
    /// look at the consumer line's copy when they release a slot (see ARCHITECTURE.md,
    /// "Online resize").
    pub moved: AtomicU64,
}

/// One admitted producer or consumer. See the module docs.
#[repr(C, align(128))]
pub struct Participant {
    /// Zero when free, else `incarnation << 32 | pid`.
    pub owner: AtomicU64,
    /// MPMC: `first << 8 | count` of the positions being taken (count zero: none);
    /// SPSC consumer: the delivered position; SPSC producer: zero.
    pub claim: AtomicU64,
    /// Frames this participant sent or received.
    pub frames: AtomicU64,
    /// Payload bytes this participant sent or received.
    pub bytes: AtomicU64,
    /// SPSC consumer: the position up to which frames were released; broadcast subscriber: its
    /// cursor; otherwise zero.
    pub released: AtomicU64,
    /// `PARKED_*`: the cursor line whose `waiters` count the owner is in.
    pub parked: AtomicU32,
    /// Zero.
    pub reserved: AtomicU32,
    /// The owner's process start time (clock ticks since boot), zero if unknown.
    pub start_time: AtomicU64,
    /// Broadcast subscriber: frames it was lapped on and never received; otherwise zero.
    pub missed: AtomicU64,
    /// MPMC producer: the tag of the message it is writing into the pool (zero: none).
    pub pool_tag: AtomicU64,
}

/// `Participant::parked`: not counted in any line's waiters.
pub const PARKED_NONE: u32 = 0;
/// `Participant::parked`: counted in the producer line's waiters (a consumer waiting for data).
pub const PARKED_ON_PRODUCER: u32 = 1;
/// `Participant::parked`: counted in the consumer line's waiters (a producer waiting for room).
pub const PARKED_ON_CONSUMER: u32 = 2;

/// The coordinator's entry. See the module docs.
#[repr(C, align(128))]
pub struct RepairLine {
    /// Pid of the coordinator that adopted the segment (zero: none yet).
    pub owner: AtomicU64,
    /// MPMC claim record of the position the coordinator is taking (count zero: none).
    pub claim: AtomicU64,
    /// Dead participants whose entries were repaired and freed.
    pub repairs: AtomicU64,
    /// Frames delivered again because their consumer died holding them.
    pub redelivered: AtomicU64,
    /// Positions a dead producer took and never committed, turned into skip records.
    pub skipped: AtomicU64,
    /// A partition of a partitioned channel: bumped (by the coordinator, in every partition of
    /// the channel) each time the consumer group's assignment of partitions changes; members
    /// look at it between receives and ask the coordinator for their partitions when it moved.
    pub group_epoch: AtomicU64,
}

#[cfg(not(loom))]
const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<CursorLine>() == LINE && align_of::<CursorLine>() == LINE);
    assert!(offset_of!(CursorLine, position) == 0);
    assert!(offset_of!(CursorLine, waiters) == 8);
    assert!(offset_of!(CursorLine, futex) == 12);
    assert!(offset_of!(CursorLine, frees) == 16);
    assert!(offset_of!(CursorLine, moved) == 24);
    assert!(size_of::<Participant>() == LINE && align_of::<Participant>() == LINE);
    assert!(offset_of!(Participant, owner) == 0);
    assert!(offset_of!(Participant, claim) == 8);
    assert!(offset_of!(Participant, frames) == 16);
    assert!(offset_of!(Participant, bytes) == 24);
    assert!(offset_of!(Participant, released) == 32);
    assert!(offset_of!(Participant, parked) == 40);
    assert!(offset_of!(Participant, start_time) == 48);
    assert!(offset_of!(Participant, missed) == 56);
    assert!(offset_of!(Participant, pool_tag) == 64);
    assert!(size_of::<RepairLine>() == LINE && align_of::<RepairLine>() == LINE);
    assert!(offset_of!(RepairLine, owner) == 0);
    assert!(offset_of!(RepairLine, claim) == 8);
    assert!(offset_of!(RepairLine, repairs) == 16);
    assert!(offset_of!(RepairLine, redelivered) == 24);
    assert!(offset_of!(RepairLine, skipped) == 32);
    assert!(offset_of!(RepairLine, group_epoch) == 40);
    assert!(REPAIR_LINE + LINE == PARTICIPANTS);
};

/// Record types (bits 32..40 of a record header). Zero means "not committed".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordType {
    /// A frame.
    Data = 1,
    /// Filler up to the end of the SPSC ring; the frame that did not fit follows at offset 0.
    Padding = 2,
    /// Space given up by an aborted claim (MPMC) or a repair; consumers step over it.
    Skip = 3,
    /// The first record of a message split over several: its payload starts with the whole
    /// message's length ([`MESSAGE_PREFIX`] bytes, a native-endian `u64`), then the first bytes.
    First = 4,
    /// A further record of a split message: the next bytes.
    Part = 5,
    /// MPMC: a reference to a message in the pool ([`MPMC_POOL_REF`] bytes).
    Pool = 6,
}

/// Header flag: the frame was handed to a consumer that died before releasing it.
pub const FLAG_REDELIVERED: u8 = 1;

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Payload length in bytes.
    pub len: u32,
    /// The record type; `None` for a value that is no known type.
    pub ty: Option<RecordType>,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Lap tag (SPSC) or zero (MPMC).
    pub tag: u16,
}

/// Packs a record header word. Never zero, since `ty` is never zero.
#[inline(always)]
pub const fn encode_header(len: u32, ty: RecordType, flags: u8, tag: u16) -> u64 {
    (len as u64) | ((ty as u64) << 32) | ((flags as u64) << 40) | ((tag as u64) << 48)
}

/// Unpacks a non-zero record header word.
#[inline(always)]
pub const fn decode_header(word: u64) -> RecordHeader {
    let ty = match (word >> 32) as u8 {
        1 => Some(RecordType::Data),
        2 => Some(RecordType::Padding),
        3 => Some(RecordType::Skip),
        4 => Some(RecordType::First),
        5 => Some(RecordType::Part),
        6 => Some(RecordType::Pool),
        _ => None,
    };
    RecordHeader {
        len: word as u32,
        ty,
        flags: (word >> 40) as u8,
        tag: (word >> 48) as u16,
    }
}

/// Bytes an SPSC record with `len` payload bytes occupies: header plus payload, rounded up to 8.
#[inline(always)]
pub const fn record_size(len: usize) -> usize {
    (RECORD_HEADER + len + (RECORD_ALIGN - 1)) & !(RECORD_ALIGN - 1)
}

/// Lap tag of an SPSC position.
#[inline(always)]
pub const fn lap_tag(pos: u64, capacity_log2: u32) -> u16 {
    (pos >> capacity_log2) as u16
}

/// Packs an MPMC claim record.
#[inline(always)]
pub const fn encode_claim(first: u64, count: u64) -> u64 {
    (first << 8) | count
}

/// Unpacks an MPMC claim record into `(first, count)`.
#[inline(always)]
pub const fn decode_claim(word: u64) -> (u64, u64) {
    (word >> 8, word & 0xff)
}

/// Packs a participant owner word.
#[inline(always)]
pub const fn encode_owner(pid: u32, incarnation: u32) -> u64 {
    ((incarnation as u64) << 32) | pid as u64
}

/// Unpacks a participant owner word into `(pid, incarnation)`.
#[inline(always)]
pub const fn decode_owner(word: u64) -> (u32, u32) {
    (word as u32, (word >> 32) as u32)
}

/// Which participant table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A producer.
    Producer,
    /// A consumer.
    Consumer,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
        })
    }
}

/// What the producer of a broadcast channel does when its ring is full.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
#[repr(u32)]
pub enum Overflow {
    /// Lossless: the producer waits for the slowest live subscriber (back-pressure).
    #[default]
    Block = 0,
    /// The producer never waits: it overwrites the oldest frame, and a subscriber that was
    /// lapped skips to the oldest intact frame, counting exactly what it missed.
    DropOldest = 1,
}

impl Overflow {
    /// The policy of its `u32` value.
    pub fn from_u32(v: u32) -> Option<Overflow> {
        match v {
            0 => Some(Overflow::Block),
            1 => Some(Overflow::DropOldest),
            _ => None,
        }
    }
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Overflow::Block => "block",
            Overflow::DropOldest => "drop-oldest",
        })
    }
}

/// The shape of a channel as a user asks for it. Sizes are rounded as [`Geometry::new`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChannelConfig {
    /// SPSC, MPMC or broadcast.
    pub kind: Kind,
    /// Bytes of frame storage, rounded up to a power of two. For MPMC this buys
    /// `capacity / max_frame_size` slots (rounded up to a power of two, at least 2).
    pub capacity: u64,
    /// Largest frame in bytes.
    pub max_frame_size: u32,
    /// Producers admitted at once (SPSC: 1).
    pub max_producers: u32,
    /// Consumers admitted at once (SPSC: 1).
    pub max_consumers: u32,
    /// Permission bits of the shared-memory object (e.g. `0o600`).
    pub mode: u32,
    /// Broadcast: what the producer does when the ring is full (other kinds: `Block`).
    pub overflow: Overflow,
    /// Broadcast: how many of the most recent frames still in the ring a new subscriber
    /// receives before the live ones (less than the slot count; other kinds: zero).
    pub history: u32,
    /// Largest message in bytes: `send` takes a longer one than `max_frame_size` (SPSC and
    /// broadcast: split into records; MPMC: through the channel's message pool) and `recv`
    /// returns it whole. Zero means `max_frame_size`.
    pub max_message_size: u64,
    /// Partitions (0 or 1: not partitioned). A partitioned channel is this many SPSC rings of
    /// this shape, one per partition; frames go to one by their key (`send_keyed`) and a
    /// consumer group reads them (see `partition.rs`). SPSC only.
    pub partitions: u32,
    /// A partitioned channel: bytes of consumer state a checkpoint of each partition holds
    /// (zero: [`DEFAULT_CHECKPOINT_SIZE`]); other channels: zero.
    pub checkpoint_size: u32,
}

impl ChannelConfig {
    /// An SPSC channel: 1 MiB ring, frames up to 64 KiB, mode 0600.
    pub const fn spsc() -> ChannelConfig {
        ChannelConfig {
            kind: Kind::Spsc,
            capacity: 1 << 20,
            max_frame_size: 64 << 10,
            max_producers: 1,
            max_consumers: 1,
            mode: 0o600,
            overflow: Overflow::Block,
            history: 0,
            max_message_size: 0,
            partitions: 0,
            checkpoint_size: 0,
        }
    }

    /// An MPMC channel: 1 MiB of frame storage in 1 KiB frames (1024 slots), up to 16
    /// producers and 16 consumers, mode 0600.
    pub const fn mpmc() -> ChannelConfig {
        ChannelConfig {
            kind: Kind::Mpmc,
            capacity: 1 << 20,
            max_frame_size: 1 << 10,
            max_producers: 16,
            max_consumers: 16,
            mode: 0o600,
            overflow: Overflow::Block,
            history: 0,
            max_message_size: 0,
            partitions: 0,
            checkpoint_size: 0,
        }
    }

    /// A broadcast channel: 1 MiB of frame storage in 1 KiB frames (1024 slots), one producer,
    /// up to 16 subscribers, overflow [`Overflow::Block`], no history, mode 0600.
    pub const fn broadcast() -> ChannelConfig {
        ChannelConfig {
            kind: Kind::Broadcast,
            capacity: 1 << 20,
            max_frame_size: 1 << 10,
            max_producers: 1,
            max_consumers: 16,
            mode: 0o600,
            overflow: Overflow::Block,
            history: 0,
            max_message_size: 0,
            partitions: 0,
            checkpoint_size: 0,
        }
    }

    /// The defaults of `kind`.
    pub const fn new(kind: Kind) -> ChannelConfig {
        match kind {
            Kind::Spsc => ChannelConfig::spsc(),
            Kind::Mpmc => ChannelConfig::mpmc(),
            Kind::Broadcast => ChannelConfig::broadcast(),
        }
    }

    /// Sets [`ChannelConfig::overflow`].
    pub const fn overflow(mut self, overflow: Overflow) -> ChannelConfig {
        self.overflow = overflow;
        self
    }

    /// Sets [`ChannelConfig::history`].
    pub const fn history(mut self, frames: u32) -> ChannelConfig {
        self.history = frames;
        self
    }

    /// Sets [`ChannelConfig::max_message_size`].
    pub const fn max_message_size(mut self, bytes: u64) -> ChannelConfig {
        self.max_message_size = bytes;
        self
    }

    /// Sets [`ChannelConfig::capacity`].
    pub const fn capacity(mut self, bytes: u64) -> ChannelConfig {
        self.capacity = bytes;
        self
    }

    /// Sets [`ChannelConfig::max_frame_size`].
    pub const fn max_frame_size(mut self, bytes: u32) -> ChannelConfig {
        self.max_frame_size = bytes;
        self
    }

    /// Sets [`ChannelConfig::max_producers`].
    pub const fn max_producers(mut self, n: u32) -> ChannelConfig {
        self.max_producers = n;
        self
    }

    /// Sets [`ChannelConfig::max_consumers`].
    pub const fn max_consumers(mut self, n: u32) -> ChannelConfig {
        self.max_consumers = n;
        self
    }

    /// Sets [`ChannelConfig::mode`].
    pub const fn mode(mut self, mode: u32) -> ChannelConfig {
        self.mode = mode;
        self
    }

    /// Sets [`ChannelConfig::partitions`].
    pub const fn partitions(mut self, n: u32) -> ChannelConfig {
        self.partitions = n;
        self
    }

    /// Sets [`ChannelConfig::checkpoint_size`].
    pub const fn checkpoint_size(mut self, bytes: u32) -> ChannelConfig {
        self.checkpoint_size = bytes;
        self
    }

    /// Whether the channel is partitioned (more than one partition).
    pub const fn is_partitioned(&self) -> bool {
        self.partitions > 1
    }

    /// Checks what a partitioned channel asks of its partitions; the shape of each is checked
    /// by [`Geometry::new`].
    pub fn check_partitions(&self) -> Result<(), Error> {
        if !self.is_partitioned() {
            if self.checkpoint_size != 0 {
                return Err(invalid(format!(
                    "checkpoint_size {} applies to partitioned channels only (set partitions)",
                    self.checkpoint_size
                )));
            }
            return Ok(());
        }
        if self.partitions > MAX_PARTITIONS {
            return Err(invalid(format!(
                "partitions {} must be at most {MAX_PARTITIONS}",
                self.partitions
            )));
        }
        if self.kind != Kind::Spsc {
            return Err(invalid(format!(
                "a partitioned channel is made of SPSC rings (one per partition, read in order by \
                 one member of a consumer group): its kind must be spsc, not {}",
                self.kind
            )));
        }
        if self.max_message_size > u64::from(self.max_frame_size) {
            return Err(invalid(
                "a partitioned channel carries frames up to max_frame_size: messages longer than \
                 a frame are not split on it (leave max_message_size 0)"
                    .to_string(),
            ));
        }
        if self.checkpoint_size > MAX_CHECKPOINT_SIZE {
            return Err(invalid(format!(
                "checkpoint_size {} must be at most {MAX_CHECKPOINT_SIZE}",
                self.checkpoint_size
            )));
        }
        Ok(())
    }

    /// The shape of each partition's ring: this config, unpartitioned, with its checkpoint
    /// area's size settled.
    pub fn partition_config(&self) -> ChannelConfig {
        let mut c = *self;
        c.partitions = 0;
        c.checkpoint_size = match self.checkpoint_size {
            0 => DEFAULT_CHECKPOINT_SIZE,
            n => n,
        };
        c
    }
}

/// Most partitions of a channel.
pub const MAX_PARTITIONS: u32 = 256;
/// Bytes of consumer state a partition's checkpoint holds unless the channel asks otherwise.
pub const DEFAULT_CHECKPOINT_SIZE: u32 = 64 << 10;
/// Most bytes of consumer state a partition's checkpoint holds.
pub const MAX_CHECKPOINT_SIZE: u32 = 64 << 20;
/// Bytes before a checkpoint area's first buffer (the count of checkpoints, on its own line).
pub const CHECKPOINT_HEAD: usize = 64;
/// Bytes before the state in a checkpoint buffer (position and length, two `u64`s).
pub const CHECKPOINT_PREFIX: usize = 16;

/// Who made a segment, when, and for whom: the header fields that are not its shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The creating process.
    pub creator_pid: u32,
    /// Permission bits of the channel.
    pub mode: u32,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_ns: u64,
    /// The creator's number for this incarnation of the channel.
    pub generation: u64,
    /// The channel owner's user id.
    pub owner_uid: u32,
    /// The channel owner's group id.
    pub owner_gid: u32,
}

impl Origin {
    /// The origin fields of a header.
    pub fn of(h: &SegmentHeader) -> Origin {
        Origin {
            creator_pid: h.creator_pid,
            mode: h.mode,
            created_unix_ns: h.created_unix_ns,
            generation: h.generation,
            owner_uid: h.owner_uid,
            owner_gid: h.owner_gid,
        }
    }
}

/// The validated shape of a segment: every size and offset, computed in one place. Each process
/// keeps its own copy and never re-reads these values from shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// SPSC, MPMC or broadcast.
    pub kind: Kind,
    /// Broadcast: the overflow policy; other kinds: `Block`.
    pub overflow: Overflow,
    /// Broadcast: frames of history a new subscriber is offered (less than `capacity`).
    pub history: u32,
    /// SPSC: ring bytes; MPMC and broadcast: slots. A power of two.
    pub capacity: u64,
    /// `log2(capacity)`.
    pub capacity_log2: u32,
    /// Largest frame payload.
    pub max_frame_size: u32,
    /// Largest message payload (at least `max_frame_size`; longer messages than that are
    /// split into records).
    pub max_message_size: u64,
    /// Largest payload of one record of a split message: SPSC, `max_frame_size` or a quarter of
    /// the ring less a header, whichever is larger (so that a message streams through the ring
    /// in a few records, never more than half the ring each); broadcast, `max_frame_size`.
    pub max_fragment: u32,
    /// MPMC with messages longer than a frame: bytes of one chunk of the message pool
    /// (`mpmc.rs`, "Messages in the pool"); zero without a pool.
    pub pool_chunk: u32,
    /// Chunks of the pool (zero: none).
    pub pool_chunks: u64,
    /// Data-region offset of the pool's chunk words (one `u64` per chunk: zero when free,
    /// else the tag of the message that holds it).
    pub pool_words: usize,
    /// Data-region offset of the pool's chunks.
    pub pool_data: usize,
    /// SPSC partition: bytes of state each checkpoint buffer holds (zero: no checkpoint area).
    pub checkpoint_size: u32,
    /// Data-region offset of the checkpoint area (zero: none).
    pub checkpoint: usize,
    /// MPMC and broadcast bytes per slot; zero for SPSC.
    pub slot_stride: u32,
    /// Producer table entries.
    pub max_producers: u32,
    /// Consumer table entries.
    pub max_consumers: u32,
    /// Offset of the data region.
    pub data: usize,
    /// Bytes of the data region.
    pub data_len: usize,
    /// Bytes of the segment.
    pub total_size: usize,
}

const fn align_up(v: u64, a: u64) -> u64 {
    (v + a - 1) & !(a - 1)
}

/// Bytes of an MPMC or broadcast slot for frames up to `max_frame_size`: the slot header and
/// the payload, rounded up to a cache line.
const fn slot_stride(max_frame_size: u32) -> u64 {
    align_up(SLOT_PAYLOAD as u64 + max_frame_size as u64, 64)
}

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// The largest message of a channel of `kind` whose config asks for `requested` (zero:
/// `max_frame_size`), checked.
fn message_size(max_frame_size: u32, requested: u64) -> Result<u64, Error> {
    use crate::units::format_size_exact as size;
    let mfs = u64::from(max_frame_size);
    let message = match requested {
        0 => mfs,
        m => m,
    };
    if message < mfs || message > MAX_MESSAGE_SIZE {
        return Err(invalid(format!(
            "max_message_size {} must be 0 (meaning max_frame_size) or between max_frame_size {} and {}",
            size(message),
            size(mfs),
            size(MAX_MESSAGE_SIZE)
        )));
    }
    Ok(message)
}

impl Geometry {
    /// Computes the geometry of a new channel.
    ///
    /// One rule for every kind: frames are 1 byte to [`MAX_FRAME_SIZE`], and `capacity` (bytes
    /// of frame storage) holds at least two of the largest frames, `capacity >= 2 *
    /// max_frame_size`, so that a producer can write one while the consumer reads the other.
    ///
    /// * SPSC: the ring is `capacity` rounded up to a power of two (at least
    ///   [`MIN_SPSC_CAPACITY`]) that holds two records of the largest frame (each with its
    ///   8-byte header), so that a largest frame always fits after at most one padding record.
    /// * MPMC: `slots = capacity / max_frame_size` rounded up to a power of two (so at least
    ///   [`MIN_SLOTS`]); each slot is `16 + max_frame_size` bytes rounded up to 64, so
    ///   producers writing neighbouring slots never share a cache line.
    /// * Broadcast: slots as MPMC; one producer; `history` below the slot count.
    ///
    /// `max_message_size` is zero (meaning `max_frame_size`) or from `max_frame_size` to
    /// [`MAX_MESSAGE_SIZE`]; an MPMC channel with a larger one than `max_frame_size` gets a
    /// message pool (`with_pool`), which must fit the limit of a data region as the slots do.
    pub fn new(cfg: &ChannelConfig) -> Result<Geometry, Error> {
        let mut g = Geometry::shape(cfg)?;
        g.max_message_size = message_size(cfg.max_frame_size, cfg.max_message_size)?;
        g.check_fragments()?;
        g.with_pool()?.with_checkpoint(cfg.checkpoint_size)
    }

    /// [`Geometry::new`] but for `max_message_size`.
    fn shape(cfg: &ChannelConfig) -> Result<Geometry, Error> {
        use crate::units::format_size_exact as size;
        if cfg.max_frame_size == 0 || cfg.max_frame_size > MAX_FRAME_SIZE {
            return Err(invalid(format!(
                "max_frame_size {} must be between 1 byte and {}",
                size(u64::from(cfg.max_frame_size)),
                size(u64::from(MAX_FRAME_SIZE))
            )));
        }
        if cfg.capacity == 0 || cfg.capacity > MAX_DATA_LEN {
            return Err(invalid(format!(
                "capacity {} must be between 1 byte and {}",
                size(cfg.capacity),
                size(MAX_DATA_LEN)
            )));
        }
        let two_frames = 2 * u64::from(cfg.max_frame_size);
        if cfg.capacity < two_frames {
            return Err(invalid(format!(
                "capacity {} is below two frames of max_frame_size {}: a channel holds at least \
                 two of its largest frames, so capacity must be at least {} (raise capacity or \
                 lower max_frame_size)",
                size(cfg.capacity),
                size(u64::from(cfg.max_frame_size)),
                size(two_frames)
            )));
        }
        if cfg.mode & !0o777 != 0 {
            return Err(invalid(format!(
                "mode {:o} has bits outside 0o777",
                cfg.mode
            )));
        }
        if cfg.kind != Kind::Broadcast && (cfg.overflow != Overflow::Block || cfg.history != 0) {
            return Err(invalid(format!(
                "an overflow policy and history apply to broadcast channels only (a {} channel got overflow {}, history {})",
                cfg.kind, cfg.overflow, cfg.history
            )));
        }
        match cfg.kind {
            Kind::Spsc => {
                if cfg.max_producers != 1 || cfg.max_consumers != 1 {
                    return Err(invalid(format!(
                        "an SPSC channel has exactly one producer and one consumer (got max_producers {}, max_consumers {})",
                        cfg.max_producers, cfg.max_consumers
                    )));
                }
                // Two records of the largest frame, headers included: at most 2 * (1 GiB + 8)
                // bytes, so no overflow.
                let records = 2 * record_size(cfg.max_frame_size as usize) as u64;
                let capacity = cfg
                    .capacity
                    .max(records)
                    .max(MIN_SPSC_CAPACITY)
                    .next_power_of_two();
                if capacity > MAX_DATA_LEN {
                    return Err(invalid(format!(
                        "capacity {} rounds up to a ring of {}, over the limit of {}",
                        size(cfg.capacity),
                        size(capacity),
                        size(MAX_DATA_LEN)
                    )));
                }
                Geometry::build(Kind::Spsc, capacity, cfg.max_frame_size, 0, 1, 1)
            }
            Kind::Mpmc | Kind::Broadcast => {
                if cfg.kind == Kind::Broadcast && cfg.max_producers != 1 {
                    return Err(invalid(format!(
                        "a broadcast channel has exactly one producer (got max_producers {})",
                        cfg.max_producers
                    )));
                }
                for (what, n) in [
                    ("max_producers", cfg.max_producers),
                    ("max_consumers", cfg.max_consumers),
                ] {
                    if n == 0 || n > MAX_PARTICIPANTS {
                        return Err(invalid(format!(
                            "{what} {n} must be between 1 and {MAX_PARTICIPANTS}"
                        )));
                    }
                }
                let stride = slot_stride(cfg.max_frame_size);
                let slots = cfg
                    .capacity
                    .div_ceil(u64::from(cfg.max_frame_size))
                    .max(MIN_SLOTS)
                    .next_power_of_two();
                if slots.saturating_mul(stride) > MAX_DATA_LEN {
                    return Err(invalid(format!(
                        "{slots} slots of {} exceed the limit of {}",
                        size(stride),
                        size(MAX_DATA_LEN)
                    )));
                }
                if u64::from(cfg.history) >= slots {
                    return Err(invalid(format!(
                        "history {} must be below the channel's {slots} slots (raise capacity or lower history)",
                        cfg.history
                    )));
                }
                let mut g = Geometry::build(
                    cfg.kind,
                    slots,
                    cfg.max_frame_size,
                    stride as u32,
                    cfg.max_producers,
                    cfg.max_consumers,
                )?;
                g.overflow = cfg.overflow;
                g.history = cfg.history;
                Ok(g)
            }
        }
    }

    /// The largest `capacity` for channels shaped as `cfg` (its kind and max_frame_size) whose
    /// frame storage ([`Geometry::data_len`]) is at most `limit` bytes; `None` when not even the
    /// smallest such channel fits. What a refusal over a storage limit tells the user.
    pub fn largest_capacity(cfg: &ChannelConfig, limit: u64) -> Option<u64> {
        let limit = limit.min(MAX_DATA_LEN);
        let mfs = u64::from(cfg.max_frame_size.max(1));
        let floor_pow2 = |v: u64| (v > 0).then(|| 1u64 << (63 - v.leading_zeros()));
        let capacity = match cfg.kind {
            // The ring is the capacity rounded up to a power of two.
            Kind::Spsc => floor_pow2(limit)?,
            // `capacity / max_frame_size` slots, a power of two of them.
            Kind::Mpmc | Kind::Broadcast => {
                floor_pow2(limit / slot_stride(cfg.max_frame_size.max(1)))? * mfs
            }
        };
        let fits = Geometry::new(&cfg.capacity(capacity)).is_ok_and(|g| g.data_len as u64 <= limit);
        fits.then_some(capacity)
    }

    fn build(
        kind: Kind,
        capacity: u64,
        max_frame_size: u32,
        slot_stride: u32,
        max_producers: u32,
        max_consumers: u32,
    ) -> Result<Geometry, Error> {
        let participants_len = (max_producers as u64 + max_consumers as u64) * LINE as u64;
        let data = align_up(PARTICIPANTS as u64 + participants_len, DATA_ALIGN as u64);
        let data_len = match kind {
            Kind::Spsc => capacity,
            Kind::Mpmc | Kind::Broadcast => capacity * u64::from(slot_stride),
        };
        let total = data + data_len;
        let to_usize = |v: u64| {
            usize::try_from(v)
                .map_err(|_| invalid(format!("a segment of {v} bytes does not fit in memory")))
        };
        Ok(Geometry {
            kind,
            overflow: Overflow::Block,
            history: 0,
            capacity,
            capacity_log2: capacity.trailing_zeros(),
            max_frame_size,
            max_message_size: u64::from(max_frame_size),
            max_fragment: match kind {
                // A quarter of a ring of at least 64 bytes, less a header, 8-aligned: a record
                // of it takes at most half the ring, as one of the largest frame does.
                Kind::Spsc => max_frame_size.max(
                    u32::try_from(capacity / 4 - RECORD_HEADER as u64)
                        .unwrap_or(u32::MAX)
                        .min(MAX_FRAME_SIZE),
                ),
                Kind::Mpmc | Kind::Broadcast => max_frame_size,
            },
            pool_chunk: 0,
            pool_chunks: 0,
            pool_words: 0,
            pool_data: 0,
            checkpoint_size: 0,
            checkpoint: 0,
            slot_stride,
            max_producers,
            max_consumers,
            data: to_usize(data)?,
            data_len: to_usize(data_len)?,
            total_size: to_usize(total)?,
        })
    }

    /// A channel that splits messages must have room in a record for the length prefix and at
    /// least one byte (broadcast: `max_frame_size` above 8).
    fn check_fragments(&self) -> Result<(), Error> {
        if self.max_message_size > u64::from(self.max_frame_size)
            && self.max_fragment as usize <= MESSAGE_PREFIX
        {
            return Err(invalid(format!(
                "a channel that splits messages needs records of more than {MESSAGE_PREFIX} \
                 bytes (a message's first record starts with its length): raise \
                 max_frame_size above {} bytes",
                self.max_frame_size.max(MESSAGE_PREFIX as u32)
            )));
        }
        Ok(())
    }

    /// Adds the message pool of an MPMC channel whose messages may be longer than a frame:
    /// chunks of `max_message_size / 128` (a power of two, 4 KiB to 1 MiB), as many as two of
    /// the largest messages take, after the slots. A slot holds a frame, or a reference to a message in
    /// the pool (`MPMC_POOL_REF` bytes, so such a channel's frames are at least that long).
    fn with_pool(mut self) -> Result<Geometry, Error> {
        use crate::units::format_size_exact as size;
        if self.kind != Kind::Mpmc || self.max_message_size <= u64::from(self.max_frame_size) {
            return Ok(self);
        }
        if (self.max_frame_size as usize) < MPMC_POOL_REF {
            return Err(invalid(format!(
                "an MPMC channel with messages longer than a frame needs max_frame_size of at \
                 least {MPMC_POOL_REF} bytes (a slot holds a reference to a message in the \
                 pool); it is {}",
                size(u64::from(self.max_frame_size))
            )));
        }
        let chunk = (self.max_message_size.next_power_of_two() / 128).clamp(4 << 10, 1 << 20);
        let chunks = 2 * self.max_message_size.div_ceil(chunk);
        let words = align_up(self.data_len as u64, 64);
        let pool = align_up(words + 8 * chunks, DATA_ALIGN as u64);
        let data_len = pool + chunks * chunk;
        if data_len > 2 * MAX_DATA_LEN + 2 * MAX_MESSAGE_SIZE {
            return Err(invalid(format!(
                "a message pool for messages up to {} is too large",
                size(self.max_message_size)
            )));
        }
        let to_usize = |v: u64| {
            usize::try_from(v)
                .map_err(|_| invalid(format!("a segment of {v} bytes does not fit in memory")))
        };
        self.pool_chunk = chunk as u32;
        self.pool_chunks = chunks;
        self.pool_words = to_usize(words)?;
        self.pool_data = to_usize(pool)?;
        self.total_size = to_usize(self.data as u64 + data_len)?;
        self.data_len = to_usize(data_len)?;
        Ok(self)
    }

    /// Adds the checkpoint area of an SPSC partition (`checkpoint_size` bytes of state per
    /// buffer; zero: none) after the ring.
    fn with_checkpoint(mut self, checkpoint_size: u32) -> Result<Geometry, Error> {
        if checkpoint_size == 0 {
            return Ok(self);
        }
        if self.kind != Kind::Spsc || checkpoint_size > MAX_CHECKPOINT_SIZE {
            return Err(invalid(format!(
                "a checkpoint area of {checkpoint_size} bytes: only SPSC partitions have one, of at most {MAX_CHECKPOINT_SIZE} bytes"
            )));
        }
        let area = self.data_len;
        let len = CHECKPOINT_HEAD + 2 * self.checkpoint_buffer_len_of(checkpoint_size);
        self.checkpoint_size = checkpoint_size;
        self.checkpoint = area;
        self.data_len = area + len;
        self.total_size = self.data + self.data_len;
        Ok(self)
    }

    fn checkpoint_buffer_len_of(&self, checkpoint_size: u32) -> usize {
        align_up((CHECKPOINT_PREFIX + checkpoint_size as usize) as u64, 64) as usize
    }

    /// Data-region offset of checkpoint buffer `i` (0 or 1); `None` without a checkpoint area.
    pub fn checkpoint_buffer(&self, i: u64) -> Option<usize> {
        (self.checkpoint_size > 0).then(|| {
            self.checkpoint
                + CHECKPOINT_HEAD
                + (i & 1) as usize * self.checkpoint_buffer_len_of(self.checkpoint_size)
        })
    }

    /// `capacity - 1`: masks a position to its offset (SPSC) or slot index (MPMC, broadcast).
    #[inline(always)]
    pub fn mask(&self) -> u64 {
        self.capacity - 1
    }

    /// Offset of participant `index` of `role`, if the table has that entry.
    #[inline]
    pub fn participant_offset(&self, role: Role, index: u32) -> Option<usize> {
        let (base, n) = match role {
            Role::Producer => (0, self.max_producers),
            Role::Consumer => (self.max_producers, self.max_consumers),
        };
        (index < n).then(|| PARTICIPANTS + (base + index) as usize * LINE)
    }

    /// The header a creator writes for this geometry, checksum included, `state` initialising.
    pub fn header(&self, origin: &Origin) -> SegmentHeader {
        let mut h = SegmentHeader {
            magic: MAGIC,
            layout_version: LAYOUT_VERSION,
            state: STATE_INITIALISING,
            kind: self.kind as u32,
            overflow: self.overflow as u32,
            total_size: self.total_size as u64,
            capacity: self.capacity,
            max_frame_size: self.max_frame_size,
            slot_stride: self.slot_stride,
            max_producers: self.max_producers,
            max_consumers: self.max_consumers,
            producer_line: PRODUCER_LINE as u64,
            consumer_line: CONSUMER_LINE as u64,
            participants: PARTICIPANTS as u64,
            data: self.data as u64,
            data_len: self.data_len as u64,
            creator_pid: origin.creator_pid,
            mode: origin.mode,
            created_unix_ns: origin.created_unix_ns,
            generation: origin.generation,
            owner_uid: origin.owner_uid,
            owner_gid: origin.owner_gid,
            history: u64::from(self.history),
            max_message_size: self.max_message_size,
            checksum: 0,
            checkpoint_size: u64::from(self.checkpoint_size),
            reserved: [0; 12],
        };
        h.checksum = h.compute_checksum();
        h
    }

    /// Validates a header copied out of a segment whose mapping is `mapped_len` bytes long.
    ///
    /// Checks, in order: magic, layout version, checksum, kind, that the sizes are ones
    /// [`Geometry::new`] could have produced, and that every offset the header states equals
    /// the one computed here and lies inside the mapping. The state is the caller's business.
    pub fn from_header(h: &SegmentHeader, mapped_len: usize) -> Result<Geometry, Error> {
        if h.magic != MAGIC {
            return Err(Error::Incompatible(format!(
                "not a shmring segment (magic {:#018x}, expected {MAGIC:#018x})",
                h.magic
            )));
        }
        if h.layout_version != LAYOUT_VERSION {
            return Err(Error::Incompatible(format!(
                "segment layout version {} is not the {LAYOUT_VERSION} this library speaks",
                h.layout_version
            )));
        }
        let sum = h.compute_checksum();
        if h.checksum != sum {
            return Err(Error::Corrupted(format!(
                "segment header checksum {:#018x} does not match its contents ({sum:#018x})",
                h.checksum
            )));
        }
        let kind = Kind::from_u32(h.kind)
            .ok_or_else(|| Error::Corrupted(format!("unknown channel kind {}", h.kind)))?;
        if !h.capacity.is_power_of_two() {
            return Err(Error::Corrupted(format!(
                "capacity {} is not a power of two",
                h.capacity
            )));
        }
        let overflow = Overflow::from_u32(h.overflow)
            .ok_or_else(|| Error::Corrupted(format!("unknown overflow policy {}", h.overflow)))?;
        let history = u32::try_from(h.history)
            .map_err(|_| Error::Corrupted(format!("history {} out of range", h.history)))?;
        let expect = match kind {
            Kind::Spsc => {
                let cfg = ChannelConfig {
                    kind,
                    capacity: h.capacity,
                    max_frame_size: h.max_frame_size,
                    max_producers: h.max_producers,
                    max_consumers: h.max_consumers,
                    mode: h.mode & 0o777,
                    overflow,
                    history,
                    max_message_size: h.max_message_size,
                    partitions: 0,
                    checkpoint_size: u32::try_from(h.checkpoint_size).map_err(|_| {
                        Error::Corrupted(format!(
                            "checkpoint size {} out of range",
                            h.checkpoint_size
                        ))
                    })?,
                };
                Geometry::new(&cfg)
            }
            Kind::Mpmc | Kind::Broadcast => {
                let stride = align_up(SLOT_PAYLOAD as u64 + u64::from(h.max_frame_size), 64);
                if u64::from(h.slot_stride) != stride || h.capacity < MIN_SLOTS {
                    return Err(Error::Corrupted(format!(
                        "MPMC slot stride {} or slot count {} is inconsistent with max_frame_size {}",
                        h.slot_stride, h.capacity, h.max_frame_size
                    )));
                }
                if h.max_frame_size > MAX_FRAME_SIZE
                    || h.capacity.saturating_mul(stride) > MAX_DATA_LEN
                    || h.max_producers == 0
                    || h.max_producers > MAX_PARTICIPANTS
                    || h.max_consumers == 0
                    || h.max_consumers > MAX_PARTICIPANTS
                    || (kind == Kind::Broadcast && h.max_producers != 1)
                    || u64::from(history) >= h.capacity
                    || (kind != Kind::Broadcast && (overflow != Overflow::Block || history != 0))
                    || h.checkpoint_size != 0
                {
                    return Err(Error::Corrupted(format!(
                        "{kind} sizes out of range (slots {}, max_frame_size {}, producers {}, consumers {}, overflow {overflow}, history {history})",
                        h.capacity, h.max_frame_size, h.max_producers, h.max_consumers
                    )));
                }
                Geometry::build(
                    kind,
                    h.capacity,
                    h.max_frame_size,
                    h.slot_stride,
                    h.max_producers,
                    h.max_consumers,
                )
                .and_then(|mut g| {
                    g.overflow = overflow;
                    g.history = history;
                    g.max_message_size = message_size(g.max_frame_size, h.max_message_size)?;
                    g.check_fragments()?;
                    g.with_pool()
                })
            }
        }
        .map_err(|e| Error::Corrupted(format!("segment header describes an impossible channel: {e}")))?;
        let stated = (
            h.producer_line,
            h.consumer_line,
            h.participants,
            h.data,
            h.data_len,
            h.total_size,
        );
        let computed = (
            PRODUCER_LINE as u64,
            CONSUMER_LINE as u64,
            PARTICIPANTS as u64,
            expect.data as u64,
            expect.data_len as u64,
            expect.total_size as u64,
        );
        if stated != computed {
            return Err(Error::Corrupted(format!(
                "segment offsets (producer line, consumer line, participants, data, data_len, total) {stated:?} differ from the layout's {computed:?}"
            )));
        }
        if expect.total_size > mapped_len {
            return Err(Error::Corrupted(format!(
                "segment claims {} bytes but only {mapped_len} are mapped",
                expect.total_size
            )));
        }
        Ok(expect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_checksum() {
        let g = Geometry::new(&ChannelConfig::spsc()).unwrap();
        let origin = Origin {
            creator_pid: 42,
            mode: 0o600,
            created_unix_ns: 7,
            generation: 3,
            owner_uid: 1000,
            owner_gid: 100,
        };
        let h = g.header(&origin);
        assert_eq!(Origin::of(&h), origin);
        let mut other_owner = h;
        other_owner.owner_uid = 0;
        assert!(matches!(
            Geometry::from_header(&other_owner, g.total_size),
            Err(Error::Corrupted(_))
        ));
        assert_eq!(Geometry::from_header(&h, g.total_size).unwrap(), g);
        let mut bad = h;
        bad.capacity *= 2;
        assert!(matches!(
            Geometry::from_header(&bad, g.total_size * 4),
            Err(Error::Corrupted(_))
        ));
        let mut v = h;
        v.layout_version = 99;
        assert!(matches!(
            Geometry::from_header(&v, g.total_size),
            Err(Error::Incompatible(_))
        ));
        assert!(matches!(
            Geometry::from_header(&h, g.total_size - 1),
            Err(Error::Corrupted(_))
        ));
    }

    #[test]
    fn state_does_not_enter_the_checksum() {
        let g = Geometry::new(&ChannelConfig::mpmc()).unwrap();
        let mut h = g.header(&Origin::default());
        h.state = STATE_READY;
        assert_eq!(Geometry::from_header(&h, g.total_size).unwrap(), g);
    }

    #[test]
    fn spsc_sizes() {
        let g = Geometry::new(&ChannelConfig::spsc().capacity(1000).max_frame_size(100)).unwrap();
        assert_eq!(g.capacity, 1024);
        assert_eq!(g.data % DATA_ALIGN, 0);
        assert!(Geometry::new(&ChannelConfig::spsc().capacity(256).max_frame_size(200)).is_err());
        assert!(Geometry::new(&ChannelConfig::spsc().max_producers(2)).is_err());
        assert!(Geometry::new(&ChannelConfig::spsc().mode(0o1777)).is_err());
    }

    #[test]
    fn mpmc_sizes() {
        let g = Geometry::new(&ChannelConfig::mpmc()).unwrap();
        assert_eq!(g.capacity, 1024);
        assert_eq!(g.slot_stride, 1088);
        let g = Geometry::new(&ChannelConfig::mpmc().capacity(100).max_frame_size(48)).unwrap();
        assert_eq!((g.capacity, g.slot_stride), (4, 64));
        let g = Geometry::new(&ChannelConfig::mpmc().capacity(128).max_frame_size(64)).unwrap();
        assert_eq!(g.capacity, MIN_SLOTS);
        assert!(Geometry::new(&ChannelConfig::mpmc().max_consumers(0)).is_err());
    }

    /// Found trying the CLI as a new user: `--max-frame-size 0` made a channel of "frames up to
    /// 0 B" (an MPMC one of 1048576 slots).
    #[test]
    fn a_max_frame_size_of_zero_is_refused() {
        for kind in [Kind::Spsc, Kind::Mpmc, Kind::Broadcast] {
            let e = Geometry::new(&ChannelConfig::new(kind).max_frame_size(0)).unwrap_err();
            assert!(
                e.to_string().contains("must be between 1 byte and 1 GiB"),
                "{kind}: {e}"
            );
        }
    }

    /// Found trying the CLI as a new user: MPMC `capacity 64K, max_frame_size 128K` silently
    /// became 2 slots (256 KiB) while SPSC refused the same shape, and the SPSC message for
    /// 1 GiB frames asked for 4 GiB "(two records)". One rule, stated in the error: capacity
    /// holds at least two of the largest frames.
    #[test]
    fn one_capacity_rule_for_every_kind_stated_in_the_error() {
        for kind in [Kind::Spsc, Kind::Mpmc, Kind::Broadcast] {
            let small = ChannelConfig::new(kind)
                .capacity(64 << 10)
                .max_frame_size(128 << 10);
            let e = Geometry::new(&small).unwrap_err().to_string();
            assert!(
                e.contains("capacity 64 KiB is below two frames of max_frame_size 128 KiB")
                    && e.contains("at least 256 KiB"),
                "{kind}: {e}"
            );
            // Exactly two frames is enough, for every kind.
            let g = Geometry::new(&small.capacity(256 << 10)).unwrap();
            match kind {
                // The ring holds two records of 128 KiB with their headers.
                Kind::Spsc => assert!(g.capacity >= 2 * record_size(128 << 10) as u64),
                Kind::Mpmc | Kind::Broadcast => assert_eq!(g.capacity, 2),
            }
        }
        let huge = ChannelConfig::spsc()
            .capacity(1 << 30)
            .max_frame_size(1 << 30);
        let e = Geometry::new(&huge).unwrap_err().to_string();
        assert!(e.contains("at least 2 GiB"), "{e}");
        let g = Geometry::new(&huge.capacity(2 << 30)).unwrap();
        assert!(g.capacity >= 2 * record_size(1 << 30) as u64);
    }

    #[test]
    fn largest_capacity_fits_the_limit_and_nothing_larger_does() {
        for cfg in [
            ChannelConfig::spsc(),
            ChannelConfig::spsc().max_frame_size(300 << 20),
            ChannelConfig::mpmc(),
            ChannelConfig::broadcast().max_frame_size(100),
        ] {
            for limit in [1 << 20, (1 << 30) - 1, 1 << 30, 3 << 30] {
                let Some(c) = Geometry::largest_capacity(&cfg, limit) else {
                    assert!(cfg.max_frame_size == 300 << 20 && limit < 1 << 30);
                    continue;
                };
                let g = Geometry::new(&cfg.capacity(c)).unwrap();
                assert!(g.data_len as u64 <= limit, "{cfg:?} {limit}");
                let next = Geometry::new(&cfg.capacity(c + 1)).unwrap();
                assert!(
                    next.data_len as u64 > limit,
                    "{cfg:?} {limit}: {c} is not the largest"
                );
            }
        }
        assert_eq!(
            Geometry::largest_capacity(&ChannelConfig::spsc(), 1 << 30),
            Some(1 << 30)
        );
    }

    #[test]
    fn record_encoding() {
        let w = encode_header(1234, RecordType::Data, FLAG_REDELIVERED, 0xbeef);
        assert_ne!(w, 0);
        let h = decode_header(w);
        assert_eq!(h.len, 1234);
        assert_eq!(h.ty, Some(RecordType::Data));
        assert_eq!(h.flags, FLAG_REDELIVERED);
        assert_eq!(h.tag, 0xbeef);
        assert_eq!(decode_header(0x0009_0000_0000).ty, None);
        assert_eq!(record_size(0), 8);
        assert_eq!(record_size(1), 16);
        assert_eq!(record_size(56), 64);
        assert_eq!(record_size(64), 72);
        assert_eq!(decode_claim(encode_claim(1 << 50, 7)), (1 << 50, 7));
        assert_eq!(decode_owner(encode_owner(77, 3)), (77, 3));
    }
}

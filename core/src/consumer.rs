//! The consumer handle: copy and zero-copy receives, draining, blocking variants.

use crate::error::{Error, Result};
use crate::layout::{FLAG_REDELIVERED, STATE_DELETED, STATE_FINISHED, state_of};
use crate::message::Assembly;
use crate::pollable::Pollable;
use crate::region::{DataRange, Memory, Watch};
use crate::segment::Membership;
use crate::sync::Ordering::{Acquire, Relaxed};
use crate::wait::{self, Line, WaitStrategy, Waiter, Woke};
use crate::{broadcast, message, mpmc, spsc};
use std::ops::Deref;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

/// Flags a received frame carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrameFlags(u32);

impl FrameFlags {
    /// No flag.
    pub const NONE: FrameFlags = FrameFlags(0);
    /// The frame was handed to a consumer that died (or was dropped uncleanly) before releasing
    /// it: this process may be seeing it a second time. Delivery is at-least-once; a frame
    /// seen twice is always flagged the second time.
    pub const REDELIVERED: FrameFlags = FrameFlags(FLAG_REDELIVERED as u32);

    fn from_bits(bits: u8) -> FrameFlags {
        FrameFlags(u32::from(bits) & Self::REDELIVERED.0)
    }

    /// The flag bits, as the C ABI carries them.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: FrameFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether [`FrameFlags::REDELIVERED`] is set.
    pub fn is_redelivered(self) -> bool {
        self.contains(FrameFlags::REDELIVERED)
    }
}

/// A position in an SPSC ring after a frame taken by [`Consumer::try_recv_held`]: what
/// [`Consumer::release_held`] releases up to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HeldPosition(u64);

/// What [`Consumer::recv`] copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Bytes of the frame, copied to the start of the buffer.
    pub len: usize,
    /// The frame's flags.
    pub flags: FrameFlags,
    /// The partition it came from: a [`GroupConsumer`](crate::GroupConsumer)'s receives say
    /// which of the member's partitions; zero for a channel that is not partitioned.
    pub partition: u32,
}

#[derive(Debug)]
enum Ring {
    Spsc(spsc::ConsumerCore),
    /// `outstanding`: the position of a frame handed out as a [`Frame`] and not released
    /// (released on the next read if the `Frame` was leaked).
    Mpmc {
        core: mpmc::ConsumerCore,
        outstanding: Option<(u64, Held)>,
    },
    Broadcast(broadcast::ConsumerCore),
}

/// Where the bytes of a frame taken by a [`Token`] are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// In the ring, at the token's `payload`.
    Ring,
    /// Broadcast: a validated copy in the subscriber's scratch buffer (`payload.len()` bytes).
    Scratch,
    /// A split message of this many bytes, put back together in the handle's assembly buffer.
    Message(usize),
    /// MPMC: a message in the pool (at the token's `payload`), whose chunks are freed with
    /// its slot.
    Pool(mpmc::PoolRef),
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Token {
    payload: DataRange,
    flags: u8,
    /// MPMC position; unused for SPSC and broadcast.
    pos: u64,
    held: Held,
}

impl Token {
    /// The frame's length.
    #[inline(always)]
    fn len(&self) -> usize {
        match self.held {
            Held::Message(len) => len,
            Held::Ring | Held::Scratch | Held::Pool(_) => self.payload.len(),
        }
    }
}

/// The receiving end of a channel: SPSC, MPMC or broadcast (a subscriber).
///
/// A `Consumer` owns one entry of the channel's consumer table from
/// [`Segment::consumer`](crate::Segment::consumer) until it is dropped. It is `Send` but not
/// `Sync`. Receives come in `try_*`, `*_timeout` and blocking forms, like the
/// [`Producer`](crate::Producer)'s sends, and in three shapes:
///
/// * [`recv`](Consumer::recv) copies the next frame into a buffer;
/// * [`read`](Consumer::read) lends it in place as a [`Frame`], released when dropped;
/// * [`drain`](Consumer::try_drain) hands up to N frames to a closure and releases them with one
///   store.
///
/// On a broadcast channel whose overflow policy is
/// [`DropOldest`](crate::Overflow::DropOldest), the producer may overwrite a frame at any
/// moment, so `read` and `drain` hand out a validated copy held by the handle rather than the
/// bytes in the ring (a frame overwritten while it was copied is counted in
/// [`missed`](Consumer::missed), never delivered torn); so do history frames on a
/// [`Block`](crate::Overflow::Block) channel. Every other read is in place.
#[derive(Debug)]
pub struct Consumer {
    mem: Arc<Memory>,
    ring: Ring,
    membership: Membership,
    wait: WaitStrategy,
    light: bool,
    frames: u64,
    bytes: u64,
    /// The entry's `missed` counter when this consumer opened (the entry's counters continue a
    /// predecessor's; the handle's count starts at zero).
    missed_base: u64,
    /// A split message being put back together (SPSC, broadcast).
    asm: Assembly,
    /// Broadcast: what the segments this consumer left after resizes counted as missed.
    missed_before: u64,
    /// The pollable descriptor, once [`Consumer::fd`] made it.
    pollable: Option<Box<Pollable>>,
    /// Frames were held through [`Consumer::try_recv_held`]: on drop, those not released are
    /// handed back to the ring, not released with the rest.
    hands_back: bool,
}

/// Tries `$op` (an expression over `$c`, the handle) once, inline; while it returns
/// `WouldBlock`, waits and retries out of line (`wait_and_retry`). A macro, not a function
/// taking a closure, so that the fast path is inlined whole (see the producer's `blocking!`).
macro_rules! blocking {
    ($this:expr, $timeout:expr, |$c:ident| $op:expr) => {{
        let first = {
            let $c = &mut *$this;
            $op
        };
        match first {
            Err(Error::WouldBlock(w)) => $this.wait_and_retry($timeout, w, |$c: &mut Self| $op),
            other => other,
        }
    }};
}

impl Consumer {
    pub(crate) fn new(mem: Arc<Memory>, membership: Membership) -> Result<Consumer> {
        let ring = match mem.geometry().kind {
            crate::Kind::Spsc => match spsc::ConsumerCore::attach(&mem) {
                Ok(core) => Ring::Spsc(core),
                Err(e) => {
                    membership.leave(&mem);
                    return Err(e);
                }
            },
            crate::Kind::Mpmc => Ring::Mpmc {
                core: mpmc::ConsumerCore::new(membership.index()),
                outstanding: None,
            },
            crate::Kind::Broadcast => {
                match broadcast::ConsumerCore::attach(&mem, membership.index()) {
                    Ok(core) => Ring::Broadcast(core),
                    Err(e) => {
                        membership.leave(&mem);
                        return Err(e);
                    }
                }
            }
        };
        let me = membership.participant(&mem);
        // Relaxed: our own counters, continued from a predecessor's.
        let (frames, bytes) = (me.frames.load(Relaxed), me.bytes.load(Relaxed));
        // Relaxed: as the counters above.
        let missed_base = me.missed.load(Relaxed);
        let light = wait::light_waker();
        Ok(Consumer {
            missed_base,
            missed_before: 0,
            asm: Assembly::new(mem.geometry().kind == crate::Kind::Broadcast, light),
            light,
            mem,
            ring,
            membership,
            wait: WaitStrategy::default(),
            frames,
            bytes,
            pollable: None,
            hands_back: false,
        })
    }

    /// A descriptor that an event loop (`poll`, `epoll`, tokio's `AsyncFd`, asyncio's
    /// `add_reader`) waits on beside its sockets and timers: readable when frames may be
    /// waiting, or the channel was deleted or its stream finished. Made on the first call, then
    /// the same each time; it belongs to the consumer (do not close it) and lives as long as it.
    ///
    /// The contract: the descriptor is armed when made (readable at once if a frame is
    /// waiting); once it is readable, receive with [`try_recv`] (or [`try_read`],
    /// [`try_drain`]) until it returns [`Error::WouldBlock`], which re-arms the descriptor; then
    /// poll again. `Closed` leaves it readable. Readiness is a hint: a receive may still find
    /// nothing. Blocking calls wait by the wait strategy and leave the descriptor alone
    /// (re-arming it if they time out). An armed consumer is counted as a waiter until its next
    /// frame, and each frame sent meanwhile costs the producer a `FUTEX_WAKE`; a consumer that
    /// never finds the ring empty costs neither side a system call. The
    /// descriptor is an io_uring instance on Linux 6.7+ and an eventfd written by a waker
    /// thread on 5.16+ where io_uring is unavailable (ARCHITECTURE.md, "Pollable
    /// descriptors"); older kernels get an error.
    ///
    /// Not an [`AsFd`](std::os::fd::AsFd) implementation: making the descriptor can fail, and
    /// it is only meaningful under the contract above.
    ///
    /// ```
    /// use shmring::{ChannelConfig, Error, Segment};
    /// use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    /// use std::os::fd::BorrowedFd;
    ///
    /// let seg = Segment::anonymous(&ChannelConfig::spsc())?;
    /// let (mut tx, mut rx) = (seg.producer()?, seg.consumer()?);
    /// let fd = rx.fd()?;
    /// let mut buf = [0u8; 64];
    /// assert!(matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock(_)))); // arms it
    /// tx.send(b"tick")?;
    /// // SAFETY: the consumer owns the descriptor and outlives this borrow.
    /// let mut fds = [PollFd::new(unsafe { BorrowedFd::borrow_raw(fd) }, PollFlags::POLLIN)];
    /// poll(&mut fds, PollTimeout::from(1000u16)).unwrap();
    /// assert!(fds[0].revents().unwrap().contains(PollFlags::POLLIN));
    /// assert_eq!(rx.try_recv(&mut buf)?.len, 4);
    /// # Ok::<(), shmring::Error>(())
    /// ```
    ///
    /// [`try_recv`]: Consumer::try_recv
    /// [`try_read`]: Consumer::try_read
    /// [`try_drain`]: Consumer::try_drain
    pub fn fd(&mut self) -> Result<RawFd> {
        Pollable::check_held(&self.membership, "consumer")?;
        if let Some(p) = &self.pollable {
            return Ok(p.fd());
        }
        let p = Pollable::new(&self.mem, Line::Producer, &self.membership)?;
        let fd = p.fd();
        self.pollable = Some(Box::new(p));
        // Armed at once, so that an event loop may wait on it before its first call: readable
        // now if the call would succeed now.
        match self.settle_pollable(Error::WouldBlock("arming")) {
            Error::WouldBlock(_) => Ok(fd),
            e => {
                self.pollable = None;
                Err(e)
            }
        }
    }

    /// The largest frame this channel carries in one record, as [`read`](Consumer::read) lends
    /// in place.
    pub fn max_frame_size(&self) -> usize {
        self.mem.geometry().max_frame_size as usize
    }

    /// The largest message this channel carries: a buffer this long fits every message. Equal
    /// to [`max_frame_size`](Consumer::max_frame_size) unless the channel was created with a
    /// larger `max_message_size`.
    pub fn max_message_size(&self) -> usize {
        // No truncation: `Geometry` keeps it within the address space.
        self.mem.geometry().max_message_size as usize
    }

    /// How blocking calls wait (default [`WaitStrategy::Park`]).
    pub fn wait_strategy(&self) -> WaitStrategy {
        self.wait
    }

    /// Sets how blocking calls wait.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// The index of this consumer in the channel's consumer table.
    pub fn index(&self) -> u32 {
        self.membership.index()
    }

    /// Bytes the handle holds for messages being put back together (tests).
    #[cfg(test)]
    pub(crate) fn asm_capacity(&self) -> usize {
        self.asm.capacity()
    }

    /// What this consumer missed since it opened:
    ///
    /// * on a broadcast channel with [`Overflow::DropOldest`](crate::Overflow::DropOldest),
    ///   frames published after it joined that the producer overwrote before it received them
    ///   (every frame published after the join is either received or counted here);
    /// * messages longer than a frame that it dropped unfinished: their producer died or timed
    ///   out midway, or (SPSC) a predecessor consumer died receiving one too long for the ring
    ///   and had given its first records back. A message is never delivered in part.
    ///
    /// Zero otherwise.
    pub fn missed(&self) -> u64 {
        let lapped = match &self.ring {
            Ring::Broadcast(core) => core.missed(),
            _ => 0,
        };
        lapped
            .wrapping_add(self.missed_before)
            .wrapping_add(self.asm.missed())
    }

    /// Frames published and not yet received by this consumer, as far as it can tell without
    /// synchronising (a statistic): a broadcast subscriber's lag behind the producer. `None`
    /// for other kinds.
    pub fn lag(&self) -> Option<u64> {
        match &self.ring {
            Ring::Broadcast(core) => Some(core.lag(&self.mem)),
            _ => None,
        }
    }

    /// Takes the next frame, leaving it unreleased. `fits`: fail with `BufferTooSmall`, leaving
    /// the frame in the ring, if it is longer.
    #[inline(always)]
    fn take(&mut self, fits: Option<usize>) -> Result<Token> {
        match &mut self.ring {
            Ring::Spsc(core) => {
                let mut peeked = core.try_peek(&self.mem)?;
                if !peeked.is_whole() || self.asm.active() {
                    match core.assemble(&self.mem, &mut self.asm, None)? {
                        message::Assembled::Message(len, flags) => {
                            // SPSC copies go through `spsc::ConsumerCore::try_recv`.
                            debug_assert!(fits.is_none(), "a message {len} long taken to fit");
                            return Ok(Token {
                                payload: DataRange::EMPTY,
                                flags,
                                pos: 0,
                                held: Held::Message(len),
                            });
                        }
                        message::Assembled::Whole => peeked = core.try_peek(&self.mem)?,
                    }
                }
                let len = peeked.payload().len();
                if let Some(cap) = fits.filter(|&cap| len > cap) {
                    return Err(Error::BufferTooSmall { needed: len, cap });
                }
                core.take(&self.mem, &peeked);
                Ok(Token {
                    payload: peeked.payload(),
                    flags: peeked.flags(),
                    pos: 0,
                    held: Held::Ring,
                })
            }
            Ring::Broadcast(core) => {
                let (taken, flags) = core.try_take(&self.mem, &mut self.asm)?;
                let (payload, held) = match taken {
                    broadcast::Taken::InPlace(r) => (r, Held::Ring),
                    broadcast::Taken::Message(len) => (DataRange::EMPTY, Held::Message(len)),
                    broadcast::Taken::Copied(len) => (
                        self.mem
                            .range(0, len)
                            .expect("a copy is at most max_frame_size, within the data region"),
                        Held::Scratch,
                    ),
                };
                Ok(Token {
                    payload,
                    flags,
                    pos: 0,
                    held,
                })
            }
            Ring::Mpmc { core, outstanding } => {
                // Whether a slot was released here (a leaked frame's, a skip, a bad one): a
                // producer may be asleep waiting for exactly that room.
                let mut freed = false;
                if let Some((pos, held)) = outstanding.take() {
                    give_back(core, &self.mem, pos, held);
                    freed = true;
                }
                let r = mpmc_take(core, &self.mem, fits, &mut freed);
                if freed {
                    wait::notify(self.mem.consumer_line(), self.light);
                }
                r
            }
        }
    }

    /// Releases what `take` took (SPSC: everything taken so far) and wakes a waiting producer.
    #[inline(always)]
    fn release(&mut self, token: Token) {
        match &mut self.ring {
            Ring::Spsc(core) => core.release(&self.mem),
            Ring::Mpmc { core, .. } => give_back(core, &self.mem, token.pos, token.held),
            Ring::Broadcast(core) => core.release(&self.mem),
        }
        // Wrapping: the counters continue a predecessor's, read from shared memory.
        self.frames = self.frames.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(token.len() as u64);
        self.finish();
    }

    /// Publishes the counters and wakes a producer waiting for room.
    #[inline]
    fn finish(&mut self) {
        let me = self.membership.participant(&self.mem);
        // Relaxed: statistics, read without synchronisation.
        me.frames.store(self.frames, Relaxed);
        me.bytes.store(self.bytes, Relaxed);
        if matches!(self.ring, Ring::Broadcast(_)) || self.asm.missed() != 0 {
            // Relaxed: a statistic, like the counters above.
            me.missed
                .store(self.missed_base.wrapping_add(self.missed()), Relaxed);
        }
        // An SPSC producer waits for the head, which is published once per batch: wake it only
        // then (every release of the other kinds frees room).
        let freed = match &mut self.ring {
            Ring::Spsc(core) => core.take_freed(),
            _ => true,
        };
        if freed {
            wait::notify(self.mem.consumer_line(), self.light);
        }
        if let Some(p) = &mut self.pollable {
            p.disarm();
        }
    }

    /// Passes the result of a non-waiting call through; if it is `WouldBlock`, see
    /// `settle_empty`.
    #[inline(always)]
    fn settle<T>(&mut self, r: Result<T>) -> Result<T> {
        match r {
            Err(Error::WouldBlock(w)) => Err(self.settle_empty(w)),
            r => r,
        }
    }

    /// `settle` for a blocking call's attempts, which leave the pollable descriptor alone.
    #[inline(always)]
    fn settle_quiet<T>(&mut self, r: Result<T>) -> Result<T> {
        match r {
            Err(Error::WouldBlock(w)) => Err(self.settle_empty_quiet(w)),
            r => r,
        }
    }

    /// The ring was found empty: if that gave space back (SPSC), wakes a producer that may be
    /// asleep waiting for it; an empty ring of a deleted channel, or of a finished stream, is
    /// `Closed`: nothing will come. Out of line: the path that delivers a frame stays short.
    #[inline(never)]
    fn settle_empty(&mut self, what: &'static str) -> Error {
        let e = self.settle_empty_quiet(what);
        if self.pollable.is_some() {
            return self.settle_pollable(e);
        }
        e
    }

    /// `settle_empty` without the pollable descriptor.
    fn settle_empty_quiet(&mut self, what: &'static str) -> Error {
        if self.asm.missed() != 0 {
            // Messages dropped by a call that found nothing to deliver count now too.
            // Relaxed: a statistic, as in `finish`.
            self.membership
                .participant(&self.mem)
                .missed
                .store(self.missed_base.wrapping_add(self.missed()), Relaxed);
        }
        let freed = match &mut self.ring {
            Ring::Spsc(core) => core.take_freed(),
            Ring::Broadcast(core) => core.settle_empty(&self.mem),
            Ring::Mpmc { .. } => false,
        };
        if freed {
            wait::notify(self.mem.consumer_line(), self.light);
        }
        let holds = matches!(&self.ring, Ring::Spsc(core) if core.holds());
        // Frames held (`try_recv_held`) stay in this segment until released: follow after.
        if !holds && !self.mem.deleted() && crate::segment::followable(&self.mem) {
            // Resized, and every producer left this segment: what is left is taken, then the
            // consumer follows them (the caller's retry reads the new segment).
            return match self.follow() {
                Ok(()) => Error::WouldBlock(what),
                Err(e) => e,
            };
        }
        if self.mem.ending() {
            let e = self.ended(what);
            if matches!(e, Error::Closed(_)) && self.asm.active() {
                // Nothing more comes: a message left unfinished is dropped.
                self.asm.abandon();
                self.finish();
            }
            e
        } else {
            Error::WouldBlock(what)
        }
    }

    /// Moves this consumer to the segment that replaced its own in a resize, once the ring was
    /// found empty with every producer gone from it (`segment::followable`, whose Acquire makes
    /// their last frames visible to the look at the ring here). The entry there was taken for
    /// it by the coordinator; everything taken here is released as a close would, and a message
    /// left unfinished here is dropped (its producer died or timed out midway: nothing more of
    /// it will come). A stream that was finished here stays finished there until a producer
    /// attaches.
    #[cold]
    #[inline(never)]
    fn follow(&mut self) -> Result<()> {
        if !self.membership.held_here() {
            // The entries are the parent's, which moves them; a child cannot follow for it.
            return Err(Error::InvalidArgument(
                "this consumer was opened by another process (inherited across fork), and its \
                 channel was resized: only that process can move it; open a consumer of your \
                 own"
                .into(),
            ));
        }
        if self.watch().ready() {
            return Ok(()); // a frame is there after all
        }
        // Acquire: as in `ended`.
        let finished = state_of(self.mem.state().load(Acquire)) == STATE_FINISHED;
        let Some((mem, membership)) = self.membership.follow(&self.mem)? else {
            return Ok(()); // not replaced after all (the word was damage, now cleared)
        };
        let ring = match &self.ring {
            Ring::Spsc(_) => spsc::ConsumerCore::attach(&mem).map(Ring::Spsc),
            Ring::Broadcast(_) => {
                broadcast::ConsumerCore::attach(&mem, membership.index()).map(Ring::Broadcast)
            }
            Ring::Mpmc { .. } => Ok(Ring::Mpmc {
                core: mpmc::ConsumerCore::new(membership.index()),
                outstanding: None,
            }),
        };
        let ring = membership.settle_in(&mem, ring, self.pollable.as_deref_mut())?;
        match &mut self.ring {
            Ring::Spsc(core) => core.release_all(&self.mem),
            Ring::Broadcast(core) => {
                self.missed_before = self.missed_before.wrapping_add(core.missed());
                core.close(&self.mem);
            }
            // (Nothing is outstanding: `take` released a leaked frame's slot before it found
            // the ring empty, and `followable` saw every slot released.)
            Ring::Mpmc { .. } => {}
        }
        self.asm.abandon();
        let old_mem = std::mem::replace(&mut self.mem, mem);
        let old = std::mem::replace(&mut self.membership, membership);
        self.ring = ring;
        old.leave(&old_mem);
        wait::notify(old_mem.consumer_line(), self.light);
        if finished {
            crate::segment::finish_stream(&self.mem);
        }
        // The counters continue in the new entry.
        self.finish();
        Ok(())
    }

    /// `settle_empty` of a handle with a pollable descriptor: `WouldBlock` arms it (and, if a
    /// recheck fell due, the ring is checked for damage), `Closed` leaves it readable.
    #[cold]
    fn settle_pollable(&mut self, e: Error) -> Error {
        let Some(mut p) = self.pollable.take() else {
            return e;
        };
        let e = match e {
            Error::WouldBlock(what) => match p.arm(|| self.watch().ready()) {
                Ok(true) => match self.check_ring() {
                    Ok(()) => Error::WouldBlock(what),
                    Err(damage) => damage,
                },
                Ok(false) => Error::WouldBlock(what),
                Err(failed) => failed,
            },
            Error::Closed(why) => {
                p.ended();
                Error::Closed(why)
            }
            other => other,
        };
        self.pollable = Some(p);
        e
    }

    /// The ring was found empty and the state word says deleted or finished. A finish is
    /// believed only if the ring still looks empty after the state was loaded with Acquire:
    /// the frames committed before the finish may have arrived after our look at the ring.
    #[cold]
    #[inline(never)]
    fn ended(&self, what: &'static str) -> Error {
        // Acquire: pairs with the Release of the mark in `segment::finish_stream`: every frame
        // committed before the finish is visible to the look at the ring below.
        match state_of(self.mem.state().load(Acquire)) {
            STATE_DELETED => deleted(&self.mem),
            STATE_FINISHED if !self.watch().ready() => Error::Closed(
                "the stream is finished: its last producer called finish (Producer::finish, \
                 shmring_producer_finish) and every frame was received; a producer that \
                 attaches again continues it"
                    .into(),
            ),
            _ => Error::WouldBlock(what),
        }
    }

    /// How many producers hold an entry of the channel now: live ones, and dead ones whose
    /// entries a coordinator has not repaired yet (it frees them within milliseconds of the
    /// death; without a coordinator a dead producer's entry stays taken). Zero with the ring
    /// empty means that nothing arrives until a producer attaches: after a
    /// [`finish`](crate::Producer::finish) receives return `Closed`, but a producer that died
    /// or was dropped does not finish the stream, and this tells a consumer that it is alone.
    /// While a resize is under way it counts the producers of the ring this consumer still
    /// reads, zero once they all moved to the new one; the next receive follows them, and the
    /// count is theirs again.
    pub fn producers(&self) -> u32 {
        crate::segment::producers_attached(&self.mem)
    }

    /// A blocking iterator over the frames, copied out as [`OwnedFrame`]s: it waits for each
    /// frame as [`read`](Consumer::read) does, and ends when the stream is finished
    /// ([`Producer::finish`](crate::Producer::finish)) or the channel deleted and every frame
    /// was received. Any other error is yielded once, and then the iterator ends.
    /// `for frame in &mut consumer` does the same.
    ///
    /// ```
    /// use shmring::{ChannelConfig, Segment};
    ///
    /// let seg = Segment::anonymous(&ChannelConfig::spsc())?;
    /// let (mut tx, mut rx) = (seg.producer()?, seg.consumer()?);
    /// tx.send_batch([&b"one"[..], b"two"])?;
    /// tx.finish()?;
    /// let mut got = Vec::new();
    /// for frame in &mut rx {
    ///     got.push(frame?.into_vec());
    /// }
    /// assert_eq!(got, [b"one".to_vec(), b"two".to_vec()]);
    /// # Ok::<(), shmring::Error>(())
    /// ```
    pub fn iter(&mut self) -> Frames<'_> {
        Frames {
            consumer: self,
            done: false,
        }
    }

    /// Retries `op` while it returns `WouldBlock`. Between attempts it waits by the handle's
    /// strategy, watching one shared word ([`Watch`]) rather than retrying the whole operation,
    /// so that a spinning wait notices the other side within a pause and a load.
    ///
    /// A blocking call waits by its strategy, not through the pollable descriptor: one that was
    /// armed is counted out first (it would be counted twice on the line, and the entry's
    /// `parked` word, which a repair trusts, names only the waiter's count), and armed again if
    /// the call ends with the ring still empty (`TimedOut`), as a non-waiting call would.
    #[inline(never)]
    fn wait_and_retry<T>(
        &mut self,
        timeout: Option<Duration>,
        first: &'static str,
        op: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<T> {
        if let Some(p) = &mut self.pollable {
            p.disarm();
        }
        let r = self.wait_and_retry_inner(timeout, first, op);
        if self.pollable.is_some() {
            return match r {
                Err(Error::TimedOut(t)) => match self.settle_pollable(Error::WouldBlock("empty")) {
                    Error::WouldBlock(_) => Err(Error::TimedOut(t)),
                    other => Err(other),
                },
                Err(e @ Error::Closed(_)) => Err(self.settle_pollable(e)),
                r => r,
            };
        }
        r
    }

    fn wait_and_retry_inner<T>(
        &mut self,
        timeout: Option<Duration>,
        first: &'static str,
        mut op: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<T> {
        match self.settle_empty_quiet(first) {
            Error::WouldBlock(_) => {}
            e => return Err(e),
        }
        let mut waiter = Waiter::new(
            self.wait,
            timeout,
            (self.membership.role(), self.membership.index()),
        );
        let mut at = Arc::as_ptr(&self.mem);
        loop {
            let woke = {
                let watch = self.watch();
                waiter.wait_until(&self.mem, Line::Producer, || watch.ready())?
            };
            let r = op(self);
            let r = self.settle_quiet(r);
            if Arc::as_ptr(&self.mem) != at {
                // Followed a resize to the channel's new segment (`follow`).
                at = Arc::as_ptr(&self.mem);
                waiter.moved((self.membership.role(), self.membership.index()));
            }
            match r {
                Err(Error::WouldBlock(_)) if woke == Woke::Recheck => self.check_ring()?,
                Err(Error::WouldBlock(_)) => {}
                other => return other,
            }
        }
    }

    /// For a blocked call that has seen nothing for a while: checks what its retry cannot
    /// tell from a quiet ring (see `wait`, "Never trusting the protocol alone"). An SPSC
    /// consumer's retry re-reads and checks the header it waits on, which is all it depends on.
    #[cold]
    fn check_ring(&self) -> Result<()> {
        match &self.ring {
            // A broadcast retry re-reads and checks the slot it waits on.
            Ring::Spsc(_) | Ring::Broadcast(_) => Ok(()),
            Ring::Mpmc { .. } => mpmc::check_cursors(&self.mem).map(drop),
        }
    }

    /// What to spin on while the ring is empty.
    #[inline(always)]
    fn watch(&self) -> Watch<'_> {
        match &self.ring {
            Ring::Spsc(core) => core.watch(&self.mem),
            Ring::Mpmc { core, .. } => core.watch(&self.mem),
            Ring::Broadcast(core) => core.watch(&self.mem),
        }
    }

    #[inline(always)]
    fn try_recv_inner(&mut self, buf: &mut [u8]) -> Result<Received> {
        let (len, flags) = match &mut self.ring {
            Ring::Spsc(core) => core.try_recv(&self.mem, buf, &mut self.asm)?,
            Ring::Broadcast(core) => core.try_recv(&self.mem, buf, &mut self.asm)?,
            Ring::Mpmc { .. } => {
                // `take` checked the length it delivers against the buffer (`mpmc_take`).
                let token = self.take(Some(buf.len()))?;
                debug_assert!(token.payload.len() <= buf.len());
                self.mem.copy_out(token.payload, buf);
                if let Ring::Mpmc { core, .. } = &mut self.ring {
                    give_back(core, &self.mem, token.pos, token.held);
                }
                (token.payload.len(), token.flags)
            }
        };
        // Wrapping: the counters continue a predecessor's, read from shared memory.
        self.frames = self.frames.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(len as u64);
        self.finish();
        Ok(Received {
            len,
            flags: FrameFlags::from_bits(flags),
            partition: 0,
        })
    }

    /// Copies the next frame into `buf` and releases it, without waiting. A frame longer than
    /// `buf` is left in the ring and reported as [`Error::BufferTooSmall`] with its length.
    #[inline]
    pub fn try_recv(&mut self, buf: &mut [u8]) -> Result<Received> {
        let r = self.try_recv_inner(buf);
        self.settle(r)
    }

    /// Copies the next frame into `buf`, waiting as long as the ring is empty.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Received> {
        blocking!(self, None, |c| c.try_recv_inner(buf))
    }

    /// Copies the next frame into `buf`, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Received> {
        blocking!(self, Some(timeout), |c| c.try_recv_inner(buf))
    }

    #[inline(always)]
    fn frame(&mut self, token: Token) -> Frame<'_> {
        if let Ring::Mpmc { outstanding, .. } = &mut self.ring {
            *outstanding = Some((token.pos, token.held));
        }
        Frame {
            consumer: self,
            token,
        }
    }

    /// Lends the next frame in place, without waiting. The frame stays in the ring until the
    /// [`Frame`] is dropped or [`Frame::release`]d; until then this consumer cannot read
    /// another (the borrow checker sees to it).
    #[inline(always)]
    pub fn try_read(&mut self) -> Result<Frame<'_>> {
        let r = self.take(None);
        let token = self.settle(r)?;
        Ok(self.frame(token))
    }

    /// [`try_read`](Consumer::try_read) in two steps, for a caller that retries in a loop and
    /// cannot hold the frame's borrow across iterations (the `tokio` module): the frame taken,
    /// unreleased, ...
    #[cfg(feature = "tokio")]
    pub(crate) fn try_take(&mut self) -> Result<Token> {
        let r = self.take(None);
        self.settle(r)
    }

    /// ... and the frame lent from it.
    #[cfg(feature = "tokio")]
    pub(crate) fn lend(&mut self, token: Token) -> Frame<'_> {
        self.frame(token)
    }

    /// Lends the next frame in place, waiting as long as the ring is empty.
    #[inline(always)]
    pub fn read(&mut self) -> Result<Frame<'_>> {
        let token = blocking!(self, None, |c| c.take(None))?;
        Ok(self.frame(token))
    }

    /// Lends the next frame in place, waiting at most `timeout`.
    #[inline(always)]
    pub fn read_timeout(&mut self, timeout: Duration) -> Result<Frame<'_>> {
        let token = blocking!(self, Some(timeout), |c| c.take(None))?;
        Ok(self.frame(token))
    }

    /// Takes the next frame like [`Consumer::read_timeout`], as a [`DetachedFrame`] that does
    /// not borrow the consumer: for callers that cannot hold a borrow across calls, such as
    /// the C ABI. `timeout`: `None` waits as long as it takes, zero does not wait.
    ///
    /// # Safety
    /// Until the frame is passed to [`release_detached`](Consumer::release_detached), this
    /// consumer must not receive anything else (that would release the frame while its bytes
    /// are still read), and the frame must be given back to this consumer, exactly once.
    pub unsafe fn read_detached(&mut self, timeout: Option<Duration>) -> Result<DetachedFrame> {
        let token = match timeout {
            Some(Duration::ZERO) => {
                let r = self.take(None);
                self.settle(r)?
            }
            t => blocking!(self, t, |c| c.take(None))?,
        };
        if let Ring::Mpmc { outstanding, .. } = &mut self.ring {
            *outstanding = Some((token.pos, token.held));
        }
        let ptr = match &self.ring {
            // The copy stays in the scratch buffer until the next receive.
            Ring::Broadcast(core) if token.held == Held::Scratch => core.scratch().as_ptr(),
            // So does a message put back together in the assembly buffer.
            _ if matches!(token.held, Held::Message(_)) => self.asm.bytes(0).as_ptr(),
            // SAFETY: the frame was taken by this consumer and stays unreleased until
            // `release_detached`; the pointer is handed out raw.
            _ => unsafe { self.mem.slice(token.payload) }.as_ptr(),
        };
        Ok(DetachedFrame {
            token,
            ptr,
            len: token.len(),
        })
    }

    /// Releases a detached frame: its space goes back to the producer.
    ///
    /// # Safety
    /// `frame` must come from this consumer's [`read_detached`](Consumer::read_detached), with
    /// nothing received since.
    pub unsafe fn release_detached(&mut self, frame: DetachedFrame) {
        if let Ring::Mpmc { outstanding, .. } = &mut self.ring {
            *outstanding = None;
        }
        self.release(frame.token);
    }

    fn try_drain_inner<F>(&mut self, max: usize, f: &mut F) -> Result<usize>
    where
        F: FnMut(&[u8], FrameFlags),
    {
        let mut n = 0;
        match &mut self.ring {
            Ring::Spsc(core) => {
                let mem = &*self.mem;
                while n < max {
                    let peeked = match core.try_peek(mem) {
                        Ok(p) => p,
                        Err(e) if n == 0 => return Err(e),
                        Err(_) => break,
                    };
                    if !peeked.is_whole() || self.asm.active() {
                        if n > 0 {
                            break; // the frames so far are released first
                        }
                        match core.assemble(mem, &mut self.asm, None)? {
                            message::Assembled::Message(len, flags) => {
                                self.bytes = self.bytes.wrapping_add(len as u64);
                                n += 1;
                                f(self.asm.bytes(len), FrameFlags::from_bits(flags));
                                break;
                            }
                            // A frame after a message left unfinished: the next round takes it.
                            message::Assembled::Whole => continue,
                        }
                    }
                    core.take(mem, &peeked);
                    // SAFETY: the frame was taken and is not released before the callback
                    // returns; the producer does not write it until then.
                    let bytes = unsafe { mem.slice(peeked.payload()) };
                    self.bytes = self.bytes.wrapping_add(bytes.len() as u64);
                    n += 1;
                    f(bytes, FrameFlags::from_bits(peeked.flags()));
                }
                // One release for the whole batch (if `f` panicked, the next release covers it).
                core.release(mem);
            }
            Ring::Broadcast(core) => {
                let mem = &*self.mem;
                while n < max {
                    let (taken, flags) = match core.try_take(mem, &mut self.asm) {
                        Ok(t) => t,
                        Err(e) if n == 0 => return Err(e),
                        Err(_) => break,
                    };
                    let bytes = match taken {
                        // SAFETY: the frame was taken and is not released before the callback
                        // returns; the producer does not write it until then.
                        broadcast::Taken::InPlace(r) => unsafe { mem.slice(r) },
                        broadcast::Taken::Copied(len) => &core.scratch()[..len],
                        broadcast::Taken::Message(len) => self.asm.bytes(len),
                    };
                    self.bytes = self.bytes.wrapping_add(bytes.len() as u64);
                    n += 1;
                    f(bytes, FrameFlags::from_bits(flags));
                }
                core.release(mem);
            }
            Ring::Mpmc { core, outstanding } => {
                let mem = &*self.mem;
                // Whether a slot was released (see `take`); frames are released too.
                let mut freed = false;
                if let Some((pos, held)) = outstanding.take() {
                    give_back(core, mem, pos, held);
                    freed = true;
                }
                let mut skips = 0u64;
                let mut failed = None;
                let limit = mem.geometry().capacity + 1;
                while n < max {
                    // Never more positions than the skips still allowed (see below).
                    let want = ((max - n) as u64).min(limit - skips);
                    let taken = match core.try_take(mem, want, None) {
                        Ok(t) => t,
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    };
                    freed = true;
                    // Releases what the callback has not finished with, even if it panics.
                    let mut guard = MpmcRelease {
                        core,
                        mem,
                        light: self.light,
                        next: taken.position(0),
                        end: taken.position(0) + taken.count(),
                        pooled: None,
                    };
                    while guard.next < guard.end {
                        let pos = guard.next;
                        match guard.core.slot(mem, pos) {
                            Ok(mpmc::Slot::Frame { payload, flags }) => {
                                // SAFETY: the slot was taken and is released only after the
                                // callback returns (by the guard).
                                let bytes = unsafe { mem.slice(payload) };
                                self.bytes = self.bytes.wrapping_add(bytes.len() as u64);
                                n += 1;
                                f(bytes, FrameFlags::from_bits(flags));
                            }
                            Ok(mpmc::Slot::Pooled {
                                payload,
                                flags,
                                reference,
                            }) => {
                                // Freed with the slot, by the guard if `f` panics.
                                guard.pooled = Some(reference);
                                // SAFETY: as for a frame: the chunks are this consumer's until
                                // it frees them, after the callback returns.
                                let bytes = unsafe { mem.slice(payload) };
                                self.bytes = self.bytes.wrapping_add(bytes.len() as u64);
                                n += 1;
                                f(bytes, FrameFlags::from_bits(flags));
                            }
                            Ok(mpmc::Slot::Skip) => skips += 1,
                            Err(e) => {
                                failed = Some(e);
                                break; // the guard releases the rest, this slot included
                            }
                        }
                        guard.next += 1;
                        guard.core.release(mem, pos);
                        if let Some(r) = guard.pooled.take() {
                            mpmc::free_pooled(mem, &r);
                        }
                    }
                    drop(guard);
                    if failed.is_some() {
                        break;
                    }
                    // As in `mpmc_take`: a capacity's worth of skips per call, and one more.
                    if skips >= limit {
                        failed = Some(Error::WouldBlock("skips"));
                        break;
                    }
                }
                if let Some(e) = failed
                    && n == 0
                {
                    if freed {
                        self.finish();
                    }
                    return Err(e);
                }
            }
        }
        self.frames = self.frames.wrapping_add(n as u64);
        self.finish();
        Ok(n)
    }

    /// Hands up to `max` waiting frames, in order, to `f(bytes, flags)`, then releases them all
    /// at once; returns how many. Does not wait: `WouldBlock` if the ring is empty.
    pub fn try_drain<F>(&mut self, max: usize, mut f: F) -> Result<usize>
    where
        F: FnMut(&[u8], FrameFlags),
    {
        let r = self.try_drain_inner(max, &mut f);
        self.settle(r)
    }

    /// Like [`try_drain`](Consumer::try_drain), but first waits as long as the ring is empty.
    pub fn drain<F>(&mut self, max: usize, mut f: F) -> Result<usize>
    where
        F: FnMut(&[u8], FrameFlags),
    {
        blocking!(self, None, |c| c.try_drain_inner(max, &mut f))
    }

    /// Like [`try_drain`](Consumer::try_drain), but first waits at most `timeout` for a frame.
    pub fn drain_timeout<F>(&mut self, max: usize, timeout: Duration, mut f: F) -> Result<usize>
    where
        F: FnMut(&[u8], FrameFlags),
    {
        blocking!(self, Some(timeout), |c| c.try_drain_inner(max, &mut f))
    }
}

/// The MPMC half of `Consumer::take`: takes positions until one holds a frame, releasing the
/// skips (and a bad slot) on the way and setting `freed` when it does.
///
/// At most a capacity's worth of skips, and one more, is stepped over per call; then the call
/// gives up with `WouldBlock("skips")`, so that a writer that keeps committing skips as fast as
/// they are taken cannot keep a `try_` call inside. (A ring holds a capacity's worth at most:
/// without such a writer the call finds the frame or the empty position after them, and says
/// which.) With `fits: Some(cap)`, the frame's length is checked
/// against `cap` once more on the header read after the take (the one it is delivered with):
/// `take`'s check read the header before its CAS, and a hostile writer may have changed it
/// since. A frame that no longer fits is released and reported `Corrupted`.
#[inline(always)]
fn mpmc_take(
    core: &mut mpmc::ConsumerCore,
    mem: &Memory,
    fits: Option<usize>,
    freed: &mut bool,
) -> Result<Token> {
    let mut skips = 0u64;
    loop {
        let pos = core.try_take(mem, 1, fits)?.position(0);
        match core.slot(mem, pos) {
            Ok(mpmc::Slot::Frame { payload, flags }) => {
                if let Some(cap) = fits.filter(|&cap| payload.len() > cap) {
                    core.release(mem, pos);
                    *freed = true;
                    return Err(grown(pos, payload.len(), cap));
                }
                return Ok(Token {
                    payload,
                    flags,
                    pos,
                    held: Held::Ring,
                });
            }
            Ok(mpmc::Slot::Pooled {
                payload,
                flags,
                reference,
            }) => {
                let held = Held::Pool(reference);
                if let Some(cap) = fits.filter(|&cap| payload.len() > cap) {
                    give_back(core, mem, pos, held);
                    *freed = true;
                    return Err(grown(pos, payload.len(), cap));
                }
                return Ok(Token {
                    payload,
                    flags,
                    pos,
                    held,
                });
            }
            Ok(mpmc::Slot::Skip) => {
                core.release(mem, pos);
                *freed = true;
                skips += 1;
                if skips > mem.geometry().capacity {
                    return Err(Error::WouldBlock("skips"));
                }
            }
            Err(e) => {
                core.release(mem, pos);
                *freed = true;
                return Err(e);
            }
        }
    }
}

/// The error of a frame whose header changed between the length check and the take.
#[cold]
#[inline(never)]
fn grown(pos: u64, len: usize, cap: usize) -> Error {
    Error::Corrupted(format!(
        "the slot header of position {pos} changed while it was taken: a {len}-byte frame \
         for a {cap}-byte buffer that it fitted a moment before (released undelivered)"
    ))
}

/// The error of a deleted channel, or `Corrupted` for one whose segment was truncated under
/// this process (the SIGBUS guard then marks the mapping deleted: see `guard.rs`).
pub(crate) fn deleted(mem: &Memory) -> Error {
    if mem.truncated() {
        return Error::Corrupted(
            "the channel's segment was truncated while mapped: its memory is gone".into(),
        );
    }
    Error::Closed(
        "the channel was deleted (by its owner, or its coordinator shut the namespace down)".into(),
    )
}

/// Releases the rest of an MPMC batch on drop, and wakes the producers waiting for the slots
/// (the callback panicked, or a slot was damaged: the caller's own wake-up may not come).
struct MpmcRelease<'a> {
    core: &'a mut mpmc::ConsumerCore,
    mem: &'a Memory,
    light: bool,
    next: u64,
    end: u64,
    /// The pool message of the slot at `next`, while the callback has it.
    pooled: Option<mpmc::PoolRef>,
}

impl Drop for MpmcRelease<'_> {
    fn drop(&mut self) {
        if self.next == self.end {
            return; // the batch was released slot by slot; the caller wakes
        }
        while self.next < self.end {
            // The message in the pool of each slot given back undelivered is freed too: nothing
            // would reference its chunks any more.
            let pooled = self
                .pooled
                .take()
                .or_else(|| match self.core.slot(self.mem, self.next) {
                    Ok(mpmc::Slot::Pooled { reference, .. }) => Some(reference),
                    _ => None,
                });
            self.core.release(self.mem, self.next);
            if let Some(r) = pooled {
                mpmc::free_pooled(self.mem, &r);
            }
            self.next += 1;
        }
        wait::notify(self.mem.consumer_line(), self.light);
    }
}

/// Gives back MPMC position `pos` that this consumer took: releases its slot, then frees its
/// message's chunks if it held one in the pool (in that order: a consumer that dies between
/// the two leaves chunks no slot references, which a repair frees; the other order could let a
/// repair deliver again a message whose chunks were reused).
#[inline(always)]
fn give_back(core: &mut mpmc::ConsumerCore, mem: &Memory, pos: u64, held: Held) {
    core.release(mem, pos);
    if let Held::Pool(r) = held {
        mpmc::free_pooled(mem, &r);
    }
    // Relaxed: the copy of the producer line's flag on the line consumers write anyway.
    if mem.consumer_line().moved.load(Relaxed) != 0 {
        // Resized: a consumer waiting for the last held slot to be released before it
        // follows (`mpmc::drained_for_good`) looks again.
        wait::wake_consumers(mem);
    }
}

/// What a consumer-group member (`partition.rs`) does with the consumer of one of its
/// partitions (an SPSC ring with a checkpoint area).
impl Consumer {
    /// The segment this consumer reads.
    pub(crate) fn memory(&self) -> &Memory {
        &self.mem
    }

    /// The group's assignment epoch as the coordinator last stored it in this partition.
    pub(crate) fn group_epoch(&self) -> u64 {
        // Acquire: pairs with the coordinator's Release store (`publish_epoch`).
        self.mem.repair_line().group_epoch.load(Acquire)
    }

    /// `try_recv` without what follows an empty ring (`settle`): a group member looks at
    /// every partition this way first, and settles only when all of them were empty
    /// (`settle_empty_now`).
    #[inline]
    pub(crate) fn try_recv_unsettled(&mut self, buf: &mut [u8]) -> Result<Received> {
        self.try_recv_inner(buf)
    }

    /// What `try_recv` returns for an empty ring: `WouldBlock` (arming the pollable
    /// descriptor, waking a producer that waits for the room given back), or `Closed` for a
    /// finished stream or deleted channel.
    pub(crate) fn settle_empty_now(&mut self) -> Error {
        self.settle_empty("empty")
    }

    /// `try_recv_held` without settling an empty ring (see `try_recv_unsettled`).
    pub(crate) fn try_take_held(&mut self, buf: &mut [u8]) -> Result<Received> {
        let Ring::Spsc(core) = &mut self.ring else {
            return Err(Error::InvalidArgument(
                "frames can be held only on an SPSC channel or a partition (this channel's \
                 frames are released as they are received)"
                    .into(),
            ));
        };
        core.try_take_copy(&self.mem, buf).map(|(len, flags)| {
            // Wrapping: the counters continue a predecessor's, read from shared memory.
            self.frames = self.frames.wrapping_add(1);
            self.bytes = self.bytes.wrapping_add(len as u64);
            Received {
                len,
                flags: FrameFlags::from_bits(flags),
                partition: 0,
            }
        })
    }

    /// Whether a receive would find something now: a frame, or the end of the stream. One load
    /// from shared memory, no system call, nothing taken: for a waiting loop of one's own
    /// (spinning before sleeping on [`fd`](Consumer::fd), say).
    pub fn ready(&self) -> bool {
        self.watch().ready() || self.mem.ending()
    }

    /// Copies the next frame into `buf` and takes it **without releasing it**: it stays in the
    /// ring, and if this process dies before releasing it, the channel's next consumer receives
    /// it again, flagged redelivered. Frames held this way are released in order with
    /// [`release_held`](Consumer::release_held), up to a [`held_position`](Consumer::held_position)
    /// taken after any of them, or handed back to this consumer with
    /// [`rewind_held`](Consumer::rewind_held). This is how a forwarder (the bridge to other
    /// hosts) keeps what it sent until the far side acknowledges it.
    ///
    /// Dropping the consumer hands the frames still held back to the ring, as a crash would:
    /// the next consumer receives them, flagged redelivered.
    ///
    /// SPSC channels only (`InvalidArgument` for the others, whose frames are released as they
    /// are received); whole frames only (`InvalidArgument` for a channel that carries messages
    /// longer than a frame). Frames held take room in the ring: a producer waits once held
    /// and unread frames fill it. Returns as [`try_recv`](Consumer::try_recv) does.
    pub fn try_recv_held(&mut self, buf: &mut [u8]) -> Result<Received> {
        if self.max_message_size() > self.max_frame_size() {
            return Err(Error::InvalidArgument(
                "frames cannot be held on a channel that carries messages longer than a frame"
                    .into(),
            ));
        }
        self.hands_back = true;
        let r = self.try_take_held(buf);
        match r {
            Err(Error::WouldBlock(what)) => Err(self.settle_empty(what)),
            r => r,
        }
    }

    /// The position after the last frame taken by [`try_recv_held`](Consumer::try_recv_held):
    /// [`release_held`](Consumer::release_held) with it releases every frame taken so far.
    pub fn held_position(&self) -> HeldPosition {
        match &self.ring {
            Ring::Spsc(core) => HeldPosition(core.read_position()),
            _ => HeldPosition(0),
        }
    }

    /// Releases, in order, the frames held below `position` (from
    /// [`held_position`](Consumer::held_position)); those taken after it stay held.
    /// `InvalidArgument` for a position already released, or past the frames taken (one from
    /// before a [`rewind_held`](Consumer::rewind_held) whose frames were not taken again).
    pub fn release_held(&mut self, position: HeldPosition) -> Result<()> {
        let Ring::Spsc(core) = &mut self.ring else {
            return Err(Error::InvalidArgument(
                "frames can be held only on an SPSC channel".into(),
            ));
        };
        core.release_through(&self.mem, position.0)?;
        self.finish();
        Ok(())
    }

    /// Hands every frame held and not released back to this consumer: the next receive starts
    /// again at the first of them, which keep the flags they were received with.
    pub fn rewind_held(&mut self) {
        if let Ring::Spsc(core) = &mut self.ring {
            core.rewind_to_released(&self.mem);
        }
    }

    /// Commits `state` (if any) as the partition's checkpoint at the position after the last
    /// frame taken, then releases every frame taken: in that order (see `checkpoint.rs`).
    pub(crate) fn commit_held(&mut self, state: Option<&[u8]>) -> Result<()> {
        if let Some(state) = state {
            self.checkpoint_held(state)?;
        }
        let Ring::Spsc(core) = &mut self.ring else {
            return Err(Error::InvalidArgument(
                "not a partition of a partitioned channel".into(),
            ));
        };
        core.release(&self.mem);
        self.finish();
        Ok(())
    }

    /// The first step of `commit_held`: the checkpoint of `state` at the read position,
    /// nothing released yet.
    pub(crate) fn checkpoint_held(&mut self, state: &[u8]) -> Result<()> {
        let Ring::Spsc(core) = &mut self.ring else {
            return Err(Error::InvalidArgument(
                "not a partition of a partitioned channel".into(),
            ));
        };
        let pos = core.checkpoint_position(&self.mem);
        crate::checkpoint::write(&self.mem, pos, state)
    }

    /// Hands every frame taken and not released back to the ring (for the partition's next
    /// consumer): called before a partition given to another member is closed.
    pub(crate) fn abandon_held(&mut self) {
        if let Ring::Spsc(core) = &mut self.ring {
            core.rewind(&self.mem);
        }
    }

    /// Resumes from the partition's last checkpoint: passes over the frames it covers that were
    /// not released yet, and returns its state (`None`: no checkpoint was committed).
    pub(crate) fn resume_from_checkpoint(&mut self) -> Result<Option<Vec<u8>>> {
        let Some((pos, state)) = crate::checkpoint::read(&self.mem)? else {
            return Ok(None);
        };
        let Ring::Spsc(core) = &mut self.ring else {
            return Err(Error::InvalidArgument(
                "not a partition of a partitioned channel".into(),
            ));
        };
        let passed = core.resume_at(&self.mem, pos)?;
        if passed > 0 {
            tracing::debug!(passed, pos, "frames covered by the checkpoint passed over");
            wait::notify(self.mem.consumer_line(), self.light);
        }
        Ok(Some(state))
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if !self.membership.held_here() {
            // Inherited by a forked child: the ring, the cursors, the entry and the coordinator's
            // books are the parent's (defect 18). Only the memory is freed.
            return;
        }
        // Counted out while the entry is still ours.
        if let Some(p) = &mut self.pollable {
            p.disarm();
        }
        match &mut self.ring {
            // Gives back all space consumed, including frames read through a leaked `Frame`
            // (they were delivered).
            Ring::Spsc(core) => {
                if self.hands_back {
                    // Frames held and not released stay for the next consumer (flagged
                    // redelivered: they were handed out).
                    core.rewind(&self.mem);
                }
                core.release_all(&self.mem);
                wait::notify(self.mem.consumer_line(), self.light);
            }
            Ring::Mpmc { core, outstanding } => {
                if let Some((pos, held)) = outstanding.take() {
                    give_back(core, &self.mem, pos, held);
                    wait::notify(self.mem.consumer_line(), self.light);
                }
            }
            // Holds the producer back no more, and wakes it if it waits for us.
            Ring::Broadcast(core) => {
                core.close(&self.mem);
                wait::notify(self.mem.consumer_line(), self.light);
            }
        }
        self.membership.leave(&self.mem);
    }
}

/// The blocking iterator of [`Consumer::iter`] (and of `for frame in &mut consumer`).
#[derive(Debug)]
pub struct Frames<'a> {
    consumer: &'a mut Consumer,
    done: bool,
}

impl Iterator for Frames<'_> {
    type Item = Result<OwnedFrame>;

    fn next(&mut self) -> Option<Result<OwnedFrame>> {
        if self.done {
            return None;
        }
        match self.consumer.read() {
            Ok(frame) => Some(Ok(frame.to_owned_frame())),
            Err(Error::Closed(_)) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl std::iter::FusedIterator for Frames<'_> {}

impl<'a> IntoIterator for &'a mut Consumer {
    type Item = Result<OwnedFrame>;
    type IntoIter = Frames<'a>;

    fn into_iter(self) -> Frames<'a> {
        self.iter()
    }
}

/// A frame copied out of the ring by [`Consumer::iter`]: dereferences to its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedFrame {
    bytes: Vec<u8>,
    flags: FrameFlags,
}

impl OwnedFrame {
    /// The frame's flags.
    pub fn flags(&self) -> FrameFlags {
        self.flags
    }

    /// Whether the frame may have been seen by a consumer that died before releasing it.
    pub fn is_redelivered(&self) -> bool {
        self.flags.is_redelivered()
    }

    /// The frame's bytes.
    pub fn into_vec(self) -> Vec<u8> {
        self.bytes
    }
}

impl Deref for OwnedFrame {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl From<OwnedFrame> for Vec<u8> {
    fn from(frame: OwnedFrame) -> Vec<u8> {
        frame.bytes
    }
}

/// A frame taken by [`Consumer::read_detached`]: `len` bytes at `ptr`, until given back.
#[derive(Debug)]
pub struct DetachedFrame {
    token: Token,
    ptr: *const u8,
    len: usize,
}

impl DetachedFrame {
    /// The first byte of the frame, in shared memory.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// The frame's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The frame's flags.
    pub fn flags(&self) -> FrameFlags {
        FrameFlags::from_bits(self.token.flags)
    }
}

/// A frame lent in place by [`Consumer::read`]: dereferences to its bytes. Dropping it (or
/// [`Frame::release`]) gives its space back to the producer.
#[derive(Debug)]
pub struct Frame<'a> {
    consumer: &'a mut Consumer,
    token: Token,
}

impl Frame<'_> {
    /// The frame's flags.
    pub fn flags(&self) -> FrameFlags {
        FrameFlags::from_bits(self.token.flags)
    }

    /// Whether the frame may have been seen by a consumer that died before releasing it.
    pub fn is_redelivered(&self) -> bool {
        self.flags().is_redelivered()
    }

    /// Releases the frame (what dropping it does).
    pub fn release(self) {}

    /// Copies the frame out and releases it.
    pub fn to_owned_frame(self) -> OwnedFrame {
        OwnedFrame {
            bytes: self.to_vec(),
            flags: self.flags(),
        }
    }
}

impl Deref for Frame<'_> {
    type Target = [u8];

    #[inline(always)]
    fn deref(&self) -> &[u8] {
        match (&self.consumer.ring, self.token.held) {
            (_, Held::Message(len)) => return self.consumer.asm.bytes(len),
            (Ring::Broadcast(core), Held::Scratch) => {
                return &core.scratch()[..self.token.payload.len()];
            }
            _ => {}
        }
        // SAFETY: the frame was taken by this consumer and is released only when the Frame
        // drops; the producer does not write its bytes before that. The Frame borrows the
        // consumer mutably, so this process has no writable reference into it.
        unsafe { self.consumer.mem.slice(self.token.payload) }
    }
}

impl Drop for Frame<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        if let Ring::Mpmc { outstanding, .. } = &mut self.consumer.ring {
            *outstanding = None;
        }
        self.consumer.release(self.token);
    }
}

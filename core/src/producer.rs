//! The producer handle: copy and zero-copy sends, batches, blocking variants.

use crate::consumer::FrameFlags;
use crate::error::{Error, Result};
use crate::layout::{FLAG_REDELIVERED, MESSAGE_PREFIX};
use crate::message;
use crate::pollable::Pollable;
use crate::region::{DataRange, Memory, Watch};
use crate::segment::Membership;
use crate::wait::{self, Line, WaitStrategy, Waiter, Woke};
use crate::{broadcast, mpmc, spsc};
use std::ops::{Deref, DerefMut};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug)]
enum Ring {
    Spsc(spsc::ProducerCore),
    Mpmc(mpmc::ProducerCore),
    Broadcast(broadcast::ProducerCore),
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Token {
    Spsc(spsc::Claimed),
    Mpmc { pos: u64, payload: DataRange },
    Broadcast { pos: u64, payload: DataRange },
}

impl Token {
    fn payload(&self) -> DataRange {
        match self {
            Token::Spsc(c) => c.payload(),
            Token::Mpmc { payload, .. } | Token::Broadcast { payload, .. } => *payload,
        }
    }
}

/// The sending end of a channel: SPSC, MPMC or broadcast.
///
/// A `Producer` owns one entry of the channel's producer table from
/// [`Segment::producer`](crate::Segment::producer) until it is dropped. It is `Send` (it may move
/// to another thread) but not `Sync`: one thread sends through it at a time.
///
/// Every send comes in three forms: `try_*` never waits and returns
/// [`Error::WouldBlock`] when the ring is full; `*_timeout` waits up to a duration and returns
/// [`Error::TimedOut`]; the plain form waits as long as it takes. How it waits is the handle's
/// [`WaitStrategy`].
///
/// ```
/// use shmring::{ChannelConfig, Segment};
///
/// let seg = Segment::anonymous(&ChannelConfig::spsc())?;
/// let mut tx = seg.producer()?;
/// let mut rx = seg.consumer()?;
///
/// tx.send(b"hello")?;                       // copy
/// let mut claim = tx.claim(5)?;             // zero-copy: write in place...
/// claim.copy_from_slice(b"world");
/// claim.commit();                           // ...then publish
///
/// let mut buf = [0u8; 64];
/// let got = rx.recv(&mut buf)?;
/// assert_eq!(&buf[..got.len], b"hello");
/// let frame = rx.read()?;                   // zero-copy view
/// assert_eq!(&*frame, b"world");
/// # Ok::<(), shmring::Error>(())
/// ```
#[derive(Debug)]
pub struct Producer {
    mem: Arc<Memory>,
    ring: Ring,
    membership: Membership,
    wait: WaitStrategy,
    light: bool,
    batching: bool,
    dirty: bool,
    frames: u64,
    bytes: u64,
    /// MPMC: the position of a claim handed out and not yet committed or aborted. A `Claim`
    /// that was leaked (`mem::forget`) never gives it back; the next claim aborts it, or the
    /// slot would stay unwritten and wedge every consumer at its position.
    mpmc_claimed: Option<u64>,
    /// The entry was given up ([`Producer::finish`]); the drop has nothing left to do.
    left: bool,
    /// The pollable descriptor, once [`Producer::fd`] made it.
    pollable: Option<Box<Pollable>>,
    /// MPMC: waiting for room in the message pool, last seen at this count of frees (what
    /// `watch` watches then, instead of the ring).
    pool_wait: Option<u64>,
    /// A message is streaming through the ring: its waits do not stop for a resize (it is
    /// finished in the segment it was begun in).
    streaming: bool,
}

/// Most moves one send makes before it gives up: resizes are one at a time, so more means a
/// `moved` word that keeps being rewritten.
const MAX_MOVES: usize = 8;

/// The error of a send that kept finding its segment replaced.
#[cold]
fn moved_for_good() -> Error {
    Error::Corrupted(format!(
        "the channel's segment said it was replaced {MAX_MOVES} times during one send: its \
         `moved` word keeps being overwritten"
    ))
}

/// Tries `$op` (an expression over `$p`, the handle) once, inline; while it returns
/// `WouldBlock`, waits and retries out of line (`wait_and_retry`). A macro, not a function
/// taking a closure: the compiler keeps such a closure out of line, and the claim it returns then
/// goes through memory in pieces that the caller reads back whole, which stalls the caller
/// until every earlier store (the frame's, to a line the consumer holds) has left the core
/// (ARCHITECTURE.md, "Zero-copy throughput").
macro_rules! blocking {
    ($this:expr, $timeout:expr, |$p:ident| $op:expr) => {{
        let first = {
            let $p = &mut *$this;
            $op
        };
        match first {
            Err(Error::WouldBlock(_)) => $this.wait_and_retry($timeout, |$p: &mut Self| $op),
            other => other,
        }
    }};
}

impl Producer {
    pub(crate) fn new(mem: Arc<Memory>, membership: Membership) -> Result<Producer> {
        let ring = match mem.geometry().kind {
            crate::Kind::Spsc => match spsc::ProducerCore::attach(&mem) {
                Ok(core) => Ring::Spsc(core),
                Err(e) => {
                    membership.leave(&mem);
                    return Err(e);
                }
            },
            crate::Kind::Mpmc => Ring::Mpmc(
                mpmc::ProducerCore::new(membership.index())
                    .with_incarnation(membership.incarnation()),
            ),
            crate::Kind::Broadcast => match broadcast::ProducerCore::attach(&mem) {
                Ok(core) => Ring::Broadcast(core),
                Err(e) => {
                    membership.leave(&mem);
                    return Err(e);
                }
            },
        };
        let me = membership.participant(&mem);
        // Relaxed: our own counters, continued from a predecessor's.
        let (frames, bytes) = (
            me.frames.load(crate::sync::Ordering::Relaxed),
            me.bytes.load(crate::sync::Ordering::Relaxed),
        );
        Ok(Producer {
            light: wait::light_waker(),
            mem,
            ring,
            membership,
            wait: WaitStrategy::default(),
            batching: false,
            dirty: false,
            frames,
            bytes,
            mpmc_claimed: None,
            left: false,
            pollable: None,
            pool_wait: None,
            streaming: false,
        })
    }

    /// A descriptor that an event loop waits on beside its sockets and timers: readable when
    /// room may have been made in the ring, or the channel was deleted. Made on the first
    /// call, then the same each time; it belongs to the producer (do not close it).
    ///
    /// The contract is the consumer's ([`Consumer::fd`](crate::Consumer::fd)): once it is
    /// readable, send with [`try_send`](Producer::try_send) (or
    /// [`try_claim`](Producer::try_claim)) until [`Error::WouldBlock`], which re-arms it, then
    /// poll again. `Closed` leaves it readable.
    pub fn fd(&mut self) -> Result<RawFd> {
        Pollable::check_held(&self.membership, "producer")?;
        if let Some(p) = &self.pollable {
            return Ok(p.fd());
        }
        if self.left {
            return Err(Error::Closed(
                "this producer finished its stream: it sends nothing more".into(),
            ));
        }
        let p = Pollable::new(&self.mem, Line::Consumer, &self.membership)?;
        let fd = p.fd();
        self.pollable = Some(Box::new(p));
        // Armed at once, and readable at once: whether there is room is for the first send to
        // tell (a look at the ring cannot, for every kind); its `WouldBlock` arms it again.
        match self.full_pollable(Error::WouldBlock("arming")) {
            Error::WouldBlock(_) => {
                if let Some(p) = &mut self.pollable {
                    p.signal();
                }
                Ok(fd)
            }
            e => {
                self.pollable = None;
                Err(e)
            }
        }
    }

    /// Ends the stream: every frame sent so far is published, this producer leaves the channel
    /// (as when it is dropped), and, if no other producer is attached, the channel is marked
    /// finished and every consumer woken. Consumers then receive what is left in the ring and
    /// get [`Error::Closed`] instead of waiting for more.
    ///
    /// * With several MPMC producers, each finishes when it is done: the stream ends with the
    ///   finish of the last one attached (a producer that is dropped or dies instead leaves
    ///   without ending it; [`Consumer::producers`](crate::Consumer::producers) tells
    ///   consumers whether anyone is left).
    /// * A producer that attaches after a finish continues the stream: consumers that read
    ///   again receive its frames (a consumer that already got `Closed` was told the stream
    ///   had ended then).
    /// * A producer that crashes, or is dropped, does not finish the stream.
    ///
    /// Fails with `InvalidArgument` in a process forked after this producer was opened (the
    /// stream is its parent's), and with `Corrupted` if the segment's memory is gone.
    ///
    /// ```
    /// use shmring::{ChannelConfig, Error, Segment};
    ///
    /// let seg = Segment::anonymous(&ChannelConfig::spsc())?;
    /// let (mut tx, mut rx) = (seg.producer()?, seg.consumer()?);
    /// tx.send(b"last words")?;
    /// tx.finish()?;
    /// assert_eq!(&*rx.read()?, b"last words");      // what was sent is still delivered
    /// assert!(matches!(rx.read(), Err(Error::Closed(_))));
    /// # Ok::<(), shmring::Error>(())
    /// ```
    pub fn finish(mut self) -> Result<()> {
        // SAFETY: `self` is dropped right after, unused.
        unsafe { self.finish_in_place() }
    }

    /// [`finish`](Producer::finish) without giving the producer up: for the C ABI, whose
    /// handle (and its pollable descriptor, which stays readable) lives until it is closed.
    ///
    /// # Safety
    /// After it returns `Ok`, the producer must not send, claim or publish anything: it has left
    /// its entry, which a successor may hold. Only [`fd`](Producer::fd) and dropping it remain.
    #[doc(hidden)]
    pub unsafe fn finish_in_place(&mut self) -> Result<()> {
        if !self.membership.held_here() {
            return Err(Error::InvalidArgument(
                "this producer was opened by another process (inherited across fork): only \
                 that process can finish its stream; open a producer of your own"
                    .into(),
            ));
        }
        if self.mem.truncated() {
            return Err(crate::consumer::deleted(&self.mem));
        }
        if self.mem.moved_to() != 0 && !self.mem.deleted() {
            // The stream ends where its consumers are, or will be: in the new segment.
            self.move_on()?;
        }
        self.leave();
        crate::segment::finish_stream(&self.mem);
        if let Some(p) = &mut self.pollable {
            // Readable for good: nothing more will be sent through it.
            p.signal();
        }
        Ok(())
    }

    /// Publishes what is staged, aborts a leaked claim and gives up the entry, once.
    fn leave(&mut self) {
        if std::mem::replace(&mut self.left, true) {
            return;
        }
        self.abort_leaked();
        self.batching = false;
        self.publish();
        // Counted out while the entry is still ours.
        if let Some(p) = &mut self.pollable {
            p.disarm();
        }
        self.membership.leave(&self.mem);
    }

    /// The largest frame this channel carries.
    pub fn max_frame_size(&self) -> usize {
        self.mem.geometry().max_frame_size as usize
    }

    /// The largest message [`send`](Producer::send) takes: longer than
    /// [`max_frame_size`](Producer::max_frame_size) if the channel was created with a larger
    /// `max_message_size` (claims stay limited to a frame).
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

    /// The index of this producer in the channel's producer table.
    pub fn index(&self) -> u32 {
        self.membership.index()
    }

    /// The ring's `try_claim`. A resize is noticed before it (SPSC, broadcast: a look at the
    /// `moved` word) or by it (MPMC: the claim's own look, `mpmc::ProducerCore::try_claim`,
    /// which hands the position on), and the claim is made in the new segment
    /// (`claim_moved`).
    #[inline(always)]
    fn try_claim_token(&mut self, len: usize) -> Result<Token> {
        self.try_claim_at::<true>(len)
    }

    /// `try_claim_token`; without `NOTICE`, in the segment the producer is in, resized or not
    /// (after a move: a frame there is taken before its consumers follow, see `move_on`).
    #[inline(always)]
    fn try_claim_at<const NOTICE: bool>(&mut self, len: usize) -> Result<Token> {
        let r = match &mut self.ring {
            Ring::Spsc(core) if !NOTICE || self.mem.moved_to() == 0 => {
                core.try_claim(&self.mem, len).map(Token::Spsc)
            }
            Ring::Mpmc(core) => {
                if let Some(pos) = self.mpmc_claimed.take() {
                    leaked(core, &self.mem, pos, self.light);
                }
                core.try_claim(&self.mem, len, 1).and_then(|c| {
                    let pos = c.position(0);
                    match mpmc::payload(&self.mem, pos, len) {
                        Ok(payload) => {
                            self.mpmc_claimed = Some(pos);
                            Ok(Token::Mpmc { pos, payload })
                        }
                        Err(e) => {
                            leaked(core, &self.mem, pos, self.light);
                            Err(e)
                        }
                    }
                })
            }
            Ring::Broadcast(core) if !NOTICE || self.mem.moved_to() == 0 => core
                .try_claim(&self.mem, len)
                .map(|(pos, payload)| Token::Broadcast { pos, payload }),
            _ => return self.claim_moved(len),
        };
        match r {
            // As in `try_send_at`.
            Err(Error::WouldBlock(_)) if NOTICE && self.mem.moved_to() != 0 => {
                self.claim_moved(len)
            }
            r => r.map_err(|e| self.full(e)),
        }
    }

    /// `try_claim_token` in a segment a resize replaced: moves, then claims there (once: a
    /// producer that could not move, a forked child's, claims where it is).
    #[cold]
    #[inline(never)]
    fn claim_moved(&mut self, len: usize) -> Result<Token> {
        self.move_on()?;
        self.try_claim_at::<false>(len)
    }

    /// `try_send_inner` in a segment a resize replaced: moves, then sends there (once, as
    /// `claim_moved`).
    #[cold]
    #[inline(never)]
    fn send_moved(&mut self, frame: &[u8]) -> Result<()> {
        self.move_on()?;
        self.try_send_at::<false>(frame)
    }

    /// The channel was resized (`Memory::moved_to`): moves this producer to the segment that
    /// replaced its own, before its next frame. Everything it sent is published in the old
    /// segment first; then it leaves its entry there, which tells the consumers, once they
    /// have taken what is left, to follow (`segment::followable`). A frame is never split
    /// between the two, nor a message. Fails with what the coordinator answered (the producer
    /// stays where it is, and the next send tries again).
    #[cold]
    #[inline(never)]
    fn move_on(&mut self) -> Result<()> {
        if !self.membership.held_here() {
            // The entries are the parent's, which moves them; a child cannot follow for it.
            return Err(Error::InvalidArgument(
                "this producer was opened by another process (inherited across fork), and its \
                 channel was resized: only that process can move it; open a producer of your own"
                    .into(),
            ));
        }
        if self.left {
            return Ok(());
        }
        if self.mem.deleted() {
            // Both generations were deleted: nothing to move to.
            return Err(crate::consumer::deleted(&self.mem));
        }
        let Some((mem, membership)) = self.membership.follow(&self.mem)? else {
            return Ok(()); // not replaced after all (the word was damage, now cleared)
        };
        let ring = match self.ring {
            Ring::Spsc(_) => spsc::ProducerCore::attach(&mem).map(Ring::Spsc),
            Ring::Broadcast(_) => broadcast::ProducerCore::attach(&mem).map(Ring::Broadcast),
            Ring::Mpmc(_) => Ok(Ring::Mpmc(
                mpmc::ProducerCore::new(membership.index())
                    .with_incarnation(membership.incarnation()),
            )),
        };
        let ring = membership.settle_in(&mem, ring, self.pollable.as_deref_mut())?;
        // What is staged becomes visible where it was written, before the entry is let go
        // (whose Release makes it visible to a consumer that sees the entry free); a leaked
        // MPMC claim is handed on.
        self.abort_leaked();
        self.pool_wait = None;
        self.publish();
        let old_mem = std::mem::replace(&mut self.mem, mem);
        let old = std::mem::replace(&mut self.membership, membership);
        self.ring = ring;
        old.leave(&old_mem);
        // Consumers asleep on the old segment look again: they can follow now.
        wait::wake_consumers(&old_mem);
        // The counters continue in the new entry.
        self.dirty = true;
        Ok(())
    }

    /// A full ring of a deleted channel is `Closed`: nobody will make room. Whatever failed,
    /// it was not the search for chunks of the pool (`try_alloc` sets that after): a wait
    /// watches the ring again.
    #[cold]
    fn full(&mut self, e: Error) -> Error {
        self.pool_wait = None;
        if matches!(e, Error::WouldBlock(_)) && self.mem.deleted() {
            crate::consumer::deleted(&self.mem)
        } else {
            e
        }
    }

    /// The result of a non-waiting call: with a pollable descriptor, `WouldBlock` arms it and
    /// `Closed` leaves it readable (see `full_pollable`). Blocking calls do not arm it: they
    /// wait by their strategy, and a descriptor counted as a waiter there would cost the
    /// consumers a system call per release while frames flow.
    #[inline(always)]
    fn polled<T>(&mut self, r: Result<T>) -> Result<T> {
        match r {
            Err(e) if self.pollable.is_some() => Err(self.full_pollable(e)),
            r => r,
        }
    }

    /// A non-waiting call of a handle with a pollable descriptor failed: `WouldBlock` publishes what is staged
    /// (the consumers cannot make room for frames they cannot see) and arms the descriptor;
    /// `Closed` leaves it readable.
    #[cold]
    fn full_pollable(&mut self, e: Error) -> Error {
        let Some(mut p) = self.pollable.take() else {
            return e;
        };
        let e = match e {
            Error::WouldBlock(what) => {
                self.publish();
                match p.arm(|| self.watch().ready()) {
                    Ok(true) => match self.check_ring() {
                        Ok(()) => Error::WouldBlock(what),
                        Err(damage) => damage,
                    },
                    Ok(false) => Error::WouldBlock(what),
                    Err(failed) => failed,
                }
            }
            Error::Closed(why) => {
                p.ended();
                Error::Closed(why)
            }
            other => other,
        };
        self.pollable = Some(p);
        e
    }

    /// Aborts the position of an MPMC claim that was leaked (`mem::forget`); see [`leaked`].
    fn abort_leaked(&mut self) {
        if let (Some(pos), Ring::Mpmc(core)) = (self.mpmc_claimed.take(), &mut self.ring) {
            leaked(core, &self.mem, pos, self.light);
        }
    }

    #[inline(always)]
    fn commit_token(&mut self, token: Token, len: usize, flags: u8) {
        self.mpmc_claimed = None;
        match (&mut self.ring, token) {
            (Ring::Spsc(core), Token::Spsc(c)) => {
                core.commit(&self.mem, c, len, flags, !self.batching)
            }
            (Ring::Mpmc(core), Token::Mpmc { pos, .. }) => core.commit(&self.mem, pos, len, flags),
            (Ring::Broadcast(core), Token::Broadcast { pos, .. }) => {
                core.commit(&self.mem, pos, len, flags)
            }
            _ => unreachable!("a token always comes from this producer's ring"),
        }
        // Wrapping: as in `try_send_inner`.
        self.frames = self.frames.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(len as u64);
        self.dirty = true;
        if !self.batching {
            // Already visible: SPSC's `commit` published the record (with any padding staged
            // before it), MPMC's at once.
            self.announce();
        }
    }

    fn abort_token(&mut self, token: Token) {
        self.mpmc_claimed = None;
        if let (Ring::Mpmc(core), Token::Mpmc { pos, .. }) = (&mut self.ring, token) {
            // The position is taken for good: hand it on as a skip.
            core.abort(&self.mem, pos);
            self.dirty = true;
        }
        // SPSC: nothing was written for the record; any padding before it stays staged.
        // Broadcast: the slot stays marked as being written (empty to subscribers) and is
        // claimed again by the next send.
        if !self.batching {
            self.publish();
        }
    }

    /// Makes staged frames visible and wakes a sleeping consumer.
    #[inline]
    fn publish(&mut self) {
        if let Ring::Spsc(core) = &mut self.ring {
            self.dirty |= core.publish(&self.mem);
        }
        self.announce();
    }

    /// After frames became visible: publishes the counters and wakes a sleeping consumer.
    #[inline]
    fn announce(&mut self) {
        if std::mem::take(&mut self.dirty) {
            let me = self.membership.participant(&self.mem);
            // Relaxed: statistics, read without synchronisation.
            me.frames.store(self.frames, crate::sync::Ordering::Relaxed);
            me.bytes.store(self.bytes, crate::sync::Ordering::Relaxed);
            wait::notify(self.mem.producer_line(), self.light);
            if let Some(p) = &mut self.pollable {
                p.disarm();
            }
        }
    }

    /// Retries `op` while it returns `WouldBlock`. Between attempts it waits by the handle's
    /// strategy, watching one shared word ([`Watch`]) rather than retrying the whole operation,
    /// so that a spinning wait notices the other side within a pause and a load.
    ///
    /// A blocking call waits by its strategy, not through the pollable descriptor: one that was
    /// armed is counted out first and armed again if the call ends with the ring still full
    /// (`TimedOut`), as a non-waiting call would (see the consumer's `wait_and_retry`).
    #[inline(never)]
    fn wait_and_retry<T>(
        &mut self,
        timeout: Option<Duration>,
        op: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<T> {
        if let Some(p) = &mut self.pollable {
            p.disarm();
        }
        let r = self.wait_and_retry_inner(timeout, op);
        if self.pollable.is_some() {
            return match r {
                Err(Error::TimedOut(t)) => match self.full_pollable(Error::WouldBlock("full")) {
                    Error::WouldBlock(_) => Err(Error::TimedOut(t)),
                    other => Err(other),
                },
                Err(e @ Error::Closed(_)) => Err(self.full_pollable(e)),
                r => r,
            };
        }
        r
    }

    fn wait_and_retry_inner<T>(
        &mut self,
        timeout: Option<Duration>,
        mut op: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<T> {
        // Staged frames must be visible before we wait, or the consumer cannot free space.
        self.publish();
        let mut waiter = Waiter::new(
            self.wait,
            timeout,
            (self.membership.role(), self.membership.index()),
        );
        if self.streaming {
            waiter.ignore_moves();
        }
        let mut at = Arc::as_ptr(&self.mem);
        loop {
            let woke = {
                let watch = self.watch();
                waiter.wait_until(&self.mem, Line::Consumer, || watch.ready())?
            };
            let r = op(self);
            if Arc::as_ptr(&self.mem) != at {
                // Moved to a resized channel's new segment (`move_on`).
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
    /// producer's retry reloads and checks the head, which is all it depends on.
    #[cold]
    fn check_ring(&self) -> Result<()> {
        match &self.ring {
            // The broadcast retry scans the subscribers again, which is all it depends on.
            Ring::Spsc(_) | Ring::Broadcast(_) => Ok(()),
            Ring::Mpmc(_) => mpmc::check_cursors(&self.mem).map(drop),
        }
    }

    /// What to spin on while the ring is full.
    #[inline(always)]
    fn watch(&self) -> Watch<'_> {
        match &self.ring {
            Ring::Spsc(core) => core.watch(&self.mem),
            Ring::Mpmc(core) => match self.pool_wait {
                Some(seen) => core.watch_pool(&self.mem, seen),
                None => core.watch(&self.mem),
            },
            Ring::Broadcast(core) => core.watch(&self.mem),
        }
    }

    /// The ring's `try_send`; a resize is noticed as in `try_claim_token`.
    #[inline(always)]
    fn try_send_inner(&mut self, frame: &[u8]) -> Result<()> {
        self.try_send_at::<true>(frame)
    }

    /// `try_send_inner`; without `NOTICE`, as `try_claim_at`.
    #[inline(always)]
    fn try_send_at<const NOTICE: bool>(&mut self, frame: &[u8]) -> Result<()> {
        let r = match &mut self.ring {
            Ring::Spsc(core) if !NOTICE || self.mem.moved_to() == 0 => {
                core.try_send(&self.mem, frame, !self.batching)
            }
            Ring::Mpmc(core) => {
                if let Some(pos) = self.mpmc_claimed.take() {
                    leaked(core, &self.mem, pos, self.light);
                }
                let r = core.try_send(&self.mem, frame);
                if matches!(r, Err(Error::Corrupted(_))) {
                    // The position taken may have been handed on as a skip (`try_send`).
                    wait::notify(self.mem.producer_line(), self.light);
                }
                r
            }
            Ring::Broadcast(core) if !NOTICE || self.mem.moved_to() == 0 => {
                core.try_send(&self.mem, frame)
            }
            _ => return self.send_moved(frame),
        };
        if let Err(e) = r {
            // A full ring, or a claim handed on, in a segment a resize replaced: the send goes
            // to the new one (nothing was taken here).
            if NOTICE && matches!(e, Error::WouldBlock(_)) && self.mem.moved_to() != 0 {
                return self.send_moved(frame);
            }
            return Err(self.full(e));
        }
        // Wrapping: the counters continue a predecessor's, read from shared memory.
        self.frames = self.frames.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(frame.len() as u64);
        self.dirty = true;
        if !self.batching {
            self.announce();
        }
        Ok(())
    }

    /// Sends a copy of `frame` if the ring has room, without waiting.
    ///
    /// A message longer than [`max_frame_size`](Producer::max_frame_size) (up to
    /// [`max_message_size`](Producer::max_message_size)) is sent whole if the ring has room
    /// for all of it now; one too long for the ring to hold at once can only stream through
    /// it, which takes waiting: `InvalidArgument` (use [`send`](Producer::send) or
    /// [`send_timeout`](Producer::send_timeout)).
    #[inline]
    pub fn try_send(&mut self, frame: &[u8]) -> Result<()> {
        let r = self.try_send_any(frame);
        self.polled(r)
    }

    /// `try_send` of a frame or a message.
    #[inline(always)]
    fn try_send_any(&mut self, frame: &[u8]) -> Result<()> {
        match self.try_send_inner(frame) {
            Err(Error::FrameTooLarge { .. }) if self.splits() => {
                self.send_message(frame, Some(Duration::ZERO))
            }
            r => r,
        }
    }

    /// Sends a copy of `frame`, waiting as long as the ring is full.
    ///
    /// A message longer than [`max_frame_size`](Producer::max_frame_size) (up to
    /// [`max_message_size`](Producer::max_message_size)) is split into records and arrives
    /// whole. One that the ring can hold at once is written when it all fits and published at
    /// once; a longer one streams through the ring, the consumer taking its first records while
    /// this call writes the last.
    pub fn send(&mut self, frame: &[u8]) -> Result<()> {
        match blocking!(self, None, |p| p.try_send_inner(frame)) {
            Err(Error::FrameTooLarge { .. }) if self.splits() => self.send_message(frame, None),
            r => r,
        }
    }

    /// Sends a copy of `frame`, waiting at most `timeout` for room (in all: a message that
    /// streams through the ring must be sent whole within it; with a zero timeout it is
    /// refused, as [`try_send`](Producer::try_send) refuses it).
    ///
    /// A message that times out midway is not delivered: the consumer drops the part it
    /// received when the next message begins (and counts it in
    /// [`Consumer::missed`](crate::Consumer::missed)).
    pub fn send_timeout(&mut self, frame: &[u8], timeout: Duration) -> Result<()> {
        match blocking!(self, Some(timeout), |p| p.try_send_inner(frame)) {
            Err(Error::FrameTooLarge { .. }) if self.splits() => {
                self.send_message(frame, Some(timeout))
            }
            r => r,
        }
    }

    /// Whether the channel carries messages longer than a frame.
    #[inline]
    fn splits(&self) -> bool {
        let geo = self.mem.geometry();
        geo.max_message_size > u64::from(geo.max_frame_size)
    }

    /// Sends `msg`, longer than a frame, split into records (see `message`). `timeout`: `None`
    /// waits as long as it takes, zero does not wait.
    #[cold]
    #[inline(never)]
    fn send_message(&mut self, msg: &[u8], timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        // A message is written whole into one segment: a resize noticed before any of it was
        // written moves the producer, and the message goes to the new segment (a few times
        // at most: resizes are one at a time, and a `moved` word that keeps coming back is
        // damage).
        for _ in 0..MAX_MOVES {
            if self.mem.moved_to() != 0 {
                self.move_on()?;
            }
            let left = match (timeout, deadline) {
                (Some(Duration::ZERO), _) => Some(Duration::ZERO),
                (_, Some(d)) => Some(d.saturating_duration_since(Instant::now())),
                (t, None) => t,
            };
            if self.send_message_here(msg, left)? {
                return Ok(());
            }
        }
        Err(moved_for_good())
    }

    /// One try of `send_message` in the producer's segment: `Ok(false)` if the segment was
    /// found replaced before any of the message was written (the caller moves and tries again).
    fn send_message_here(&mut self, msg: &[u8], timeout: Option<Duration>) -> Result<bool> {
        let geo = *self.mem.geometry();
        if msg.len() as u64 > geo.max_message_size {
            return Err(Error::FrameTooLarge {
                len: msg.len(),
                // No truncation: `Geometry` keeps it within the address space.
                max: geo.max_message_size as usize,
            });
        }
        // `need`: the room the message takes (SPSC: bytes; broadcast: slots). `staged`: whether
        // it is written only once all of it fits, then published at once (SPSC, a message
        // the ring can hold at once: the consumer then never waits for its next record and
        // holds them all unreleased until it has the message, `spsc::ConsumerCore::assemble`).
        // Otherwise each record is published as it is written and the message streams through
        // the ring; a call that does not wait sends it only if all of its room is free now.
        if let Ring::Mpmc(_) = self.ring {
            return self.send_pooled(msg, timeout).map(|()| true);
        }
        let (start, need, fits) = match &self.ring {
            Ring::Spsc(core) => {
                let need = message::spsc_need(&geo, msg.len());
                (core.tail(), need, need <= geo.capacity)
            }
            Ring::Broadcast(_) => {
                let (_, parts, last) = message::split(&geo, msg.len());
                let slots = 1 + parts + u64::from(last > 0);
                let never_full = geo.overflow == crate::Overflow::DropOldest;
                (0, slots, never_full || slots <= geo.capacity)
            }
            Ring::Mpmc(_) => unreachable!("sent through the pool above"),
        };
        let staged = fits && matches!(self.ring, Ring::Spsc(_));
        match timeout {
            Some(Duration::ZERO) if !fits => {
                return Err(Error::InvalidArgument(format!(
                    "a message of {} bytes needs more of the ring than it holds at once: it \
                     streams through the ring as consumers take it, which a call that does not \
                     wait cannot do (send it with send or send_timeout, shmring_send with a \
                     timeout)",
                    msg.len(),
                )));
            }
            Some(Duration::ZERO) => self.try_room(need)?,
            t if staged => {
                let roomy = blocking!(self, t, |p| p.try_room_here(need))?;
                if !roomy {
                    return Ok(false);
                }
            }
            _ => {}
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut total = Some(msg.len() as u64);
        let mut off = 0;
        // A message that streams is finished where it was begun, resize or not: its waits for
        // room look past the `moved` word (`Waiter::ignore_moves`).
        self.streaming = !staged;
        while off < msg.len() {
            let room = geo.max_fragment as usize - if total.is_some() { MESSAGE_PREFIX } else { 0 };
            let piece = &msg[off..msg.len().min(off + room)];
            let r = if staged {
                self.try_fragment(total, piece)
            } else {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                blocking!(self, left, |p| p.try_fragment(total, piece))
            };
            if let Err(e) = r {
                self.streaming = false;
                if let (true, Ring::Spsc(core)) = (staged, &mut self.ring) {
                    core.unstage(&self.mem, start);
                }
                // Records published already stay in the ring: consumers drop the unfinished
                // message when the next one begins (`message::Assembly`).
                return Err(e);
            }
            off += piece.len();
            total = None;
            if !staged {
                // Each record is visible now (SPSC: published; broadcast: committed), and a
                // consumer waiting for it is woken: the message streams.
                self.dirty = true;
                self.publish();
            }
        }
        self.streaming = false;
        // Wrapping: as in `try_send_inner`.
        self.frames = self.frames.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(msg.len() as u64);
        self.dirty = true;
        if !self.batching {
            self.publish();
        }
        Ok(true)
    }

    /// `try_room`, or `Ok(false)` once the segment was found replaced (nothing of the message
    /// is written yet: it goes to the new segment).
    fn try_room_here(&mut self, need: u64) -> Result<bool> {
        if self.mem.moved_to() != 0 {
            return Ok(false);
        }
        self.try_room(need).map(|()| true)
    }

    /// Sends `msg`, longer than a frame, through an MPMC channel's message pool: takes
    /// consecutive free chunks, copies the message there, then enqueues a reference to it in
    /// one slot (`mpmc.rs`, "Messages in the pool"). The message goes whole to whichever
    /// consumer takes the slot. `timeout` covers both waits (for chunks, then for a slot); a
    /// send that fails after taking chunks frees them.
    fn send_pooled(&mut self, msg: &[u8], timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        for _ in 0..MAX_MOVES {
            let tag = match &mut self.ring {
                Ring::Mpmc(core) => core.begin_pooled(&self.mem),
                _ => unreachable!("only MPMC channels have a pool"),
            };
            let left = match (timeout, deadline) {
                (Some(Duration::ZERO), _) => Some(Duration::ZERO),
                (_, Some(d)) => Some(d.saturating_duration_since(Instant::now())),
                (t, None) => t,
            };
            let r = self.send_tagged(msg, left, tag);
            if matches!(r, Ok(true)) {
                self.pool_wait = None;
            }
            // (A `WouldBlock` leaves `pool_wait` as the failed step set it: a pollable
            // descriptor armed now watches what the send waits for.)
            if let Ring::Mpmc(core) = &mut self.ring {
                core.end_pooled(&self.mem);
            }
            match r {
                Ok(true) => return Ok(()),
                // The channel was resized meanwhile: what this send took of the old segment's
                // pool is freed; the message goes whole into the new one.
                Ok(false) => self.move_on()?,
                Err(e) => return Err(e),
            }
        }
        Err(moved_for_good())
    }

    /// One try of `send_pooled`: `Ok(false)` if the channel was resized before the message was
    /// enqueued (nothing of it is left in the old segment).
    fn send_tagged(&mut self, msg: &[u8], timeout: Option<Duration>, tag: u64) -> Result<bool> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let chunks = match timeout {
            Some(Duration::ZERO) => self.try_alloc(msg.len(), tag)?,
            t => blocking!(self, t, |p| p.try_alloc(msg.len(), tag))?,
        };
        let Some(chunks) = chunks else {
            return Ok(false);
        };
        self.pool_wait = None;
        let sent = chunks.bytes(&self.mem).and_then(|bytes| {
            self.mem.copy_in(bytes, msg);
            match timeout {
                Some(Duration::ZERO) => self.try_send_ref(&chunks),
                _ => {
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    blocking!(self, left, |p| p.try_send_ref(&chunks))
                }
            }
        });
        if !matches!(sent, Ok(true)) {
            if mpmc::free_pooled(&self.mem, &chunks) > 0 {
                wait::notify(self.mem.consumer_line(), self.light);
            }
            return sent;
        }
        // Wrapping: as in `try_send_inner`.
        self.frames = self.frames.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(msg.len() as u64);
        self.dirty = true;
        if !self.batching {
            self.announce();
        }
        Ok(true)
    }

    /// Takes chunks of the pool for a message of `len` bytes under `tag`; on `WouldBlock`,
    /// what to wait for is the next free of chunks (`watch`). `Ok(None)` if the channel was
    /// resized: the message goes to the new segment's pool.
    fn try_alloc(&mut self, len: usize, tag: u64) -> Result<Option<mpmc::PoolRef>> {
        if self.mem.moved_to() != 0 {
            return Ok(None);
        }
        let Ring::Mpmc(core) = &mut self.ring else {
            unreachable!("only MPMC channels have a pool")
        };
        // Acquire: pairs with the Release increment in `mpmc::free_pooled`; loaded before the
        // search, so that a free that the search missed changes it.
        let seen = self
            .mem
            .consumer_line()
            .frees
            .load(crate::sync::Ordering::Acquire);
        match core.try_alloc(&self.mem, len, tag) {
            Err(e @ Error::WouldBlock(_)) => {
                let e = self.full(e);
                self.pool_wait = Some(seen);
                Err(e)
            }
            r => {
                self.pool_wait = None;
                r.map(Some)
            }
        }
    }

    /// Enqueues the reference to a message in the pool (one slot). `Ok(false)` if the channel
    /// was resized (nothing was enqueued).
    fn try_send_ref(&mut self, r: &mpmc::PoolRef) -> Result<bool> {
        if self.mem.moved_to() != 0 {
            return Ok(false);
        }
        let Ring::Mpmc(core) = &mut self.ring else {
            unreachable!("only MPMC channels have a pool")
        };
        match core.try_send_ref(&self.mem, r) {
            Ok(()) => Ok(true),
            Err(Error::WouldBlock(mpmc::MOVED)) => Ok(false),
            Err(e) => Err(self.full(e)),
        }
    }

    /// Whether the ring has room now for `need` (SPSC: bytes; broadcast: slots):
    /// `WouldBlock` if not.
    fn try_room(&mut self, need: u64) -> Result<()> {
        let r = match &mut self.ring {
            Ring::Spsc(core) => core.try_room(&self.mem, need),
            Ring::Broadcast(core) => core.try_room(&self.mem, need),
            Ring::Mpmc(_) => Ok(()),
        };
        r.map_err(|e| self.full(e))
    }

    /// Writes one record of a split message (`try_put_fragment` of the ring): staged (SPSC)
    /// or committed (broadcast).
    fn try_fragment(&mut self, total: Option<u64>, piece: &[u8]) -> Result<()> {
        let r = match &mut self.ring {
            Ring::Spsc(core) => core.try_put_fragment(&self.mem, total, piece),
            Ring::Broadcast(core) => core.try_put_fragment(&self.mem, total, piece),
            Ring::Mpmc(_) => unreachable!("see send_message"),
        };
        r.map_err(|e| self.full(e))
    }

    /// Reserves `len` bytes in the ring without waiting; write the frame into the returned
    /// [`Claim`] and commit it. Nothing is visible to consumers before the commit.
    #[inline(always)]
    pub fn try_claim(&mut self, len: usize) -> Result<Claim<'_>> {
        let r = self.try_claim_token(len);
        let token = self.polled(r)?;
        Ok(Claim::new(self, token))
    }

    /// [`try_claim`](Producer::try_claim) in two steps, for a caller that retries in a loop and
    /// cannot hold the claim's borrow across iterations (the `tokio` module): the space
    /// reserved, ...
    #[cfg(feature = "tokio")]
    pub(crate) fn try_reserve(&mut self, len: usize) -> Result<Token> {
        let r = self.try_claim_token(len);
        self.polled(r)
    }

    /// ... and the claim made of it.
    #[cfg(feature = "tokio")]
    pub(crate) fn claim_of(&mut self, token: Token) -> Claim<'_> {
        Claim::new(self, token)
    }

    /// Reserves `len` bytes, waiting as long as the ring is full.
    #[inline(always)]
    pub fn claim(&mut self, len: usize) -> Result<Claim<'_>> {
        let token = blocking!(self, None, |p| p.try_claim_token(len))?;
        Ok(Claim::new(self, token))
    }

    /// Reserves `len` bytes, waiting at most `timeout`.
    #[inline(always)]
    pub fn claim_timeout(&mut self, len: usize, timeout: Duration) -> Result<Claim<'_>> {
        let token = blocking!(self, Some(timeout), |p| p.try_claim_token(len))?;
        Ok(Claim::new(self, token))
    }

    /// Reserves `len` bytes like [`Producer::claim_timeout`], as a [`DetachedClaim`] that does
    /// not borrow the producer: for callers that cannot hold a borrow across calls, such as the
    /// C ABI. `timeout`: `None` waits as long as it takes, zero does not wait.
    ///
    /// # Safety
    /// Until the claim is passed to [`commit_detached`](Producer::commit_detached) or
    /// [`abort_detached`](Producer::abort_detached), this producer must not send, claim or
    /// publish anything else (the same space would be handed out twice), and the claim must be
    /// given back to this producer, exactly once.
    pub unsafe fn claim_detached(
        &mut self,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<DetachedClaim> {
        let token = match timeout {
            Some(Duration::ZERO) => {
                let r = self.try_claim_token(len);
                self.polled(r)?
            }
            t => blocking!(self, t, |p| p.try_claim_token(len))?,
        };
        let bytes = token.payload();
        // SAFETY: the claimed range is this producer's alone until committed or aborted; the
        // pointer is handed out raw, so no Rust reference into it exists.
        let ptr = unsafe { self.mem.slice_mut(bytes) }.as_mut_ptr();
        Ok(DetachedClaim {
            token,
            ptr,
            len: bytes.len(),
        })
    }

    /// Publishes the first `len` bytes of a detached claim as one frame.
    ///
    /// # Safety
    /// `claim` must come from this producer's [`claim_detached`](Producer::claim_detached),
    /// with nothing sent or claimed since.
    pub unsafe fn commit_detached(&mut self, claim: DetachedClaim, len: usize) -> Result<()> {
        if len > claim.len {
            self.abort_token(claim.token);
            return Err(Error::InvalidArgument(format!(
                "cannot commit {len} bytes of a {}-byte claim (the claim was aborted)",
                claim.len
            )));
        }
        self.commit_token(claim.token, len, 0);
        Ok(())
    }

    /// Gives a detached claim's space back without sending anything.
    ///
    /// # Safety
    /// As for [`commit_detached`](Producer::commit_detached).
    pub unsafe fn abort_detached(&mut self, claim: DetachedClaim) {
        self.abort_token(claim.token);
    }

    /// Starts a batch: frames sent or committed through the returned guard become visible
    /// together, with one publish, when it is dropped or [`Batch::publish`]ed. A blocking call
    /// inside the batch publishes what is staged before it waits.
    ///
    /// ```
    /// # use shmring::{ChannelConfig, Segment};
    /// # let seg = Segment::anonymous(&ChannelConfig::spsc())?;
    /// # let (mut tx, mut rx) = (seg.producer()?, seg.consumer()?);
    /// let mut batch = tx.batch();
    /// batch.try_send(b"one")?;
    /// batch.try_claim(3)?.commit();
    /// assert_eq!(batch.len(), 2);
    /// batch.publish();
    /// assert_eq!(rx.try_drain(10, |_frame, _flags| {})?, 2);
    /// # Ok::<(), shmring::Error>(())
    /// ```
    pub fn batch(&mut self) -> Batch<'_> {
        self.batching = true;
        let start = self.frames;
        Batch {
            producer: self,
            start,
        }
    }

    /// Sends as many leading frames of `frames` as fit now, with one publish, and returns how
    /// many were sent. Fails only if the first frame cannot be sent (`WouldBlock` when full);
    /// an error on a later frame ends the batch early, and the next call meets it again.
    pub fn try_send_batch<'f, I>(&mut self, frames: I) -> Result<usize>
    where
        I: IntoIterator<Item = &'f [u8]>,
    {
        let r = {
            let mut batch = self.batch();
            let mut sent = 0;
            let mut failed = None;
            for frame in frames {
                match batch.try_send_any(frame) {
                    Ok(()) => sent += 1,
                    Err(e) if sent == 0 => {
                        failed = Some(e);
                        break;
                    }
                    Err(_) => break,
                }
            }
            failed.map_or(Ok(sent), Err)
        };
        self.polled(r)
    }

    /// Sends every frame of `frames`, publishing once at the end (and before each wait for
    /// room). On an error, the frames before the failing one have been sent.
    pub fn send_batch<'f, I>(&mut self, frames: I) -> Result<()>
    where
        I: IntoIterator<Item = &'f [u8]>,
    {
        let mut batch = self.batch();
        for frame in frames {
            batch.send(frame)?;
        }
        Ok(())
    }
}

/// Hands on an MPMC position taken for a claim that will never be committed (the claim was
/// leaked with `mem::forget`, or the ring turned out damaged) as a skip, and wakes the
/// consumers: one asleep at that position must step over it, or it and a producer waiting for
/// the room that frees could sleep on each other for good.
#[cold]
#[inline(never)]
fn leaked(core: &mut mpmc::ProducerCore, mem: &Memory, pos: u64, light: bool) {
    core.abort(mem, pos);
    wait::notify(mem.producer_line(), light);
}

impl Drop for Producer {
    fn drop(&mut self) {
        if !self.membership.held_here() {
            // Inherited by a forked child: the ring, the cursors, the entry and the coordinator's
            // books are the parent's (defect 18). Only the memory is freed.
            return;
        }
        self.leave();
    }
}

/// Space reserved in the ring by [`Producer::try_claim`] and friends: dereferences to the
/// `len` bytes to write. [`Claim::commit`] publishes them as one frame; dropping the claim (or
/// [`Claim::abort`]) gives the space back without sending anything.
#[derive(Debug)]
pub struct Claim<'a> {
    producer: &'a mut Producer,
    token: Token,
    done: bool,
}

impl<'a> Claim<'a> {
    #[inline(always)]
    fn new(producer: &'a mut Producer, token: Token) -> Claim<'a> {
        Claim {
            producer,
            token,
            done: false,
        }
    }

    /// Publishes the whole claimed space as one frame (staged until the batch ends, in a
    /// batch).
    #[inline(always)]
    pub fn commit(mut self) {
        self.done = true;
        let len = self.token.payload().len();
        self.producer.commit_token(self.token, len, 0);
    }

    /// Publishes the first `len` bytes as one frame carrying `flags`: a frame committed with
    /// [`FrameFlags::REDELIVERED`] is received flagged redelivered, as one a dead consumer had
    /// been handed (a bridge's importer uses it to carry the flag from another host). A larger
    /// `len` than the claim is an `InvalidArgument` error and the claim is aborted.
    #[inline]
    pub fn commit_flagged(mut self, len: usize, flags: FrameFlags) -> Result<()> {
        let claimed = self.token.payload().len();
        if len > claimed {
            return Err(Error::InvalidArgument(format!(
                "cannot commit {len} bytes of a {claimed}-byte claim"
            )));
        }
        self.done = true;
        // Only the bits a frame carries (`FrameFlags::from_bits` masks them on receipt too).
        self.producer.commit_token(
            self.token,
            len,
            (flags.bits() & u32::from(FLAG_REDELIVERED)) as u8,
        );
        Ok(())
    }

    /// Publishes the first `len` bytes as one frame. `len` may be smaller than the claim (a
    /// claim for the largest frame, trimmed to what was written); a larger `len` is an
    /// `InvalidArgument` error and the claim is aborted.
    #[inline]
    pub fn commit_len(mut self, len: usize) -> Result<()> {
        let claimed = self.token.payload().len();
        if len > claimed {
            return Err(Error::InvalidArgument(format!(
                "cannot commit {len} bytes of a {claimed}-byte claim"
            )));
        }
        self.done = true;
        self.producer.commit_token(self.token, len, 0);
        Ok(())
    }

    /// Gives the space back without sending anything (what dropping the claim does).
    pub fn abort(self) {}
}

impl Deref for Claim<'_> {
    type Target = [u8];

    #[inline(always)]
    fn deref(&self) -> &[u8] {
        // SAFETY: the ring protocol gives the claimed range to this producer alone until it is
        // committed or aborted, and the claim borrows the producer mutably, so no other claim
        // or frame of this process overlaps it.
        unsafe { self.producer.mem.slice(self.token.payload()) }
    }
}

impl DerefMut for Claim<'_> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for deref; `&mut self` makes this the only reference into the range.
        unsafe { self.producer.mem.slice_mut(self.token.payload()) }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.producer.abort_token(self.token);
        }
    }
}

/// Space reserved by [`Producer::claim_detached`]: `len` writable bytes at `ptr`, until given
/// back to the producer.
#[derive(Debug)]
pub struct DetachedClaim {
    token: Token,
    ptr: *mut u8,
    len: usize,
}

impl DetachedClaim {
    /// The first byte of the claimed space, in shared memory.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Bytes claimed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the claim is zero bytes long.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A batch of frames published together; see [`Producer::batch`]. Dereferences to the
/// [`Producer`], so every send and claim method works inside it.
#[derive(Debug)]
pub struct Batch<'a> {
    producer: &'a mut Producer,
    start: u64,
}

impl Batch<'_> {
    /// Frames committed in this batch so far.
    pub fn len(&self) -> usize {
        self.producer.frames.wrapping_sub(self.start) as usize
    }

    /// Whether nothing was committed in this batch yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publishes the batch (what dropping it does).
    pub fn publish(self) {}
}

impl Deref for Batch<'_> {
    type Target = Producer;

    fn deref(&self) -> &Producer {
        self.producer
    }
}

impl DerefMut for Batch<'_> {
    fn deref_mut(&mut self) -> &mut Producer {
        self.producer
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.producer.batching = false;
        self.producer.publish();
    }
}

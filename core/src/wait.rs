//! Waiting for a ring to become ready, and waking the other side.
//!
//! A blocked call (a consumer on an empty ring, a producer on a full one) waits by the
//! [`WaitStrategy`] of its handle. With [`WaitStrategy::Park`] it finally sleeps in `FUTEX_WAIT`
//! on the `futex` word of the *other* side's cursor line, after counting itself in that line's
//! `waiters`. The side that makes progress checks `waiters` after each publish or release and
//! calls `FUTEX_WAKE` only when it is non-zero, so the data path makes no system call while the
//! other side is awake.
//!
//! # No lost wake-ups, no fence on the data path
//!
//! The waker does `publish; load waiters`, the sleeper `waiters += 1; re-check ring; sleep`. Each
//! side needs its store ordered before its load (the store-buffer litmus test), or both can miss
//! the other and the sleeper sleeps on a ready ring. A SeqCst fence on the waker's side would
//! cost every publish: measured at 7x the cost of an 8-byte frame in a two-process stream (see
//! ARCHITECTURE.md). Instead the fence is made asymmetric, the technique of liburcu and folly's
//! `asymmetricThreadFenceHeavy`: each process registers for `MEMBARRIER_CMD_GLOBAL_EXPEDITED`
//! when it opens a handle; the waker then needs only a compiler barrier between its store and its
//! load, and the sleeper, after announcing itself, issues `membarrier`, which runs a full barrier
//! on every CPU that runs a registered process. Either the barrier lands after the waker's load
//! (so its publish, earlier in program order, is visible to the sleeper's re-check), or before it
//! (so the waker's load sees the announcement). The sleeper reads the futex word before the
//! re-check and sleeps only while it is unchanged, so a wake between re-check and sleep is kept.
//!
//! Fallbacks: a process that cannot register (old kernel, seccomp) fences with SeqCst before its
//! waiter check; a sleeper whose `membarrier` fails sleeps at most [`FALLBACK_SLEEP`] at a time.
//! `SHMRING_MEMBARRIER=0` in the environment forces both fallbacks on a process.
//!
//! # Never trusting the protocol alone
//!
//! The protocol above holds between processes that follow it. The words it uses are in shared
//! memory, which another process may scribble on (a zeroed `waiters` silences every waker), and
//! a waiter watches one word, which a damaged ring may never change. So no wait lasts longer
//! than [`RECHECK_INTERVAL`] without the caller retrying the whole operation and checking the
//! ring for damage ([`Woke::Recheck`]): a sleep is a `FUTEX_WAIT` with that timeout, a spin or
//! yield loop returns after about as long. A blocked call on a damaged ring so ends in
//! `Corrupted` within a recheck, and one whose wake-up was lost is late by at most a recheck.
//! A parked waiter that finds the `waiters` count at zero while it is counted in it (so the
//! word was overwritten) counts itself in again. While frames flow none of this runs: a wait
//! that ends by its watched word never reaches it.

use crate::error::{Error, Result};
use crate::layout::{
    CursorLine, PARKED_NONE, PARKED_ON_CONSUMER, PARKED_ON_PRODUCER, Participant, Role,
};
use crate::region::Memory;
use crate::sync::Ordering::{Acquire, Relaxed, Release, SeqCst};
use crate::sync::{compiler_fence, fence, spin_hint};
use crate::sys;
use crossbeam_utils::Backoff;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How a blocking call waits while the ring is not ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WaitStrategy {
    /// Poll continuously with the CPU's spin hint. Lowest latency; keeps a core busy.
    Spin,
    /// Poll with exponential spinning, then `sched_yield` between polls. Low latency, lets
    /// other threads run, still uses a core.
    Yield,
    /// Spin briefly, then sleep on a futex in the segment until the other side wakes it, or
    /// [`RECHECK_INTERVAL`] passes (then it looks at the ring again). Next to no CPU while idle;
    /// a wake-up costs the other side one `FUTEX_WAKE` and this side the scheduler's wake-up
    /// latency (tens of microseconds).
    #[default]
    Park,
}

/// Rounds of a busy-spin between two looks at the clock (only when there is a deadline).
const SPIN_CHECK_EVERY: u32 = 256;

/// A busy-spin returns [`Woke::Recheck`] after this many rounds of [`SPIN_CHECK_EVERY`] spins
/// (2^16 pause instructions: from a fraction of a millisecond to a few, by the CPU; under
/// [`RECHECK_INTERVAL`]) without reading the clock.
const SPIN_RECHECK_EVERY: u32 = 256;

/// Longest a blocked call waits, parked or not, before it retries its operation and checks the
/// ring for damage, whether or not anything woke it. It bounds the cost of a lost wake-up (a
/// scribbled `waiters` word, say) and makes a blocked call notice a damaged ring. Costs nothing
/// while frames flow, and an idle parked waiter about 50 wake-ups a second.
pub const RECHECK_INTERVAL: Duration = Duration::from_millis(20);

/// What ended a wait (see [`Waiter::wait_until`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Woke {
    /// The watched word says that the ring may be ready, or the channel was deleted (for a
    /// consumer: or its stream finished).
    Ready,
    /// Nothing was seen for a while ([`RECHECK_INTERVAL`]): retry anyway and, if the ring is
    /// still not ready, check it for damage.
    Recheck,
}

/// Longest single sleep of a sleeper whose `membarrier` is unavailable: it cannot be sure of
/// being woken, so it re-checks at least this often.
pub const FALLBACK_SLEEP: Duration = Duration::from_millis(1);

/// How this process makes its side of the wake-up protocol hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Barriers {
    /// Registered for global expedited membarrier: wakers need only a compiler barrier.
    registered: bool,
    /// `membarrier(GLOBAL_EXPEDITED)` works here: sleepers may sleep without a time limit.
    pub(crate) global: bool,
}

pub(crate) fn barriers() -> Barriers {
    static BARRIERS: OnceLock<Barriers> = OnceLock::new();
    *BARRIERS.get_or_init(|| {
        if std::env::var_os("SHMRING_MEMBARRIER").is_some_and(|v| v == "0") {
            return Barriers {
                registered: false,
                global: false,
            };
        }
        let registered = sys::membarrier_register();
        let global = sys::membarrier_global();
        if !registered || !global {
            tracing::warn!(
                registered,
                global,
                "membarrier(GLOBAL_EXPEDITED) is unavailable: wake-up checks will fence and \
                 parked waits will re-check every {FALLBACK_SLEEP:?}"
            );
        }
        Barriers { registered, global }
    })
}

/// Prepares this process for the wake-up protocol (registers for `membarrier` once) and returns
/// whether its wakers may skip the hardware fence. Called when a handle is opened.
pub(crate) fn light_waker() -> bool {
    barriers().registered
}

/// Wakes the sleepers of `line` if there are any. Called by the owner of `line` right after it
/// published (producer line) or released (consumer line). `light` is [`light_waker`]'s answer.
#[inline(always)]
pub(crate) fn notify(line: &CursorLine, light: bool) {
    if light {
        // The hardware half of the store->load barrier is the sleeper's membarrier.
        compiler_fence();
    } else {
        // SeqCst: pairs with the sleeper's SeqCst increment of `waiters` (store-buffer pattern).
        fence(SeqCst);
    }
    // Relaxed: ordered after our publish by the barrier above (see the module docs).
    if line.waiters.load(Relaxed) != 0 {
        wake(line);
    }
}

/// Wakes every sleeper of both lines, whether or not they announced themselves (the channel
/// was deleted: they must look at it again).
pub(crate) fn wake_all(mem: &Memory) {
    fence(SeqCst);
    wake(mem.producer_line());
    wake(mem.consumer_line());
}

/// Wakes every consumer asleep on the producer line, whether or not it announced itself (the
/// stream was finished: they must look at the state word).
pub(crate) fn wake_consumers(mem: &Memory) {
    // SeqCst: orders the caller's state store before the futex increment, as in `wake_all`.
    fence(SeqCst);
    wake(mem.producer_line());
}

#[cold]
#[inline(never)]
fn wake(line: &CursorLine) {
    // Release: a sleeper that Acquire-loads the new value sees our publish.
    line.futex.fetch_add(1, Release);
    sys::futex_wake_all(&line.futex);
}

/// Which cursor line a waiter sleeps on: the line of the side it waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// Consumers wait for data on the producer line.
    Producer,
    /// Producers wait for room on the consumer line.
    Consumer,
}

impl Line {
    /// Whether a waiter on this line must retry for what the state word says: consumers
    /// (waiting on the producer line) for a deleted channel, a finished stream, or a resize
    /// they can follow now (every producer left this segment); producers for a deleted channel
    /// or a resize (a finish does not concern them).
    #[inline(always)]
    pub(crate) fn ending(self, mem: &Memory) -> bool {
        match self {
            Line::Producer => mem.ending() || crate::segment::followable(mem),
            // A producer moves on its next send once the channel was resized.
            Line::Consumer => mem.deleted() || mem.moved_to() != 0,
        }
    }

    #[inline(always)]
    pub(crate) fn of(self, mem: &Memory) -> &CursorLine {
        match self {
            Line::Producer => mem.producer_line(),
            Line::Consumer => mem.consumer_line(),
        }
    }

    /// The `Participant::parked` value of a waiter counted on this line.
    pub(crate) fn parked_code(self) -> u32 {
        match self {
            Line::Producer => PARKED_ON_PRODUCER,
            Line::Consumer => PARKED_ON_CONSUMER,
        }
    }
}

/// A waiter counted in a line's `waiters`; holds the memory so that it can leave even if the
/// blocked call unwinds.
struct Parked {
    mem: Arc<Memory>,
    line: Line,
    seen: u32,
    /// When the caller is next told to retry and check the ring ([`Woke::Recheck`]).
    recheck_at: Instant,
}

impl Parked {
    /// The waiter's own participant entry, where it says on which line it is counted.
    fn entry(&self, who: (Role, u32)) -> Option<&Participant> {
        self.mem.participant(who.0, who.1)
    }
}

/// One blocked call's waiting state. Created after the first attempt found the ring not ready;
/// [`Waiter::wait_until`] runs between attempts. Spinning and yielding touch nothing shared;
/// only parking announces itself (and takes a reference to the memory).
pub(crate) struct Waiter {
    strategy: WaitStrategy,
    /// The waiting handle's participant entry (role, index).
    who: (Role, u32),
    timeout: Option<Duration>,
    /// Taken at the first look at the clock, not when the waiter is made: a wait that ends
    /// within its first spins (a ping-pong's) never reads the clock, which costs a round trip
    /// ~20 ns a side. A timed wait can so last up to one check interval longer than asked.
    deadline: Option<Instant>,
    backoff: Backoff,
    parked: Option<Parked>,
    /// Calls of `wait_until` so far.
    rounds: u32,
    /// [`WaitStrategy::Yield`]: when the next [`Woke::Recheck`] is due (set on the first yield).
    recheck_at: Option<Instant>,
    /// See [`Waiter::ignore_moves`].
    ignore_moves: bool,
}

impl Waiter {
    /// A waiter for the handle holding entry `who`, giving up after `timeout` (`None`: never).
    pub(crate) fn new(strategy: WaitStrategy, timeout: Option<Duration>, who: (Role, u32)) -> Self {
        Waiter {
            strategy,
            who,
            timeout,
            deadline: None,
            backoff: Backoff::new(),
            parked: None,
            rounds: 0,
            recheck_at: None,
            ignore_moves: false,
        }
    }

    /// Waits, by the strategy, until `ready()` (a cheap look at one word of the ring; see
    /// `region::Watch`) says that the side owning `line` may have made progress, or the channel
    /// was deleted or, for a consumer, its stream finished (looked at every
    /// [`SPIN_CHECK_EVERY`] rounds of a spin): [`Woke::Ready`].
    /// Returns [`Woke::Recheck`] when nothing was seen for about [`RECHECK_INTERVAL`]: the
    /// caller retries its operation anyway and checks the ring for damage. `Err(TimedOut)` once
    /// the deadline has passed; a call after the first checks the deadline before anything
    /// else, so that a retry that keeps failing on a ring that looks ready (contention, a
    /// stream of skips) still ends at it.
    ///
    /// The spinning loop holds nothing but the check and the spin hint (the clock is read
    /// every [`SPIN_CHECK_EVERY`] rounds, and only with a deadline): a poll that does more per
    /// round notices the other side later and, for records filling whole cache lines, takes
    /// the line back from a producer still writing it (ARCHITECTURE.md, "Waiting").
    #[inline(always)]
    pub(crate) fn wait_until(
        &mut self,
        mem: &Arc<Memory>,
        line: Line,
        mut ready: impl FnMut() -> bool,
    ) -> Result<Woke> {
        if self.rounds > 0 {
            self.check_deadline()?;
        }
        self.rounds = self.rounds.saturating_add(1);
        match self.strategy {
            WaitStrategy::Spin => {
                for _ in 0..SPIN_RECHECK_EVERY {
                    for _ in 0..SPIN_CHECK_EVERY {
                        if ready() {
                            return Ok(Woke::Ready);
                        }
                        spin_hint();
                    }
                    if self.ending(line, mem) {
                        return Ok(Woke::Ready); // the caller's retry reports it
                    }
                    self.check_deadline()?;
                }
                Ok(Woke::Recheck)
            }
            WaitStrategy::Yield => loop {
                if ready() || self.ending(line, mem) {
                    return Ok(Woke::Ready);
                }
                self.backoff.snooze();
                self.check_deadline()?;
                if self.backoff.is_completed() && self.yield_recheck_due() {
                    return Ok(Woke::Recheck);
                }
            },
            WaitStrategy::Park => loop {
                if ready() || self.ending(line, mem) {
                    return Ok(Woke::Ready);
                }
                if self.backoff.is_completed() {
                    // Announces first (then `ready` is re-checked), sleeps on later rounds.
                    if self.park(mem, line)? {
                        return Ok(Woke::Recheck);
                    }
                } else {
                    self.backoff.snooze();
                    self.check_deadline()?;
                }
            },
        }
    }

    /// [`WaitStrategy::Yield`], between yields: whether a [`Woke::Recheck`] is due.
    #[cold]
    fn yield_recheck_due(&mut self) -> bool {
        let now = Instant::now();
        match self.recheck_at {
            Some(at) if now < at => false,
            Some(_) => {
                self.recheck_at = Some(now + RECHECK_INTERVAL);
                true
            }
            None => {
                self.recheck_at = Some(now + RECHECK_INTERVAL);
                false
            }
        }
    }

    /// The deadline, taken now if this is the first look at the clock.
    fn deadline(&mut self) -> Option<Instant> {
        if self.deadline.is_none()
            && let Some(t) = self.timeout
        {
            self.deadline = Some(Instant::now().checked_add(t).unwrap_or_else(far_future));
        }
        self.deadline
    }

    fn check_deadline(&mut self) -> Result<()> {
        match self.deadline() {
            Some(d) if Instant::now() >= d => {
                Err(Error::TimedOut(self.timeout.unwrap_or_default()))
            }
            _ => Ok(()),
        }
    }

    /// The first call announces the waiter and returns `Ok(false)` (the caller re-checks the
    /// ring before the first sleep); later calls sleep, at most until the deadline or the next
    /// recheck, and return whether a recheck is due.
    #[cold]
    #[inline(never)]
    fn park(&mut self, mem: &Arc<Memory>, line: Line) -> Result<bool> {
        let barriers = barriers();
        if self.parked.is_none() {
            let parked = Parked {
                mem: Arc::clone(mem),
                line,
                seen: 0,
                recheck_at: Instant::now() + RECHECK_INTERVAL,
            };
            // Relaxed: read by a coordinator only after this process died (repair.rs). Set
            // after the increment (in `announce`), cleared before the decrement: a death in
            // between leaves one spurious count, never a missing one.
            let seen = announce(line.of(mem), barriers);
            if let Some(e) = parked.entry(self.who) {
                e.parked.store(line.parked_code(), Relaxed);
            }
            self.parked = Some(Parked { seen, ..parked });
            // The caller re-checks the ring before the first sleep.
            return Ok(false);
        }
        let deadline = self.deadline();
        let parked = self.parked.as_mut().expect("announced above");
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(Error::TimedOut(self.timeout.unwrap_or_default()));
        }
        if now >= parked.recheck_at {
            return Ok(parked.recheck(now, barriers));
        }
        let mut limit = parked.recheck_at - now;
        if let Some(d) = deadline {
            limit = limit.min(d - now);
        }
        if !barriers.global {
            limit = limit.min(FALLBACK_SLEEP);
        }
        let futex = &parked.line.of(&parked.mem).futex;
        sys::futex_wait(futex, parked.seen, Some(limit));
        // Acquire: as in `announce`; read before the caller's next re-check.
        parked.seen = futex.load(Acquire);
        let now = Instant::now();
        Ok(now >= parked.recheck_at && parked.recheck(now, barriers))
    }
}

/// Counts a waiter in `line`'s `waiters` and returns the futex word to sleep on (read after the
/// announcement): the sleeper's half of the protocol in the module docs.
pub(crate) fn announce(l: &CursorLine, barriers: Barriers) -> u32 {
    // Relaxed increment, then a SeqCst fence: the store-buffer pattern with the waker's fence in
    // `notify` (or with its compiler barrier plus our membarrier below).
    l.waiters.fetch_add(1, Relaxed);
    fence(SeqCst);
    // Acquire: pairs with the Release increment in `wake`.
    let seen = l.futex.load(Acquire);
    if barriers.global {
        sys::membarrier_global();
    }
    seen
}

impl Parked {
    /// A recheck is due: schedules the next one, and counts the waiter in again if the line's
    /// `waiters` reads zero although it is counted there (the word was overwritten; wakers
    /// would never wake anyone). Returns true: the caller retries and checks the ring.
    #[cold]
    fn recheck(&mut self, now: Instant, barriers: Barriers) -> bool {
        self.recheck_at = now + RECHECK_INTERVAL;
        let l = self.line.of(&self.mem);
        // Relaxed: a hint, as for wakers; `announce` orders what matters.
        if l.waiters.load(Relaxed) == 0 {
            self.seen = announce(l, barriers);
        }
        true
    }
}

impl Waiter {
    /// The waiting handle moved to the segment that replaced its own in a resize, where it
    /// holds entry `who`: a waiter counted on the old segment leaves its count (the entry
    /// there is given up already, maybe someone else's now: its `parked` is left alone, and
    /// an admission clears it), and the next round announces itself on the new one.
    pub(crate) fn moved(&mut self, who: (Role, u32)) {
        if let Some(p) = self.parked.take() {
            leave(&p.line.of(&p.mem).waiters);
        }
        self.who = who;
        self.backoff = Backoff::new();
    }

    /// This wait does not end for a resize (a producer finishing a message in the segment it
    /// began it in): only for a deleted channel, as before resizes existed.
    pub(crate) fn ignore_moves(&mut self) {
        self.ignore_moves = true;
    }

    /// `line.ending(mem)`, unless this wait ignores resizes.
    #[inline(always)]
    fn ending(&self, line: Line, mem: &Memory) -> bool {
        if self.ignore_moves && line == Line::Consumer {
            return mem.deleted();
        }
        line.ending(mem)
    }

    fn unpark(&mut self) {
        if let Some(p) = self.parked.take() {
            // Relaxed: as in `park`.
            if let Some(e) = p.entry(self.who) {
                e.parked.store(PARKED_NONE, Relaxed);
            }
            leave(&p.line.of(&p.mem).waiters);
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.unpark();
    }
}

/// Takes one waiter out of a `waiters` count, never below zero: the word may have been
/// overwritten (a count wrapped to `u32::MAX` would cost every publish a `FUTEX_WAKE`).
pub(crate) fn leave(waiters: &crate::sync::AtomicU32) {
    // Relaxed: a waker that still sees us costs one spurious FUTEX_WAKE, nothing more.
    let mut cur = waiters.load(Relaxed);
    while cur > 0 {
        match waiters.compare_exchange_weak(cur, cur - 1, Relaxed, Relaxed) {
            Ok(_) => break,
            Err(now) => cur = now,
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

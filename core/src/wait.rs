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

use crate::error::{Error, Result};
use crate::layout::CursorLine;
use crate::sync::Ordering::{Acquire, Relaxed, Release, SeqCst};
use crate::sync::{compiler_fence, fence, spin_hint};
use crate::sys;
use crossbeam_utils::Backoff;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How a blocking call waits while the ring is not ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WaitStrategy {
    /// Poll continuously with the CPU's spin hint. Lowest latency; keeps a core busy.
    Spin,
    /// Poll with exponential spinning, then `sched_yield` between polls. Low latency, lets
    /// other threads run, still uses a core.
    Yield,
    /// Spin briefly, then sleep on a futex in the segment until the other side wakes it. No CPU
    /// while idle; a wake-up costs the other side one `FUTEX_WAKE` and this side the scheduler's
    /// wake-up latency (tens of microseconds).
    #[default]
    Park,
}

/// Longest single sleep of a sleeper whose `membarrier` is unavailable: it cannot be sure of
/// being woken, so it re-checks at least this often.
pub const FALLBACK_SLEEP: Duration = Duration::from_millis(1);

/// How this process makes its side of the wake-up protocol hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Barriers {
    /// Registered for global expedited membarrier: wakers need only a compiler barrier.
    registered: bool,
    /// `membarrier(GLOBAL_EXPEDITED)` works here: sleepers may sleep without a time limit.
    global: bool,
}

fn barriers() -> Barriers {
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

#[cold]
#[inline(never)]
fn wake(line: &CursorLine) {
    // Release: a sleeper that Acquire-loads the new value sees our publish.
    line.futex.fetch_add(1, Release);
    sys::futex_wake_all(&line.futex);
}

/// One blocked call's waiting state. Created after the first attempt found the ring not ready;
/// [`Waiter::wait`] is called between attempts.
pub(crate) struct Waiter<'a> {
    strategy: WaitStrategy,
    line: &'a CursorLine,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    backoff: Backoff,
    spins: u32,
    announced: bool,
    seen: u32,
}

impl<'a> Waiter<'a> {
    /// Waits on `line` (the other side's cursor line) for at most `timeout` (`None`: forever).
    pub(crate) fn new(
        strategy: WaitStrategy,
        line: &'a CursorLine,
        timeout: Option<Duration>,
    ) -> Self {
        Waiter {
            strategy,
            line,
            timeout,
            deadline: timeout.map(|t| Instant::now().checked_add(t).unwrap_or_else(far_future)),
            backoff: Backoff::new(),
            spins: 0,
            announced: false,
            seen: 0,
        }
    }

    /// Waits a little. The caller retries its operation after each call. `Err(TimedOut)` once
    /// the deadline has passed.
    pub(crate) fn wait(&mut self) -> Result<()> {
        match self.strategy {
            WaitStrategy::Spin => {
                spin_hint();
                self.spins = self.spins.wrapping_add(1);
                if self.spins.is_multiple_of(64) {
                    self.check_deadline()?;
                }
                Ok(())
            }
            WaitStrategy::Yield => {
                self.backoff.snooze();
                self.check_deadline()
            }
            WaitStrategy::Park => {
                if !self.backoff.is_completed() {
                    self.backoff.snooze();
                    return self.check_deadline();
                }
                self.park()
            }
        }
    }

    fn check_deadline(&self) -> Result<()> {
        match self.deadline {
            Some(d) if Instant::now() >= d => {
                Err(Error::TimedOut(self.timeout.unwrap_or_default()))
            }
            _ => Ok(()),
        }
    }

    fn park(&mut self) -> Result<()> {
        let barriers = barriers();
        if !self.announced {
            // Relaxed increment, then a SeqCst fence: the store-buffer pattern with the waker's
            // fence in `notify` (or with its compiler barrier plus our membarrier below).
            self.line.waiters.fetch_add(1, Relaxed);
            fence(SeqCst);
            self.announced = true;
            // Acquire: pairs with the Release increment in `wake`.
            self.seen = self.line.futex.load(Acquire);
            if barriers.global {
                sys::membarrier_global();
            }
            // The caller re-checks the ring before the first sleep.
            return Ok(());
        }
        let remaining = match self.deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Err(Error::TimedOut(self.timeout.unwrap_or_default()));
                }
                Some(d - now)
            }
            None => None,
        };
        let limit = if barriers.global {
            remaining
        } else {
            Some(remaining.map_or(FALLBACK_SLEEP, |r| r.min(FALLBACK_SLEEP)))
        };
        sys::futex_wait(&self.line.futex, self.seen, limit);
        // Acquire: as above; read before the caller's next re-check.
        self.seen = self.line.futex.load(Acquire);
        Ok(())
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.announced {
            // Relaxed: a waker that still sees us costs one spurious FUTEX_WAKE, nothing more.
            self.line.waiters.fetch_sub(1, Relaxed);
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

//! Pollable descriptors: a handle that an event loop (`poll`, `epoll`, tokio, asyncio) waits on
//! beside its sockets and timers.
//!
//! # Contract
//!
//! [`Consumer::fd`](crate::Consumer::fd) and [`Producer::fd`](crate::Producer::fd) return a
//! descriptor that becomes readable when the handle's next operation may succeed: frames may be
//! waiting, room may have been made, the channel was deleted or (for a consumer) its stream
//! finished. It is level-triggered and armed by the handle's own calls: making it, and a
//! non-waiting operation that finds the ring not ready (`WouldBlock`), arm it, after which it
//! stays quiet until the other side makes progress; it is readable whenever the handle is not
//! armed. So an event loop, once the descriptor is readable, receives (or sends) with no wait
//! until `WouldBlock`, and polls again. A readable descriptor is a hint, never a promise: an
//! operation may still find nothing (another consumer was faster, a recheck fired). Blocking
//! calls wait by their strategy: they count an armed descriptor out first and arm it again if
//! they time out.
//!
//! # How a descriptor is woken without costing the data path
//!
//! The wake-up protocol is the parked waiter's (`wait`): the side making progress loads the
//! line's `waiters` after it publishes and calls `FUTEX_WAKE` on the line's futex word only if
//! someone is counted there. An armed descriptor counts itself in `waiters` (the same
//! announcement: increment, fence, `membarrier`, then the re-check of the ring) and is counted
//! out by the handle's first operation that succeeds (which makes it readable: a handle not
//! counted is woken by nothing, so only readiness brings the loop back): while frames flow,
//! nobody is counted and no system call is made. What turns a `FUTEX_WAKE` on a word in shared memory into a readable
//! descriptor in this process is the backend:
//!
//! * **io_uring** (Linux 6.7+, the default where it works): the descriptor is an io_uring
//!   instance with a `FUTEX_WAIT` request queued on the line's futex word. A wake completes the
//!   request, and the completion makes the ring readable: one wake-up, in the waiting thread,
//!   as cheap as a parked waiter's. Every path that wakes parked waiters (publish, release,
//!   crash repair, delete, finish) so wakes descriptors too, with no change on the waking side.
//! * **a waker thread** (Linux 5.16+; where io_uring is missing or forbidden, as in containers
//!   whose seccomp profile blocks it): one thread per process sleeps in `futex_waitv` on the
//!   futex words of every armed descriptor (127 at a time, beside its own control word) and
//!   writes each woken handle's eventfd. It costs a second wake-up per wake (the thread's, then the event loop's).
//!
//! Below 5.16 [`Consumer::fd`](crate::Consumer::fd) fails with an error that says so.
//! `SHMRING_FD_WAKER=thread` (or `uring`) in the environment picks a backend.
//!
//! An armed descriptor is also made readable every [`FD_RECHECK_INTERVAL`] while nothing
//! happens, as a parked waiter re-checks every `RECHECK_INTERVAL`: the words the protocol relies
//! on are in shared memory, which a hostile process may scribble on (a zeroed `waiters`
//! silences every waker). The operation the event loop then makes re-counts the waiter if its
//! count was lost and checks the ring for damage.

use crate::error::{Error, Result};
use crate::layout::{PARKED_NONE, Role};
use crate::region::Memory;
use crate::segment::Membership;
use crate::sync::Ordering::{AcqRel, Acquire, Relaxed, Release};
use crate::sync::{AtomicU32, AtomicU64};
use crate::sys;
use crate::wait::{self, Line};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Longest an armed descriptor stays quiet without becoming readable (then the operation the
/// event loop makes checks the ring and the waiter's count). An idle handle so costs its event
/// loop ten wake-ups a second.
pub const FD_RECHECK_INTERVAL: Duration = Duration::from_millis(100);

/// 0: the default interval, else the interval in milliseconds (`set_fd_recheck_interval`).
static RECHECK_MS: AtomicU64 = AtomicU64::new(0);

/// Sets the recheck interval of descriptors armed from now on in this process; tests stretch it
/// so that a wake-up path that does not work cannot pass for one that does. Overrides
/// `SHMRING_FD_RECHECK_MS`.
#[doc(hidden)]
pub fn set_fd_recheck_interval(interval: Duration) {
    // Relaxed: a setting read when a descriptor is armed.
    RECHECK_MS.store((interval.as_millis() as u64).max(1), Relaxed);
}

fn recheck_interval() -> Duration {
    // Relaxed: as in `set_fd_recheck_interval`.
    match RECHECK_MS.load(Relaxed) {
        0 => std::env::var("SHMRING_FD_RECHECK_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .map_or(FD_RECHECK_INTERVAL, Duration::from_millis),
        ms => Duration::from_millis(ms),
    }
}

/// Which mechanism wakes a descriptor (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[doc(hidden)]
pub enum FdBackend {
    /// io_uring where it works, else the waker thread.
    Auto,
    /// An io_uring `FUTEX_WAIT` (Linux 6.7+).
    Uring,
    /// A waker thread in `futex_waitv` (Linux 5.16+).
    Thread,
}

/// 0: none chosen by `set_fd_backend` (the environment decides), else 1 + the backend.
static CHOSEN: AtomicU32 = AtomicU32::new(0);

/// Chooses the backend of descriptors made from now on in this process (tests and the bench
/// compare them); overrides `SHMRING_FD_WAKER`.
#[doc(hidden)]
pub fn set_fd_backend(backend: FdBackend) {
    let v = match backend {
        FdBackend::Auto => 1,
        FdBackend::Uring => 2,
        FdBackend::Thread => 3,
    };
    // Relaxed: a setting read when a descriptor is made.
    CHOSEN.store(v, Relaxed);
}

fn chosen() -> FdBackend {
    // Relaxed: as in `set_fd_backend`.
    match CHOSEN.load(Relaxed) {
        2 => FdBackend::Uring,
        3 => FdBackend::Thread,
        1 => FdBackend::Auto,
        _ => match std::env::var("SHMRING_FD_WAKER").as_deref() {
            Ok("uring") => FdBackend::Uring,
            Ok("thread") => FdBackend::Thread,
            _ => FdBackend::Auto,
        },
    }
}

/// User data of the io_uring requests.
const WAIT: u64 = 1;
const TIMER: u64 = 2;
const NOP: u64 = 3;

/// Submits what was pushed and not yet submitted, if anything.
fn submit_pending(ring: &mut sys::Uring) -> Result<()> {
    if ring.pending() {
        ring.submit()
            .map_err(|e| Error::os("arming the pollable descriptor (io_uring)", e))?;
    }
    Ok(())
}

/// A handle's pollable descriptor and its armed state.
#[derive(Debug)]
pub(crate) struct Pollable {
    /// Declared first, so dropped first: the ring's queued wait goes before the mapping.
    backend: Backend,
    mem: Arc<Memory>,
    /// The line of the side the handle waits for.
    line: Line,
    /// The handle's participant entry (role, index), where `parked` says it is counted.
    who: (Role, u32),
    /// The process that made it: a child forked afterwards leaves shared state alone.
    pid: u32,
    /// Counted in the line's `waiters`.
    counted: bool,
    /// The segment watched before the last `retarget`.
    _prev_mem: Option<Arc<Memory>>,
}

#[derive(Debug)]
enum Backend {
    Uring {
        ring: Box<sys::Uring>,
        /// A `FUTEX_WAIT`, timeout or no-op request is queued and has not completed.
        wait_out: bool,
        timer_out: bool,
        nop_out: bool,
    },
    Thread(Arc<Slot>),
}

impl Pollable {
    /// Refuses a handle inherited across `fork` (`what`: "consumer" or "producer"): its entry is
    /// the parent's.
    pub(crate) fn check_held(membership: &Membership, what: &str) -> Result<()> {
        if membership.held_here() {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "this {what} was opened by another process (inherited across fork): open a {what} \
             of your own to poll"
        )))
    }

    /// A descriptor for the handle holding `membership`'s entry, waiting on `line`.
    pub(crate) fn new(mem: &Arc<Memory>, line: Line, membership: &Membership) -> Result<Pollable> {
        let mem = Arc::clone(mem);
        let who = (membership.role(), membership.index());
        let uring = || {
            sys::Uring::new().map(|ring| Backend::Uring {
                ring: Box::new(ring),
                wait_out: false,
                timer_out: false,
                nop_out: false,
            })
        };
        let backend = match chosen() {
            FdBackend::Uring => uring().map_err(|e| {
                Error::os(
                    "SHMRING_FD_WAKER=uring: cannot make an io_uring with futex requests \
                     (Linux 6.7+, io_uring allowed)",
                    e,
                )
            })?,
            FdBackend::Thread => Backend::Thread(Slot::register(&mem, line)?),
            FdBackend::Auto => match uring() {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!("io_uring futex waits unavailable ({e}): using a waker thread");
                    Backend::Thread(Slot::register(&mem, line)?)
                }
            },
        };
        Ok(Pollable {
            mem,
            line,
            who,
            pid: sys::pid(),
            counted: false,
            _prev_mem: None,
            backend,
        })
    }

    /// The descriptor; it belongs to this value.
    pub(crate) fn fd(&self) -> RawFd {
        match &self.backend {
            Backend::Uring { ring, .. } => ring.fd(),
            Backend::Thread(slot) => slot.efd.as_raw_fd(),
        }
    }

    /// The handle moved to the segment that replaced its own in a resize, where it holds
    /// `membership`'s entry: the descriptor, the same for the event loop, now watches that
    /// segment's line. It is counted out of the old one and made readable (the handle's next
    /// operation arms it on the new one).
    pub(crate) fn retarget(&mut self, mem: &Arc<Memory>, membership: &Membership) -> Result<()> {
        if !self.here() {
            return Ok(());
        }
        if self.counted {
            self.count_out();
        }
        match &mut self.backend {
            Backend::Uring { ring, wait_out, .. } => {
                if *wait_out {
                    // Its completion, when the cancellation lands, is one spurious readiness.
                    ring.push_cancel(WAIT);
                    if ring.submit().is_err() {
                        tracing::debug!("could not submit the cancellation of a futex wait");
                    }
                    *wait_out = false;
                }
            }
            Backend::Thread(slot) => {
                let next = Slot::register_with(mem, self.line, Arc::clone(&slot.efd))?;
                slot.unregister();
                *slot = next;
            }
        }
        // The old memory stays mapped while a wait queued on it may not have been cancelled
        // yet (see `sys::Uring::push`).
        self._prev_mem = Some(std::mem::replace(&mut self.mem, Arc::clone(mem)));
        self.who = (membership.role(), membership.index());
        self.signal();
        Ok(())
    }

    /// Whether this process made the descriptor (not a child forked since).
    pub(crate) fn here(&self) -> bool {
        self.pid == sys::pid()
    }

    /// The handle's operation found the ring not ready: arms the descriptor. `ready` re-checks
    /// the ring after the announcement (the sleeper's half of the protocol); if it or the state
    /// word says that the operation may now succeed, the descriptor is made readable at once.
    /// Returns whether a recheck fell due: the caller then checks the ring for damage.
    #[cold]
    pub(crate) fn arm(&mut self, ready: impl FnOnce() -> bool) -> Result<bool> {
        if !self.here() {
            return Ok(false);
        }
        let recheck = self.reap();
        let barriers = wait::barriers();
        let line = self.line.of(&self.mem);
        let seen = if !self.counted {
            let seen = wait::announce(line, barriers);
            // Relaxed: read by a coordinator only after this process died (repair.rs); set
            // after the increment, cleared before the decrement, as a parked waiter does.
            if let Some(e) = self.mem.participant(self.who.0, self.who.1) {
                e.parked.store(self.line.parked_code(), Relaxed);
            }
            self.counted = true;
            seen
        } else if recheck && line.waiters.load(Relaxed) == 0 {
            // Counted, yet the count reads zero: the word was overwritten. Count in again.
            wait::announce(line, barriers)
        } else {
            // Acquire: pairs with the Release increment in `wait::wake`; read before the
            // re-check below, as a parked waiter reads it before its last look at the ring.
            line.futex.load(Acquire)
        };
        let now = ready() || self.line.ending(&self.mem);
        let interval = if barriers.global {
            recheck_interval()
        } else {
            // A waker may miss the announcement (see `wait::FALLBACK_SLEEP`).
            wait::FALLBACK_SLEEP
        };
        match &mut self.backend {
            Backend::Uring {
                ring,
                wait_out,
                timer_out,
                nop_out,
            } => {
                // A wait still queued was made with an older `seen`: the word changed since only
                // by a wake, which completes it, so it stays. A request is marked queued once
                // pushed: if the submission fails it stays in the submission queue, and the next
                // arming submits it. That goes first, so that the timeout (whose timespec is
                // only rewritten with nothing pending) is not skipped; the timeout is pushed
                // first for the same reason.
                submit_pending(ring)?;
                if !*timer_out {
                    *timer_out = ring.push_timeout(interval, TIMER);
                }
                if !*wait_out {
                    *wait_out = ring.push_futex_wait(&line.futex, seen, WAIT);
                }
                if now && !*nop_out {
                    *nop_out = ring.push_nop(NOP);
                }
                submit_pending(ring)?;
            }
            Backend::Thread(slot) => {
                slot.arm(seen, interval);
                if now {
                    slot.signal();
                }
            }
        }
        Ok(recheck)
    }

    /// Takes the completions that made the descriptor readable; whether a recheck fell due.
    fn reap(&mut self) -> bool {
        let mut recheck = false;
        match &mut self.backend {
            Backend::Uring {
                ring,
                wait_out,
                timer_out,
                nop_out,
            } => ring.reap(|what, _| match what {
                WAIT => *wait_out = false,
                TIMER => {
                    *timer_out = false;
                    recheck = true;
                }
                NOP => *nop_out = false,
                _ => {}
            }),
            Backend::Thread(slot) => {
                // Relaxed: set after the eventfd was written (a drain that comes too early
                // leaves it readable: one spurious readiness, then this drains it).
                if slot.signalled.swap(0, Relaxed) != 0 {
                    sys::eventfd_drain(&slot.efd);
                }
                recheck = slot.timer.swap(0, Relaxed) != 0;
            }
        }
        recheck
    }

    /// The handle's operation succeeded: counts the waiter out, so that the other side's
    /// publishes and releases stop calling the kernel. A request still queued stays (a later
    /// wake completes it: one spurious readiness).
    #[inline]
    ///
    /// The descriptor is also made readable: the handle is no longer armed, so only readiness
    /// brings an event loop back to the call that arms it again. (Without this, a loop that
    /// received through a blocking call, or stopped before `WouldBlock`, and then polled could
    /// wait for good: nothing would wake a handle that is not counted.) It costs one system call
    /// per counting out, that is per burst of frames, not per frame.
    pub(crate) fn disarm(&mut self) {
        if self.counted {
            self.count_out();
            self.signal();
        }
    }

    #[cold]
    fn count_out(&mut self) {
        if !self.here() {
            return;
        }
        self.counted = false;
        // Relaxed: as in `arm`.
        if let Some(e) = self.mem.participant(self.who.0, self.who.1) {
            e.parked.store(PARKED_NONE, Relaxed);
        }
        wait::leave(&self.line.of(&self.mem).waiters);
        if let Backend::Thread(slot) = &self.backend {
            // Relaxed: the thread fires a disarmed slot no more (a race costs a readiness).
            slot.armed.store(0, Relaxed);
        }
    }

    /// The handle's operation returned `Closed`: the descriptor becomes readable and stays so
    /// until an operation arms it again, so that an event loop sees the end.
    #[cold]
    pub(crate) fn ended(&mut self) {
        if !self.here() {
            return;
        }
        self.disarm();
        self.signal();
    }

    /// Makes the descriptor readable now (until the next arming).
    pub(crate) fn signal(&mut self) {
        if !self.here() {
            return;
        }
        match &mut self.backend {
            Backend::Uring { ring, nop_out, .. } => {
                if !*nop_out {
                    *nop_out = ring.push_nop(NOP);
                }
                if ring.pending() && ring.submit().is_err() {
                    // Still in the submission queue: the next arming submits it.
                    tracing::debug!("could not submit the closing no-op");
                }
            }
            Backend::Thread(slot) => slot.signal(),
        }
    }
}

impl Drop for Pollable {
    fn drop(&mut self) {
        if self.counted {
            self.count_out();
        }
        if let Backend::Thread(slot) = &self.backend
            && self.here()
        {
            slot.unregister();
        }
        // An io_uring closes with its descriptor, which cancels what is queued.
    }
}

/// One armed descriptor of the waker-thread backend.
struct Slot {
    waker: &'static Waker,
    mem: Arc<Memory>,
    line: Line,
    /// Shared with the slots that replace this one when the handle moves to a resized
    /// channel's new segment: the descriptor an event loop registered stays the same.
    efd: Arc<OwnedFd>,
    /// The futex word's value when the descriptor was armed: the thread fires when it differs.
    expected: AtomicU32,
    /// 1 while armed.
    armed: AtomicU32,
    /// When a recheck is due, in nanoseconds since the waker's `epoch`.
    due: AtomicU64,
    /// Set when the thread fired the slot because its recheck fell due.
    timer: AtomicU32,
    /// Set after the eventfd was written, cleared by the drain: an arming drains the eventfd
    /// only when something wrote it.
    signalled: AtomicU32,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("efd", &self.efd)
            .field("armed", &(self.armed.load(Relaxed) != 0))
            .finish()
    }
}

/// The process's waker thread and the slots it watches.
struct Waker {
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Bumped (and woken) whenever a slot is armed or removed: the thread rebuilds its list.
    control: crate::sync::AtomicU32,
    epoch: Instant,
}

/// How many processes of one lineage (a process, a child it forked, that child's child...) can
/// each have a waker thread: a forked child does not inherit its parent's thread, so it starts
/// its own, in the next free entry.
const WAKERS: usize = 64;

/// The waker thread of this process, started on first use; `Err` with the reason when
/// `futex_waitv` is missing or refused, or the thread could not start.
///
/// No lock is taken to find it: a child forked while another thread of its parent held a lock
/// (or was inside a `OnceLock`'s initialisation) would wait on it for good. Each entry is first
/// claimed with a compare-and-swap of this process's identity (its pid and start time, so that a
/// reused pid is not mistaken for an ancestor), and only the claiming process ever initialises
/// or reads the entry's `OnceLock`; another process's entry, finished or half-done, is passed
/// over.
fn waker() -> std::result::Result<&'static Waker, String> {
    type Started = OnceLock<std::result::Result<&'static Waker, String>>;
    static CLAIMS: [AtomicU64; WAKERS] = [const { AtomicU64::new(0) }; WAKERS];
    static STARTED: [Started; WAKERS] = [const { OnceLock::new() }; WAKERS];
    // The start time read afresh: `sys::own_start_time` caches it, and a forked child inherits
    // the cache.
    let pid = sys::pid();
    let start = sys::proc_stat(pid).map_or(0, |s| s.start_time);
    let me = (u64::from(start as u32) << 32) | u64::from(pid);
    for (claim, started) in CLAIMS.iter().zip(&STARTED) {
        // Acquire/AcqRel: the claim orders nothing else (the OnceLock synchronises the waker);
        // the strong orderings keep the reasoning simple.
        let owner = match claim.compare_exchange(0, me, AcqRel, Acquire) {
            Ok(_) => me,
            Err(owner) => owner,
        };
        if owner == me {
            return started.get_or_init(start_waker).clone();
        }
    }
    Err(format!(
        "{WAKERS} generations of forked processes each started a waker thread: no entry is left"
    ))
}

fn start_waker() -> std::result::Result<&'static Waker, String> {
    // An empty list is refused with EINVAL by a kernel that has the call; ENOSYS (too old) or
    // anything else (a seccomp filter's EPERM) means that it cannot be used.
    match sys::futex_waitv(&[], Instant::now()) {
        Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => {
            return Err(format!(
                "futex_waitv is unavailable ({e}): a pollable descriptor needs io_uring futex \
                 waits (Linux 6.7+) or futex_waitv (Linux 5.16+)"
            ));
        }
        Ok(()) => return Err("futex_waitv accepted an empty list".into()),
    }
    let w: &'static Waker = Box::leak(Box::new(Waker {
        slots: Mutex::new(Vec::new()),
        control: crate::sync::AtomicU32::new(0),
        epoch: Instant::now(),
    }));
    std::thread::Builder::new()
        .name("shmring-waker".into())
        .spawn(move || w.run())
        .map_err(|e| format!("cannot start the waker thread: {e}"))?;
    Ok(w)
}

impl Slot {
    fn register(mem: &Arc<Memory>, line: Line) -> Result<Arc<Slot>> {
        let efd = sys::eventfd().map_err(|e| Error::os("making a pollable descriptor", e))?;
        Slot::register_with(mem, line, Arc::new(efd))
    }

    /// A slot watching `line` of `mem` that writes `efd`.
    fn register_with(mem: &Arc<Memory>, line: Line, efd: Arc<OwnedFd>) -> Result<Arc<Slot>> {
        let w = waker().map_err(|e| {
            Error::os(
                "making a pollable descriptor",
                std::io::Error::new(std::io::ErrorKind::Unsupported, e),
            )
        })?;
        let slot = Arc::new(Slot {
            waker: w,
            mem: Arc::clone(mem),
            line,
            efd,
            expected: AtomicU32::new(0),
            armed: AtomicU32::new(0),
            due: AtomicU64::new(0),
            timer: AtomicU32::new(0),
            signalled: AtomicU32::new(0),
        });
        w.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&slot));
        Ok(slot)
    }

    fn signal(&self) {
        sys::eventfd_signal(&self.efd);
        // Relaxed: see `Pollable::reap`.
        self.signalled.store(1, Relaxed);
    }

    fn arm(&self, seen: u32, interval: Duration) {
        // Relaxed: our own words. Armed on the same value already: the thread watches it.
        if self.armed.load(Relaxed) != 0 && self.expected.load(Relaxed) == seen {
            return;
        }
        let w = self.waker;
        let due = (w.epoch.elapsed() + interval).as_nanos() as u64;
        // Relaxed: published by the Release store of `armed`.
        self.expected.store(seen, Relaxed);
        self.due.store(due, Relaxed);
        // Release: the thread's Acquire load of `armed` sees `expected` and `due`.
        self.armed.store(1, Release);
        w.poke();
    }

    fn unregister(self: &Arc<Self>) {
        let w = self.waker;
        w.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|s| !Arc::ptr_eq(s, self));
        w.poke();
    }

    fn fire(&self, timer: bool) {
        if timer {
            // Relaxed: read by the owner after it drained the eventfd written below.
            self.timer.store(1, Relaxed);
        }
        // AcqRel: one firing per arming.
        if self.armed.swap(0, AcqRel) != 0 {
            self.signal();
        }
    }

    fn word(&self) -> &crate::sync::AtomicU32 {
        &self.line.of(&self.mem).futex
    }
}

impl Waker {
    /// Makes the thread rebuild its list of words.
    fn poke(&self) {
        // Release: pairs with the thread's Acquire load; the futex wake ends its wait.
        self.control.fetch_add(1, Release);
        sys::futex_wake_private(&self.control);
    }

    fn run(&self) -> ! {
        const MAX_WORDS: usize = 128;
        loop {
            // Acquire: sees the slots armed before the bump.
            let control = self.control.load(Acquire);
            let armed: Vec<Arc<Slot>> = self
                .slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                // Acquire: pairs with the Release store in `Slot::arm`.
                .filter(|s| s.armed.load(Acquire) != 0)
                .cloned()
                .collect();
            let now = self.epoch.elapsed().as_nanos() as u64;
            let mut words = vec![sys::FutexWaitv {
                word: &self.control,
                expected: control,
                private: true,
            }];
            let mut next = now + 3_600_000_000_000;
            let mut watched = Vec::with_capacity(armed.len().min(MAX_WORDS));
            for s in &armed {
                // Relaxed: ordered by the Acquire load of `armed` above.
                let (expected, due) = (s.expected.load(Relaxed), s.due.load(Relaxed));
                if due <= now {
                    s.fire(true);
                } else if s.word().load(Acquire) != expected {
                    // Acquire: the publish behind the change is visible to the owner, which
                    // reads the ring after the eventfd (a system call, a full barrier).
                    s.fire(false);
                } else if words.len() < MAX_WORDS {
                    words.push(sys::FutexWaitv {
                        word: s.word(),
                        expected,
                        private: false,
                    });
                    watched.push(s);
                    next = next.min(due);
                } else {
                    // More armed slots than one call watches (127): the rest are looked at
                    // every millisecond, which costs this thread 1000 wake-ups a second while
                    // so many are armed at once.
                    next = next.min(now + 1_000_000);
                }
            }
            let deadline = self.epoch + Duration::from_nanos(next);
            match sys::futex_waitv(&words, deadline) {
                Ok(())
                | Err(nix::errno::Errno::EAGAIN)
                | Err(nix::errno::Errno::ETIMEDOUT)
                | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    // Not expected (the words are aligned and mapped); never spin on it.
                    static WARNED: AtomicU32 = AtomicU32::new(0);
                    // Relaxed: a once-only log line.
                    if WARNED.swap(1, Relaxed) == 0 {
                        tracing::warn!(
                            "futex_waitv failed: {e}; the waker thread retries every ms"
                        );
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            for s in watched {
                // Relaxed loads: as above.
                if s.armed.load(Relaxed) != 0 && s.word().load(Acquire) != s.expected.load(Relaxed)
                {
                    s.fire(false);
                }
            }
        }
    }
}

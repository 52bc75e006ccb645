//! Survives a segment shrunk under its mappings.
//!
//! A shared-memory object that someone truncates while it is mapped leaves pages behind the
//! new end of file: the next access to one raises SIGBUS, which kills the process. Coordinator
//! segments are sealed memfds that nobody can shrink (`segment.rs`), but a named segment
//! (`Segment::create`/`open`) is an ordinary file in `/dev/shm` that anyone allowed to open it
//! may `ftruncate`. So every segment mapping of this process is registered here, and a
//! process-wide SIGBUS handler, installed on the first registration, handles a fault inside a
//! registered mapping the way Wayland compositors handle a client's shrunk shm pool: it maps
//! anonymous zero pages over the whole mapping (`MAP_FIXED`), writes `STATE_DELETED` into the
//! header of that private copy, marks the mapping truncated and returns. The faulting access is
//! executed again and now reads the zero page; every slow path of the handles (an empty or full
//! ring, a wait) already looks at the state word and stops, and the mark turns what they report
//! into [`Error::Corrupted`](crate::Error::Corrupted). The memory that was truncated is gone for
//! everyone: no frame can be saved, but no process dies of it.
//!
//! A fault anywhere else is passed on to the handler that was installed before this one (Rust's
//! standard library installs one to report stack overflows), or, when there was none, the
//! default action is restored so that the fault kills the process as it would have.
//!
//! The handler is async-signal-safe: it allocates nothing and takes no lock. The registry is a
//! fixed array of slots of atomics, each a sequence lock written only under the writers' lock by
//! [`register`]/[`unregister`] (which never run in the handler): the handler reads a slot's
//! range only when its sequence number is even and unchanged across the read, so a slot being
//! rewritten by another thread is never mistaken for a range it does not describe.
//!
//! The writers' lock survives `fork`: it holds the pid of the process whose thread took it, so
//! a child forked while another thread of its parent held it (that thread does not exist in the
//! child) takes it over instead of waiting forever, and a slot it finds half rewritten is
//! rewritten whole. A `std::sync::Mutex` or `Once` held across a fork would hang every later
//! segment open or drop in the child (an inherited handle dropped by a Python
//! `multiprocessing` child at exit, say).

use crate::layout::{STATE_DELETED, STATE_OFFSET};
use crate::sync::Ordering::{Acquire, Relaxed, Release};
use crate::sync::{AtomicU32, AtomicU64, fence};
use std::cell::UnsafeCell;

/// Mappings one process can have protected at once. A coordinator serves at most 4096
/// channels; a mapping beyond this many is used unprotected (and a warning is logged once).
pub(crate) const SLOTS: usize = 8192;

/// One registered mapping: `[start, start + len)`; `len == 0` for a free slot.
struct Slot {
    /// Odd while being written (sequence lock).
    seq: AtomicU64,
    start: AtomicU64,
    len: AtomicU64,
    /// Set by the handler once it has replaced the mapping.
    truncated: AtomicU32,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            seq: AtomicU64::new(0),
            start: AtomicU64::new(0),
            len: AtomicU64::new(0),
            truncated: AtomicU32::new(0),
        }
    }
}

static TABLE: [Slot; SLOTS] = [const { Slot::new() }; SLOTS];
/// Slots ever used: the handler looks at no more.
static USED: AtomicU64 = AtomicU64::new(0);
/// Serialises the writers of the table (never taken by the handler): 0 when free, else the pid
/// of the process one of whose threads holds it (see the module's documentation on `fork`).
static WRITERS: AtomicU32 = AtomicU32::new(0);
/// Whether the handler was installed (written under `WRITERS`).
static INSTALLED: AtomicU32 = AtomicU32::new(0);
/// Whether the table was found full once (written under `WRITERS`).
static WARNED: AtomicU32 = AtomicU32::new(0);

/// The writers' lock, held until dropped.
struct Writers;

impl Writers {
    fn lock() -> Writers {
        let me = std::process::id();
        loop {
            // Acquire: pairs with the Release in `drop`; the last holder's slot writes are
            // visible to this one.
            match WRITERS.compare_exchange(0, me, Acquire, Relaxed) {
                Ok(_) => return Writers,
                // Held by another thread of this process: it lets go in a few instructions.
                Err(holder) if holder == me => std::thread::yield_now(),
                // Held in the process this one was forked from, by a thread that does not
                // exist here: take it over. Acquire as above.
                Err(holder) => {
                    if WRITERS
                        .compare_exchange(holder, me, Acquire, Relaxed)
                        .is_ok()
                    {
                        return Writers;
                    }
                }
            }
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        // Release: pairs with the Acquire of the next `lock`.
        WRITERS.store(0, Release);
    }
}

/// The action that was installed before ours, written once before `PREVIOUS_SET` is set.
struct Previous(UnsafeCell<std::mem::MaybeUninit<libc::sigaction>>);
// SAFETY: written once, by the thread that installs the handler, before PREVIOUS_SET is stored
// with Release; read only after PREVIOUS_SET is loaded with Acquire.
unsafe impl Sync for Previous {}
static PREVIOUS: Previous = Previous(UnsafeCell::new(std::mem::MaybeUninit::uninit()));
static PREVIOUS_SET: AtomicU32 = AtomicU32::new(0);

/// A registered mapping; [`unregister`] it before it is unmapped.
#[derive(Debug)]
pub(crate) struct Registration(usize);

impl Registration {
    /// Whether the handler has replaced this mapping (its object was shrunk under it).
    #[inline]
    pub(crate) fn truncated(&self) -> bool {
        // Acquire: pairs with the handler's Release; the replacement is visible after it.
        TABLE[self.0].truncated.load(Acquire) != 0
    }
}

/// Registers the mapping `[start, start + len)` (`start` page-aligned, `len` a multiple of the
/// page size, the object's part of the mapping only), installing the handler first if this is
/// the first registration of the process. `None` if the table is full.
pub(crate) fn register(start: *mut u8, len: usize) -> Option<Registration> {
    let _w = Writers::lock();
    // Relaxed: written and read under the writers' lock only.
    if INSTALLED.load(Relaxed) == 0 {
        install();
        INSTALLED.store(1, Relaxed);
    }
    let index = TABLE.iter().position(|s| s.len.load(Relaxed) == 0);
    let Some(index) = index else {
        // Relaxed: written and read under the writers' lock only.
        if WARNED.load(Relaxed) == 0 {
            // Relaxed: as above.
            WARNED.store(1, Relaxed);
            tracing::warn!(
                "more than {SLOTS} shmring segments mapped: later ones are not protected from \
                 being truncated under this process (SIGBUS)"
            );
        }
        return None;
    };
    let s = &TABLE[index];
    write(s, start as u64, len as u64);
    if index as u64 >= USED.load(Relaxed) {
        // Release: the handler that sees the count sees the slot's contents.
        USED.store(index as u64 + 1, Release);
    }
    Some(Registration(index))
}

/// Forgets a mapping, before it is unmapped.
pub(crate) fn unregister(r: Registration) {
    let _w = Writers::lock();
    write(&TABLE[r.0], 0, 0);
}

/// Rewrites a slot under the sequence lock (the caller holds `WRITERS`).
fn write(s: &Slot, start: u64, len: u64) {
    // The next even number: a slot left odd by a writer that was forked away mid-write is
    // rewritten whole.
    let seq = s.seq.load(Relaxed).wrapping_add(1) & !1;
    s.seq.store(seq.wrapping_add(1), Relaxed);
    // Release fence: a reader that sees any of the stores below also sees the odd sequence
    // number, and gives up on the slot.
    fence(Release);
    s.truncated.store(0, Relaxed);
    s.start.store(start, Relaxed);
    s.len.store(len, Relaxed);
    // Release: a reader that sees the even number sees the stores above.
    s.seq.store(seq.wrapping_add(2), Release);
}

fn install() {
    // SAFETY: sigaction with a zeroed struct filled in as the man page requires; the handler
    // is an extern "C" function of the SA_SIGINFO signature. PREVIOUS is written before
    // PREVIOUS_SET publishes it, and only here (once, under the writers' lock).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGBUS, &action, &mut previous) != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "cannot install the SIGBUS handler: a segment truncated under this process \
                 will kill it"
            );
            return;
        }
        if previous.sa_sigaction == action.sa_sigaction {
            // Already ours: a parent's thread was installing it when this process was forked
            // from it. What it found before stays the one to chain to.
            return;
        }
        (*PREVIOUS.0.get()).write(previous);
    }
    PREVIOUS_SET.store(1, Release);
}

/// The SIGBUS handler. Async-signal-safe: atomics, `mmap`, `sigaction`, `raise` only.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as u64;
    // SAFETY: as above.
    let code = unsafe { (*info).si_code };
    // A SIGBUS sent by a process (si_code <= 0) is no fault of ours.
    if code > 0 && replace(addr) {
        return;
    }
    // SAFETY: chains with the kernel's arguments (see `chain`).
    unsafe { chain(sig, info, ctx, code) }
}

/// If `addr` lies in a registered mapping, maps zero pages over it, marks it deleted and
/// truncated, and returns true.
fn replace(addr: u64) -> bool {
    let used = (USED.load(Acquire) as usize).min(SLOTS);
    for s in &TABLE[..used] {
        let seq = s.seq.load(Acquire);
        if seq & 1 == 1 {
            continue; // being rewritten: not a mapping in use by the faulting access
        }
        let (start, len) = (s.start.load(Relaxed), s.len.load(Relaxed));
        // Acquire fence, then the sequence again: the two loads above were of one version.
        fence(Acquire);
        if s.seq.load(Relaxed) != seq || len == 0 || addr < start || addr - start >= len {
            continue;
        }
        // SAFETY: [start, start + len) is a mapping of a segment this process registered and
        // has not unregistered (unregistering precedes unmapping), so replacing it touches no
        // other memory; the faulting access is to this mapping, whose contents are lost
        // anyway. mmap is a plain system call, safe in a signal handler.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return false;
        }
        // SAFETY: the state word lies in the header, in the fresh private page at `start`;
        // AtomicU32 has the layout of u32 and STATE_OFFSET is 4-aligned.
        let state = unsafe { &*((start as usize + STATE_OFFSET) as *const AtomicU32) };
        // Relaxed: read by this process's slow paths, which then look at the mark below.
        state.store(STATE_DELETED, Relaxed);
        // Release: pairs with `Registration::truncated`.
        s.truncated.store(1, Release);
        return true;
    }
    false
}

/// Hands the signal to the previous handler, or restores the default action.
///
/// # Safety
/// The arguments must be the kernel's, from within the SIGBUS handler.
unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void, code: i32) {
    if PREVIOUS_SET.load(Acquire) != 0 {
        // SAFETY: written before PREVIOUS_SET was set (Acquire above), never again.
        let prev = unsafe { (*PREVIOUS.0.get()).assume_init_ref() };
        let h = prev.sa_sigaction;
        if h != libc::SIG_DFL && h != libc::SIG_IGN {
            if prev.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: an SA_SIGINFO handler has this signature; the arguments are the
                // kernel's.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(h) };
                f(sig, info, ctx);
            } else {
                // SAFETY: a plain handler takes the signal number.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
                f(sig);
            }
            return;
        }
        if h == libc::SIG_IGN && code <= 0 {
            return; // a sent SIGBUS, ignored as asked
        }
    }
    // The default action: restore it; a fault happens again when the instruction is retried
    // and kills the process as it would have; a sent signal is raised again.
    // SAFETY: sigaction and raise are async-signal-safe; the struct is zeroed and filled in.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut dfl.sa_mask);
        libc::sigaction(sig, &dfl, std::ptr::null_mut());
        if code <= 0 {
            libc::raise(sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_ranges_found() {
        let page = crate::sys::page_size();
        // Not real mappings: only the bookkeeping is looked at (no fault happens).
        let a = register((64 * page) as *mut u8, 2 * page).unwrap();
        let b = register((128 * page) as *mut u8, page).unwrap();
        assert_ne!(a.0, b.0);
        assert!(!a.truncated() && !b.truncated());
        unregister(a);
        let c = register((256 * page) as *mut u8, page).unwrap();
        assert!(!c.truncated(), "a slot taken again starts unmarked");
        unregister(b);
        unregister(c);
    }

    /// A child forked while another thread of its parent holds the writers' lock can still
    /// register and unregister (with a `std::sync::Mutex` it hung for good: a forked child
    /// dropping an inherited segment, in review of step 5 item 18). The parent's thread takes
    /// and releases the lock in a tight loop, so that many of the forks land while it is held.
    #[test]
    fn a_child_forked_while_the_lock_is_held_does_not_hang() {
        use std::sync::Arc;
        use std::time::{Duration, Instant};
        let page = crate::sys::page_size();
        let stop = Arc::new(AtomicU32::new(0));
        let churn = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while stop.load(Relaxed) == 0 {
                    if let Some(r) = register((1024 * page) as *mut u8, page) {
                        unregister(r);
                    }
                }
            })
        };
        let mut hung = 0;
        for _ in 0..200 {
            // SAFETY: the child only registers, unregisters (no allocation, no lock but the
            // one under test) and leaves with _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                if let Some(r) = register((2048 * page) as *mut u8, page) {
                    unregister(r);
                }
                // SAFETY: ends the child without running the parent's exit handlers.
                unsafe { libc::_exit(0) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut status = 0;
            loop {
                // SAFETY: waits for our own child, WNOHANG.
                let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                if r == pid {
                    break;
                }
                if Instant::now() > deadline {
                    hung += 1;
                    // SAFETY: our own child, then reaped.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                        libc::waitpid(pid, &mut status, 0);
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        stop.store(1, Relaxed);
        churn.join().unwrap();
        assert_eq!(
            hung, 0,
            "{hung} of 200 forked children hung on the writers' lock"
        );
    }
}

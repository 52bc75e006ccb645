//! The page the benchmark's two processes share besides the channels under test: commands and
//! acknowledgements, and the words the two floors bounce (one cache line; two futexes).
//!
//! Orderings. A command's arguments are stored Relaxed, then its sequence number with Release;
//! the peer loads the sequence with Acquire before reading them. The peer stores its results
//! (frames received, the error flag) Relaxed, then "ready" or "done" with Release; the parent
//! loads those with Acquire before reading the results. The floors' words are stored with
//! Release and spun on with Acquire, as a ring's publish and consume are. The parent resets the
//! floors' words Relaxed before the Release of the next command.

// The control page is the benchmark's own, not a ring: loom has nothing to model here.
#![allow(clippy::disallowed_types)]

use super::transport::PATIENCE;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A 128-byte line of words: no two lines share a cache-line pair.
#[repr(C, align(128))]
pub struct Line(pub [AtomicU64; 16]);

/// The control page's lines.
#[repr(C)]
pub struct Control {
    /// Word 0: command sequence (written last); words 1..: its arguments.
    pub cmd: Line,
    /// Word 0: the sequence the peer is ready for; word 1: the one it finished; word 2: a
    /// result (frames received); word 3: an error flag; word 4: a second result (frames
    /// missed).
    pub ack: Line,
    /// The atomic floor's word.
    pub floor: Line,
    /// The futex floor's words: parent to peer, peer to parent (32-bit futex words).
    pub futex_a: FutexLine,
    pub futex_b: FutexLine,
    /// `cmd` and `ack` of the second peer (the second subscriber of the fan-out runs).
    pub cmd2: Line,
    pub ack2: Line,
}

impl Control {
    /// The command and acknowledgement lines of peer `index` (0 or 1).
    pub fn lines(&self, index: usize) -> (&Line, &Line) {
        if index == 0 {
            (&self.cmd, &self.ack)
        } else {
            (&self.cmd2, &self.ack2)
        }
    }
}

#[repr(C, align(128))]
pub struct FutexLine(pub AtomicU32);

/// Maps the first `len` bytes of `path` shared, read-write; with `create`, creates the file
/// (afresh: never another's, readable by this user only) and sizes it, zeroed. A file shorter
/// than `len` is refused.
fn map_file(path: &Path, len: usize, create: bool) -> std::io::Result<*mut u8> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create)
        .mode(0o600)
        .open(path)?;
    if create {
        file.set_len(len as u64)?;
    }
    if file.metadata()?.len() < len as u64 {
        return Err(std::io::Error::other(format!(
            "{} is shorter than {len} bytes",
            path.display()
        )));
    }
    // SAFETY: a fresh shared mapping of a file we hold open and checked to be at least `len`
    // bytes, checked for failure below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(p.cast())
}

/// A shared mapping of the control file.
pub struct Shared {
    ptr: *mut Control,
}

impl Shared {
    /// Maps `path`, creating it (zeroed; it must not exist) with `create`.
    pub fn map(path: &Path, create: bool) -> std::io::Result<Shared> {
        let p = map_file(path, std::mem::size_of::<Control>(), create)?;
        Ok(Shared { ptr: p.cast() })
    }

    pub fn control(&self) -> &Control {
        // SAFETY: the mapping is page-aligned and as long as Control, which is made of atomics
        // (valid for any bits, shared by design); it lives as long as self.
        unsafe { &*self.ptr }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no reference outlives self.
        unsafe { libc::munmap(self.ptr.cast(), std::mem::size_of::<Control>()) };
    }
}

/// Spins until `word` holds `value`; false if `patience` passes first (the peer died). The
/// clock is first read after 2^16 spins, so a wait that ends sooner (a floor's round trip)
/// never pays for it.
pub fn spin_until(word: &AtomicU64, value: u64, patience: Duration) -> bool {
    let mut n = 0u32;
    let mut deadline = None;
    while word.load(Ordering::Acquire) != value {
        std::hint::spin_loop();
        n = n.wrapping_add(1);
        if n.is_multiple_of(1 << 16) {
            let now = Instant::now();
            if now > *deadline.get_or_insert(now + patience) {
                return false;
            }
        }
    }
    true
}

/// Spins until `word` differs from `seen`; false if `patience` passes first (the other
/// process died).
pub fn spin_until_changed(word: &AtomicU64, seen: u64, patience: Duration) -> bool {
    let start = Instant::now();
    let mut spins = 0u32;
    while word.load(Ordering::Acquire) == seen {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1 << 16) && start.elapsed() > patience {
            return false;
        }
    }
    true
}

/// Sleeps while `*word == expected` (FUTEX_WAIT, shared between processes), at most `timeout`.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a live 4-aligned 32-bit word and a timespec that outlives the call; the kernel
    // only reads them.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes the sleepers of `word`, in any process.
pub fn futex_wake(word: &AtomicU32) {
    // SAFETY: as in futex_wait; FUTEX_WAKE does not touch the word's value.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// How long a side of the futex floor spins before it sleeps: less than the pause before each
/// round trip (so the echoing side is asleep when the frame comes), more than a wake-up takes
/// (so the side that sent it is still awake for the echo).
const FUTEX_FLOOR_SPIN: Duration = Duration::from_micros(20);

/// The futex floor's wait: spins up to `FUTEX_FLOOR_SPIN` for `word` to hold `value`, then
/// sleeps in `FUTEX_WAIT` until it does; false after `PATIENCE`.
pub fn wait_for(word: &AtomicU32, value: u32) -> bool {
    let start = Instant::now();
    let mut n = 0u32;
    loop {
        let v = word.load(Ordering::Acquire);
        if v == value {
            return true;
        }
        n = n.wrapping_add(1);
        if n.is_multiple_of(64) {
            let waited = start.elapsed();
            if waited > PATIENCE {
                return false;
            }
            if waited > FUTEX_FLOOR_SPIN {
                futex_wait(word, v, PATIENCE);
                continue;
            }
        }
        std::hint::spin_loop();
    }
}

/// A buffer of bytes both processes map (the two-process copy floor of the messages runs): one
/// process copies a message in, the other copies it out.
pub struct Bulk {
    ptr: *mut u8,
    len: usize,
}

impl Bulk {
    /// Maps `path` (`len` bytes), creating it (it must not exist) with `create`.
    pub fn map(path: &Path, len: usize, create: bool) -> std::io::Result<Bulk> {
        Ok(Bulk {
            ptr: map_file(path, len, create)?,
            len,
        })
    }

    /// Copies `src` to the start of the buffer.
    pub fn write_from(&self, src: &[u8]) {
        let n = src.len().min(self.len);
        // SAFETY: the mapping is `len` bytes long and lives as long as self; the other process
        // only reads it between this copy's completion (published by the caller's Release
        // store) and its acknowledgement, so the bytes are not written concurrently.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr, n) }
    }

    /// Copies the start of the buffer into `dst`.
    pub fn read_into(&self, dst: &mut [u8]) {
        let n = dst.len().min(self.len);
        // SAFETY: as for write_from; the writer does not write again before our
        // acknowledgement.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr, dst.as_mut_ptr(), n) }
    }
}

impl Drop for Bulk {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no reference outlives self.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

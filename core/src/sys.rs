//! The few operating-system calls shmring makes: shared-memory objects, futexes and
//! `membarrier`. The rings never call the OS except, through `wait`, to sleep and to wake.

use crate::error::{Error, Result};
use crate::sync::AtomicU32;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::time::Duration;

/// The name of the POSIX shared-memory object of segment `name` (`/dev/shm/shmring-<name>`).
pub(crate) fn object_name(name: &str) -> CString {
    CString::new(format!("/shmring-{name}")).expect("segment names are validated to have no NUL")
}

/// Creates a new shared-memory object with exactly the permission bits `mode` (the umask does
/// not apply). Fails with `AlreadyExists` if one of that name exists.
pub(crate) fn shm_create(name: &str, mode: u32) -> Result<OwnedFd> {
    let obj = object_name(name);
    let perm = Mode::from_bits_truncate(mode as nix::libc::mode_t);
    let fd = nix::sys::mman::shm_open(
        obj.as_c_str(),
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL,
        perm,
    )
    .map_err(|e| Error::os(format!("creating shared-memory object {obj:?}"), e))?;
    if let Err(e) = nix::sys::stat::fchmod(&fd, perm) {
        let _ = nix::sys::mman::shm_unlink(obj.as_c_str());
        return Err(Error::os(format!("setting mode {mode:o} on {obj:?}"), e));
    }
    Ok(fd)
}

/// Opens an existing shared-memory object for reading and writing.
pub(crate) fn shm_open(name: &str) -> Result<OwnedFd> {
    let obj = object_name(name);
    nix::sys::mman::shm_open(obj.as_c_str(), OFlag::O_RDWR, Mode::empty())
        .map_err(|e| Error::os(format!("opening shared-memory object {obj:?}"), e))
}

/// Removes the name of a shared-memory object; existing mappings stay valid.
pub(crate) fn shm_unlink(name: &str) -> Result<()> {
    let obj = object_name(name);
    nix::sys::mman::shm_unlink(obj.as_c_str())
        .map_err(|e| Error::os(format!("removing shared-memory object {obj:?}"), e))
}

/// An anonymous shared-memory file (`memfd_create`), shared with forked children and passable
/// by file descriptor.
pub(crate) fn memfd() -> Result<OwnedFd> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    memfd_create(c"shmring", MFdFlags::MFD_CLOEXEC)
        .map_err(|e| Error::os("creating an anonymous shared-memory file", e))
}

/// Sets the size of a freshly created object.
pub(crate) fn set_len(fd: &OwnedFd, len: usize) -> Result<()> {
    let len = nix::libc::off_t::try_from(len)
        .map_err(|_| Error::InvalidArgument(format!("segment size {len} is too large")))?;
    nix::unistd::ftruncate(fd, len).map_err(|e| Error::os("sizing shared-memory object", e))
}

/// The size of an object.
pub(crate) fn file_len(fd: &OwnedFd) -> Result<usize> {
    let st =
        nix::sys::stat::fstat(fd).map_err(|e| Error::os("inspecting shared-memory object", e))?;
    Ok(usize::try_from(st.st_size).unwrap_or(0))
}

/// The size of a memory page.
pub(crate) fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |v| v as usize)
}

/// This process's id.
pub(crate) fn pid() -> u32 {
    std::process::id()
}

/// Nanoseconds since the Unix epoch.
pub(crate) fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Why `futex_wait` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FutexWait {
    /// Woken, interrupted by a signal, or the word no longer held the expected value.
    Returned,
    /// The timeout elapsed.
    TimedOut,
}

/// Sleeps while `*word == expected`, at most `timeout` (forever if `None`). Uses FUTEX_WAIT
/// without FUTEX_PRIVATE_FLAG, since waker and sleeper may be different processes.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> FutexWait {
    let ts = timeout.map(|d| nix::libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as nix::libc::time_t,
        tv_nsec: d.subsec_nanos() as nix::libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const nix::libc::timespec);
    // SAFETY: `word` is a live, 4-aligned 32-bit atomic (in shared memory or not); the kernel
    // only reads it. `ts_ptr` is null or points to a timespec that outlives the call.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_futex,
            word.as_ptr(),
            nix::libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if r == -1 && Errno::last() == Errno::ETIMEDOUT {
        FutexWait::TimedOut
    } else {
        FutexWait::Returned
    }
}

/// Wakes every thread sleeping on `word`, in any process.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: as in futex_wait; FUTEX_WAKE does not touch the word's value.
    unsafe {
        nix::libc::syscall(
            nix::libc::SYS_futex,
            word.as_ptr(),
            nix::libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<nix::libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

const MEMBARRIER_CMD_GLOBAL_EXPEDITED: nix::libc::c_long = 1 << 1;
const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: nix::libc::c_long = 1 << 2;

fn membarrier(cmd: nix::libc::c_long) -> bool {
    // SAFETY: membarrier takes two integers and touches no memory of ours.
    unsafe { nix::libc::syscall(nix::libc::SYS_membarrier, cmd, 0 as nix::libc::c_long) == 0 }
}

/// Registers this process for `MEMBARRIER_CMD_GLOBAL_EXPEDITED`: from now on, another process's
/// `membarrier_global()` makes this process's running threads execute a full memory barrier.
pub(crate) fn membarrier_register() -> bool {
    membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED)
}

/// Makes every running thread of every registered process execute a full memory barrier,
/// returning once they all have (Linux 4.16+).
pub(crate) fn membarrier_global() -> bool {
    membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)
}

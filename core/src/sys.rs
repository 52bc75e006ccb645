//! The few operating-system calls shmring makes: shared-memory objects, futexes and
//! `membarrier`. The rings never call the OS except, through `wait`, to sleep and to wake.

use crate::error::{Error, Result};
use crate::sync::AtomicU32;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::ffi::{CStr, CString};
use std::os::fd::OwnedFd;
use std::time::Duration;

/// The name of the POSIX shared-memory object of segment `name` (`/dev/shm/shmring-<name>`).
pub(crate) fn object_name(name: &str) -> CString {
    CString::new(format!("/shmring-{name}")).expect("segment names are validated to have no NUL")
}

/// Creates a new shared-memory object `obj` (`/name`) with exactly the permission bits `mode`
/// (the umask does not apply). Fails with `AlreadyExists` if one of that name exists.
pub(crate) fn shm_create(obj: &CStr, mode: u32) -> Result<OwnedFd> {
    let perm = Mode::from_bits_truncate(mode as nix::libc::mode_t);
    let fd = nix::sys::mman::shm_open(obj, OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL, perm)
        .map_err(|e| Error::os(format!("creating shared-memory object {obj:?}"), e))?;
    if let Err(e) = nix::sys::stat::fchmod(&fd, perm) {
        let _ = nix::sys::mman::shm_unlink(obj);
        return Err(Error::os(format!("setting mode {mode:o} on {obj:?}"), e));
    }
    Ok(fd)
}

/// Opens an existing shared-memory object for reading and writing.
pub(crate) fn shm_open(obj: &CStr) -> Result<OwnedFd> {
    nix::sys::mman::shm_open(obj, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| Error::os(format!("opening shared-memory object {obj:?}"), e))
}

/// Removes the name of a shared-memory object; existing mappings stay valid.
pub(crate) fn shm_unlink(obj: &CStr) -> Result<()> {
    nix::sys::mman::shm_unlink(obj)
        .map_err(|e| Error::os(format!("removing shared-memory object {obj:?}"), e))
}

/// The names (without the leading `/`) of the shared-memory objects that start with `prefix`.
pub(crate) fn shm_list(prefix: &str) -> Result<Vec<String>> {
    let dir = std::fs::read_dir("/dev/shm")
        .map_err(|e| Error::os("listing /dev/shm (shmring needs it mounted as a tmpfs)", e))?;
    Ok(dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect())
}

/// This process's effective user id.
pub(crate) fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// This process's effective group id.
pub(crate) fn egid() -> u32 {
    nix::unistd::getegid().as_raw()
}

/// What `/proc/<pid>/stat` says of a process: its start time (clock ticks since boot) and
/// whether it has exited (a zombie, or gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 22, `starttime`.
    pub start_time: u64,
    /// State `Z` or `X`: the process has exited and is waiting to be reaped.
    pub exited: bool,
}

/// Reads `/proc/<pid>/stat`; `None` if there is no such process.
pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&text)
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may
/// hold spaces and parentheses itself, so the fields are counted from the last `)`.
fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?; // field 3
    let start_time = fields.nth(18)?.parse().ok()?; // field 22
    Some(ProcStat {
        start_time,
        exited: matches!(state, "Z" | "X" | "x"),
    })
}

/// This process's start time (clock ticks since boot), or zero if `/proc` cannot tell.
pub(crate) fn own_start_time() -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *START.get_or_init(|| proc_stat(pid()).map_or(0, |s| s.start_time))
}

/// A pidfd for process `pid` (`pidfd_open`), readable once the process has exited.
pub(crate) fn pidfd_open(pid: u32) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid as nix::libc::pid_t, 0) };
    if fd < 0 {
        return Err(Error::os(
            format!("pidfd_open({pid})"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as std::os::fd::RawFd) })
}

/// Whether the process of a pidfd has exited (its pidfd is readable), without waiting.
pub(crate) fn pidfd_exited(fd: &OwnedFd) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// An anonymous shared-memory file (`memfd_create`) named `name` (shown in
/// `/proc/<pid>/fd` as `/memfd:<name> (deleted)`), that can be sealed; shared with forked
/// children and passable by file descriptor.
pub(crate) fn memfd_sealable(name: &CStr) -> Result<OwnedFd> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    // Not executable, ever (Linux 6.3+; required where `vm.memfd_noexec` is 2): nobody can
    // make a segment a program. Older kernels do not know the flag (EINVAL).
    let noexec = MFdFlags::from_bits_retain(nix::libc::MFD_NOEXEC_SEAL);
    match memfd_create(name, flags | noexec) {
        Err(Errno::EINVAL) => memfd_create(name, flags),
        r => r,
    }
    .map_err(|e| Error::os("creating an anonymous shared-memory file", e))
}

/// The seals every sealed segment carries: its size can neither shrink nor grow, and the
/// seals cannot change.
pub(crate) const SEGMENT_SEALS: i32 =
    nix::libc::F_SEAL_SHRINK | nix::libc::F_SEAL_GROW | nix::libc::F_SEAL_SEAL;

/// Seals a sized memfd with [`SEGMENT_SEALS`]: from now on `ftruncate` and growing
/// `fallocate` fail with `EPERM` for every holder of a descriptor, root included.
pub(crate) fn seal(fd: &OwnedFd) -> Result<()> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    fcntl(
        fd,
        FcntlArg::F_ADD_SEALS(SealFlag::from_bits_truncate(SEGMENT_SEALS)),
    )
    .map(drop)
    .map_err(|e| Error::os("sealing a segment against shrinking", e))
}

/// The seals of a file (`F_GET_SEALS`); `EINVAL` for a file that is not a memfd.
pub(crate) fn seals(fd: &OwnedFd) -> Result<i32> {
    use nix::fcntl::{FcntlArg, fcntl};
    fcntl(fd, FcntlArg::F_GET_SEALS).map_err(|e| Error::os("reading a segment's seals", e))
}

/// Sets the permission bits of an open file.
pub(crate) fn fchmod(fd: &OwnedFd, mode: u32) -> Result<()> {
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode as nix::libc::mode_t))
        .map_err(|e| Error::os(format!("setting mode {mode:o} on a segment"), e))
}

/// What identifies an open file, and who owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub uid: u32,
    /// A regular file (memfds and shared-memory objects are).
    pub regular: bool,
}

fn file_id_of(st: &nix::sys::stat::FileStat) -> FileId {
    FileId {
        dev: st.st_dev,
        ino: st.st_ino,
        uid: st.st_uid,
        regular: st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFREG,
    }
}

/// The identity of an open file (`fstat`).
pub(crate) fn file_id(fd: &OwnedFd) -> Result<FileId> {
    nix::sys::stat::fstat(fd)
        .map(|st| file_id_of(&st))
        .map_err(|e| Error::os("inspecting a segment descriptor", e))
}

/// The name of a memfd, as given to `memfd_create` (from `/proc/self/fd`); `None` if the
/// descriptor is not a memfd or `/proc` cannot tell.
pub(crate) fn memfd_name(fd: &OwnedFd) -> Option<String> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    parse_memfd_link(link.to_str()?).map(str::to_string)
}

/// `/memfd:<name> (deleted)` to `<name>`.
fn parse_memfd_link(link: &str) -> Option<&str> {
    link.strip_prefix("/memfd:")?.strip_suffix(" (deleted)")
}

/// A copy of descriptor `target` of the process of `pidfd` (`pidfd_getfd`): the very open file
/// description that process holds, whatever its `/proc/<pid>/fd/<n>` link says by then. Needs
/// the right to ptrace the process (root, or the same user): `EPERM` otherwise.
pub(crate) fn pidfd_getfd(pidfd: &OwnedFd, target: i32) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number in that process and flags (zero),
    // and returns a new descriptor (close-on-exec) or -1.
    let fd = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_pidfd_getfd,
            pidfd.as_raw_fd(),
            target,
            0 as nix::libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as std::os::fd::RawFd) })
}

/// The memfds whose names start with `prefix` held by the processes this one may inspect
/// (`/proc/<pid>/fd`: every process for root, its own user's otherwise), one descriptor per
/// distinct file owned by this process's user, with the rest of each name after `prefix`.
///
/// A coordinator that restarts finds the segments its predecessor created (sealed memfds that
/// have no name in `/dev/shm`) in the processes still using them. A candidate (its link names
/// such a memfd) is copied out of the process with `pidfd_getfd`, never opened by its
/// `/proc/<pid>/fd/<n>` path: the process could put another file (a device, say) at that number
/// between the look and the open, and a root coordinator would open that file read-write (found
/// in review of step 5). The copy is what is checked: a regular file owned by this user (a
/// process of another user can make a memfd of any name, but not one owned by this user) whose
/// memfd name, read from this process's own `/proc/self/fd`, has the prefix. A process whose
/// descriptors cannot be copied (`pidfd_getfd` refused) is skipped.
pub(crate) fn memfds_in_processes(prefix: &str) -> Vec<(String, OwnedFd)> {
    use std::os::fd::AsRawFd;
    let euid = euid();
    let mut seen = std::collections::HashSet::new();
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue; // gone, or not ours to inspect
        };
        // Opened at the first candidate: most processes hold none.
        let mut pidfd: Option<Option<OwnedFd>> = None;
        for f in fds.flatten() {
            let Some(n) = f.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(link) = std::fs::read_link(f.path()) else {
                continue;
            };
            if !link
                .to_str()
                .and_then(parse_memfd_link)
                .is_some_and(|l| l.starts_with(prefix))
            {
                continue;
            }
            let Some(pfd) = pidfd.get_or_insert_with(|| pidfd_open(pid).ok()) else {
                break; // exited
            };
            let fd = match pidfd_getfd(pfd, n) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(nix::libc::EBADF) => continue, // closed since
                Err(_) => break, // not ours to copy from (EPERM), or gone (ESRCH)
            };
            let Ok(id) = file_id(&fd) else {
                continue;
            };
            if !id.regular || id.uid != euid || seen.contains(&(id.dev, id.ino)) {
                continue;
            }
            // The name of the file copied, not of whatever the link showed a moment before.
            let Ok(copied) = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) else {
                continue;
            };
            let Some(rest) = copied
                .to_str()
                .and_then(parse_memfd_link)
                .and_then(|l| l.strip_prefix(prefix))
            else {
                continue;
            };
            seen.insert((id.dev, id.ino));
            found.push((rest.to_string(), fd));
        }
    }
    found
}

/// Sets the size of a freshly created object.
///
/// The memory is allocated now (`fallocate`), not on first touch: a tmpfs too full for the
/// segment fails here with an error, where a sparse file would kill a process with SIGBUS on
/// the first access to a page that cannot be had.
pub(crate) fn set_len(fd: &OwnedFd, len: usize) -> Result<()> {
    use nix::fcntl::{FallocateFlags, fallocate};
    let bytes = nix::libc::off_t::try_from(len)
        .map_err(|_| Error::InvalidArgument(format!("segment size {len} is too large")))?;
    match fallocate(fd, FallocateFlags::empty(), 0, bytes) {
        Ok(()) => Ok(()),
        Err(Errno::ENOSPC | Errno::ENOMEM) => Err(Error::Unavailable(format!(
            "no room for a segment of {len} bytes (a named segment: see `df -h /dev/shm`; a \
             coordinator's: its memory limit)"
        ))),
        Err(Errno::EOPNOTSUPP) => nix::unistd::ftruncate(fd, bytes)
            .map_err(|e| Error::os("sizing shared-memory object", e)),
        Err(e) => Err(Error::os("allocating shared-memory object", e)),
    }
}

/// Frees the memory of bytes `offset..offset + len` of an object, keeping its size: a later
/// read of them sees zeros. Allowed on a sealed memfd (its seals forbid growing and
/// shrinking, not punching holes).
pub(crate) fn punch_hole(fd: &OwnedFd, offset: usize, len: usize) -> Result<()> {
    use nix::fcntl::{FallocateFlags, fallocate};
    let off = nix::libc::off_t::try_from(offset)
        .map_err(|_| Error::InvalidArgument(format!("offset {offset} is too large")))?;
    let bytes = nix::libc::off_t::try_from(len)
        .map_err(|_| Error::InvalidArgument(format!("length {len} is too large")))?;
    fallocate(
        fd,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        off,
        bytes,
    )
    .map_err(|e| Error::os("freeing the memory of a deleted segment", e))
}

/// The size of an object.
pub(crate) fn file_len(fd: &OwnedFd) -> Result<usize> {
    let st =
        nix::sys::stat::fstat(fd).map_err(|e| Error::os("inspecting shared-memory object", e))?;
    Ok(usize::try_from(st.st_size).unwrap_or(0))
}

/// Reads exactly `buf.len()` bytes at `offset` of a file.
pub(crate) fn pread_exact(fd: &OwnedFd, buf: &mut [u8], offset: usize) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let at = nix::libc::off_t::try_from(offset + done)
            .map_err(|_| Error::InvalidArgument("offset too large".into()))?;
        match nix::sys::uio::pread(fd, &mut buf[done..], at) {
            Ok(0) => {
                return Err(Error::Unavailable(
                    "the shared-memory object is shorter than its header".into(),
                ));
            }
            Ok(n) => done += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::os("reading a segment header", e)),
        }
    }
    Ok(())
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

/// The credentials of the process at the other end of a Unix socket, as the kernel recorded
/// them when it connected (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeerCred {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The peer's credentials.
pub(crate) fn peer_cred(sock: &impl std::os::fd::AsFd) -> Result<PeerCred> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let c = getsockopt(sock, PeerCredentials)
        .map_err(|e| Error::os("reading a client's credentials (SO_PEERCRED)", e))?;
    Ok(PeerCred {
        pid: c.pid() as u32,
        uid: c.uid(),
        gid: c.gid(),
    })
}

/// A pidfd for the peer process: `SO_PEERPIDFD` (Linux 6.5+, immune to pid reuse), else
/// `pidfd_open` of the `SO_PEERCRED` pid.
pub(crate) fn peer_pidfd(sock: &impl std::os::fd::AsFd, pid: u32) -> Result<OwnedFd> {
    use nix::sys::socket::{getsockopt, sockopt::PeerPidfd};
    match getsockopt(sock, PeerPidfd) {
        Ok(fd) => Ok(fd),
        Err(_) => pidfd_open(pid),
    }
}

/// The bytes waiting in a socket's receive queue (`FIONREAD`, that is `SIOCINQ`); `None` if
/// they cannot be read. On a Unix stream socket a descriptor in flight always travels with at
/// least one byte: zero means none is in flight.
pub(crate) fn unread_bytes(sock: &impl std::os::fd::AsFd) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer given, which outlives the call; the
    // descriptor is borrowed, so it stays open for the call.
    let r = unsafe { libc::ioctl(sock.as_fd().as_raw_fd(), libc::FIONREAD, &mut queued) };
    if r == 0 {
        usize::try_from(queued).ok()
    } else {
        None
    }
}

/// The supplementary groups of process `pid` (`Groups:` of `/proc/<pid>/status`); empty if
/// they cannot be read.
pub(crate) fn supplementary_groups(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("Groups:"))?;
            Some(
                line["Groups:".len()..]
                    .split_ascii_whitespace()
                    .filter_map(|g| g.parse().ok())
                    .collect(),
            )
        })
        .unwrap_or_default()
}

/// Connects to the Unix stream socket at `path`, giving up after `timeout` (a coordinator
/// whose backlog is full makes a plain connect wait indefinitely).
pub(crate) fn connect_unix(
    path: &std::path::Path,
    timeout: Duration,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    use std::os::fd::AsRawFd;
    let addr = UnixAddr::new(path)?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {
                let stream = std::os::unix::net::UnixStream::from(fd);
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            // A full backlog: try again until the deadline.
            Err(Errno::EAGAIN) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(Errno::EAGAIN) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the coordinator's backlog stayed full",
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends `bytes` on a stream socket without blocking and without SIGPIPE, with `fd` as
/// `SCM_RIGHTS` ancillary data if given. Returns how many bytes went out.
pub(crate) fn send_nonblocking(
    sock: &impl std::os::fd::AsRawFd,
    bytes: &[u8],
    fd: Option<std::os::fd::RawFd>,
) -> std::io::Result<usize> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let iov = [std::io::IoSlice::new(bytes)];
    let fds: Vec<std::os::fd::RawFd> = fd.into_iter().collect();
    let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &cmsgs,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(std::io::Error::from)
}

/// Sends all of `bytes` on a stream socket with `fd` as `SCM_RIGHTS` ancillary data on the
/// first byte, blocking as the socket is set (its send timeout applies), without SIGPIPE.
pub(crate) fn send_all_with_fd(
    sock: &impl std::os::fd::AsRawFd,
    bytes: &[u8],
    fd: std::os::fd::RawFd,
) -> std::io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let fds = [fd];
    let cmsgs = [ControlMessage::ScmRights(&fds)];
    let n = loop {
        let iov = [std::io::IoSlice::new(bytes)];
        match sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => break n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    };
    send_all(sock, &bytes[n..])
}

/// Sends all of `bytes` on a stream socket, blocking as the socket is set (its send timeout
/// applies), without SIGPIPE if the peer is gone.
pub(crate) fn send_all(sock: &impl std::os::fd::AsRawFd, mut bytes: &[u8]) -> std::io::Result<()> {
    use nix::sys::socket::{MsgFlags, send};
    while !bytes.is_empty() {
        match send(sock.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Most descriptors one `SCM_RIGHTS` message may carry (the kernel's `SCM_MAX_FD`).
pub(crate) const SCM_MAX_FD: usize = 253;

/// Receives into `buf` from a stream socket (blocking as the socket is set), collecting any
/// descriptors sent as `SCM_RIGHTS` into `fds` (close-on-exec). Returns the bytes read.
///
/// There is room for as many descriptors as one message can carry: descriptors that do not fit
/// are closed by the kernel in the receiving thread, and the last close of a file a hostile
/// peer chose (a TCP socket lingering on unsent data, a file on a FUSE mount) can block that
/// thread indefinitely. The coordinator closes what it does not keep on a thread of its own.
pub(crate) fn recv_with_fds(
    sock: &impl std::os::fd::AsRawFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> std::io::Result<usize> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{FromRawFd, RawFd};
    let mut space = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let n = msg.bytes;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for r in raw {
                // SAFETY: the kernel installed this descriptor in our table for this message;
                // nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    Ok(n)
}

/// Takes an exclusive, non-blocking `flock` on `file`; `None` if another process holds it.
pub(crate) fn try_lock(file: std::fs::File) -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    use nix::fcntl::{Flock, FlockArg};
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(l)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(Error::os("locking the namespace", e)),
    }
}

/// Asks the allocator to return freed memory to the system (glibc keeps it otherwise).
pub(crate) fn trim_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether this process may search (`exec`) directory `path`, or write `path` with `write`:
/// `access(2)`, for telling a user which part of a path refuses them.
pub(crate) fn may_access(path: &std::path::Path, write: bool) -> bool {
    let how = if write {
        nix::unistd::AccessFlags::W_OK
    } else {
        nix::unistd::AccessFlags::X_OK
    };
    nix::unistd::access(path, how).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_of_odd_command_names() {
        let line =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let s = parse_proc_stat(line).unwrap();
        assert_eq!(s.start_time, 987654);
        assert!(!s.exited);
        let zombie = "77 (x) Z 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 55 0 0";
        assert!(parse_proc_stat(zombie).unwrap().exited);
        assert!(parse_proc_stat("garbage").is_none());
    }

    #[test]
    fn memfd_links_parse() {
        assert_eq!(
            parse_memfd_link("/memfd:shmring.ns@0.7.feed (deleted)"),
            Some("shmring.ns@0.7.feed")
        );
        assert_eq!(parse_memfd_link("/dev/shm/shmring-x"), None);
        assert_eq!(parse_memfd_link("/memfd:x"), None);
    }

    #[test]
    fn sealed_memfds_refuse_to_shrink_and_are_found_by_name() {
        let name = format!("shmring-unit-{}.x", pid());
        let fd = memfd_sealable(&CString::new(name.clone()).unwrap()).unwrap();
        set_len(&fd, 8192).unwrap();
        seal(&fd).unwrap();
        assert_eq!(seals(&fd).unwrap() & SEGMENT_SEALS, SEGMENT_SEALS);
        assert_eq!(nix::unistd::ftruncate(&fd, 0), Err(Errno::EPERM));
        assert_eq!(nix::unistd::ftruncate(&fd, 1 << 20), Err(Errno::EPERM));
        assert_eq!(memfd_name(&fd).as_deref(), Some(name.as_str()));
        let found = memfds_in_processes(&format!("shmring-unit-{}.", pid()));
        assert_eq!(found.len(), 1, "one file, however many descriptors");
        assert_eq!(found[0].0, "x");
        assert_eq!(file_id(&found[0].1).unwrap(), file_id(&fd).unwrap());
    }

    #[test]
    fn own_process_is_alive_with_a_start_time() {
        let s = proc_stat(pid()).unwrap();
        assert!(!s.exited);
        assert_eq!(s.start_time, own_start_time());
        assert!(s.start_time > 0);
    }
}

/// `futex2` flag: the futex word is 32 bits wide.
const FUTEX2_SIZE_U32: u32 = 0x02;
/// `futex2` flag: the word is private to this process (the waker thread's control word).
const FUTEX2_PRIVATE: u32 = 128;

/// An io_uring instance whose completion queue is the pollable descriptor of a handle
/// (`pollable.rs`): a `FUTEX_WAIT` request on the watched line's futex word completes when any
/// process wakes that word, which makes the ring's descriptor readable. Linux 6.7+.
pub(crate) struct Uring {
    ring: io_uring::IoUring,
    /// Read by the kernel when a timeout request is submitted.
    timeout: Box<io_uring::types::Timespec>,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("fd", &std::os::fd::AsRawFd::as_raw_fd(&self.ring))
            .finish()
    }
}

impl Uring {
    /// A small ring (a futex wait, a timeout and a no-op are all it ever holds), or why not:
    /// `Unsupported` when the kernel lacks io_uring or its futex requests, or forbids them.
    pub(crate) fn new() -> std::io::Result<Uring> {
        let ring = io_uring::IoUring::builder().build(8)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(io_uring::opcode::FutexWait::CODE) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "io_uring lacks futex requests (Linux 6.7+)",
            ));
        }
        Ok(Uring {
            ring,
            timeout: Box::new(io_uring::types::Timespec::new()),
        })
    }

    /// The descriptor: readable while a completion is queued.
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.ring)
    }

    /// Queues a wait on `word` (shared between processes), which completes when another call
    /// wakes it, or at once if it no longer holds `expected`. False if the queue was full.
    pub(crate) fn push_futex_wait(
        &mut self,
        word: &AtomicU32,
        expected: u32,
        user_data: u64,
    ) -> bool {
        let sqe = io_uring::opcode::FutexWait::new(
            word.as_ptr(),
            u64::from(expected),
            u64::from(u32::MAX), // FUTEX_BITSET_MATCH_ANY
            FUTEX2_SIZE_U32,
        )
        .build()
        .user_data(user_data);
        self.push(&sqe)
    }

    /// Queues a request that completes after `after`. False if the queue was full.
    pub(crate) fn push_timeout(&mut self, after: Duration, user_data: u64) -> bool {
        if self.pending() {
            // The timespec of a timeout still to be submitted must not change under it.
            return false;
        }
        *self.timeout = io_uring::types::Timespec::from(after);
        let ts: *const io_uring::types::Timespec = &*self.timeout;
        let sqe = io_uring::opcode::Timeout::new(ts)
            .build()
            .user_data(user_data);
        self.push(&sqe)
    }

    /// Queues the cancellation of the requests queued with `user_data`. False if the queue was
    /// full.
    pub(crate) fn push_cancel(&mut self, user_data: u64) -> bool {
        let sqe = io_uring::opcode::AsyncCancel::new(user_data)
            .build()
            .user_data(user_data);
        self.push(&sqe)
    }

    /// Queues a request that completes at once (the descriptor becomes readable). False if the
    /// queue was full.
    pub(crate) fn push_nop(&mut self, user_data: u64) -> bool {
        let sqe = io_uring::opcode::Nop::new().build().user_data(user_data);
        self.push(&sqe)
    }

    fn push(&mut self, sqe: &io_uring::squeue::Entry) -> bool {
        // SAFETY: the futex word is in a mapping the caller (`Pollable`) keeps alive longer
        // than the ring (the kernel resolves a shared futex's key when the wait is issued, and
        // never writes the word); the timespec is in `self.timeout`, which is only rewritten
        // when nothing is left to submit (`push_timeout`), and the kernel reads it during the
        // submission.
        unsafe { self.ring.submission().push(sqe) }.is_ok()
    }

    /// Whether requests were pushed and not yet submitted.
    pub(crate) fn pending(&mut self) -> bool {
        !self.ring.submission().is_empty()
    }

    /// Submits what was pushed.
    pub(crate) fn submit(&mut self) -> std::io::Result<()> {
        loop {
            match self.ring.submit() {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                r => return r.map(drop),
            }
        }
    }

    /// Takes every queued completion, passing each one's user data and result to `f`.
    pub(crate) fn reap(&mut self, mut f: impl FnMut(u64, i32)) {
        for cqe in self.ring.completion() {
            f(cqe.user_data(), cqe.result());
        }
    }
}

/// A non-blocking, close-on-exec eventfd.
pub(crate) fn eventfd() -> std::io::Result<OwnedFd> {
    nix::sys::eventfd::EventFd::from_flags(
        nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
    )
    .map(OwnedFd::from)
    .map_err(std::io::Error::from)
}

/// Makes an eventfd readable.
pub(crate) fn eventfd_signal(fd: &OwnedFd) {
    // EAGAIN (the counter at its maximum) leaves it readable, which is all that is wanted.
    let _ = nix::unistd::write(fd, &1u64.to_ne_bytes());
}

/// Empties an eventfd (it stops being readable); whether it was readable.
pub(crate) fn eventfd_drain(fd: &OwnedFd) -> bool {
    let mut buf = [0u8; 8];
    nix::unistd::read(fd, &mut buf).is_ok()
}

/// One word of a [`futex_waitv`] call.
#[derive(Clone, Copy)]
pub(crate) struct FutexWaitv {
    pub word: *const AtomicU32,
    pub expected: u32,
    /// The word is private to this process (else shared between processes).
    pub private: bool,
}

/// Sleeps until one of `words` is woken, one no longer holds its expected value, or the
/// monotonic clock reaches `deadline` (Linux 5.16+). At most 128 words. `Err(ENOSYS)` when the
/// kernel lacks the call.
pub(crate) fn futex_waitv(words: &[FutexWaitv], deadline: std::time::Instant) -> Result<(), Errno> {
    #[repr(C)]
    struct Waitv {
        val: u64,
        uaddr: u64,
        flags: u32,
        reserved: u32,
    }
    let v: Vec<Waitv> = words
        .iter()
        .map(|w| Waitv {
            val: u64::from(w.expected),
            uaddr: w.word as u64,
            flags: FUTEX2_SIZE_U32 | if w.private { FUTEX2_PRIVATE } else { 0 },
            reserved: 0,
        })
        .collect();
    let now = std::time::Instant::now();
    let left = deadline.saturating_duration_since(now);
    let mut ts = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut ts) };
    let at = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32) + left;
    let abs = nix::libc::timespec {
        tv_sec: at.as_secs() as nix::libc::time_t,
        tv_nsec: at.subsec_nanos() as nix::libc::c_long,
    };
    // SAFETY: `v` is an array of `futex_waitv` structs as the kernel defines them, naming words
    // that the caller keeps mapped for the call (the kernel only reads them); `abs` outlives
    // the call.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_futex_waitv,
            v.as_ptr(),
            v.len() as nix::libc::c_uint,
            0 as nix::libc::c_uint,
            &abs as *const nix::libc::timespec,
            nix::libc::CLOCK_MONOTONIC,
        )
    };
    if r == -1 { Err(Errno::last()) } else { Ok(()) }
}

/// Wakes every thread of this process sleeping on a private futex word.
pub(crate) fn futex_wake_private(word: &AtomicU32) {
    // SAFETY: as in futex_wake_all.
    unsafe {
        nix::libc::syscall(
            nix::libc::SYS_futex,
            word.as_ptr(),
            nix::libc::FUTEX_WAKE | nix::libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
            std::ptr::null::<nix::libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

//! The C ABI of shmring: thin, panic-safe wrappers over the `shmring` crate, built as
//! `libshmring.so` and `libshmring.a`, described by `include/shmring.h` (generated from this
//! source by cbindgen: the doc comments here are the header's).
//!
//! Conventions, after rustls-ffi: opaque handles; every fallible function returns a
//! `shmring_status` and runs inside a panic boundary; NULL arguments are reported, never
//! dereferenced; every `_close`/`_stop` accepts NULL; `shmring_last_error()` gives the calling
//! thread's last failure in words. Each handle starts with a tag, checked on every call, so that
//! passing one kind of handle where another is expected (or a closed one whose memory was not
//! reused yet) is reported as `SHMRING_INVALID_ARGUMENT` instead of corrupting memory.

#![allow(non_camel_case_types)]
// Every entry point takes raw pointers from C and documents in its header comment what it
// requires of them: the `# Safety` sections of a Rust API do not apply to a C audience.
#![allow(clippy::missing_safety_doc)]

mod status;

pub use status::*;

use shmring_core::{
    ChannelConfig, Client, Consumer, Coordinator, CoordinatorConfig, DetachedClaim, DetachedFrame,
    Error, GroupConsumer, KeyedProducer, Kind, Overflow, Producer, WaitStrategy,
};
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Major version of libshmring.
pub const SHMRING_VERSION_MAJOR: u32 = 0;
/// Minor version of libshmring.
pub const SHMRING_VERSION_MINOR: u32 = 1;
/// Patch version of libshmring.
pub const SHMRING_VERSION_PATCH: u32 = 0;
/// Version of the ABI described by this header; `shmring_abi_version()` returns the library's.
/// A program built against one ABI version needs a library of the same. Version 2 added
/// broadcast channels and the `overflow` and `history` fields of `shmring_channel_config`;
/// version 3 its `max_message_size` field; version 4 the `resizes`, `draining_generation` and
/// `draining_depth` fields of `shmring_stats`.
pub const SHMRING_ABI_VERSION: u32 = 5;

/// A channel kind: `SHMRING_SPSC`, `SHMRING_MPMC` or `SHMRING_BROADCAST`.
pub type shmring_kind = u32;
/// One producer, one consumer, variable-length frames.
pub const SHMRING_SPSC: shmring_kind = 1;
/// Many producers and consumers, fixed-size slots, each frame to exactly one consumer.
pub const SHMRING_MPMC: shmring_kind = 2;
/// One producer, up to `max_consumers` subscribers, fixed-size slots, every frame to every
/// subscriber (each frame published after a subscriber opened reaches it, in order).
pub const SHMRING_BROADCAST: shmring_kind = 3;

/// What the producer of a broadcast channel does when its ring is full:
/// `SHMRING_OVERFLOW_BLOCK` or `SHMRING_OVERFLOW_DROP_OLDEST`.
pub type shmring_overflow = u32;
/// Lossless (the default): the producer waits for the slowest live subscriber, as any send
/// waits for room (`SHMRING_WOULD_BLOCK` with timeout 0, `SHMRING_TIMED_OUT` after a timeout).
/// A subscriber that dies stops holding it back as soon as the coordinator sees the death.
pub const SHMRING_OVERFLOW_BLOCK: shmring_overflow = 0;
/// The producer never waits: it overwrites the oldest frame. A subscriber that was lapped skips
/// to the oldest intact frame; `shmring_consumer_missed` counts exactly what it missed, and a
/// frame overwritten while being read is counted there, never delivered damaged. On such a
/// channel `shmring_read` hands out a checked copy held by the consumer (valid until
/// `shmring_release`), not the bytes in the ring.
pub const SHMRING_OVERFLOW_DROP_OLDEST: shmring_overflow = 1;

/// How a blocking call waits: `SHMRING_WAIT_SPIN`, `SHMRING_WAIT_YIELD` or `SHMRING_WAIT_PARK`.
pub type shmring_wait = u32;
/// Poll continuously: the lowest latency, one core kept busy.
pub const SHMRING_WAIT_SPIN: shmring_wait = 0;
/// Poll, then `sched_yield` between polls.
pub const SHMRING_WAIT_YIELD: shmring_wait = 1;
/// Spin briefly, then sleep on a futex until woken (the default): no CPU while idle.
pub const SHMRING_WAIT_PARK: shmring_wait = 2;

/// `shmring_frame.flags` bit: the frame was handed to a consumer that died before releasing
/// it; this consumer may be seeing it a second time.
pub const SHMRING_FRAME_REDELIVERED: u32 = 1;

/// The shape of a channel. Fill it with `shmring_channel_config_default`, then change what you
/// need.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct shmring_channel_config {
    /// `SHMRING_SPSC`, `SHMRING_MPMC` or `SHMRING_BROADCAST`.
    pub kind: shmring_kind,
    /// Bytes of frame storage, rounded up to a power of two (MPMC and broadcast: divided into
    /// slots of max_frame_size, a power of two of them).
    pub capacity: u64,
    /// The largest frame, in bytes: at least 1, and `capacity` must hold two of them.
    pub max_frame_size: u32,
    /// Permission bits, as for a file (e.g. 0600: the owner only; 0666: everyone).
    pub mode: u32,
    /// Producers admitted at once (SPSC and broadcast: 1).
    pub max_producers: u32,
    /// Consumers (broadcast: subscribers) admitted at once (SPSC: 1).
    pub max_consumers: u32,
    /// Broadcast: `SHMRING_OVERFLOW_BLOCK` (0, the default) or `SHMRING_OVERFLOW_DROP_OLDEST`;
    /// other kinds: 0.
    pub overflow: shmring_overflow,
    /// Broadcast: a new subscriber first receives up to this many of the most recent frames
    /// still in the ring, then live ones (default 0; below the slot count); other kinds: 0.
    pub history: u32,
    /// The largest message, in bytes (0, the default: `max_frame_size`). SPSC and broadcast:
    /// `shmring_send` splits a message longer than `max_frame_size` into records, however
    /// small the ring, and `shmring_recv` returns it whole. MPMC: such a message goes whole
    /// to one consumer through the channel's message pool (as many chunks as two of the largest
    /// messages take, beside the slots; `max_frame_size` at least 24). See `shmring_send`.
    pub max_message_size: u64,
    /// Partitions (0 or 1: not partitioned; SPSC only). A partitioned channel is this many
    /// SPSC rings of this shape: `shmring_send_keyed` puts a frame in the partition of its key
    /// (`shmring_partition_of`), and a consumer group reads it (`shmring_consumer_open_group`).
    pub partitions: u32,
    /// A partitioned channel: bytes of state a checkpoint of each partition holds (0: 64 KiB);
    /// other channels: 0. See `shmring_checkpoint_commit`.
    pub checkpoint_size: u32,
}

/// A frame lent by `shmring_read`: `len` bytes at `data` (in shared memory, read-only), valid
/// until `shmring_release` on the same consumer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct shmring_frame {
    /// The frame's bytes.
    pub data: *const c_void,
    /// Its length (may be 0).
    pub len: usize,
    /// `SHMRING_FRAME_*` bits.
    pub flags: u32,
    /// The partition it came from (a consumer-group member's frames); 0 otherwise.
    pub partition: u32,
}

/// A channel's counters, as `shmring_channel_stats` reads them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct shmring_stats {
    /// `SHMRING_SPSC`, `SHMRING_MPMC` or `SHMRING_BROADCAST`.
    pub kind: shmring_kind,
    /// The largest frame.
    pub max_frame_size: u32,
    /// Bytes of frame storage.
    pub capacity: u64,
    /// MPMC and broadcast: number of slots; SPSC: 0.
    pub slots: u64,
    /// Frames waiting (MPMC), bytes waiting, headers and padding included (SPSC), or the
    /// largest lag of a live subscriber (broadcast).
    pub depth: u64,
    /// Frames sent (by every producer that ever held an entry).
    pub frames_in: u64,
    /// Payload bytes sent.
    pub bytes_in: u64,
    /// Frames received.
    pub frames_out: u64,
    /// Payload bytes received.
    pub bytes_out: u64,
    /// Producers admitted now.
    pub producers: u32,
    /// Consumers admitted now.
    pub consumers: u32,
    /// Dead participants whose entries were repaired.
    pub repairs: u64,
    /// Frames delivered again because their consumer died holding them.
    pub redelivered: u64,
    /// Positions a dead producer took and never committed, skipped.
    pub skipped: u64,
    /// The largest message (`max_frame_size` unless the channel splits longer ones).
    pub max_message_size: u64,
    /// Times the channel was resized (`shmring_channel_resize`).
    pub resizes: u64,
    /// While a resize is under way: the generation of the segment being drained (its producers
    /// have not all sent since, or its consumers not taken what is left in it); 0 otherwise.
    pub draining_generation: u64,
    /// What is left in that segment (as `depth` counts it).
    pub draining_depth: u64,
}

/// A coordinator running on a thread of this process (opaque).
pub struct shmring_coordinator {
    _private: [u8; 0],
}

/// A connection to a coordinator (opaque).
pub struct shmring_client {
    _private: [u8; 0],
}

/// The sending end of a channel (opaque).
pub struct shmring_producer {
    _private: [u8; 0],
}

/// The receiving end of a channel (opaque).
pub struct shmring_consumer {
    _private: [u8; 0],
}

const COORDINATOR_TAG: u64 = u64::from_le_bytes(*b"shmrCoor");
const CLIENT_TAG: u64 = u64::from_le_bytes(*b"shmrClnt");
const PRODUCER_TAG: u64 = u64::from_le_bytes(*b"shmrProd");
const CONSUMER_TAG: u64 = u64::from_le_bytes(*b"shmrCons");

/// What a `shmring_coordinator *` points to. The tag comes first in every handle.
#[repr(C)]
struct CoordinatorHandle {
    tag: u64,
    coordinator: Option<Coordinator>,
    socket: CString,
}

#[repr(C)]
struct ClientHandle {
    tag: u64,
    client: Client,
}

#[repr(C)]
struct ProducerHandle {
    tag: u64,
    busy: InUse,
    /// The process that opened it: a child forked afterwards only frees the handle.
    pid: u32,
    state: ProducerState,
}

struct ProducerState {
    /// `None` once finished (`shmring_producer_finish`): the handle waits for its close.
    producer: Option<Producer>,
    /// The producer once finished, kept (never used to send) for the pollable descriptor that
    /// `shmring_producer_fd` handed out, which stays open, and readable, until the close.
    finished: Option<Producer>,
    /// The claim handed to C and not yet committed or aborted: while it is open the producer
    /// must do nothing else (`Producer::claim_detached`'s contract), which every call checks.
    claim: Option<DetachedClaim>,
    /// A partitioned channel's producer (then `producer` is `None`), until finished.
    keyed: Option<KeyedProducer>,
}

#[repr(C)]
struct ConsumerHandle {
    tag: u64,
    busy: InUse,
    /// The process that opened it: a child forked afterwards only frees the handle.
    pid: u32,
    state: ConsumerState,
}

struct ConsumerState {
    /// A plain consumer (`None` for a group member).
    consumer: Option<Consumer>,
    /// A consumer-group member (`shmring_consumer_open_group`).
    group: Option<Box<Member>>,
    /// The frame lent to C and not yet released: while it is held the consumer must receive
    /// nothing else (`Consumer::read_detached`'s contract), which every call checks.
    frame: Option<DetachedFrame>,
}

/// Which call, if any, is inside a producer or consumer handle now: 0 when none, otherwise an
/// address in that call's stack frame (any nonzero mark would do; an address tells the calls
/// of two threads apart in a debugger). A call refuses to start while a mark is there, leaves
/// its own, and takes it away when it returns (also when it panics). Plain loads and stores,
/// no read-modify-write: a call that starts while another thread is inside one is refused,
/// but two calls that start within the same few nanoseconds (both load before either stores)
/// can both go ahead undetected. Checking the mark again on the way out (which would report
/// that case) measured 3-4% of an 8-byte C round trip, against the 2% this check may cost;
/// ARCHITECTURE.md ("Concurrent use of a C handle") has the figures.
#[derive(Debug, Default)]
struct InUse(AtomicUsize);

impl InUse {
    /// Leaves mark `me` if no call is inside; false if one is.
    #[inline(always)]
    fn enter(&self, me: usize) -> bool {
        // Relaxed: the mark orders nothing; it only has to be seen by a later call of another
        // thread, which coherence of this one word gives.
        if self.0.load(Ordering::Relaxed) != 0 {
            return false;
        }
        // Relaxed: as above.
        self.0.store(me, Ordering::Relaxed);
        true
    }

    fn is_free(&self) -> bool {
        // Relaxed: as in `enter`.
        self.0.load(Ordering::Relaxed) == 0
    }
}

/// Takes a call's mark away when the call returns or unwinds.
struct Unmark<'a>(&'a InUse);

impl Drop for Unmark<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        // Relaxed: as in `InUse::enter`.
        self.0.0.store(0, Ordering::Relaxed);
    }
}

#[cold]
#[inline(never)]
fn concurrent(what: &str) -> Error {
    invalid(format!(
        "this {what} is in use by another thread at the same time (the call was refused): a \
         handle is used by one thread at a time; give each thread its own or lock around the \
         calls"
    ))
}

/// Handles whose calls are checked for concurrent use: the mark, and what the calls use.
trait Exclusive {
    const WHAT: &'static str;
    type State;
    fn split(&mut self) -> (&InUse, &mut Self::State);
}

impl Exclusive for ProducerHandle {
    const WHAT: &'static str = "producer";
    type State = ProducerState;
    #[inline(always)]
    fn split(&mut self) -> (&InUse, &mut ProducerState) {
        (&self.busy, &mut self.state)
    }
}

impl Exclusive for ConsumerHandle {
    const WHAT: &'static str = "consumer";
    type State = ConsumerState;
    #[inline(always)]
    fn split(&mut self) -> (&InUse, &mut ConsumerState) {
        (&self.busy, &mut self.state)
    }
}

/// Runs `body` on handle `h` as the only call inside it; a call of another thread made
/// meanwhile is refused with `SHMRING_INVALID_ARGUMENT` (see `InUse`).
#[inline(always)]
fn exclusive<T: Exclusive>(
    h: &mut T,
    body: impl FnOnce(&mut T::State) -> Result<(), Error>,
) -> Result<(), Error> {
    // An address in this call's stack frame: nonzero, and no other thread's frame has it
    // while this call runs.
    let mark = 0u8;
    let me = &raw const mark as usize;
    let (busy, state) = h.split();
    if !busy.enter(me) {
        return Err(concurrent(T::WHAT));
    }
    let _unmark = Unmark(busy);
    body(state)
}

/// Turns a handle pointer from C back into its handle, checking NULL and the tag.
///
/// # Safety
/// `ptr` must be NULL or point to memory readable for 8 bytes; if the tag matches, it must be
/// a live handle of type `T` made by `into_handle` (what the header's contract asks of C).
unsafe fn handle<'a, T>(ptr: *mut c_void, tag: u64, what: &str) -> Result<&'a mut T, Error> {
    if ptr.is_null() {
        return Err(invalid(format!("the {what} is NULL")));
    }
    // SAFETY: non-NULL and readable for the tag (the caller's promise); every handle type is
    // repr(C) with the tag first.
    if unsafe { *(ptr as *const u64) } != tag {
        return Err(invalid(format!(
            "this is not a {what} handle (or one already closed)"
        )));
    }
    // SAFETY: the tag says it is a live `T` made by `into_handle`; C does not use it from two
    // threads at once (the header's contract).
    Ok(unsafe { &mut *(ptr as *mut T) })
}

fn into_handle<T, O>(handle: T) -> *mut O {
    Box::into_raw(Box::new(handle)) as *mut O
}

/// Takes a handle back from C to free it: `None` for NULL or a wrong tag. The tag is cleared
/// first, so that a second close of the same pointer is refused while its memory is not reused.
///
/// # Safety
/// As for `handle`.
unsafe fn take_handle<T>(ptr: *mut c_void, tag: u64) -> Option<Box<T>> {
    // SAFETY: as in `handle`.
    let h = unsafe { handle::<T>(ptr, tag, "handle") }.ok()?;
    // SAFETY: the handle starts with its tag (repr(C)); clearing it before the free.
    unsafe { *(h as *mut T as *mut u64) = 0 };
    // SAFETY: made by `into_handle` (Box::into_raw of a `T`), freed exactly once: the tag is
    // gone now.
    Some(unsafe { Box::from_raw(h as *mut T) })
}

/// A C string argument as UTF-8.
///
/// # Safety
/// `s` must be NULL or a NUL-terminated string.
unsafe fn text<'a>(s: *const c_char, what: &str) -> Result<&'a str, Error> {
    if s.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: a NUL-terminated string (the caller's promise).
    unsafe { CStr::from_ptr(s) }
        .to_str()
        .map_err(|_| invalid(format!("{what} is not UTF-8")))
}

/// Stores through an output pointer, refusing NULL.
///
/// # Safety
/// `out` must be NULL or valid for a write of `T`.
unsafe fn put<T>(out: *mut T, value: T, what: &str) -> Result<(), Error> {
    if out.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and writable (the caller's promise).
    unsafe { out.write(value) };
    Ok(())
}

/// A timeout in nanoseconds: 0 = do not wait (`Some(0)`), negative = forever (`None`).
fn timeout(ns: i64) -> Option<Duration> {
    u64::try_from(ns).ok().map(Duration::from_nanos)
}

fn kind_of(kind: shmring_kind) -> Result<Kind, Error> {
    match kind {
        SHMRING_SPSC => Ok(Kind::Spsc),
        SHMRING_MPMC => Ok(Kind::Mpmc),
        SHMRING_BROADCAST => Ok(Kind::Broadcast),
        k => Err(invalid(format!(
            "channel kind {k} is not SHMRING_SPSC (1), SHMRING_MPMC (2) or SHMRING_BROADCAST (3)"
        ))),
    }
}

fn overflow_of(overflow: shmring_overflow) -> Result<Overflow, Error> {
    Overflow::from_u32(overflow).ok_or_else(|| {
        invalid(format!(
            "overflow policy {overflow} is neither SHMRING_OVERFLOW_BLOCK (0) nor \
             SHMRING_OVERFLOW_DROP_OLDEST (1)"
        ))
    })
}

fn wait_of(wait: shmring_wait) -> Result<WaitStrategy, Error> {
    match wait {
        SHMRING_WAIT_SPIN => Ok(WaitStrategy::Spin),
        SHMRING_WAIT_YIELD => Ok(WaitStrategy::Yield),
        SHMRING_WAIT_PARK => Ok(WaitStrategy::Park),
        w => Err(invalid(format!(
            "wait strategy {w} is not SHMRING_WAIT_SPIN, _YIELD or _PARK"
        ))),
    }
}

fn kind_code(kind: Kind) -> shmring_kind {
    match kind {
        Kind::Spsc => SHMRING_SPSC,
        Kind::Mpmc => SHMRING_MPMC,
        Kind::Broadcast => SHMRING_BROADCAST,
    }
}

// ---------------------------------------------------------------------------------------------
// Library

/// The ABI version of the library (`SHMRING_ABI_VERSION` of the header it was built with).
/// Any thread.
#[unsafe(no_mangle)]
pub extern "C" fn shmring_abi_version() -> u32 {
    SHMRING_ABI_VERSION
}

/// The library's version, e.g. "0.1.0": a static string, never freed. Any thread.
#[unsafe(no_mangle)]
pub extern "C" fn shmring_version() -> *const c_char {
    static VERSION: &CStr = c"0.1.0";
    VERSION.as_ptr()
}

/// The name of a status ("SHMRING_OK", ...; "SHMRING_UNKNOWN_STATUS" for other values): a
/// static string, never freed. Any thread.
#[unsafe(no_mangle)]
pub extern "C" fn shmring_status_name(status: shmring_status) -> *const c_char {
    status::name(status).as_ptr()
}

/// What the calling thread's last failing call reported, in words (an empty string if none has
/// failed). Never NULL. The string belongs to the library and stays valid until this thread's
/// next failing call; copy it to keep it.
#[unsafe(no_mangle)]
pub extern "C" fn shmring_last_error() -> *const c_char {
    status::last_error_ptr()
}

/// Fills every field of `*cfg` with the defaults of `kind`: SPSC: 1 MiB ring, frames up to
/// 64 KiB, mode 0600; MPMC: 1024 slots of 1 KiB, 16 producers and 16 consumers, mode 0600;
/// broadcast: 1024 slots of 1 KiB, one producer, 16 subscribers, `SHMRING_OVERFLOW_BLOCK`, no
/// history, mode 0600. A `kind` that is none of these gets the SPSC defaults with that kind,
/// which `shmring_channel_create` refuses. Does nothing if `cfg` is NULL. Any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_channel_config_default(
    cfg: *mut shmring_channel_config,
    kind: shmring_kind,
) {
    guard_void(|| {
        let d = ChannelConfig::new(kind_of(kind).unwrap_or(Kind::Spsc));
        let value = shmring_channel_config {
            kind,
            capacity: d.capacity,
            max_frame_size: d.max_frame_size,
            mode: d.mode,
            max_producers: d.max_producers,
            max_consumers: d.max_consumers,
            overflow: d.overflow as shmring_overflow,
            history: d.history,
            max_message_size: d.max_message_size,
            partitions: 0,
            checkpoint_size: 0,
        };
        // SAFETY: NULL or writable (the header's contract).
        let _ = unsafe { put(cfg, value, "cfg") };
    })
}

// ---------------------------------------------------------------------------------------------
// Coordinator and client

/// Starts a coordinator on a new thread of this process (no daemon needed), listening on
/// `socket_path`, or on the default socket if NULL (`$XDG_RUNTIME_DIR/shmring/default.sock`,
/// else `/tmp/shmring-<uid>/default.sock`). It serves the namespace named by the
/// `SHMRING_NAMESPACE` environment variable if set, else "default" for the default socket and a
/// namespace of its own for any other, so that coordinators on different sockets never share
/// channels. On success `*out` is the coordinator, to be stopped with `shmring_coordinator_stop`.
/// Fails with `SHMRING_ALREADY_EXISTS` if another coordinator serves that socket or namespace, or
/// if something other than a stale socket of this user is at `socket_path` (it is left
/// untouched), and with `SHMRING_NOT_FOUND` if the socket's directory does not exist.
/// Any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_coordinator_start(
    socket_path: *const c_char,
    out: *mut *mut shmring_coordinator,
) -> shmring_status {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        let socket: Option<PathBuf> = if socket_path.is_null() {
            None
        } else {
            // SAFETY: a NUL-terminated string (the header's contract).
            Some(PathBuf::from(unsafe { text(socket_path, "socket_path") }?))
        };
        let namespace = match std::env::var("SHMRING_NAMESPACE") {
            Ok(ns) if !ns.is_empty() => ns,
            _ => match &socket {
                None => shmring_core::DEFAULT_NAMESPACE.to_string(),
                Some(p) => namespace_of(p),
            },
        };
        let mut config = CoordinatorConfig::new(&namespace);
        config.socket = socket;
        let coordinator = Coordinator::start(config)?;
        let path = coordinator
            .socket_path()
            .as_os_str()
            .as_encoded_bytes()
            .to_vec();
        let socket = CString::new(path).map_err(|_| invalid("socket path holds a NUL"))?;
        let h = into_handle(CoordinatorHandle {
            tag: COORDINATOR_TAG,
            coordinator: Some(coordinator),
            socket,
        });
        // SAFETY: checked non-NULL above; writable (the header's contract).
        unsafe { put(out, h, "out") }
    })
}

/// A namespace of its own for a socket path: "c" and 16 hex digits of a hash of the absolute
/// path.
fn namespace_of(socket: &Path) -> String {
    let abs = std::path::absolute(socket).unwrap_or_else(|_| socket.to_path_buf());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in abs.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("c{h:016x}")
}

/// The socket a coordinator listens on: a string owned by the coordinator, valid until it is
/// stopped. NULL if `coord` is not a coordinator. Any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_coordinator_socket(
    coord: *const shmring_coordinator,
) -> *const c_char {
    let mut p = std::ptr::null();
    let _ = guard(|| {
        // SAFETY: NULL or a handle from shmring_coordinator_start (the header's contract).
        let h: &mut CoordinatorHandle =
            unsafe { handle(coord as *mut c_void, COORDINATOR_TAG, "coordinator") }?;
        p = h.socket.as_ptr();
        Ok(())
    });
    p
}

/// Stops a coordinator and frees it: closes its connections, removes its socket and deletes its
/// channels (their consumers drain what is left, then get `SHMRING_CLOSED`). NULL is ignored.
/// Any thread, once; `coord` is invalid afterwards. In a child forked from the process that
/// started it, only frees the handle's memory: the coordinator goes on serving in the parent.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_coordinator_stop(coord: *mut shmring_coordinator) {
    guard_void(|| {
        // SAFETY: NULL or a handle from shmring_coordinator_start (the header's contract).
        let h = unsafe { take_handle::<CoordinatorHandle>(coord.cast(), COORDINATOR_TAG) };
        if let Some(c) = h.and_then(|mut h| h.coordinator.take()) {
            c.stop();
        }
    })
}

/// Connects to the coordinator listening on `socket_path`; if NULL, on the socket named by the
/// `SHMRING_SOCKET` environment variable, else on the default socket. On success `*out` is the
/// client, to be closed with `shmring_client_close`. `SHMRING_UNAVAILABLE` when no coordinator
/// answers (`shmring_last_error()` says how to start one), `SHMRING_BUSY` when it is at its limit
/// of connections (`shmring_last_error()` names the limit). A client may be used by several
/// threads at once. It belongs to the process that connected it: a child forked afterwards
/// connects its own.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_client_connect(
    socket_path: *const c_char,
    out: *mut *mut shmring_client,
) -> shmring_status {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        let client = if socket_path.is_null() {
            Client::connect(None)?
        } else {
            // SAFETY: a NUL-terminated string (the header's contract).
            let path = unsafe { text(socket_path, "socket_path") }?;
            Client::connect(Some(Path::new(path)))?
        };
        let h = into_handle(ClientHandle {
            tag: CLIENT_TAG,
            client,
        });
        // SAFETY: checked non-NULL above; writable (the header's contract).
        unsafe { put(out, h, "out") }
    })
}

/// Closes a client and frees it. Producers and consumers opened through it stay usable (they
/// keep the connection they need). NULL is ignored. Any thread, once; `client` is invalid
/// afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_client_close(client: *mut shmring_client) {
    guard_void(|| {
        // SAFETY: NULL or a handle from shmring_client_connect (the header's contract).
        drop(unsafe { take_handle::<ClientHandle>(client.cast(), CLIENT_TAG) });
    })
}

/// # Safety
/// `client` must be NULL or a client handle.
unsafe fn client<'a>(client: *mut shmring_client) -> Result<&'a Client, Error> {
    // SAFETY: as the header requires of `client`.
    Ok(&unsafe { handle::<ClientHandle>(client.cast(), CLIENT_TAG, "client") }?.client)
}

/// Creates a channel `name` (1 to 64 characters of [A-Za-z0-9._-], not starting with '.') of
/// shape `*cfg`, owned by this process's user. `SHMRING_ALREADY_EXISTS` if the name is taken,
/// `SHMRING_INVALID_ARGUMENT` for a bad name or shape (the message says which rule). Any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_channel_create(
    client: *mut shmring_client,
    name: *const c_char,
    cfg: *const shmring_channel_config,
) -> shmring_status {
    guard(|| {
        // SAFETY: the header's contract for each argument.
        let (c, name) = unsafe { (self::client(client)?, text(name, "name")?) };
        if cfg.is_null() {
            return Err(invalid("cfg is NULL"));
        }
        // SAFETY: non-NULL, points to a shmring_channel_config (the header's contract).
        let cfg = unsafe { *cfg };
        let config = ChannelConfig {
            kind: kind_of(cfg.kind)?,
            capacity: cfg.capacity,
            max_frame_size: cfg.max_frame_size,
            max_producers: cfg.max_producers,
            max_consumers: cfg.max_consumers,
            mode: cfg.mode,
            overflow: overflow_of(cfg.overflow)?,
            history: cfg.history,
            max_message_size: cfg.max_message_size,
            partitions: cfg.partitions,
            checkpoint_size: cfg.checkpoint_size,
        };
        c.create(name, &config).map(drop)
    })
}

/// Deletes a channel (its owner or root only). Its producers and consumers are told:
/// consumers drain what is left and then get `SHMRING_CLOSED`. Any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_channel_delete(
    client: *mut shmring_client,
    name: *const c_char,
) -> shmring_status {
    guard(|| {
        // SAFETY: the header's contract for each argument.
        let (c, name) = unsafe { (self::client(client)?, text(name, "name")?) };
        c.delete(name)
    })
}

/// Gives a live channel a new capacity, in bytes (as `shmring_channel_config`'s `capacity`),
/// while its producers and consumers keep running: no frame is lost or delivered twice, order
/// is kept, and nobody re-opens a handle. A new segment of that capacity replaces the
/// channel's: each producer moves to it on its next send, each consumer once it has taken
/// everything left in the old one. It grows or shrinks (what is queued stays in the old segment
/// until taken, so it need not fit). Its owner or root only (`SHMRING_PERMISSION_DENIED`).
/// SPSC and broadcast channels: `SHMRING_INVALID_ARGUMENT` for MPMC, and for a capacity that
/// cannot hold the channel's frames. `SHMRING_BUSY` while the previous resize is still under
/// way (`draining_generation` of `shmring_stats` is not 0): try again later. Any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_channel_resize(
    client: *mut shmring_client,
    name: *const c_char,
    capacity: u64,
) -> shmring_status {
    guard(|| {
        // SAFETY: the header's contract for each argument.
        let (c, name) = unsafe { (self::client(client)?, text(name, "name")?) };
        c.resize(name, capacity).map(drop)
    })
}

/// Reads a channel's counters into `*out` (needs read permission). Any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_channel_stats(
    client: *mut shmring_client,
    name: *const c_char,
    out: *mut shmring_stats,
) -> shmring_status {
    guard(|| {
        // SAFETY: the header's contract for each argument.
        let (c, name) = unsafe { (self::client(client)?, text(name, "name")?) };
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        let s = c.stats(name)?;
        let value = shmring_stats {
            kind: kind_code(s.info.kind),
            max_frame_size: s.info.max_frame_size,
            capacity: s.info.capacity_bytes,
            slots: s.info.slots,
            depth: s.info.depth,
            frames_in: s.frames_in,
            bytes_in: s.bytes_in,
            frames_out: s.frames_out,
            bytes_out: s.bytes_out,
            producers: s.info.producers,
            consumers: s.info.consumers,
            repairs: s.repairs,
            redelivered: s.redelivered,
            skipped: s.skipped,
            max_message_size: s.info.max_message_size,
            resizes: s.resizes,
            draining_generation: s.draining_generation,
            draining_depth: s.draining_depth,
        };
        // SAFETY: checked non-NULL; writable (the header's contract).
        unsafe { put(out, value, "out") }
    })
}

// ---------------------------------------------------------------------------------------------
// Producer

/// Opens channel `name` as a producer. On success `*out` is the producer, to be closed with
/// `shmring_producer_close`; it may outlive the client. `SHMRING_BUSY` when the channel admits
/// no more producers (an SPSC channel admits one at a time), `SHMRING_NOT_FOUND` when there is
/// no such channel, `SHMRING_PERMISSION_DENIED` when its mode excludes this user. A producer is
/// used by one thread at a time (it may move between threads): a call made while another
/// thread is inside a call on the same producer is refused with `SHMRING_INVALID_ARGUMENT`
/// (a best-effort check: two calls that start within the same few nanoseconds can both pass
/// it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_producer_open(
    client: *mut shmring_client,
    name: *const c_char,
    out: *mut *mut shmring_producer,
) -> shmring_status {
    guard(|| {
        // SAFETY: the header's contract for each argument.
        let (c, name) = unsafe { (self::client(client)?, text(name, "name")?) };
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        let (producer, keyed) = match c.open_producer(name)? {
            Ok(p) => (Some(p), None),
            Err(k) => (None, Some(k)),
        };
        let h = into_handle(ProducerHandle {
            tag: PRODUCER_TAG,
            busy: InUse::default(),
            pid: std::process::id(),
            state: ProducerState {
                producer,
                finished: None,
                claim: None,
                keyed,
            },
        });
        // SAFETY: checked non-NULL; writable (the header's contract).
        unsafe { put(out, h, "out") }
    })
}

/// # Safety
/// `p` must be NULL or a producer handle.
unsafe fn producer<'a>(p: *mut shmring_producer) -> Result<&'a mut ProducerHandle, Error> {
    // SAFETY: as the header requires of `p`.
    unsafe { handle::<ProducerHandle>(p.cast(), PRODUCER_TAG, "producer") }
}

impl ProducerState {
    /// Refuses while a claim is open.
    fn idle(&mut self) -> Result<&mut Self, Error> {
        if self.claim.is_some() {
            return Err(invalid(
                "a claim is open on this producer: shmring_commit or shmring_abort it first",
            ));
        }
        Ok(self)
    }

    /// The producer, unless it finished.
    #[inline(always)]
    fn live(&mut self) -> Result<&mut Producer, Error> {
        match &mut self.producer {
            Some(p) => Ok(p),
            None if self.keyed.is_some() => Err(partitioned()),
            None => Err(finished()),
        }
    }
}

#[cold]
#[inline(never)]
fn partitioned() -> Error {
    invalid(
        "this producer's channel is partitioned: send with shmring_send_keyed (the key picks \
         the partition)",
    )
}

#[cold]
#[inline(never)]
fn finished() -> Error {
    Error::Closed(
        "this producer finished its stream (shmring_producer_finish): it sends nothing more; \
         close it with shmring_producer_close (open a new producer to continue the stream)"
            .into(),
    )
}

/// Sets how a producer's blocking calls wait (default `SHMRING_WAIT_PARK`). The producer's
/// thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_producer_set_wait(
    p: *mut shmring_producer,
    wait: shmring_wait,
) -> shmring_status {
    guard(|| {
        let wait = wait_of(wait)?;
        // SAFETY: the header's contract for `p`.
        exclusive(unsafe { producer(p) }?, |h| {
            h.live()?.set_wait_strategy(wait);
            Ok(())
        })
    })
}

/// The largest frame the producer's channel carries, in bytes (0 if `p` is not a producer):
/// the longest claim. The producer's thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_producer_max_frame_size(p: *mut shmring_producer) -> usize {
    let mut n = 0;
    let _ = guard(|| {
        // SAFETY: the header's contract for `p`.
        n = unsafe { producer(p) }?.state.live()?.max_frame_size();
        Ok(())
    });
    n
}

/// The largest message `shmring_send` takes on the producer's channel, in bytes (0 if `p` is
/// not a producer). The producer's thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_producer_max_message_size(p: *mut shmring_producer) -> usize {
    let mut n = 0;
    let _ = guard(|| {
        // SAFETY: the header's contract for `p`.
        n = unsafe { producer(p) }?.state.live()?.max_message_size();
        Ok(())
    });
    n
}

/// Sends a copy of the `len` bytes at `data` (which may be NULL if `len` is 0) as one message,
/// waiting up to `timeout_ns` nanoseconds for room (0: do not wait, `SHMRING_WOULD_BLOCK` if
/// full; negative: wait as long as it takes; `SHMRING_TIMED_OUT` when the time is up).
/// `SHMRING_FRAME_TOO_LARGE` if `len` exceeds the channel's max_message_size (by default its
/// max_frame_size). The bytes are copied before it returns. The producer's thread.
///
/// A message longer than max_frame_size arrives whole. SPSC and broadcast: it is split into
/// records, in order. One the ring can hold at once is written when all of it fits, then
/// published at once. A longer one streams through the ring while the consumer takes it: that
/// takes waiting, so timeout 0 refuses it (`SHMRING_INVALID_ARGUMENT`), and a timeout covers
/// the whole message; one that times out midway is never delivered (the consumer drops what it
/// received and counts it in `shmring_consumer_missed`). MPMC: it is copied into the channel's
/// message pool and goes whole to one consumer (`SHMRING_WOULD_BLOCK` with timeout 0 while
/// the pool or the slots are full).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_send(
    p: *mut shmring_producer,
    data: *const c_void,
    len: usize,
    timeout_ns: i64,
) -> shmring_status {
    guard(|| {
        let frame: &[u8] = if len == 0 {
            &[]
        } else if data.is_null() {
            return Err(invalid("data is NULL"));
        } else {
            // SAFETY: readable for `len` bytes (the header's contract); copied before return.
            unsafe { std::slice::from_raw_parts(data.cast(), len) }
        };
        // SAFETY: the header's contract for `p`.
        exclusive(unsafe { producer(p) }?, |h| {
            let p = h.idle()?.live()?;
            match timeout(timeout_ns) {
                Some(Duration::ZERO) => p.try_send(frame),
                Some(t) => p.send_timeout(frame, t),
                None => p.send(frame),
            }
        })
    })
}

/// Sends `data` (`len` bytes) on a partitioned channel, to the partition of `key` (`key_len`
/// bytes; `shmring_partition_of(key, key_len, partitions)`), waiting up to `timeout_ns` as
/// `shmring_send` does. Frames of one key go to one partition, in the order they were sent.
/// `SHMRING_INVALID_ARGUMENT` if the channel is not partitioned. The producer's thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_send_keyed(
    p: *mut shmring_producer,
    key: *const c_void,
    key_len: usize,
    data: *const c_void,
    len: usize,
    timeout_ns: i64,
) -> shmring_status {
    guard(|| {
        // SAFETY: readable for their lengths (the header's contract); copied before return.
        let (key, frame) = unsafe { (bytes(key, key_len, "key")?, bytes(data, len, "data")?) };
        // SAFETY: the header's contract for `p`.
        exclusive(unsafe { producer(p) }?, |h| {
            let Some(k) = h.keyed.as_mut() else {
                return Err(match h.producer {
                    Some(_) => invalid(
                        "this producer's channel is not partitioned: send with shmring_send",
                    ),
                    None => finished(),
                });
            };
            match timeout(timeout_ns) {
                Some(Duration::ZERO) => k.try_send_keyed(key, frame),
                Some(t) => k.send_keyed_timeout(key, frame, t),
                None => k.send_keyed(key, frame),
            }
        })
    })
}

/// The partition of `key` (`key_len` bytes) among `partitions`: FNV-1a 64 of the key's bytes
/// (start `h = 0xcbf29ce484222325`; for each byte `b`: `h = (h ^ b) * 0x100000001b3` modulo
/// 2^64), modulo `partitions`; 0 when `partitions` is 0 or 1 (or `key` is NULL with `key_len`
/// above 0). Stable across versions and languages: any program can tell where a key goes.
/// Any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_partition_of(
    key: *const c_void,
    key_len: usize,
    partitions: u32,
) -> u32 {
    // SAFETY: readable for `key_len` bytes (the header's contract).
    match unsafe { bytes(key, key_len, "key") } {
        Ok(k) => shmring_core::partition_of(k, partitions),
        Err(_) => 0,
    }
}

/// A byte argument: `len` bytes at `ptr` (NULL allowed for none).
///
/// # Safety
/// `ptr` must be NULL or readable for `len` bytes, unchanged until the slice is dropped.
unsafe fn bytes<'a>(ptr: *const c_void, len: usize, what: &str) -> Result<&'a [u8], Error> {
    if len == 0 {
        Ok(&[])
    } else if ptr.is_null() {
        Err(invalid(format!("{what} is NULL")))
    } else {
        // SAFETY: the caller's promise.
        Ok(unsafe { std::slice::from_raw_parts(ptr.cast(), len) })
    }
}

/// Reserves `len` bytes in the ring for a frame written in place (zero-copy), waiting up to
/// `timeout_ns` as `shmring_send` does. On success `*out_buf` points to the `len` writable
/// bytes, in shared memory; write the frame there, then publish it with `shmring_commit` or give
/// the space back with `shmring_abort`. Until then the producer does nothing else (other calls
/// return `SHMRING_INVALID_ARGUMENT`); after it, `*out_buf` must not be used. The producer's
/// thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_claim(
    p: *mut shmring_producer,
    len: usize,
    out_buf: *mut *mut c_void,
    timeout_ns: i64,
) -> shmring_status {
    guard(|| {
        if out_buf.is_null() {
            return Err(invalid("out_buf is NULL"));
        }
        // SAFETY: the header's contract for `p`.
        exclusive(unsafe { producer(p) }?, |h| {
            let h = h.idle()?;
            // SAFETY: no claim is open (checked above) and this handle refuses every other
            // call until the claim is committed or aborted, which is the contract of
            // claim_detached.
            let claim = unsafe { h.live()?.claim_detached(len, timeout(timeout_ns)) }?;
            let ptr = claim.as_mut_ptr();
            h.claim = Some(claim);
            // SAFETY: checked non-NULL; writable (the header's contract).
            unsafe { put(out_buf, ptr.cast(), "out_buf") }
        })
    })
}

/// Publishes the first `len` bytes of the open claim as one frame. `len` must be at most the
/// claimed length: more is `SHMRING_INVALID_ARGUMENT`, and the claim stays open (commit it
/// with a valid length or abort it). `SHMRING_INVALID_ARGUMENT` if no claim is open. The
/// producer's thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_commit(p: *mut shmring_producer, len: usize) -> shmring_status {
    guard(|| {
        // SAFETY: the header's contract for `p`.
        exclusive(unsafe { producer(p) }?, |h| {
            let claimed = match &h.claim {
                Some(claim) => claim.len(),
                None => return Err(invalid("no claim is open: shmring_claim first")),
            };
            if len > claimed {
                return Err(invalid(format!(
                    "cannot commit {len} bytes of a {claimed}-byte claim (the claim is still \
                     open: commit at most {claimed} bytes, or abort it)"
                )));
            }
            let claim = h.claim.take().expect("checked above");
            // SAFETY: the claim came from this producer's claim_detached and nothing else was
            // done with the producer since (every other call refuses while a claim is open).
            unsafe { h.live()?.commit_detached(claim, len) }
        })
    })
}

/// Gives the open claim's space back without sending anything. `SHMRING_INVALID_ARGUMENT` if
/// no claim is open. The producer's thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_abort(p: *mut shmring_producer) -> shmring_status {
    guard(|| {
        // SAFETY: the header's contract for `p`.
        exclusive(unsafe { producer(p) }?, |h| {
            let claim = h
                .claim
                .take()
                .ok_or_else(|| invalid("no claim is open: shmring_claim first"))?;
            // SAFETY: as in shmring_commit.
            unsafe { h.live()?.abort_detached(claim) };
            Ok(())
        })
    })
}

/// A descriptor to wait on for this producer in an event loop: readable when room may have
/// been made in the ring (a consumer received), or when the channel was deleted. -1 on failure
/// (`shmring_last_error()` says why).
///
/// The contract is `shmring_consumer_fd`'s: after the descriptor is readable, send with
/// timeout 0 (`shmring_send`, `shmring_claim`) until one returns `SHMRING_WOULD_BLOCK`, which
/// re-arms it (and publishes what a batch staged); then wait on it again. Readiness is a
/// hint; `SHMRING_CLOSED` leaves it readable; the descriptor belongs to the producer (do not
/// close it) and stays open until `shmring_producer_close`, also after
/// `shmring_producer_finish` (then readable for good: remove it from the poll set). While
/// there is room it stays readable, like `POLLOUT`: wait on it only while a send is pending.
/// The producer's thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_producer_fd(p: *mut shmring_producer) -> c_int {
    let mut fd = -1;
    let _ = guard(|| {
        // SAFETY: the header's contract for `p`.
        exclusive(unsafe { producer(p) }?, |h| {
            fd = match (&mut h.producer, &mut h.finished) {
                (Some(live), _) => live.fd()?,
                // Finished: the descriptor made before, readable for good.
                (None, Some(done)) => done.fd()?,
                (None, None) => return Err(finished()),
            };
            Ok(())
        })
    });
    fd
}

/// Finishes the stream: every frame sent is published, the producer leaves the channel, and,
/// if no other producer is attached, consumers receive what is left in the ring and then get
/// `SHMRING_CLOSED` instead of waiting for more (consumers asleep in a blocking receive are
/// woken). With several MPMC producers, each finishes when it is done and the stream ends with
/// the last one's finish. A producer opened after a finish continues the stream: consumers
/// that receive again get its frames. A producer that crashes or is only closed does not
/// finish the stream (`shmring_consumer_producers` tells consumers whether any is left).
/// `p` stays allocated: close it with `shmring_producer_close`; every other call on it returns
/// `SHMRING_CLOSED` (a second finish too). `SHMRING_INVALID_ARGUMENT` while a claim is open,
/// and in a child forked after `p` was opened. The producer's thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_producer_finish(p: *mut shmring_producer) -> shmring_status {
    guard(|| {
        // SAFETY: the header's contract for `p`.
        let h = unsafe { producer(p) }?;
        if h.pid != std::process::id() {
            return Err(invalid(
                "this producer was opened by the parent process (inherited across fork): only \
                 it can finish the stream; open a producer of your own",
            ));
        }
        exclusive(h, |h| {
            if let Some(k) = h.keyed.take() {
                return k.finish();
            }
            h.idle()?.live()?;
            let mut done = h.producer.take().expect("checked live above");
            // SAFETY: `done` is only kept for its descriptor (`shmring_producer_fd`) and
            // dropped at the close; nothing is sent through it.
            let r = unsafe { done.finish_in_place() };
            h.finished = Some(done);
            r
        })
    })
}

/// Closes a producer and frees it (an open claim is aborted), freeing its place in the
/// channel. NULL is ignored. The producer's thread, once; `p` is invalid afterwards. A producer
/// that another thread is using at that moment is left open (and `shmring_last_error()` says
/// so) rather than freed under that thread. In a child forked after it was opened, only frees
/// the handle's memory (the channel is the parent's).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_producer_close(p: *mut shmring_producer) {
    let _ = guard(|| {
        // SAFETY: NULL or a handle from shmring_producer_open (the header's contract).
        // (A child forked while a thread of its parent was inside a call inherits the mark,
        // but not that thread: it only frees the memory, below.)
        if let Ok(h) = unsafe { producer(p) }
            && h.pid == std::process::id()
            && !h.busy.is_free()
        {
            return Err(concurrent("producer"));
        }
        // SAFETY: NULL or a handle from shmring_producer_open (the header's contract).
        if let Some(mut h) = unsafe { take_handle::<ProducerHandle>(p.cast(), PRODUCER_TAG) }
            && h.pid == std::process::id()
            && let Some(claim) = h.state.claim.take()
            && let Some(producer) = &mut h.state.producer
        {
            // SAFETY: as in shmring_commit.
            unsafe { producer.abort_detached(claim) };
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Consumer

/// Opens channel `name` as a consumer. On success `*out` is the consumer, to be closed with
/// `shmring_consumer_close`; it may outlive the client. An SPSC consumer resumes exactly where
/// the previous one stopped; frames a dead predecessor held come first, flagged
/// `SHMRING_FRAME_REDELIVERED`. Statuses as for `shmring_producer_open`. A consumer is used by
/// one thread at a time (it may move between threads), checked as for a producer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_consumer_open(
    client: *mut shmring_client,
    name: *const c_char,
    out: *mut *mut shmring_consumer,
) -> shmring_status {
    guard(|| {
        // SAFETY: the header's contract for each argument.
        let (c, name) = unsafe { (self::client(client)?, text(name, "name")?) };
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        let consumer = c.consumer(name)?;
        let h = into_handle(ConsumerHandle {
            tag: CONSUMER_TAG,
            busy: InUse::default(),
            pid: std::process::id(),
            state: ConsumerState {
                consumer: Some(consumer),
                group: None,
                frame: None,
            },
        });
        // SAFETY: checked non-NULL; writable (the header's contract).
        unsafe { put(out, h, "out") }
    })
}

/// # Safety
/// `c` must be NULL or a consumer handle.
unsafe fn consumer<'a>(c: *mut shmring_consumer) -> Result<&'a mut ConsumerHandle, Error> {
    // SAFETY: as the header requires of `c`.
    unsafe { handle::<ConsumerHandle>(c.cast(), CONSUMER_TAG, "consumer") }
}

/// A consumer-group member as C holds it: `shmring_read` lends a copy of the frame from
/// `scratch`.
struct Member {
    group: GroupConsumer,
    scratch: Vec<u8>,
    /// The partition of the frame `shmring_read` lent, until `shmring_release`.
    lent: Option<u32>,
}

impl ConsumerState {
    /// The plain consumer; a group member has none.
    #[inline(always)]
    fn plain(&mut self) -> Result<&mut Consumer, Error> {
        match &mut self.consumer {
            Some(c) => Ok(c),
            None => Err(not_for_groups()),
        }
    }

    /// The group member; `InvalidArgument` for a plain consumer.
    fn member(&mut self) -> Result<&mut Member, Error> {
        self.group.as_deref_mut().ok_or_else(|| {
            invalid("this consumer is not a group member (shmring_consumer_open_group)")
        })
    }

    /// Refuses while a frame is held.
    fn idle(&mut self) -> Result<&mut Self, Error> {
        if self.frame.is_some() || self.group.as_ref().is_some_and(|m| m.lent.is_some()) {
            return Err(invalid(
                "a frame is held by this consumer: shmring_release it first",
            ));
        }
        Ok(self)
    }
}

/// Sets how a consumer's blocking calls wait (default `SHMRING_WAIT_PARK`). The consumer's
/// thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_consumer_set_wait(
    c: *mut shmring_consumer,
    wait: shmring_wait,
) -> shmring_status {
    guard(|| {
        let wait = wait_of(wait)?;
        // SAFETY: the header's contract for `c`.
        exclusive(unsafe { consumer(c) }?, |h| {
            match (&mut h.consumer, &mut h.group) {
                (Some(c), _) => c.set_wait_strategy(wait),
                (None, Some(m)) => m.group.set_wait_strategy(wait),
                (None, None) => {}
            }
            Ok(())
        })
    })
}

/// What this consumer missed since it opened: on a broadcast channel with
/// `SHMRING_OVERFLOW_DROP_OLDEST`, frames published after it opened that the producer
/// overwrote before it received them (every such frame is either received or counted here,
/// exactly once); and messages longer than a frame that it dropped unfinished, because their
/// producer died or timed out midway (a message is never delivered in part). 0 otherwise, and
/// for a `c` that is not a consumer (then `shmring_last_error()` says why). The consumer's
/// thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_consumer_missed(c: *const shmring_consumer) -> u64 {
    let mut n = 0;
    let _ = guard(|| {
        // SAFETY: the header's contract for `c`; the handle is only read.
        exclusive(unsafe { consumer(c.cast_mut()) }?, |h| {
            n = h.consumer.as_ref().map_or(0, Consumer::missed);
            Ok(())
        })
    });
    n
}

/// How many producers hold an entry of the consumer's channel now: live ones, and dead ones
/// whose entries the coordinator has not repaired yet (it frees them within milliseconds of
/// the death). 0 with the ring empty means that nothing arrives until a producer opens the
/// channel: a finished stream (`shmring_producer_finish`) makes receives return
/// `SHMRING_CLOSED`, but a producer that crashed or was closed without finishing does not, and
/// this count is how a consumer learns that it is alone. While a resize is under way it counts
/// the producers of the ring the consumer still reads, 0 once they all moved to the new one;
/// the consumer's next receive follows them (and the count is theirs again). 0 also for a `c`
/// that is not a consumer (then `shmring_last_error()` says why). The consumer's thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_consumer_producers(c: *const shmring_consumer) -> u32 {
    let mut n = 0;
    let _ = guard(|| {
        // SAFETY: the header's contract for `c`; the handle is only read.
        exclusive(unsafe { consumer(c.cast_mut()) }?, |h| {
            n = h.plain()?.producers();
            Ok(())
        })
    });
    n
}

/// A descriptor to wait on for this consumer in `poll`, `epoll`, `select` or any event loop,
/// beside sockets, pipes and timers: readable when frames may be waiting, or when the channel
/// was deleted or its stream finished. -1 on failure (`shmring_last_error()` says why: an
/// inherited handle in a forked child, or a kernel older than 5.16).
///
/// The contract:
/// - The descriptor is armed when made (readable at once if a frame is waiting). After it is
///   readable, receive with timeout 0 (`shmring_recv`, `shmring_read`) until one returns
///   `SHMRING_WOULD_BLOCK`: that return re-arms the descriptor. Then wait on it again. A
///   blocking receive (timeout > 0 or < 0) waits by the wait strategy instead, and re-arms the
///   descriptor if it times out.
/// - Readiness is a hint: a receive may still find nothing (another consumer took the frame,
///   or a periodic recheck fired: an armed descriptor becomes readable at least every 100 ms
///   so that the library can check the ring for damage). Poll level-triggered (or, with
///   EPOLLET, always receive until `SHMRING_WOULD_BLOCK`).
/// - `SHMRING_CLOSED` leaves the descriptor readable: stop polling it.
/// - The descriptor belongs to the consumer: do not close, read or write it. It stays the same
///   for the consumer's life (each call returns it) and is closed by
///   `shmring_consumer_close`.
/// - Cost: an armed consumer counts itself as a waiter, from its `SHMRING_WOULD_BLOCK` (or
///   the descriptor's making) until its next received frame, and while it is counted each
///   frame sent costs the producer one `FUTEX_WAKE`. Arming costs this side a few system
///   calls. A consumer that never finds the ring empty makes none, and neither does its
///   producer.
///
/// On Linux 6.7+ the descriptor is an io_uring instance with a futex wait queued; where
/// io_uring is unavailable (5.16+, or `SHMRING_FD_WAKER=thread`) it is an eventfd that a
/// thread of the library writes. With io_uring, the wake-up is delivered to the thread that
/// armed the descriptor (its last receive) as a signal-like interruption: if that thread is
/// blocked in `epoll_wait` (or `epoll_pwait`) at the time, the call returns -1 with `EINTR`
/// (retry it, as for any signal; `poll`, `select`, `read` and sleeps are restarted by the
/// kernel). `SHMRING_FD_WAKER=thread` avoids it at the cost of a second wake-up. The
/// consumer's thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_consumer_fd(c: *mut shmring_consumer) -> c_int {
    let mut fd = -1;
    let _ = guard(|| {
        // SAFETY: the header's contract for `c`.
        exclusive(unsafe { consumer(c) }?, |h| {
            fd = h.plain()?.fd()?;
            Ok(())
        })
    });
    fd
}

/// The largest frame the consumer's channel carries in one record, in bytes (0 if `c` is
/// not a consumer). On a channel without a larger max_message_size, a buffer this long fits
/// everything. The consumer's thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_consumer_max_frame_size(c: *mut shmring_consumer) -> usize {
    let mut n = 0;
    let _ = guard(|| {
        // SAFETY: the header's contract for `c`.
        let h = &mut unsafe { consumer(c) }?.state;
        n = match (&h.consumer, &h.group) {
            (Some(c), _) => c.max_frame_size(),
            (None, Some(m)) => m.group.max_frame_size(),
            (None, None) => 0,
        };
        Ok(())
    });
    n
}

/// The largest message the consumer's channel carries, in bytes: a buffer this long fits
/// every message (0 if `c` is not a consumer). The consumer's thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_consumer_max_message_size(c: *mut shmring_consumer) -> usize {
    let mut n = 0;
    let _ = guard(|| {
        // SAFETY: the header's contract for `c`.
        let h = &mut unsafe { consumer(c) }?.state;
        n = match (&h.consumer, &h.group) {
            (Some(c), _) => c.max_message_size(),
            (None, Some(m)) => m.group.max_frame_size(),
            (None, None) => 0,
        };
        Ok(())
    });
    n
}

/// Copies the next frame into `buf` (`cap` bytes; may be NULL if `cap` is 0) and releases it,
/// waiting up to `timeout_ns` for one (0: do not wait, `SHMRING_WOULD_BLOCK` if empty; negative:
/// wait as long as it takes). `*out_len` receives the frame's length. A frame longer than `cap`
/// stays unread: `SHMRING_BUFFER_TOO_SMALL`, with the length it needs in `*out_len`.
///
/// A message longer than max_frame_size arrives whole, put back together in `buf`. If the
/// call must return before the rest of it arrives (`SHMRING_WOULD_BLOCK`, `SHMRING_TIMED_OUT`),
/// the consumer keeps what arrived, and the next receive, into any buffer long enough,
/// continues it.
/// `SHMRING_CLOSED` once the channel was deleted, or its stream finished
/// (`shmring_producer_finish`), and everything in it was received. The consumer's thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_recv(
    c: *mut shmring_consumer,
    buf: *mut c_void,
    cap: usize,
    out_len: *mut usize,
    timeout_ns: i64,
) -> shmring_status {
    guard(|| {
        if out_len.is_null() {
            return Err(invalid("out_len is NULL"));
        }
        let buf: &mut [u8] = if cap == 0 {
            &mut []
        } else if buf.is_null() {
            return Err(invalid("buf is NULL"));
        } else {
            // SAFETY: writable for `cap` bytes (the header's contract), not aliased by
            // anything of ours.
            unsafe { std::slice::from_raw_parts_mut(buf.cast(), cap) }
        };
        // SAFETY: the header's contract for `c`.
        exclusive(unsafe { consumer(c) }?, |h| {
            let h = h.idle()?;
            let r = match (&mut h.consumer, &mut h.group) {
                (Some(c), _) => match timeout(timeout_ns) {
                    Some(Duration::ZERO) => c.try_recv(buf),
                    Some(t) => c.recv_timeout(buf, t),
                    None => c.recv(buf),
                },
                (None, Some(m)) => match timeout(timeout_ns) {
                    Some(Duration::ZERO) => m.group.try_recv(buf),
                    Some(t) => m.group.recv_timeout(buf, t),
                    None => m.group.recv(buf),
                },
                (None, None) => Err(invalid("this consumer holds no channel")),
            };
            let len = match &r {
                Ok(got) => got.len,
                Err(Error::BufferTooSmall { needed, .. }) => *needed,
                Err(_) => 0,
            };
            // SAFETY: checked non-NULL; writable (the header's contract).
            unsafe { put(out_len, len, "out_len") }?;
            r.map(drop)
        })
    })
}

/// Lends the next frame in place (zero-copy), waiting up to `timeout_ns` as `shmring_recv`
/// does: `*out` receives its bytes (read-only, in shared memory), length and flags. The frame
/// stays the consumer's until `shmring_release`; until then the consumer receives nothing else
/// (other receives return `SHMRING_INVALID_ARGUMENT`); after it, `out->data` must not be used.
/// The consumer's thread.
///
/// A message longer than max_frame_size on an SPSC or broadcast channel is not contiguous in
/// the ring: `out->data` points to a copy put back together in memory the consumer owns (one
/// copy, as `shmring_recv` makes), valid until `shmring_release` like any frame. On an MPMC
/// channel it is contiguous in the message pool and lent in place, as frames are.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_read(
    c: *mut shmring_consumer,
    out: *mut shmring_frame,
    timeout_ns: i64,
) -> shmring_status {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        // SAFETY: the header's contract for `c`.
        exclusive(unsafe { consumer(c) }?, |h| {
            let h = h.idle()?;
            if let Some(m) = h.group.as_deref_mut() {
                // Taken without releasing it, as a plain consumer's lent frame is: released
                // by shmring_release (or, checkpointed, by shmring_checkpoint_commit), so a
                // member that dies holding it leaves it to its successor.
                let mut scratch = std::mem::take(&mut m.scratch);
                let r = group_read(&mut m.group, &mut scratch, timeout(timeout_ns));
                m.scratch = scratch;
                let got = r?;
                m.lent = Some(got.partition);
                let value = shmring_frame {
                    data: m.scratch.as_ptr().cast(),
                    len: got.len,
                    flags: got.flags.bits(),
                    partition: got.partition,
                };
                // SAFETY: checked non-NULL; writable (the header's contract).
                return unsafe { put(out, value, "out") };
            }
            // SAFETY: no frame is held (checked above) and this handle refuses every other
            // receive until the frame is released, which is the contract of read_detached.
            let frame = unsafe { h.plain()?.read_detached(timeout(timeout_ns)) }?;
            let value = shmring_frame {
                data: frame.as_ptr().cast(),
                len: frame.len(),
                flags: frame.flags().bits(),
                partition: 0,
            };
            h.frame = Some(frame);
            // SAFETY: checked non-NULL; writable (the header's contract).
            unsafe { put(out, value, "out") }
        })
    })
}

/// Releases the frame lent by `shmring_read`: its space goes back to the producers.
/// `SHMRING_INVALID_ARGUMENT` if no frame is held. The consumer's thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_release(c: *mut shmring_consumer) -> shmring_status {
    guard(|| {
        // SAFETY: the header's contract for `c`.
        exclusive(unsafe { consumer(c) }?, |h| {
            if let Some(m) = h.group.as_deref_mut() {
                let p = m
                    .lent
                    .take()
                    .ok_or_else(|| invalid("no frame is held: shmring_read first"))?;
                if !m.group.is_checkpointed() {
                    return match m.group.release_partition(p, None) {
                        // Given to another member meanwhile: handed back, it is theirs.
                        Ok(()) | Err(Error::NotFound(_)) => Ok(()),
                        Err(e) => Err(e),
                    };
                }
                return Ok(());
            }
            let frame = h
                .frame
                .take()
                .ok_or_else(|| invalid("no frame is held: shmring_read first"))?;
            // SAFETY: the frame came from this consumer's read_detached and nothing was
            // received since (every other receive refuses while a frame is held).
            unsafe { h.plain()?.release_detached(frame) };
            Ok(())
        })
    })
}

/// Closes a consumer and frees it (a held frame is released), freeing its place in the
/// channel. NULL is ignored. The consumer's thread, once; `c` is invalid afterwards. A consumer
/// that another thread is using at that moment is left open (and `shmring_last_error()` says
/// so) rather than freed under that thread. In a child forked after it was opened, only frees
/// the handle's memory (the channel is the parent's).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_consumer_close(c: *mut shmring_consumer) {
    let _ = guard(|| {
        // SAFETY: NULL or a handle from shmring_consumer_open (the header's contract).
        // (A child forked while a thread of its parent was inside a call inherits the mark,
        // but not that thread: it only frees the memory, below.)
        if let Ok(h) = unsafe { consumer(c) }
            && h.pid == std::process::id()
            && !h.busy.is_free()
        {
            return Err(concurrent("consumer"));
        }
        // SAFETY: NULL or a handle from shmring_consumer_open (the header's contract).
        let Some(mut h) = (unsafe { take_handle::<ConsumerHandle>(c.cast(), CONSUMER_TAG) }) else {
            return Ok(());
        };
        if h.pid != std::process::id() {
            return Ok(());
        }
        if let Some(m) = h.state.group.as_deref_mut()
            && let Some(p) = m.lent.take()
            && !m.group.is_checkpointed()
        {
            // Released, as a plain consumer's lent frame is at its close (not handed back to
            // be delivered again).
            let _ = m.group.release_partition(p, None);
        }
        if let Some(frame) = h.state.frame.take()
            && let Some(c) = h.state.consumer.as_mut()
        {
            // SAFETY: as in shmring_release.
            unsafe { c.release_detached(frame) };
        }
        Ok(())
    });
}

/// A group member's receive for `shmring_read`: the frame taken and not released.
fn group_read(
    g: &mut GroupConsumer,
    buf: &mut [u8],
    timeout: Option<Duration>,
) -> Result<shmring_core::Received, Error> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        match g.try_recv_as(buf, true) {
            Err(Error::WouldBlock(w)) => match deadline {
                Some(d) if std::time::Instant::now() >= d => {
                    return Err(if timeout == Some(Duration::ZERO) {
                        Error::WouldBlock(w)
                    } else {
                        Error::TimedOut(timeout.unwrap_or_default())
                    });
                }
                _ => {
                    // The member's own blocking receive waits on the partitions'
                    // descriptors; a short wait through it, then the held receive again.
                    let slice = deadline.map_or(Duration::from_millis(10), |d| {
                        d.saturating_duration_since(std::time::Instant::now())
                            .min(Duration::from_millis(10))
                    });
                    g.wait_for_frames(slice)?;
                }
            },
            other => return other,
        }
    }
}

#[cold]
#[inline(never)]
fn not_for_groups() -> Error {
    invalid(
        "this consumer is a group member (shmring_consumer_open_group): it has no pollable \
         descriptor or producer count of its own; its partitions change as members come and go",
    )
}

// ---------------------------------------------------------------------------------------------
// Consumer groups

/// Joins consumer group `group` of partitioned channel `name` as a new member. On success
/// `*out` is the member, a consumer to be closed with `shmring_consumer_close` (which leaves
/// the group). The coordinator assigns each partition to exactly one live member and moves
/// partitions when members join, leave or die; the member receives from all of its partitions
/// through `shmring_recv` and `shmring_read` (the frame's `partition` says which). A partition
/// taken from a dead member starts with the frames it had not released, flagged
/// `SHMRING_FRAME_REDELIVERED`, then continues in order. A partitioned channel is read by one
/// group, the first to join it: `SHMRING_BUSY` for another group's name. Blocking receives
/// wait on the partitions' descriptors (at most 10 ms at a time, to look at the assignment).
/// Statuses otherwise as for `shmring_consumer_open`. Any thread; the member is used by one
/// thread at a time.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_consumer_open_group(
    client: *mut shmring_client,
    name: *const c_char,
    group: *const c_char,
    out: *mut *mut shmring_consumer,
) -> shmring_status {
    guard(|| {
        // SAFETY: the header's contract for each argument.
        let (c, name, group) = unsafe {
            (
                self::client(client)?,
                text(name, "name")?,
                text(group, "group")?,
            )
        };
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        let g = c.group_consumer(name, group)?;
        let scratch = vec![0u8; g.max_frame_size()];
        let h = into_handle(ConsumerHandle {
            tag: CONSUMER_TAG,
            busy: InUse::default(),
            pid: std::process::id(),
            state: ConsumerState {
                consumer: None,
                group: Some(Box::new(Member {
                    group: g,
                    scratch,
                    lent: None,
                })),
                frame: None,
            },
        });
        // SAFETY: checked non-NULL; writable (the header's contract).
        unsafe { put(out, h, "out") }
    })
}

/// Exactly-once mode for a group member (`on` nonzero): its receives take frames without
/// releasing them, and `shmring_checkpoint_commit` releases a partition's frames together with
/// a checkpoint of the state that includes them; whoever takes the partition over (after a
/// crash or a rebalance) starts from that checkpoint and receives exactly the frames it does
/// not include. Set it before the first receive. Commit often enough: uncommitted frames keep
/// their room in the ring, and the producer waits for it. The member's thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_consumer_set_checkpointed(
    c: *mut shmring_consumer,
    on: c_int,
) -> shmring_status {
    guard(|| {
        // SAFETY: the header's contract for `c`.
        exclusive(unsafe { consumer(c) }?, |h| {
            h.idle()?.member()?.group.set_checkpointed(on != 0)
        })
    })
}

/// Commits `state` (`len` bytes, at most the channel's checkpoint_size) as the checkpoint of
/// partition `partition`, covering every frame received from it so far, then releases those
/// frames. `SHMRING_NOT_FOUND` if the partition is no longer this member's (it went to another
/// member, which starts from the previous commit: drop the state kept for it). The member's
/// thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_checkpoint_commit(
    c: *mut shmring_consumer,
    partition: u32,
    state: *const c_void,
    len: usize,
) -> shmring_status {
    guard(|| {
        // SAFETY: readable for `len` bytes (the header's contract).
        let state = unsafe { bytes(state, len, "state") }?;
        // SAFETY: the header's contract for `c`.
        exclusive(unsafe { consumer(c) }?, |h| {
            h.idle()?.member()?.group.commit(partition, state)
        })
    })
}

/// Copies the state of partition `partition`'s last checkpoint, as found when this member took
/// the partition (its own commits since are its own state), into `buf` (`cap` bytes); `*out_len` receives its
/// length. `SHMRING_NOT_FOUND` if no checkpoint was committed (start from empty state) or the
/// partition is not this member's; `SHMRING_BUFFER_TOO_SMALL` with the length needed. The
/// member's thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_checkpoint_read(
    c: *mut shmring_consumer,
    partition: u32,
    buf: *mut c_void,
    cap: usize,
    out_len: *mut usize,
) -> shmring_status {
    guard(|| {
        // SAFETY: the header's contract for `c`.
        exclusive(unsafe { consumer(c) }?, |h| {
            let m = h.member()?;
            let Some(state) = m.group.checkpoint(partition) else {
                // SAFETY: NULL or writable (the header's contract).
                let _ = unsafe { put(out_len, 0, "out_len") };
                return Err(Error::NotFound(format!(
                    "partition {partition} has no checkpoint this member holds"
                )));
            };
            // SAFETY: NULL or writable (the header's contract).
            unsafe { put(out_len, state.len(), "out_len") }?;
            if state.len() > cap {
                return Err(Error::BufferTooSmall {
                    needed: state.len(),
                    cap,
                });
            }
            if !state.is_empty() {
                if buf.is_null() {
                    return Err(invalid("buf is NULL"));
                }
                // SAFETY: writable for `cap >= state.len()` bytes (the header's contract).
                unsafe { std::ptr::copy_nonoverlapping(state.as_ptr(), buf.cast(), state.len()) };
            }
            Ok(())
        })
    })
}

/// The partitions this member holds now, written to `out` (up to `cap` of them, in order);
/// returns how many it holds (may exceed `cap`), or -1 if `c` is not a group member. The
/// member's thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_group_partitions(
    c: *mut shmring_consumer,
    out: *mut u32,
    cap: usize,
) -> i64 {
    let mut n = -1;
    let _ = guard(|| {
        // SAFETY: the header's contract for `c`.
        exclusive(unsafe { consumer(c) }?, |h| {
            let parts = h.member()?.group.partitions();
            // SAFETY: writable for `cap` entries (the header's contract).
            unsafe { copy_u32s(&parts, out, cap) };
            n = parts.len() as i64;
            Ok(())
        })
    });
    n
}

/// The partitions this member gave up since the last call (another member took them), written
/// to `out` (up to `cap`; the rest are reported by the next call); returns how many were
/// written, or -1 if `c` is not a group member. State kept for them is stale, and so are the
/// frames received from them and not committed. The member's thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmring_group_revoked(
    c: *mut shmring_consumer,
    out: *mut u32,
    cap: usize,
) -> i64 {
    let mut n = -1;
    let _ = guard(|| {
        // SAFETY: the header's contract for `c`.
        exclusive(unsafe { consumer(c) }?, |h| {
            let cap = if out.is_null() { 0 } else { cap };
            let g = &mut h.member()?.group;
            let mut revoked = g.revoked();
            let rest = revoked.split_off(revoked.len().min(cap));
            g.unrevoke(rest);
            // SAFETY: writable for `cap` entries (the header's contract).
            unsafe { copy_u32s(&revoked, out, cap) };
            n = revoked.len() as i64;
            Ok(())
        })
    });
    n
}

/// Copies up to `cap` of `v` to `out` (NULL: none).
///
/// # Safety
/// `out` must be NULL or writable for `cap` `u32`s.
unsafe fn copy_u32s(v: &[u32], out: *mut u32, cap: usize) {
    let n = v.len().min(cap);
    if n > 0 && !out.is_null() {
        // SAFETY: the caller's promise; `n <= cap`.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), out, n) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_agree_with_the_crate() {
        let v: Vec<u32> = env!("CARGO_PKG_VERSION")
            .split('.')
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(
            v,
            [
                SHMRING_VERSION_MAJOR,
                SHMRING_VERSION_MINOR,
                SHMRING_VERSION_PATCH
            ]
        );
        // SAFETY: a static NUL-terminated string.
        let s = unsafe { CStr::from_ptr(shmring_version()) };
        assert_eq!(s.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn null_and_foreign_handles_are_refused() {
        let mut len = 0usize;
        // SAFETY: NULL handles and valid out pointers, as the tests of the contract.
        unsafe {
            assert_eq!(
                shmring_send(std::ptr::null_mut(), std::ptr::null(), 0, 0),
                SHMRING_INVALID_ARGUMENT
            );
            assert_eq!(
                shmring_recv(std::ptr::null_mut(), std::ptr::null_mut(), 0, &mut len, 0),
                SHMRING_INVALID_ARGUMENT
            );
            shmring_producer_close(std::ptr::null_mut());
            shmring_consumer_close(std::ptr::null_mut());
            shmring_client_close(std::ptr::null_mut());
            shmring_coordinator_stop(std::ptr::null_mut());
            // A consumer handle's memory, passed as a producer: refused by the tag.
            let mut word: u64 = CONSUMER_TAG;
            let fake = (&mut word as *mut u64).cast::<shmring_producer>();
            assert_eq!(shmring_abort(fake), SHMRING_INVALID_ARGUMENT);
            let e = CStr::from_ptr(shmring_last_error()).to_str().unwrap();
            assert!(e.contains("not a producer"), "{e}");
        }
    }
}

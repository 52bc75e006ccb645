"""shmring from Python: shared-memory channels between processes, through libshmring.so.

Pure ctypes, no compiled extension. The library is loaded from $SHMRING_LIB if set, else the
copy installed with this package (`pip install ./python` bundles target/release/libshmring.so
when it was built), else, imported from a checkout, its target/release, else the system's
(libshmring.so.0, as ffi/install.sh installs it). `shmring.LIBRARY` says which.

    import shmring
    with shmring.Client() as client:                  # $SHMRING_SOCKET or the default socket
        client.create("prices", kind="spsc", max_frame_size=256)
        with client.producer("prices") as tx, client.consumer("prices") as rx:
            tx.send(b"AAPL 187.2")
            print(rx.recv())                           # b'AAPL 187.2'
            with rx.read() as frame:                   # zero-copy: a memoryview of shared memory,
                ...                                    # valid inside the block only
            tx.finish()                                # end of stream: rx drains, then Closed
            for frame in rx:                           # bytes, until the stream is finished
                ...

A broadcast channel has one producer, and every consumer opened on it is a subscriber that
receives every frame published after it opened, in order:

        client.create("ticks", kind="broadcast", overflow="drop-oldest", history=16)
        # ... a producer here, subscribers in other processes; rx.missed() counts the frames a
        # subscriber lost to overwrites (only with overflow="drop-oldest")

Timeouts are in seconds: None waits as long as it takes, 0 does not wait. Back-pressure is a
return value (send gives False, recv gives None when the ring stayed full or empty); failures
raise shmring.Error, whose `status` is the C status name ("SHMRING_NOT_FOUND", ...).
"""

import contextlib
import ctypes
import ctypes.util
import os
import pathlib

__all__ = ["Client", "Coordinator", "Producer", "Consumer", "GroupConsumer", "partition_of", "Error", "Closed", "REDELIVERED",
           "ABI_VERSION"]


def _find_library():
    path = os.environ.get("SHMRING_LIB")
    if path:  # asked for explicitly: that one or none
        try:
            return ctypes.CDLL(path)
        except OSError as e:
            raise OSError(f"SHMRING_LIB={path} cannot be loaded: {e}") from None
    here = pathlib.Path(__file__).resolve().parent
    candidates = [here / "libshmring.so"]  # bundled by the package's build
    if (here.parent.parent / "Cargo.toml").is_file():  # python/shmring in a checkout
        candidates.append(here.parent.parent / "target" / "release" / "libshmring.so")
    for c in candidates:
        if c.is_file():
            return ctypes.CDLL(str(c))
    for name in ("libshmring.so.0", ctypes.util.find_library("shmring")):
        if name:
            try:
                return ctypes.CDLL(name)
            except OSError:
                continue
    raise OSError(
        "libshmring.so not found: build it with `cargo build --release -p shmring-ffi` before "
        "`pip install ./python` (which then bundles it), set SHMRING_LIB to its path, or install "
        "it with ffi/install.sh"
    )


_lib = _find_library()
LIBRARY = _lib._name  # the path (or, for the system's, the name) libshmring was loaded from

_STATUS_NAMES = [
    "SHMRING_OK", "SHMRING_WOULD_BLOCK", "SHMRING_TIMED_OUT", "SHMRING_CLOSED",
    "SHMRING_INVALID_ARGUMENT", "SHMRING_NOT_FOUND", "SHMRING_ALREADY_EXISTS",
    "SHMRING_PERMISSION_DENIED", "SHMRING_BUSY", "SHMRING_FRAME_TOO_LARGE",
    "SHMRING_BUFFER_TOO_SMALL", "SHMRING_CORRUPTED", "SHMRING_INCOMPATIBLE",
    "SHMRING_UNAVAILABLE", "SHMRING_IO_ERROR", "SHMRING_PANIC",
]
_OK, _WOULD_BLOCK, _TIMED_OUT, _CLOSED = 0, 1, 2, 3
_BUFFER_TOO_SMALL = _STATUS_NAMES.index("SHMRING_BUFFER_TOO_SMALL")
_NOT_FOUND = _STATUS_NAMES.index("SHMRING_NOT_FOUND")
SPSC, MPMC, BROADCAST = 1, 2, 3
_KINDS = {"spsc": SPSC, "mpmc": MPMC, "broadcast": BROADCAST}
OVERFLOW_BLOCK, OVERFLOW_DROP_OLDEST = 0, 1
_OVERFLOWS = {"block": OVERFLOW_BLOCK, "drop-oldest": OVERFLOW_DROP_OLDEST}
ABI_VERSION = 5  # SHMRING_ABI_VERSION of the header these declarations follow
_WAITS = {"spin": 0, "yield": 1, "park": 2}
REDELIVERED = 1  # shmring_frame.flags bit


class Error(Exception):
    """A failed call: `status` is the C status name, `code` its number."""

    def __init__(self, code, message):
        self.code = code
        self.status = _STATUS_NAMES[code] if 0 <= code < len(_STATUS_NAMES) else str(code)
        super().__init__(f"{self.status}: {message}")


class Closed(Error):
    """The channel was deleted, or its stream finished (Producer.finish): a consumer has
    received everything that was in it."""


class _Config(ctypes.Structure):
    # struct shmring_channel_config, field for field: the library fills and reads all of it.
    _fields_ = [
        ("kind", ctypes.c_uint32), ("capacity", ctypes.c_uint64),
        ("max_frame_size", ctypes.c_uint32), ("mode", ctypes.c_uint32),
        ("max_producers", ctypes.c_uint32), ("max_consumers", ctypes.c_uint32),
        ("overflow", ctypes.c_uint32), ("history", ctypes.c_uint32),
        ("max_message_size", ctypes.c_uint64),
        ("partitions", ctypes.c_uint32), ("checkpoint_size", ctypes.c_uint32),
    ]


class _Frame(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("len", ctypes.c_size_t), ("flags", ctypes.c_uint32),
                ("partition", ctypes.c_uint32)]


class _Stats(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_uint32), ("max_frame_size", ctypes.c_uint32),
        ("capacity", ctypes.c_uint64), ("slots", ctypes.c_uint64), ("depth", ctypes.c_uint64),
        ("frames_in", ctypes.c_uint64), ("bytes_in", ctypes.c_uint64),
        ("frames_out", ctypes.c_uint64), ("bytes_out", ctypes.c_uint64),
        ("producers", ctypes.c_uint32), ("consumers", ctypes.c_uint32),
        ("repairs", ctypes.c_uint64), ("redelivered", ctypes.c_uint64),
        ("skipped", ctypes.c_uint64), ("max_message_size", ctypes.c_uint64),
        ("resizes", ctypes.c_uint64), ("draining_generation", ctypes.c_uint64),
        ("draining_depth", ctypes.c_uint64),
    ]


_P = ctypes.c_void_p
_S = ctypes.c_int32


def _fn(name, restype, *argtypes):
    f = getattr(_lib, name)
    f.restype, f.argtypes = restype, list(argtypes)
    return f


_abi_version = _fn("shmring_abi_version", ctypes.c_uint32)
_last_error = _fn("shmring_last_error", ctypes.c_char_p)
_config_default = _fn("shmring_channel_config_default", None, ctypes.POINTER(_Config), ctypes.c_uint32)
_coordinator_start = _fn("shmring_coordinator_start", _S, ctypes.c_char_p, ctypes.POINTER(_P))
_coordinator_socket = _fn("shmring_coordinator_socket", ctypes.c_char_p, _P)
_coordinator_stop = _fn("shmring_coordinator_stop", None, _P)
_client_connect = _fn("shmring_client_connect", _S, ctypes.c_char_p, ctypes.POINTER(_P))
_client_close = _fn("shmring_client_close", None, _P)
_channel_create = _fn("shmring_channel_create", _S, _P, ctypes.c_char_p, ctypes.POINTER(_Config))
_channel_delete = _fn("shmring_channel_delete", _S, _P, ctypes.c_char_p)
_channel_resize = _fn("shmring_channel_resize", _S, _P, ctypes.c_char_p, ctypes.c_uint64)
_channel_stats = _fn("shmring_channel_stats", _S, _P, ctypes.c_char_p, ctypes.POINTER(_Stats))
_producer_open = _fn("shmring_producer_open", _S, _P, ctypes.c_char_p, ctypes.POINTER(_P))
_producer_set_wait = _fn("shmring_producer_set_wait", _S, _P, ctypes.c_uint32)
_producer_max = _fn("shmring_producer_max_frame_size", ctypes.c_size_t, _P)
_producer_max_message = _fn("shmring_producer_max_message_size", ctypes.c_size_t, _P)
_send = _fn("shmring_send", _S, _P, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64)
_producer_finish = _fn("shmring_producer_finish", _S, _P)
_producer_fd = _fn("shmring_producer_fd", ctypes.c_int, _P)
_producer_close = _fn("shmring_producer_close", None, _P)
_consumer_open = _fn("shmring_consumer_open", _S, _P, ctypes.c_char_p, ctypes.POINTER(_P))
_consumer_set_wait = _fn("shmring_consumer_set_wait", _S, _P, ctypes.c_uint32)
_consumer_max = _fn("shmring_consumer_max_frame_size", ctypes.c_size_t, _P)
_consumer_max_message = _fn("shmring_consumer_max_message_size", ctypes.c_size_t, _P)
_consumer_missed = _fn("shmring_consumer_missed", ctypes.c_uint64, _P)
_consumer_producers = _fn("shmring_consumer_producers", ctypes.c_uint32, _P)
_consumer_fd = _fn("shmring_consumer_fd", ctypes.c_int, _P)
_recv = _fn("shmring_recv", _S, _P, ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t), ctypes.c_int64)
_read = _fn("shmring_read", _S, _P, ctypes.POINTER(_Frame), ctypes.c_int64)
_release = _fn("shmring_release", _S, _P)
_consumer_close = _fn("shmring_consumer_close", None, _P)
_send_keyed = _fn("shmring_send_keyed", _S, _P, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64)
_partition_of = _fn("shmring_partition_of", ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32)
_open_group = _fn("shmring_consumer_open_group", _S, _P, ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(_P))
_set_checkpointed = _fn("shmring_consumer_set_checkpointed", _S, _P, ctypes.c_int)
_checkpoint_commit = _fn("shmring_checkpoint_commit", _S, _P, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t)
_checkpoint_read = _fn("shmring_checkpoint_read", _S, _P, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t))
_group_partitions = _fn("shmring_group_partitions", ctypes.c_int64, _P, ctypes.POINTER(ctypes.c_uint32), ctypes.c_size_t)
_group_revoked = _fn("shmring_group_revoked", ctypes.c_int64, _P, ctypes.POINTER(ctypes.c_uint32), ctypes.c_size_t)

if _abi_version() != ABI_VERSION:
    raise ImportError(
        f"libshmring has ABI version {_abi_version()}; this module speaks version {ABI_VERSION}"
    )


def _check(status):
    if status == _OK:
        return
    message = _last_error().decode("utf-8", "replace")
    raise (Closed if status == _CLOSED else Error)(status, message)


def _done(status):
    """True for OK, False for back-pressure; raises for anything else."""
    if status in (_WOULD_BLOCK, _TIMED_OUT):
        return False
    _check(status)
    return True


def _ns(timeout):
    return -1 if timeout is None else int(timeout * 1e9)


def _path(p):
    return None if p is None else os.fsencode(p)


class Coordinator:
    """A coordinator on a thread of this process (no daemon needed); stopped by close()."""

    _h = None  # set by __init__; None once closed (close and __del__ may run after a failed __init__)

    def __init__(self, socket=None):
        self._h = _P()
        _check(_coordinator_start(_path(socket), ctypes.byref(self._h)))

    @property
    def socket(self):
        return os.fsdecode(_coordinator_socket(self._h))

    def close(self):
        h, self._h = self._h, None
        if h:
            _coordinator_stop(h)

    __del__ = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Producer:
    """The sending end of a channel. One thread at a time."""

    _h = None  # set by __init__; None once closed (close and __del__ may run after a failed __init__)

    def __init__(self, handle):
        self._h = handle

    def set_wait(self, wait):
        """"spin", "yield" or "park" (the default)."""
        _check(_producer_set_wait(self._h, _WAITS[wait]))

    @property
    def max_frame_size(self):
        return _producer_max(self._h)

    @property
    def max_message_size(self):
        """The longest message send takes (split into frames above max_frame_size)."""
        return _producer_max_message(self._h)

    def send_keyed(self, key, data, timeout=None):
        """Sends `data` on a partitioned channel to the partition of `key` (bytes):
        partition_of(key, partitions). True once sent; False if the partition's ring stayed
        full for `timeout` seconds (None: wait as long as it takes)."""
        return _done(_send_keyed(self._h, key, len(key), data, len(data), _ns(timeout)))

    def send(self, data, timeout=None):
        """Sends a copy of `data` (bytes-like); False if the ring stayed full for `timeout`.
        Up to max_message_size bytes: a longer message than max_frame_size is split into frames
        and arrives whole (one longer than the ring streams through it, which needs a timeout
        other than 0)."""
        data = bytes(data)
        return _done(_send(self._h, data, len(data), _ns(timeout)))

    def fileno(self):
        """A descriptor for an event loop (selectors, asyncio's loop.add_writer... as readable:
        use add_reader), readable when room may have been made. Once it is, send with
        timeout=0 until send returns False, which re-arms it. It belongs to the producer: do
        not close it."""
        fd = _producer_fd(self._h)
        if fd < 0:
            raise Error(_STATUS_NAMES.index("SHMRING_IO_ERROR"), _last_error().decode("utf-8", "replace"))
        return fd

    def finish(self):
        """Ends the stream: consumers receive what was sent, then Closed (with several MPMC
        producers, once the last one attached finished). A producer opened afterwards continues
        the stream. Close (or exit the `with` block) after it; nothing more can be sent."""
        _check(_producer_finish(self._h))

    def close(self):
        h, self._h = self._h, None
        if h:
            _producer_close(h)

    __del__ = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Consumer:
    """The receiving end of a channel. One thread at a time."""

    _h = None  # set by __init__; None once closed (close and __del__ may run after a failed __init__)

    def __init__(self, handle):
        self._h = handle
        self._buf = ctypes.create_string_buffer(max(1, _consumer_max(handle)))
        self.last_redelivered = False
        self.last_partition = 0

    def set_wait(self, wait):
        _check(_consumer_set_wait(self._h, _WAITS[wait]))

    @property
    def max_frame_size(self):
        return _consumer_max(self._h)

    @property
    def max_message_size(self):
        """The longest message recv returns."""
        return _consumer_max_message(self._h)

    def missed(self):
        """Broadcast with overflow="drop-oldest": frames published since this consumer opened
        that were overwritten before it received them (received + missed = published, counted
        in slots: a message longer than a frame takes several); and messages longer than a
        frame dropped unfinished because their producer died or timed out midway (one per
        message on SPSC, its slots on broadcast). 0 otherwise."""
        return _consumer_missed(self._h)

    def producers(self):
        """How many producers are attached to the channel now (dead ones until the coordinator
        repairs them). A crashed producer does not finish the stream: 0 tells a consumer that
        nothing will come until a producer opens the channel again."""
        return _consumer_producers(self._h)

    def fileno(self):
        """A descriptor to wait on in an event loop (asyncio's loop.add_reader, selectors,
        select.poll), readable when frames may be waiting or the stream ended. Once it is,
        receive with timeout=0 until recv returns None, which re-arms it (it is armed when
        made; readiness is a hint). It belongs to the consumer: do not close it.
        See examples/python/asyncio_consumer.py."""
        fd = _consumer_fd(self._h)
        if fd < 0:
            raise Error(_STATUS_NAMES.index("SHMRING_IO_ERROR"), _last_error().decode("utf-8", "replace"))
        return fd

    def __iter__(self):
        """The frames, copied, as bytes, waiting for each; ends when the stream is finished (or
        the channel deleted) and everything was received."""
        while True:
            try:
                yield self.recv()
            except Closed:
                return

    def recv(self, timeout=None):
        """The next frame, copied, as bytes; None if none came within `timeout`. Raises Closed
        once the channel was deleted, or its stream finished, and everything was received."""
        n = ctypes.c_size_t()
        while True:
            status = _recv(self._h, self._buf, len(self._buf), ctypes.byref(n), _ns(timeout))
            if status != _BUFFER_TOO_SMALL:
                break
            # A message longer than a frame: the buffer grows to it (the message stays).
            self._buf = ctypes.create_string_buffer(n.value)
        if not _done(status):
            return None
        return self._buf.raw[: n.value]

    @contextlib.contextmanager
    def read(self, timeout=None):
        """The next frame in place, as a read-only memoryview valid inside the `with` block
        (None if none came within `timeout`); released when the block ends. On a broadcast
        channel with overflow="drop-oldest" the view is of a checked copy, not the ring."""
        f = _Frame()
        if not _done(_read(self._h, ctypes.byref(f), _ns(timeout))):
            yield None
            return
        self.last_redelivered = bool(f.flags & REDELIVERED)
        self.last_partition = f.partition
        view = memoryview((ctypes.c_char * f.len).from_address(f.data or 0)).toreadonly() if f.len else memoryview(b"")
        try:
            yield view
        finally:
            view.release()
            _check(_release(self._h))

    def close(self):
        h, self._h = self._h, None
        if h:
            _consumer_close(h)

    __del__ = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def partition_of(key, partitions):
    """The partition frames of `key` (bytes) go to: FNV-1a 64 of the key modulo
    `partitions`, as shmring_partition_of and the Rust partition_of compute it."""
    return _partition_of(key, len(key), partitions)


class GroupConsumer(Consumer):
    """A member of a partitioned channel's consumer group (Client.group_consumer): receives
    from the partitions the coordinator assigns it, which change as members come and go
    (read() sets last_partition). With checkpointed(True), frames stay unreleased until
    commit(partition, state) saves the member's state for that partition and releases them
    together; whoever takes the partition over starts from checkpoint(partition)."""

    def checkpointed(self, on=True):
        _check(_set_checkpointed(self._h, 1 if on else 0))

    def commit(self, partition, state):
        """Saves `state` (bytes) as the partition's checkpoint and releases the frames
        received from it. False if the partition is no longer this member's."""
        status = _checkpoint_commit(self._h, partition, state, len(state))
        if status == _NOT_FOUND:
            return False
        _check(status)
        return True

    def checkpoint(self, partition):
        """The partition's last checkpoint (bytes) as found when this member took it; None if
        none was committed."""
        n = ctypes.c_size_t()
        status = _checkpoint_read(self._h, partition, None, 0, ctypes.byref(n))
        if status == _NOT_FOUND:
            return None
        if status == _BUFFER_TOO_SMALL or (status == _OK and n.value > 0):
            buf = ctypes.create_string_buffer(n.value)
            _check(_checkpoint_read(self._h, partition, buf, n.value, ctypes.byref(n)))
            return buf.raw[: n.value]
        _check(status)
        return b""

    def partitions(self):
        """The partitions this member holds now."""
        out = (ctypes.c_uint32 * 256)()
        n = _group_partitions(self._h, out, 256)
        return list(out[: min(n, 256)])

    def revoked(self):
        """Partitions given to another member since the last call: drop their state."""
        out = (ctypes.c_uint32 * 256)()
        n = _group_revoked(self._h, out, 256)
        return list(out[: max(n, 0)])


class Client:
    """A connection to a coordinator: $SHMRING_SOCKET or the default socket unless given."""

    _h = None  # set by __init__; None once closed (close and __del__ may run after a failed __init__)

    def __init__(self, socket=None):
        self._h = _P()
        _check(_client_connect(_path(socket), ctypes.byref(self._h)))

    def create(self, name, kind="spsc", capacity=None, max_frame_size=None, mode=0o600,
               max_producers=None, max_consumers=None, overflow=None, history=None,
               max_message_size=None, partitions=None, checkpoint_size=None):
        """Creates a channel owned by this user; kind is "spsc", "mpmc" or "broadcast".
        Broadcast only: overflow is "block" (the default: the producer waits for the slowest
        subscriber) or "drop-oldest" (it never waits); history is how many of the most recent
        frames a new subscriber receives first (default 0). A message up to max_message_size
        bytes (default max_frame_size) is taken by send and returned whole by recv (SPSC and
        broadcast split it into frames; MPMC passes it through a message pool)."""
        cfg = _Config()
        _config_default(ctypes.byref(cfg), _KINDS[kind])
        if overflow is not None:
            cfg.overflow = _OVERFLOWS[overflow]
        for field, value in (("capacity", capacity), ("max_frame_size", max_frame_size),
                             ("max_producers", max_producers), ("max_consumers", max_consumers),
                             ("history", history), ("max_message_size", max_message_size),
                             ("partitions", partitions), ("checkpoint_size", checkpoint_size)):
            if value is not None:
                setattr(cfg, field, value)
        cfg.mode = mode
        _check(_channel_create(self._h, name.encode(), ctypes.byref(cfg)))

    def delete(self, name):
        _check(_channel_delete(self._h, name.encode()))

    def resize(self, name, capacity):
        """Gives a live SPSC or broadcast channel a new capacity in bytes while its producers
        and consumers keep running: nothing is lost or repeated, order is kept, no handle is
        reopened. Raises Error with status "SHMRING_BUSY" while the previous resize is still
        under way (stats()["draining_generation"] is not 0)."""
        _check(_channel_resize(self._h, name.encode(), capacity))

    def stats(self, name):
        """A dict of the channel's counters."""
        s = _Stats()
        _check(_channel_stats(self._h, name.encode(), ctypes.byref(s)))
        return {field: getattr(s, field) for field, _ in _Stats._fields_}

    def producer(self, name):
        h = _P()
        _check(_producer_open(self._h, name.encode(), ctypes.byref(h)))
        return Producer(h)

    def consumer(self, name):
        h = _P()
        _check(_consumer_open(self._h, name.encode(), ctypes.byref(h)))
        return Consumer(h)

    def group_consumer(self, name, group):
        """Joins consumer group `group` of partitioned channel `name` (see GroupConsumer)."""
        h = _P()
        _check(_open_group(self._h, name.encode(), group.encode(), ctypes.byref(h)))
        return GroupConsumer(h)

    def close(self):
        h, self._h = self._h, None
        if h:
            _client_close(h)

    __del__ = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

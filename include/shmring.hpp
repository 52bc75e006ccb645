/*
 * shmring for C++17: a header-only wrapper over the C ABI (shmring.h), with RAII handles.
 *
 * Failures throw shmring::Error (its status() is the C status, what() the library's message).
 * Back-pressure is not a failure: the try_ and _for calls say it in their return value (false,
 * or an empty std::optional) when the ring stayed full or empty; the plain calls wait as long as
 * it takes. Handles are move-only and free themselves when destroyed. A Frame or Claim borrows
 * its Consumer or Producer and must not outlive it; while one is alive, its handle does nothing
 * else (the C calls would return SHMRING_INVALID_ARGUMENT).
 *
 *   shmring::Client client;                                 // SHMRING_SOCKET or the default socket
 *   client.create("prices", shmring::ChannelConfig(shmring::Kind::spsc).max_frame_size(256));
 *   auto tx = client.producer("prices");
 *   tx.send("AAPL 187.2");
 *   auto rx = client.consumer("prices");
 *   auto frame = rx.read();                                 // zero-copy view until destroyed
 *   std::string_view text = frame.view();
 *
 * A broadcast channel (Kind::broadcast) has one producer; every consumer opened on it is a
 * subscriber that receives every frame published after it opened, in order. With
 * Overflow::drop_oldest the producer never waits and Consumer::missed() counts what was lost.
 */
#ifndef SHMRING_HPP
#define SHMRING_HPP

#include "shmring.h"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace shmring {

/// A failed call: the C status and the library's message.
class Error : public std::runtime_error {
  public:
    Error(shmring_status status, const char *message)
        : std::runtime_error(std::string(shmring_status_name(status)) + ": " + message),
          status_(status) {}
    /// The C status (SHMRING_NOT_FOUND, ...).
    shmring_status status() const noexcept { return status_; }

  private:
    shmring_status status_;
};

namespace detail {
inline void check(shmring_status s) {
    if (s != SHMRING_OK) throw Error(s, shmring_last_error());
}
/// A descriptor from shmring_consumer_fd or shmring_producer_fd; throws on -1.
inline int descriptor(int fd) {
    if (fd < 0) throw Error(SHMRING_IO_ERROR, shmring_last_error());
    return fd;
}
/// true for SHMRING_OK, false for back-pressure, throws for anything else.
inline bool done(shmring_status s) {
    if (s == SHMRING_WOULD_BLOCK || s == SHMRING_TIMED_OUT) return false;
    check(s);
    return true;
}
inline int64_t ns(std::chrono::nanoseconds t) { return t.count() < 0 ? -1 : t.count(); }
} // namespace detail

/// SPSC, MPMC or broadcast (every frame to every subscriber).
enum class Kind : shmring_kind { spsc = SHMRING_SPSC, mpmc = SHMRING_MPMC, broadcast = SHMRING_BROADCAST };

/// What the producer of a broadcast channel does when its ring is full: block waits for the
/// slowest live subscriber; drop_oldest overwrites, and lapped subscribers count what they missed.
enum class Overflow : shmring_overflow { block = SHMRING_OVERFLOW_BLOCK, drop_oldest = SHMRING_OVERFLOW_DROP_OLDEST };

/// How blocking calls wait.
enum class Wait : shmring_wait {
    spin = SHMRING_WAIT_SPIN,
    yield = SHMRING_WAIT_YIELD,
    park = SHMRING_WAIT_PARK
};

/// A channel's shape, starting from the defaults of its kind.
struct ChannelConfig : shmring_channel_config {
    explicit ChannelConfig(Kind kind = Kind::spsc) : shmring_channel_config{} {
        shmring_channel_config_default(this, static_cast<shmring_kind>(kind));
    }
    ChannelConfig &capacity(uint64_t bytes) { shmring_channel_config::capacity = bytes; return *this; }
    ChannelConfig &max_frame_size(uint32_t bytes) { shmring_channel_config::max_frame_size = bytes; return *this; }
    ChannelConfig &mode(uint32_t bits) { shmring_channel_config::mode = bits; return *this; }
    ChannelConfig &max_producers(uint32_t n) { shmring_channel_config::max_producers = n; return *this; }
    ChannelConfig &max_consumers(uint32_t n) { shmring_channel_config::max_consumers = n; return *this; }
    /// Broadcast: what the producer does when the ring is full (default Overflow::block).
    ChannelConfig &overflow(Overflow o) { shmring_channel_config::overflow = static_cast<shmring_overflow>(o); return *this; }
    /// Broadcast: how many of the most recent frames a new subscriber receives first (default 0).
    ChannelConfig &history(uint32_t frames) { shmring_channel_config::history = frames; return *this; }
    /// The largest message send takes (default: max_frame_size): split into frames (SPSC,
    /// broadcast) or passed through the message pool (MPMC).
    ChannelConfig &max_message_size(uint64_t bytes) { shmring_channel_config::max_message_size = bytes; return *this; }
};

/// A coordinator running on a thread of this process; stopped when destroyed.
class Coordinator {
  public:
    /// Listens on `socket` (nullptr: the default socket). See shmring_coordinator_start.
    explicit Coordinator(const char *socket = nullptr) { detail::check(shmring_coordinator_start(socket, &p_)); }
    Coordinator(Coordinator &&o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
    Coordinator &operator=(Coordinator &&o) noexcept { std::swap(p_, o.p_); return *this; }
    Coordinator(const Coordinator &) = delete;
    Coordinator &operator=(const Coordinator &) = delete;
    ~Coordinator() { shmring_coordinator_stop(p_); }
    /// The socket it listens on.
    const char *socket() const { return shmring_coordinator_socket(p_); }

  private:
    shmring_coordinator *p_ = nullptr;
};

class Producer;

/// Space claimed in the ring (zero-copy): write size() bytes at data(), then commit(). Aborted
/// if destroyed uncommitted.
class Claim {
  public:
    Claim(Claim &&o) noexcept : p_(std::exchange(o.p_, nullptr)), data_(o.data_), size_(o.size_) {}
    Claim(const Claim &) = delete;
    Claim &operator=(const Claim &) = delete;
    Claim &operator=(Claim &&) = delete;
    ~Claim() {
        if (p_ != nullptr) shmring_abort(p_);
    }
    void *data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }
    /// Publishes the first `len` bytes (default: all) as one frame.
    void commit(std::size_t len) { detail::check(shmring_commit(std::exchange(p_, nullptr), len)); }
    void commit() { commit(size_); }

  private:
    friend class Producer;
    Claim(shmring_producer *p, void *data, std::size_t size) : p_(p), data_(data), size_(size) {}
    shmring_producer *p_;
    void *data_;
    std::size_t size_;
};

/// The sending end of a channel; closed when destroyed. One thread at a time.
class Producer {
  public:
    Producer(Producer &&o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
    Producer &operator=(Producer &&o) noexcept { std::swap(p_, o.p_); return *this; }
    Producer(const Producer &) = delete;
    Producer &operator=(const Producer &) = delete;
    ~Producer() { shmring_producer_close(p_); }

    void set_wait(Wait w) { detail::check(shmring_producer_set_wait(p_, static_cast<shmring_wait>(w))); }
    std::size_t max_frame_size() const { return shmring_producer_max_frame_size(p_); }
    /// The longest message send takes (split into frames above max_frame_size()).
    std::size_t max_message_size() const { return shmring_producer_max_message_size(p_); }

    /// Sends a copy, waiting as long as the ring is full.
    void send(const void *data, std::size_t len) { detail::check(shmring_send(p_, data, len, -1)); }
    void send(std::string_view s) { send(s.data(), s.size()); }
    /// Sends a copy if the ring has room now; false if not.
    bool try_send(const void *data, std::size_t len) { return detail::done(shmring_send(p_, data, len, 0)); }
    /// Sends a copy, waiting at most `timeout` for room; false if it stayed full.
    bool send_for(const void *data, std::size_t len, std::chrono::nanoseconds timeout) {
        return detail::done(shmring_send(p_, data, len, detail::ns(timeout)));
    }

    /// Claims `len` bytes to write in place, waiting as long as the ring is full.
    Claim claim(std::size_t len) { return std::move(*claim_for(len, std::chrono::nanoseconds(-1))); }
    /// Claims `len` bytes, waiting at most `timeout`; empty if the ring stayed full.
    std::optional<Claim> claim_for(std::size_t len, std::chrono::nanoseconds timeout) {
        void *data = nullptr;
        if (!detail::done(shmring_claim(p_, len, &data, detail::ns(timeout)))) return std::nullopt;
        return Claim(p_, data, len);
    }

    /// Ends the stream: consumers receive what was sent, then SHMRING_CLOSED (with several MPMC
    /// producers, once the last one attached finished). Nothing more can be sent through this
    /// producer (every call throws SHMRING_CLOSED); a producer opened afterwards continues the
    /// stream. A producer destroyed without finishing, or one that crashes, does not end it.
    void finish() { detail::check(shmring_producer_finish(p_)); }

    /// A descriptor for an event loop, readable when room may have been made: once it is,
    /// try_send until it returns false (which re-arms it). Owned by the producer: do not close
    /// it. See shmring_producer_fd.
    int fd() { return detail::descriptor(shmring_producer_fd(p_)); }

  private:
    friend class Client;
    explicit Producer(shmring_producer *p) : p_(p) {}
    shmring_producer *p_;
};

/// A frame lent in place by Consumer::read (on a broadcast channel with Overflow::drop_oldest, a
/// checked copy held by the consumer); released when destroyed.
class Frame {
  public:
    Frame(Frame &&o) noexcept : c_(std::exchange(o.c_, nullptr)), f_(o.f_) {}
    Frame(const Frame &) = delete;
    Frame &operator=(const Frame &) = delete;
    Frame &operator=(Frame &&) = delete;
    ~Frame() {
        if (c_ != nullptr) shmring_release(c_);
    }
    const void *data() const noexcept { return f_.data; }
    std::size_t size() const noexcept { return f_.len; }
    std::string_view view() const noexcept { return {static_cast<const char *>(f_.data), f_.len}; }
    /// Handed to a consumer that died before releasing it: perhaps seen a second time.
    bool redelivered() const noexcept { return (f_.flags & SHMRING_FRAME_REDELIVERED) != 0; }

  private:
    friend class Consumer;
    Frame(shmring_consumer *c, shmring_frame f) : c_(c), f_(f) {}
    shmring_consumer *c_;
    shmring_frame f_;
};

/// The receiving end of a channel; closed when destroyed. One thread at a time.
class Consumer {
  public:
    Consumer(Consumer &&o) noexcept : c_(std::exchange(o.c_, nullptr)) {}
    Consumer &operator=(Consumer &&o) noexcept { std::swap(c_, o.c_); return *this; }
    Consumer(const Consumer &) = delete;
    Consumer &operator=(const Consumer &) = delete;
    ~Consumer() { shmring_consumer_close(c_); }

    void set_wait(Wait w) { detail::check(shmring_consumer_set_wait(c_, static_cast<shmring_wait>(w))); }
    std::size_t max_frame_size() const { return shmring_consumer_max_frame_size(c_); }
    /// The longest message recv returns.
    std::size_t max_message_size() const { return shmring_consumer_max_message_size(c_); }
    /// Broadcast with Overflow::drop_oldest: frames published since this consumer opened that
    /// were overwritten before it received them (received + missed() = published, counted in
    /// slots: a message longer than a frame takes several); and messages longer than a frame
    /// dropped unfinished (their producer died or timed out midway: one per message on SPSC,
    /// its slots on broadcast). Otherwise 0.
    uint64_t missed() const { return shmring_consumer_missed(c_); }
    /// Producers attached to the channel now (a dead one until the coordinator repairs it): 0
    /// tells a consumer that nothing comes until a producer opens the channel, which a crashed
    /// producer does not say otherwise (only Producer::finish ends the stream).
    uint32_t producers() const { return shmring_consumer_producers(c_); }
    /// A descriptor for poll/epoll or any event loop, readable when frames may be waiting (or
    /// the stream ended): once it is, try_read until it returns empty (which re-arms it), then
    /// poll again. Owned by the consumer: do not close it. See shmring_consumer_fd.
    int fd() { return detail::descriptor(shmring_consumer_fd(c_)); }

    /// Lends the next frame in place, waiting as long as the ring is empty. Throws Error with
    /// SHMRING_CLOSED once the stream was finished (Producer::finish), or the channel deleted,
    /// and drained.
    Frame read() { return std::move(*read_for(std::chrono::nanoseconds(-1))); }
    /// Lends the next frame, waiting at most `timeout`; empty if none came.
    std::optional<Frame> read_for(std::chrono::nanoseconds timeout) {
        shmring_frame f{};
        if (!detail::done(shmring_read(c_, &f, detail::ns(timeout)))) return std::nullopt;
        return Frame(c_, f);
    }
    std::optional<Frame> try_read() { return read_for(std::chrono::nanoseconds(0)); }
    /// Lends the next frame, waiting as long as it takes; empty once the stream was finished
    /// (Producer::finish), or the channel deleted, and drained: `while (auto f = rx.next())`.
    std::optional<Frame> next() {
        shmring_frame f{};
        shmring_status s = shmring_read(c_, &f, -1);
        if (s == SHMRING_CLOSED) return std::nullopt;
        detail::check(s);
        return Frame(c_, f);
    }
    /// Copies the next frame (or message) into a string, waiting as long as the ring is empty.
    std::string recv() {
        std::string s(max_frame_size(), '\0');
        std::size_t len = 0;
        shmring_status st;
        // A message longer than a frame stays in the ring while the string grows to it.
        while ((st = shmring_recv(c_, s.data(), s.size(), &len, -1)) == SHMRING_BUFFER_TOO_SMALL) s.resize(len);
        detail::check(st);
        s.resize(len);
        return s;
    }

  private:
    friend class Client;
    explicit Consumer(shmring_consumer *c) : c_(c) {}
    shmring_consumer *c_;
};

/// A connection to a coordinator; closed when destroyed. Any thread.
class Client {
  public:
    /// Connects to `socket`; nullptr: SHMRING_SOCKET, else the default socket.
    explicit Client(const char *socket = nullptr) { detail::check(shmring_client_connect(socket, &c_)); }
    Client(Client &&o) noexcept : c_(std::exchange(o.c_, nullptr)) {}
    Client &operator=(Client &&o) noexcept { std::swap(c_, o.c_); return *this; }
    Client(const Client &) = delete;
    Client &operator=(const Client &) = delete;
    ~Client() { shmring_client_close(c_); }

    void create(const std::string &name, const ChannelConfig &cfg) {
        detail::check(shmring_channel_create(c_, name.c_str(), &cfg));
    }
    /// Deletes a channel ("delete" is a C++ keyword).
    void remove(const std::string &name) { detail::check(shmring_channel_delete(c_, name.c_str())); }
    /// Gives a live SPSC or broadcast channel a new capacity in bytes while its producers and
    /// consumers keep running (shmring_channel_resize); throws shmring::Error with
    /// SHMRING_BUSY while the previous resize is still under way.
    void resize(const std::string &name, uint64_t capacity) {
        detail::check(shmring_channel_resize(c_, name.c_str(), capacity));
    }
    shmring_stats stats(const std::string &name) {
        shmring_stats s{};
        detail::check(shmring_channel_stats(c_, name.c_str(), &s));
        return s;
    }
    Producer producer(const std::string &name) {
        shmring_producer *p = nullptr;
        detail::check(shmring_producer_open(c_, name.c_str(), &p));
        return Producer(p);
    }
    Consumer consumer(const std::string &name) {
        shmring_consumer *c = nullptr;
        detail::check(shmring_consumer_open(c_, name.c_str(), &c));
        return Consumer(c);
    }

  private:
    shmring_client *c_ = nullptr;
};

} // namespace shmring

#endif

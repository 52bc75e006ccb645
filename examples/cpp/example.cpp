// shmring from C++ (include/shmring.hpp): a coordinator embedded in this process, an SPSC
// channel streaming the frames.h pattern from a producer thread to a consumer that waits in
// poll() on its descriptor, copied and in place, an MPMC channel shared by two consumer
// threads, and messages longer than the ring (max_message_size) received whole by recv(), with
// the channel resized halfway while they stream. Prints what arrived.
//
//   g++ -std=c++17 -Iinclude examples/cpp/example.cpp -Ltarget/release -lshmring -pthread
//       -Wl,-rpath,$PWD/target/release -o example && ./example

#include "../c/frames.h"
#include "shmring.hpp"

#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <string>
#include <poll.h>
#include <thread>
#include <unistd.h>

int main() {
    using namespace std::chrono_literals;
    std::string socket = "/tmp/shmring-cpp-example-" + std::to_string(getpid()) + ".sock";
    shmring::Coordinator coordinator(socket.c_str());
    shmring::Client client(coordinator.socket());

    // SPSC: one producer thread, one consumer.
    client.create("stream", shmring::ChannelConfig(shmring::Kind::spsc).capacity(64 << 10).max_frame_size(FRAME_MAX));
    const uint64_t count = 10000;
    uint64_t sent_sum = FNV_START;
    std::thread producer([&] {
        auto tx = client.producer("stream");
        uint8_t buf[FRAME_MAX];
        for (uint64_t i = 0; i < count; i++) {
            std::size_t len = frame_len(i);
            if (i % 2 == 0) {
                frame_fill(i, buf, len);
                sent_sum = fnv1a(sent_sum, buf, len);
                tx.send(buf, len);
            } else {
                auto claim = tx.claim(len); // zero-copy: written in place, committed below
                frame_fill(i, static_cast<uint8_t *>(claim.data()), len);
                sent_sum = fnv1a(sent_sum, static_cast<const uint8_t *>(claim.data()), len);
                claim.commit();
            }
        }
        tx.finish(); // the end of the stream: the consumer drains, then next() is empty
    });
    auto rx = client.consumer("stream");
    uint64_t received = 0, sum = FNV_START;
    // The consumer waits in poll() on its descriptor, as an event loop would beside its
    // sockets; once it is readable, it takes every frame there is (an empty try_read re-arms
    // the descriptor). The end of the stream is an Error with SHMRING_CLOSED.
    pollfd pfd{rx.fd(), POLLIN, 0};
    for (bool open = true; open;) {
        try {
            while (auto frame = rx.try_read()) { // released at the end of this iteration
                auto data = static_cast<const uint8_t *>(frame->data());
                if (!frame_ok(received, data, frame->size())) {
                    std::fprintf(stderr, "example: frame %" PRIu64 " is wrong\n", received);
                    return 1;
                }
                sum = fnv1a(sum, data, frame->size());
                received++;
            }
        } catch (const shmring::Error &e) {
            if (e.status() != SHMRING_CLOSED) throw;
            open = false;
            continue;
        }
        poll(&pfd, 1, -1);
    }
    producer.join();
    std::printf("spsc: %" PRIu64 " frames, checksum %016" PRIx64 " (sent %016" PRIx64 ")\n", received, sum,
                sent_sum);

    // MPMC: work shared by two consumer threads, each frame to exactly one of them.
    client.create("work", shmring::ChannelConfig(shmring::Kind::mpmc).max_frame_size(64));
    std::atomic<uint64_t> total{0}, frames{0};
    auto worker = [&] {
        auto c = client.consumer("work");
        while (auto job = c.next()) { // until the producer finishes the stream
            total += std::stoull(std::string(job->view()));
            frames++;
        }
    };
    std::thread a(worker), b(worker);
    {
        auto tx = client.producer("work");
        for (int i = 1; i <= 1000; i++) tx.send(std::to_string(i));
        tx.finish(); // both workers drain what is left, then stop
    }
    a.join();
    b.join();
    std::printf("mpmc: %" PRIu64 " jobs, sum %" PRIu64 "\n", frames.load(), total.load());

    // Messages longer than the ring: send() splits each, recv() returns it whole (its string
    // grows to the message).
    client.create("images", shmring::ChannelConfig(shmring::Kind::spsc)
                                .capacity(64 << 10)
                                .max_frame_size(1024)
                                .max_message_size(1 << 20));
    std::size_t images_ok = 0;
    std::thread painter([&] {
        auto tx = client.producer("images");
        for (std::size_t k = 1; k <= 8; k++) tx.send(std::string(k * 100000, static_cast<char>('a' + k)));
        tx.finish();
    });
    {
        auto rx = client.consumer("images");
        for (std::size_t k = 1; k <= 8; k++) {
            images_ok += rx.recv() == std::string(k * 100000, static_cast<char>('a' + k));
            // Halfway, the ring grows to 4 MiB while the painter streams: nothing is lost,
            // nobody reopens anything.
            if (k == 4) client.resize("images", 4 << 20);
        }
    }
    painter.join();
    shmring_stats images = client.stats("images");
    std::printf("messages: %zu of 8 whole, up to %zu bytes through a 64 KiB ring, then a %" PRIu64
                " KiB one (%" PRIu64 " resize)\n",
                images_ok, static_cast<std::size_t>(800000), images.capacity >> 10, images.resizes);

    try {
        client.producer("no-such-channel");
    } catch (const shmring::Error &e) {
        std::printf("as expected: %s\n", e.what());
    }
    bool ok = received == count && sum == sent_sum && frames == 1000 && total == 500500 && images_ok == 8 &&
              images.resizes == 1 && images.capacity == 4 << 20;
    std::puts(ok ? "ok" : "MISMATCH");
    return ok ? 0 : 1;
}

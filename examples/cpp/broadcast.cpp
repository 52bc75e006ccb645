// A broadcast channel from C++ (include/shmring.hpp): one producer, two subscribers, every frame
// to both. The subscribers are threads to keep the example short; in other processes (as in
// examples/c/broadcast.c) the code is the same.
//
//   broadcast [FRAMES [block|drop-oldest]]                    defaults: 100000 block
//
// Under block the producer waits for the slower subscriber and both receive every frame. Under
// drop-oldest the producer never waits; subscriber 2, which naps now and then, is lapped and
// misses frames, and says how many: received + missed = published.
//
//   g++ -std=c++17 -Iinclude examples/cpp/broadcast.cpp -Ltarget/release -lshmring -pthread
//       -Wl,-rpath,$PWD/target/release -o broadcast && ./broadcast 100000 drop-oldest

#include "../c/frames.h"
#include "shmring.hpp"

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <unistd.h>

int main(int argc, char **argv) {
    using namespace std::chrono_literals;
    const uint64_t frames = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 100000;
    const bool drop = argc > 2 && std::strcmp(argv[2], "drop-oldest") == 0;
    std::string socket = "/tmp/shmring-cpp-broadcast-" + std::to_string(getpid()) + ".sock";
    shmring::Coordinator coordinator(socket.c_str());
    shmring::Client client(coordinator.socket());
    client.create("ticks", shmring::ChannelConfig(shmring::Kind::broadcast)
                               .max_frame_size(FRAME_MAX)
                               .max_consumers(2)
                               .overflow(drop ? shmring::Overflow::drop_oldest : shmring::Overflow::block));
    auto tx = client.producer("ticks");

    // Subscribe before publishing: a subscriber receives what is published after it opened.
    bool failed[2] = {false, false};
    std::thread subscribers[2];
    for (int k = 0; k < 2; k++) {
        subscribers[k] = std::thread([&, k, rx = client.consumer("ticks")]() mutable {
            uint64_t received = 0;
            while (auto frame = rx.next()) { // released at the end of this iteration
                auto data = static_cast<const uint8_t *>(frame->data());
                uint64_t i = 0;
                std::memcpy(&i, data, sizeof i); // frames.h: little-endian index first
                // In order, none lost unsaid: the frames before i were all received or missed.
                if (i != received + rx.missed() || !frame_ok(i, data, frame->size())) {
                    std::fprintf(stderr, "subscriber %d: frame %" PRIu64 " out of order or damaged\n", k + 1, i);
                    failed[k] = true;
                    return;
                }
                received++;
                if (k == 1 && received % 1000 == 0) std::this_thread::sleep_for(1ms); // a slow one
            }
            std::printf("subscriber %d: received=%" PRIu64 " missed=%" PRIu64 "\n", k + 1, received, rx.missed());
            failed[k] = drop ? received + rx.missed() != frames : received != frames;
        });
    }

    uint8_t buf[FRAME_MAX];
    for (uint64_t i = 0; i < frames; i++) {
        std::size_t len = frame_len(i);
        frame_fill(i, buf, len);
        if (!drop) {
            tx.send(buf, len); // waits for the slower subscriber
        } else if (!tx.try_send(buf, len)) { // never: a drop-oldest producer does not wait
            std::fprintf(stderr, "producer: the ring was full\n");
            std::exit(1);
        }
    }
    tx.finish(); // the end: each subscriber receives what is left, then next() is empty
    std::printf("producer: published=%" PRIu64 " overflow=%s\n", frames, drop ? "drop-oldest" : "block");
    for (auto &t : subscribers) t.join();
    bool ok = !failed[0] && !failed[1];
    std::puts(ok ? "ok" : "MISMATCH");
    return ok ? 0 : 1;
}

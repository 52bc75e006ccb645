/*
 * Broadcast through the C ABI, one role per process (tests/tests/broadcast.rs runs them). The
 * coordinator is the one at SHMRING_SOCKET.
 *
 *   broadcast_fanout create CHANNEL block|drop-oldest SLOTS SUBSCRIBERS
 *   broadcast_fanout subscribe CHANNEL [STALL_AT]
 *   broadcast_fanout publish CHANNEL FRAMES block|drop-oldest [PAUSE_AT]
 *
 * Frame i is 8 to FRAME_MAX bytes: i (64 bits, little-endian), then bytes that all depend on i.
 * The publisher ends the stream with shmring_producer_finish.
 *
 * subscribe: prints "subscribed" once open, then receives (alternately in place with
 * shmring_read and copied with shmring_recv) until SHMRING_CLOSED, checking every byte of
 * every frame and that frame i comes after exactly i frames were received or missed (in order,
 * nothing lost without being counted); prints "done received=R missed=M". With STALL_AT it
 * reads frame STALL_AT in place, prints "stalled" and waits forever holding it.
 *
 * publish: sends FRAMES frames (even ones copied, odd ones claimed and committed in place),
 * then finishes the stream. Under block it waits as long as it takes; under drop-oldest every call has
 * timeout 0, and any status but SHMRING_OK (SHMRING_WOULD_BLOCK included) fails the program.
 * With PAUSE_AT it prints "paused" after that many frames and waits for SIGUSR1. Prints
 * "published=N".
 */
#define _POSIX_C_SOURCE 200809L
#include "shmring.h"

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FRAME_MAX 112
#define WAIT_NS (30LL * 1000 * 1000 * 1000) /* a subscriber given nothing for 30 s fails */

static void check(shmring_status s, const char *what) {
    if (s != SHMRING_OK) {
        fprintf(stderr, "broadcast_fanout: %s: %s: %s\n", what, shmring_status_name(s),
                shmring_last_error());
        exit(1);
    }
}

static size_t frame_len(uint64_t i) { return 8 + (size_t)((i * 37) % (FRAME_MAX - 7)); }

static uint8_t frame_byte(uint64_t i, size_t j) {
    uint64_t mix = (i + 1) * UINT64_C(0x9e3779b97f4a7c15);
    return (uint8_t)((mix >> (8 * (j % 8))) ^ (uint8_t)(j * 29));
}

static void frame_fill(uint64_t i, uint8_t *buf, size_t len) {
    for (size_t j = 0; j < 8; j++) buf[j] = (uint8_t)(i >> (8 * j));
    for (size_t j = 8; j < len; j++) buf[j] = frame_byte(i, j);
}

/* The index of a frame, or -1 if any of its bytes is not what frame_fill wrote. */
static int64_t frame_index(const uint8_t *data, size_t len) {
    if (len < 8) return -1;
    uint64_t i = 0;
    for (size_t j = 0; j < 8; j++) i |= (uint64_t)data[j] << (8 * j);
    if (len != frame_len(i)) return -1;
    for (size_t j = 8; j < len; j++)
        if (data[j] != frame_byte(i, j)) return -1;
    return (int64_t)i;
}

static shmring_client *connect_client(void) {
    shmring_client *client = NULL;
    check(shmring_client_connect(NULL, &client), "connecting");
    return client;
}

static int create(const char *channel, const char *policy, long slots, long subscribers) {
    shmring_client *client = connect_client();
    shmring_channel_config cfg;
    shmring_channel_config_default(&cfg, SHMRING_BROADCAST);
    cfg.max_frame_size = FRAME_MAX;
    cfg.capacity = (uint64_t)slots * FRAME_MAX; /* buys capacity / max_frame_size slots */
    cfg.max_consumers = (uint32_t)subscribers;
    cfg.overflow =
        strcmp(policy, "drop-oldest") == 0 ? SHMRING_OVERFLOW_DROP_OLDEST : SHMRING_OVERFLOW_BLOCK;
    check(shmring_channel_create(client, channel, &cfg), "creating the channel");
    shmring_stats stats;
    check(shmring_channel_stats(client, channel, &stats), "reading the statistics");
    printf("created slots=%" PRIu64 "\n", stats.slots);
    shmring_client_close(client);
    return 0;
}

static int subscribe(const char *channel, long stall_at) {
    shmring_client *client = connect_client();
    shmring_consumer *rx = NULL;
    check(shmring_consumer_open(client, channel, &rx), "opening the channel");
    printf("subscribed\n");
    fflush(stdout);

    uint64_t received = 0;
    uint8_t buf[FRAME_MAX];
    for (;;) {
        const uint8_t *data;
        size_t len;
        int in_place = received % 2 == 0 || (long)received == stall_at;
        shmring_status s;
        if (in_place) {
            shmring_frame f = {0};
            s = shmring_read(rx, &f, WAIT_NS);
            data = f.data;
            len = f.len;
        } else {
            s = shmring_recv(rx, buf, sizeof buf, &len, WAIT_NS);
            data = buf;
        }
        if (s == SHMRING_CLOSED) break; /* finished, and everything received */
        check(s, in_place ? "reading" : "receiving");
        int64_t i = frame_index(data, len);
        uint64_t missed = shmring_consumer_missed(rx);
        if (i < 0 || (uint64_t)i != received + missed) {
            fprintf(stderr,
                    "broadcast_fanout: frame %" PRId64 " (%zu bytes) damaged or out of order after "
                    "%" PRIu64 " received and %" PRIu64 " missed\n",
                    i, len, received, missed);
            return 1;
        }
        if ((long)received == stall_at) {
            printf("stalled\n"); /* holding frame `stall_at`, unreleased, until killed */
            fflush(stdout);
            for (;;) pause();
        }
        if (in_place) check(shmring_release(rx), "releasing");
        received++;
    }
    printf("done received=%" PRIu64 " missed=%" PRIu64 "\n", received,
           shmring_consumer_missed(rx));
    shmring_consumer_close(rx);
    shmring_client_close(client);
    return 0;
}

static int publish(const char *channel, long frames, const char *policy, long pause_at) {
    int drop = strcmp(policy, "drop-oldest") == 0;
    int64_t timeout = drop ? 0 : -1;
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL); /* taken by sigwait, even if sent early */

    shmring_client *client = connect_client();
    shmring_producer *tx = NULL;
    check(shmring_producer_open(client, channel, &tx), "opening the channel");
    uint8_t buf[FRAME_MAX];
    for (long n = 0; n < frames; n++) {
        if (n == pause_at) {
            printf("paused\n");
            fflush(stdout);
            int sig = 0;
            sigwait(&usr1, &sig);
        }
        uint64_t i = (uint64_t)n;
        size_t len = frame_len(i);
        shmring_status s;
        if (n % 2 == 0) {
            frame_fill(i, buf, len);
            s = shmring_send(tx, buf, len, timeout);
        } else {
            void *space = NULL;
            s = shmring_claim(tx, len, &space, timeout);
            if (s == SHMRING_OK) {
                frame_fill(i, space, len);
                s = shmring_commit(tx, len);
            }
        }
        if (s != SHMRING_OK) {
            fprintf(stderr, "broadcast_fanout: frame %ld: %s: %s\n", n, shmring_status_name(s),
                    shmring_last_error());
            return 1;
        }
    }
    check(shmring_producer_finish(tx), "finishing the stream");
    printf("published=%ld\n", frames);
    shmring_producer_close(tx);
    shmring_client_close(client);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 6 && strcmp(argv[1], "create") == 0)
        return create(argv[2], argv[3], atol(argv[4]), atol(argv[5]));
    if (argc >= 3 && strcmp(argv[1], "subscribe") == 0)
        return subscribe(argv[2], argc > 3 ? atol(argv[3]) : -1);
    if (argc >= 5 && strcmp(argv[1], "publish") == 0)
        return publish(argv[2], atol(argv[3]), argv[4], argc > 5 ? atol(argv[5]) : -1);
    fprintf(stderr, "usage: see the comment at the top of broadcast_fanout.c\n");
    return 2;
}

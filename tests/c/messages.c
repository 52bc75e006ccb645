/*
 * Messages longer than a frame through the C ABI, one role per process (tests/tests/messages.rs
 * runs them). The coordinator is the one at SHMRING_SOCKET.
 *
 *   messages create CHANNEL spsc|mpmc|broadcast CAPACITY MAX_FRAME MAX_MESSAGE
 *   messages produce CHANNEL COUNT MAX_LEN
 *   messages consume CHANNEL [any]
 *   messages resize CHANNEL PAUSE_MS CAPACITY...
 *
 * Message i is 1 to MAX_LEN bytes, its length drawn log-uniformly from i (so every order of
 * magnitude is as common as any other), its bytes a xorshift stream seeded by i; the first 8
 * bytes of a message of 8 or more carry i (little-endian).
 *
 * produce: sends COUNT messages with shmring_send (waiting as long as it takes), then finishes
 * the stream; prints "produced=N bytes=B checksum=C", C an FNV-1a 64 over the words of every
 * message (see checksum), and "sum=S", the wrapping sum of each message's own checksum (the
 * same whichever consumer receives which message).
 *
 * consume: prints "open" once its consumer is open, then receives until SHMRING_CLOSED, in
 * turn copied with shmring_recv (every third into a buffer one byte short first, which must
 * say SHMRING_BUFFER_TOO_SMALL with the message's length and leave it), in place with
 * shmring_read, and with a short timeout (SHMRING_TIMED_OUT midway keeps what arrived). Each
 * message must be the next one, every byte as produced. Prints "consumed=N bytes=B
 * checksum=C sum=S missed=M", C and S as the producer's, over what was received.
 *
 * resize: resizes the channel to each CAPACITY in turn, PAUSE_MS after the previous step
 * (retrying while the previous resize is still under way: SHMRING_BUSY); prints
 * "resized=CAPACITY" after each, then "resizes=N" from the channel's statistics.
 *
 * consume ... any: for consumers that compete for the messages (MPMC): each message of 8 bytes
 * or more is checked against its index, which it carries, rather than against the next one
 * expected; the shorter ones count in S only.
 */
#define _POSIX_C_SOURCE 200809L
#include "shmring.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void check(shmring_status s, const char *what) {
    if (s != SHMRING_OK) {
        fprintf(stderr, "messages: %s: %s: %s\n", what, shmring_status_name(s), shmring_last_error());
        exit(1);
    }
}

static void fail(const char *what, uint64_t i) {
    fprintf(stderr, "messages: message %" PRIu64 ": %s\n", i, what);
    exit(1);
}

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x *= UINT64_C(0xc4ceb9fe1a85ec53);
    return x ^ (x >> 33);
}

/* The length of message i: 2^e plus up to as much again, e uniform in 0..log2(max_len), at
 * most max_len. */
static size_t message_len(uint64_t i, size_t max_len) {
    unsigned bits = 0;
    while (((size_t)1 << (bits + 1)) <= max_len) bits++;
    size_t base = (size_t)1 << (mix(i * 2 + 1) % (bits + 1));
    size_t len = base + (size_t)(mix(i * 2 + 2) % base);
    return len > max_len ? max_len : len;
}

static void message_fill(uint64_t i, uint8_t *buf, size_t len) {
    uint64_t s = mix(i + 0x5eed) | 1;
    size_t j = 0;
    for (; j + 8 <= len; j += 8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        memcpy(buf + j, &s, 8);
    }
    s ^= s << 13;
    for (; j < len; j++) buf[j] = (uint8_t)(s >> (8 * (j % 8)));
    if (len >= 8)
        for (size_t k = 0; k < 8; k++) buf[k] = (uint8_t)(i >> (8 * k));
}

/* FNV-1a 64 over the message's 8-byte words (the last one zero-padded), then its length. */
static uint64_t checksum(uint64_t h, const uint8_t *p, size_t n) {
    size_t k = 0;
    for (; k + 8 <= n; k += 8) {
        uint64_t w;
        memcpy(&w, p + k, 8);
        h = (h ^ w) * UINT64_C(0x100000001b3);
    }
    uint64_t w = 0;
    memcpy(&w, p + k, n - k);
    h = (h ^ w) * UINT64_C(0x100000001b3);
    return (h ^ n) * UINT64_C(0x100000001b3);
}

static int create(const char *name, const char *kind, const char *capacity, const char *max_frame,
                  const char *max_message) {
    shmring_client *client = NULL;
    check(shmring_client_connect(NULL, &client), "connect");
    struct shmring_channel_config cfg;
    shmring_channel_config_default(&cfg, strcmp(kind, "spsc") == 0   ? SHMRING_SPSC
                                         : strcmp(kind, "mpmc") == 0 ? SHMRING_MPMC
                                                                     : SHMRING_BROADCAST);
    cfg.capacity = strtoull(capacity, NULL, 10);
    cfg.max_frame_size = (uint32_t)strtoul(max_frame, NULL, 10);
    cfg.max_message_size = strtoull(max_message, NULL, 10);
    check(shmring_channel_create(client, name, &cfg), "create");
    struct shmring_stats st;
    check(shmring_channel_stats(client, name, &st), "stats");
    printf("created max_message_size=%" PRIu64 "\n", st.max_message_size);
    shmring_client_close(client);
    return 0;
}

static int produce(const char *name, uint64_t count, size_t max_len) {
    shmring_client *client = NULL;
    check(shmring_client_connect(NULL, &client), "connect");
    shmring_producer *p = NULL;
    check(shmring_producer_open(client, name, &p), "producer_open");
    if (shmring_producer_max_message_size(p) < max_len) fail("max_message_size below MAX_LEN", 0);
    uint8_t *buf = malloc(max_len);
    if (!buf) return 1;
    uint64_t bytes = 0, sum = UINT64_C(0xcbf29ce484222325), own = 0;
    for (uint64_t i = 0; i < count; i++) {
        size_t len = message_len(i, max_len);
        message_fill(i, buf, len);
        check(shmring_send(p, buf, len, -1), "send");
        sum = checksum(sum, buf, len);
        own += checksum(UINT64_C(0xcbf29ce484222325), buf, len);
        bytes += len;
    }
    check(shmring_producer_finish(p), "finish");
    printf("produced=%" PRIu64 " bytes=%" PRIu64 " checksum=%016" PRIx64 " sum=%016" PRIx64 "\n", count,
           bytes, sum, own);
    fflush(stdout);
    shmring_producer_close(p);
    shmring_client_close(client);
    free(buf);
    return 0;
}

static int consume(const char *name, int any) {
    shmring_client *client = NULL;
    check(shmring_client_connect(NULL, &client), "connect");
    shmring_consumer *c = NULL;
    check(shmring_consumer_open(client, name, &c), "consumer_open");
    printf("open\n");
    fflush(stdout);
    size_t max_len = shmring_consumer_max_message_size(c);
    uint8_t *buf = malloc(max_len), *want = malloc(max_len);
    if (!buf || !want) return 1;
    uint64_t i = 0, bytes = 0, sum = UINT64_C(0xcbf29ce484222325), own = 0;
    for (;; i++) {
        const uint8_t *got = buf;
        size_t len = 0;
        shmring_status s;
        int lent = 0;
        switch (i % 3) {
        case 0:
            s = shmring_recv(c, buf, max_len, &len, -1);
            break;
        case 1: {
            struct shmring_frame f;
            s = shmring_read(c, &f, -1);
            got = f.data;
            len = f.len;
            lent = s == SHMRING_OK;
            break;
        }
        default:
            /* Too short by a byte first: told the length, nothing taken (when nobody else
             * can take it meanwhile). */
            s = any ? SHMRING_OK : shmring_recv(c, buf, 0, &len, 0);
            if (s == SHMRING_BUFFER_TOO_SMALL && len > 0) {
                s = shmring_recv(c, buf, len - 1, &len, -1);
                if (s != SHMRING_BUFFER_TOO_SMALL) fail("a buffer a byte short was not refused", i);
            }
            /* Then in short waits: a message may arrive across several calls. */
            do s = shmring_recv(c, buf, max_len, &len, 1000 * 1000);
            while (s == SHMRING_TIMED_OUT);
        }
        if (s == SHMRING_CLOSED) break;
        check(s, "receive");
        uint64_t index = i;
        if (any && len >= 8) {
            index = 0;
            for (size_t k = 0; k < 8; k++) index |= (uint64_t)got[k] << (8 * k);
        }
        if (!any || len >= 8) {
            size_t expect = message_len(index, max_len);
            if (len != expect) {
                fprintf(stderr, "messages: message %" PRIu64 ": %zu bytes, expected %zu\n", index, len,
                        expect);
                exit(1);
            }
            message_fill(index, want, len);
            if (memcmp(got, want, len) != 0) fail("bytes differ", index);
        }
        sum = checksum(sum, got, len);
        own += checksum(UINT64_C(0xcbf29ce484222325), got, len);
        bytes += len;
        if (lent) check(shmring_release(c), "release");
    }
    printf("consumed=%" PRIu64 " bytes=%" PRIu64 " checksum=%016" PRIx64 " sum=%016" PRIx64
           " missed=%" PRIu64 "\n",
           i, bytes, sum, own, shmring_consumer_missed(c));
    shmring_consumer_close(c);
    shmring_client_close(client);
    free(buf);
    free(want);
    return 0;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int resize(const char *name, long pause_ms, int n, char **capacities) {
    shmring_client *client = NULL;
    check(shmring_client_connect(NULL, &client), "connect");
    for (int k = 0; k < n; k++) {
        uint64_t capacity = strtoull(capacities[k], NULL, 10);
        sleep_ms(pause_ms);
        shmring_status s;
        while ((s = shmring_channel_resize(client, name, capacity)) == SHMRING_BUSY) sleep_ms(1);
        check(s, "resize");
        struct shmring_stats st;
        check(shmring_channel_stats(client, name, &st), "stats");
        /* (Slots also hold their headers, and an MPMC channel's message pool is storage too:
         * at least what was asked.) */
        if (st.capacity < capacity) fail("the capacity after a resize is below the one asked for", capacity);
        printf("resized=%" PRIu64 "\n", capacity);
    }
    struct shmring_stats st;
    check(shmring_channel_stats(client, name, &st), "stats");
    printf("resizes=%" PRIu64 "\n", st.resizes);
    shmring_client_close(client);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 7 && strcmp(argv[1], "create") == 0) return create(argv[2], argv[3], argv[4], argv[5], argv[6]);
    if (argc == 5 && strcmp(argv[1], "produce") == 0)
        return produce(argv[2], strtoull(argv[3], NULL, 10), (size_t)strtoull(argv[4], NULL, 10));
    if (argc == 3 && strcmp(argv[1], "consume") == 0) return consume(argv[2], 0);
    if (argc == 4 && strcmp(argv[1], "consume") == 0 && strcmp(argv[3], "any") == 0)
        return consume(argv[2], 1);
    if (argc >= 5 && strcmp(argv[1], "resize") == 0)
        return resize(argv[2], strtol(argv[3], NULL, 10), argc - 4, argv + 4);
    fprintf(stderr, "usage: messages create CHANNEL spsc|mpmc|broadcast CAPACITY MAX_FRAME MAX_MESSAGE\n"
                    "       messages produce CHANNEL COUNT MAX_LEN\n"
                    "       messages consume CHANNEL [any]\n"
                    "       messages resize CHANNEL PAUSE_MS CAPACITY...\n");
    return 2;
}

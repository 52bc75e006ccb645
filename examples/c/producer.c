/*
 * Sends frames to a channel of a running coordinator (shmringd, or SHMRING_SOCKET's).
 *
 *   producer [CHANNEL [COUNT [spsc|mpmc]]]      defaults: hello 1000 spsc
 *
 * Creates the channel if it does not exist, sends COUNT frames of the pattern in frames.h
 * (even ones copied with shmring_send, odd ones written in place with shmring_claim and
 * shmring_commit), then finishes the stream (shmring_producer_finish: the consumers receive
 * what is left, then SHMRING_CLOSED), and prints how many it sent and their checksum.
 */
#include "frames.h"
#include "shmring.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check(shmring_status s, const char *what) {
    if (s != SHMRING_OK) {
        fprintf(stderr, "producer: %s: %s: %s\n", what, shmring_status_name(s),
                shmring_last_error());
        exit(1);
    }
}

int main(int argc, char **argv) {
    const char *channel = argc > 1 ? argv[1] : "hello";
    long count = argc > 2 ? atol(argv[2]) : 1000;
    int mpmc = argc > 3 && strcmp(argv[3], "mpmc") == 0;

    shmring_client *client = NULL;
    check(shmring_client_connect(NULL, &client), "connecting to the coordinator");

    shmring_channel_config cfg;
    shmring_channel_config_default(&cfg, mpmc ? SHMRING_MPMC : SHMRING_SPSC);
    cfg.capacity = 64 * 1024;
    cfg.max_frame_size = FRAME_MAX;
    shmring_status s = shmring_channel_create(client, channel, &cfg);
    if (s != SHMRING_ALREADY_EXISTS) check(s, "creating the channel");

    shmring_producer *p = NULL;
    check(shmring_producer_open(client, channel, &p), "opening the channel");

    uint64_t sum = FNV_START;
    uint8_t buf[FRAME_MAX];
    for (long i = 0; i < count; i++) {
        size_t len = frame_len((uint64_t)i);
        if (i % 2 == 0) {
            frame_fill((uint64_t)i, buf, len);
            sum = fnv1a(sum, buf, len);
            check(shmring_send(p, buf, len, -1), "sending");
        } else {
            void *space = NULL; /* zero-copy: written in place in shared memory */
            check(shmring_claim(p, len, &space, -1), "claiming");
            frame_fill((uint64_t)i, space, len);
            sum = fnv1a(sum, space, len);
            check(shmring_commit(p, len), "committing");
        }
    }
    check(shmring_producer_finish(p), "finishing the stream"); /* consumers then get CLOSED */
    printf("sent=%ld checksum=%016" PRIx64 "\n", count, sum);

    shmring_producer_close(p);
    shmring_client_close(client);
    return 0;
}

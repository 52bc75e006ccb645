/*
 * Receives the frames `producer` sends, checking each against the pattern in frames.h.
 *
 *   consumer [CHANNEL]                            default: hello
 *
 * Waits up to 10 s for the channel to exist, receives (alternately in place with shmring_read
 * and copied with shmring_recv) until the producer finishes the stream (SHMRING_CLOSED), prints
 * how many frames it received and their checksum, and deletes the channel: the stream is over,
 * and nothing is left behind (a channel already deleted, or one this user may not delete, is
 * left as it is).
 */
#define _POSIX_C_SOURCE 200809L
#include "frames.h"
#include "shmring.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void check(shmring_status s, const char *what) {
    if (s != SHMRING_OK) {
        fprintf(stderr, "consumer: %s: %s: %s\n", what, shmring_status_name(s),
                shmring_last_error());
        exit(1);
    }
}

int main(int argc, char **argv) {
    const char *channel = argc > 1 ? argv[1] : "hello";

    shmring_client *client = NULL;
    check(shmring_client_connect(NULL, &client), "connecting to the coordinator");

    shmring_consumer *c = NULL;
    shmring_status s;
    for (int tries = 0; (s = shmring_consumer_open(client, channel, &c)) == SHMRING_NOT_FOUND &&
                        tries < 1000;
         tries++) {
        struct timespec ten_ms = {0, 10 * 1000 * 1000};
        nanosleep(&ten_ms, NULL); /* the producer has not created it yet */
    }
    check(s, "opening the channel");

    uint64_t sum = FNV_START, i = 0, redelivered = 0;
    uint8_t buf[FRAME_MAX];
    for (;;) {
        const uint8_t *data;
        size_t len;
        if (i % 2 == 0) {
            shmring_frame f; /* zero-copy: the frame stays in the ring until released */
            s = shmring_read(c, &f, 30LL * 1000 * 1000 * 1000);
            if (s == SHMRING_CLOSED) break; /* the stream is finished: everything was received */
            check(s, "reading");
            data = f.data;
            len = f.len;
            redelivered += (f.flags & SHMRING_FRAME_REDELIVERED) != 0;
        } else {
            s = shmring_recv(c, buf, sizeof buf, &len, 30LL * 1000 * 1000 * 1000);
            if (s == SHMRING_CLOSED) break;
            check(s, "receiving");
            data = buf;
        }
        if (!frame_ok(i, data, len)) {
            fprintf(stderr, "consumer: frame %" PRIu64 " (%zu bytes) is not what was sent\n", i,
                    len);
            return 1;
        }
        sum = fnv1a(sum, data, len);
        if (i % 2 == 0) check(shmring_release(c), "releasing");
        i++;
    }
    printf("received=%" PRIu64 " checksum=%016" PRIx64 " redelivered=%" PRIu64 "\n", i, sum,
           redelivered);

    shmring_consumer_close(c);
    s = shmring_channel_delete(client, channel);
    if (s != SHMRING_NOT_FOUND && s != SHMRING_PERMISSION_DENIED) check(s, "deleting the channel");
    shmring_client_close(client);
    return 0;
}

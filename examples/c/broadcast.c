/*
 * One producer, two subscribers on a broadcast channel: every frame reaches both.
 *
 *   broadcast [FRAMES [block|drop-oldest]]                    defaults: 100000 block
 *
 * The parent forks two subscriber processes (first: forking a process that has threads is
 * unsafe), runs a coordinator on one of its threads (no daemon needed), creates the channel,
 * waits until both subscribers say (over a pipe) that they have opened it, since a subscriber
 * receives what is published after it opened, then publishes FRAMES frames of the pattern in
 * frames.h and finishes the stream (shmring_producer_finish).
 * Each subscriber checks that its frames are intact and in order, and prints how many it
 * received and how many it missed: none under block (the producer waits for the slower
 * subscriber); under drop-oldest the producer never waits, and received + missed = FRAMES.
 */
#define _POSIX_C_SOURCE 200809L
#include "frames.h"
#include "shmring.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void check(shmring_status s, const char *what) {
    if (s != SHMRING_OK) {
        fprintf(stderr, "broadcast: %s: %s: %s\n", what, shmring_status_name(s),
                shmring_last_error());
        exit(1);
    }
}

static void nap(void) {
    struct timespec ms = {0, 1000 * 1000};
    nanosleep(&ms, NULL);
}

/* A subscriber: connects once the coordinator is up, opens the channel once it exists, says
 * so on `ready`, and receives until the producer finishes the stream (SHMRING_CLOSED). */
static int subscribe(const char *socket, int id, int ready) {
    shmring_client *client = NULL;
    shmring_status s;
    for (int t = 0; (s = shmring_client_connect(socket, &client)) == SHMRING_UNAVAILABLE &&
                    t < 10000;
         t++)
        nap(); /* up to 10 s for the parent's coordinator */
    check(s, "subscriber: connecting");
    shmring_consumer *rx = NULL;
    for (int t = 0; (s = shmring_consumer_open(client, "ticks", &rx)) == SHMRING_NOT_FOUND &&
                    t < 10000;
         t++)
        nap();
    check(s, "subscriber: opening the channel");
    if (write(ready, "!", 1) != 1) return 1; /* frames published from now on reach us */
    close(ready);

    uint64_t received = 0;
    for (;;) {
        shmring_frame f;
        s = shmring_read(rx, &f, 10LL * 1000 * 1000 * 1000);
        if (s == SHMRING_CLOSED) break; /* the end: finished, and everything received */
        check(s, "subscriber: reading");
        uint64_t i = 0;
        memcpy(&i, f.data, sizeof i); /* frames.h: little-endian index first */
        /* In order, none lost unsaid: the frames before i were all received or missed. */
        if (i != received + shmring_consumer_missed(rx) || !frame_ok(i, f.data, f.len)) {
            fprintf(stderr, "subscriber %d: frame %" PRIu64 " out of order or damaged\n", id, i);
            return 1;
        }
        received++;
        check(shmring_release(rx), "subscriber: releasing");
    }
    printf("subscriber %d: received=%" PRIu64 " missed=%" PRIu64 "\n", id, received,
           shmring_consumer_missed(rx));
    shmring_consumer_close(rx);
    shmring_client_close(client);
    return 0;
}

int main(int argc, char **argv) {
    long frames = argc > 1 ? atol(argv[1]) : 100000;
    int drop = argc > 2 && strcmp(argv[2], "drop-oldest") == 0;
    char socket[64];
    snprintf(socket, sizeof socket, "/tmp/shmring-broadcast-%d.sock", (int)getpid());

    int ready[2];
    if (pipe(ready) != 0) {
        perror("broadcast: pipe");
        return 1;
    }
    pid_t subscribers[2];
    for (int k = 0; k < 2; k++) {
        fflush(stdout);
        subscribers[k] = fork();
        if (subscribers[k] < 0) {
            perror("broadcast: fork");
            return 1;
        }
        if (subscribers[k] == 0) {
            close(ready[0]);
            return subscribe(socket, k + 1, ready[1]);
        }
    }
    close(ready[1]);

    shmring_coordinator *coord = NULL;
    check(shmring_coordinator_start(socket, &coord), "starting the coordinator");
    shmring_client *client = NULL;
    check(shmring_client_connect(socket, &client), "connecting");
    shmring_channel_config cfg;
    shmring_channel_config_default(&cfg, SHMRING_BROADCAST);
    cfg.max_frame_size = FRAME_MAX;
    cfg.max_consumers = 2;
    cfg.overflow = drop ? SHMRING_OVERFLOW_DROP_OLDEST : SHMRING_OVERFLOW_BLOCK;
    check(shmring_channel_create(client, "ticks", &cfg), "creating the channel");
    shmring_producer *tx = NULL;
    check(shmring_producer_open(client, "ticks", &tx), "opening the channel");

    char byte; /* both subscribers in: a frame published before one opens never reaches it */
    for (int k = 0; k < 2; k++) {
        if (read(ready[0], &byte, 1) != 1) {
            fprintf(stderr, "broadcast: a subscriber failed to open the channel\n");
            return 1;
        }
    }
    close(ready[0]);

    /* Under drop-oldest a send never waits: timeout 0 always succeeds. */
    int64_t timeout = drop ? 0 : -1;
    uint8_t buf[FRAME_MAX];
    for (long i = 0; i < frames; i++) {
        size_t len = frame_len((uint64_t)i);
        frame_fill((uint64_t)i, buf, len);
        check(shmring_send(tx, buf, len, timeout), "publishing");
    }
    check(shmring_producer_finish(tx), "finishing the stream");
    printf("producer: published=%ld overflow=%s\n", frames, drop ? "drop-oldest" : "block");
    fflush(stdout);

    int failed = 0;
    for (int k = 0; k < 2; k++) {
        int status = 0;
        waitpid(subscribers[k], &status, 0);
        failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    }
    shmring_producer_close(tx);
    shmring_client_close(client);
    shmring_coordinator_stop(coord);
    puts(failed ? "a subscriber failed" : "ok");
    return failed;
}

/*
 * Defect 18 of issue 10: a forked child that stops an inherited embedded coordinator broke the
 * parent's (the child panicked inside the library, and the parent's clients then got
 * SHMRING_UNAVAILABLE). Run by tests/tests/c_abi.rs (also under ASan and UBSan):
 *
 *   fork_stop SCRATCH_DIR
 *
 * The parent starts a coordinator, opens an MPMC producer with a claim open and a consumer
 * holding a frame, and an SPSC pair with a frame in flight; forks; moves on (commits, releases,
 * fills the rings); then the child closes every inherited handle (producers, consumers,
 * client) and stops the coordinator, as a finalizer at exit would. The parent then finds all
 * of it as it was: its coordinator serves, its entries are still its own, and every frame
 * arrives in order.
 */
#define _GNU_SOURCE
#include "shmring.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int failures = 0;

#define EXPECT(call, want)                                                                     \
    do {                                                                                       \
        shmring_status got_ = (call);                                                          \
        if (got_ != (want)) {                                                                  \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s (%s)\n", __FILE__, __LINE__,   \
                    #call, shmring_status_name(got_), shmring_status_name(want),               \
                    shmring_last_error());                                                     \
            failures++;                                                                        \
        }                                                                                      \
    } while (0)

#define TRUE(cond)                                                                             \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond);                \
            failures++;                                                                        \
        }                                                                                      \
    } while (0)

static const int64_t SECOND = 1000 * 1000 * 1000;

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: fork_stop SCRATCH_DIR\n");
        return 2;
    }
    char sock[512];
    snprintf(sock, sizeof sock, "%s/fork.sock", argv[1]);

    shmring_coordinator *coord = NULL;
    EXPECT(shmring_coordinator_start(sock, &coord), SHMRING_OK);
    shmring_client *client = NULL;
    EXPECT(shmring_client_connect(sock, &client), SHMRING_OK);
    if (failures) return 1;

    shmring_channel_config cfg;
    shmring_channel_config_default(&cfg, SHMRING_MPMC);
    cfg.capacity = 4096;
    cfg.max_frame_size = 64;
    EXPECT(shmring_channel_create(client, "m", &cfg), SHMRING_OK);
    shmring_channel_config_default(&cfg, SHMRING_SPSC);
    cfg.capacity = 4096;
    cfg.max_frame_size = 64;
    EXPECT(shmring_channel_create(client, "s", &cfg), SHMRING_OK);

    shmring_producer *mp = NULL, *sp = NULL;
    shmring_consumer *mc = NULL, *sc = NULL;
    EXPECT(shmring_producer_open(client, "m", &mp), SHMRING_OK);
    EXPECT(shmring_consumer_open(client, "m", &mc), SHMRING_OK);
    EXPECT(shmring_producer_open(client, "s", &sp), SHMRING_OK);
    EXPECT(shmring_consumer_open(client, "s", &sc), SHMRING_OK);
    if (failures) return 1;

    /* Mid-operation at the fork: a frame held by the MPMC consumer, a claim open on the MPMC
     * producer, a frame waiting in the SPSC ring. */
    EXPECT(shmring_send(mp, "held", 4, SECOND), SHMRING_OK);
    shmring_frame held;
    EXPECT(shmring_read(mc, &held, SECOND), SHMRING_OK);
    void *claim = NULL;
    EXPECT(shmring_claim(mp, 8, &claim, SECOND), SHMRING_OK);
    EXPECT(shmring_send(sp, "spsc", 4, SECOND), SHMRING_OK);
    if (failures) return 1;

    int go[2];
    TRUE(pipe(go) == 0);
    fflush(NULL);
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 1;
    }
    if (child == 0) {
        /* Waits until the parent has moved on, so that whatever the closes write over shows;
         * then does what an inherited object's finalizer does at exit: close and stop
         * everything. */
        char b;
        if (read(go[0], &b, 1) != 1) _exit(4);
        shmring_producer_close(mp);
        shmring_consumer_close(mc);
        shmring_producer_close(sp);
        shmring_consumer_close(sc);
        shmring_client_close(client);
        shmring_coordinator_stop(coord);
        _exit(0);
    }

    /* The parent moves on: its held frame is intact and releases, its claim commits and is
     * delivered, the SPSC frame arrives; then it fills both rings, so that the slots the
     * child's copies remember hold new frames. */
    TRUE(held.len == 4 && memcmp(held.data, "held", 4) == 0);
    EXPECT(shmring_release(mc), SHMRING_OK);
    memcpy(claim, "claimed!", 8);
    EXPECT(shmring_commit(mp, 8), SHMRING_OK);
    char buf[64];
    size_t len = 0;
    EXPECT(shmring_recv(mc, buf, sizeof buf, &len, SECOND), SHMRING_OK);
    TRUE(len == 8 && memcmp(buf, "claimed!", 8) == 0);
    EXPECT(shmring_recv(sc, buf, sizeof buf, &len, SECOND), SHMRING_OK);
    TRUE(len == 4 && memcmp(buf, "spsc", 4) == 0);
    uint32_t mn = 0, sn = 0;
    while (shmring_send(mp, &mn, sizeof mn, 0) == SHMRING_OK) mn++;
    while (shmring_send(sp, &sn, sizeof sn, 0) == SHMRING_OK) sn++;
    TRUE(mn > 2 && sn > 2);

    TRUE(write(go[1], "g", 1) == 1);
    int status = 0;
    TRUE(waitpid(child, &status, 0) == child);
    TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    /* The parent's coordinator still serves: its socket is there, new clients are served. */
    struct stat st;
    TRUE(stat(sock, &st) == 0);
    shmring_client *fresh = NULL;
    EXPECT(shmring_client_connect(sock, &fresh), SHMRING_OK);
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    struct shmring_stats stats;
    EXPECT(shmring_channel_stats(fresh, "m", &stats), SHMRING_OK);
    TRUE(stats.producers == 1 && stats.consumers == 1);
    EXPECT(shmring_channel_stats(client, "s", &stats), SHMRING_OK);
    TRUE(stats.producers == 1 && stats.consumers == 1);
    /* The SPSC entries are still the parent's: a second producer is refused. */
    shmring_producer *second = NULL;
    EXPECT(shmring_producer_open(fresh, "s", &second), SHMRING_BUSY);

    /* What filled the rings arrives, in order, and the rings go on. */
    for (uint32_t i = 0; i < mn && failures < 10; i++) {
        uint32_t v = ~0u;
        EXPECT(shmring_recv(mc, &v, sizeof v, &len, SECOND), SHMRING_OK);
        TRUE(len == sizeof v && v == i);
    }
    for (uint32_t i = 0; i < sn && failures < 10; i++) {
        uint32_t v = ~0u;
        EXPECT(shmring_recv(sc, &v, sizeof v, &len, SECOND), SHMRING_OK);
        TRUE(len == sizeof v && v == i);
    }
    EXPECT(shmring_recv(mc, buf, sizeof buf, &len, 0), SHMRING_WOULD_BLOCK);
    for (int i = 0; i < 3 * (int)mn && failures < 10; i++) {
        EXPECT(shmring_send(mp, "more", 4, SECOND), SHMRING_OK);
        EXPECT(shmring_recv(mc, buf, sizeof buf, &len, SECOND), SHMRING_OK);
        TRUE(len == 4 && memcmp(buf, "more", 4) == 0);
        EXPECT(shmring_send(sp, "more", 4, SECOND), SHMRING_OK);
        EXPECT(shmring_recv(sc, buf, sizeof buf, &len, SECOND), SHMRING_OK);
        TRUE(len == 4 && memcmp(buf, "more", 4) == 0);
    }

    shmring_producer_close(mp);
    shmring_consumer_close(mc);
    shmring_producer_close(sp);
    shmring_consumer_close(sc);
    shmring_client_close(fresh);
    shmring_client_close(client);
    shmring_coordinator_stop(coord);
    TRUE(stat(sock, &st) != 0);
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("parent unharmed\n");
    return 0;
}

/*
 * End of stream through the C ABI: shmring_producer_finish and shmring_consumer_producers, on
 * every kind of channel. Run by tests/tests/c_abi.rs (also under ASan and UBSan):
 *
 *   finish SCRATCH_DIR
 *
 * SCRATCH_DIR is an empty directory for the socket of the coordinator the program starts.
 */
#define _GNU_SOURCE
#include "shmring.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static const int64_t MS = 1000 * 1000;

/* A consumer blocked in a receive that waits as long as it takes. */
struct reader {
    shmring_consumer *c;
    int frames;
    shmring_status end;
};

static void *read_to_the_end(void *arg) {
    struct reader *r = arg;
    uint8_t buf[64];
    size_t len = 0;
    while ((r->end = shmring_recv(r->c, buf, sizeof buf, &len, -1)) == SHMRING_OK) r->frames++;
    return NULL;
}

static void one_kind(shmring_client *client, shmring_kind kind, const char *name) {
    shmring_channel_config cfg;
    shmring_channel_config_default(&cfg, kind);
    cfg.capacity = 64 * 64;
    cfg.max_frame_size = 64;
    EXPECT(shmring_channel_create(client, name, &cfg), SHMRING_OK);
    shmring_consumer *c = NULL;
    EXPECT(shmring_consumer_open(client, name, &c), SHMRING_OK);
    TRUE(shmring_consumer_producers(c) == 0);

    /* Frames sent before the finish are received; then SHMRING_CLOSED, every time. */
    shmring_producer *p = NULL;
    EXPECT(shmring_producer_open(client, name, &p), SHMRING_OK);
    TRUE(shmring_consumer_producers(c) == 1);
    for (int i = 0; i < 3; i++) EXPECT(shmring_send(p, "abc", 3, -1), SHMRING_OK);
    void *space = NULL;
    EXPECT(shmring_claim(p, 8, &space, 0), SHMRING_OK);
    EXPECT(shmring_producer_finish(p), SHMRING_INVALID_ARGUMENT); /* a claim is open */
    EXPECT(shmring_abort(p), SHMRING_OK);
    EXPECT(shmring_producer_finish(p), SHMRING_OK);
    TRUE(shmring_consumer_producers(c) == 0);
    /* The finished handle sends nothing more; it waits for its close. */
    EXPECT(shmring_send(p, "x", 1, 0), SHMRING_CLOSED);
    TRUE(strstr(shmring_last_error(), "shmring_producer_close") != NULL);
    EXPECT(shmring_producer_finish(p), SHMRING_CLOSED);
    TRUE(shmring_producer_max_frame_size(p) == 0);
    uint8_t buf[64];
    size_t len = 0;
    for (int i = 0; i < 3; i++) {
        EXPECT(shmring_recv(c, buf, sizeof buf, &len, 0), SHMRING_OK);
        TRUE(len == 3 && memcmp(buf, "abc", 3) == 0);
    }
    EXPECT(shmring_recv(c, buf, sizeof buf, &len, -1), SHMRING_CLOSED);
    TRUE(strstr(shmring_last_error(), "finish") != NULL);
    shmring_frame f;
    EXPECT(shmring_read(c, &f, 0), SHMRING_CLOSED);
    shmring_producer_close(p);

    /* A producer opened after the finish continues the stream; one closed without finishing
     * does not end it. */
    EXPECT(shmring_producer_open(client, name, &p), SHMRING_OK);
    TRUE(shmring_consumer_producers(c) == 1);
    EXPECT(shmring_recv(c, buf, sizeof buf, &len, 0), SHMRING_WOULD_BLOCK);
    EXPECT(shmring_send(p, "more", 4, -1), SHMRING_OK);
    EXPECT(shmring_recv(c, buf, sizeof buf, &len, 0), SHMRING_OK);
    TRUE(len == 4 && memcmp(buf, "more", 4) == 0);
    shmring_producer_close(p);
    TRUE(shmring_consumer_producers(c) == 0);
    EXPECT(shmring_recv(c, buf, sizeof buf, &len, 2 * MS), SHMRING_TIMED_OUT);

    /* A consumer asleep in a receive that waits forever wakes up CLOSED at the finish. */
    EXPECT(shmring_producer_open(client, name, &p), SHMRING_OK);
    EXPECT(shmring_consumer_set_wait(c, SHMRING_WAIT_PARK), SHMRING_OK);
    struct reader r = {.c = c};
    pthread_t t;
    pthread_create(&t, NULL, read_to_the_end, &r);
    EXPECT(shmring_send(p, "last", 4, -1), SHMRING_OK);
    usleep(50 * 1000); /* long enough for the reader to fall asleep in the futex */
    EXPECT(shmring_producer_finish(p), SHMRING_OK);
    pthread_join(t, NULL);
    TRUE(r.frames == 1);
    EXPECT(r.end, SHMRING_CLOSED);
    shmring_producer_close(p);

    shmring_consumer_close(c);
    EXPECT(shmring_channel_delete(client, name), SHMRING_OK);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: finish SCRATCH_DIR\n");
        return 2;
    }
    char ns[64], sock[256];
    snprintf(ns, sizeof ns, "cfin%d", (int)getpid());
    setenv("SHMRING_NAMESPACE", ns, 1);
    snprintf(sock, sizeof sock, "%s/coordinator.sock", argv[1]);
    shmring_coordinator *coord = NULL;
    EXPECT(shmring_coordinator_start(sock, &coord), SHMRING_OK);
    shmring_client *client = NULL;
    EXPECT(shmring_client_connect(sock, &client), SHMRING_OK);

    one_kind(client, SHMRING_SPSC, "spsc");
    one_kind(client, SHMRING_MPMC, "mpmc");
    one_kind(client, SHMRING_BROADCAST, "broadcast");

    /* MPMC: the stream ends with the finish of the last producer attached. */
    shmring_channel_config cfg;
    shmring_channel_config_default(&cfg, SHMRING_MPMC);
    cfg.max_producers = 2;
    EXPECT(shmring_channel_create(client, "two", &cfg), SHMRING_OK);
    shmring_consumer *c = NULL;
    shmring_producer *a = NULL, *b = NULL;
    EXPECT(shmring_consumer_open(client, "two", &c), SHMRING_OK);
    EXPECT(shmring_producer_open(client, "two", &a), SHMRING_OK);
    EXPECT(shmring_producer_open(client, "two", &b), SHMRING_OK);
    TRUE(shmring_consumer_producers(c) == 2);
    EXPECT(shmring_producer_finish(a), SHMRING_OK);
    TRUE(shmring_consumer_producers(c) == 1);
    uint8_t buf[64];
    size_t len = 0;
    EXPECT(shmring_recv(c, buf, sizeof buf, &len, 0), SHMRING_WOULD_BLOCK);
    /* A child forked meanwhile cannot finish its parent's stream. */
    pid_t child = fork();
    if (child == 0) _exit(shmring_producer_finish(b) == SHMRING_INVALID_ARGUMENT ? 0 : 1);
    int status = -1;
    TRUE(child > 0 && waitpid(child, &status, 0) == child);
    TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    EXPECT(shmring_recv(c, buf, sizeof buf, &len, 0), SHMRING_WOULD_BLOCK);
    EXPECT(shmring_producer_finish(b), SHMRING_OK);
    EXPECT(shmring_recv(c, buf, sizeof buf, &len, 0), SHMRING_CLOSED);
    shmring_producer_close(a);
    shmring_producer_close(b);
    shmring_consumer_close(c);

    /* NULL and foreign handles. */
    EXPECT(shmring_producer_finish(NULL), SHMRING_INVALID_ARGUMENT);
    TRUE(shmring_consumer_producers(NULL) == 0);
    TRUE(strstr(shmring_last_error(), "NULL") != NULL);

    shmring_client_close(client);
    shmring_coordinator_stop(coord);
    if (failures) {
        fprintf(stderr, "finish: %d check(s) failed\n", failures);
        return 1;
    }
    printf("finish: all checked\n");
    return 0;
}

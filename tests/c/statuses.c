/*
 * Every status of the C ABI, reached from C, with shmring_status_name and shmring_last_error
 * checked along the way. Run by tests/tests/c_abi.rs (also under ASan and UBSan):
 *
 *   statuses SCRATCH_DIR
 *
 * SCRATCH_DIR is an empty directory for sockets. The program starts its own coordinators.
 * SHMRING_PANIC is the one status not reachable without a bug; the Rust tests of the ffi
 * crate check that a panic stops at the boundary and becomes it.
 */
#define _GNU_SOURCE
#include "shmring.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
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
        } else if ((want) != SHMRING_OK && shmring_last_error()[0] == '\0') {                  \
            fprintf(stderr, "%s:%d: %s gave no error text\n", __FILE__, __LINE__, #call);      \
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

/* A thread that sends one frame, waiting as long as it takes. */
struct sender {
    shmring_producer *p;
    const void *data;
    size_t len;
    shmring_status status;
};

static void *send_forever(void *arg) {
    struct sender *s = arg;
    s->status = shmring_send(s->p, s->data, s->len, -1);
    return NULL;
}

/* Any other call on the producer while a thread is inside shmring_send. */
static shmring_status shmring_set_wait_refused(shmring_producer *p) {
    return shmring_producer_set_wait(p, SHMRING_WAIT_PARK);
}

/* A socket that answers the hello with something that is not shmring. */
static void *impostor(void *arg) {
    int srv = *(int *)arg;
    int c = accept(srv, NULL, NULL);
    if (c >= 0) {
        char buf[64];
        if (read(c, buf, sizeof buf) > 0) {
            static const char reply[] = "HTTP/1.0 400 Bad Request\r\n\r\n";
            if (write(c, reply, sizeof reply - 1) < 0) perror("impostor: write");
        }
        close(c);
    }
    return NULL;
}

/* Writes garbage over the first record header of channel `name` of namespace `ns`. A
 * coordinator's segments are sealed memfds with no name in /dev/shm: this process holds the
 * channel's through its consumer (and its embedded coordinator), so it is found among its own
 * descriptors, as /proc/self/fd/N -> "/memfd:shmring.<ns>@<uid>.<generation>.<name> (deleted)". */
static int scribble(const char *ns, const char *name) {
    char prefix[128], suffix[160];
    snprintf(prefix, sizeof prefix, "/memfd:shmring.%s@", ns);
    snprintf(suffix, sizeof suffix, ".%s (deleted)", name);
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL) return -1;
    struct dirent *e;
    int done = -1;
    while ((e = readdir(d)) != NULL) {
        char path[300], link[512];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n <= 0) continue;
        link[n] = '\0';
        size_t s = strlen(suffix);
        if (strncmp(link, prefix, strlen(prefix)) != 0 || (size_t)n < s ||
            strcmp(link + n - s, suffix) != 0)
            continue;
        int fd = atoi(e->d_name);
        /* An SPSC channel's ring starts at 4096 (layout.rs); its first header word: */
        uint64_t *word = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (word == MAP_FAILED) break;
        word[4096 / 8] = UINT64_C(0xffffffffffffffff);
        munmap(word, 8192);
        done = 0;
        break;
    }
    closedir(d);
    return done;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: statuses SCRATCH_DIR\n");
        return 2;
    }
    const char *dir = argv[1];
    char ns[64], sock[256];
    snprintf(ns, sizeof ns, "cstat%d", (int)getpid());
    setenv("SHMRING_NAMESPACE", ns, 1);
    snprintf(sock, sizeof sock, "%s/coordinator.sock", dir);

    TRUE(shmring_abi_version() == SHMRING_ABI_VERSION);
    TRUE(strcmp(shmring_status_name(SHMRING_BUSY), "SHMRING_BUSY") == 0);
    TRUE(strcmp(shmring_status_name(12345), "SHMRING_UNKNOWN_STATUS") == 0);
    TRUE(shmring_last_error() != NULL);

    /* SHMRING_UNAVAILABLE: nobody listens there. */
    shmring_client *client = NULL;
    EXPECT(shmring_client_connect(sock, &client), SHMRING_UNAVAILABLE);
    TRUE(strstr(shmring_last_error(), "shmringd") != NULL);

    shmring_coordinator *coord = NULL;
    EXPECT(shmring_coordinator_start(sock, &coord), SHMRING_OK);
    TRUE(strcmp(shmring_coordinator_socket(coord), sock) == 0);
    /* SHMRING_ALREADY_EXISTS: a second coordinator on the socket. */
    shmring_coordinator *again = NULL;
    EXPECT(shmring_coordinator_start(sock, &again), SHMRING_ALREADY_EXISTS);
    EXPECT(shmring_client_connect(sock, &client), SHMRING_OK);

    /* SHMRING_INVALID_ARGUMENT: NULLs, bad names, bad shapes, bad strategies. */
    shmring_channel_config cfg;
    shmring_channel_config_default(&cfg, SHMRING_SPSC);
    TRUE(cfg.kind == SHMRING_SPSC && cfg.mode == 0600 && cfg.max_producers == 1);
    cfg.capacity = 4096;
    cfg.max_frame_size = 64;
    EXPECT(shmring_channel_create(NULL, "c", &cfg), SHMRING_INVALID_ARGUMENT);
    EXPECT(shmring_channel_create(client, NULL, &cfg), SHMRING_INVALID_ARGUMENT);
    EXPECT(shmring_channel_create(client, "c", NULL), SHMRING_INVALID_ARGUMENT);
    EXPECT(shmring_channel_create(client, "no/slash", &cfg), SHMRING_INVALID_ARGUMENT);
    shmring_channel_config bad = cfg;
    bad.kind = 7;
    EXPECT(shmring_channel_create(client, "c", &bad), SHMRING_INVALID_ARGUMENT);
    bad = cfg;
    bad.max_frame_size = 1 << 20; /* bigger than the ring */
    EXPECT(shmring_channel_create(client, "c", &bad), SHMRING_INVALID_ARGUMENT);

    EXPECT(shmring_channel_create(client, "c", &cfg), SHMRING_OK);
    /* SHMRING_ALREADY_EXISTS: the name is taken. */
    EXPECT(shmring_channel_create(client, "c", &cfg), SHMRING_ALREADY_EXISTS);
    /* SHMRING_NOT_FOUND: no such channel. */
    shmring_producer *p = NULL;
    EXPECT(shmring_producer_open(client, "missing", &p), SHMRING_NOT_FOUND);
    EXPECT(shmring_channel_delete(client, "missing"), SHMRING_NOT_FOUND);

    EXPECT(shmring_producer_open(client, "c", &p), SHMRING_OK);
    /* SHMRING_BUSY: an SPSC channel admits one producer. */
    shmring_producer *p2 = NULL;
    EXPECT(shmring_producer_open(client, "c", &p2), SHMRING_BUSY);
    EXPECT(shmring_producer_set_wait(p, 99), SHMRING_INVALID_ARGUMENT);
    EXPECT(shmring_producer_set_wait(p, SHMRING_WAIT_PARK), SHMRING_OK);
    TRUE(shmring_producer_max_frame_size(p) == 64);

    shmring_consumer *c = NULL;
    EXPECT(shmring_consumer_open(client, "c", &c), SHMRING_OK);
    uint8_t buf[64];
    size_t len = 0;
    /* SHMRING_WOULD_BLOCK: nothing to read, and the call is not to wait. */
    EXPECT(shmring_recv(c, buf, sizeof buf, &len, 0), SHMRING_WOULD_BLOCK);
    /* SHMRING_TIMED_OUT: nothing within 2 ms. */
    EXPECT(shmring_recv(c, buf, sizeof buf, &len, 2 * MS), SHMRING_TIMED_OUT);
    EXPECT(shmring_recv(c, buf, sizeof buf, NULL, 0), SHMRING_INVALID_ARGUMENT);
    /* SHMRING_FRAME_TOO_LARGE. */
    uint8_t big[65] = {0};
    EXPECT(shmring_send(p, big, sizeof big, 0), SHMRING_FRAME_TOO_LARGE);
    EXPECT(shmring_send(p, NULL, 5, 0), SHMRING_INVALID_ARGUMENT);

    /* SHMRING_BUFFER_TOO_SMALL: the frame stays, its size reported. */
    EXPECT(shmring_send(p, "hello", 5, 0), SHMRING_OK);
    EXPECT(shmring_recv(c, buf, 3, &len, 0), SHMRING_BUFFER_TOO_SMALL);
    TRUE(len == 5);
    EXPECT(shmring_recv(c, buf, sizeof buf, &len, 0), SHMRING_OK);
    TRUE(len == 5 && memcmp(buf, "hello", 5) == 0);

    /* Zero-copy both ways, and the calls that do not fit the handle's state. */
    EXPECT(shmring_commit(p, 1), SHMRING_INVALID_ARGUMENT);
    EXPECT(shmring_abort(p), SHMRING_INVALID_ARGUMENT);
    void *space = NULL;
    EXPECT(shmring_claim(p, 8, &space, 0), SHMRING_OK);
    EXPECT(shmring_send(p, "x", 1, 0), SHMRING_INVALID_ARGUMENT); /* a claim is open */
    memcpy(space, "in place", 8);
    /* Step 5 item 15: committing more than was claimed is refused and the claim stays open
     * (it used to be aborted, the frame silently lost, and this commit of 8 refused). */
    EXPECT(shmring_commit(p, 9), SHMRING_INVALID_ARGUMENT);
    TRUE(strstr(shmring_last_error(), "still open") != NULL);
    EXPECT(shmring_commit(p, 8), SHMRING_OK);
    EXPECT(shmring_claim(p, 8, &space, 0), SHMRING_OK);
    EXPECT(shmring_abort(p), SHMRING_OK);
    shmring_frame f;
    EXPECT(shmring_release(c), SHMRING_INVALID_ARGUMENT);
    EXPECT(shmring_read(c, &f, 0), SHMRING_OK);
    TRUE(f.len == 8 && memcmp(f.data, "in place", 8) == 0 && f.flags == 0);
    EXPECT(shmring_read(c, &f, 0), SHMRING_INVALID_ARGUMENT); /* a frame is held */
    EXPECT(shmring_recv(c, buf, sizeof buf, &len, 0), SHMRING_INVALID_ARGUMENT);
    EXPECT(shmring_release(c), SHMRING_OK);
    EXPECT(shmring_read(c, &f, 0), SHMRING_WOULD_BLOCK);
    EXPECT(shmring_send(p, NULL, 0, 0), SHMRING_OK); /* an empty frame */
    EXPECT(shmring_recv(c, NULL, 0, &len, 0), SHMRING_OK);
    TRUE(len == 0);

    /* SHMRING_WOULD_BLOCK for a producer: fill the ring. */
    shmring_status s;
    int sent = 0;
    while ((s = shmring_send(p, big, 64, 0)) == SHMRING_OK) sent++;
    EXPECT(s, SHMRING_WOULD_BLOCK);
    TRUE(sent > 0);
    EXPECT(shmring_send(p, big, 64, 2 * MS), SHMRING_TIMED_OUT);

    /* Counters. */
    shmring_stats st;
    EXPECT(shmring_channel_stats(client, "c", &st), SHMRING_OK);
    TRUE(st.kind == SHMRING_SPSC && st.producers == 1 && st.consumers == 1);
    TRUE(st.frames_in == (uint64_t)sent + 3 && st.frames_out == 3);
    EXPECT(shmring_channel_stats(client, "c", NULL), SHMRING_INVALID_ARGUMENT);


    /* SHMRING_CLOSED: the channel is deleted; the consumer drains, then is told. */
    EXPECT(shmring_channel_delete(client, "c"), SHMRING_OK);
    for (int i = 0; i < sent; i++) EXPECT(shmring_recv(c, buf, sizeof buf, &len, 0), SHMRING_OK);
    EXPECT(shmring_recv(c, buf, sizeof buf, &len, -1), SHMRING_CLOSED);
    shmring_consumer_close(c);
    shmring_producer_close(p);

    /* SHMRING_CORRUPTED: another process wrote garbage over the ring. */
    EXPECT(shmring_channel_create(client, "scribble", &cfg), SHMRING_OK);
    EXPECT(shmring_consumer_open(client, "scribble", &c), SHMRING_OK);
    TRUE(scribble(ns, "scribble") == 0);
    EXPECT(shmring_recv(c, buf, sizeof buf, &len, 0), SHMRING_CORRUPTED);
    shmring_consumer_close(c);

    /* MPMC admits up to its maximum. */
    shmring_channel_config m;
    shmring_channel_config_default(&m, SHMRING_MPMC);
    m.max_producers = 2;
    EXPECT(shmring_channel_create(client, "m", &m), SHMRING_OK);
    EXPECT(shmring_producer_open(client, "m", &p), SHMRING_OK);
    EXPECT(shmring_producer_open(client, "m", &p2), SHMRING_OK);
    shmring_producer *p3 = NULL;
    EXPECT(shmring_producer_open(client, "m", &p3), SHMRING_BUSY);
    shmring_producer_close(p);
    shmring_producer_close(p2);

    /* Step 5 item 14: a producer used by two threads at once. One thread blocks inside
     * shmring_send on a full ring; a call on the same producer from this thread meanwhile is
     * refused (it used to go ahead: WOULD_BLOCK here, torn and lost frames when both sent). */
    EXPECT(shmring_channel_create(client, "busy", &cfg), SHMRING_OK);
    EXPECT(shmring_producer_open(client, "busy", &p), SHMRING_OK);
    EXPECT(shmring_consumer_open(client, "busy", &c), SHMRING_OK);
    int filled = 0;
    while ((s = shmring_send(p, big, 64, 0)) == SHMRING_OK) filled++;
    EXPECT(s, SHMRING_WOULD_BLOCK);
    struct sender blocked = {.p = p, .data = big, .len = 64};
    pthread_t sender_thread;
    pthread_create(&sender_thread, NULL, send_forever, &blocked);
    shmring_status seen = SHMRING_WOULD_BLOCK;
    for (int i = 0; i < 5000 && seen == SHMRING_WOULD_BLOCK; i++) {
        seen = shmring_send(p, big, 64, 0);
        if (seen == SHMRING_WOULD_BLOCK) usleep(1000);
    }
    EXPECT(seen, SHMRING_INVALID_ARGUMENT);
    TRUE(strstr(shmring_last_error(), "another thread") != NULL);
    EXPECT(shmring_set_wait_refused(p), SHMRING_INVALID_ARGUMENT);
    /* A child forked meanwhile inherits the mark but not the thread: its close frees the
     * handle's memory instead of refusing (found in review of step 5). */
    pid_t child = fork();
    if (child == 0) {
        shmring_producer_set_wait(NULL, SHMRING_WAIT_PARK); /* another last error first */
        shmring_producer_close(p);
        _exit(strstr(shmring_last_error(), "another thread") == NULL ? 0 : 1);
    }
    int child_status = -1;
    TRUE(child > 0 && waitpid(child, &child_status, 0) == child);
    TRUE(WIFEXITED(child_status) && WEXITSTATUS(child_status) == 0);
    /* Receive everything: the blocked send completes on the way, and its frame arrives too. */
    for (int i = 0; i <= filled; i++) {
        EXPECT(shmring_recv(c, buf, sizeof buf, &len, 5000 * MS), SHMRING_OK);
    }
    pthread_join(sender_thread, NULL);
    EXPECT(blocked.status, SHMRING_OK);
    EXPECT(shmring_recv(c, buf, sizeof buf, &len, 0), SHMRING_WOULD_BLOCK);
    EXPECT(shmring_send(p, big, 64, 0), SHMRING_OK); /* usable again */
    shmring_consumer_close(c);
    shmring_producer_close(p);
    EXPECT(shmring_channel_delete(client, "busy"), SHMRING_OK);

    /* A handle of the wrong kind, or a closed one, is refused rather than misused. */
    EXPECT(shmring_send((shmring_producer *)client, "x", 1, 0), SHMRING_INVALID_ARGUMENT);

    /* SHMRING_INCOMPATIBLE: the socket is not a shmring coordinator's. */
    char fake[256];
    snprintf(fake, sizeof fake, "%s/impostor.sock", dir);
    int srv = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, fake, sizeof addr.sun_path - 1);
    TRUE(bind(srv, (struct sockaddr *)&addr, sizeof addr) == 0 && listen(srv, 1) == 0);
    pthread_t t;
    pthread_create(&t, NULL, impostor, &srv);
    shmring_client *other = NULL;
    EXPECT(shmring_client_connect(fake, &other), SHMRING_INCOMPATIBLE);
    pthread_join(t, NULL);
    close(srv);

    /* SHMRING_IO_ERROR: a socket path longer than a Unix socket address holds. */
    char longsock[400];
    snprintf(longsock, sizeof longsock, "%s/%0150d.sock", dir, 0);
    setenv("SHMRING_NAMESPACE", "cstat-io", 1);
    EXPECT(shmring_coordinator_start(longsock, &again), SHMRING_IO_ERROR);

    /* SHMRING_PERMISSION_DENIED: the default socket's directory is writable by others. */
    char runtime[256], shared[300];
    snprintf(runtime, sizeof runtime, "%s/runtime", dir);
    snprintf(shared, sizeof shared, "%s/shmring", runtime);
    mkdir(runtime, 0700);
    mkdir(shared, 0777);
    chmod(shared, 0777);
    setenv("XDG_RUNTIME_DIR", runtime, 1);
    setenv("SHMRING_NAMESPACE", "cstat-perm", 1);
    EXPECT(shmring_coordinator_start(NULL, &again), SHMRING_PERMISSION_DENIED);
    rmdir(shared);
    rmdir(runtime);

    /* NULLs are accepted by every close and stop. */
    shmring_producer_close(NULL);
    shmring_consumer_close(NULL);
    shmring_client_close(NULL);
    shmring_coordinator_stop(NULL);
    shmring_channel_config_default(NULL, SHMRING_SPSC);

    shmring_client_close(client);
    shmring_coordinator_stop(coord);
    if (failures) {
        fprintf(stderr, "statuses: %d check(s) failed\n", failures);
        return 1;
    }
    printf("statuses: all reached\n");
    return 0;
}

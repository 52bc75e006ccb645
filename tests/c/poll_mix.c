/*
 * Two channels and a pipe in one poll() (tests/tests/pollable.rs runs it). The coordinator is
 * the one at SHMRING_SOCKET.
 *
 *   poll_mix produce CHANNEL FRAMES
 *   poll_mix consume CHANNEL_A FRAMES_A CHANNEL_B FRAMES_B PIPE_BYTES
 *   poll_mix fork CHANNEL_A CHANNEL_B
 *
 * produce: sends FRAMES frames, frame i being 8 to 64 bytes (i, little-endian, then bytes
 * that depend on i), in bursts of 100 with a 1 ms pause between bursts so that the consumer
 * goes idle often; then finishes the stream. Blocking sends. Its pollable descriptor, made
 * before the first send, must still be open and readable after the finish.
 *
 * consume: polls the two consumers' descriptors (shmring_consumer_fd) and standard input (the
 * pipe) in one poll() with no timeout. For each readable channel it receives with timeout 0
 * until SHMRING_WOULD_BLOCK (or SHMRING_CLOSED: that channel is done and leaves the poll set);
 * from the pipe it reads what is there until end of file. Every frame must be the next of its
 * channel, byte for byte; pipe byte k must be k % 251. It ends when both streams are finished
 * and the pipe is closed, checks the counts, and prints
 *   "received a=A b=B pipe=P polls=N empty=E cpu_us=C wall_us=W"
 * where `empty` counts poll returns after which nothing at all was received or read (the
 * busy-wait detector: a recheck or a race gives a few, a spinning loop thousands).
 *
 * fork: makes a consumer's descriptor on CHANNEL_A (which, with SHMRING_FD_WAKER=thread,
 * starts the library's waker thread), then forks. The child must be refused that inherited
 * consumer's descriptor (-1). The child, which has no waker thread of its parent's, opens its own consumer and producer of CHANNEL_B, makes the consumer's descriptor,
 * sends one frame and polls (at most 10 s): the descriptor must become readable and the frame
 * arrive. The parent waits for it and prints "child received".
 */
#define _POSIX_C_SOURCE 200809L
#include "shmring.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FRAME_MAX 64

static void check(shmring_status s, const char *what) {
    if (s != SHMRING_OK) {
        fprintf(stderr, "poll_mix: %s: %s: %s\n", what, shmring_status_name(s),
                shmring_last_error());
        exit(1);
    }
}

static size_t frame_len(uint64_t i) { return 8 + (size_t)((i * 13) % (FRAME_MAX - 7)); }

static uint8_t frame_byte(uint64_t i, size_t j) { return (uint8_t)(i * 31 + j * 7); }

static void frame_fill(uint64_t i, uint8_t *buf, size_t len) {
    for (size_t j = 0; j < 8; j++) buf[j] = (uint8_t)(i >> (8 * j));
    for (size_t j = 8; j < len; j++) buf[j] = frame_byte(i, j);
}

static int frame_is(uint64_t i, const uint8_t *data, size_t len) {
    if (len != frame_len(i)) return 0;
    for (size_t j = 0; j < 8; j++)
        if (data[j] != (uint8_t)(i >> (8 * j))) return 0;
    for (size_t j = 8; j < len; j++)
        if (data[j] != frame_byte(i, j)) return 0;
    return 1;
}

static int64_t now_us(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int produce(const char *channel, long frames) {
    shmring_client *client = NULL;
    check(shmring_client_connect(NULL, &client), "connecting");
    shmring_producer *tx = NULL;
    check(shmring_producer_open(client, channel, &tx), "opening the channel");
    /* Made before the stream: it must outlive the finish, open and readable, until the close. */
    int fd = shmring_producer_fd(tx);
    if (fd < 0) {
        fprintf(stderr, "poll_mix: shmring_producer_fd: %s\n", shmring_last_error());
        return 1;
    }
    uint8_t buf[FRAME_MAX];
    for (long n = 0; n < frames; n++) {
        if (n % 100 == 0) {
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
        }
        size_t len = frame_len((uint64_t)n);
        frame_fill((uint64_t)n, buf, len);
        check(shmring_send(tx, buf, len, -1), "sending");
    }
    check(shmring_producer_finish(tx), "finishing the stream");
    struct pollfd after = {fd, POLLIN, 0};
    if (poll(&after, 1, 0) != 1 || (after.revents & POLLNVAL) || !(after.revents & POLLIN) ||
        shmring_producer_fd(tx) != fd) {
        fprintf(stderr, "poll_mix: the producer's descriptor is not open and readable after the "
                        "finish (revents %#x)\n", after.revents);
        return 1;
    }
    shmring_producer_close(tx);
    shmring_client_close(client);
    return 0;
}

struct source {
    const char *name;
    shmring_consumer *rx;
    uint64_t received;
    int closed;
};

/* Receives from `s` with timeout 0 until the ring is empty or the stream ended; how many. */
static uint64_t drain(struct source *s) {
    uint64_t got = 0;
    uint8_t buf[FRAME_MAX];
    for (;;) {
        size_t len = 0;
        shmring_status st = shmring_recv(s->rx, buf, sizeof buf, &len, 0);
        if (st == SHMRING_WOULD_BLOCK) return got; /* re-armed */
        if (st == SHMRING_CLOSED) {
            s->closed = 1;
            return got;
        }
        check(st, s->name);
        if (!frame_is(s->received, buf, len)) {
            fprintf(stderr, "poll_mix: %s: frame %" PRIu64 " (%zu bytes) is not the next one\n",
                    s->name, s->received, len);
            exit(1);
        }
        s->received++;
        got++;
    }
}

static int consume(const char *a, long frames_a, const char *b, long frames_b, long pipe_bytes) {
    shmring_client *client = NULL;
    check(shmring_client_connect(NULL, &client), "connecting");
    struct source src[2] = {{a, NULL, 0, 0}, {b, NULL, 0, 0}};
    for (int k = 0; k < 2; k++)
        check(shmring_consumer_open(client, src[k].name, &src[k].rx), "opening a channel");
    printf("opened\n");
    fflush(stdout);

    struct pollfd fds[3];
    for (int k = 0; k < 2; k++) {
        fds[k].fd = shmring_consumer_fd(src[k].rx);
        if (fds[k].fd < 0) {
            fprintf(stderr, "poll_mix: shmring_consumer_fd: %s\n", shmring_last_error());
            return 1;
        }
        fds[k].events = POLLIN;
        drain(&src[k]); /* arms the descriptor (and takes anything already there) */
    }
    if (fds[0].fd == fds[1].fd) {
        fprintf(stderr, "poll_mix: two consumers share descriptor %d\n", fds[0].fd);
        return 1;
    }
    fds[2].fd = STDIN_FILENO;
    fds[2].events = POLLIN;

    long piped = 0;
    int pipe_open = 1;
    uint64_t polls = 0, empty = 0;
    int64_t wall0 = now_us(CLOCK_MONOTONIC), cpu0 = now_us(CLOCK_PROCESS_CPUTIME_ID);
    while (!src[0].closed || !src[1].closed || pipe_open) {
        for (int k = 0; k < 2; k++)
            if (src[k].closed) fds[k].fd = -1; /* poll ignores it */
        if (!pipe_open) fds[2].fd = -1;
        int n = poll(fds, 3, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("poll_mix: poll");
            return 1;
        }
        polls++;
        uint64_t progress = 0;
        for (int k = 0; k < 2; k++)
            if (fds[k].fd >= 0 && (fds[k].revents & (POLLIN | POLLERR | POLLHUP))) {
                int was_closed = src[k].closed;
                progress += drain(&src[k]);
                if (src[k].closed && !was_closed) progress++;
            }
        if (fds[2].fd >= 0 && (fds[2].revents & (POLLIN | POLLHUP | POLLERR))) {
            uint8_t buf[4096];
            ssize_t got = read(STDIN_FILENO, buf, sizeof buf);
            if (got < 0 && errno != EINTR && errno != EAGAIN) {
                perror("poll_mix: read");
                return 1;
            }
            if (got == 0) pipe_open = 0;
            for (ssize_t j = 0; j < got; j++, piped++)
                if (buf[j] != (uint8_t)(piped % 251)) {
                    fprintf(stderr, "poll_mix: pipe byte %ld is wrong\n", piped);
                    return 1;
                }
            progress += got > 0 || got == 0;
        }
        if (progress == 0) empty++;
    }
    int64_t wall = now_us(CLOCK_MONOTONIC) - wall0, cpu = now_us(CLOCK_PROCESS_CPUTIME_ID) - cpu0;
    if (src[0].received != (uint64_t)frames_a || src[1].received != (uint64_t)frames_b ||
        piped != pipe_bytes) {
        fprintf(stderr,
                "poll_mix: received a=%" PRIu64 " of %ld, b=%" PRIu64 " of %ld, pipe=%ld of %ld\n",
                src[0].received, frames_a, src[1].received, frames_b, piped, pipe_bytes);
        return 1;
    }
    printf("received a=%" PRIu64 " b=%" PRIu64 " pipe=%ld polls=%" PRIu64 " empty=%" PRIu64
           " cpu_us=%" PRId64 " wall_us=%" PRId64 "\n",
           src[0].received, src[1].received, piped, polls, empty, cpu, wall);
    for (int k = 0; k < 2; k++) shmring_consumer_close(src[k].rx);
    shmring_client_close(client);
    return 0;
}

static int forked(const char *a, const char *b) {
    shmring_client *client = NULL;
    check(shmring_client_connect(NULL, &client), "connecting");
    shmring_consumer *rx = NULL;
    check(shmring_consumer_open(client, a, &rx), "opening channel A");
    if (shmring_consumer_fd(rx) < 0) {
        fprintf(stderr, "poll_mix: shmring_consumer_fd: %s\n", shmring_last_error());
        return 1;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        perror("poll_mix: fork");
        return 1;
    }
    if (pid == 0) {
        /* The inherited consumer is the parent's: its descriptor is not handed to the child. */
        if (shmring_consumer_fd(rx) != -1) {
            fprintf(stderr, "poll_mix: child: the parent's descriptor was handed out\n");
            _exit(1);
        }
        shmring_client *own = NULL;
        check(shmring_client_connect(NULL, &own), "connecting in the child");
        shmring_consumer *crx = NULL;
        shmring_producer *ctx = NULL;
        check(shmring_consumer_open(own, b, &crx), "opening channel B");
        check(shmring_producer_open(own, b, &ctx), "opening channel B to send");
        struct pollfd pfd = {shmring_consumer_fd(crx), POLLIN, 0};
        if (pfd.fd < 0) {
            fprintf(stderr, "poll_mix: child: shmring_consumer_fd: %s\n", shmring_last_error());
            _exit(1);
        }
        uint8_t buf[FRAME_MAX];
        size_t len = 0;
        if (shmring_recv(crx, buf, sizeof buf, &len, 0) != SHMRING_WOULD_BLOCK) _exit(1);
        check(shmring_send(ctx, "forked", 6, -1), "sending in the child");
        if (poll(&pfd, 1, 10000) != 1) {
            fprintf(stderr, "poll_mix: child: the descriptor did not become readable\n");
            _exit(1);
        }
        check(shmring_recv(crx, buf, sizeof buf, &len, 0), "receiving in the child");
        if (len != 6 || memcmp(buf, "forked", 6) != 0) _exit(1);
        shmring_producer_close(ctx);
        shmring_consumer_close(crx);
        shmring_client_close(own);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "poll_mix: the forked child failed (status %d)\n", status);
        return 1;
    }
    printf("child received\n");
    shmring_consumer_close(rx);
    shmring_client_close(client);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "produce") == 0) return produce(argv[2], atol(argv[3]));
    if (argc >= 4 && strcmp(argv[1], "fork") == 0) return forked(argv[2], argv[3]);
    if (argc >= 7 && strcmp(argv[1], "consume") == 0)
        return consume(argv[2], atol(argv[3]), argv[4], atol(argv[5]), atol(argv[6]));
    fprintf(stderr, "usage: see the comment at the top of poll_mix.c\n");
    return 2;
}

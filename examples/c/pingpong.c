/*
 * Round-trip latency between two processes, in C.
 *
 *   pingpong [ROUND_TRIPS [PAYLOAD_BYTES [CPU_A CPU_B]]]     defaults: 100000 64, unpinned
 *
 * The parent runs a coordinator on one of its threads (no daemon needed), creates two SPSC
 * channels, ping and pong, and sends frames on ping; the child echoes each one on pong. Both
 * busy-spin. Every round trip is timed with clock_gettime (two reads, some 40 ns, included)
 * and the percentiles are printed. The child is forked before the coordinator starts (forking
 * a process that has threads is unsafe) and connects its own client.
 */
#define _GNU_SOURCE
#include "shmring.h"

#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void check(shmring_status s, const char *what) {
    if (s != SHMRING_OK) {
        fprintf(stderr, "pingpong: %s: %s: %s\n", what, shmring_status_name(s),
                shmring_last_error());
        exit(1);
    }
}

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) perror("pingpong: sched_setaffinity");
}

static void nap(long ns) {
    struct timespec t = {0, ns};
    nanosleep(&t, NULL);
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The child: connect once the coordinator is up, open both channels once they exist, echo. */
static int echo(const char *socket, long rounds) {
    shmring_client *client = NULL;
    shmring_status s;
    while ((s = shmring_client_connect(socket, &client)) == SHMRING_UNAVAILABLE) nap(1000000);
    check(s, "child: connecting");
    shmring_consumer *rx = NULL;
    shmring_producer *tx = NULL;
    while ((s = shmring_consumer_open(client, "ping", &rx)) == SHMRING_NOT_FOUND) nap(1000000);
    check(s, "child: opening ping");
    while ((s = shmring_producer_open(client, "pong", &tx)) == SHMRING_NOT_FOUND) nap(1000000);
    check(s, "child: opening pong");
    check(shmring_consumer_set_wait(rx, SHMRING_WAIT_SPIN), "child: wait strategy");
    check(shmring_producer_set_wait(tx, SHMRING_WAIT_SPIN), "child: wait strategy");
    for (long i = 0; i < rounds; i++) {
        shmring_frame f;
        check(shmring_read(rx, &f, -1), "child: reading");
        check(shmring_send(tx, f.data, f.len, -1), "child: echoing");
        check(shmring_release(rx), "child: releasing");
    }
    shmring_producer_close(tx);
    shmring_consumer_close(rx);
    shmring_client_close(client);
    return 0;
}

int main(int argc, char **argv) {
    long rounds = argc > 1 ? atol(argv[1]) : 100000;
    size_t payload = argc > 2 ? (size_t)atol(argv[2]) : 64;
    int cpus = argc > 4;
    if (rounds < 1 || payload > 4096) {
        fprintf(stderr, "usage: pingpong [ROUND_TRIPS [PAYLOAD_BYTES (0-4096) [CPU_A CPU_B]]]\n");
        return 2;
    }
    char socket[64];
    snprintf(socket, sizeof socket, "/tmp/shmring-pingpong-%d.sock", (int)getpid());

    pid_t child = fork();
    if (child < 0) {
        perror("pingpong: fork");
        return 1;
    }
    if (child == 0) {
        if (cpus) pin(atoi(argv[4]));
        return echo(socket, rounds + rounds / 10);
    }
    if (cpus) pin(atoi(argv[3]));

    shmring_coordinator *coord = NULL;
    check(shmring_coordinator_start(socket, &coord), "starting the coordinator");
    shmring_client *client = NULL;
    check(shmring_client_connect(socket, &client), "connecting");
    shmring_channel_config cfg;
    shmring_channel_config_default(&cfg, SHMRING_SPSC);
    cfg.capacity = 1 << 20;
    cfg.max_frame_size = 4096;
    check(shmring_channel_create(client, "ping", &cfg), "creating ping");
    check(shmring_channel_create(client, "pong", &cfg), "creating pong");
    shmring_producer *tx = NULL;
    shmring_consumer *rx = NULL;
    check(shmring_producer_open(client, "ping", &tx), "opening ping");
    check(shmring_consumer_open(client, "pong", &rx), "opening pong");
    check(shmring_producer_set_wait(tx, SHMRING_WAIT_SPIN), "wait strategy");
    check(shmring_consumer_set_wait(rx, SHMRING_WAIT_SPIN), "wait strategy");

    uint8_t frame[4096], echo_buf[4096];
    memset(frame, 0x5a, sizeof frame);
    int64_t *rtt = malloc(sizeof(int64_t) * (size_t)rounds);
    if (rtt == NULL) return 1;
    long warmup = rounds / 10;
    for (long i = 0; i < warmup + rounds; i++) {
        size_t got;
        int64_t t0 = now_ns();
        check(shmring_send(tx, frame, payload, -1), "sending");
        check(shmring_recv(rx, echo_buf, sizeof echo_buf, &got, -1), "receiving");
        int64_t t1 = now_ns();
        if (got != payload) {
            fprintf(stderr, "pingpong: echo of %zu bytes, sent %zu\n", got, payload);
            return 1;
        }
        if (i >= warmup) rtt[i - warmup] = t1 - t0;
    }
    int status = 0;
    waitpid(child, &status, 0);
    qsort(rtt, (size_t)rounds, sizeof rtt[0], cmp);
    printf("pingpong: %ld round trips of %zu-byte frames between two processes (busy-spin)%s\n",
           rounds, payload, cpus ? ", pinned" : "");
    printf("rtt_ns p50=%lld p90=%lld p99=%lld p99.9=%lld max=%lld\n",
           (long long)rtt[rounds / 2], (long long)rtt[rounds * 9 / 10],
           (long long)rtt[rounds * 99 / 100], (long long)rtt[rounds * 999 / 1000],
           (long long)rtt[rounds - 1]);
    free(rtt);
    shmring_producer_close(tx);
    shmring_consumer_close(rx);
    shmring_client_close(client);
    shmring_coordinator_stop(coord);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

/* A partitioned channel and its consumer group through the C ABI, each role a process of its
 * own (tests/tests/groups.rs runs them against a coordinator found through SHMRING_SOCKET).
 *
 *   groups create NAME PARTITIONS
 *   groups produce NAME COUNT KEYS     keyed frames: key "k<i % KEYS>", payload key index and
 *                                      that key's sequence number; finishes the stream
 *   groups member NAME GROUP LOG       a group member in exactly-once mode: appends every frame
 *                                      it receives to LOG (key, seq, flags, partition) and
 *                                      commits after writing, so a frame is released only once
 *                                      it is in the log; ends when its partitions' stream ends
 *
 * Exit status 0 on success; a message on stderr otherwise. */
#include "shmring.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>

static void die(const char *what, shmring_status st) {
    fprintf(stderr, "%s: %s: %s\n", what, shmring_status_name(st), shmring_last_error());
    exit(1);
}

static struct shmring_client *connect_client(void) {
    struct shmring_client *c = NULL;
    shmring_status st = shmring_client_connect(NULL, &c);
    if (st != SHMRING_OK) die("connect", st);
    return c;
}

struct record {
    uint32_t key;
    uint32_t partition;
    uint64_t seq;
    uint32_t flags;
    uint32_t check;
};

/* Each log record: the frame's fields and what the member saw. */
struct logged {
    uint32_t key;
    uint32_t partition;
    uint64_t seq;
    uint32_t flags;
    uint32_t pad;
};

static int produce(const char *name, uint64_t count, uint32_t keys) {
    struct shmring_client *c = connect_client();
    struct shmring_producer *p = NULL;
    shmring_status st = shmring_producer_open(c, name, &p);
    if (st != SHMRING_OK) die("producer_open", st);
    uint64_t *seq = calloc(keys, sizeof *seq);
    char key[32];
    for (uint64_t i = 0; i < count; i++) {
        uint32_t k = (uint32_t)(i % keys);
        int key_len = snprintf(key, sizeof key, "k%" PRIu32, k);
        struct record r = {k, shmring_partition_of(key, (size_t)key_len, 4), seq[k]++, 0, 0};
        r.check = (uint32_t)(r.key * 2654435761u ^ (uint32_t)r.seq);
        st = shmring_send_keyed(p, key, (size_t)key_len, &r, sizeof r, -1);
        if (st != SHMRING_OK) die("send_keyed", st);
    }
    st = shmring_producer_finish(p);
    if (st != SHMRING_OK) die("finish", st);
    printf("produced %" PRIu64 "\n", count);
    shmring_producer_close(p);
    shmring_client_close(c);
    free(seq);
    return 0;
}

static void write_all(int fd, const void *buf, size_t len) {
    const char *b = buf;
    while (len > 0) {
        ssize_t n = write(fd, b, len);
        if (n <= 0) {
            perror("write");
            exit(1);
        }
        b += n;
        len -= (size_t)n;
    }
}

static int member(const char *name, const char *group, const char *log_path) {
    struct shmring_client *c = connect_client();
    struct shmring_consumer *m = NULL;
    shmring_status st = shmring_consumer_open_group(c, name, group, &m);
    if (st != SHMRING_OK) die("consumer_open_group", st);
    st = shmring_consumer_set_checkpointed(m, 1);
    if (st != SHMRING_OK) die("set_checkpointed", st);
    int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd < 0) {
        perror(log_path);
        return 1;
    }
    printf("joined\n");
    fflush(stdout);
    enum { BATCH = 256 };
    struct logged buf[BATCH];
    uint32_t touched[BATCH];
    size_t n = 0;
    uint64_t received = 0;
    for (;;) {
        struct shmring_frame f;
        st = shmring_read(m, &f, 200000000);
        int flush = (st != SHMRING_OK) || n == BATCH;
        if (st == SHMRING_OK) {
            struct record r;
            if (f.len != sizeof r) {
                fprintf(stderr, "frame of %zu bytes\n", f.len);
                return 1;
            }
            memcpy(&r, f.data, sizeof r);
            if (r.check != (uint32_t)(r.key * 2654435761u ^ (uint32_t)r.seq) ||
                r.partition != f.partition) {
                fprintf(stderr, "bad frame key %u seq %" PRIu64 " partition %u/%u\n", r.key,
                        r.seq, r.partition, f.partition);
                return 1;
            }
            buf[n] = (struct logged){r.key, f.partition, r.seq, f.flags, 0};
            touched[n] = f.partition;
            n++;
            received++;
            st = shmring_release(m);
            if (st != SHMRING_OK) die("release", st);
            flush = n == BATCH;
        }
        if (flush && n > 0) {
            /* In the log first, then released with a checkpoint: a frame is never released
             * before it is logged. */
            write_all(fd, buf, n * sizeof buf[0]);
            uint32_t done[BATCH];
            size_t nd = 0;
            for (size_t i = 0; i < n; i++) {
                int seen = 0;
                for (size_t j = 0; j < nd; j++) seen |= done[j] == touched[i];
                if (seen) continue;
                done[nd++] = touched[i];
                shmring_status cs = shmring_checkpoint_commit(m, touched[i], NULL, 0);
                if (cs != SHMRING_OK && cs != SHMRING_NOT_FOUND) die("checkpoint_commit", cs);
            }
            n = 0;
        }
        if (st == SHMRING_CLOSED) break;
        if (st != SHMRING_OK && st != SHMRING_TIMED_OUT) die("read", st);
    }
    uint32_t parts[256];
    int64_t np = shmring_group_partitions(m, parts, 256);
    printf("received=%" PRIu64 " partitions=", received);
    for (int64_t i = 0; i < np; i++) printf("%s%u", i ? "," : "", parts[i]);
    printf("\n");
    close(fd);
    shmring_consumer_close(m);
    shmring_client_close(c);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "create") == 0) {
        struct shmring_client *c = connect_client();
        struct shmring_channel_config cfg;
        shmring_channel_config_default(&cfg, SHMRING_SPSC);
        cfg.capacity = 256 << 10;
        cfg.max_frame_size = 64;
        cfg.partitions = (uint32_t)strtoul(argv[3], NULL, 10);
        shmring_status st = shmring_channel_create(c, argv[2], &cfg);
        if (st != SHMRING_OK) die("create", st);
        printf("created\n");
        shmring_client_close(c);
        return 0;
    }
    if (argc >= 5 && strcmp(argv[1], "produce") == 0)
        return produce(argv[2], strtoull(argv[3], NULL, 10), (uint32_t)strtoul(argv[4], NULL, 10));
    if (argc >= 5 && strcmp(argv[1], "member") == 0) return member(argv[2], argv[3], argv[4]);
    fprintf(stderr, "usage: groups create|produce|member ...\n");
    return 2;
}

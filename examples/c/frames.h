/*
 * The test pattern the examples send and check, the same in C, Rust and Python, so that any
 * producer can feed any consumer: frame i is 8 to 256 bytes long, starts with i (64 bits,
 * little-endian) and continues with the bytes (i + j) mod 256. The producer ends the stream by
 * finishing it (shmring_producer_finish, Producer::finish).
 * Both ends print an FNV-1a 64 checksum of every payload byte, which must agree.
 */
#ifndef SHMRING_EXAMPLE_FRAMES_H
#define SHMRING_EXAMPLE_FRAMES_H

#include <stddef.h>
#include <stdint.h>

#define FRAME_MAX 256
#define FNV_START UINT64_C(0xcbf29ce484222325)

static inline size_t frame_len(uint64_t i) { return 8 + (size_t)((i * 37) % 249); }

static inline void frame_fill(uint64_t i, uint8_t *buf, size_t len) {
    for (size_t j = 0; j < 8; j++) buf[j] = (uint8_t)(i >> (8 * j));
    for (size_t j = 8; j < len; j++) buf[j] = (uint8_t)(i + j);
}

/* Whether `len` bytes at `data` are frame i. */
static inline int frame_ok(uint64_t i, const uint8_t *data, size_t len) {
    if (len != frame_len(i)) return 0;
    for (size_t j = 0; j < 8; j++)
        if (data[j] != (uint8_t)(i >> (8 * j))) return 0;
    for (size_t j = 8; j < len; j++)
        if (data[j] != (uint8_t)(i + j)) return 0;
    return 1;
}

static inline uint64_t fnv1a(uint64_t h, const uint8_t *data, size_t len) {
    for (size_t j = 0; j < len; j++) h = (h ^ data[j]) * UINT64_C(0x100000001b3);
    return h;
}

#endif

"""The test pattern of examples/c/frames.h, in Python: frame i is 8 to 256 bytes long, starts
with i (64 bits, little-endian) and continues with the bytes (i + j) mod 256. The producer ends
the stream by finishing it (Producer.finish). Both ends print an FNV-1a 64 checksum of every
payload byte."""

FRAME_MAX = 256
FNV_START = 0xCBF29CE484222325


def frame_len(i):
    return 8 + (i * 37) % 249


def frame(i):
    n = frame_len(i)
    return (i & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little") + bytes((i + j) & 0xFF for j in range(8, n))


def fnv1a(h, data):
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h

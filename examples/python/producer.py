#!/usr/bin/env python3
"""Sends frames to a channel of a running coordinator (shmringd, or $SHMRING_SOCKET's).

    python3 examples/python/producer.py [CHANNEL [COUNT [spsc|mpmc]]]   defaults: hello 1000 spsc

Creates the channel if it does not exist, sends COUNT frames of the pattern in frames.py,
finishes the stream (consumers then get Closed), and prints how many it sent and their checksum
(as examples/c/producer does).
"""
import sys

import shmring
from frames import FNV_START, FRAME_MAX, fnv1a, frame

channel = sys.argv[1] if len(sys.argv) > 1 else "hello"
count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
kind = sys.argv[3] if len(sys.argv) > 3 else "spsc"

with shmring.Client() as client:
    try:
        client.create(channel, kind=kind, capacity=64 * 1024, max_frame_size=FRAME_MAX)
    except shmring.Error as e:
        if e.status != "SHMRING_ALREADY_EXISTS":
            raise
    with client.producer(channel) as tx:
        checksum = FNV_START
        for i in range(count):
            f = frame(i)
            checksum = fnv1a(checksum, f)
            tx.send(f)
        tx.finish()  # the end of the stream: consumers drain, then get Closed
print(f"sent={count} checksum={checksum:016x}")

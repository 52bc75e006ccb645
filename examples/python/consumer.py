#!/usr/bin/env python3
"""Receives the frames a producer (C, Rust or Python) sends, checking each one.

    python3 examples/python/consumer.py [CHANNEL]                        default: hello

Waits up to 10 s for the channel to exist, receives until the producer finishes the stream
(alternately copied with recv and in place with read), prints how many frames it received and
their checksum, and deletes the channel: the stream is over, and nothing is left behind (a
channel already deleted, or one this user may not delete, is left as it is).
"""
import sys
import time

import shmring
from frames import FNV_START, fnv1a, frame

channel = sys.argv[1] if len(sys.argv) > 1 else "hello"

with shmring.Client() as client:
    deadline = time.monotonic() + 10
    while True:
        try:
            rx = client.consumer(channel)
            break
        except shmring.Error as e:
            if e.status != "SHMRING_NOT_FOUND" or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    with rx:
        checksum, i, redelivered = FNV_START, 0, 0
        while True:
            try:
                if i % 2 == 0:
                    data = rx.recv(timeout=30)
                else:
                    with rx.read(timeout=30) as view:  # zero-copy, valid inside the block
                        data = None if view is None else bytes(view)
                    redelivered += rx.last_redelivered
            except shmring.Closed:
                break  # the producer finished the stream: everything was received
            if data is None:
                sys.exit(f"consumer: no frame for 30 s after frame {i}")
            if data != frame(i):
                sys.exit(f"consumer: frame {i} ({len(data)} bytes) is not what was sent")
            checksum = fnv1a(checksum, data)
            i += 1
    try:
        client.delete(channel)
    except shmring.Error as e:
        if e.status not in ("SHMRING_NOT_FOUND", "SHMRING_PERMISSION_DENIED"):
            raise
print(f"received={i} checksum={checksum:016x} redelivered={redelivered}")

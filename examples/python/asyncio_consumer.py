#!/usr/bin/env python3
"""Receives a producer's frames inside an asyncio event loop, beside a timer, without a thread
and without busy-waiting: the consumer's descriptor is registered with loop.add_reader.

    python3 examples/python/asyncio_consumer.py [CHANNEL]                default: hello

Run a producer beside it (examples/python/producer.py, examples/c/producer, ...). Waits up to
10 s for the channel to exist, receives until the producer finishes the stream, checking every
frame, while a timer task ticks every 10 ms on the same loop; prints how many frames it received
and their checksum (as consumer.py does) and how many times the timer ticked, then deletes the
channel.
"""
import asyncio
import sys
import time

import shmring
from frames import FNV_START, fnv1a, frame


async def receive(rx):
    """Frames of `rx` as they come: an async generator over the consumer's descriptor."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_reader(rx.fileno(), ready.set)
    try:
        while True:
            # Receive without waiting until the ring is empty: that re-arms the descriptor.
            # Every 256 frames, let the loop's other tasks run (a stream that never pauses
            # would otherwise keep them waiting).
            for _ in range(256):
                try:
                    data = rx.recv(timeout=0)
                except shmring.Closed:
                    return  # the stream is finished and everything was received
                if data is None:
                    await ready.wait()
                    ready.clear()
                    break
                yield data
            else:
                await asyncio.sleep(0)
    finally:
        loop.remove_reader(rx.fileno())


async def tick(counter):
    while True:
        await asyncio.sleep(0.01)
        counter[0] += 1


async def main(channel):
    with shmring.Client() as client:
        deadline = time.monotonic() + 10
        while True:
            try:
                rx = client.consumer(channel)
                break
            except shmring.Error as e:
                if e.status != "SHMRING_NOT_FOUND" or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.01)
        ticks = [0]
        ticker = asyncio.create_task(tick(ticks))
        checksum, i = FNV_START, 0
        with rx:
            async for data in receive(rx):
                if data != frame(i):
                    sys.exit(f"asyncio_consumer: frame {i} ({len(data)} bytes) is not what was sent")
                checksum = fnv1a(checksum, data)
                i += 1
        ticker.cancel()
        try:
            client.delete(channel)
        except shmring.Error as e:
            if e.status not in ("SHMRING_NOT_FOUND", "SHMRING_PERMISSION_DENIED"):
                raise
    print(f"received={i} checksum={checksum:016x} ticks={ticks[0]}")


asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "hello"))

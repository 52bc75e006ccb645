"""The original design's transport, for `stream bench`: ticks hash-partitioned by symbol over
4 multiprocessing.Queue objects, one per processor process, as the design's seed code did.
Prints ticks_per_s= for N ticks (argv[1]): from the first put to the last tick taken."""

import multiprocessing as mp
import sys
import time
import zlib

PARTITIONS = 4
KEYS = [f"SYM{k:03}".encode() for k in range(100)]


def processor(q, done):
    n = 0
    while True:
        tick = q.get()
        if tick is None:
            break
        n += 1
    done.put(n)


def main():
    ticks = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    queues = [mp.Queue(maxsize=10_000) for _ in range(PARTITIONS)]
    done = mp.Queue()
    procs = [mp.Process(target=processor, args=(q, done)) for q in queues]
    for p in procs:
        p.start()
    payload = bytes(64)
    part = [zlib.crc32(k) % PARTITIONS for k in KEYS]
    start = time.perf_counter()
    for i in range(ticks):
        k = i % len(KEYS)
        queues[part[k]].put((KEYS[k], payload))
    for q in queues:
        q.put(None)
    total = sum(done.get() for _ in procs)
    secs = time.perf_counter() - start
    for p in procs:
        p.join()
    assert total == ticks, (total, ticks)
    print(f"ticks_per_s={ticks / secs:.0f}")


if __name__ == "__main__":
    main()

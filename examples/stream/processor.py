"""A stream processor in Python, a member of the same consumer group as the Rust ones
(examples/stream/main.rs starts it with --python): per-symbol sliding-window averages
(window 60 ticks, shift 10) and anomalies (a price more than 4 standard deviations from the
mean of the window before it), exactly-once through checkpoints.

It computes what examples/stream/logic.rs computes, operation for operation (sums in window
order, no math.fsum or sum(): CPython's sum() of floats compensates), so that its outputs are
bit for bit the Rust processors' and the reference's.

    SHMRING_SOCKET=... PYTHONPATH=python python3 examples/stream/processor.py
"""

import collections
import math
import struct

import shmring

WINDOW, SHIFT, K = 60, 10, 4.0
COMMIT_EVERY = 512


def apply(state, symbol, seq, price, out):
    """Folds one tick into `state` (symbol -> [count, deque of prices]); outputs to `out`."""
    s = state.get(symbol)
    if s is None:
        s = state[symbol] = [0, collections.deque()]
    window = s[1]
    if len(window) == WINDOW:
        total = 0.0
        for p in window:
            total += p
        mean = total / WINDOW
        var = 0.0
        for p in window:
            var += (p - mean) * (p - mean)
        std = math.sqrt(var / WINDOW)
        if std > 0.0 and abs(price - mean) > K * std:
            out(struct.pack("<IIQd", 2, symbol, seq, price))
        window.popleft()
    window.append(price)
    s[0] += 1
    count = s[0]
    if count >= WINDOW and (count - WINDOW) % SHIFT == 0:
        total = 0.0
        for p in window:
            total += p
        out(struct.pack("<IIQd", 1, symbol, (count - WINDOW) // SHIFT, total / WINDOW))


def encode(state):
    parts = [struct.pack("<I", len(state))]
    for symbol in sorted(state):
        count, window = state[symbol]
        parts.append(struct.pack("<IQI", symbol, count, len(window)))
        parts.append(struct.pack(f"<{len(window)}d", *window))
    return b"".join(parts)


def decode(data):
    state = {}
    if not data:
        return state
    (n,), off = struct.unpack_from("<I", data, 0), 4
    for _ in range(n):
        symbol, count, length = struct.unpack_from("<IQI", data, off)
        off += 16
        prices = struct.unpack_from(f"<{length}d", data, off)
        off += 8 * length
        state[symbol] = [count, collections.deque(prices)]
    return state


def main():
    client = shmring.Client()
    group = client.group_consumer("ticks", "processors")
    group.checkpointed(True)
    out = client.producer("results")
    states, dirty = {}, {}
    processed = 0

    def commit(p):
        dirty.pop(p, None)
        if p in states:
            group.commit(p, encode(states[p]))  # False: taken by another member meanwhile

    while True:
        try:
            with group.read(timeout=0.02) as frame:
                tick = None if frame is None else bytes(frame[:24])
                p = group.last_partition
        except shmring.Closed:
            for q in list(dirty):
                commit(q)
            print(f"python processor: {processed} ticks processed", flush=True)
            return
        for q in group.revoked():
            states.pop(q, None)
            dirty.pop(q, None)
        if tick is None:
            for q in list(dirty):
                commit(q)
            continue
        symbol, _, seq, price = struct.unpack("<IIQd", tick)
        if p not in states:
            states[p] = decode(group.checkpoint(p))
        apply(states[p], symbol, seq, price, out.send)
        processed += 1
        dirty[p] = dirty.get(p, 0) + 1
        if dirty[p] >= COMMIT_EVERY:
            commit(p)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""One producer, two subscriber processes on a broadcast channel: every frame reaches both.

    python3 examples/python/broadcast.py [FRAMES [block|drop-oldest]]   defaults: 3000 block

Runs a coordinator in this process (no daemon needed), creates the channel, starts two
subscribers (this script again, as `broadcast.py subscribe SOCKET K READY_FD`), waits until both
say (over a pipe) that they have opened the channel, since a subscriber receives what is
published after it opened, then publishes FRAMES frames of the pattern in frames.py and
finishes the stream. Each subscriber checks its frames and prints how many it received and missed:
none under block; under drop-oldest the producer never waits, and received + missed = FRAMES.
"""
import os
import subprocess
import sys
import tempfile

import shmring
from frames import FRAME_MAX, frame


def say(line):
    """Prints `line` in one write: the subscribers and the producer share the output."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def subscribe(socket, k, ready):
    with shmring.Client(socket) as client, client.consumer("ticks") as rx:
        os.write(ready, b"!")  # frames published from now on reach this subscriber
        os.close(ready)
        received = 0
        for data in rx:  # until the producer finishes the stream
            i = int.from_bytes(data[:8], "little")
            # In order, none lost unsaid: the frames before i were all received or missed.
            if i != received + rx.missed() or data != frame(i):
                sys.exit(f"subscriber {k}: frame {i} out of order or damaged")
            received += 1
        say(f"subscriber {k}: received={received} missed={rx.missed()}")


def publish(frames, overflow):
    socket = os.path.join(tempfile.gettempdir(), f"shmring-py-broadcast-{os.getpid()}.sock")
    with shmring.Coordinator(socket), shmring.Client(socket) as client:
        client.create("ticks", kind="broadcast", overflow=overflow, max_frame_size=FRAME_MAX,
                      max_consumers=2)
        ready, ready_w = os.pipe()
        subscribers = [
            subprocess.Popen([sys.executable, __file__, "subscribe", socket, str(k), str(ready_w)],
                             pass_fds=[ready_w])
            for k in (1, 2)
        ]
        os.close(ready_w)
        with client.producer("ticks") as tx:
            # Both subscribers in: a frame published before one opens never reaches it.
            if len(os.read(ready, 1) + os.read(ready, 1)) != 2:
                sys.exit("producer: a subscriber failed to open the channel")
            os.close(ready)
            timeout = 0 if overflow == "drop-oldest" else None  # drop-oldest never waits
            for i in range(frames):
                if not tx.send(frame(i), timeout=timeout):
                    sys.exit("producer: the ring was full")
            tx.finish()  # the end: each subscriber receives what is left, then stops
            say(f"producer: published={frames} overflow={overflow}")
            failed = [s.wait() for s in subscribers] != [0, 0]
    say("a subscriber failed" if failed else "ok")
    return failed


if len(sys.argv) > 1 and sys.argv[1] == "subscribe":
    subscribe(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
else:
    frames = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    sys.exit(publish(frames, sys.argv[2] if len(sys.argv) > 2 else "block"))

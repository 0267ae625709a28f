"""A bad link in user space: a UDP relay that loses, duplicates, reorders and delays.

    python impair.py SPEC.json

SPEC: {"listen": [host, port], "upstream": [host, port], "stats": path, "seed": n,
       "up": {"loss": p, "duplicate": p, "reorder": p, "delay": s},
       "down": {... the same, for upstream -> client}}

The client sends to `listen`; the relay forwards every datagram to `upstream` from its
own socket and sends what comes back to the newest client address. Per datagram and
direction, like netem's `loss P duplicate P reorder P delay D`: it is lost with
probability `loss`; otherwise it goes out once, or twice with probability `duplicate`,
and each copy goes out at once with probability `reorder`, else `delay` seconds later
(so the ones sent at once overtake the delayed ones: reordering).

netem does the same in the kernel, but not every kernel has it (sch_netem is a module
that minimal VM kernels leave out); this relay also knows exactly what it did, so the
tests can compare the daemons' counters with it. It writes its counters as JSON to
`stats` every 0.2 s: per direction, datagrams in, lost, duplicated, sent, and the
duplicates by packet type (first byte, as hex).
"""

import heapq
import json
import os
import random
import select
import socket
import sys
import time


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    rng = random.Random(spec.get("seed", 1))
    down_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # faces the client
    down_sock.bind(tuple(spec["listen"]))
    up_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # faces the server
    up_sock.bind(("0.0.0.0", 0))
    for s in (down_sock, up_sock):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setblocking(False)
    upstream = tuple(spec["upstream"])
    client = None
    stats = {d: {"in": 0, "lost": 0, "duplicated": 0, "sent": 0, "dup_types": {}}
             for d in ("up", "down")}
    queue = []  # (due, seq, direction, data)
    seq = 0
    next_dump = 0.0
    print("ready", flush=True)

    def dump():
        tmp = spec["stats"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(stats, f)
        os.replace(tmp, spec["stats"])

    while True:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, direction, data = heapq.heappop(queue)
            try:
                if direction == "up":
                    up_sock.sendto(data, upstream)
                elif client is not None:
                    down_sock.sendto(data, client)
                stats[direction]["sent"] += 1
            except OSError:
                pass
        if now >= next_dump:
            dump()
            next_dump = now + 0.2
        timeout = min(0.2, max(0.0, queue[0][0] - now)) if queue else 0.2
        readable, _, _ = select.select([down_sock, up_sock], [], [], timeout)
        for sock in readable:
            while True:
                try:
                    data, addr = sock.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue
                if sock is down_sock:
                    direction, client = "up", addr
                else:
                    direction = "down"
                rules, st = spec[direction], stats[direction]
                st["in"] += 1
                if rng.random() < rules.get("loss", 0.0):
                    st["lost"] += 1
                    continue
                copies = 1
                if rng.random() < rules.get("duplicate", 0.0):
                    copies = 2
                    st["duplicated"] += 1
                    key = f"{data[0]:02x}" if data else "empty"
                    st["dup_types"][key] = st["dup_types"].get(key, 0) + 1
                arrived = time.monotonic()
                for _ in range(copies):
                    late = rng.random() >= rules.get("reorder", 0.0)
                    due = arrived + (rules.get("delay", 0.0) if late else 0.0)
                    seq += 1
                    heapq.heappush(queue, (due, seq, direction, data))


if __name__ == "__main__":
    main(sys.argv[1])

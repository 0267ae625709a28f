"""A TCP transfer checked by SHA-256 on both ends (run inside test namespaces).

    python tcpxfer.py recv PORT          -> prints {"bytes": N, "sha256": H} when the peer closes
    python tcpxfer.py send HOST PORT SIZE SEED [PAUSE_MS]
                                         -> prints {"bytes": N, "sha256": H, "seconds": T}
                                         (PAUSE_MS: a pause after each 64-KiB chunk,
                                         so a transfer lasts long enough to outlive
                                         an event in the middle of it)
The sender's data is a deterministic pseudo-random stream, so both ends hash what
actually crossed the tunnel.
"""

import hashlib
import json
import random
import socket
import sys
import time

CHUNK = 1 << 16


def recv(port: int) -> None:
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::", port))
    srv.listen(1)
    print("listening", flush=True)
    conn, _ = srv.accept()
    digest, total = hashlib.sha256(), 0
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        digest.update(data)
        total += len(data)
    print(json.dumps({"bytes": total, "sha256": digest.hexdigest()}), flush=True)


def send(host: str, port: int, size: int, seed: int, pause: float = 0.0) -> None:
    rng = random.Random(seed)
    digest, sent = hashlib.sha256(), 0
    started = time.monotonic()
    conn = socket.create_connection((host, port), timeout=120)
    while sent < size:
        block = rng.randbytes(min(CHUNK, size - sent))
        conn.sendall(block)
        digest.update(block)
        sent += len(block)
        if pause:
            time.sleep(pause)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)  # wait until the receiver has read everything and closed
    conn.close()
    elapsed = time.monotonic() - started
    print(json.dumps({"bytes": sent, "sha256": digest.hexdigest(), "seconds": elapsed}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "recv":
        recv(int(sys.argv[2]))
    else:
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
             float(sys.argv[6]) / 1000 if len(sys.argv) > 6 else 0.0)

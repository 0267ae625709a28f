"""A hostile UDP sender for the flood tests: pre-built datagrams sent with sendmmsg(2).

    python flooder.py SPEC.json

SPEC: {"target": ip, "port": n, "seconds": s, "max_packets": n, "seed": n, "rate": packets/s,
       "client_ids": [configured ids to forge], "unknown_ids": [ids that are not],
       "server_ids": [every id configured on the server; default: client_ids],
       "replays": [hex of genuine captured packets, never time requests], "weights": {...}}

It builds a pool of datagrams of these categories (weights in SPEC, defaults below):

  random            random bytes, 25..1400 long (random type byte)
  truncated         0..24 bytes: random, or the first bytes of a genuine packet
  forged-data       type 01, a configured client id, random timestamp byte, counter, tag, body
  forged-keepalive  type 02, a configured client id, random rest (25 bytes, like a keepalive)
  forged-time       type 03, a configured client id, timestamp byte 00, random rest (48 bytes)
  unknown-id        types 01..03 with a client id the server does not know
  large             type 01, a configured client id, 1500..8000 bytes (IP fragments)
  replay            a genuine packet captured from the legit client, resent as is

and sends the pool round and round from one connected UDP socket, in sendmmsg batches,
until `seconds` pass or `max_packets` went out. Then it waits `linger` s and counts
what came back to its socket (the server must never answer a forgery or a replay).
Prints one JSON line: packets sent (total and by category), of those by category the
ones the server's socket filter drops in the kernel ("prescreened": shorter than
MIN_PACKET, a type byte not in SERVER_RECEIVES or a client id not in server_ids, see
vpncrypt/daemon/sockfilter.py; pins, which depend on the server's state, are not
counted here),
seconds, rate, errors and datagrams received.
"""

import collections
import ctypes
import errno
import json
import os
import random
import select
import socket
import sys
import time

DEFAULT_WEIGHTS = {
    "random": 15, "truncated": 10, "forged-data": 25, "forged-keepalive": 8,
    "forged-time": 4, "unknown-id": 10, "large": 3, "replay": 25,
}
POOL = 4096
BATCH = 256
# What vpncryptd's socket filter lets through to a server (vpncrypt/protocol/wire.py:
# MIN_PACKET, CLIENT_TYPES); standalone here, tests/test_sockfilter.py checks they agree.
MIN_PACKET = 25
SERVER_RECEIVES = frozenset({0x01, 0x02, 0x03})


def prescreened(pkt: bytes, server_ids) -> bool:
    """Whether the socket filter of a server with client ids `server_ids` drops `pkt`
    (pins aside)."""
    return (len(pkt) < MIN_PACKET or pkt[0] not in SERVER_RECEIVES
            or int.from_bytes(pkt[1:3], "big") not in server_ids)


class iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", msghdr), ("msg_len", ctypes.c_uint)]


def build_pool(spec: dict, rng: random.Random) -> list[tuple[str, bytes]]:
    weights = dict(DEFAULT_WEIGHTS, **spec.get("weights", {}))
    replays = [bytes.fromhex(h) for h in spec.get("replays", [])]
    assert all(p[0] != 0x03 for p in replays), "time requests may legitimately be answered"
    if not replays:
        weights["replay"] = 0
    ids, unknown = spec["client_ids"], spec.get("unknown_ids", [999])
    names = [k for k, w in weights.items() if w > 0]
    pool = []
    for _ in range(POOL):
        kind = rng.choices(names, [weights[k] for k in names])[0]
        rb = rng.randbytes
        if kind == "random":
            pkt = rb(rng.randint(25, 1400))
        elif kind == "truncated":
            n = rng.randint(0, 24)
            pkt = rng.choice(replays)[:n] if replays and rng.random() < 0.5 else rb(n)
        elif kind == "forged-data":
            pkt = (bytes([0x01]) + rng.choice(ids).to_bytes(2, "big")
                   + rb(5 + 16 + rng.randint(1, 1400)))
        elif kind == "forged-keepalive":
            pkt = bytes([0x02]) + rng.choice(ids).to_bytes(2, "big") + rb(5 + 16 + 1)
        elif kind == "forged-time":
            pkt = (bytes([0x03]) + rng.choice(ids).to_bytes(2, "big") + b"\x00"
                   + rb(4 + 16 + 24))
        elif kind == "unknown-id":
            pkt = (bytes([rng.randint(1, 3)]) + rng.choice(unknown).to_bytes(2, "big")
                   + rb(5 + 16 + rng.randint(1, 200)))
        elif kind == "large":
            pkt = bytes([0x01]) + rng.choice(ids).to_bytes(2, "big") + rb(rng.randint(1500, 8000))
        elif kind == "replay":
            pkt = rng.choice(replays)
        else:
            raise ValueError(kind)
        pool.append((kind, pkt))
    return pool


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    rng = random.Random(spec.get("seed", 1))
    pool = build_pool(spec, rng)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]

    # One buffer holding every datagram, and the message array twice over, so that a
    # batch starting anywhere in the pool is one contiguous slice.
    blob = ctypes.create_string_buffer(b"".join(p for _, p in pool) or b"\0")
    base = ctypes.addressof(blob)
    iovs = (iovec * POOL)()
    msgs = (mmsghdr * (2 * POOL))()
    offset = 0
    for i, (_, pkt) in enumerate(pool):
        iovs[i].iov_base, iovs[i].iov_len = base + offset, len(pkt)
        offset += len(pkt)
    for i in range(2 * POOL):
        msgs[i].msg_hdr.msg_iov = ctypes.pointer(iovs[i % POOL])
        msgs[i].msg_hdr.msg_iovlen = 1
    msg_size = ctypes.sizeof(mmsghdr)
    msgs_addr = ctypes.addressof(msgs)

    # Cumulative counts per category, to turn "n packets sent" into exact category counts.
    server_ids = frozenset(spec.get("server_ids") or spec["client_ids"])
    kinds = sorted({k for k, _ in pool})
    prefix = {k: [0] * (POOL + 1) for k in kinds}
    screened = {k: [0] * (POOL + 1) for k in kinds}
    for i, (k, pkt) in enumerate(pool):
        for kk in kinds:
            prefix[kk][i + 1] = prefix[kk][i] + (kk == k)
            screened[kk][i + 1] = screened[kk][i] + (kk == k and prescreened(pkt, server_ids))

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.connect((spec["target"], spec["port"]))
    fd = sock.fileno()
    deadline_packets = int(spec.get("max_packets", 10**9))
    seconds = float(spec["seconds"])
    rate = float(spec.get("rate", 0))  # packets/s; 0: as fast as it goes
    errors = collections.Counter()
    sent = pos = 0
    started = time.monotonic()
    end = started + seconds
    while sent < deadline_packets:
        now = time.monotonic()
        if now >= end:
            break
        if rate and sent > (now - started) * rate:
            time.sleep(min(BATCH / rate, end - now))
            continue
        want = min(BATCH, deadline_packets - sent)
        n = libc.sendmmsg(fd, msgs_addr + pos * msg_size, want, 0)
        if n < 0:
            err = ctypes.get_errno()
            errors[errno.errorcode.get(err, str(err))] += 1
            if err not in (errno.ENOBUFS, errno.EAGAIN, errno.ECONNREFUSED, errno.EINTR):
                break
            continue
        sent += n
        pos = (pos + n) % POOL
    elapsed = time.monotonic() - started

    full, rest = divmod(sent, POOL)
    by_kind = {k: full * prefix[k][POOL] + prefix[k][rest] for k in kinds}
    by_kind_screened = {k: full * screened[k][POOL] + screened[k][rest] for k in kinds}

    # Whatever the server sent back to us (nothing, if it is right).
    received, received_bytes = 0, 0
    linger_end = time.monotonic() + float(spec.get("linger", 1.0))
    sock.setblocking(False)
    while True:
        left = linger_end - time.monotonic()
        if left <= 0:
            break
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            continue
        try:
            data = sock.recv(65536)
        except ConnectionRefusedError:
            errors["ECONNREFUSED-recv"] += 1
            continue
        except BlockingIOError:
            continue
        received += 1
        received_bytes += len(data)
    print(json.dumps({
        "sent": sent, "seconds": round(elapsed, 3), "rate": round(sent / elapsed) if elapsed else 0,
        "by_kind": by_kind, "prescreened": by_kind_screened, "errors": dict(errors), "received": received,
        "received_bytes": received_bytes, "pool": POOL,
        "pid": os.getpid(),
    }), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])

"""Regenerates tests/vectors/packets.json from the reference path (run by hand, review the diff).

Each vector pins a complete packet: pre-shared key, direction, server and client id ->
the derived AES-SIV key; type, timestamp, counter, body -> the exact bytes on the wire.
Both the native and the reference path must reproduce every vector byte for byte.
"""

import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from vpncrypt.protocol import keys  # noqa: E402
from vpncrypt.protocol.aead import ReferenceSivContext  # noqa: E402


def det(label: str, n: int) -> bytes:
    """Deterministic filler bytes, so the vectors need no randomness."""
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"%s:%d" % (label.encode(), i)).digest()
        i += 1
    return out[:n]


CASES = [
    # (name, direction, server_id, client_id, type, timestamp, counter, body length)
    ("data-c2s-min", "c2s", 0, 1, 0x01, 1_764_000_000, 0, 1),
    ("data-c2s-64", "c2s", 7, 1, 0x01, 1_764_000_123, 0x12345678, 64),
    ("data-s2c-1420", "s2c", 7, 1, 0x81, 1_764_000_255, 0xFFFFFFFF, 1420),
    ("keepalive-c2s", "c2s", 7, 65535, 0x02, 1_764_000_256, 1, 1),
    ("keepalive-s2c", "s2c", 4294967295, 2, 0x82, 1, 2, 1),
    ("time-request", "c2s", 7, 3, 0x03, 0, 0xDEADBEEF, 24),
    ("time-response", "s2c", 7, 3, 0x84, 0, 0xCAFEBABE, 24),
    ("data-c2s-512-1970", "c2s", 1, 42, 0x01, 86_400, 0x80000000, 512),
    ("data-c2s-large", "c2s", 9, 9, 0x01, 2**40 + 17, 77, 1447),
]


def main():
    vectors = []
    for name, direction, server_id, client_id, ptype, ts, counter, size in CASES:
        psk = det("psk-" + name, keys.PSK_LEN)
        key = keys.direction_key(psk, direction.encode(), server_id, client_id)
        body = det("body-" + name, size)
        packet = ReferenceSivContext(key, client_id, server_id).seal(ptype, ts, counter, body)
        vectors.append(
            {
                "name": name,
                "psk": psk.hex(),
                "direction": direction,
                "server_id": server_id,
                "client_id": client_id,
                "siv_key": key.hex(),
                "type": ptype,
                "timestamp": ts,
                "counter": counter,
                "body": body.hex(),
                "packet": packet.hex(),
            }
        )
    path = os.path.join(os.path.dirname(__file__), "packets.json")
    with open(path, "w") as f:
        json.dump({"version": 1, "vectors": vectors}, f, indent=1)
        f.write("\n")
    print(f"wrote {len(vectors)} vectors to {path}")


if __name__ == "__main__":
    main()

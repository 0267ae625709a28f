"""Regenerates tests/vectors/packets.json and ratchet.json from the reference path (run by
hand, review the diff).

Each vector pins a complete packet: pre-shared key, direction, server and client id ->
the derived AES-SIV key; type, timestamp, counter, body -> the exact bytes on the wire.
Both the native and the reference path must reproduce every vector byte for byte.
"""

import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from vpncrypt.protocol import keys, ratchet  # noqa: E402
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
    ratchet_vectors()


RATCHET_CASES = [
    # (name, period, epoch, offset into it, direction, server_id, client_id, type, counter, size)
    ("ratchet-epoch0-c2s", 3600, 0, 17, "c2s", 7, 1, 0x01, 0, 40),
    ("ratchet-1h-c2s", 3600, 8123, 0, "c2s", 7, 1, 0x01, 0x12345678, 64),
    ("ratchet-1h-s2c-last-second", 3600, 8123, 3599, "s2c", 7, 1, 0x81, 0xFFFFFFFF, 64),
    ("ratchet-10m-keepalive", 600, 100000, 300, "c2s", 4294967295, 65535, 0x02, 5, 1),
]


def ratchet_vectors():
    """Epoch secrets and packets of ratcheting clients (docs/PROTOCOL.md §3.3)."""
    vectors = []
    for name, period, epoch, into, direction, server_id, client_id, ptype, counter, size in RATCHET_CASES:
        psk = det("psk-" + name, keys.PSK_LEN)
        chain = ratchet.Ratchet.from_psk(psk, period)
        secret = chain.secret_at(epoch)
        ts = max(ratchet.epoch_start(epoch, period), 1_700_000_000 if epoch == 0 else 0) + into
        key = keys.direction_key(secret, direction.encode(), server_id, client_id)
        body = det("body-" + name, size)
        packet = ReferenceSivContext(key, client_id, server_id).seal(ptype, ts, counter, body)
        vectors.append({
            "name": name, "psk": psk.hex(), "period": period, "epoch": epoch,
            "first_secret": chain.secret.hex(), "time_key": chain.time_key.hex(),
            "secret": secret.hex(), "direction": direction, "server_id": server_id,
            "client_id": client_id, "siv_key": key.hex(), "type": ptype, "timestamp": ts,
            "counter": counter, "body": body.hex(), "packet": packet.hex(),
        })
    path = os.path.join(os.path.dirname(__file__), "ratchet.json")
    with open(path, "w") as f:
        json.dump({"version": 1, "origin": ratchet.ORIGIN, "vectors": vectors}, f, indent=1)
        f.write("\n")
    print(f"wrote {len(vectors)} vectors to {path}")


if __name__ == "__main__":
    main()

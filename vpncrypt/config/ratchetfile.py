"""The ratcheting key file: where a client's evolving secret lives (protocol/ratchet.py).

It starts as an ordinary key file (one base64 PSK, what `vpncrypt genkey` prints). The
daemon converts it at its first epoch and rewrites it once an epoch, in place, through
a descriptor it opened before dropping privileges (daemon/keystate.py). The file is two
SLOT-byte copies of the state, written in turn, each ending with its generation and a
CRC, so a write cut short leaves the other copy whole; the newest complete copy counts:

    vpncrypt-ratchet 1
    period 3600
    epoch 8123
    secret <base64 S_epoch>
    time <base64 K_time>
    end <generation> <crc32 of the lines above and the generation>

The PSK itself is gone from the file after the conversion, and each rewrite leaves
only the secret of the oldest epoch still needed.
"""

import binascii

from ..protocol.keys import PSK_LEN
from ..protocol.ratchet import MAX_PERIOD, MIN_PERIOD, Ratchet

SLOT = 256
MAGIC = b"vpncrypt-ratchet 1"


def _b64(raw: bytes) -> bytes:
    return binascii.b2a_base64(raw, newline=False)


def encode_slot(ratchet: Ratchet, generation: int) -> bytes:
    body = b"%s\nperiod %d\nepoch %d\nsecret %s\ntime %s\n" % (
        MAGIC, ratchet.period, ratchet.epoch, _b64(ratchet.secret), _b64(ratchet.time_key))
    crc = binascii.crc32(b"end %d" % generation, binascii.crc32(body))
    data = body + b"end %d %d\n" % (generation, crc)
    return data.ljust(SLOT - 1, b" ") + b"\n"


def _decode_slot(data: bytes):
    """(generation, Ratchet) of one complete copy, or None."""
    lines = data.rstrip(b" \n").split(b"\n")
    if len(lines) != 6 or lines[0] != MAGIC:
        return None
    end = lines[5].split(b" ")
    if len(end) != 3 or end[0] != b"end" or not end[1].isdigit() or not end[2].isdigit():
        return None
    body = b"\n".join(lines[:5]) + b"\n"
    if binascii.crc32(b"end " + end[1], binascii.crc32(body)) != int(end[2]):
        return None
    fields = dict(line.split(b" ", 1) for line in lines[1:5] if b" " in line)
    try:
        period, epoch = int(fields[b"period"]), int(fields[b"epoch"])
        secret = binascii.a2b_base64(fields[b"secret"], strict_mode=True)
        time_key = binascii.a2b_base64(fields[b"time"], strict_mode=True)
    except (KeyError, ValueError, binascii.Error):
        return None
    if not MIN_PERIOD <= period <= MAX_PERIOD or epoch < 0 or len(secret) != PSK_LEN \
            or len(time_key) != PSK_LEN:
        return None
    return int(end[1]), Ratchet(period, epoch, secret, time_key)


def is_ratchet_file(data: bytes) -> bool:
    return data.startswith(MAGIC) or data[SLOT:SLOT + len(MAGIC)] == MAGIC


def decode(data: bytes):
    """(generation, Ratchet) of the newest complete copy, or None (torn or damaged)."""
    best = None
    for start in (0, SLOT):
        got = _decode_slot(data[start:start + SLOT])
        if got is not None and (best is None or got[0] > best[0]):
            best = got
    return best

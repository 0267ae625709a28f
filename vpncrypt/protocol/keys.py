"""Keys: the 256-bit pre-shared key per client (base64 text) and the per-direction key schedule.

The schedule is HKDF-SHA256 (RFC 5869) from the standard library only, so the fast
path needs no `cryptography`. Each direction gets its own 64-byte AES-SIV key bound
to the protocol version, the direction, the server id and the client id: a packet
can never be reflected to its sender, replayed to another server, or accepted under
another client's id.
"""

import binascii
import os
import struct

from .wire import VERSION

# SHA-256 from CPython's own _sha256 where there is one (3.11): hashlib loads OpenSSL's
# whole digest table and blake2 besides, about 0.25 MB of resident memory for the
# daemon's life, for a few hashes per client at start-up. base64 is left out for the
# same reason: binascii does the work (base64 calls it too).
try:
    from _sha256 import sha256
except ImportError:  # 3.12+ renamed it; or a build without it
    from hashlib import sha256

PSK_LEN = 32
SIV_KEY_LEN = 64  # AES-256-SIV: two AES-256 keys
SALT = b"vpncrypt-v%d" % VERSION

CLIENT_TO_SERVER = b"c2s"
SERVER_TO_CLIENT = b"s2c"


class KeyFormatError(ValueError):
    """The text is not a base64-encoded 32-byte key."""


def generate_key(rng=os.urandom) -> str:
    return binascii.b2a_base64(rng(PSK_LEN), newline=False).decode("ascii")


def decode_key(text: str) -> bytes:
    """Parse a base64 key; raises KeyFormatError with a message that never echoes the key."""
    text = text.strip()
    if not text:
        raise KeyFormatError("key is empty")
    try:
        # = base64.b64decode(text, validate=True); a non-ASCII str raises ValueError
        raw = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("key is not valid base64") from None
    if len(raw) != PSK_LEN:
        raise KeyFormatError(f"key must decode to {PSK_LEN} bytes, got {len(raw)}")
    return raw


# HMAC-SHA256 (RFC 2104) over sha256 objects: the key's padded inner and outer hash states are
# computed once and copied per message, as the pure-Python path of the standard
# library's hmac module does. A server derives two keys per client at start-up, and
# with OpenSSL 3 every hmac.digest()/hmac.new() call pays an algorithm fetch: this way
# HKDF costs about half as much (tests/test_aead.py checks it against hmac.digest).
_HMAC_BLOCK = 64  # SHA-256 block size
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _hmac_key(key: bytes):
    """The (inner, outer) SHA-256 states of HMAC keyed with `key`."""
    if len(key) > _HMAC_BLOCK:
        key = sha256(key).digest()
    key = key.ljust(_HMAC_BLOCK, b"\0")
    return sha256(key.translate(_IPAD)), sha256(key.translate(_OPAD))


def _hmac(keyed, message: bytes) -> bytes:
    inner, outer = keyed[0].copy(), keyed[1].copy()
    inner.update(message)
    outer.update(inner.digest())
    return outer.digest()


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    prk = _hmac(_SALT_KEY if salt == SALT else _hmac_key(salt), ikm)
    keyed = _hmac_key(prk)
    out, block, i = b"", b"", 0
    while len(out) < length:
        i += 1
        block = _hmac(keyed, block + info + bytes([i]))
        out += block
    return out[:length]


_SALT_KEY = _hmac_key(SALT)  # every key derivation's HKDF-Extract uses this salt


def direction_key(psk: bytes, direction: bytes, server_id: int, client_id: int) -> bytes:
    if len(psk) != PSK_LEN:
        raise KeyFormatError(f"key must be {PSK_LEN} bytes")
    info = b"vpncrypt-v%d %s" % (VERSION, direction) + struct.pack(">IH", server_id, client_id)
    return hkdf_sha256(psk, SALT, info, SIV_KEY_LEN)

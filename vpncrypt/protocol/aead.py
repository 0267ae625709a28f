"""AEAD backends: the native AES-256-SIV core (vpncrypt._fast) and the pure-Python reference.

Both expose `SivContext(key64, client_id, server_id)` with
`seal(ptype, timestamp, counter, body) -> packet` and `open(packet, timestamp) -> body | None`,
and produce byte-identical packets (pinned by tests/vectors/). The native path is
preferred; set VPNCRYPT_CRYPTO=reference to force the fallback (tests, debugging).
"""

import os

from . import wire


class ReferenceSivContext:
    """AES-256-SIV through `cryptography` (imported lazily: only this path needs it)."""

    PATH = "reference"

    def __init__(self, key: bytes, client_id: int, server_id: int):
        from cryptography.hazmat.primitives.ciphers.aead import AESSIV

        if len(key) != 64:
            raise ValueError("AES-256-SIV key must be 64 bytes")
        if not 0 <= client_id <= 0xFFFF:
            raise ValueError("client id must fit 16 bits")
        self._siv = AESSIV(key)
        self.client_id = client_id
        self.server_id = server_id

    def seal(self, ptype: int, timestamp: int, counter: int, body) -> bytes:
        if not wire.MIN_BODY <= len(body) <= wire.MAX_BODY:
            raise ValueError("body must be 1..%d bytes" % wire.MAX_BODY)
        if not 0 <= ptype <= 255:
            raise ValueError("packet type must fit one byte")
        ad = wire.associated_data(ptype, self.client_id, self.server_id, timestamp, counter)
        header = wire.pack_header(ptype, self.client_id, timestamp, counter)
        return header + self._siv.encrypt(bytes(body), [ad])

    def open(self, packet, timestamp: int):
        from cryptography.exceptions import InvalidTag

        if not wire.MIN_PACKET <= len(packet) <= wire.MAX_DATAGRAM:
            return None
        ptype, client_id, low8, counter = wire.unpack_header(packet)
        if low8 != timestamp & 0xFF:  # the header's timestamp byte is covered too
            return None
        ad = wire.associated_data(ptype, client_id, self.server_id, timestamp, counter)
        try:
            return self._siv.decrypt(bytes(packet[wire.HEADER_LEN :]), [ad])
        except InvalidTag:  # the library compares tags in constant time
            return None


def native_module():
    """The native extension vpncrypt._fast, or None if it is not built/loadable (the
    daemon then runs on the reference path, the Python loop and ctypes fallbacks)."""
    try:
        from .. import _fast
    except ImportError:
        return None
    return _fast


def native_context():
    """The native SivContext class, or None if the extension is not built/loadable."""
    fast = native_module()
    return None if fast is None else fast.SivContext


def select(prefer: str | None = None):
    """Return (SivContext class, path name). `prefer`: 'native', 'reference' or None (auto)."""
    prefer = prefer or os.environ.get("VPNCRYPT_CRYPTO") or "auto"
    if prefer not in ("auto", "native", "reference"):
        raise ValueError(f"unknown crypto path {prefer!r} (native, reference or auto)")
    if prefer != "reference":
        native = native_context()
        if native is not None:
            return native, "native"
        if prefer == "native":
            raise ImportError("the native extension vpncrypt._fast is not built")
    return ReferenceSivContext, "reference"

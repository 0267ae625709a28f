"""Frames: sealed packets on a TCP stream (transport = tcp, listen_tcp; docs/PROTOCOL.md §4.1).

A frame is a 2-byte big-endian length and one sealed packet, exactly as it would be
sent in a UDP datagram: each frame authenticates on its own, and nothing about the
connection is trusted. A length that no packet can have (below MIN_PACKET, above
MAX_DATAGRAM) means the stream is garbage: the reader stops there, having buffered
no more than one frame. Pure: bytes in, packets out.
"""

import struct

from .wire import MAX_DATAGRAM, MIN_PACKET

PREFIX = 2
MAX_FRAME = PREFIX + MAX_DATAGRAM
_LENGTH = struct.Struct(">H")


class FrameError(ValueError):
    """The stream holds a length no sealed packet has."""


def frame(packet: bytes) -> bytes:
    if not MIN_PACKET <= len(packet) <= MAX_DATAGRAM:
        raise ValueError(f"a sealed packet is {MIN_PACKET} to {MAX_DATAGRAM} bytes")
    return _LENGTH.pack(len(packet)) + packet


def split(data, start: int = 0):
    """(packets, end): the whole frames of data[start:] and where the first incomplete
    one begins; FrameError at an impossible length."""
    packets, at, n = [], start, len(data)
    while n - at >= PREFIX:
        (length,) = _LENGTH.unpack_from(data, at)
        if not MIN_PACKET <= length <= MAX_DATAGRAM:
            raise FrameError(f"frame length {length} (a sealed packet is {MIN_PACKET} to "
                             f"{MAX_DATAGRAM} bytes)")
        if n - at - PREFIX < length:
            break
        packets.append(bytes(data[at + PREFIX:at + PREFIX + length]))
        at += PREFIX + length
    return packets, at

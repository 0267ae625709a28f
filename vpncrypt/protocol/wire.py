"""Wire format: the 8-byte cleartext header, packet types, drop reasons and timestamp rules.

Packet on the wire (24 bytes of overhead):

    type (1) | client id (2, BE) | timestamp low 8 bits (1) | counter (4, BE) | SIV tag (16) | ciphertext

Associated data sealed with every packet (20 bytes, not sent):

    version (1) | type (1) | client id (2) | server id (4) | timestamp (8) | counter (4)

See docs/PROTOCOL.md for the rationale.
"""

import enum
import struct

VERSION = 1
HEADER_LEN = 8
TAG_LEN = 16
OVERHEAD = HEADER_LEN + TAG_LEN
MIN_BODY = 1  # OpenSSL 3.0 cannot seal an empty plaintext with AES-SIV
MAX_DATAGRAM = 65507  # largest UDP payload over IPv4 (IPv6 allows 65527; we use the smaller)
MAX_BODY = MAX_DATAGRAM - OVERHEAD
MIN_PACKET = OVERHEAD + MIN_BODY

CLOCK_WINDOW = 128  # +-seconds, enforced by the timestamp reconstruction below
STALE_AFTER = 5  # seconds older than the newest accepted packet from that sender

FROM_SERVER = 0x80  # type bit 7: direction


class Kind(enum.IntEnum):
    DATA = 0x01
    KEEPALIVE = 0x02
    TIME_REQUEST = 0x03  # client -> server only
    TIME_RESPONSE = 0x04  # server -> client only


# Valid type bytes by direction.
CLIENT_TYPES = frozenset({Kind.DATA, Kind.KEEPALIVE, Kind.TIME_REQUEST})
SERVER_TYPES = frozenset(k | FROM_SERVER for k in (Kind.DATA, Kind.KEEPALIVE, Kind.TIME_RESPONSE))
# Time-sync packets cannot rely on the receiver's idea of the sender's clock: their
# timestamp field is 0 and their freshness comes from the nonce they carry.
UNTIMED = frozenset({Kind.TIME_REQUEST, Kind.TIME_RESPONSE | FROM_SERVER})

KEEPALIVE_BODY = b"\x00"


class Drop(enum.IntEnum):
    """Why a packet was not accepted. Stable codes: the daemon counts and logs them."""

    MALFORMED = 1  # shorter than header + tag + 1 byte, or longer than a datagram
    BAD_TYPE = 2  # unknown type, or a type the receiver's role never receives
    UNKNOWN_CLIENT = 3  # client id not configured
    STALE = 4  # more than STALE_AFTER s older than the newest accepted, or before a restart
    REPLAY = 5  # counter already seen, or too far behind the window
    AUTH = 6  # tag did not verify (wrong key, tampering, or clock outside +-128 s)
    CLOCK_SKEW = 7  # tag verifies under a timestamp 256*k s away: the sender's clock is off
    UNSOLICITED = 8  # time-sync response that answers no request of ours
    RATE_LIMITED = 9  # over a per-client budget: time-sync requests; (daemon) DATA from
    # another address than the client's endpoint, control packets up from the native loop
    SPOOFED_SOURCE = 10  # inner source address not among the sender's allowed IPs (daemon)
    NO_ROUTE = 11  # inner destination matches no client (daemon)
    BAD_PACKET = 12  # inner packet is not IPv4/IPv6 (daemon)
    UNSYNCED = 13  # client: outgoing packet held back until the first time sync (daemon)
    QUEUE_FULL = 14  # a TCP connection's send queue is full: the frame is dropped (daemon)

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


_HEADER = struct.Struct(">BHBI")
_AD = struct.Struct(">BBHIQI")


def pack_header(ptype: int, client_id: int, timestamp: int, counter: int) -> bytes:
    return _HEADER.pack(ptype, client_id, timestamp & 0xFF, counter)


def unpack_header(packet) -> tuple[int, int, int, int]:
    """(type, client id, timestamp low byte, counter). The caller checks the length."""
    return _HEADER.unpack_from(packet)


def associated_data(ptype: int, client_id: int, server_id: int, timestamp: int, counter: int) -> bytes:
    return _AD.pack(VERSION, ptype, client_id, server_id, timestamp, counter)


def full_timestamp(low8: int, now: int) -> int:
    """The timestamp with low byte `low8` nearest to `now`: within [now-128, now+127].

    A sender more than ~128 s off therefore yields a different associated-data value
    and fails authentication: the clock window falls out of the crypto.
    """
    base = now - CLOCK_WINDOW
    return base + ((low8 - base) & 0xFF)


def check_size(packet_len: int) -> bool:
    return MIN_PACKET <= packet_len <= MAX_DATAGRAM

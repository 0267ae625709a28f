"""Inner IP packets: the few header fields the daemon needs, and ICMP "too big" replies.

Only what routing and anti-spoofing require is parsed (version, source, destination);
everything else passes through untouched.
"""

import struct

_V4_MIN = 20
_V6_HDR = 40


def addresses(packet):
    """(version, source int, destination int) of an IPv4/IPv6 packet, or None if malformed."""
    n = len(packet)
    if n < 1:
        return None
    version = packet[0] >> 4
    if version == 4 and n >= _V4_MIN:
        return 4, int.from_bytes(packet[12:16], "big"), int.from_bytes(packet[16:20], "big")
    if version == 6 and n >= _V6_HDR:
        return 6, int.from_bytes(packet[8:24], "big"), int.from_bytes(packet[24:40], "big")
    return None


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def too_big(packet: bytes, mtu: int, our_v4: bytes | None, our_v6: bytes | None):
    """ICMP 'fragmentation needed' (IPv4, only if DF is set) or ICMPv6 'packet too big' telling
    the packet's sender to use `mtu`, sourced from our tunnel address. None when no reply
    is due (IPv4 without DF, no tunnel address of that family, malformed packet)."""
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) >= _V4_MIN and our_v4:
        if not packet[6] & 0x40:  # DF clear: the kernel may fragment; nothing to say
            return None
        ihl = (packet[0] & 0x0F) * 4
        quoted = packet[: ihl + 8]
        icmp = struct.pack("!BBHHH", 3, 4, 0, 0, mtu) + quoted
        icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
        total = 20 + len(icmp)
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 1, 0, our_v4, packet[12:16])
        hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
        return hdr + icmp
    if version == 6 and len(packet) >= _V6_HDR and our_v6:
        quoted = packet[: 1280 - 48]  # the reply must itself fit the IPv6 minimum MTU
        body = struct.pack("!BBHI", 2, 0, 0, mtu) + quoted
        pseudo = our_v6 + packet[8:24] + struct.pack("!I3xB", len(body), 58)
        body = body[:2] + struct.pack("!H", checksum(pseudo + body)) + body[4:]
        hdr = struct.pack("!IHBB16s16s", 6 << 28, len(body), 58, 64, our_v6, packet[8:24])
        return hdr + body
    return None

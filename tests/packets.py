"""Hand-built IP packets for tests: IPv4/IPv6 headers, ICMP/ICMPv6 echo, UDP, checksums.

Tests that push packets through a TUN (or through the tunnel end to end) need packets the
kernel accepts without any help, so everything here is built byte by byte and every
checksum is computed: the IPv4 header checksum, and the ICMPv6/UDP checksums over their
pseudo-headers.  The parsers verify those checksums too, so a test can assert that what
came back is exactly what a real stack would emit.  IPv6 extension headers are neither
built nor parsed; nothing in the tests needs them.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_ECHO = struct.Struct("!BBHHH")
_UDP = struct.Struct("!HHHH")


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum: one's complement of the one's-complement 16-bit sum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _addr(value: str | Address) -> Address:
    return ipaddress.ip_address(value)


def pseudo_header(src: str | Address, dst: str | Address, proto: int, length: int) -> bytes:
    """The pseudo-header that UDP/TCP (and ICMPv6) checksums cover, for either family."""
    s, d = _addr(src), _addr(dst)
    if s.version != d.version:
        raise ValueError(f"address families differ: {s} and {d}")
    if s.version == 4:
        return struct.pack("!4s4sBBH", s.packed, d.packed, 0, proto, length)
    return struct.pack("!16s16sIxxxB", s.packed, d.packed, length, proto)


def ipv4(
    src: str | Address,
    dst: str | Address,
    proto: int,
    payload: bytes,
    *,
    ttl: int = 64,
    ident: int = 0,
    tos: int = 0,
    dont_fragment: bool = True,
) -> bytes:
    """An IPv4 packet (20-byte header, no options) with a correct header checksum."""
    total = _IPV4.size + len(payload)
    flags_frag = 0x4000 if dont_fragment else 0
    header = _IPV4.pack(
        0x45, tos, total, ident, flags_frag, ttl, proto, 0, _addr(src).packed, _addr(dst).packed
    )
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def ipv6(
    src: str | Address,
    dst: str | Address,
    next_header: int,
    payload: bytes,
    *,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytes:
    """An IPv6 packet (fixed header only)."""
    first = (6 << 28) | (traffic_class << 20) | flow_label
    return (
        _IPV6.pack(
            first, len(payload), next_header, hop_limit, _addr(src).packed, _addr(dst).packed
        )
        + payload
    )


def icmp_echo(ident: int, seq: int, payload: bytes, *, reply: bool = False) -> bytes:
    """An ICMPv4 echo request (or reply) message; its checksum covers only itself."""
    kind = ICMP_ECHO_REPLY if reply else ICMP_ECHO_REQUEST
    body = _ECHO.pack(kind, 0, 0, ident, seq) + payload
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def icmpv6_echo(
    src: str | Address,
    dst: str | Address,
    ident: int,
    seq: int,
    payload: bytes,
    *,
    reply: bool = False,
) -> bytes:
    """An ICMPv6 echo request (or reply) message; its checksum covers the pseudo-header."""
    kind = ICMPV6_ECHO_REPLY if reply else ICMPV6_ECHO_REQUEST
    body = _ECHO.pack(kind, 0, 0, ident, seq) + payload
    csum = checksum(pseudo_header(src, dst, IPPROTO_ICMPV6, len(body)) + body)
    return body[:2] + struct.pack("!H", csum) + body[4:]


def udp(src: str | Address, dst: str | Address, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP datagram (header + payload) with its pseudo-header checksum."""
    length = _UDP.size + len(payload)
    body = _UDP.pack(sport, dport, length, 0) + payload
    csum = checksum(pseudo_header(src, dst, IPPROTO_UDP, length) + body)
    # 0 means "no checksum" on the wire, so a computed 0 is sent as its complement.
    return body[:6] + struct.pack("!H", csum or 0xFFFF) + body[8:]


def echo_request(
    src: str | Address,
    dst: str | Address,
    ident: int = 0x1234,
    seq: int = 1,
    payload: bytes = b"vpncrypt-echo",
    **ip_kwargs: int,
) -> bytes:
    """A complete ICMP (IPv4) or ICMPv6 (IPv6) echo request packet, by address family."""
    if _addr(src).version == 4:
        return ipv4(src, dst, IPPROTO_ICMP, icmp_echo(ident, seq, payload), **ip_kwargs)
    message = icmpv6_echo(src, dst, ident, seq, payload)
    return ipv6(src, dst, IPPROTO_ICMPV6, message, **ip_kwargs)


def udp_packet(
    src: str | Address,
    dst: str | Address,
    sport: int,
    dport: int,
    payload: bytes,
    **ip_kwargs: int,
) -> bytes:
    """A complete IPv4 or IPv6 UDP packet, by address family."""
    datagram = udp(src, dst, sport, dport, payload)
    if _addr(src).version == 4:
        return ipv4(src, dst, IPPROTO_UDP, datagram, **ip_kwargs)
    return ipv6(src, dst, IPPROTO_UDP, datagram, **ip_kwargs)


@dataclass(frozen=True)
class IPPacket:
    """The parts of an IP packet tests look at.  `proto` is IPv6's next-header."""

    version: int
    src: Address
    dst: Address
    proto: int
    ttl: int  # hop limit for IPv6
    payload: bytes


@dataclass(frozen=True)
class Echo:
    """An ICMP or ICMPv6 echo request/reply, with its checksum already verified."""

    type: int
    code: int
    ident: int
    seq: int
    payload: bytes


def parse_ip(packet: bytes) -> IPPacket:
    """Split an IP packet; ValueError if its header is malformed or its lengths disagree."""
    if not packet:
        raise ValueError("empty packet")
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < _IPV4.size:
            raise ValueError(f"IPv4 packet of {len(packet)} bytes is too short")
        ihl = (packet[0] & 0x0F) * 4
        _, _, total, _, _, ttl, proto, _, src, dst = _IPV4.unpack_from(packet)
        if ihl < _IPV4.size or total != len(packet) or total < ihl:
            raise ValueError(f"IPv4 header length {ihl}/total {total}, packet {len(packet)}")
        if checksum(packet[:ihl]) != 0:
            raise ValueError("bad IPv4 header checksum")
        return IPPacket(4, ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst), proto, ttl,
                        packet[ihl:])
    if version == 6:
        if len(packet) < _IPV6.size:
            raise ValueError(f"IPv6 packet of {len(packet)} bytes is too short")
        _, plen, nh, hlim, src, dst = _IPV6.unpack_from(packet)
        if _IPV6.size + plen != len(packet):
            raise ValueError(f"IPv6 payload length {plen}, packet {len(packet)}")
        return IPPacket(6, ipaddress.IPv6Address(src), ipaddress.IPv6Address(dst), nh, hlim,
                        packet[_IPV6.size:])
    raise ValueError(f"not an IP packet (version {version})")


def parse_echo(packet: IPPacket | bytes) -> Echo:
    """The ICMP/ICMPv6 echo message in `packet`; ValueError if it is not one or is corrupt."""
    ip = parse_ip(packet) if isinstance(packet, (bytes, bytearray)) else packet
    expected = IPPROTO_ICMP if ip.version == 4 else IPPROTO_ICMPV6
    if ip.proto != expected:
        raise ValueError(f"protocol {ip.proto}, not ICMP{'v6' if ip.version == 6 else ''}")
    body = ip.payload
    if len(body) < _ECHO.size:
        raise ValueError(f"ICMP message of {len(body)} bytes is too short")
    covered = body
    if ip.version == 6:
        covered = pseudo_header(ip.src, ip.dst, IPPROTO_ICMPV6, len(body)) + body
    if checksum(covered) != 0:
        raise ValueError("bad ICMP checksum")
    kind, code, _, ident, seq = _ECHO.unpack_from(body)
    echo_types = (
        (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
        if ip.version == 4
        else (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)
    )
    if kind not in echo_types:
        raise ValueError(f"ICMP type {kind} is not an echo request/reply")
    return Echo(kind, code, ident, seq, body[_ECHO.size:])


def parse_udp(packet: IPPacket | bytes) -> tuple[int, int, bytes]:
    """(source port, destination port, payload) of a UDP packet, checksum verified."""
    ip = parse_ip(packet) if isinstance(packet, (bytes, bytearray)) else packet
    if ip.proto != IPPROTO_UDP:
        raise ValueError(f"protocol {ip.proto}, not UDP")
    body = ip.payload
    if len(body) < _UDP.size:
        raise ValueError(f"UDP datagram of {len(body)} bytes is too short")
    sport, dport, length, csum = _UDP.unpack_from(body)
    if length != len(body):
        raise ValueError(f"UDP length {length}, datagram {len(body)}")
    if (csum or ip.version == 6) and checksum(
        pseudo_header(ip.src, ip.dst, IPPROTO_UDP, length) + body
    ) != 0:
        raise ValueError("bad UDP checksum")
    return sport, dport, body[_UDP.size:]

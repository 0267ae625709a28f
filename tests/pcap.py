"""Just enough pcap reading for the tests: UDP and TCP payloads of an Ethernet/IPv4 capture."""

import struct


def _ipv4_packets(path: str):
    """Every IPv4 packet of an Ethernet capture in `path`, as bytes (IP header first)."""
    with open(path, "rb") as f:
        data = f.read()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a pcap file")
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    assert linktype == 1, f"expected Ethernet captures, got link type {linktype}"
    offset = 24
    while offset + 16 <= len(data):
        incl_len = struct.unpack_from(endian + "I", data, offset + 8)[0]
        frame = data[offset + 16 : offset + 16 + incl_len]
        offset += 16 + incl_len
        if len(frame) >= 14 + 20 and frame[12:14] == b"\x08\x00":
            yield frame[14:]


def udp_payloads(path: str):
    """[(src ip, src port, dst ip, dst port, payload)] for every IPv4 UDP packet in `path`."""
    out = []
    for ip in _ipv4_packets(path):
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17:
            continue
        total = struct.unpack_from(">H", ip, 2)[0]
        sport, dport, ulen = struct.unpack_from(">HHH", ip, ihl)
        payload = ip[ihl + 8 : min(total, ihl + ulen)]
        src = ".".join(map(str, ip[12:16]))
        dst = ".".join(map(str, ip[16:20]))
        out.append((src, sport, dst, dport, payload))
    return out


def tcp_payloads(path: str):
    """The payloads of the IPv4 TCP segments in `path`, in order, a retransmitted
    sequence number once (one connection's stream, for a capture filtered to it)."""
    out, seen = [], set()
    for ip in _ipv4_packets(path):
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 6:
            continue
        total = struct.unpack_from(">H", ip, 2)[0]
        seq = struct.unpack_from(">I", ip, ihl + 4)[0]
        payload = ip[ihl + (ip[ihl + 12] >> 4) * 4 : total]
        if payload and seq not in seen:
            seen.add(seq)
            out.append(payload)
    return out

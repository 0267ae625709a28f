"""Tests for vpncrypt.daemon.ippacket: inner packet addresses and the ICMP replies the
daemon makes."""

import ipaddress

import packets
from vpncrypt.daemon import ippacket


def test_addresses_of_inner_packets():
    v4 = packets.echo_request("10.1.2.3", "10.9.8.7")
    v6 = packets.echo_request("fd00::1", "fd00::2")
    assert ippacket.addresses(v4) == (4, int(ipaddress.ip_address("10.1.2.3")),
                                      int(ipaddress.ip_address("10.9.8.7")))
    assert ippacket.addresses(v6) == (6, int(ipaddress.ip_address("fd00::1")),
                                      int(ipaddress.ip_address("fd00::2")))
    for bad in (b"", b"\x45" * 19, b"\x60" * 39, b"\x00" * 60, b"\x55" * 60):
        assert ippacket.addresses(bad) is None


def test_icmp_fragmentation_needed_is_well_formed():
    big = packets.ipv4("10.1.0.9", "10.2.0.1", 17, bytes(1500), dont_fragment=True)
    reply = ippacket.too_big(big, 1400, ipaddress.ip_address("10.1.0.1").packed, None)
    ip = packets.parse_ip(reply)  # checks the header checksum and lengths
    assert (str(ip.src), str(ip.dst), ip.proto) == ("10.1.0.1", "10.1.0.9", 1)
    icmp = ip.payload
    assert icmp[0] == 3 and icmp[1] == 4  # destination unreachable, fragmentation needed
    assert int.from_bytes(icmp[6:8], "big") == 1400
    assert packets.checksum(icmp) == 0
    assert icmp[8:] == big[:28]  # quotes the IP header and 8 bytes of payload
    no_df = packets.ipv4("10.1.0.9", "10.2.0.1", 17, bytes(1500), dont_fragment=False)
    assert ippacket.too_big(no_df, 1400, b"\x0a\x01\x00\x01", None) is None


def test_icmpv6_packet_too_big_is_well_formed():
    big = packets.ipv6("fd00::9", "fd00:2::1", 17, bytes(1500))
    ours = ipaddress.ip_address("fd00::1").packed
    reply = ippacket.too_big(big, 1400, None, ours)
    ip = packets.parse_ip(reply)
    assert (str(ip.src), str(ip.dst), ip.proto) == ("fd00::1", "fd00::9", 58)
    assert len(reply) <= 1280
    body = ip.payload
    assert body[0] == 2 and int.from_bytes(body[4:8], "big") == 1400
    pseudo = packets.pseudo_header("fd00::1", "fd00::9", 58, len(body))
    assert packets.checksum(pseudo + body) == 0
    assert ippacket.too_big(big, 1400, b"\x0a\x00\x00\x01", None) is None  # no v6 address

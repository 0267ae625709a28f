"""Tests for vpncrypt.daemon.routing: the allowed-IPs longest-prefix match."""

import ipaddress
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from vpncrypt.daemon.routing import AllowedIPs


def networks(version):
    bits = 32 if version == 4 else 128
    make = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    return st.tuples(st.integers(0, 2**bits - 1), st.integers(0, bits)).map(
        lambda t: make((t[0] >> (bits - t[1]) << (bits - t[1]), t[1])))


@settings(max_examples=200, deadline=None)
@given(nets=st.lists(st.one_of(networks(4), networks(6)), max_size=30),
       probes=st.lists(st.one_of(st.integers(0, 2**32 - 1).map(lambda a: (4, a)),
                                 st.integers(0, 2**128 - 1).map(lambda a: (6, a))), max_size=30),
       seed=st.integers(0, 1000))
def test_longest_prefix_match_agrees_with_brute_force(nets, probes, seed):
    table, owners = AllowedIPs(), {}
    for i, net in enumerate(nets):
        table.add(net, i)
        owners[net] = i  # a later identical network replaces the earlier owner
    rng = random.Random(seed)
    # Probe addresses inside the networks too, not only random ones.
    for net in nets[:10]:
        probes.append((net.version, int(net.network_address) + rng.randrange(net.num_addresses)))
    for version, addr in probes:
        ip = ipaddress.IPv4Address(addr) if version == 4 else ipaddress.IPv6Address(addr)
        matches = [n for n in owners if n.version == version and ip in n]
        expected = owners[max(matches, key=lambda n: n.prefixlen)] if matches else None
        assert table.lookup(version, addr) == expected

"""Allowed IPs: which client owns an inner address (longest prefix) and may use it as source."""

import ipaddress


class AllowedIPs:
    """Longest-prefix match over IPv4 and IPv6 networks, each owned by one client id.

    Lookups walk the distinct prefix lengths in use, longest first: a handful of dict
    probes per packet, however many clients there are.
    """

    def __init__(self):
        self._tables = {4: {}, 6: {}}  # version -> {prefixlen: {network int: owner}}
        self._lengths = {4: [], 6: []}

    def add(self, network, owner) -> None:
        # Network objects (from the config) are used as they are: re-parsing them is
        # most of the start-up time of a server with thousands of clients.
        net = network if isinstance(network, (ipaddress.IPv4Network, ipaddress.IPv6Network)) \
            else ipaddress.ip_network(network)
        table = self._tables[net.version].setdefault(net.prefixlen, {})
        table[int(net.network_address)] = owner
        self._lengths[net.version] = sorted(self._tables[net.version], reverse=True)

    def lookup(self, version: int, address: int):
        """Owner of the longest prefix containing `address` (an int), or None."""
        bits = 32 if version == 4 else 128
        tables = self._tables[version]
        for length in self._lengths[version]:
            owner = tables[length].get(address >> (bits - length) << (bits - length))
            if owner is not None:
                return owner
        return None

    @classmethod
    def from_peers(cls, peers):
        table = cls()
        for peer in peers:
            for net in peer.allowed_ips:
                table.add(net, peer.id)
        return table

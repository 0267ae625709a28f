"""Tests for vpncrypt.config.values: endpoint forms, the MTU limit, and the fast network
parse that must agree with ipaddress."""

import random
from ipaddress import ip_network

import pytest

from configfiles import K1
from vpncrypt import config
from vpncrypt.config import parse
from vpncrypt.protocol import wire


@pytest.mark.parametrize(
    "server, host, port",
    [
        ("198.51.100.7:1", "198.51.100.7", 1),
        ("[2001:db8::7]:65535", "2001:db8::7", 65535),
        ("[2001:0db8:0000::0007]:443", "2001:db8::7", 443),
        ("VPN-1.Example.ORG.:51900", "VPN-1.Example.ORG.", 51900),
        ("localhost:51900", "localhost", 51900),
    ],
)
def test_client_server_endpoint_forms(server, host, port):
    cfg = parse(f"[client]\nid=3\nserver={server}\nkey={K1}\ninterface=t0\naddress=10.0.0.2/24\n")
    assert (cfg.server_host, cfg.server_port) == (host, port)


def test_mtu_limit_matches_wire_format():
    assert config.MAX_MTU == wire.MAX_BODY


_NET_PIECES = "0123456789abcdefABCDEF:./%-x "


def test_fast_network_parse_agrees_with_ipaddress():
    rng = random.Random(6)
    items = [
        "10.0.0.1/32", "10.0.0.0/8", "10.0.0.1/8", "0.0.0.0/0", "255.255.255.255/32",
        "256.0.0.1/32", "01.2.3.4/32", "1.2.3.4/032", "1.2.3.4/33", "1.2.3.4/", "1.2.3/24",
        "fd80::1/128", "fd80::/16", "fd80::1/64", "::/0", "::1/128", "::/129", "FD80::A/128",
        "1:2:3:4:5:6:7:8/128", "1:2:3:4:5:6:7::/128", "::2:3:4:5:6:7:8/128",
        "1:2:3:4::5:6:7:8/128", "1::2::3/128", ":1::/128", "1::2:/128", "12345::/16",
        "::ffff:1.2.3.4/128", "fe80::1%eth0/128", "fd80::1/0128", "10.0.0.1/32 ",
        "\u0661.2.3.4/32", "1.2.3.4/\u0663\u0662",
    ]
    for _ in range(20000):
        n = rng.randint(1, 16)
        if rng.random() < 0.5:
            body = ":".join(rng.choice(("", "0", "1", "ff", "abcd", "fffff", "1.2.3.4"))
                            for _ in range(rng.randint(1, 10)))
        else:
            body = "".join(rng.choice(_NET_PIECES) for _ in range(n))
        items.append(body + rng.choice(("", "/", "/0", "/32", "/64", "/128", "/129")))
    for item in items:
        try:
            expected = ip_network(item, strict=True)
        except ValueError as e:
            with pytest.raises(type(e)) as got:
                config.values._network(item)
            assert str(got.value) == str(e), item
        else:
            net = config.values._network(item)
            assert type(net) is type(expected) and net == expected, item
            assert str(net) == str(expected), item
            if net.num_addresses <= 4:
                assert list(net.hosts()) == list(expected.hosts()), item

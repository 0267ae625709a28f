"""Tests for vpncrypt.config.sections: the layout rules and the cross-client checks
(more of its refusals are in test_config.py's table of broken files)."""

import base64
import ipaddress
import random
from ipaddress import ip_network


from vpncrypt.config import ConfigError, parse


def test_server_without_clients_is_valid(tmp_path):
    cfg = parse("[server]\nlisten = 127.0.0.1:1\ninterface = t\naddress = 10.0.0.1/32\n")
    assert cfg.clients == ()
    assert cfg.listen_port == 1


def test_many_clients_keep_file_order_and_parse_quickly():
    parts = ["[server]\nlisten=0.0.0.0:1\ninterface=t\naddress=10.0.0.1/16\n"]
    for i in range(1, 1001):
        raw = i.to_bytes(2, "big") * 16
        parts.append(
            f"[client c{i}]\nid={i}\nkey={base64.b64encode(raw).decode()}\n"
            f"allowed_ips=10.1.{i // 256}.{i % 256}/32, fd00::{i:x}/128\n"
        )
    cfg = parse("".join(parts))
    assert [c.id for c in cfg.clients] == list(range(1, 1001))
    assert cfg.clients[999].allowed_ips == (ip_network("10.1.3.232/32"), ip_network("fd00::3e8/128"))


def test_overlap_check_agrees_with_brute_force():
    rng = random.Random(1234)
    for _ in range(1000):
        nets = []
        for _ in range(rng.randint(2, 8)):
            if rng.random() < 0.5:
                prefix = rng.randint(20, 32)
                addr = ipaddress.IPv4Address(0x0A500000 | rng.getrandbits(10))
            else:
                prefix = rng.randint(116, 128)
                addr = ipaddress.IPv6Address((0xFD00 << 112) | rng.getrandbits(10))
            nets.append(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))
        # one network per client, so only cross-client overlaps (and exact repeats) matter
        expect_overlap = any(
            a.version == b.version and a.overlaps(b) for i, a in enumerate(nets) for b in nets[:i]
        )
        parts = ["[server]\nlisten=0.0.0.0:1\ninterface=t\naddress=192.0.2.1/24, 2001:db8::1/64\n"]
        for i, net in enumerate(nets, 1):
            key = base64.b64encode(bytes([i]) * 32).decode()
            parts.append(f"[client c{i}]\nid={i}\nkey={key}\nallowed_ips={net}\n")
        try:
            parse("".join(parts))
        except ConfigError as e:
            assert expect_overlap, str(e)
            assert " overlaps " in str(e)
        else:
            assert not expect_overlap

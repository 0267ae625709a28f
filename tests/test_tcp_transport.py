"""The TCP transport (issue 17): `[server] listen_tcp`, `[client] transport = tcp`.

Frames (protocol/framing.py) pinned by tests/vectors/frames.json; then real daemons in
namespaces: a client whose network drops all UDP (nftables), flows that survive a
server's kill -9 and a client's move, garbage streams and connection floods, and a
server carrying a UDP and a TCP client at once with replays over both transports.
"""

import json
import pathlib
import signal
import socket
import subprocess
import time

import pytest

from vpncrypt.protocol import framing
from vpncrypt.protocol.wire import MAX_DATAGRAM

VECTORS = pathlib.Path(__file__).parent / "vectors"
MB = 1 << 20
LOOPS = pytest.mark.parametrize("loop", ["native", "python"])


# ---- frames --------------------------------------------------------------------------------

def test_frames_are_a_length_and_the_packet():
    frames = json.loads((VECTORS / "frames.json").read_text())
    packets = {v["name"]: v for v in json.loads((VECTORS / "packets.json").read_text())["vectors"]}
    assert frames["prefix"] == framing.PREFIX == 2
    for v in frames["vectors"]:
        packet = bytes.fromhex(packets[v["name"]]["packet"])
        assert framing.frame(packet).hex() == v["frame"]
        assert framing.split(bytes.fromhex(v["frame"])) == ([packet], len(packet) + 2)


def test_split_keeps_a_cut_frame_for_the_next_read():
    a, b = bytes(range(25)), bytes(100)
    stream = framing.frame(a) + framing.frame(b)
    for cut in range(len(stream) + 1):
        packets, end = framing.split(stream[:cut])
        rest = stream[end:cut] + stream[cut:]
        more, end2 = framing.split(rest)
        assert packets + more == [a, b] and end2 == len(rest)


@pytest.mark.parametrize("length", [0, 1, 24, MAX_DATAGRAM + 1, 65535])
def test_an_impossible_length_is_garbage(length):
    with pytest.raises(framing.FrameError):
        framing.split(length.to_bytes(2, "big") + bytes(30))
    with pytest.raises(ValueError):
        framing.frame(bytes(max(0, min(length, 70000))) if length < 25 else bytes(length))


# ---- real daemons ----------------------------------------------------------------------------

def drop_udp(host) -> None:
    """The client's network: no UDP at all, either way (hotel, airline, office)."""
    rules = ("table inet blockudp {\n"
             " chain out { type filter hook output priority 0; meta l4proto udp drop; }\n"
             " chain in { type filter hook input priority 0; meta l4proto udp drop; }\n"
             "}\n")
    host.run(["nft", "-f", "-"], input=rules, check=True)


def tcp_deployment(netns_factory, tmp_path, loop="native", tcp=(1,), clients=1, **kw):
    from vpnharness import Deployment

    return Deployment(netns_factory, tmp_path, loop=loop, tcp=tcp, clients=clients, **kw)


@pytest.mark.netns
@LOOPS
def test_a_tcp_client_works_where_udp_is_dropped(netns_factory, tmp_path, loop):
    """Client 1 (transport = tcp) and client 2 (udp) sit behind networks that drop all
    UDP: client 1 pings and moves a hash-checked transfer; client 2 gets nothing
    through (the test is real). The server carries client 1 on its native loop."""
    from vpnharness import SERVER_TUN4, client_tun4, transfer

    vpn = tcp_deployment(netns_factory, tmp_path, loop, tcp=(1,), clients=2)
    for i in (1, 2):
        drop_udp(vpn.client_host(i))
    vpn.start_server()
    vpn.start_client(1)
    vpn.start_client(2)
    vpn.wait_ping(vpn.client_host(1), SERVER_TUN4, timeout=20)
    vpn.ping(vpn.server_host, client_tun4(1), count=3)
    sent, received = transfer(vpn.client_host(1), vpn.server_host, SERVER_TUN4, 64 * MB, seed=3)
    assert sent["bytes"] == received["bytes"] == 64 * MB and sent["sha256"] == received["sha256"]
    assert vpn.ping(vpn.client_host(2), SERVER_TUN4, count=3, check=False).returncode != 0
    doc = server_status(vpn)
    c1 = next(c for c in doc["clients"] if c["name"] == "c1")
    assert c1["transport"] == "tcp" and doc["tcp"]["authenticated"] == 1, doc["tcp"]
    assert c1["rx_packets"] > 1000


def server_status(vpn) -> dict:
    from vpnharness import show

    return json.loads(show(vpn.state_dir("server"), "--json"))[0]

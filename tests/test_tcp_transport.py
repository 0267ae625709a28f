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


def long_transfer(vpn, size):
    from vpnharness import SERVER_TUN4, start_receiver, start_sender

    recv = start_receiver(vpn.server_host)
    send = start_sender(vpn.client_host(), SERVER_TUN4, size, seed=5)
    time.sleep(0.7)
    assert send.poll() is None, "transfer finished before the disturbance: make it larger"
    return send, recv


def finish(send, recv, size):
    from vpnharness import receiver_result

    out, _ = send.communicate(timeout=180)
    sent, received = json.loads(out.strip().splitlines()[-1]), receiver_result(recv)
    assert sent["bytes"] == received["bytes"] == size and sent["sha256"] == received["sha256"]


@pytest.mark.netns
def test_a_flow_inside_survives_a_server_kill_and_a_client_move(netns_factory, tmp_path):
    """A TCP transfer through a transport = tcp tunnel: the server is killed (-9) and
    restarted under it, then the client's address changes (its connection dies with
    the address); each costs one reconnect, and the transfer completes intact."""
    from vpnharness import SERVER_TUN4

    vpn = tcp_deployment(netns_factory, tmp_path)
    vpn.start()
    client = vpn.client_host()
    vpn.wait_ping(client, SERVER_TUN4, timeout=20)
    size = 384 * MB
    send, recv = long_transfer(vpn, size)
    vpn.server.kill(signal.SIGKILL)
    time.sleep(1.0)
    vpn.start_server()
    vpn.clients[0].wait_log(r"tcp-connected", after=len(vpn.clients[0].text()) - 1, timeout=30)
    time.sleep(1.0)
    assert send.poll() is None, "transfer finished before the move: make it larger"
    mark = len(vpn.clients[0].text())
    client.replace_addr(vpn.links[0][1], "10.200.1.2/24", "10.200.1.77/24")
    finish(send, recv, size)
    assert "tcp-connected" in vpn.clients[0].text()[mark:]
    vpn.server.wait_log(r"(connected|endpoint) client=c1 .*10\.200\.1\.77:\d+")


GARBAGE = """
import os, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for i in range(n):           # a connection flood: many connections, some sending nothing
    try:
        s = socket.create_connection((host, port), timeout=2)
    except OSError:
        continue
    if i % 3 == 0:
        s.sendall(b"\\xff\\xff" + os.urandom(2000))         # an oversized length
    elif i % 3 == 1:
        s.sendall(os.urandom(4000))                         # random bytes
    socks.append(s)
answered = 0
for s in socks:
    s.settimeout(0.05)
    try:
        answered += len(s.recv(100))
    except OSError:
        pass
print(len(socks), answered)
"""


@pytest.mark.netns
def test_garbage_streams_and_a_connection_flood_get_nothing(netns_factory, tmp_path):
    """A third host opens 300 connections to the server's TCP port: a third send an
    impossible length, a third random bytes, a third nothing. The client's transfer
    completes intact meanwhile, nothing is answered, the garbage is closed at once and
    the silent ones within seconds (TCP_DEFER_ACCEPT keeps most of them in the kernel),
    and the daemon's memory stays where it was."""
    from hostile import FLOOD_SERVER, Flooder, vmrss_kb
    from vpnharness import SERVER_TUN4, PORT

    vpn = tcp_deployment(netns_factory, tmp_path)
    vpn.start()
    vpn.wait_ping(vpn.client_host(), SERVER_TUN4, timeout=20)
    flooder = Flooder(lambda: netns_factory(), vpn.server_host)
    rss_before = vmrss_kb(vpn.server.proc.pid)
    size = 128 * MB
    send, recv = long_transfer(vpn, size)
    out = flooder.host.python(GARBAGE, FLOOD_SERVER, str(PORT), "300").stdout.split()
    opened, answered = int(out[0]), int(out[1])
    finish(send, recv, size)
    assert opened >= 100 and answered == 0, out
    time.sleep(6)  # UNAUTH_IDLE: the silent ones are gone too
    tcp = server_status(vpn)["tcp"]
    assert tcp["open"] == 1 and tcp["authenticated"] == 1, tcp
    # Everything but the client's own connection is gone: the impossible lengths at
    # once (garbage), random bytes at their first impossible length or after 5 s.
    assert tcp["garbage"] >= 20 and tcp["closed"] == tcp["accepted"] - 1, tcp
    assert vmrss_kb(vpn.server.proc.pid) - rss_before < 8 * 1024


@pytest.mark.netns
@LOOPS
def test_one_udp_and_one_tcp_client_and_replays_over_both(netns_factory, tmp_path, loop):
    """Client 1 over TCP and client 2 over UDP on one server, both passing traffic; the
    frames client 1 sent, replayed over a new connection and as UDP datagrams, and the
    datagrams client 2 sent, replayed over TCP: none accepted."""
    from hostile import REPLAY_SENDER, capture_client_packets
    from vpnharness import PORT, SERVER_TUN4, client_tun4

    vpn = tcp_deployment(netns_factory, tmp_path, loop, tcp=(1,), clients=2).start()
    for i in (1, 2):
        vpn.wait_ping(vpn.client_host(i), SERVER_TUN4, timeout=20)
        vpn.ping(vpn.server_host, client_tun4(i))
    # Client 2's genuine datagrams, captured on the server's link.
    udp = capture_client_packets(vpn, tmp_path, lambda: vpn.ping(vpn.client_host(2), SERVER_TUN4, 5),
                                 index=1)
    # Client 1's genuine frames: what its daemon writes to the connection, captured.
    frames = capture_tcp_payload(vpn, tmp_path, lambda: vpn.ping(vpn.client_host(1), SERVER_TUN4, 5))
    packets1, _ = framing.split(frames)
    assert len(udp) >= 5 and len(packets1) >= 5
    before = server_status(vpn)
    (tmp_path / "c1.hex").write_text("\n".join(p.hex() for p in packets1))
    vpn.client_host(1).python(REPLAY_SENDER, str(tmp_path / "c1.hex"), "10.200.1.1", str(PORT))
    vpn.client_host(2).python(TCP_REPLAY, "10.200.2.1", str(PORT), frames.hex())
    vpn.client_host(2).python(TCP_REPLAY, "10.200.2.1", str(PORT),
                              b"".join(framing.frame(p) for p in udp).hex())
    time.sleep(0.5)
    after = server_status(vpn)
    for name in ("c1", "c2"):
        b = next(c for c in before["clients"] if c["name"] == name)
        a = next(c for c in after["clients"] if c["name"] == name)
        assert a["rx_packets"] == b["rx_packets"], (name, b, a)
    vpn.ping(vpn.client_host(1), SERVER_TUN4)  # the real connection still works
    vpn.ping(vpn.client_host(2), SERVER_TUN4)


TCP_REPLAY = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(bytes.fromhex(sys.argv[3]))
time.sleep(0.3)
"""


def capture_tcp_payload(vpn, tmp_path, traffic) -> bytes:
    """The bytes client 1 sent on its connection to the server while `traffic()` ran
    (frames, possibly starting and ending mid-frame: cut to whole frames)."""
    import subprocess as sp

    path = str(tmp_path / "tcp.pcap")
    dump = vpn.server_host.popen(["tcpdump", "-n", "-U", "-i", vpn.links[0][0], "-w", path,
                                  "tcp dst port 51900 and greater 60"],
                                 stderr=sp.PIPE, text=True)
    assert "listening on" in dump.stderr.readline()
    traffic()
    time.sleep(0.5)
    dump.send_signal(signal.SIGINT)
    dump.wait(10)
    from pcap import tcp_payloads

    data = b"".join(tcp_payloads(path))
    # Segments carry whole frames here (one ping, one write); keep whole ones.
    packets, end = framing.split(data)
    return data[:end]

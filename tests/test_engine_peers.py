"""The native engine's peer table over a server's life: clients added, re-keyed and
removed (remove-client, a SIGHUP with a changed key) must give back their slot and
their SIV contexts, and a removed client's packets are refused at once."""

import base64
import os
import socket
import time
import types

import pytest

from loopengines import LoopbackEngines, _ipv4, native
from vpncrypt.protocol.session import ClientSession, ServerCore
from vpncrypt.protocol.wire import Drop, Kind


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_removed_and_rekeyed_peers_give_back_slot_and_contexts():
    """20 000 re-keys of one client and 20 000 clients that come and go: the table keeps
    as many slots as it ever held at once, and memory stays flat (each leaked peer was a
    slot and two SIV contexts, several KB: 40 000 of them would be well over 100 MB)."""
    fast = native()
    r, w = socket.socketpair()
    with r, w:
        engine = fast.Engine(True, -1, -1, socket.AF_INET, w.fileno(), r.fileno())
        ctx = lambda seed: fast.SivContext(bytes([seed]) * 64, 1, 7)  # noqa: E731
        for cid in (1, 2, 3):
            engine.add_peer(cid, ctx(cid), ctx(cid + 100), 0)
        assert engine.slots == (3, 0)

        def churn(rounds):
            for i in range(rounds):
                engine.remove_peer(2)  # re-keyed: removed and added with new contexts
                assert engine.add_peer(2, ctx(i & 0xFF), ctx(~i & 0xFF), 0) in (0, 1, 2, 3)
                cid = 1000 + i % 60000
                index = engine.add_peer(cid, ctx(7), ctx(8), 0)
                assert index == 3 and engine.slots == (4, 0)
                engine.remove_peer(cid)
                assert engine.index_of(cid) == -1 and engine.slots == (4, 1)

        churn(2000)  # the allocator's pools warmed up
        before = rss_kb()
        churn(20000)
        grown = rss_kb() - before
        assert engine.slots == (4, 1)
        assert grown < 4096, f"RSS grew by {grown} kB over 40 000 removed peers"
        assert [engine.index_of(c) >= 0 for c in (1, 2, 3)] == [True] * 3


def test_a_removed_client_is_refused_at_once_and_its_slot_reused():
    """After remove_peer, the client's packets are an unknown client's; the client that
    takes its slot gets its own packets through, and is not mistaken for the old one."""
    net = LoopbackEngines()
    fast = net.fast
    old_psk, new_psk = bytes(range(32)), bytes(range(1, 33))
    core = ServerCore(7, fast.SivContext)
    engine = net.add("server", True)
    core.set_client(1, old_psk)
    state = core.peer(1)
    index = engine.add_peer(1, state.sender.ctx, state.receiver.ctx, 1000)
    # Removed and replaced while the loops stand still, as a reload does it.
    engine.remove_peer(1)
    core.remove_client(1)
    core.set_client(2, new_psk)
    state = core.peer(2)
    assert engine.add_peer(2, state.sender.ctx, state.receiver.ctx, 1000) == index
    inner2 = bytes([10, 9, 0, 3])
    engine.set_routes([(4, 32, inner2, index)])
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    engine.set_endpoint(index, "127.0.0.1", sender.getsockname()[1])
    tun = net.tuns["server"][1]
    tun.settimeout(5)
    server_addr = ("127.0.0.1", net.port("server"))
    old = ClientSession(1, 7, old_psk, fast.SivContext)
    new = ClientSession(2, 7, new_psk, fast.SivContext)
    with net, sender:
        sender.sendto(old.seal(Kind.DATA, _ipv4(bytes([10, 9, 0, 2]), bytes([10, 9, 0, 1]),
                                                b"removed"), time.time()), server_addr)
        deadline = time.monotonic() + 5
        while engine.global_drops().get(int(Drop.UNKNOWN_CLIENT), 0) < 1:
            assert time.monotonic() < deadline, engine.global_drops()
            time.sleep(0.01)
        assert engine.peer_stats(index)["drops"] == {}  # not charged to the slot's new owner
        inner = _ipv4(inner2, bytes([10, 9, 0, 1]), b"new owner")
        sender.sendto(new.seal(Kind.DATA, inner, time.time()), server_addr)
        assert tun.recv(65536) == inner
        assert engine.peer_stats(index)["rx_packets"] == 1


def test_reloads_that_rekey_and_remove_clients_keep_the_engine_flat(tmp_path):
    """A server (daemon/server.py, its native path over a socketpair standing in for the
    TUN) reloaded 300 times, each time with client b re-keyed and client c present every
    other time: the engine never holds more slots than it had clients at once (before,
    every re-key took a new slot and kept the old one's SIV contexts)."""
    native()
    from vpncrypt import config as configmod
    from vpncrypt.daemon import fastpath
    from vpncrypt.daemon.server import Server

    conf = tmp_path / "server.conf"

    def write(i):
        key = lambda n: base64.b64encode(n.to_bytes(4, "big") * 8).decode()  # noqa: E731
        text = ("[server]\nlisten = 127.0.0.1:51999\ninterface = t0\naddress = 10.9.0.1/24\n"
                f"[client a]\nid = 1\nkey = {key(1 << 30)}\nallowed_ips = 10.9.0.2/32\n"
                f"[client b]\nid = 2\nkey = {key(i)}\nallowed_ips = 10.9.0.3/32\n")
        if i % 2:
            text += f"[client c]\nid = 3\nkey = {key(1 << 31)}\nallowed_ips = 10.9.0.4/32\n"
        conf.write_text(text)
        os.chmod(conf, 0o600)

    write(0)
    server = Server(configmod.load(str(conf)), "native")
    tun_pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    tun = types.SimpleNamespace(fd=tun_pair[0].fileno(), frame_prefix=0, offloads=())
    server.sock = sock
    server.native = fastpath.NativePath(tun, sock, True, 7)
    server.native_peers = {}
    try:
        server.sync_native()
        server.native.start()
        for i in range(1, 301):
            write(i)
            assert server.reload() is None
            used, empty = server.native.engine.slots
            assert used - empty == len(server.peers) == (3 if i % 2 else 2)
            assert used <= 3
    finally:
        server.native.close()
        sock.close()
        for s in tun_pair:
            s.close()


def test_a_peers_replay_window_carries_into_a_rebuilt_engine():
    """The client rebuilds its engine when its socket is replaced; the server's packets
    must still be judged by the window they were judged by (else the new engine would
    take replays of anything from the last 128 s)."""
    fast = native()
    r, w = socket.socketpair()
    with r, w:
        ctx = fast.SivContext(bytes(64), 1, 7)
        old, new = (fast.Engine(False, -1, -1, socket.AF_INET, w.fileno(), r.fileno())
                    for _ in "ab")
        for engine in (old, new):
            engine.add_peer(1, ctx, ctx, 0)
        old.restore_window(0, 1_000_000)
        state = old.window_state(0)
        assert new.window_newest(0) is None
        new.load_window_state(0, state)
        assert new.window_newest(0) == old.window_newest(0) == 1_000_000
        assert new.window_state(0) == state
        with pytest.raises(ValueError, match="replay window"):
            new.load_window_state(0, state[:-1])

"""The native loop's protocol rules, pinned against the sans-IO core they mirror."""

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopengines import LoopbackEngines, _ipv4, _ipv6, native
from vpncrypt.protocol import replay


events = st.lists(st.tuples(st.integers(-3, 12), st.one_of(
    st.integers(-40, 40), st.integers(-20000, 20000), st.integers(0, 2**32 - 1),
    st.sampled_from([replay.WINDOW - 1, replay.WINDOW, replay.WINDOW + 1, replay.MAX_JUMP,
                     replay.MAX_JUMP + 1, -replay.WINDOW, 2**31]))), max_size=200)


@settings(max_examples=400, deadline=None)
@given(events=events, start=st.integers(0, 2**32 - 1))
def test_native_window_decides_exactly_like_the_reference(events, start):
    fast = native()
    ref, nat = replay.ReplayWindow(), fast.NativeWindow()
    ts, counter = 1_000_000, start
    for dts, dcounter in events:
        ts += dts
        counter = (counter + dcounter) & 0xFFFFFFFF
        expected = ref.check(ts, counter)
        assert nat.check(ts, counter) == (0 if expected is None else int(expected))
        if expected is None:
            assert nat.accept(ts, counter) == ref.accept(ts, counter)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(st.tuples(st.booleans(), st.integers(-40, 40),
                                 st.integers(-20000, 20000)), max_size=200),
       start=st.integers(0, 2**32 - 1))
def test_native_window_marks_time_requests_like_the_reference(events, start):
    """Time requests (untimed) interleaved with timed packets: both windows classify
    each request alike (replay, continues the window, unknown run) and then agree."""
    fast = native()
    ref, nat = replay.ReplayWindow(), fast.NativeWindow()
    ts, counter = 1_000_000, start
    for untimed, dts, dcounter in events:
        ts += dts
        counter = (counter + dcounter) & 0xFFFFFFFF
        if untimed:
            expected = ref.mark_untimed(counter)
            assert nat.mark_untimed(counter) == (-1 if expected is replay.Drop.REPLAY
                                                 else int(expected))
            continue
        expected = ref.check(ts, counter)
        assert nat.check(ts, counter) == (0 if expected is None else int(expected))
        if expected is None:
            assert nat.accept(ts, counter) == ref.accept(ts, counter)


def test_a_seen_time_request_is_a_replay():
    w = replay.ReplayWindow()
    assert w.mark_untimed(7) is False  # nothing known yet: untrusted
    w.accept(100, 7)
    assert w.mark_untimed(8) is True and w.mark_untimed(8) is replay.Drop.REPLAY
    assert w.check(100, 8) is replay.Drop.REPLAY  # one window for every kind
    assert w.mark_untimed(7 + replay.WINDOW + 5) is False  # no run this window knows


def test_native_window_sequential_and_duplicates():
    fast = native()
    w = fast.NativeWindow()
    for c in range(20000):
        assert w.check(100, c) == 0
        w.accept(100, c)
    assert w.check(100, 19999) == 5 and w.check(100, 20000 - replay.WINDOW) == 5
    assert w.check(100, 20000 - replay.WINDOW + 1) == 5
    assert w.check(94, 20000) == 4  # stale


@settings(max_examples=100, deadline=None)
@given(nets=st.lists(st.tuples(st.booleans(), st.integers(0, 2**128 - 1), st.integers(0, 128)),
                     max_size=25), seed=st.integers(0, 1000))
def test_native_routes_match_longest_prefix(nets, seed):
    fast = native()
    import os
    import socket

    r, w = socket.socketpair()
    engine = fast.Engine(True, -1, -1, socket.AF_INET6, w.fileno(), r.fileno())
    table = {}
    for v6, value, plen in nets:
        if not v6:
            value, plen = value >> 96, min(plen, 32)
        cls = ipaddress.IPv6Network if v6 else ipaddress.IPv4Network
        bits = 128 if v6 else 32
        net = cls((value >> (bits - plen) << (bits - plen), plen))
        table[net] = len(table)
    engine.set_routes([(n.version, n.prefixlen, n.network_address.packed, owner)
                       for n, owner in table.items()])
    rng = random.Random(seed)
    probes = [ipaddress.ip_address(rng.getrandbits(32)) for _ in range(10)]
    probes += [ipaddress.IPv6Address(rng.getrandbits(128)) for _ in range(10)]
    probes += [n.network_address + rng.randrange(n.num_addresses) for n in list(table)[:10]]
    for ip in probes:
        matches = [n for n in table if n.version == ip.version and ip in n]
        expected = table[max(matches, key=lambda n: n.prefixlen)] if matches else -1
        assert engine.lookup(ip.version, ip.packed) == expected
    r.close()
    w.close()


@settings(max_examples=200, deadline=None)
@given(events=events, start=st.integers(0, 2**32 - 1), floor_delta=st.integers(-3, 3))
def test_restored_windows_agree(events, start, floor_delta):
    """After a restart both windows start from the saved floor and decide alike."""
    fast = native()
    ref, nat = replay.ReplayWindow(), fast.NativeWindow()
    ts, counter = 1_000_000, start
    ref.restore(ts + floor_delta)
    nat.restore(ts + floor_delta)
    for dts, dcounter in events:
        ts += dts
        counter = (counter + dcounter) & 0xFFFFFFFF
        expected = ref.check(ts, counter)
        assert nat.check(ts, counter) == (0 if expected is None else int(expected))
        if expected is None:
            assert nat.accept(ts, counter) == ref.accept(ts, counter)
    # Nothing older than the floor is ever accepted.
    assert ref.check(1_000_000 + floor_delta - 1, start) is not None


def test_native_rules_are_generated_from_their_python_sources():
    """The native loop's protocol numbers (_fast_rules.pxi) are generated from the Python
    modules that own them; the committed file must be what they generate now, and the
    built extension must have compiled it in."""
    import pathlib
    import subprocess
    import sys

    from vpncrypt.daemon import budgets

    script = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "gen_fast_rules.py"
    proc = subprocess.run([sys.executable, str(script),
                           "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert native().ROAM_RATE_PER_SECOND == budgets.ROAM_RATE


def test_freebsd_frames_through_two_native_engines():
    """The native loop with FreeBSD's TUN framing (a 4-byte address family word in front
    of each packet, TUNSIFHEAD), between a client and a server engine over real UDP
    sockets on loopback. FreeBSD's tun(4) cannot run here: a datagram socketpair stands in
    for each TUN device (one packet per read and write, as tun(4) gives). The family word
    is stripped and checked on read (a wrong one is dropped) and written on delivery."""
    import socket
    import time

    from vpncrypt.protocol.session import ClientSession, ServerCore

    net = LoopbackEngines(frame_prefix=4)
    fast = net.fast
    psk = bytes(range(32))
    core = ServerCore(7, fast.SivContext)
    core.set_client(1, psk)
    client = ClientSession(1, 7, psk, fast.SivContext)
    engines = {"s": net.add("s", True), "c": net.add("c", False)}
    tuns = net.tuns
    peer = core.peer(1)
    index = engines["s"].add_peer(1, peer.sender.ctx, peer.receiver.ctx, 1000)
    c_inner4, s_inner4 = bytes([10, 9, 0, 2]), bytes([10, 9, 0, 1])
    c_inner6, s_inner6 = bytes.fromhex("fd09" + "00" * 13 + "02"), bytes.fromhex(
        "fd09" + "00" * 13 + "01")
    engines["s"].set_routes([(4, 32, c_inner4, index), (6, 128, c_inner6, index)])
    engines["s"].set_endpoint(index, "127.0.0.1", net.port("c"))
    engines["c"].add_peer(1, client.sender.ctx, client.receiver.ctx, 5000)
    engines["c"].set_endpoint(0, "127.0.0.1", net.port("s"))
    engines["c"].hold_tx = False
    with net:
        def through(src_tun, dst_tun, frame):
            tuns[src_tun][1].send(frame)
            tuns[dst_tun][1].settimeout(5)
            return tuns[dst_tun][1].recv(65536)

        up4 = _ipv4(c_inner4, s_inner4, b"up, IPv4")
        up6 = _ipv6(c_inner6, s_inner6, b"up, IPv6")
        down4 = _ipv4(s_inner4, c_inner4, b"down, IPv4")
        assert through("c", "s", b"\0\0\0\x02" + up4) == b"\0\0\0\x02" + up4
        assert through("c", "s", b"\0\0\0\x1c" + up6) == b"\0\0\0\x1c" + up6
        assert through("s", "c", b"\0\0\0\x02" + down4) == b"\0\0\0\x02" + down4
        # A family word that does not match the packet: dropped on read, counted.
        tuns["c"][1].send(b"\0\0\0\x1c" + up4)
        tuns["c"][1].send(b"\0\0\0\x07" + up4)
        deadline = time.monotonic() + 5
        while engines["c"].global_drops().get(12, 0) < 2:  # Drop.BAD_PACKET
            assert time.monotonic() < deadline, engines["c"].global_drops()
            time.sleep(0.01)
        tuns["s"][1].settimeout(0.3)
        with pytest.raises(socket.timeout):
            tuns["s"][1].recv(65536)


def test_foreign_counts_are_the_pinned_kinds_from_elsewhere():
    """The native loop's count of foreign datagrams (what daemon/pinning.py pins on) is
    exactly the Python loop's rule, pinning.PINNED_KINDS naming a client from an address
    other than its endpoint: DATA and keepalives, never time requests, never from the
    endpoint; and a call takes the counts (the next starts from 0)."""
    import socket
    import struct
    import time

    from vpncrypt.daemon.pinning import PINNED_KINDS
    from vpncrypt.protocol.session import ServerCore
    from vpncrypt.protocol.wire import CLIENT_TYPES

    net = LoopbackEngines()
    core = ServerCore(7, net.fast.SivContext)
    core.set_client(1, bytes(range(32)))
    engine = net.add("server", True, rcvbuf=8 << 20)
    at_endpoint, elsewhere = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in "ab")
    for s in (at_endpoint, elsewhere):
        s.bind(("127.0.0.1", 0))
    peer = core.peer(1)
    index = engine.add_peer(1, peer.sender.ctx, peer.receiver.ctx, 1000)
    engine.set_endpoint(index, "127.0.0.1", at_endpoint.getsockname()[1])
    each = 20
    with net, at_endpoint, elsewhere:
        for ptype in sorted(CLIENT_TYPES):
            packet = struct.pack(">BHBI", ptype, 1, 0, 1) + bytes(40)
            for sock in (at_endpoint, elsewhere):
                for _ in range(each):
                    sock.sendto(packet, ("127.0.0.1", net.port("server")))
        want, got, deadline = each * len(PINNED_KINDS), 0, time.monotonic() + 5
        while time.monotonic() < deadline and got < want:
            got += engine.foreign_counts().get(1, 0)
            time.sleep(0.05)
        time.sleep(0.3)  # nothing more comes
        got += engine.foreign_counts().get(1, 0)
    assert got == want
    assert engine.foreign_counts() == {}


def test_forgeries_from_elsewhere_are_opened_at_the_roaming_rate():
    """A server engine opens DATA naming a client from an address other than that
    client's endpoint at most ROAM_RATE (1000) a second; the rest is dropped as
    rate-limited before any crypto. From the endpoint every packet is opened. A real
    packet from a new address still gets through and moves the endpoint. The Python
    loop's budget (daemon/server.py) is the same rate."""
    import os
    import socket
    import struct
    import time

    from vpncrypt.daemon.budgets import ROAM_RATE
    from vpncrypt.protocol.session import ClientSession, ServerCore
    from vpncrypt.protocol.wire import Drop, Kind

    net = LoopbackEngines()
    fast = net.fast
    assert fast.ROAM_RATE_PER_SECOND == ROAM_RATE == 1000
    psk = bytes(range(32))
    core = ServerCore(7, fast.SivContext)
    core.set_client(1, psk)
    client = ClientSession(1, 7, psk, fast.SivContext)
    engine = net.add("server", True, rcvbuf=8 << 20)
    port = net.port("server")
    tun_test = net.tuns["server"][1]
    at_endpoint, elsewhere = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in "ab")
    for s in (at_endpoint, elsewhere):
        s.bind(("127.0.0.1", 0))
    peer = core.peer(1)
    index = engine.add_peer(1, peer.sender.ctx, peer.receiver.ctx, 1000)
    c_inner, s_inner = bytes([10, 9, 0, 2]), bytes([10, 9, 0, 1])
    engine.set_routes([(4, 32, c_inner, index)])
    engine.set_endpoint(index, "127.0.0.1", at_endpoint.getsockname()[1])

    def forged(counter):  # a fresh DATA header for client 1, and a tag that cannot verify
        return struct.pack(">BHBI", 0x01, 1, int(time.time()) & 0xFF, counter) + os.urandom(48)

    def seen(reasons):
        stats = engine.peer_stats(index)["drops"]
        return sum(stats.get(int(r), 0) for r in reasons)

    def settle(total):  # until the engine has counted `total` drops, or 5 s
        deadline = time.monotonic() + 5
        while seen((Drop.AUTH, Drop.RATE_LIMITED)) < total and time.monotonic() < deadline:
            time.sleep(0.01)
        return seen((Drop.AUTH, Drop.RATE_LIMITED))

    with net, at_endpoint, elsewhere:
        burst = 3000
        t0 = time.monotonic()
        for i in range(burst):
            elsewhere.sendto(forged(10_000 + i), ("127.0.0.1", port))
        got = settle(burst)
        elapsed = time.monotonic() - t0
        opened = seen((Drop.AUTH,))
        assert got >= burst * 0.9, got  # nearly all arrived: the counts below mean something
        assert opened <= 1000 + 1000 * elapsed + 1, (opened, elapsed)
        assert seen((Drop.RATE_LIMITED,)) == got - opened >= got - 1000 - 1000 * elapsed - 1
        # From the endpoint, every forgery is opened (and fails): none rate-limited.
        limited = seen((Drop.RATE_LIMITED,))
        for i in range(500):
            at_endpoint.sendto(forged(20_000 + i), ("127.0.0.1", port))
        settle(got + 500)
        assert seen((Drop.RATE_LIMITED,)) == limited
        assert seen((Drop.AUTH,)) - opened >= 450
        # A genuine packet from the other address (a roaming client) gets through once
        # the budget refills, and its address becomes the endpoint.
        time.sleep(0.05)
        inner = _ipv4(c_inner, s_inner, b"roamed")
        elsewhere.sendto(client.seal(Kind.DATA, inner, time.time()), ("127.0.0.1", port))
        tun_test.settimeout(5)
        assert tun_test.recv(65536) == inner
        assert engine.peer_stats(index)["rx_packets"] == 1


def test_tcp_frames_through_two_native_engines():
    """The engines' own TCP reader (stream_loop) and frame writer over a real loopback
    connection: packets both ways, a frame cut across writes, a partial frame handed to
    another reader (stream_partial, as a rebuilt engine gets it), and each way a
    connection ends going up as EV_STREAM (closed by the peer, impossible length). This runs on the emulated CPUs too (scripts/cross-test.sh): the
    length prefix is network order whatever the CPU's."""
    import socket
    import struct
    import time

    from vpncrypt.daemon import fastpath
    from vpncrypt.protocol import framing
    from vpncrypt.protocol.session import ClientSession, ServerCore
    from vpncrypt.protocol.wire import Kind

    net = LoopbackEngines()
    fast = net.fast
    psk = bytes(range(32))
    core = ServerCore(7, fast.SivContext)
    core.set_client(1, psk)
    client = ClientSession(1, 7, psk, fast.SivContext)
    server, engine_c = net.add("s", True), net.add("c", False)
    peer = core.peer(1)
    index = server.add_peer(1, peer.sender.ctx, peer.receiver.ctx, 1000)
    c_in, s_in = bytes([10, 9, 0, 2]), bytes([10, 9, 0, 1])
    server.set_routes([(4, 32, c_in, index)])
    engine_c.add_peer(1, client.sender.ctx, client.receiver.ctx, 5000)
    engine_c.hold_tx = False
    listener = socket.create_server(("127.0.0.1", 0))
    c_sock = socket.create_connection(listener.getsockname())
    s_sock, _ = listener.accept()
    for s in (c_sock, s_sock):
        s.setblocking(False)
    engine_c.stream_open(c_sock.fileno())
    engine_c.set_stream_endpoint(0, c_sock.fileno())
    server.stream_open(s_sock.fileno())
    server.set_stream_endpoint(index, s_sock.fileno())
    tuns, events = net.tuns, net.events[1]
    events.settimeout(5)

    def stream_event():
        while True:
            kind, reason, errno_, addr, _ = fast.Engine.decode_event(events.recv(1 << 17))
            if kind == fastpath.EV_STREAM:
                return reason, addr

    with net, listener:
        for i in range(50):
            up, down = _ipv4(c_in, s_in, b"up %d" % i), _ipv4(s_in, c_in, b"down %d" % i * 30)
            tuns["c"][1].send(up)
            tuns["s"][1].settimeout(5)
            assert tuns["s"][1].recv(65536) == up
            tuns["s"][1].send(down)
            tuns["c"][1].settimeout(5)
            assert tuns["c"][1].recv(65536) == down
        # A frame the sender cuts in three writes (a tiny TCP window does that).
        c_sock.setblocking(True)
        one = _ipv4(c_in, s_in, b"cut")
        frame = framing.frame(engine_c.seal(0, int(Kind.DATA), int(time.time()), one))
        for piece in (frame[:1], frame[1:9], frame[9:]):
            c_sock.sendall(piece)
            time.sleep(0.05)
        assert tuns["s"][1].recv(65536) == one
        # What a reader holds of a frame goes to the next one whole.
        frame = framing.frame(engine_c.seal(0, int(Kind.DATA), int(time.time()), one))
        c_sock.sendall(frame[:10])
        time.sleep(0.2)
        assert server.stream_partial(s_sock.fileno()) == frame[:10]
        # An impossible length: the server's reader stops and says so.
        c_sock.sendall(frame[10:] + struct.pack(">H", 3) + bytes(40))
        assert tuns["s"][1].recv(65536) == one
        assert stream_event() == (fastpath.SE_GARBAGE, ("stream", s_sock.fileno()))
        server.stream_close(s_sock.fileno())
        # The peer closing its end: the client's reader says so.
        s_sock.close()
        assert stream_event() == (fastpath.SE_CLOSED, ("stream", c_sock.fileno()))
        engine_c.stream_close(c_sock.fileno())
    c_sock.close()

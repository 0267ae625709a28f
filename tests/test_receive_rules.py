"""One table of a server's receive decisions, fed to both packet loops.

The server's per-packet rules for DATA (length, type, client id, freshness, replay,
tag, inner packet, inner source, roaming) are written twice: in Python for the fallback
loop (daemon/server.py handle_datagram, over protocol/session.py) and in C for the data
path (_fast_receive.pxi on_datagram). This table is what makes them one rule: the same
datagrams, in the same order, must get the same decision from each loop. A rule changed
on one side only fails here.
"""

import contextlib
import ipaddress
import socket
import struct
import time
import types

import pytest

from cryptopaths import context_class
from loopengines import LoopbackEngines, _ipv4, _ipv6
from vpncrypt.protocol.session import ClientSession
from vpncrypt.protocol.wire import Drop, Kind

PSK = bytes(range(32))
SERVER_ID = 7
CLIENT4, SERVER4, OTHER4 = bytes([10, 9, 0, 2]), bytes([10, 9, 0, 1]), bytes([10, 9, 0, 3])
CLIENT6 = bytes.fromhex("fd09" + "00" * 13 + "02")
SERVER6 = bytes.fromhex("fd09" + "00" * 13 + "01")
ALLOWED = ["10.9.0.2/32", "fd09::2/128"]


def _header(ptype, client_id, ts, counter):
    return struct.pack(">BHBI", ptype, client_id, ts & 0xFF, counter)


def table(now: float):
    """(what, datagram, from the endpoint?, expected decision), in the order sent; a
    delivered datagram's decision is the inner packet the TUN must get. The client
    session seals with increasing counters, as a real client does."""
    client = ClientSession(1, SERVER_ID, PSK, context_class("reference"))

    def data(inner, ts=now):
        return client.seal(Kind.DATA, inner, ts), inner

    # Sealed 200 s ahead, read back 56 s behind (the header carries 8 bits of the
    # timestamp): sent first, while nothing is newer, it gets to the tag, which fails.
    far = data(_ipv4(CLIENT4, SERVER4, b"far"), now + 200)[0]
    first, first_inner = data(_ipv4(CLIENT4, SERVER4, b"first"))
    six, six_inner = data(_ipv6(CLIENT6, SERVER6, b"six"))
    newest, newest_inner = data(_ipv4(CLIENT4, SERVER4, b"newest"), now + 6)
    tampered = bytearray(data(_ipv4(CLIENT4, SERVER4, b"tampered"))[0])
    tampered[-1] ^= 1
    roamed, roamed_inner = data(_ipv4(CLIENT4, SERVER4, b"roamed"), now + 6)
    return [
        # The one difference, by design: the Python loop diagnoses the skew inline; the
        # native loop counts the failed tag and hands a sample up, where the Python side
        # diagnoses it (daemon/runtime.py engine_drop).
        ("timestamp 200 s ahead", far, True, {"python": Drop.CLOCK_SKEW, "native": Drop.AUTH}),
        ("DATA, IPv4", first, True, first_inner),
        ("DATA, IPv6", six, True, six_inner),
        ("the same datagram again", first, True, Drop.REPLAY),
        ("shorter than header + tag + 1", first[:24], True, Drop.MALFORMED),
        ("a server's type sent to the server", bytes([Kind.DATA | 0x80]) + first[1:], True,
         Drop.BAD_TYPE),
        ("unknown type", bytes([0x09]) + first[1:], True, Drop.BAD_TYPE),
        ("unknown client id", _header(Kind.DATA, 2, int(now), 5) + first[8:], True,
         Drop.UNKNOWN_CLIENT),
        ("tag does not verify", bytes(tampered), True, Drop.AUTH),
        ("inner source of another host", data(_ipv4(OTHER4, SERVER4, b"spoof"))[0], True,
         Drop.SPOOFED_SOURCE),
        ("inner packet not IP", data(b"\x00not an IP packet at all")[0], True,
         Drop.BAD_PACKET),
        ("newest, 6 s ahead", newest, True, newest_inner),
        ("fresh counter, 6 s older than the newest", data(_ipv4(CLIENT4, SERVER4, b"old"))[0],
         True, Drop.STALE),
        ("DATA from a new address (roaming)", roamed, False, roamed_inner),
    ]


class PythonLoop:
    """daemon/server.py's Server, not started: datagrams go to handle_datagram, TUN
    writes and sends are captured."""

    def __init__(self):
        from vpncrypt.daemon.server import Server

        entry = types.SimpleNamespace(name="c1", id=1, key=PSK, allowed_ips=[
            ipaddress.ip_network(n) for n in ALLOWED])
        config = types.SimpleNamespace(server_id=SERVER_ID, clients=[entry])
        self.server = Server(config, "reference")
        self.written = []
        self.server.write_tun = lambda packet: self.written.append(bytes(packet)) or True
        self.server.send = lambda packet, addr: True
        self.endpoint, self.elsewhere = ("127.0.0.1", 40000), ("127.0.0.1", 40001)
        self.server.peers[1].endpoint = self.endpoint

    def decide(self, datagram, at_endpoint, now):
        before = dict(self.server.counters.drops)
        self.server.handle_datagram(datagram, self.endpoint if at_endpoint else self.elsewhere,
                                    now)
        if self.written:
            return self.written.pop()
        changed = [r for r, n in self.server.counters.drops.items() if n != before.get(r, 0)]
        return changed[0] if len(changed) == 1 else changed

    def endpoint_now(self):
        return self.server.peers[1].endpoint == self.elsewhere


class NativeLoop:
    """A server Engine on loopback (tests/test_engine.py's harness): datagrams come
    from a real UDP socket at the client's endpoint or from another one."""

    def __init__(self, stack):
        from vpncrypt.protocol.session import ServerCore

        self.net = LoopbackEngines()
        core = ServerCore(SERVER_ID, self.net.fast.SivContext)
        core.set_client(1, PSK)
        self.engine = self.net.add("server", True)
        state = core.peer(1)
        self.index = self.engine.add_peer(1, state.sender.ctx, state.receiver.ctx, 1000)
        self.engine.set_routes([(4, 32, CLIENT4, self.index), (6, 128, CLIENT6, self.index)])
        self.at, self.away = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in "ab")
        for s in (self.at, self.away):
            s.bind(("127.0.0.1", 0))
            stack.callback(s.close)
        self.engine.set_endpoint(self.index, "127.0.0.1", self.at.getsockname()[1])
        self.tun = self.net.tuns["server"][1]
        stack.enter_context(self.net)

    def drops(self):
        merged = dict(self.engine.global_drops())
        for r, n in self.engine.peer_stats(self.index)["drops"].items():
            merged[r] = merged.get(r, 0) + n
        return merged

    def decide(self, datagram, at_endpoint, now):
        before = self.drops()
        (self.at if at_endpoint else self.away).sendto(datagram, ("127.0.0.1",
                                                                  self.net.port("server")))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            self.tun.settimeout(0.01)
            try:
                return self.tun.recv(65536)
            except socket.timeout:
                pass
            changed = [Drop(r) for r, n in self.drops().items() if n != before.get(r, 0)]
            if changed:
                return changed[0] if len(changed) == 1 else changed
        return "nothing within 5 s"

    def endpoint_now(self):
        """Whether the engine told the Python side the endpoint moved to `away`."""
        events, fast = self.net.events[1], self.net.fast
        events.setblocking(False)
        moved = False
        with contextlib.suppress(BlockingIOError):
            while True:
                kind, _, client_id, addr, _ = fast.Engine.decode_event(events.recv(65536))
                moved |= (kind, client_id, addr[1]) == (2, 1, self.away.getsockname()[1])
        return moved


@pytest.mark.parametrize("loop", ["python", "native"])
def test_both_loops_decide_the_table_alike(loop):
    with contextlib.ExitStack() as stack:
        driver = PythonLoop() if loop == "python" else NativeLoop(stack)
        now = time.time()  # the native loop reads the real clock: the table is built on it
        for what, datagram, at_endpoint, expected in table(now):
            if isinstance(expected, dict):
                expected = expected[loop]
            assert driver.decide(datagram, at_endpoint, now) == expected, what
        assert driver.endpoint_now(), "an authenticated packet from a new address moves the endpoint"

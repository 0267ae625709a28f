"""One table of a server's receive decisions, fed to both packet loops.

The server's per-packet rules (length, type, client id, freshness, replay, tag, inner
packet, inner source, roaming and control budgets, keepalive and time-sync answers) are
written twice: in Python for the fallback loop (daemon/server.py handle_datagram, over
protocol/session.py) and in C for the data path (_fast_receive.pxi on_datagram, which
hands control packets up to the same Python code). This table is what makes them one
rule: the same datagrams, in the same order, must get the same decisions and leave the
same counters on each loop. A rule changed on one side only fails here.

Both loops run as the daemon runs them: a daemon/server.py Server, either alone (the
Python loop) or with its native path (an Engine over a real loopback UDP socket, a
datagram socketpair standing in for the TUN, its events handled by the Server).
"""

import base64
import collections
import os
import socket
import struct
import time
import types

from cryptopaths import context_class
from loopengines import _ipv4, _ipv6, native
from vpncrypt.daemon.budgets import CTL_RATE, ROAM_RATE
from vpncrypt.protocol.session import ClientSession
from vpncrypt.protocol.wire import KEEPALIVE_BODY, Drop, Kind

PSK = bytes(range(32))
SERVER_ID = 7
CLIENT4, SERVER4, OTHER4 = bytes([10, 9, 0, 2]), bytes([10, 9, 0, 1]), bytes([10, 9, 0, 3])
CLIENT6 = bytes.fromhex("fd09" + "00" * 13 + "02")
SERVER6 = bytes.fromhex("fd09" + "00" * 13 + "01")
ALLOWED = ["10.9.0.2/32", "fd09::2/128"]


def answered(kind: Kind):
    """The decision "answered with a packet of `kind`" (a keepalive, a time response)."""
    return ("answered", kind)


def table(now: float):
    """[(what, [datagrams], from the endpoint?, [(decision, count)], refill)], in the
    order sent. A delivered datagram's decision is the inner packet the TUN gets. The
    client session seals with increasing counters, as a real client does. A decision may
    be a dict {loop: decision} where the loops differ by design (said where). `refill`,
    for a step that runs a budget dry, is (rate, decision gained, decision lost): the
    native loop's budgets refill with its own clock while the test runs (by at most rate
    x elapsed), the Python loop's with the `now` the test passes (not at all)."""
    client = ClientSession(1, SERVER_ID, PSK, context_class("reference"))

    def data(inner, ts=now):
        return client.seal(Kind.DATA, inner, ts), inner

    def one(what, datagram, at_endpoint, decision):
        return what, [datagram], at_endpoint, [(decision, 1)], None

    # Sealed 200 s ahead, read back 56 s behind (the header carries 8 bits of the
    # timestamp): sent first, while nothing is newer, it gets to the tag, which fails.
    far = data(_ipv4(CLIENT4, SERVER4, b"far"), now + 200)[0]
    first, first_inner = data(_ipv4(CLIENT4, SERVER4, b"first"))
    six, six_inner = data(_ipv6(CLIENT6, SERVER6, b"six"))
    tampered = bytearray(data(_ipv4(CLIENT4, SERVER4, b"tampered"))[0])
    tampered[-1] ^= 1
    keepalive = client.seal(Kind.KEEPALIVE, KEEPALIVE_BODY, now)
    time_request = client.time_request(now)
    newest, newest_inner = data(_ipv4(CLIENT4, SERVER4, b"newest"), now + 6)
    stale = data(_ipv4(CLIENT4, SERVER4, b"old"))[0]
    # More control packets than the budget holds (four of it are spent above), all
    # fresh: the budget decides.
    burst = [client.seal(Kind.KEEPALIVE, KEEPALIVE_BODY, now + 6) for _ in range(int(CTL_RATE) + 20)]
    # Replays from another address cost no roaming budget (they are refused before the
    # budget is asked): after more of them than the budget holds, a real packet from
    # that address still gets through, and its address becomes the endpoint.
    replays = [newest] * (int(ROAM_RATE) + 50)
    roamed, roamed_inner = data(_ipv4(CLIENT4, SERVER4, b"roamed"), now + 6)
    return [
        # The one difference, by design: the Python loop diagnoses the skew inline; the
        # native loop counts the failed tag and hands a sample up, where the Python side
        # logs the diagnosis (daemon/runtime.py engine_drop).
        one("timestamp 200 s ahead", far, True, {"python": Drop.CLOCK_SKEW, "native": Drop.AUTH}),
        one("DATA, IPv4", first, True, first_inner),
        one("DATA, IPv6", six, True, six_inner),
        one("the same datagram again", first, True, Drop.REPLAY),
        one("shorter than header + tag + 1", first[:24], True, Drop.MALFORMED),
        one("a server's type sent to the server", bytes([Kind.DATA | 0x80]) + first[1:], True,
            Drop.BAD_TYPE),
        one("unknown type", bytes([0x09]) + first[1:], True, Drop.BAD_TYPE),
        one("a time response sent to the server", bytes([Kind.TIME_RESPONSE]) + first[1:], True,
            Drop.BAD_TYPE),
        one("unknown client id", struct.pack(">BHBI", Kind.DATA, 2, int(now) & 0xFF, 5)
            + first[8:], True, Drop.UNKNOWN_CLIENT),
        one("tag does not verify", bytes(tampered), True, Drop.AUTH),
        one("inner source of another host", data(_ipv4(OTHER4, SERVER4, b"spoof"))[0], True,
            Drop.SPOOFED_SOURCE),
        one("inner packet not IP", data(b"\x00not an IP packet at all")[0], True,
            Drop.BAD_PACKET),
        one("keepalive", keepalive, True, answered(Kind.KEEPALIVE)),
        one("the same keepalive again", keepalive, True, Drop.REPLAY),
        one("time request (untimed: the window knows its counter)", time_request, True,
            answered(Kind.TIME_RESPONSE)),
        one("the same time request again", time_request, False, Drop.REPLAY),
        one("newest, 6 s ahead", newest, True, newest_inner),
        one("fresh counter, 6 s older than the newest", stale, True, Drop.STALE),
        ("keepalives over the control budget", burst, True,
         [(answered(Kind.KEEPALIVE), int(CTL_RATE) - 4), (Drop.RATE_LIMITED, 24)],
         (CTL_RATE, answered(Kind.KEEPALIVE), Drop.RATE_LIMITED)),
        ("replays from another address", replays, False, [(Drop.REPLAY, len(replays))], None),
        one("DATA from a new address (roaming)", roamed, False, roamed_inner),
    ]


class Loop:
    """A Server as the daemon runs it, with its sends and TUN writes observed."""

    def __init__(self, name, tmp_path):
        from vpncrypt import config as configmod
        from vpncrypt.daemon.server import Server

        self.name = name
        key = base64.b64encode(PSK).decode()
        conf = tmp_path / "server.conf"
        conf.write_text("[server]\nlisten = 127.0.0.1:51999\ninterface = t0\n"
                        f"address = 10.9.0.1/24, fd09::1/64\nserver_id = {SERVER_ID}\n"
                        f"[client c1]\nid = 1\nkey = {key}\nallowed_ips = {', '.join(ALLOWED)}\n")
        os.chmod(conf, 0o600)
        self.server = Server(configmod.load(str(conf)), "native" if name == "native" else "reference")
        self.sent, self.written = [], []
        self.server.send = lambda packet, addr: self.sent.append(bytes(packet)) or True
        self.server.write_tun = lambda packet: self.written.append(bytes(packet)) or True
        self.server.tun = types.SimpleNamespace(name="t0", fd=-1, frame_prefix=0, offloads=())
        self.closing = []
        self.at, self.away = (self.socket() for _ in "ab")
        self.endpoint = self.at.getsockname()
        self.elsewhere = self.away.getsockname()

    def socket(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        self.closing.append(s)
        return s

    def start(self):
        self.server.peers[1].endpoint = self.endpoint

    def close(self):
        for s in self.closing:
            s.close()

    def drops(self) -> collections.Counter:
        return collections.Counter(self.server.counters.drops)

    def outcomes(self, before):
        """(what happened since the drop counts `before`, the drop counts now)."""
        got = collections.Counter()
        got.update(self.written)
        got.update(answered(Kind(p[0] & 0x7F)) for p in self.sent)
        self.written.clear()
        self.sent.clear()
        now = self.drops()  # read once: the native loop counts while we look
        for reason, n in now.items():
            if n > before.get(reason, 0):
                got[Drop(reason)] += n - before.get(reason, 0)
        return got, now

    def feed(self, datagrams, at_endpoint, now):
        before = self.drops()
        for d in datagrams:
            self.server.handle_datagram(d, self.endpoint if at_endpoint else self.elsewhere, now)
        return self.outcomes(before)[0]

    def endpoint_now(self):
        return self.server.peers[1].endpoint


class NativeLoop(Loop):
    """The Server with its native path: the Engine on a real loopback socket receives
    the datagrams; what it hands up (control packets, endpoint changes, drop samples)
    the Server handles as the daemon's event loop does."""

    def start(self):
        from vpncrypt.daemon import fastpath

        native()
        self.listen = self.socket()
        self.listen.setblocking(False)  # as the daemon's: the engine's loops poll
        tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        tun[0].setblocking(False)
        self.closing += tun
        self.tun_reader = tun[1]
        self.tun_reader.setblocking(False)
        srv = self.server
        srv.sock = self.listen
        srv.tun.fd = tun[0].fileno()
        srv.native = fastpath.NativePath(srv.tun, self.listen, True, SERVER_ID)
        srv.native_peers = {}
        srv.peers[1].endpoint = self.endpoint
        srv.sync_native()
        srv.native.start()

    def close(self):
        if self.server.native is not None:
            self.server.native.close()
        super().close()

    def drops(self):
        merged = collections.Counter(self.server.counters.drops)
        merged.update(self.server.native.engine.global_drops())
        return merged

    def feed(self, datagrams, at_endpoint, now):
        sock = self.at if at_endpoint else self.away
        to = self.listen.getsockname()
        got, before = collections.Counter(), self.drops()
        for i, d in enumerate(datagrams):
            sock.sendto(d, to)
            if i % 64 == 63 or i == len(datagrams) - 1:  # within the socket buffers
                before = self.settle(got, before, i + 1)
        return got

    def settle(self, got, before, count):
        """Add to `got` until it holds `count` outcomes (or 5 s); the drop counts then."""
        deadline = time.monotonic() + 5
        while sum(got.values()) < count and time.monotonic() < deadline:
            self.server.on_native_events()
            try:
                while True:
                    self.written.append(self.tun_reader.recv(65536))
            except BlockingIOError:
                pass
            more, before = self.outcomes(before)
            got += more
            if sum(got.values()) < count:
                time.sleep(0.002)
        return before

    def endpoint_now(self):
        self.server.on_native_events()
        return self.server.peers[1].endpoint


def run_steps(driver, loop, steps, now, real_clock):
    """Feed `steps` (table()'s form) to `driver`; each step's outcomes must be its
    decisions. With `real_clock`, a step that runs a budget dry may see it refilled by
    at most rate x elapsed. Returns how many datagrams such refills let through, and
    their size (what the counters then differ by)."""
    started = time.monotonic()
    refilled, size = 0, 0
    for what, datagrams, at_endpoint, counts, refill in steps:
        if callable(datagrams):
            datagrams = datagrams(driver)
        expected = collections.Counter()
        for decision, n in counts:
            expected[decision[loop] if isinstance(decision, dict) else decision] += n
        got = driver.feed(datagrams, at_endpoint, now)
        if refill and real_clock:
            rate, gained, lost = refill
            extra = got[gained] - expected[gained]
            assert 0 <= extra <= rate * (time.monotonic() - started) + 1, (what, got)
            expected[gained] += extra
            expected[lost] -= extra
            refilled, size = refilled + extra, len(datagrams[0])
        assert got == expected, (loop, what)
    return refilled, size


def test_both_loops_decide_the_table_alike(tmp_path):
    """Each loop, on a fresh server, gets the same datagrams: each step's decisions are
    the table's, and the counters `show` reports for the client are the same."""
    now = time.time()  # the native loop reads the real clock: the table is built on it
    steps = table(now)
    status = {}
    for loop in ("python", "native"):
        (tmp_path / loop).mkdir()
        driver = (NativeLoop if loop == "native" else Loop)(loop, tmp_path / loop)
        try:
            driver.start()
            refilled, size = run_steps(driver, loop, steps, now, real_clock=loop == "native")
            assert driver.endpoint_now() == driver.elsewhere, (loop, "the endpoint moved")
            status[loop] = driver.server.status()["clients"][0]
        finally:
            driver.close()
    python, native_ = status["python"], status["native"]
    # The one difference in the table, by design: clock-skew is counted as the failed
    # tag it is on the native loop (the diagnosis goes to the log).
    python["drops"]["auth"] += python["drops"].pop("clock-skew")
    # What the native loop's budget refilled while the test ran (bounded in run_steps):
    # keepalives taken and answered in kind (same size) instead of rate-limited.
    if refilled:
        python["drops"]["rate-limited"] -= refilled
        if not python["drops"]["rate-limited"]:
            del python["drops"]["rate-limited"]
        for key, n in (("rx_packets", 1), ("tx_packets", 1), ("rx_bytes", size),
                       ("tx_bytes", size)):
            python[key] += refilled * n
    for key in ("drops", "rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "roams"):
        assert python[key] == native_[key], key


# ---- the client's side: what a server sends ------------------------------------------------

ACCEPTED = "accepted"  # authenticated and taken, without a TUN write (keepalive, time)


def client_table(now: float, server_core):
    """The same form as table(): what a client receives from its server. A step's
    datagrams may be a function of the driver (a time response must answer the
    driver's own request)."""
    seal = lambda kind, body, ts=now: server_core.seal(1, kind, body, ts)  # noqa: E731
    first_inner = _ipv4(SERVER4, CLIENT4, b"down")
    first = seal(Kind.DATA, first_inner)
    tampered = bytearray(seal(Kind.DATA, _ipv4(SERVER4, CLIENT4, b"tampered")))
    tampered[-1] ^= 1
    keepalive = seal(Kind.KEEPALIVE, KEEPALIVE_BODY)
    newest_inner = _ipv4(SERVER4, CLIENT4, b"newest")
    newest = seal(Kind.DATA, newest_inner, now + 6)
    stale = seal(Kind.DATA, _ipv4(SERVER4, CLIENT4, b"old"))
    # An answer to no request: a response to a request the client never sent.
    stray = ClientSession(1, SERVER_ID, PSK, context_class("reference"))
    unsolicited = server_core.open(stray.time_request(now), now).packet

    def answer(driver):
        return [server_core.open(driver.time_request(), time.time()).packet]

    burst = [seal(Kind.KEEPALIVE, KEEPALIVE_BODY, now + 6) for _ in range(int(CTL_RATE) + 20)]

    def one(what, datagram, decision):
        return what, [datagram], True, [(decision, 1)], None

    return [
        one("DATA", first, first_inner),
        one("the same datagram again", first, Drop.REPLAY),
        one("shorter than header + tag + 1", first[:24], Drop.MALFORMED),
        one("a client's type sent to the client", bytes([Kind.DATA]) + first[1:],
            Drop.BAD_TYPE),
        one("a time request sent to the client", bytes([Kind.TIME_REQUEST | 0x80]) + first[1:],
            Drop.BAD_TYPE),
        one("another client's id", first[:1] + (2).to_bytes(2, "big") + first[3:],
            Drop.UNKNOWN_CLIENT),
        one("tag does not verify", bytes(tampered), Drop.AUTH),
        one("keepalive", keepalive, ACCEPTED),
        one("the same keepalive again", keepalive, Drop.REPLAY),
        one("a time response that answers no request", unsolicited, Drop.UNSOLICITED),
        ("a time response to the client's request", answer, True, [(ACCEPTED, 1)], None),
        one("newest, 6 s ahead", newest, newest_inner),
        one("fresh counter, 6 s older than the newest", stale, Drop.STALE),
        # Four control packets of the budget are spent above (a wrong type never is).
        # Both client loops budget with a real clock: both may refill meanwhile.
        ("keepalives over the control budget", burst, True,
         [(ACCEPTED, int(CTL_RATE) - 4), (Drop.RATE_LIMITED, 24)],
         (CTL_RATE, ACCEPTED, Drop.RATE_LIMITED)),
    ]


class ClientLoop(Loop):
    """daemon/client.py's Client, its sends and TUN writes observed; the Python loop."""

    def __init__(self, name, tmp_path):
        from vpncrypt import config as configmod
        from vpncrypt.daemon.client import Client

        self.name = name
        self.closing = []
        self.server_sock = self.socket()
        host, port = self.server_sock.getsockname()
        conf = tmp_path / "client.conf"
        conf.write_text(f"[client]\nid = 1\nserver = {host}:{port}\nserver_id = {SERVER_ID}\n"
                        f"key = {base64.b64encode(PSK).decode()}\ninterface = t0\n"
                        "address = 10.9.0.2/24\n")
        os.chmod(conf, 0o600)
        self.server = Client(configmod.load(str(conf)), "native" if name == "native" else "reference")
        self.server.server = (socket.AF_INET, (host, port))
        self.sent, self.written = [], []
        self.server.send = lambda packet, addr: self.sent.append(bytes(packet)) or True
        self.server.write_tun = lambda packet: self.written.append(bytes(packet)) or True
        self.server.tun = types.SimpleNamespace(name="t0", fd=-1, frame_prefix=0, offloads=())
        self.endpoint = (host, port)

    def start(self):
        pass

    def time_request(self):
        self.server.request_sync(time.monotonic())
        return self.sent.pop()

    def rx(self):
        return self.server.counters.rx_packets

    def outcomes(self, before):
        """(what happened since `before` = (drop counts, rx count), the counts now)."""
        drops_before, rx_before = before
        got = collections.Counter()
        rx_now = self.rx()
        self.drain(rx_now - rx_before)
        got.update(self.written)
        got[ACCEPTED] += rx_now - rx_before - len(self.written)
        got += collections.Counter()  # drop zero counts
        self.written.clear()
        drops_now = self.drops()
        for reason, n in drops_now.items():
            if n > drops_before.get(reason, 0):
                got[Drop(reason)] += n - drops_before.get(reason, 0)
        return got, (drops_now, rx_now)

    def drain(self, accepted):
        """TUN writes of the `accepted` packets counted so far (the Python loop's are done)."""

    def feed(self, datagrams, at_endpoint, now):
        before = (self.drops(), self.rx())
        for d in datagrams:
            self.server.handle_datagram(d, self.endpoint)
        return self.outcomes(before)[0]


class NativeClientLoop(ClientLoop):
    """The Client with its native path: a client Engine on a real loopback socket; the
    test's socket plays the server."""

    def start(self):
        native()
        cl = self.server
        cl.sock = self.socket()
        cl.sock.setblocking(False)
        tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        tun[0].setblocking(False)
        self.closing += tun
        self.tun_reader = tun[1]
        self.tun_reader.setblocking(False)
        cl.tun.fd = tun[0].fileno()
        cl.build_native()
        cl.native.start()

    def close(self):
        if self.server.native is not None:
            self.server.native.close()
        for s in self.closing:
            s.close()

    def rx(self):
        return self.server.counters.rx_packets + self.server.native.engine.peer_stats(0)["rx_packets"]

    def drain(self, accepted):
        # The engine counts a DATA packet just before it writes it to the TUN: wait a
        # moment for writes that may still be on their way (keepalives have none).
        deadline = time.monotonic() + 0.05
        while True:
            try:
                while True:
                    self.written.append(self.tun_reader.recv(65536))
            except BlockingIOError:
                pass
            if len(self.written) >= accepted or time.monotonic() > deadline:
                return
            time.sleep(0.002)

    def drops(self):
        merged = collections.Counter(self.server.counters.drops)
        merged.update(self.server.native.engine.global_drops())
        return merged

    def feed(self, datagrams, at_endpoint, now):
        to = self.server.sock.getsockname()
        got, before = collections.Counter(), (self.drops(), self.rx())
        for i, d in enumerate(datagrams):
            self.server_sock.sendto(d, to)
            if i % 64 == 63 or i == len(datagrams) - 1:
                before = self.settle(got, before, i + 1)
        return got

    settle = NativeLoop.settle


def test_both_client_loops_decide_the_table_alike(tmp_path):
    """The client's side of the table: each loop, on a fresh client, gets the same
    datagrams from its server and decides each step alike."""
    from vpncrypt.protocol.session import ServerCore

    now = time.time()
    core = ServerCore(SERVER_ID, context_class("reference"))
    core.set_client(1, PSK)
    steps = client_table(now, core)
    for loop in ("python", "native"):
        (tmp_path / loop).mkdir()
        driver = (NativeClientLoop if loop == "native" else ClientLoop)(loop, tmp_path / loop)
        try:
            driver.start()
            run_steps(driver, loop, steps, now, real_clock=True)  # both client loops' budgets
            assert driver.server.synced, (loop, "the time response was applied")
        finally:
            driver.close()

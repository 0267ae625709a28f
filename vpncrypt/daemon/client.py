"""The client daemon: one server, found by name, kept reachable through NAT, clock synced to it."""

import os
import selectors
import socket
import time

from ..protocol.session import ClientSession, Opened
from ..protocol.wire import FROM_SERVER, KEEPALIVE_BODY, MIN_PACKET, OVERHEAD, Drop, Kind
from ..protocol.bucket import Bucket
from .budgets import CTL_RATE
from .logs import kv, log
from . import fastpath, streams
from .keystate import install
from .runtime import BATCH, Runtime, format_addr

RESOLVE_EVERY = 300.0  # seconds between routine re-resolutions of the server's name
CONNECT_RETRY = (1.0, 2.0, 4.0, 8.0, 15.0)  # seconds between failed TCP connects (transport = tcp)
SILENCE = 15.0  # server silent this long while we send: re-resolve and re-sync the clock
RESYNC_EVERY = 600.0  # routine clock re-sync
SYNC_RETRY = (1.0, 2.0, 4.0, 8.0, 15.0)  # seconds between unanswered time-sync requests
# Data waits this long for the first time sync. A clock off by less than 128 s would
# otherwise be accepted by the server and push its replay window ahead of real time,
# locking the corrected client out until real time caught up.
FIRST_SYNC_WAIT = 3.0


def resolve(host: str, port: int):
    """(family, sockaddr) for the server; raises OSError with the resolver's message."""
    # bytes, not str: a str host drags in the idna codec (~0.35 MB resident). Names
    # that are not ASCII are passed to the resolver as IDNA text by the operator.
    try:
        name = host.encode("ascii")
    except UnicodeEncodeError:
        name = host
    infos = socket.getaddrinfo(name, port, socket.AF_UNSPEC, socket.SOCK_DGRAM)
    # Prefer IPv4 when both exist: it has the larger tunnel MTU and works behind more NATs.
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr[:2]


# What the server sends besides DATA: keepalives and time responses, budgeted per second
# as the native loop budgets them (daemon/budgets.py CTL_RATE).
_CONTROL = frozenset({Kind.KEEPALIVE | FROM_SERVER, Kind.TIME_RESPONSE | FROM_SERVER})


class Client(Runtime):
    role = "client"

    def __init__(self, config, crypto=None):
        super().__init__(config, crypto)
        self.session = ClientSession(config.id, config.server_id, config.key, self.context_class)
        self._python_sender = self.session.sender
        self.synced = False
        self.sync_attempt = 0
        self.next_sync = 0.0
        self.next_resolve = 0.0
        self.last_rx = None  # monotonic time of the last authenticated packet
        self.last_tx = 0.0
        self._engine_data = (0, 0)  # the native loop's DATA sent, received: at the last tick
        self.unanswered_since = None  # monotonic time of our first send since the last answer
        self.last_recovery = 0.0
        self.server = None  # (family, sockaddr)
        self._resolving = False
        self._resolved = None
        self.control_budget = Bucket(CTL_RATE)  # the Python loop's (the engine has its own)
        self.ratchets.step(self.now(), False)
        # transport = tcp (daemon/streams.py): the connection to the server, ("stream", fd)
        self.tcp = config.transport == "tcp"
        self.conn = None
        self._connecting = False
        self._connected = None  # the connect thread's result
        self.next_connect = 0.0
        self.connect_attempt = 0

    def start(self) -> None:
        cfg = self.config
        try:
            self.server = resolve(cfg.server_host, cfg.server_port)
        except OSError as e:
            # A router may boot before its DNS works: keep going, retry in the background.
            log.warning(kv("resolve-failed", server=cfg.server_host, error=e.strerror or e))
        family = self.server[0] if self.server else socket.AF_INET
        mtu = cfg.mtu or self.default_mtu(family, self.server[1][0] if self.server else None)
        self.open_tun(mtu, cfg.routes)
        self.sock = self.make_socket(family, ("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        self.open_control()
        if fastpath.wanted(self.crypto_path):
            self.build_native()
        server = format_addr(self.server[1]) if self.server else "unresolved"
        log.info(
            "client started: id %d, interface %s (%s, mtu %d), server %s (%s), server id %d, "
            "keepalive %s, crypto %s, %s",
            cfg.id, self.tun.name, ", ".join(str(a) for a in cfg.addresses), mtu,
            cfg.server_host, server, cfg.server_id,
            f"{cfg.keepalive} s" if cfg.keepalive else "off", self.crypto_description(),
            self.native.describe() if self.native else "Python loop",
        )

    def build_native(self) -> None:
        """Hand DATA packets to the native loop (again, after the socket was replaced)."""
        window = None
        if self.native is not None:
            self.selector.unregister(self.native.events)
            self.native.close()
            self.streams.detach_native()  # its reader has stopped: what it holds is final
            window = self.native.engine.window_state(0)
        self.native = fastpath.NativePath(self.tun, self.sock, False, self.config.server_id,
                                          streams=self.tcp)
        engine = self.native.engine
        # A rebuilt engine starts a fresh random counter, like a restart: the server
        # accepts it within a second.
        counter = self._python_sender.counter if self.session.sender is self._python_sender \
            else int.from_bytes(os.urandom(4), "big")
        engine.add_peer(self.config.id, self._python_sender.ctx, self.session.receiver.ctx, counter)
        if window is not None:  # the server's packets are judged by one window, kept
            engine.load_window_state(0, window)
        epochs = self._python_sender.epochs
        if epochs is not None:
            install(engine, 0, self._python_sender, self.session.receiver)
        self.session.sender = fastpath.EngineSender(engine, 0, False, epochs)
        engine.clock_offset = self.clock_base
        engine.hold_tx = not self.synced
        self.streams.attach_native()
        if self.conn is not None:
            engine.set_stream_endpoint(0, self.conn[1])
        elif self.server and not self.tcp:
            engine.set_endpoint(0, self.server[1][0], self.server[1][1])
        self.next_resolve = time.monotonic() + (RESOLVE_EVERY if self.server else 5.0)

    # -- packets ------------------------------------------------------------------------------

    def on_tun(self) -> None:
        for _ in range(BATCH):
            try:
                packet = self.tun.read()
            except (BlockingIOError, InterruptedError):
                return
            if self.target() is None:
                self.counters.drops[Drop.NO_ROUTE] += 1
                continue
            if not self.synced and time.monotonic() - self.started < FIRST_SYNC_WAIT:
                self.counters.drops[Drop.UNSYNCED] += 1
                continue
            if len(packet) > self.mtu:
                self.icmp_too_big(packet)
                continue
            self.send_sealed(Kind.DATA, packet, time.monotonic())

    def handle_datagram(self, data, addr) -> None:
        """One datagram from the server through the sans-IO core (the Python loop). The
        native twin is _fast_receive.pxi on_datagram: tests/test_receive_rules.py feeds
        both one table."""
        if self.over_control_budget(data, addr):
            return
        self.decided(self.session.open(data, self.now()), len(data), addr)

    def over_control_budget(self, data, addr) -> bool:
        """The native loop's control budget, at the same point: a keepalive or time
        response for us over it is dropped (and counted) before any AES-SIV pass."""
        if (len(data) >= MIN_PACKET and data[0] in _CONTROL
                and int.from_bytes(data[1:3], "big") == self.config.id
                and not self.control_budget.take(time.time())):
            self.drop(self.counters, Drop.RATE_LIMITED, self.now(), addr, None,
                      "control packets over their budget")
            return True
        return False

    def decided(self, result, size: int, addr) -> None:
        """Act on the session's decision about one datagram of `size` bytes from the
        server; the native loop's authenticated keepalives and time responses come here
        too."""
        if type(result) is not Opened:
            self.drop(self.counters, result.reason, self.now(), addr, None, result.detail)
            if result.reason == Drop.CLOCK_SKEW:
                self.request_sync(time.monotonic(), "the server's packets are outside our clock window")
            return
        self.last_rx = time.monotonic()
        self.unanswered_since = None
        if self.native is not None:
            self.native.engine.mark_answered(0)
        self.counters.rx_packets += 1
        self.counters.rx_bytes += size
        if result.kind == Kind.DATA:
            self.write_tun(result.body)
        elif result.kind == Kind.TIME_RESPONSE:
            self.apply_clock(result.clock_offset)

    def on_engine_event(self, kind, reason, client_id, addr, packet) -> None:
        if kind == fastpath.EV_CONTROL:
            # Authenticated (and, keepalives, replay-checked) by the engine's window, the
            # only one the server has as a sender while the native loop runs.
            result = (self.session.time_response(packet, self.now())
                      if reason == Kind.TIME_RESPONSE else Opened(client_id, Kind(reason), packet))
            self.decided(result, len(packet) + OVERHEAD, addr)
        elif kind == fastpath.EV_DROP:
            why = self.engine_drop(reason, client_id, addr, packet, None, self.session.receiver, 0)
            if why == Drop.CLOCK_SKEW:
                self.request_sync(time.monotonic(), "the server's packets are outside our clock window")

    # -- clock --------------------------------------------------------------------------------

    def request_sync(self, mono: float, why: str = "") -> None:
        if self.server is None:
            return
        if why:
            log.info("clock: requesting the server's time (%s)", why)
        self.send_sealed(Kind.TIME_REQUEST, None, mono)
        delay = SYNC_RETRY[min(self.sync_attempt, len(SYNC_RETRY) - 1)]
        self.sync_attempt += 1
        self.next_sync = mono + delay

    def apply_clock(self, correction: float) -> None:
        # The replay window is left alone, whatever the correction: it holds the server's
        # timestamps, and the server's clock never goes back (protocol/clock.py). A
        # correction changes only which packets are inside the +-128 s clock window, so
        # nothing refused as stale or as a replay before it is accepted after it.
        self.set_clock_base(self.clock_base + correction)
        self.ratchets.step(self.now(), True)  # the epochs of the server's time, at once
        if not self.synced:
            self.floor_at_first_sync()
        self.sync_attempt = 0
        self.next_sync = time.monotonic() + RESYNC_EVERY
        if abs(correction) >= 1.0 or not self.synced:
            total = self.now() - time.time()
            log.info(kv("clock-sync", correction=f"{correction:+.3f}s",
                        local_clock_off_by=f"{-total:+.3f}s",
                        note="using the server's time" if abs(total) >= 1.0 else "in sync"))
        self.synced = True

    # -- timers -------------------------------------------------------------------------------

    def answers(self):
        """(last authenticated packet, first send after it) in monotonic time, from both
        the Python side and the native loop."""
        last_rx, pending = self.last_rx, [self.unanswered_since]
        if self.native is not None:
            stats = self.native.engine.peer_stats(0)
            if stats["last_rx"] and (last_rx is None or stats["last_rx"] > last_rx):
                last_rx = stats["last_rx"]
            pending.append(stats["first_unanswered"])
        pending = [t for t in pending if t and (last_rx is None or t > last_rx)]
        return last_rx, min(pending, default=None)

    def tick(self, mono: float) -> None:
        self.finish_resolve()
        cfg = self.config
        if self.tcp and self.conn is None and mono >= self.next_connect:
            self.start_connect(mono)
        if self.native is not None and self.native.engine.hold_tx:
            self.native.engine.hold_tx = not self.synced and mono - self.started < FIRST_SYNC_WAIT
        if mono >= self.next_sync:
            self.request_sync(mono)
        _, unanswered = self.answers()
        if mono >= self.next_resolve:
            self.start_resolve(mono)
        elif (unanswered is not None and mono - unanswered > SILENCE
              and mono - self.last_recovery > SILENCE):
            # We keep sending and nothing authenticated comes back: the server may have
            # moved (DNS) or our clock may have drifted out of its window.
            self.last_recovery = mono
            log.warning(kv("server-silent", seconds=int(mono - unanswered),
                           action="re-resolving and re-syncing the clock"))
            self.start_resolve(mono)
            self.request_sync(mono)
            if self.conn is not None:  # a connection that carries nothing back: a new one
                self.streams.close(self.streams.conns[self.conn[1]], "the server is silent")
        if self.native is not None:
            # Data the native loop sent keeps NAT mappings fresh as a keepalive would; while
            # data comes back too, a keepalive would tell nothing new. (A one-way stream
            # keeps its keepalives: their answers are how we know the server is there.)
            stats = self.native.engine.peer_stats(0)
            data = (stats["tx_packets"], stats["rx_packets"])  # DATA only, both ways
            if data[0] != self._engine_data[0] and data[1] != self._engine_data[1]:
                self.last_tx = max(self.last_tx, mono)
            self._engine_data = data
        if (self.server and cfg.keepalive and mono - self.last_tx >= cfg.keepalive
                and (self.synced or mono - self.started >= FIRST_SYNC_WAIT)):
            self.send_sealed(Kind.KEEPALIVE, KEEPALIVE_BODY, mono)

    def send_sealed(self, kind, body, mono: float) -> bool:
        packet = (self.session.time_request(self.now()) if kind == Kind.TIME_REQUEST
                  else self.session.seal(kind, body, self.now()))
        if packet is None:  # ratchet: our clock is before the epochs we hold (not synced)
            self.counters.drops[Drop.UNSYNCED] += 1
            return False
        target = self.target()
        if target is None or not self.send(packet, target):
            return False
        self.counters.tx_packets += 1
        self.counters.tx_bytes += len(packet)  # on the wire: UDP payload, overhead included
        self.last_tx = mono
        if self.unanswered_since is None:
            self.unanswered_since = mono
        return True

    # -- transport = tcp -----------------------------------------------------------------------

    def target(self):
        """Where packets to the server go: its address, or our connection to it; None
        while there is neither."""
        if self.tcp:
            return self.conn
        return self.server[1] if self.server else None

    def start_connect(self, mono: float) -> None:
        """Connect to the server in a thread (a SYN into a black hole takes seconds)."""
        if self._connecting or self.server is None:
            return
        self._connecting = True
        family, sockaddr = self.server

        def store(result):
            self._connected = result
            self._connecting = False

        self.in_background(lambda: (streams.connect(family, sockaddr), sockaddr), store)

    def finish_connect(self) -> None:
        result, self._connected = self._connected, None
        if result is None:
            return
        mono = time.monotonic()
        if isinstance(result, OSError):
            delay = CONNECT_RETRY[min(self.connect_attempt, len(CONNECT_RETRY) - 1)]
            self.connect_attempt += 1
            self.next_connect = mono + delay
            if self.limiter.allow(("tcp-connect", result.errno), mono) is not None:
                log.warning(kv("tcp-connect-failed", server=format_addr(self.server[1]),
                               error=result.strerror or result, retry=f"{delay:g}s"))
            return
        sock, peer = result
        conn = self.streams.add(sock, peer)
        conn.authenticated = True  # ours: the server's frames authenticate one by one
        self.conn = conn.addr
        self.connect_attempt = 0
        if self.native is not None:
            self.native.engine.set_stream_endpoint(0, conn.fd)
        log.info(kv("tcp-connected", server=format_addr(peer)))
        # The server learns this connection from our first authenticated packet on it.
        self.request_sync(mono)
        if self.synced:
            self.send_sealed(Kind.KEEPALIVE, KEEPALIVE_BODY, mono)

    def stream_closed(self, addr, authenticated: bool, why: str) -> None:
        if addr != self.conn:
            return
        self.conn = None
        delay = CONNECT_RETRY[min(self.connect_attempt, len(CONNECT_RETRY) - 1)]
        self.connect_attempt += 1
        self.next_connect = time.monotonic() + delay
        log.warning(kv("tcp-disconnected", server=format_addr(self.server[1]) if self.server
                       else self.config.server_host, why=why, retry=f"{delay:g}s"))

    def start_resolve(self, mono: float) -> None:
        """Resolve the server's name in a thread: a slow resolver must not stall the tunnel."""
        self.next_resolve = mono + RESOLVE_EVERY
        if self._resolving:
            return
        self._resolving = True
        host, port = self.config.server_host, self.config.server_port

        def store(result):
            self._resolved = result
            self._resolving = False

        self.in_background(lambda: resolve(host, port), store)

    def finish_resolve(self) -> None:
        result, self._resolved = self._resolved, None
        if result is None:
            return
        if isinstance(result, OSError):
            log.warning(kv("resolve-failed", server=self.config.server_host,
                           error=result.strerror or result))
            self.next_resolve = min(self.next_resolve, time.monotonic() + 5.0)
            return
        if result == self.server:
            return
        old = format_addr(self.server[1]) if self.server else "none"
        log.info(kv("server-address", server=self.config.server_host, old=old,
                    new=format_addr(result[1])))
        family_changed = self.server is None or result[0] != self.server[0]
        self.server = result
        if family_changed:
            family = result[0]
            if self.native is not None:
                self.native.stop()
            self.replace_socket(self.make_socket(
                family, ("::" if family == socket.AF_INET6 else "0.0.0.0", 0)))
            if self.native is not None:
                self.build_native()
                self.selector.register(self.native.events, selectors.EVENT_READ,
                                       self.on_native_events)
                self.native.start()
        elif self.native is not None and not self.tcp:
            self.native.engine.set_endpoint(0, result[1][0], result[1][1])
        if self.conn is not None:  # connected to the old address: connect to the new one
            self.streams.close(self.streams.conns[self.conn[1]], "the server's address changed")
        self.request_sync(time.monotonic())

    def _on_wake(self) -> None:
        super()._on_wake()
        self.finish_resolve()
        self.finish_connect()

    RESTART_ONLY = ("id", "server_id", "key", "interface", "addresses", "routes", "mtu",
                    "offload")

    def reload(self) -> str | None:
        new, error = self.reread_config()
        if error:
            return error
        self.config = self.config.__class__(**{
            **self.config.__dict__,
            "server_host": new.server_host, "server_port": new.server_port,
            "keepalive": new.keepalive,
        })
        log.info("reloaded %s; re-resolving %s", new.path, new.server_host)
        self.start_resolve(time.monotonic())
        return None

    def floor_at_first_sync(self) -> None:
        """Our start in the protocol's clock is known once we have the server's time:
        from then on nothing the server sent before it is accepted (what a restart that
        lost the replay state would otherwise take again, captured in the last 128 s)."""
        floor = int(self.now())
        for _, windows, index in self.replay_windows():
            seen = [w.newest for w in windows if w.newest is not None]
            if index is not None and self.native.engine.window_newest(index) is not None:
                seen.append(self.native.engine.window_newest(index))
            if not seen or max(seen) < floor:
                self.restore_floor(windows, index, floor)

    def ratchet_sides(self):
        if self._python_sender.epochs is not None:
            index = 0 if self.native is not None else None
            yield ("server", self.config.key_file, self._python_sender, self.session.receiver,
                   index)

    def clock_trusted(self) -> bool:
        return self.synced  # until then a clock that booted in 1970 (or 2038) erases nothing

    def replay_windows(self):
        # One window for the server: the engine's while the native loop runs, else ours.
        if self.native is not None:
            return [("server", [], 0)]
        return [("server", [self.session.receiver.window], None)]

    def totals(self) -> dict:
        doc = super().totals()  # Python's counters and every drop the engine counted
        if self.native is not None:
            stats = self.native.engine.peer_stats(0)
            for key in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes"):
                doc[key] += stats[key]
        return doc

    def status(self) -> dict:
        doc = super().status()
        mono = time.monotonic()
        last_rx, _ = self.answers()
        doc.update({
            "id": self.config.id,
            "server": f"{self.config.server_host}:{self.config.server_port}",
            "endpoint": format_addr(self.server[1]) if self.server else None,
            "transport": self.config.transport,
            "tcp": ({"connected": self.conn is not None, **self.streams.status()}
                    if self.tcp else None),
            "server_id": self.config.server_id,
            "keepalive": self.config.keepalive,
            "clock_synced": self.synced,
            "clock_offset": round(self.now() - time.time(), 3),
            "last_rx_seconds": round(mono - last_rx, 3) if last_rx else None,
        })
        return doc


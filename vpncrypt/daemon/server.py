"""The server daemon: many clients, each routed by its allowed IPs and reached at its newest endpoint."""

import contextlib
import gc
import ipaddress
import socket
import time

from ..protocol.clock import SLEW, ServerClock
from ..protocol.session import Opened, Reply, ServerCore
from ..protocol.wire import KEEPALIVE_BODY, MIN_PACKET, OVERHEAD, Drop, Kind
from .logs import kv, log
from .routing import AllowedIPs
from . import fastpath, ippacket, sockfilter
from ..protocol.bucket import Bucket
from .budgets import CTL_RATE, ROAM_RATE
from .keystate import install
from .pinning import PINNED_KINDS, Pins
from .runtime import BATCH, Counters, FatalError, Runtime, flatten, format_addr, steady
from .streams import is_stream

# The types the Python loop budgets per client before the core decides them: DATA from
# elsewhere (roaming), keepalives and time requests (control).
_BUDGETED = frozenset({Kind.DATA, Kind.KEEPALIVE, Kind.TIME_REQUEST})
CLOCK_AHEAD = "clock-ahead"  # replay-state entry: seconds our clock is ahead of the wall


@contextlib.contextmanager
def _no_cyclic_gc():
    """Build a large client table without the cyclic collector: none of it forms cycles,
    and with thousands of clients the collector's passes over the growing heap cost
    about as much as building the entries."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class PeerState:
    """What the server knows about one client besides its crypto state."""

    __slots__ = ("name", "id", "allowed_ips", "key_file", "endpoint", "last_rx", "active",
                 "roams", "counters", "roam", "control")

    def __init__(self, entry):
        self.name = entry.name
        self.id = entry.id
        self.allowed_ips = entry.allowed_ips
        self.key_file = entry.key_file
        self.endpoint = None
        self.last_rx = None
        # Monotonic time of the last authenticated packet the Python side accepted (the
        # native loop's DATA is in the engine's last_rx): route announcement's clock.
        self.active = None
        self.roams = 0
        self.counters = Counters()
        self.roam = self.control = None  # Buckets, made on first use (thousands of clients)

    def may_open(self, addr, now: float) -> bool:
        """Whether a DATA packet naming this client from `addr` is worth opening. Opening
        is what a forgery costs (a whole AES-SIV pass): from anywhere but the client's
        current endpoint (or while it has none) only ROAM_RATE a second are tried, so a
        flood naming a client cannot eat the CPU the real traffic needs. A roaming or
        (re)connecting client gets through with its first packets, and from then on its
        address is the endpoint."""
        if addr == self.endpoint:
            return True
        if self.roam is None:
            self.roam = Bucket(ROAM_RATE)
        return self.roam.take(now)

    def may_control(self, now: float) -> bool:
        """Whether a keepalive or time-sync packet naming this client is looked at: CTL_RATE
        a second, as the native loop hands them up, so a flood of them naming one client
        costs the same on either loop and cannot starve the others."""
        if self.control is None:
            self.control = Bucket(CTL_RATE)
        return self.control.take(now)


class Server(Runtime):
    role = "server"

    def __init__(self, config, crypto=None):
        super().__init__(config, crypto)
        self.clock = ServerClock(time.time(), steady())
        self.clock_base = self.clock.base
        self.core = ServerCore(config.server_id, self.context_class)
        self.peers = {}
        self.pins = Pins(ROAM_RATE)
        self.foreign = {}  # the Python loop's foreign datagrams per client, for self.pins
        self.announcer = None  # announce.Announcer with `announce_routes = yes`
        self.apply_clients(config.clients)

    def apply_clients(self, entries) -> None:
        """Install the client table; entries whose key and addresses did not change keep
        their endpoint, counters and replay state."""
        with _no_cyclic_gc():
            self._apply_clients(entries)

    def _apply_clients(self, entries) -> None:
        wanted = {e.id: e for e in entries}
        for cid in list(self.peers):
            if cid not in wanted:
                self.core.remove_client(cid)
                del self.peers[cid]
                log.info("client %s removed", cid)
        for entry in entries:
            changed = self.core.set_client(entry.id, entry.key)
            peer = self.peers.get(entry.id)
            if peer is None or changed:
                self.peers[entry.id] = PeerState(entry)
            else:
                peer.name, peer.allowed_ips = entry.name, entry.allowed_ips
        self.routes = AllowedIPs.from_peers(entries)
        self.ratchets.step(self.now(), True)  # new ratcheting clients: their epoch keys

    def start(self) -> None:
        cfg = self.config
        host = cfg.listen_host or cfg.listen_tcp_host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        mtu = cfg.mtu or self.default_mtu(family, None)
        self.open_tun(mtu)
        # Without `listen` (TCP only) the loops still get a datagram socket, on loopback.
        self.sock = self.make_socket(family, (cfg.listen_host, cfg.listen_port)
                                     if cfg.listen_host is not None
                                     else ("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        if cfg.listen_tcp_host is not None:
            try:
                self.streams.listen(cfg.listen_tcp_host, cfg.listen_tcp_port)
            except OSError as e:
                where = format_addr((cfg.listen_tcp_host, cfg.listen_tcp_port))
                raise FatalError(f"cannot listen on TCP {where}: {e.strerror}") from None
        self.attach_filter()  # now with the client ids
        self.open_control()
        if fastpath.wanted(self.crypto_path):
            self.native = fastpath.NativePath(self.tun, self.sock, True, cfg.server_id,
                                              streams=cfg.listen_tcp_host is not None)
            self.set_clock_base(self.clock_base)
            self.native_peers = {}
            self.sync_native()
        if cfg.announce_routes:
            from . import announce  # only then: the daemon's memory is counted in KB

            try:
                self.announcer = announce.Announcer(self.tun.name, cfg.announce_protocol,
                                                    cfg.announce_hold, self.limiter)
            except announce.AnnounceError as e:
                raise FatalError(str(e)) from None
        addrs = ", ".join(str(a) for a in cfg.addresses)
        log.info(
            "server started: interface %s (%s, mtu %d), listening on %s, server id %d, "
            "%d clients, crypto %s, %s",
            self.tun.name, addrs, mtu, self.listening(),
            cfg.server_id, len(self.peers), self.crypto_description(),
            self.native.describe() if self.native else "Python loop",
        )

    def sync_native(self) -> None:
        """Mirror the client table into the engine (its loops must be stopped). Clients
        whose crypto state did not change keep their engine slot: counters, window, endpoint."""
        with _no_cyclic_gc():
            self._sync_native()

    def _sync_native(self) -> None:
        engine = self.native.engine
        for cid, state in list(self.native_peers.items()):
            if cid not in self.peers or self.core.peer(cid) is not state:
                engine.remove_peer(cid)
                del self.native_peers[cid]
        for cid, peer in self.peers.items():
            if cid in self.native_peers:
                continue
            state = self.core.peer(cid)
            index = engine.add_peer(cid, state.sender.ctx, state.receiver.ctx, state.sender.counter)
            if state.sender.epochs is not None:
                install(engine, index, state.sender, state.receiver)
            state.sender = fastpath.EngineSender(engine, index, True, state.sender.epochs)
            self.native_peers[cid] = state
            if peer.endpoint:
                engine.set_endpoint(index, peer.endpoint[0], peer.endpoint[1])
        engine.set_routes([(net.version, net.prefixlen, net.network_address.packed,
                            engine.index_of(p.id))
                           for p in self.peers.values() for net in p.allowed_ips])

    # -- UDP -> TUN ---------------------------------------------------------------------------

    def handle_datagram(self, data, addr, now: float | None = None) -> None:
        """One datagram through the sans-IO core (the Python loop). The native twin is
        _fast_receive.pxi on_datagram: tests/test_receive_rules.py feeds both one table."""
        core, peers = self.core, self.peers
        now = self.now() if now is None else now
        may_open = None
        if len(data) >= MIN_PACKET and data[0] in _BUDGETED and self.native is None:
            # The native loop's budgets, at the same points (it already applied them to
            # what it hands up).
            cid = int.from_bytes(data[1:3], "big")
            peer = peers.get(cid)
            if peer is not None:
                if addr != peer.endpoint and data[0] in PINNED_KINDS:
                    self.foreign[cid] = self.foreign.get(cid, 0) + 1
                if data[0] != Kind.DATA:
                    if not peer.may_control(now):
                        self.drop(peer.counters, Drop.RATE_LIMITED, now, addr, peer.name,
                                  "control packets over their budget")
                        return
                elif addr != peer.endpoint:  # spent after the free checks, as natively
                    may_open = lambda: peer.may_open(addr, now)  # noqa: E731
        self.decided(core.open(data, now, may_open, addr), len(data), addr, now,
                     may_open is not None)

    def decided(self, result, size: int, addr, now: float, roaming: bool = False) -> None:
        """Act on the core's decision about one datagram of `size` bytes from `addr`; the
        native loop's authenticated keepalives and time requests come here too."""
        peers = self.peers
        if type(result) is Opened:
            peer = peers[result.client_id]
            self.streams.authenticated(addr)
            if result.kind == Kind.DATA and not self.deliver(peer, result.body, now, addr):
                return
            peer.counters.rx_packets += 1
            peer.counters.rx_bytes += size
            peer.last_rx = now
            peer.active = time.monotonic()
            if peer.endpoint != addr:
                self.new_endpoint(peer, addr)
            if result.kind == Kind.KEEPALIVE:
                # Answer in kind (same size, replay-protected) so the client can tell
                # a live server from a silent one.
                self.send_to(peer, self.core.seal(peer.id, Kind.KEEPALIVE, KEEPALIVE_BODY, now),
                             addr)
        elif type(result) is Reply:
            self.streams.authenticated(addr)
            # A time request may be a replay from an older run of the client (unknown to
            # its window): it never moves the endpoint; the answer goes to its source.
            self.send_to(peers[result.client_id], result.packet, addr)
        else:
            peer = peers.get(result.client_id)
            detail = result.detail
            if result.reason == Drop.RATE_LIMITED and roaming:
                detail = "DATA from another address over the roaming budget"
            self.drop(peer.counters if peer else None, result.reason, now, addr,
                      peer.name if peer else result.client_id, detail)

    def on_engine_event(self, kind, reason, client_id, addr, packet) -> None:
        peer = self.peers.get(client_id)
        if kind == fastpath.EV_CONTROL and peer is not None:
            # Authenticated (and, keepalives, replay-checked) by the engine's window, the
            # only one this sender has while the native loop runs.
            # (A time request's counter the engine's window has seen is dropped there;
            # UNTRUSTED says it continues no run of the client's the window knows.)
            now = self.now()
            kind = reason & ~fastpath.UNTRUSTED
            result = (self.core.time_request(client_id, packet, now,
                                             not reason & fastpath.UNTRUSTED, addr)
                      if kind == Kind.TIME_REQUEST else Opened(client_id, Kind(kind), packet))
            self.decided(result, len(packet) + OVERHEAD, addr, now)
        elif kind == fastpath.EV_ENDPOINT and peer is not None:
            self.streams.authenticated(addr)
            self.new_endpoint(peer, addr, from_engine=True)
        elif kind == fastpath.EV_DROP:
            name = peer.name if peer else (client_id or None)
            receiver = self.core.peer(client_id).receiver if peer is not None else None
            self.engine_drop(reason, client_id, addr, packet, name, receiver,
                             self.native.engine.index_of(client_id) if peer is not None else None)

    def deliver(self, peer, body, now, addr) -> bool:
        fields = ippacket.addresses(body)
        if fields is None:
            self.drop(peer.counters, Drop.BAD_PACKET, now, addr, peer.name)
            return False
        version, src, _ = fields
        if self.routes.lookup(version, src) != peer.id:
            self.drop(peer.counters, Drop.SPOOFED_SOURCE, now, addr, peer.name,
                      f"inner source {ipaddress.ip_address(src)}")
            return False
        self.write_tun(body)
        return True

    def new_endpoint(self, peer, addr, from_engine: bool = False) -> None:
        if self.native is not None and not from_engine:
            index = self.native.engine.index_of(peer.id)
            if is_stream(addr):
                self.native.engine.set_stream_endpoint(index, addr[1])
            else:
                self.native.engine.set_endpoint(index, addr[0], addr[1])
        old = peer.endpoint
        if old is None:
            log.info(kv("connected", client=peer.name, id=peer.id, endpoint=format_addr(addr)))
        else:
            peer.roams += 1
            log.info(kv("endpoint", client=peer.name, id=peer.id, old=format_addr(old),
                        new=format_addr(addr)))
        peer.endpoint = addr
        if is_stream(old) and old != addr and old[1] in self.streams.conns:
            # One connection a client: a newer one that authenticated takes over.
            self.streams.close(self.streams.conns[old[1]], "the client moved to " + format_addr(addr))
        if peer.id in self.pins.pinned:
            self.attach_filter()

    def stream_closed(self, addr, authenticated: bool, why: str) -> None:
        for peer in self.peers.values():
            if peer.endpoint == addr:  # (the engine forgot it too: daemon/streams.py)
                peer.endpoint = None
                log.info(kv("disconnected", client=peer.name, id=peer.id,
                            endpoint=format_addr(addr), why=why))

    # -- pins (daemon/pinning.py) -------------------------------------------------------------

    def tick(self, monotonic_now: float) -> None:
        if self.announcer is not None:
            self.announce(monotonic_now)
        if not self.filtering:
            return
        if self.native is not None:
            foreign = self.native.engine.foreign_counts()
        else:
            # (a reload may have removed a client the Python loop counted)
            foreign = {cid: n for cid, n in self.foreign.items() if cid in self.peers}
            self.foreign = {}
        added, removed, changed = self.pins.update(foreign, monotonic_now)
        for cid, rate in added:
            peer = self.peers[cid]
            log.warning(kv("pinned", client=peer.name, id=cid,
                           endpoint=format_addr(peer.endpoint) if peer.endpoint else "none",
                           foreign_per_s=round(rate), kept=f"1/{self.pins.pinned[cid][1]}"))
        for cid, rate in removed:
            peer = self.peers[cid]
            log.info(kv("unpinned", client=peer.name, id=cid, foreign_per_s=round(rate)))
        if changed:
            self.attach_filter()

    # -- route announcement (daemon/announce.py) ---------------------------------------------

    def announce(self, monotonic_now: float) -> None:
        """Each tick: every client's last authenticated packet, on either loop, to the
        announcer, which adds and withdraws its routes."""
        peers = self.peers
        engine = self.native.engine if self.native is not None else None
        clients = []
        for cid, peer in peers.items():
            last = peer.active
            if engine is not None:
                index = engine.index_of(cid)
                rx = engine.peer_stats(index)["last_rx"] if index >= 0 else 0
                if rx and (last is None or rx > last):
                    last = rx
            clients.append((cid, last, peer.allowed_ips))
        self.announcer.update(clients, monotonic_now, lambda cid: peers[cid].name)

    def shutdown(self) -> None:
        try:
            if self.announcer is not None:
                # A TUN of our own would take them along, a persistent one would not.
                self.announcer.withdraw_all(time.monotonic())
                self.announcer.close()
        finally:
            super().shutdown()

    def attach_filter(self) -> None:
        """The socket filter for the configured client ids, with the current pins and
        their clients' endpoints (replacing the one attached when the socket was made)."""
        if not self.filtering:
            return
        # (A TCP client's endpoint is a connection: its datagrams are all forgeries.)
        pins = {cid: (None if is_stream(self.peers[cid].endpoint) else self.peers[cid].endpoint,
                      sample)
                for cid, sample in self.pins.samples().items()}
        if not sockfilter.attach(self.sock, self.role, pins, self.peers.keys()):
            self.filtering = False  # warned; the daemon checks every packet anyway

    # -- TUN -> UDP ---------------------------------------------------------------------------

    def on_tun(self) -> None:
        routes, peers, core = self.routes, self.peers, self.core
        for _ in range(BATCH):
            try:
                packet = self.tun.read()
            except (BlockingIOError, InterruptedError):
                return
            now = self.now()
            fields = ippacket.addresses(packet)
            peer = peers.get(routes.lookup(fields[0], fields[2])) if fields else None
            if peer is None or peer.endpoint is None:
                self.counters.drops[Drop.NO_ROUTE] += 1
                continue
            if len(packet) > self.mtu:
                self.icmp_too_big(packet)
                continue
            self.send_to(peer, core.seal(peer.id, Kind.DATA, packet, now), peer.endpoint)

    def send_to(self, peer, packet, addr) -> None:
        if packet is None:  # ratchet: no key for our clock's epoch (it ran ahead of it)
            peer.counters.drops[Drop.NO_ROUTE] += 1
            return
        if self.send(packet, addr):
            peer.counters.tx_packets += 1
            peer.counters.tx_bytes += len(packet)  # on the wire: UDP payload, overhead included

    # -- control ------------------------------------------------------------------------------

    RESTART_ONLY = ("listen_host", "listen_port", "listen_tcp_host", "listen_tcp_port", "interface", "addresses", "server_id", "mtu",
                    "offload", "announce_routes", "announce_protocol")

    def reload(self) -> str | None:
        new, error = self.reread_config()
        if error:
            return error
        before = {p.id: (p.name, p.allowed_ips) for p in self.peers.values()}
        if self.native is not None:
            self.native.stop()  # the engine's tables change only while its loops stand still
        self.apply_clients(new.clients)
        # The client ids may have changed; removed clients are unpinned, and a client with
        # a new key starts without an endpoint.
        self.pins.forget([cid for cid in self.pins.pinned if cid not in self.peers])
        self.attach_filter()
        if self.native is not None:
            self.sync_native()
            self.native.start()
        self.config = new
        if self.announcer is not None:  # removed clients' routes go at the next tick
            self.announcer.plan.hold = new.announce_hold
        after = {p.id: (p.name, p.allowed_ips) for p in self.peers.values()}
        log.info("reloaded %s: %d clients (%d added, %d removed)", new.path, len(after),
                 len(after.keys() - before.keys()), len(before.keys() - after.keys()))
        return None

    def ratchet_sides(self):
        native = self.native_peers if self.native is not None else {}
        for cid, peer in self.peers.items():
            state = self.core.peer(cid)
            if state.sender.epochs is not None:
                index = self.native.engine.index_of(cid) if cid in native else None
                yield peer.name, peer.key_file, state.sender, state.receiver, index

    def start_floor(self) -> int:
        # Our own clock is the protocol clock: clients sync to it.
        return int(self.now())

    # -- the protocol clock (protocol/clock.py) ----------------------------------------------

    def follow_clock_steps(self) -> None:
        super().follow_clock_steps()
        if self.clock.follow(time.time(), steady()):
            self.set_clock_base(self.clock.base)

    def clock_step_action(self, delta: float) -> str:
        if delta > 0:
            return "the protocol clock follows; clients re-sync"
        ahead = self.clock.ahead(time.time(), steady())
        return (f"the protocol clock does not go back: {ahead:.0f} s ahead of the wall "
                f"clock, given back at {SLEW * 1000:g} ms/s")

    def restore_clock(self, saved: dict) -> None:
        ahead = saved.get(CLOCK_AHEAD, 0)
        if ahead:
            self.clock = ServerClock(time.time(), steady(), ahead)
            self.set_clock_base(self.clock.base)
            log.info(kv("clock", ahead_of_wall=f"{ahead} s",
                        why="it never goes back, and did not across this restart"))

    def newest_timestamps(self) -> dict:
        state = super().newest_timestamps()
        ahead = int(self.clock.ahead(time.time(), steady()))
        if ahead:  # changes once in 2000 s: no extra saves
            state[CLOCK_AHEAD] = ahead
        return state

    def replay_windows(self):
        # One window per sender: the engine's while the native loop runs, else the core's.
        if self.native is not None:
            engine = self.native.engine
            return [(cid, [], engine.index_of(cid)) for cid in self.peers]
        return [(cid, [self.core.peer(cid).receiver.window], None) for cid in self.peers]

    def peer_counters(self, peer) -> dict:
        """Counters of one client: the Python side's plus the native loop's."""
        if self.native is None:
            return peer.counters.as_json()
        return self.native.merged_counters(peer.counters, self.native.engine.index_of(peer.id))

    def last_rx_seconds(self, peer):
        ages = [self.now() - peer.last_rx] if peer.last_rx else []
        if self.native is not None:
            engine_rx = self.native.engine.peer_stats(self.native.engine.index_of(peer.id))["last_rx"]
            if engine_rx:
                ages.append(time.monotonic() - engine_rx)
        return round(min(ages), 3) if ages else None

    def listening(self) -> str:
        cfg = self.config
        where = []
        if cfg.listen_host is not None:
            where.append("UDP " + format_addr((cfg.listen_host, cfg.listen_port)))
        if cfg.listen_tcp_host is not None:
            where.append("TCP " + format_addr((cfg.listen_tcp_host, cfg.listen_tcp_port)))
        return " and ".join(where)

    def status(self) -> dict:
        doc = super().status()
        clients = []
        announced = self.announcer.plan if self.announcer is not None else None
        for p in sorted(self.peers.values(), key=lambda p: p.id):
            clients.append({
                "name": p.name,
                "id": p.id,
                "allowed_ips": [str(n) for n in p.allowed_ips],
                "endpoint": format_addr(p.endpoint) if p.endpoint else None,
                "transport": ("tcp" if is_stream(p.endpoint) else "udp") if p.endpoint else None,
                "last_rx_seconds": self.last_rx_seconds(p),
                "roams": p.roams,
                "pinned": p.id in self.pins.pinned,
                "announced": [str(n) for n in p.allowed_ips if n in announced.of(p.id)]
                              if announced is not None else [],
                **self.peer_counters(p),
            })
        totals = doc["totals"]  # drops are counted globally; traffic per client: add it up
        for key in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes"):
            totals[key] = sum(c[key] for c in clients)
        doc.update({
            "listen": (format_addr((self.config.listen_host, self.config.listen_port))
                       if self.config.listen_host is not None else None),
            "listen_tcp": (format_addr((self.config.listen_tcp_host, self.config.listen_tcp_port))
                           if self.config.listen_tcp_host is not None else None),
            "tcp": self.streams.status() if self.streams.listener is not None else None,
            "server_id": self.config.server_id,
            "announce": ({"protocol": self.announcer.routes.protocol,
                          "hold": announced.hold} if announced is not None else None),
            "clients": clients,
        })
        return doc

    def dump_stats(self) -> None:
        super().dump_stats()
        for peer in self.peers.values():
            counters = self.peer_counters(peer)
            if not counters["rx_packets"] and not counters["tx_packets"]:
                continue
            endpoint = format_addr(peer.endpoint) if peer.endpoint else "none"
            log.info(kv("peer", client=peer.name, id=peer.id, endpoint=endpoint,
                        roams=peer.roams, **flatten(counters)))


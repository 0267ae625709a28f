"""A client with several servers (issue 18): each server its own peer, one in use.

`server = A, B, ...` with `server_id = 1, 2, ...`: every server is a peer of its own,
with its own session (keys bound to its server id), UDP socket, resolved address,
protocol clock (time sync per server), replay window and saved replay state (key
`server-<id>`). The packet path is the single-server client's (client.py), pointed at
the server in use; moving to another server rebuilds the native engine for it (its
slot 0) and carries each server's window across in that server's own store.
protocol/failover.py decides when to move. The servers not in use are probed with
time requests on their own sockets (untimed, answered only by a live server holding
our key; they never move a server's idea of our endpoint nor announce our routes);
what else comes from there (a server we left may still carry a LAN host's packets to
us until its routes go) is judged by that server's own window. docs/OPERATING.md,
"Several servers".
"""

import os
import selectors
import socket
import time

from ..protocol.failover import Failover
from ..protocol.session import ClientSession, Opened
from ..protocol.wire import KEEPALIVE_BODY, Kind
from . import fastpath
from .client import Client, resolve
from .keystate import install
from .logs import kv, log
from .runtime import BATCH, format_addr, steady

IDLE_KEEPALIVE = 1  # seconds: an idle client's keepalive, so a dead server is noticed
# Sending, unanswered this long: a keepalive, so a one-way stream still gets answers
# (the failover silence, protocol/failover.py, is three times this).
LIVENESS = 0.5


class Slot:
    """One configured server and everything the client keeps for it."""

    __slots__ = ("index", "host", "port", "id", "session", "python_sender", "sock", "server",
                 "base", "synced", "window", "resolving", "resolved")

    def __init__(self, index, host, port, server_id, session, base):
        self.index, self.host, self.port, self.id = index, host, port, server_id
        self.session = session
        self.python_sender = session.sender  # the session's own, while the engine has none
        self.sock = None
        self.server = None  # (family, sockaddr)
        self.base = base  # this server's protocol clock: steady() + base
        self.synced = False
        self.window = None  # the engine's window_state of this server, kept across moves
        self.resolving = False
        self.resolved = None

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class MultiClient(Client):
    def __init__(self, config, crypto=None):
        super().__init__(config, crypto)
        servers = config.server_list()
        self.slots = [Slot(0, *servers[0], self.session, self.clock_base)]
        for i, (host, port, server_id) in enumerate(servers[1:], start=1):
            # One key (or one ratchet: the same chain, keys bound to each server id).
            session = ClientSession(config.id, server_id, config.key, self.context_class)
            self.slots.append(Slot(i, host, port, server_id, session, self.clock_base))
        self.slot = self.slots[0]
        self.failover = Failover(len(self.slots))
        self.switches = 0
        if config.keepalive:  # `keepalive` sets NAT keepalives; failover needs them sooner
            self.config = config.__class__(**{**config.__dict__,
                                              "keepalive": min(config.keepalive, IDLE_KEEPALIVE)})
        self.ratchets.step(self.now(), False)

    # -- set-up -------------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        for slot in self.slots:  # each entry resolves on its own
            try:
                slot.server = resolve(slot.host, slot.port)
            except OSError as e:
                log.warning(kv("resolve-failed", server=slot.host, error=e.strerror or e))
        first = self.slot.server
        resolved = [s.server for s in self.slots if s.server]
        # The tunnel's packets must fit the path to whichever server carries them.
        mtu = cfg.mtu or (min(self.default_mtu(family, addr[0]) for family, addr in resolved)
                          if resolved else self.default_mtu(socket.AF_INET, None))
        self.open_tun(mtu, cfg.routes)
        for slot in self.slots:
            slot.sock = self._socket_for(slot)
        self.server, self.sock = first, self.slot.sock
        self.open_control()
        for slot in self.slots[1:]:
            self._listen_probes(slot)
        if fastpath.wanted(self.crypto_path):
            self.build_native()
        log.info(
            "client started: id %d, interface %s (%s, mtu %d), servers %s, "
            "keepalive %s, crypto %s, %s",
            cfg.id, self.tun.name, ", ".join(str(a) for a in cfg.addresses), mtu,
            ", ".join(f"{s.label} ({format_addr(s.server[1]) if s.server else 'unresolved'}) "
                      f"id {s.id}" for s in self.slots),
            f"{cfg.keepalive} s" if cfg.keepalive else "off", self.crypto_description(),
            self.native.describe() if self.native else "Python loop",
        )

    def _socket_for(self, slot):
        family = slot.server[0] if slot.server else socket.AF_INET
        return self.make_socket(family, ("::" if family == socket.AF_INET6 else "0.0.0.0", 0))

    def _listen_probes(self, slot) -> None:
        self.selector.register(slot.sock, selectors.EVENT_READ, lambda: self.on_probe_socket(slot))

    def build_native(self) -> None:
        """The native loop for the server in use (Client.build_native, with its server id
        and its own window)."""
        slot = self.slot
        self.native = fastpath.NativePath(self.tun, self.sock, False, slot.id)
        engine = self.native.engine
        sender = slot.python_sender
        engine.add_peer(self.config.id, sender.ctx, slot.session.receiver.ctx, sender.counter)
        if slot.window is not None:
            engine.load_window_state(0, slot.window)
        elif slot.session.receiver.window.newest is not None:  # a floor (restored, first sync)
            engine.restore_window(0, slot.session.receiver.window.newest)
        if sender.epochs is not None:
            install(engine, 0, sender, slot.session.receiver)
        slot.session.sender = fastpath.EngineSender(engine, 0, False, sender.epochs)
        engine.clock_offset = self.clock_base
        engine.hold_tx = not self.synced
        if self.server:
            engine.set_endpoint(0, self.server[1][0], self.server[1][1])

    # -- the servers not in use -------------------------------------------------------------

    def now_of(self, slot) -> float:
        return steady() + slot.base if slot is not self.slot else self.now()

    def probe(self, slot, mono: float) -> None:
        """A time request to a server not in use: its answer says it is alive and gives
        its clock."""
        self.failover.sent(slot.index, mono)
        if slot.server is None:
            return  # unresolved: unanswered, so it counts as down
        packet = slot.session.time_request(self.now_of(slot))
        try:
            slot.sock.sendto(packet, slot.server[1])
        except OSError:
            return
        self.counters.tx_packets += 1
        self.counters.tx_bytes += len(packet)

    def on_probe_socket(self, slot) -> None:
        """Datagrams from a server not in use: the answers to our probes, and what it may
        still send us for a while after we left it (a LAN host's traffic, while its
        routes to us still lead there), judged by that server's own window."""
        for _ in range(BATCH):
            try:
                data, addr = slot.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            if slot is self.slot:  # moved to it since (the Python loop reads it now)
                self.handle_datagram(data, addr)
                continue
            if self.over_control_budget(data, addr):
                continue
            now = self.now_of(slot)
            result = slot.session.open(data, now)
            if type(result) is not Opened:
                self.drop(self.counters, result.reason, now, addr, None, result.detail)
                continue
            self.counters.rx_packets += 1
            self.counters.rx_bytes += len(data)
            if result.kind == Kind.TIME_RESPONSE:
                slot.base += result.clock_offset
                if not slot.synced:
                    slot.synced = True
                    self._floor(slot)
                    log.info(kv("clock-sync", server=slot.label, note="server not in use",
                                correction=f"{result.clock_offset:+.3f}s"))
            else:
                # The session's window moved past the engine's saved one: from now on
                # it is this server's window (build_native restores from it).
                slot.window = None
                if result.kind == Kind.DATA:
                    self.write_tun(result.body)
            self.failover.answered(slot.index, time.monotonic())

    def _floor(self, slot) -> None:
        """At a server's first sync: nothing it sent before our start in its clock is
        accepted (Client.floor_at_first_sync, per server)."""
        window = slot.session.receiver.window
        floor = int(self.now_of(slot))
        if slot is self.slot and self.native is not None:
            newest = self.native.engine.window_newest(0)
            if newest is None or newest < floor:
                self.native.engine.restore_window(0, floor)
        elif slot.window is None and (window.newest is None or window.newest < floor):
            window.restore(floor)

    def floor_at_first_sync(self) -> None:
        self._floor(self.slot)

    def apply_clock(self, correction: float) -> None:
        super().apply_clock(correction)
        self.slot.base, self.slot.synced = self.clock_base, True

    # -- moving between servers -------------------------------------------------------------

    def tick(self, mono: float) -> None:
        failover = self.failover
        last_rx, pending = self.answers()
        if last_rx is not None:
            failover.answered(failover.current, last_rx)
        if pending is not None:
            failover.sent(failover.current, pending)
        current = failover.current
        reason = (f"no answer for {failover.silence:g} s" if failover.down(current, mono)
                  else f"preferred, answering for {failover.hold:g} s")
        target = failover.decide(mono)
        if target is not None:
            self.switch(target, mono, reason)
            last_rx, pending = self.answers()
        for i in failover.probes_due(mono):
            self.probe(self.slots[i], mono)
        if (pending is not None and mono - pending >= LIVENESS and mono - self.last_tx >= LIVENESS
                and self.server and self.synced):
            self.send_sealed(Kind.KEEPALIVE, KEEPALIVE_BODY, mono)
        super().tick(mono)

    def switch(self, target: int, mono: float, reason: str) -> None:
        old, new = self.slot, self.slots[target]
        old.base, old.synced = self.clock_base, self.synced
        native = self.native is not None
        if native:
            self.native.stop()
            self.selector.unregister(self.native.events)
            engine = self.native.engine
            old.window = engine.window_state(0)
            newest = engine.window_newest(0)
            if newest is not None:  # what `show`, the replay state and a restart see
                old.session.receiver.window.restore(newest)
            stats = engine.peer_stats(0)
            for key in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes"):
                setattr(self.counters, key, getattr(self.counters, key) + stats[key])
            for reason_code, n in engine.global_drops().items():
                self.counters.drops[reason_code] += n
            self.native.close()
            self.native = None
        # The engine's counter is gone with it: probes start a new run, as a restart does.
        old.session.sender = old.python_sender
        old.python_sender.counter = int.from_bytes(os.urandom(4), "big")
        self.slot = new
        self.session, self._python_sender = new.session, new.python_sender
        self.server, self.sock = new.server, new.sock
        self.synced = new.synced
        self.sync_attempt = 0
        self.last_rx = self.unanswered_since = None
        self._engine_data = (0, 0)
        self.set_clock_base(new.base)
        if native:
            self.selector.unregister(new.sock)
            self._listen_probes(old)
            self.build_native()
            self.selector.register(self.native.events, selectors.EVENT_READ, self.on_native_events)
            self.native.engine.mtu = self.mtu
            self.native.start()
        else:
            self.selector.modify(old.sock, selectors.EVENT_READ, lambda: self.on_probe_socket(old))
            self.selector.modify(new.sock, selectors.EVENT_READ, self.on_udp)
        self.switches += 1
        log.warning(kv("server-switch", old=old.label, new=new.label, server_id=new.id,
                       reason=reason,
                       clock="synced" if new.synced else "not synced yet"))
        self.request_sync(mono)  # the clock of the server now in use, at once

    # -- names --------------------------------------------------------------------------------

    def start_resolve(self, mono: float) -> None:
        """Every server's name, each in a thread of its own (Client.start_resolve)."""
        self.next_resolve = mono + 300.0
        for slot in self.slots:
            if slot.resolving:
                continue
            slot.resolving = True

            def store(result, slot=slot):
                slot.resolved = result
                slot.resolving = False

            self.in_background(lambda slot=slot: resolve(slot.host, slot.port), store)

    def finish_resolve(self) -> None:
        for slot in getattr(self, "slots", ()):
            result, slot.resolved = slot.resolved, None
            if result is None:
                continue
            if isinstance(result, OSError):
                log.warning(kv("resolve-failed", server=slot.host, error=result.strerror or result))
                self.next_resolve = min(self.next_resolve, time.monotonic() + 5.0)
                continue
            if result == slot.server:
                continue
            log.info(kv("server-address", server=slot.host,
                        old=format_addr(slot.server[1]) if slot.server else "none",
                        new=format_addr(result[1])))
            family_changed = slot.server is None or result[0] != slot.server[0]
            slot.server = result
            if slot is not self.slot:
                if family_changed:
                    self.selector.unregister(slot.sock)
                    slot.sock.close()
                    slot.sock = self._socket_for(slot)
                    self._listen_probes(slot)
                continue
            self.server = result
            if family_changed:
                if self.native is not None:
                    self.native.stop()
                    self.selector.unregister(self.native.events)
                    slot.window = self.native.engine.window_state(0)
                    self.native.close()
                    self.native = None
                    self.sock.close()
                    self.sock = slot.sock = self._socket_for(slot)
                    slot.session.sender = slot.python_sender
                    self.build_native()
                    self.selector.register(self.native.events, selectors.EVENT_READ,
                                           self.on_native_events)
                    self.native.engine.mtu = self.mtu
                    self.native.start()
                else:
                    self.replace_socket(self._socket_for(slot))
                    slot.sock = self.sock
            elif self.native is not None:
                self.native.engine.set_endpoint(0, result[1][0], result[1][1])
            self.request_sync(time.monotonic())

    def reload(self) -> str | None:
        new, error = self.reread_config()
        if error:
            return error
        if new.server_list() != self.config.server_list():
            log.warning("reload: 'server' or 'server_id' changed; the list of servers takes "
                        "effect after a restart")
        keepalive = min(new.keepalive, IDLE_KEEPALIVE) if new.keepalive else 0
        self.config = self.config.__class__(**{**self.config.__dict__, "keepalive": keepalive})
        log.info("reloaded %s; re-resolving the servers", new.path)
        self.start_resolve(time.monotonic())
        return None

    # -- state --------------------------------------------------------------------------------

    def ratchet_sides(self):
        # One chain, one key file: every server's session holds the same Ratchet, so the
        # file is written once when it moves (daemon/keystate.py keys saves by path).
        for slot in getattr(self, "slots", ()):
            if slot.python_sender.epochs is not None:
                index = 0 if self.native is not None and slot is self.slot else None
                yield (f"server-{slot.id}", self.config.key_file, slot.python_sender,
                       slot.session.receiver, index)

    def replay_windows(self):
        # One window per server, saved under its id: the engine's for the one in use
        # while the native loop runs, the session's otherwise (holding, for a server left
        # behind, the newest it sent: a floor).
        out = []
        for slot in self.slots:
            if self.native is not None and slot is self.slot:
                out.append((f"server-{slot.id}", [], 0))
            else:
                out.append((f"server-{slot.id}", [slot.session.receiver.window], None))
        return out

    def status(self) -> dict:
        doc = super().status()
        mono = time.monotonic()
        failover = self.failover
        doc.update({"server": self.slot.label, "server_id": self.slot.id,
                    "switches": self.switches})
        servers = []
        for slot in self.slots:
            last = failover.last_answer[slot.index]
            servers.append({
                "server": slot.label,
                "server_id": slot.id,
                "endpoint": format_addr(slot.server[1]) if slot.server else None,
                "state": failover.state(slot.index, mono),
                "clock_synced": slot.synced if slot is not self.slot else self.synced,
                "last_answer_seconds": round(mono - last, 3) if last else None,
            })
        doc["servers"] = servers
        return doc

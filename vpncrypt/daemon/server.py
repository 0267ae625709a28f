"""The server daemon: many clients, each routed by its allowed IPs and reached at its newest endpoint."""

import ipaddress
import socket
import time

from .. import config as configmod
from ..protocol.session import Opened, Reply, ServerCore
from ..protocol.wire import KEEPALIVE_BODY, Drop, Kind
from . import ippacket
from .logs import kv, log
from .routing import AllowedIPs
from .runtime import BATCH, Counters, Runtime, format_addr


class PeerState:
    """What the server knows about one client besides its crypto state."""

    __slots__ = ("name", "id", "allowed_ips", "endpoint", "last_rx", "roams", "counters")

    def __init__(self, entry):
        self.name = entry.name
        self.id = entry.id
        self.allowed_ips = entry.allowed_ips
        self.endpoint = None
        self.last_rx = None
        self.roams = 0
        self.counters = Counters()


class Server(Runtime):
    role = "server"

    def __init__(self, config, crypto=None):
        super().__init__(config, crypto)
        self.core = ServerCore(config.server_id, self.context_class)
        self.peers = {}
        self.apply_clients(config.clients)

    def apply_clients(self, entries) -> None:
        """Install the client table; entries whose key and addresses did not change keep
        their endpoint, counters and replay state."""
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

    def start(self) -> None:
        cfg = self.config
        family = socket.AF_INET6 if ":" in cfg.listen_host else socket.AF_INET
        mtu = cfg.mtu or self.default_mtu(family, None)
        self.open_tun(mtu)
        self.sock = self.make_socket(family, (cfg.listen_host, cfg.listen_port))
        self.open_control()
        addrs = ", ".join(str(a) for a in cfg.addresses)
        log.info(
            "server started: interface %s (%s, mtu %d), listening on %s, server id %d, "
            "%d clients, crypto %s",
            self.tun.name, addrs, mtu, format_addr((cfg.listen_host, cfg.listen_port)),
            cfg.server_id, len(self.peers), self.crypto_description(),
        )

    # -- UDP -> TUN ---------------------------------------------------------------------------

    def on_udp(self) -> None:
        sock, core, peers = self.sock, self.core, self.peers
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            now = time.time()
            result = core.open(data, now)
            if type(result) is Opened:
                peer = peers[result.client_id]
                if result.kind == Kind.DATA:
                    if not self.deliver(peer, result.body, now, addr):
                        continue
                peer.counters.rx_packets += 1
                peer.counters.rx_bytes += len(data)
                peer.last_rx = now
                if peer.endpoint != addr:
                    self.new_endpoint(peer, addr)
                if result.kind == Kind.KEEPALIVE:
                    # Answer in kind (same size, replay-protected) so the client can tell
                    # a live server from a silent one.
                    self.send_to(peer, core.seal(peer.id, Kind.KEEPALIVE, KEEPALIVE_BODY, now), addr)
            elif type(result) is Reply:
                # Time-sync requests are not replay-protected, so they never move the endpoint.
                self.send_to(peers[result.client_id], result.packet, addr)
            else:
                peer = peers.get(result.client_id)
                self.drop(peer.counters if peer else None, result.reason, now, addr,
                          peer.name if peer else result.client_id, result.detail)

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

    def new_endpoint(self, peer, addr) -> None:
        if peer.endpoint is None:
            log.info(kv("connected", client=peer.name, id=peer.id, endpoint=format_addr(addr)))
        else:
            peer.roams += 1
            log.info(kv("endpoint", client=peer.name, id=peer.id,
                        old=format_addr(peer.endpoint), new=format_addr(addr)))
        peer.endpoint = addr

    # -- TUN -> UDP ---------------------------------------------------------------------------

    def on_tun(self) -> None:
        routes, peers, core = self.routes, self.peers, self.core
        for _ in range(BATCH):
            try:
                packet = self.tun.read()
            except (BlockingIOError, InterruptedError):
                return
            now = time.time()
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
        if self.send(packet, addr):
            peer.counters.tx_packets += 1
            peer.counters.tx_bytes += len(packet)  # on the wire: UDP payload, overhead included

    # -- control ------------------------------------------------------------------------------

    def reload(self) -> str | None:
        try:
            new = configmod.load(self.config.path)
            if new.role != "server":
                raise configmod.ConfigError(f"{self.config.path}: is no longer a server configuration")
        except configmod.ConfigError as e:
            log.error("reload failed, keeping the running configuration: %s", e)
            return str(e)
        for what in ("listen_host", "listen_port", "interface", "addresses", "server_id", "mtu"):
            if getattr(new, what) != getattr(self.config, what):
                log.warning("reload: '%s' changed; it takes effect after a restart", what)
        before = {p.id: (p.name, p.allowed_ips) for p in self.peers.values()}
        self.apply_clients(new.clients)
        self.config = new
        after = {p.id: (p.name, p.allowed_ips) for p in self.peers.values()}
        log.info("reloaded %s: %d clients (%d added, %d removed)", new.path, len(after),
                 len(after.keys() - before.keys()), len(before.keys() - after.keys()))
        return None

    def status(self) -> dict:
        doc = super().status()
        now = time.time()
        totals = doc["totals"]  # drops are counted globally; traffic per client: add it up
        for key in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes"):
            totals[key] = sum(getattr(p.counters, key) for p in self.peers.values())
        doc.update({
            "listen": format_addr((self.config.listen_host, self.config.listen_port)),
            "server_id": self.config.server_id,
            "clients": [{
                "name": p.name,
                "id": p.id,
                "allowed_ips": [str(n) for n in p.allowed_ips],
                "endpoint": format_addr(p.endpoint) if p.endpoint else None,
                "last_rx_seconds": round(now - p.last_rx, 3) if p.last_rx else None,
                "roams": p.roams,
                **p.counters.as_json(),
            } for p in sorted(self.peers.values(), key=lambda p: p.id)],
        })
        return doc

    def dump_stats(self) -> None:
        super().dump_stats()
        for peer in self.peers.values():
            if peer.last_rx is None and not peer.counters.tx_packets:
                continue
            endpoint = format_addr(peer.endpoint) if peer.endpoint else "none"
            log.info(kv("peer", client=peer.name, id=peer.id, endpoint=endpoint,
                        roams=peer.roams, **peer.counters.summary()))


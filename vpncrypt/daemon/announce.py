"""Route announcement (``[server] announce_routes``, issue 18): which clients'
``allowed_ips`` networks have a kernel route through the tunnel interface.

A server keeps a route for each network of every active client, with its own route
protocol number, so that a routing daemon on the host (BIRD, FRR) can pick exactly
those up and redistribute them; several servers carrying the same clients then each
announce the clients they hear from, with nothing shared at run time. A client is
active from its first authenticated packet until `hold` seconds after its last one; a
client that moved to another server stops sending here, so silence covers that too.

Three parts:

* `Announcements`: the decisions, sans-IO. Given each client's last authenticated
  activity (monotonic seconds) and `now`, which routes to add and which to withdraw;
  it records what was actually installed, so a failed add is simply tried again.
* `RouteSocket`: a minimal rtnetlink client for one interface and protocol number
  (add, delete, list and flush). Standard library only: the daemon never loads
  pyroute2 (~20 MB, see tun/netlink.py), and after the privilege drop only the
  daemon's own thread keeps CAP_NET_ADMIN, which a helper process would not inherit.
* `Announcer`: the two together, as the server's tick uses them, with the logging.
"""

import errno
import ipaddress
import os
import socket
import struct
import sys

from .logs import kv, log

# <linux/netlink.h>, <linux/rtnetlink.h>
NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTA_DST, RTA_OIF, RTA_TABLE = 1, 4, 15
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RT_TABLE_MAIN = 254

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")  # len, type
_ERRNO = struct.Struct("=i")
_U32 = struct.Struct("=I")
_RECV_SIZE = 1 << 16  # more than one dump part (the kernel fills at most ~32 KB)
_TIMEOUT = 2.0  # seconds a kernel answer may take before the tick gives up on it
RESYNC = 30.0  # seconds between checks that the kernel still has the routes we added


def supported() -> bool:
    """Route announcement needs rtnetlink: Linux only (FreeBSD's routing socket is not
    implemented)."""
    return sys.platform.startswith("linux")


def _joined(networks) -> str:
    """Networks for a log line: IPv4 first, each family in address order."""
    return ",".join(str(n) for n in sorted(networks, key=lambda n: (n.version, n)))


def _attr(kind: int, data: bytes) -> bytes:
    size = _RTATTR.size + len(data)
    return _RTATTR.pack(size, kind) + data + bytes(-size % 4)


def _attrs(data: bytes, offset: int):
    """(type, payload) of each rtattr in data[offset:]."""
    while offset + _RTATTR.size <= len(data):
        size, kind = _RTATTR.unpack_from(data, offset)
        if size < _RTATTR.size:
            return
        yield kind, data[offset + _RTATTR.size : offset + size]
        offset += (size + 3) & ~3


class RouteSocket:
    """Routes through one interface with one protocol number, in the main table."""

    def __init__(self, ifname: str, protocol: int):
        self.ifname, self.protocol = ifname, protocol
        self.index = socket.if_nametoindex(ifname)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)
        try:
            self.sock.bind((0, 0))  # no multicast groups: only answers to our requests
            self.sock.settimeout(_TIMEOUT)
        except OSError:
            self.sock.close()
            raise
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def _rtmsg(self, net, scope: int, kind: int) -> bytes:
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        return (_RTMSG.pack(family, net.prefixlen, 0, 0, RT_TABLE_MAIN, self.protocol, scope,
                            kind, 0)
                + _attr(RTA_DST, net.network_address.packed)
                + _attr(RTA_OIF, _U32.pack(self.index)))

    def _send(self, kind: int, flags: int, payload: bytes) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        self.sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(payload), kind, flags, self.seq, 0)
                       + payload)
        return self.seq

    def _answers(self, seq: int):
        """The messages answering request `seq`, as (type, flags, message bytes), until
        its acknowledgement or the end of its dump; an error raises OSError."""
        while True:
            data = self.sock.recv(_RECV_SIZE)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                size, kind, flags, mseq, _ = _NLMSGHDR.unpack_from(data, offset)
                if size < _NLMSGHDR.size:
                    break
                message = data[offset : offset + size]
                offset += (size + 3) & ~3
                if mseq != seq:
                    continue  # the late answer to a request that timed out
                if kind == NLMSG_ERROR:
                    (code,) = _ERRNO.unpack_from(message, _NLMSGHDR.size)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return
                if kind == NLMSG_DONE:
                    return
                yield kind, flags, message
                if not flags & NLM_F_MULTI:
                    return

    def add(self, net) -> None:
        """Route `net` through the interface; OSError(EEXIST) if a route to exactly
        `net` (ours or anyone's) is there already: nobody's route is replaced."""
        # The scope `ip route add NET dev IF` gives.
        scope = RT_SCOPE_LINK if net.version == 4 else RT_SCOPE_UNIVERSE
        seq = self._send(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                         self._rtmsg(net, scope, RTN_UNICAST))
        for _ in self._answers(seq):
            pass

    def delete(self, net) -> bool:
        """Delete our route to `net` (the kernel matches the protocol number, so nobody
        else's); False if there was none (gone with the interface's link, or never added)."""
        seq = self._send(RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK,
                         self._rtmsg(net, RT_SCOPE_NOWHERE, RTN_UNICAST))
        try:
            for _ in self._answers(seq):
                pass
        except OSError as e:
            if e.errno == errno.ESRCH:
                return False
            raise
        return True

    def ours(self) -> list:
        """Every main-table route with our protocol number through our interface."""
        found = []
        for family in (socket.AF_INET, socket.AF_INET6):
            seq = self._send(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP,
                             _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))
            for kind, _, message in self._answers(seq):
                if kind != RTM_NEWROUTE:
                    continue
                fam, dst_len, _, _, table, protocol, _, _, _ = _RTMSG.unpack_from(
                    message, _NLMSGHDR.size)
                if protocol != self.protocol:
                    continue
                dst, oif = None, None
                for attr, value in _attrs(message, _NLMSGHDR.size + _RTMSG.size):
                    if attr == RTA_DST:
                        dst = value
                    elif attr == RTA_OIF and len(value) == 4:
                        (oif,) = _U32.unpack(value)
                    elif attr == RTA_TABLE and len(value) == 4:
                        (table,) = _U32.unpack(value)
                if oif != self.index or table != RT_TABLE_MAIN:
                    continue
                width = 4 if fam == socket.AF_INET else 16
                address = int.from_bytes(dst or bytes(width), "big")
                cls = ipaddress.IPv4Network if fam == socket.AF_INET else ipaddress.IPv6Network
                found.append(cls((address, dst_len)))
        return found

    def flush(self) -> list:
        """Delete every route `ours()` lists; return those networks."""
        stale = self.ours()
        for net in stale:
            self.delete(net)
        return stale


class Announcements:
    """Which client networks should have a route, against which have one (sans-IO)."""

    def __init__(self, hold: float):
        self.hold = hold
        self.installed = {}  # network -> client id whose route is in the kernel
        self.by_client = {}  # client id -> its networks in installed
        # (network, client id) whose add found someone else's route to that network:
        # not tried again until the client is inactive or no longer owns the network.
        self.refused = set()

    def plan(self, clients, now: float):
        """`clients`: (client id, monotonic time of its last authenticated packet or
        None, its allowed_ips) for every configured client. Returns (adds, withdraws),
        each a list of (network, client id), to be applied withdraws first: a network a
        reload gave to another client is withdrawn, then added for its new owner."""
        hold = self.hold
        wanted = {}
        for cid, last, networks in clients:
            if last is not None and now - last < hold:
                for net in networks:
                    wanted[net] = cid
        installed = self.installed
        if self.refused:
            self.refused = {(net, cid) for net, cid in self.refused if wanted.get(net) == cid}
        withdraws = [(net, cid) for net, cid in installed.items() if wanted.get(net) != cid]
        adds = [(net, cid) for net, cid in wanted.items()
                if installed.get(net) != cid and (net, cid) not in self.refused]
        return adds, withdraws

    def added(self, net, cid: int) -> None:
        self.installed[net] = cid
        self.by_client.setdefault(cid, set()).add(net)

    def refuse(self, net, cid: int) -> None:
        """The add of `net` found a route that is not ours: leave it to its owner."""
        self.refused.add((net, cid))

    def withdrawn(self, net) -> None:
        cid = self.installed.pop(net, None)
        networks = self.by_client.get(cid)
        if networks is not None:
            networks.discard(net)
            if not networks:
                del self.by_client[cid]

    def of(self, cid: int) -> set:
        """The networks of client `cid` that have a route now."""
        return self.by_client.get(cid, set())


class AnnounceError(Exception):
    """Route announcement cannot start here; str() is one line for the operator."""


class Announcer:
    """The server's side: flushes what a killed daemon left, applies each tick's plan,
    withdraws everything at a stop, and logs what it did."""

    def __init__(self, ifname: str, protocol: int, hold: float, limiter):
        if not supported():
            raise AnnounceError(f"announce_routes = yes needs Linux (rtnetlink); it is not "
                                f"implemented on {sys.platform}")
        try:
            self.routes = RouteSocket(ifname, protocol)
        except OSError as e:
            raise AnnounceError(f"announce_routes: cannot open a route socket for {ifname}: "
                                f"{e.strerror or e}") from None
        self.plan = Announcements(hold)
        self.names = {}  # client id -> name when its routes were added (for later lines)
        self.limiter = limiter  # daemon.logs.RateLimiter: a failure at most every 10 s
        self.checked = None  # monotonic time of the last resync()
        try:
            stale = self.routes.flush()
        except OSError as e:
            self.routes.close()
            raise AnnounceError(f"announce_routes: cannot remove stale routes of protocol "
                                f"{protocol} on {ifname}: {e.strerror or e}") from None
        if stale:
            # Only a persistent TUN keeps them after a kill -9: a daemon's own TUN
            # disappears with its routes when the process dies.
            log.info(kv("withdrawn", routes=_joined(stale),
                        reason="left-by-earlier-run"))

    def update(self, clients, now: float, names) -> None:
        """One tick: `clients` as for Announcements.plan (a list), `names(client id)` the
        name of a configured client; `now` on the monotonic clock."""
        if self.plan.installed and (self.checked is None or now - self.checked >= RESYNC):
            self.checked = now
            self.resync()
        adds, withdraws = self.plan.plan(clients, now)
        if withdraws:
            owned = {cid: networks for cid, _, networks in clients}
            self._withdraw(withdraws, now,
                           lambda net, cid: ("removed" if cid not in owned else
                                             "silent" if net in owned[cid] else "reconfigured"))
        done = {}
        for net, cid in adds:
            try:
                self.routes.add(net)
            except OSError as e:
                if e.errno == errno.EEXIST:
                    self.plan.refuse(net, cid)  # logged once, not retried every tick
                    self._failed(net, cid, names(cid), "add",
                                 "a route to it exists already (not ours): left alone")
                elif self.limiter.allow(("announce", net), now) is not None:
                    # e.g. the link not up yet (configure_interface = no): next tick
                    self._failed(net, cid, names(cid), "add", e.strerror or str(e))
                continue
            self.plan.added(net, cid)
            done.setdefault(cid, []).append(net)
        for cid, nets in done.items():
            self.names[cid] = names(cid)
            log.info(kv("announced", client=self.names[cid], id=cid,
                        routes=_joined(nets)))

    def resync(self) -> None:
        """Forget routes the kernel no longer has, so that this tick adds them again:
        taking the interface down deletes its routes, and so can an operator."""
        try:
            present = set(self.routes.ours())
        except OSError:
            return  # next time
        for net in [net for net in self.plan.installed if net not in present]:
            self.plan.withdrawn(net)

    def _withdraw(self, withdraws, now: float, reason) -> None:
        gone = {}
        for net, cid in withdraws:
            try:
                self.routes.delete(net)  # False: already gone (with the link): all the same
            except OSError as e:
                if self.limiter.allow(("announce", net), now) is not None:
                    self._failed(net, cid, self.names.get(cid, cid), "delete",
                                 e.strerror or str(e))
                continue
            self.plan.withdrawn(net)
            gone.setdefault((cid, reason(net, cid)), []).append(net)
        for (cid, why), nets in gone.items():
            log.info(kv("withdrawn", client=self.names.get(cid, cid), id=cid,
                        routes=_joined(nets), reason=why))
            if cid not in self.plan.by_client:
                self.names.pop(cid, None)

    def _failed(self, net, cid, name, action: str, error: str) -> None:
        log.warning(kv("announce-failed", client=name, id=cid, route=str(net),
                       action=action, error=error))

    def withdraw_all(self, now: float) -> None:
        """At a stop: every route we installed."""
        self._withdraw(list(self.plan.installed.items()), now,
                       lambda net, cid: "stopping")

    def close(self) -> None:
        self.routes.close()

"""Section rules: the layout (one [server] plus [client NAME] peers, or one [client]),
the keys each section takes, their defaults and ranges, and the cross-checks between
sections (unique client ids and keys, non-overlapping allowed_ips, no client owning
the server's own tunnel address)."""

from __future__ import annotations

import re

from .errors import _show
from .ini import _Context, _section_label
from ..protocol.session import key_identity
from .records import (DEFAULT_ANNOUNCE_HOLD, DEFAULT_ANNOUNCE_PROTOCOL, ClientConfig, Peer,
                      ServerConfig)
from .values import (_Section, _addresses, _endpoint, _interface, _key, _key_path, _mtu,
                     _networks, _parse_endpoint, _state_dir, _user)

DEFAULT_KEEPALIVE = 25  # seconds
MAX_KEEPALIVE = 3600
MAX_CLIENT_ID = 0xFFFF  # 16 bits on the wire; 0 is reserved
MAX_SERVER_ID = 0xFFFFFFFF
MAX_ANNOUNCE_HOLD = 86400
# 0-4 are the kernel's own route protocols (unspec, redirect, kernel, boot, static):
# refused, because a start flushes every route of this number on the tunnel interface.
MIN_ANNOUNCE_PROTOCOL, MAX_ANNOUNCE_PROTOCOL = 5, 255

SERVER_KEYS = (
    "listen", "listen_tcp", "interface", "address", "server_id", "mtu", "user", "state_dir",
    "offload", "configure_interface", "announce_routes", "announce_hold", "announce_protocol",
)
PEER_KEYS = ("id", "key", "key_file", "ratchet", "allowed_ips")
CLIENT_KEYS = (
    "id", "server", "server_id", "transport", "key", "key_file", "ratchet", "interface",
    "address",
    "routes", "keepalive", "mtu", "user", "state_dir", "offload", "configure_interface",
)

_CLIENT_HEADER = re.compile(r"client\s+(?P<name>.*)", re.S)
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}")


def _build(ctx: _Context, sections: dict[str, dict[str, str]]):
    server = None
    bare_client = None
    named: list[tuple[str, str]] = []  # (header, name)
    for header in sections:
        kind = header.strip()
        if kind in ("server", "client") and (server if kind == "server" else bare_client):
            first = ctx.section_lines.get(server if kind == "server" else bare_client)
            raise ctx.error(
                f"duplicate section [{kind}] (first at line {first})",
                line=ctx.section_lines.get(header),
            )
        if kind == "server":
            server = header
        elif kind == "client":
            bare_client = header
        elif (mo := _CLIENT_HEADER.fullmatch(kind)) is not None:
            named.append((header, mo.group("name").strip()))
        else:
            raise ctx.error(
                f"unknown section {_section_label(header)} (expected [server] with [client NAME] "
                "peers, or a single [client])",
                line=ctx.section_lines.get(header),
            )
    if server is not None and bare_client is not None:
        raise ctx.error(
            "a file is either a server config ([server] and [client NAME] peers) or a "
            "client config (one [client]), not both",
            line=ctx.section_lines.get(bare_client),
        )
    if server is None and bare_client is None:
        if named:
            header = named[0][0]
            raise ctx.error(
                f"[{header}] needs a [server] section ([client NAME] sections are the "
                "peers of a server; a client config has a single [client])",
                line=ctx.section_lines.get(header),
            )
        raise ctx.error("no [server] or [client] section")
    if bare_client is not None:
        if named:
            header = named[0][0]
            raise ctx.error(
                f"[{header}] is only allowed in a server config; a client config has a "
                "single [client] section",
                line=ctx.section_lines.get(header),
            )
        return _build_client(ctx, bare_client, sections[bare_client])
    return _build_server(ctx, server, sections[server], [(h, n, sections[h]) for h, n in named])


def _build_server(ctx, header, values, peers) -> ServerConfig:
    s = _Section(ctx, header, "server", values, SERVER_KEYS)
    listen_host = listen_port = tcp_host = tcp_port = None
    if s.has("listen") or not s.has("listen_tcp"):  # either may be given alone
        listen_host, listen_port = _endpoint(s, "listen", listen=True)
    if s.has("listen_tcp"):
        tcp_host, tcp_port = _endpoint(s, "listen_tcp", listen=True)
    interface = _interface(s)
    addresses = _addresses(s)
    server_id = s.integer("server_id", 0, MAX_SERVER_ID, default=0)
    mtu = _mtu(s, addresses)
    user = _user(s)
    state_dir = _state_dir(s)

    clients: list[Peer] = []
    sections: list[_Section] = []
    names: dict[str, str] = {}  # name -> header
    ids: dict[int, str] = {}  # id -> name
    keys: dict[bytes, str] = {}  # key -> name
    own_ips = [(own.version, own.ip) for own in addresses]  # (.ip builds a new object)
    for peer_header, name, peer_values in peers:
        display = f"client {name}"
        if not _CLIENT_NAME.fullmatch(name):
            raise ctx.error(
                f"invalid client name {_show(name)}: use 1-64 letters, digits and _ . - @ + "
                "(starting with a letter or digit)",
                line=ctx.section_lines.get(peer_header),
            )
        if name in names:
            first = ctx.section_lines.get(names[name])
            raise ctx.error(
                f"duplicate client name {name!r} (first at line {first})",
                line=ctx.section_lines.get(peer_header),
            )
        names[name] = peer_header
        p = _Section(ctx, peer_header, display, peer_values, PEER_KEYS)
        client_id = p.integer("id", 1, MAX_CLIENT_ID, required=True)
        if client_id in ids:
            raise p.error(f"{client_id} is already used by [client {ids[client_id]}]", "id")
        ids[client_id] = name
        key = _key(p)
        identity = key_identity(key)
        if identity in keys:
            raise p.error(
                f"the same key as [client {keys[identity]}]; every client needs its own key",
                "key" if p.has("key") else "key_file",
            )
        keys[identity] = name
        allowed = _networks(p, "allowed_ips", required=True)
        for net in allowed:
            for own_version, own_ip in own_ips:
                if own_version == net.version and own_ip in net:
                    raise p.error(
                        f"{net} contains the server's own address {own_ip} "
                        "([server] address)",
                        "allowed_ips",
                    )
        clients.append(Peer(name=name, id=client_id, key=key, allowed_ips=allowed,
                            key_file=_key_path(p)))
        sections.append(p)
    _check_overlaps(clients, sections)

    return ServerConfig(
        path=ctx.path,
        listen_host=listen_host,
        listen_port=listen_port,
        listen_tcp_host=tcp_host,
        listen_tcp_port=tcp_port,
        interface=interface,
        addresses=addresses,
        server_id=server_id,
        mtu=mtu,
        clients=tuple(clients),
        user=user,
        state_dir=state_dir,
        offload=s.flag("offload", default=True),
        configure_interface=s.flag("configure_interface", default=True),
        announce_routes=s.flag("announce_routes", default=False),
        announce_hold=s.integer("announce_hold", 1, MAX_ANNOUNCE_HOLD,
                                default=DEFAULT_ANNOUNCE_HOLD),
        announce_protocol=s.integer("announce_protocol", MIN_ANNOUNCE_PROTOCOL,
                                    MAX_ANNOUNCE_PROTOCOL, default=DEFAULT_ANNOUNCE_PROTOCOL),
    )


def _transport(s) -> str:
    value = (s.optional("transport") or "udp").lower()
    if value not in ("udp", "tcp"):
        raise s.error(f"{_show(value)} is not udp or tcp", "transport")
    return value


def _check_overlaps(clients, sections) -> None:
    """No two allowed_ips networks (of any clients) may overlap.

    CIDR blocks either nest or are disjoint. Sorted by (version, start), a block
    overlaps some earlier one exactly when it starts at or before the end of the
    block just before it (as long as none overlapped so far, that block has the
    largest end), so one pass over the sorted list finds an overlap if there is one.
    """
    entries = []  # (version, start, -end, file position, client index, network)
    position = 0
    for index, peer in enumerate(clients):
        for net in peer.allowed_ips:
            # The end computed here: net.broadcast_address would cache two address
            # objects in every network (~350 bytes each, for as long as the daemon runs).
            start, version = int(net.network_address), net.version
            size = 1 << ((32 if version == 4 else 128) - net.prefixlen)
            entries.append((version, start, -(start + size - 1), position, index, net))
            position += 1
    entries.sort()
    for previous, entry in zip(entries, entries[1:]):
        if previous[0] != entry[0] or entry[1] > -previous[2]:
            continue
        first, second = (previous, entry) if previous[3] < entry[3] else (entry, previous)
        later = sections[second[4]]
        if first[4] == second[4]:
            raise later.error(f"{second[5]} overlaps {first[5]} listed before it", "allowed_ips")
        other = clients[first[4]].name
        raise later.error(f"{second[5]} overlaps {first[5]} of [client {other}]", "allowed_ips")


def _build_client(ctx, header, values) -> ClientConfig:
    s = _Section(ctx, header, "client", values, CLIENT_KEYS)
    client_id = s.integer("id", 1, MAX_CLIENT_ID, required=True)
    servers = _servers(s)
    server_host, server_port, server_id = servers[0]
    transport = _transport(s)
    if transport == "tcp" and len(servers) > 1:
        raise s.error("transport = tcp takes one server: several servers fail over on udp",
                      "transport")
    key = _key(s)
    interface = _interface(s)
    addresses = _addresses(s)
    routes = _networks(s, "routes", required=False)
    keepalive = s.integer("keepalive", 0, MAX_KEEPALIVE, default=DEFAULT_KEEPALIVE)
    mtu = _mtu(s, addresses)
    user = _user(s)
    state_dir = _state_dir(s)
    return ClientConfig(
        path=ctx.path,
        id=client_id,
        server_host=server_host,
        server_port=server_port,
        server_id=server_id,
        key=key,
        key_file=_key_path(s),
        transport=transport,
        interface=interface,
        addresses=addresses,
        routes=routes,
        keepalive=keepalive,
        mtu=mtu,
        user=user,
        state_dir=state_dir,
        offload=s.flag("offload", default=True),
        configure_interface=s.flag("configure_interface", default=True),
        servers=servers,
    )


def _servers(s: _Section) -> tuple:
    """`server = HOST:PORT[, HOST:PORT ...]` with `server_id = ID[, ID ...]` in the same
    order: ((host, port, id), ...). One server as before (its id defaults to 0); with
    several, one id each, all different: the id is bound into every key, which is what
    keeps a packet captured at one server from being accepted by another."""
    value = s.get("server")
    if value is None or "," not in value:
        host, port = _endpoint(s, "server", listen=False)
        if "," not in (s.get("server_id") or ""):
            return ((host, port, s.integer("server_id", 0, MAX_SERVER_ID, default=0)),)
        endpoints = [(host, port)]
    else:
        entries = [e.strip() for e in value.split(",")]
        if not all(entries):
            raise s.error(f"{_show(value)} has an empty entry (servers are separated by commas)",
                          "server")
        endpoints = [_parse_endpoint(s, "server", e, listen=False) for e in entries]
        for n, endpoint in enumerate(endpoints):
            if endpoint in endpoints[:n]:
                raise s.error(f"{entries[n]} is listed twice", "server")
    raw = s.get("server_id")
    if raw is None:
        raise s.error(f"{len(endpoints)} servers need a server_id each (server_id = ID, ID, "
                      "... in the same order, all different)", "server")
    texts = [t.strip() for t in raw.split(",")]
    ids = []
    for text in texts:
        if not re.fullmatch(r"[0-9]{1,20}", text) or int(text) > MAX_SERVER_ID:
            raise s.error(f"{_show(text)} is not a server id (0-{MAX_SERVER_ID})", "server_id")
        ids.append(int(text))
    if len(ids) != len(endpoints):
        servers = f"{len(endpoints)} server" + ("s" if len(endpoints) > 1 else "")
        raise s.error(f"{len(ids)} ids for {servers}: list one per server, "
                      "in the order of `server`", "server_id")
    for n, sid in enumerate(ids):
        if sid in ids[:n]:
            raise s.error(f"{sid} is listed twice: every server needs its own id (it is bound "
                          "into every key, which keeps packets captured at one server from "
                          "being accepted by another)", "server_id")
    return tuple((host, port, sid) for (host, port), sid in zip(endpoints, ids))

"""Renders the daemon's `show` document (control.py) for people and for Prometheus.

The JSON document itself is the stable interface (docs/CONTROL.md); these are views of it.
"""


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _ago(seconds) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + (f"{h}h " if d or h else "") + f"{m}m {s}s"


def _drops(drops: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(drops.items())) or "-"


def _announced(client: dict) -> str:
    routed = client.get("announced") or []
    if not routed:
        return "no"
    return "yes" if len(routed) == len(client["allowed_ips"]) else ",".join(routed)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def render_table(doc: dict) -> str:
    t = doc["totals"]
    lines = [f"interface: {doc['interface']}"]
    announce = doc.get("announce") if doc["role"] == "server" else None
    if doc["role"] == "server":
        where = [doc["listen"]] if doc.get("listen") else []
        if doc.get("listen_tcp"):  # (a UDP-only server reads as it always did)
            where = [f"{w} (UDP)" for w in where] + [f"{doc['listen_tcp']} (TCP)"]
        lines.append(f"  role: server, listening on {' and '.join(where)}, server id "
                     f"{doc['server_id']}")
        tcp = doc.get("tcp")
        if tcp:
            lines.append(f"  tcp connections: {tcp['open']} open ({tcp['authenticated']} "
                         f"authenticated), {tcp['accepted']} accepted, {tcp['closed']} closed, "
                         f"{tcp['refused']} refused, {tcp['garbage']} garbage")
        if announce:
            carried = sum(1 for c in doc["clients"] if c.get("announced"))
            lines.append(f"  announcing client routes: protocol {announce['protocol']}, hold "
                         f"{announce['hold']} s; {carried} of {len(doc['clients'])} clients "
                         "announced")
    else:
        lines.append(f"  role: client {doc['id']}, server {doc['server']} "
                     f"(endpoint {doc['endpoint'] or 'unresolved'}), server id {doc['server_id']}"
                     + (", over TCP (" + ("connected" if doc["tcp"]["connected"] else
                                          "not connected") + ")"
                        if doc.get("transport") == "tcp" else ""))
        clock = (f"synced, offset {doc['clock_offset']:+.3f}s" if doc["clock_synced"]
                 else "not synced yet")
        lines.append(f"  last packet from server: {_ago(doc['last_rx_seconds'])}; clock {clock}")
        if doc.get("servers"):  # several servers: each one's state, and the switches so far
            states = ", ".join(f"{s['server']} id {s['server_id']} {s['state'].replace('-', ' ')}"
                               for s in doc["servers"])
            lines.append(f"  servers: {states}; {doc['switches']} switches")
    lines.append(f"  addresses: {', '.join(doc['addresses'])}; mtu {doc['mtu']}")
    lines.append(f"  crypto: {doc['crypto']}; uptime {_duration(doc['uptime'])}; pid {doc['pid']}")
    off = doc.get("offloads")
    if doc.get("loop"):
        lines.append(f"  loop: {doc['loop']}" + (
            f"; offloads {', '.join(off['in_use']) or 'none'} ({off['tso_packets']} "
            f"super-packets cut into {off['tso_segments']}, {off['gro_datagrams']} datagrams "
            f"in {off['gro_messages']} GRO receives)" if off else ""))
    lines.append(f"  transfer: {t['rx_packets']} packets / {_bytes(t['rx_bytes'])} received, "
                 f"{t['tx_packets']} packets / {_bytes(t['tx_bytes'])} sent")
    lines.append(f"  drops: {_drops(t['drops'])}")
    if doc["role"] == "server":
        rows = [["client", "id", "allowed ips", "endpoint", "last rx", "rx", "tx", "roams",
                 "drops"] + (["announced"] if announce else [])]
        for c in doc["clients"]:
            rows.append([c["name"], str(c["id"]), ",".join(c["allowed_ips"]),
                         (c["endpoint"] or "-") + (" (pinned)" if c.get("pinned") else ""),
                         _ago(c["last_rx_seconds"]),
                         f"{c['rx_packets']}/{_bytes(c['rx_bytes'])}",
                         f"{c['tx_packets']}/{_bytes(c['tx_bytes'])}", str(c["roams"]),
                         _drops(c["drops"])] + ([_announced(c)] if announce else []))
        lines.append("")
        lines += _table(rows)
    return "\n".join(lines)


_COUNTERS = [
    ("rx_packets", "vpncrypt_rx_packets_total", "Authenticated packets received."),
    ("rx_bytes", "vpncrypt_rx_bytes_total", "Bytes received in authenticated packets (UDP payload)."),
    ("tx_packets", "vpncrypt_tx_packets_total", "Packets sent."),
    ("tx_bytes", "vpncrypt_tx_bytes_total", "Bytes sent (UDP payload)."),
]


def _labels(**labels) -> str:
    def esc(v):
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"


def render_prometheus(docs: list[dict], down=()) -> str:
    """Prometheus text exposition format (version 0.0.4) for one or more daemons; `down`
    names interfaces whose control socket did not answer (vpncrypt_up 0)."""
    out = []
    metrics: dict[str, list[str]] = {}

    def add(name, labels, value):
        metrics.setdefault(name, []).append(f"{name}{_labels(**labels)} {value}")

    for interface in down:
        add("vpncrypt_up", {"interface": interface}, 0)

    for doc in docs:
        base = {"interface": doc["interface"], "role": doc["role"]}
        add("vpncrypt_up", {**base, "crypto": doc["crypto"]}, 1)
        add("vpncrypt_uptime_seconds", base, doc["uptime"])
        scopes = [(base, doc["totals"])]
        if doc["role"] == "server":
            for c in doc["clients"]:
                labels = {**base, "client": c["name"], "id": c["id"]}
                scopes.append((labels, c))
                add("vpncrypt_client_roams_total", labels, c["roams"])
                add("vpncrypt_client_pinned", labels, int(c.get("pinned", False)))
                if doc.get("announce"):
                    add("vpncrypt_client_announced", labels, int(bool(c.get("announced"))))
                if c["last_rx_seconds"] is not None:
                    add("vpncrypt_client_last_rx_seconds", labels, c["last_rx_seconds"])
        else:
            if doc["last_rx_seconds"] is not None:
                add("vpncrypt_client_last_rx_seconds", base, doc["last_rx_seconds"])
            add("vpncrypt_clock_offset_seconds", base, doc["clock_offset"])
            for server in doc.get("servers") or ():
                add("vpncrypt_client_server_in_use",
                    {**base, "server": server["server"], "server_id": server["server_id"]},
                    int(server["state"] == "in-use"))
            if doc.get("servers"):
                add("vpncrypt_client_server_switches_total", base, doc["switches"])
        for labels, counters in scopes:
            scope = {**labels, "scope": "client" if "client" in labels else "total"}
            for key, name, _ in _COUNTERS:
                add(name, scope, counters[key])
            for reason, n in counters["drops"].items():
                add("vpncrypt_drops_total", {**scope, "reason": reason}, n)
    helps = {name: (h, "counter") for _, name, h in _COUNTERS}
    helps.update({
        "vpncrypt_up": ("1 for each running daemon, 0 for a control socket that does not answer.",
                        "gauge"),
        "vpncrypt_uptime_seconds": ("Seconds since the daemon started.", "gauge"),
        "vpncrypt_drops_total": ("Packets dropped, by reason.", "counter"),
        "vpncrypt_client_roams_total": ("Endpoint changes of a client.", "counter"),
        "vpncrypt_client_pinned": ("1 while the socket filter pins the client to its "
                                   "endpoint (under a flood naming it).", "gauge"),
        "vpncrypt_client_announced": ("1 while the server has a kernel route for the "
                                      "client (announce_routes).", "gauge"),
        "vpncrypt_client_last_rx_seconds": ("Seconds since the last authenticated packet.", "gauge"),
        "vpncrypt_clock_offset_seconds": ("Correction applied to the local clock.", "gauge"),
        "vpncrypt_client_server_in_use": ("1 for the server a client with several servers "
                                          "uses now, 0 for the others.", "gauge"),
        "vpncrypt_client_server_switches_total": ("Moves of a client with several servers "
                                                  "from one to another.", "counter"),
    })
    for name, samples in metrics.items():
        help_text, kind = helps[name]
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out += samples
    return "\n".join(out) + "\n"

#!/usr/bin/env python3
"""Soak: a server and three clients under steady bidirectional traffic for --minutes.

A real deployment in network namespaces (tests/vpnharness.py: one server host, three
client hosts, each joined to the server by its own veth link). For the whole run, each
client moves data both ways at once: a client -> server and a server -> client TCP
stream through the tunnel, each a loop of transfers of at most --chunk seconds, paced
at --rate Mbit/s per stream (so six streams in all; the machine is shared), and every
transfer is checked by SHA-256 on both ends (a deterministic pseudo-random stream, as
tests/tcpxfer.py does).

Every --interval s (default 10) it samples each daemon: VmRSS and VmHWM
(/proc/PID/status of the vpncryptd process itself), open file descriptors
(/proc/PID/fd), CPU time, and the counters of `vpncrypt show --json` (traffic and drops
by reason).

At the end it reports, per daemon: memory growth (mean VmRSS of the first minute against
the last minute), fd growth (first sample against last, and the maximum), CPU use, and
drops: the reasons explained below are counted apart, anything else is "unexpected".
Explained drops:
  unsynced  a client holds its first data packets until its first time sync answer
            (up to 3 s after start): only before the traffic starts;
  no-route  the server's kernel sent to a client's tunnel address before that client's
            first packet told the server where it is: only before the traffic starts.
Drops of any reason that grow *during* the soak are reported as unexpected, explained
or not.

Total bytes moved = bytes of completed, hash-verified transfers (both directions).

Output: Markdown on stdout and bench/out/soak.json. Exit status 1 if a transfer failed
or its hashes differed, a daemon died, or there were unexpected drops.

    sudo .venv/bin/python bench/soak.py [--minutes 10] [--rate 20] [--loop native|python]
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

# harness first: it puts tests/ (netns, vpnharness) and the checkout on sys.path
from harness import (OUT, Hosts, cpu_seconds, daemon_pid, fd_count, log, proc_status,
                     require_netns, vpncrypt_show, write_json)

MIB = 1024 * 1024
CLIENTS = 3
EXPLAINED = {
    "unsynced": "a client holds data until its first time sync (start-up only)",
    "no-route": "the server had no endpoint yet for that client (start-up only)",
}
BLOCK = 1 << 16


# --------------------------------------------------------------------------- transfers
# Run inside the namespaces as `python soak.py --xfer recv PORT` / `--xfer send ...`.


def xfer_recv(port: int) -> None:
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::", port))
    srv.listen(1)
    srv.settimeout(60)
    print("listening", flush=True)
    conn, _ = srv.accept()
    conn.settimeout(120)
    digest, total = hashlib.sha256(), 0
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        digest.update(data)
        total += len(data)
    conn.close()
    print(json.dumps({"bytes": total, "sha256": digest.hexdigest()}), flush=True)


def xfer_send(host: str, port: int, size: int, seed: int, mbit: float) -> None:
    """tests/tcpxfer.py's sender, paced at `mbit` Mbit/s."""
    rng = random.Random(seed)
    digest, sent = hashlib.sha256(), 0
    started = time.monotonic()
    conn = socket.create_connection((host, port), timeout=60)
    conn.settimeout(120)
    rate = mbit * 1e6 / 8
    while sent < size:
        block = rng.randbytes(min(BLOCK, size - sent))
        conn.sendall(block)
        digest.update(block)
        sent += len(block)
        ahead = sent / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)  # the receiver has read everything and closed
    conn.close()
    print(json.dumps({"bytes": sent, "sha256": digest.hexdigest(),
                      "seconds": time.monotonic() - started}), flush=True)


class Stream(threading.Thread):
    """Transfers from one host to another through the tunnel until the deadline."""

    def __init__(self, name, sender, receiver, target, port, mbit, chunk_s, deadline, seed0):
        super().__init__(name=name, daemon=True)
        self.sender, self.receiver, self.target, self.port = sender, receiver, target, port
        self.mbit, self.chunk_s, self.deadline, self.seed = mbit, chunk_s, deadline, seed0
        self.ok = 0
        self.bytes = 0
        self.failures: list[str] = []
        self.busy_s = 0.0

    def run(self) -> None:
        script = os.path.abspath(__file__)
        while time.monotonic() < self.deadline - 1:
            seconds = min(self.chunk_s, self.deadline - time.monotonic())
            size = max(BLOCK, int(seconds * self.mbit * 1e6 / 8))
            self.seed += 1
            t = time.monotonic()
            try:
                recv = self.receiver.popen([sys.executable, script, "--xfer", "recv",
                                            str(self.port)], stdout=subprocess.PIPE, text=True)
                line = recv.stdout.readline().strip()
                if line != "listening":
                    raise RuntimeError(f"receiver did not start: {line!r}")
                send = self.sender.popen([sys.executable, script, "--xfer", "send", self.target,
                                          str(self.port), str(size), str(self.seed),
                                          str(self.mbit)], stdout=subprocess.PIPE, text=True)
                limit = seconds * 3 + 60
                s_out, _ = send.communicate(timeout=limit)
                r_out, _ = recv.communicate(timeout=limit)
                sent = json.loads(s_out.strip().splitlines()[-1])
                got = json.loads(r_out.strip().splitlines()[-1])
                if sent["bytes"] != size or got["bytes"] != size or sent["sha256"] != got["sha256"]:
                    raise RuntimeError(f"mismatch: sent {sent}, received {got}, size {size}")
                self.ok += 1
                self.bytes += size
            except Exception as e:  # noqa: BLE001 - every failure is reported
                self.failures.append(f"{self.name} seed {self.seed}: {type(e).__name__}: {e}")
                for proc in ("send", "recv"):
                    p = locals().get(proc)
                    if p is not None and p.poll() is None:
                        p.kill()
                time.sleep(1)
            self.busy_s += time.monotonic() - t


# --------------------------------------------------------------------------- sampling


def show(state_dir: str) -> dict:
    [doc] = json.loads(vpncrypt_show(state_dir, timeout=30))
    return doc


def sample(t0: float, daemons: dict) -> dict:
    out = {"t": round(time.monotonic() - t0, 2), "daemons": {}}
    for name, (d, pid, state_dir) in daemons.items():
        entry = {"alive": d.proc.poll() is None}
        if entry["alive"]:
            try:
                st = proc_status(pid, in_bytes=True)
                entry.update(rss=st["VmRSS"], hwm=st["VmHWM"], threads=st["Threads"],
                             fds=fd_count(pid), cpu=cpu_seconds(pid))
                doc = show(state_dir)
                entry.update(drops=doc["totals"]["drops"],
                             rx_bytes=doc["totals"]["rx_bytes"], tx_bytes=doc["totals"]["tx_bytes"])
                if doc["role"] == "server":
                    entry["client_drops"] = {c["name"]: c["drops"] for c in doc["clients"]}
            except (OSError, RuntimeError, ValueError) as e:
                entry["error"] = str(e)
        out["daemons"][name] = entry
    return out


# --------------------------------------------------------------------------- report


def window_mean(samples, name, key, lo, hi):
    values = [s["daemons"][name][key] for s in samples
              if lo <= s["t"] < hi and key in s["daemons"][name]]
    return statistics.mean(values) if values else None


def analyse(samples, names, traffic_t0, duration) -> dict:
    report = {}
    end = samples[-1]["t"]
    minute = min(60.0, max(duration / 3, 10.0))
    for name in names:
        series = [s for s in samples if "rss" in s["daemons"][name]]
        first, last = series[0]["daemons"][name], series[-1]["daemons"][name]
        rss_first = window_mean(samples, name, "rss", 0, series[0]["t"] + minute)
        rss_last = window_mean(samples, name, "rss", end - minute + 1e-9, end + 1)
        # Growth after warm-up: from the first sample at or after one window to the end
        # (the first window holds the start of traffic: buffers, first packets).
        warm = next((s["daemons"][name]["rss"] for s in series if s["t"] >= minute), None)
        fds = [s["daemons"][name]["fds"] for s in series]
        base = next((s["daemons"][name] for s in samples
                     if s["t"] >= traffic_t0 and "drops" in s["daemons"][name]), first)
        drops_total = last.get("drops", {})
        during = {r: n - base.get("drops", {}).get(r, 0) for r, n in drops_total.items()}
        during = {r: n for r, n in during.items() if n}
        before = {r: base.get("drops", {}).get(r, 0) for r in drops_total
                  if base.get("drops", {}).get(r, 0)}
        unexpected = {r: n for r, n in drops_total.items() if r not in EXPLAINED}
        unexpected.update(during)
        report[name] = {
            "rss_first_minute": rss_first, "rss_last_minute": rss_last,
            "rss_growth": (rss_last - rss_first) if rss_first and rss_last else None,
            "rss_growth_after_warmup": (last["rss"] - warm) if warm is not None else None,
            "hwm_last": last["hwm"], "rss_min": min(s["daemons"][name]["rss"] for s in series),
            "rss_max": max(s["daemons"][name]["rss"] for s in series),
            "fds_first": fds[0], "fds_last": fds[-1], "fds_max": max(fds),
            "cpu_pct": (last["cpu"] - first["cpu"])
            / max(series[-1]["t"] - series[0]["t"], 1e-9) * 100,
            "drops_total": drops_total, "drops_before_traffic": before, "drops_during": during,
            "unexpected_drops": unexpected, "alive": samples[-1]["daemons"][name]["alive"],
            "rx_bytes": last.get("rx_bytes"), "tx_bytes": last.get("tx_bytes"),
            "samples": len(series),
        }
    return report


def render(doc: dict) -> str:
    rep, args = doc["report"], doc["args"]
    minute = doc["window_s"]
    lines = [f"### Soak: {args['minutes']} min, {CLIENTS} clients, {args['loop']} loop, "
             f"{2 * CLIENTS} streams at {args['rate']} Mbit/s each ({doc['date']}, "
             f"{platform.node()})", "",
             f"| daemon | VmRSS first {minute:.0f} s (MiB) | last {minute:.0f} s (MiB) "
             "| growth (KiB) | growth after the first window (KiB) "
             "| min-max (MiB) | VmHWM (MiB) | fds first/last/max | CPU (% of a core) "
             "| drops (explained, all before traffic) | unexpected drops |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for name, r in rep.items():
        explained = {k: v for k, v in r["drops_total"].items() if k in EXPLAINED}
        lines.append(
            f"| {name}{'' if r['alive'] else ' (DIED)'} | {r['rss_first_minute'] / MIB:.2f} | "
            f"{r['rss_last_minute'] / MIB:.2f} | {r['rss_growth'] / 1024:+.0f} | "
            f"{(r['rss_growth_after_warmup'] or 0) / 1024:+.0f} | "
            f"{r['rss_min'] / MIB:.2f}-{r['rss_max'] / MIB:.2f} | {r['hwm_last'] / MIB:.2f} | "
            f"{r['fds_first']}/{r['fds_last']}/{r['fds_max']} | {r['cpu_pct']:.1f} | "
            f"{' '.join(f'{k}={v}' for k, v in explained.items()) or '-'} | "
            f"{' '.join(f'{k}={v}' for k, v in r['unexpected_drops'].items()) or 'none'} |")
    t = doc["traffic"]
    lines += ["", f"Moved {t['bytes'] / 1e9:.2f} GB in {t['transfers_ok']} hash-checked "
              f"transfers ({t['bytes'] * 8 / max(t['seconds'], 1e-9) / 1e6:.0f} Mbit/s "
              f"overall); {t['transfers_failed']} failed. Server counters: rx "
              f"{rep['server']['rx_bytes'] / 1e9:.2f} GB, "
              f"tx {rep['server']['tx_bytes'] / 1e9:.2f} GB "
              f"(on the wire). {doc['samples']} samples every {args['interval']} s. "
              f"Load average {doc['loadavg'][0]:.2f} -> {doc['loadavg'][1]:.2f}."]
    if t["failures"]:
        lines += ["", "Failures:"] + [f"- {f}" for f in t["failures"][:10]]
    lines += ["", "Verdict: " + ("OK" if doc["ok"] else "PROBLEMS (see above)")]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--rate", type=float, default=20.0, help="Mbit/s per stream (6 streams)")
    ap.add_argument("--chunk", type=float, default=30.0, help="seconds per transfer, at most")
    ap.add_argument("--loop", choices=("native", "python"), default="native")
    ap.add_argument("--json", default=os.path.join(OUT, "soak.json"))
    ap.add_argument("--xfer", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--reanalyse", metavar="JSON",
                    help="rebuild the report of a saved run (its samples) and print it")
    args = ap.parse_args()
    if args.reanalyse:
        with open(args.reanalyse) as f:
            doc = json.load(f)
        samples = doc["series"]
        doc["report"] = analyse(samples, list(samples[0]["daemons"]), doc.get("traffic_t0", 0.0),
                                doc["args"]["minutes"] * 60)
        write_json(args.reanalyse, doc)
        print(render(doc))
        return 0
    if args.xfer:
        if args.xfer[0] == "recv":
            xfer_recv(int(args.xfer[1]))
        else:
            host, port, size, seed, mbit = args.xfer[1:6]
            xfer_send(host, int(port), int(size), int(seed), float(mbit))
        return 0

    from vpnharness import SERVER_TUN4, Deployment, client_tun4

    require_netns("soak: network namespaces unavailable")
    load0 = os.getloadavg()
    make_host = Hosts()
    tmp = tempfile.mkdtemp(prefix="vpncrypt-soak-")
    streams: list[Stream] = []
    try:
        vpn = Deployment(make_host, tmp, clients=CLIENTS, loop=args.loop).start()
        for i in range(1, CLIENTS + 1):
            vpn.wait_ping(vpn.client_host(i), SERVER_TUN4)
        daemons = {"server": (vpn.server, daemon_pid(vpn.server)[0], vpn.state_dir("server"))}
        for i in range(1, CLIENTS + 1):
            d = vpn.clients[i - 1]
            daemons[f"client{i}"] = (d, daemon_pid(d)[0], vpn.state_dir(f"client{i}"))
        duration = args.minutes * 60
        t0 = time.monotonic()
        samples = [sample(t0, daemons)]
        traffic_t0 = time.monotonic() - t0
        deadline = time.monotonic() + duration
        for i in range(1, CLIENTS + 1):
            host = vpn.client_host(i)
            streams.append(Stream(f"client{i}->server", host, vpn.server_host, SERVER_TUN4,
                                  5300 + i, args.rate, args.chunk, deadline, 1000 * i))
            streams.append(Stream(f"server->client{i}", vpn.server_host, host, client_tun4(i),
                                  5400 + i, args.rate, args.chunk, deadline, 1000 * i + 500))
        for s in streams:
            s.start()
        next_sample = time.monotonic() + args.interval
        while any(s.is_alive() for s in streams):
            time.sleep(max(0.0, min(next_sample - time.monotonic(), 1.0)))
            if time.monotonic() >= next_sample:
                samples.append(sample(t0, daemons))
                next_sample += args.interval
                log(f"  [{samples[-1]['t']:.0f} s] " + ", ".join(
                    f"{n} {e.get('rss', 0) / MIB:.1f} MiB/{e.get('fds', '?')} fds"
                    for n, e in samples[-1]["daemons"].items()) + ", moved "
                    f"{sum(s.bytes for s in streams) / 1e9:.2f} GB", stamp=False)
        for s in streams:
            s.join()
        traffic_s = time.monotonic() - t0
        samples.append(sample(t0, daemons))
        report = analyse(samples, list(daemons), traffic_t0, duration)
        failures = [f for s in streams for f in s.failures]
        doc = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "host": platform.node(), "args": vars(args), "samples": len(samples),
            "traffic_t0": traffic_t0,
            "window_s": min(60.0, max(duration / 3, 10.0)),
            "loadavg": [load0[0], os.getloadavg()[0]],
            "traffic": {"bytes": sum(s.bytes for s in streams),
                        "transfers_ok": sum(s.ok for s in streams),
                        "transfers_failed": len(failures), "failures": failures,
                        "seconds": traffic_s,
                        "per_stream": {s.name: {"ok": s.ok, "bytes": s.bytes,
                                                "failed": len(s.failures)} for s in streams}},
            "report": report, "explained_drops": EXPLAINED, "series": samples,
        }
        doc["ok"] = (not failures and all(r["alive"] for r in report.values())
                     and not any(r["unexpected_drops"] for r in report.values()))
        write_json(args.json, doc)
        print(render(doc))
        return 0 if doc["ok"] else 1
    finally:
        make_host.close()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    sys.exit(main())

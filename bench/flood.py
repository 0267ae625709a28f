#!/usr/bin/env python3
"""A legit client's throughput while a third host floods the server with garbage.

Three network namespaces: the server, a client (veth 10.200.1.0/24) and a flooder with
its own veth to the server (10.200.9.2 -> 10.200.9.1; the server listens on 0.0.0.0).
The daemons are real vpncryptd processes (tests/vpnharness.py), the flooder is
tests/flooder.py: pre-built datagrams sent with sendmmsg(2) from one UDP socket, as
fast as it goes, of these kinds (weights as in the integration test):

  random bytes, truncated packets (0..24 bytes), forged headers with the configured
  client ids (types 01/02/03, random timestamp byte, counter, tag and body), headers
  with unknown ids, large forged DATA (IP fragments), and genuine packets of the
  client captured beforehand and replayed (never its time-sync requests, which carry
  no timestamp and may legitimately be answered).

Runs, per configuration (packet loop, --loop native|python|both; the daemons' kernel
socket filter, --sockfilter on|off|both, off being VPNCRYPT_SOCKFILTER=off), each on a
fresh deployment:
  1. unflooded: iperf3 -c <server tunnel address> -t S/2 (TCP, one stream, client -> server)
  2. flooded:   the flood runs for S seconds; iperf3 -t S-4 starts 2 s into it
--runs N repeats that N times, configurations interleaved (round 1 of each, then round
2, ...), so that the machine's other load falls on all of them alike.

Reports, as Markdown (and JSON with --json, every run): per configuration the medians
of the legit throughput flooded and unflooded and of their ratio (the goal is >= 50%),
with every run's ratio; then, for the run with the median ratio of each configuration,
the flood's rate (packets/s sent, arrived on the server's veth, dropped by the kernel's
socket filter, dropped by the kernel at the full socket buffer, read by the daemon),
what the daemon counted as drops, by reason, and how many datagrams it read but did not
count, which clients the server pinned in its socket filter (daemon/pinning.py: the
filter then keeps only a sample of the datagrams naming them from elsewhere), its resident memory before and after (VmRSS) and its peak (VmHWM), its CPU time
during the flood, and what the server sent to the flooder (must be nothing; counted by
a capture on the flooder's link and on the flooder's socket). The kernel's figures are
the server namespace's Udp counters: RcvbufErrors, and InErrors less RcvbufErrors and
InCsumErrors for the filter (the daemon never sees what the filter drops).

CPUs. On one machine the flooder takes CPU time the system under test would have had
against a remote attacker. --pin-flooder CPU runs it under `taskset -c CPU`; --pin-vpn
CPUS pins everything else (both daemons, iperf3, tcpdump; the kernel's receive work for
each sender runs on the sender's CPU on veth), so that attacker and defender do not
share a core. Both unpinned by default; the header line says which were pinned. On veth
the receiving side's kernel work (IP, UDP, the socket filter) runs on the sender's CPU,
so pinned, the flooder's core pays for it; --steer-rx (with --pin-vpn) moves it to the
VPN's CPUs with RPS, where a NIC's interrupt would put it.

    sudo .venv/bin/python bench/flood.py [--seconds 20] [--loop native] [--runs 5]
        [--sockfilter both] [--pin-flooder 1 --pin-vpn 0 [--steer-rx]] [--json FILE]

Needs root, iproute2, iperf3, tcpdump and taskset. Namespaces and processes go away at
the end. The machine's other load changes the numbers a lot; run it on a quiet machine,
and compare configurations of one run of the script only.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

# harness first: it puts tests/ (hostile, vpnharness) and the checkout on sys.path
from harness import Hosts, cpu_seconds, log, proc_status, wait_or_kill, write_json
from hostile import (FLOOD_SERVER, Flooder, capture_client_packets, delta, drops,
                     filter_drops, flood_result, link_stats, udp_snmp)
from vpnharness import PORT, SERVER_TUN4, Deployment, transfer

from vpncrypt.protocol.keys import generate_key

GHOST_ID = 2


def iperf(vpn, seconds: float) -> float:
    """Mbit/s received by the iperf3 server over a `seconds` TCP run, client -> server."""
    srv = vpn.server_host.popen(["iperf3", "-s", "-1", "-B", SERVER_TUN4],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        out = vpn.client_host().run(["iperf3", "-c", SERVER_TUN4, "-t", str(seconds), "-J"],
                                    timeout=seconds + 60, check=False).stdout
        doc = json.loads(out)
        if "error" in doc:
            raise RuntimeError(f"iperf3: {doc['error']}")
        return doc["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        wait_or_kill(srv)


def run(loop: str, seconds: float, workdir: str, sockfilter: bool = True,
        pin_flooder: str | None = None, daemon_env: dict | None = None,
        rx_cpus: set | None = None) -> dict:
    make = Hosts()
    tmp = tempfile.mkdtemp(prefix=f"flood-{loop}-", dir=workdir)
    try:
        vpn = Deployment(make, tmp, keepalive=25, loop=loop)
        if not sockfilter:
            vpn.env["VPNCRYPT_SOCKFILTER"] = "off"
        vpn.env.update(daemon_env or {})
        vpn.write("server.conf", vpn.server_text()
                  + f"\n[client ghost]\nid = {GHOST_ID}\nkey = {generate_key()}\n"
                    "allowed_ips = 10.201.0.200/32\n")
        flooder = Flooder(make, vpn.server_host)
        if rx_cpus:
            # veth does the receiving side's kernel work (IP, UDP, the socket filter) on
            # the sender's CPU; a NIC's interrupt would put it on the server's. Steer it
            # there (RPS), so the defender pays for it as it would against a remote host.
            mask = sum(1 << c for c in rx_cpus)
            vpn.server_host.run(["sh", "-c", f"echo {mask:x} > /sys/class/net/"
                                 f"{flooder.server_if}/queues/rx-0/rps_cpus"])
        vpn.start()
        vpn.wait_ping(vpn.client_host(), SERVER_TUN4)

        def traffic():
            vpn.ping(vpn.client_host(), SERVER_TUN4, count=3)
            transfer(vpn.client_host(), vpn.server_host, SERVER_TUN4, 1 << 20)

        replays = [p for p in capture_client_packets(vpn, tmp, traffic) if p[0] != 0x03]
        pid = vpn.server.proc.pid

        unflooded = iperf(vpn, max(5, seconds / 2))
        before = vpn.server.stats()
        snmp0, link0 = udp_snmp(vpn.server_host), link_stats(vpn.server_host, flooder.server_if)
        rss0, cpu0 = proc_status(pid, ("VmRSS",))["VmRSS"], cpu_seconds(pid)
        flooder.start_capture(os.path.join(tmp, "to-flooder.pcap"))
        flood = flooder.flood(tmp, FLOOD_SERVER, PORT, seconds=seconds, max_packets=10**9,
                              client_ids=[1, GHOST_ID], replays=replays, background=True,
                              prefix=["taskset", "-c", pin_flooder] if pin_flooder else ())
        time.sleep(2)
        flooded = iperf(vpn, max(2, seconds - 4))
        report = flood_result(flood, seconds + 120)
        to_flooder = flooder.stop_capture()
        time.sleep(0.5)
        cpu1 = cpu_seconds(pid)
        after = vpn.server.stats()
        snmp = delta(udp_snmp(vpn.server_host), snmp0)
        link = delta(link_stats(vpn.server_host, flooder.server_if), link0)
        status = proc_status(pid, ("VmRSS", "VmHWM"))
        rss1, hwm = status["VmRSS"], status["VmHWM"]
        alive = vpn.server.proc.poll() is None
        legit_rx = (int(after["peers"].get("c1", {}).get("rx_packets", 0))
                    - int(before["peers"].get("c1", {}).get("rx_packets", 0)))
        got = delta(drops(after), drops(before))
        read = snmp.get("InDatagrams", 0) - legit_rx
        # The server's pins (daemon/pinning.py): client and the share of its foreign
        # datagrams the socket filter kept when pinned.
        pins = re.findall(r"pinned client=(\S+) .* kept=(\S+)", vpn.server.text())
        return {
            "loop": loop, "sockfilter": sockfilter, "pin_flooder": pin_flooder,
            "daemon_env": daemon_env or {}, "seconds": report["seconds"],
            "unflooded_mbit": round(unflooded, 1), "flooded_mbit": round(flooded, 1),
            "ratio": round(flooded / unflooded, 3) if unflooded else None,
            "flood_sent": report["sent"], "flood_rate": report["rate"],
            "by_kind": report["by_kind"], "prescreened": report["prescreened"],
            "arrived_on_veth": link.get("rx_packets", 0),
            "read_by_daemon": read, "kernel_rcvbuf_drops": snmp.get("RcvbufErrors", 0),
            "kernel_filter_drops": filter_drops(snmp),
            "drops": got, "uncounted": read - sum(got.values()),
            "rss_before_kb": rss0, "rss_after_kb": rss1, "hwm_kb": hwm,
            "daemon_cpu_s": round(cpu1 - cpu0, 2), "server_alive": alive,
            "pins": [f"{name} {kept}" for name, kept in pins],
            "to_flooder_captured": to_flooder, "to_flooder_received": report["received"],
        }
    finally:
        make.close()
        shutil.rmtree(tmp, ignore_errors=True)


def label(r: dict) -> str:
    return (f"{r['loop']} loop, filter {'on' if r['sockfilter'] else 'off'}"
            + "".join(f", {k}={v}" for k, v in r["daemon_env"].items()))


def markdown(results: list[dict]) -> str:
    """The detail table: one column per run given."""
    cols = [label(r) for r in results]
    rows = [
        ("legit TCP, unflooded (Mbit/s)", lambda r: f"{r['unflooded_mbit']:.1f}"),
        ("legit TCP, flooded (Mbit/s)", lambda r: f"{r['flooded_mbit']:.1f}"),
        ("flooded / unflooded (goal >= 50%)", lambda r: f"{r['ratio']:.0%}"),
        ("flood sent (packets/s)", lambda r: f"{r['flood_rate']:,}"),
        ("frames on the server's veth (/s; large datagrams are several)",
         lambda r: f"{r['arrived_on_veth'] / r['seconds']:,.0f}"),
        ("dropped by the kernel, socket filter (packets/s)",
         lambda r: f"{r['kernel_filter_drops'] / r['seconds']:,.0f}"),
        ("dropped by the kernel, socket buffer full (packets/s)",
         lambda r: f"{r['kernel_rcvbuf_drops'] / r['seconds']:,.0f}"),
        ("read by the daemon (packets/s)", lambda r: f"{r['read_by_daemon'] / r['seconds']:,.0f}"),
        ("clients pinned (kept from elsewhere)", lambda r: ", ".join(r.get("pins", [])) or "none"),
        *[(f"drops: {reason}", (lambda reason: lambda r: f"{r['drops'].get(reason, 0):,}")(reason))
          for reason in sorted({k for r in results for k in r["drops"]})],
        ("read but not counted", lambda r: f"{r['uncounted']:,}"),
        ("daemon CPU during the flood (s)", lambda r: f"{r['daemon_cpu_s']}"),
        ("VmRSS before -> after (MB)",
         lambda r: f"{r['rss_before_kb'] / 1024:.1f} -> {r['rss_after_kb'] / 1024:.1f}"),
        ("VmHWM (MB)", lambda r: f"{r['hwm_kb'] / 1024:.1f}"),
        ("server alive afterwards", lambda r: "yes" if r["server_alive"] else "**NO**"),
        ("packets from the server to the flooder",
         lambda r: f"{sum(r['to_flooder_captured'].values())} captured"
                   + (f" {r['to_flooder_captured']}" if r["to_flooder_captured"] else "")
                   + f", {r['to_flooder_received']} received"),
    ]
    out = ["| | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    out += [f"| {name} | " + " | ".join(fmt(r) for r in results) + " |" for name, fmt in rows]
    return "\n".join(out)


def summary(groups: dict) -> str:
    """Medians per configuration, with every run's ratio."""
    out = ["| configuration | runs | unflooded (Mbit/s) | flooded (Mbit/s) | flooded / unflooded "
           "| flood sent (packets/s) | kernel drops, filter / full buffer (packets/s) "
           "| every run's ratio |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, rs in groups.items():
        med = statistics.median
        out.append(
            f"| {name} | {len(rs)} | {med(r['unflooded_mbit'] for r in rs):.1f} "
            f"| {med(r['flooded_mbit'] for r in rs):.1f} | **{med(r['ratio'] for r in rs):.0%}** "
            f"| {med(r['flood_rate'] for r in rs):,.0f} "
            f"| {med(r['kernel_filter_drops'] / r['seconds'] for r in rs):,.0f} / "
            f"{med(r['kernel_rcvbuf_drops'] / r['seconds'] for r in rs):,.0f} "
            f"| {', '.join(format(r['ratio'], '.0%') for r in rs)} |")
    return "\n".join(out)


def median_run(rs: list[dict]) -> dict:
    return sorted(rs, key=lambda r: r["ratio"])[(len(rs) - 1) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="flood duration (default 20)")
    ap.add_argument("--loop", choices=["native", "python", "both"], default="native")
    ap.add_argument("--sockfilter", choices=["on", "off", "both"], default="on",
                    help="the daemons' kernel socket filter (off: VPNCRYPT_SOCKFILTER=off)")
    ap.add_argument("--runs", type=int, default=1,
                    help="runs per configuration, interleaved; the tables show medians")
    ap.add_argument("--pin-flooder", metavar="CPU", default="none",
                    help="taskset -c CPU for the flooder (default: none, unpinned)")
    ap.add_argument("--pin-vpn", metavar="CPUS", default="none",
                    help="CPUs (e.g. 0 or 0-2) for everything else: both daemons, iperf3, "
                         "tcpdump (this script's affinity, inherited; default: none)")
    ap.add_argument("--daemon-env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for both daemons (repeatable)")
    ap.add_argument("--steer-rx", action="store_true",
                    help="with --pin-vpn: the server's kernel receive work for the flood "
                         "runs on those CPUs too (RPS), as a NIC interrupt's would")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.steer_rx and args.pin_vpn == "none":
        ap.error("--steer-rx needs --pin-vpn")
    if os.geteuid() != 0:
        sys.exit("bench/flood.py: needs root (network namespaces)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    loops = ["native", "python"] if args.loop == "both" else [args.loop]
    filters = [True, False] if args.sockfilter == "both" else [args.sockfilter == "on"]
    pin = None if args.pin_flooder == "none" else args.pin_flooder
    cpus = None
    if args.pin_vpn != "none":
        cpus = set()
        for part in args.pin_vpn.split(","):
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
        os.sched_setaffinity(0, cpus)
    env = dict(kv.split("=", 1) for kv in args.daemon_env)
    configs = [(loop, f) for loop in loops for f in filters]
    workdir = tempfile.mkdtemp(prefix="vpncrypt-flood-")
    load0 = os.getloadavg()[0]
    results = []
    try:
        for i in range(args.runs):
            for loop, f in configs:
                r = run(loop, args.seconds, workdir, sockfilter=f, pin_flooder=pin,
                        daemon_env=env, rx_cpus=cpus if args.steer_rx else None)
                r["round"] = i + 1
                results.append(r)
                log(f"  round {i + 1}: {label(r)}: {r['unflooded_mbit']} -> "
                    f"{r['flooded_mbit']} Mbit/s ({r['ratio']:.0%}), flood "
                    f"{r['flood_rate']:,}/s", stamp=False)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    groups: dict = {}
    for r in results:
        groups.setdefault(label(r), []).append(r)
    print(f"## Garbage flood, {args.seconds:.0f} s ({time.strftime('%Y-%m-%d')}, "
          f"{platform.node()}, {os.cpu_count()} CPUs, load {load0:.2f} -> "
          f"{os.getloadavg()[0]:.2f}; flooder "
          f"{f'pinned to CPU {pin}' if pin else 'not pinned'}, daemons and iperf3 "
          f"{'not pinned' if args.pin_vpn == 'none' else f'pinned to CPU {args.pin_vpn}'}"
          f"{', the flood received on them (RPS)' if args.steer_rx else ''})\n")
    print(summary(groups))
    print("\nThe run with the median ratio of each configuration:\n")
    print(markdown([median_run(rs) for rs in groups.values()]))
    kinds = results[0]["by_kind"]
    total = sum(kinds.values())
    print("\nFlood mix: " + ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(kinds.items()))
          + f"; of it the server's socket filter drops "
          f"{sum(results[0]['prescreened'].values()) / total:.0%} before any pin (truncated, "
          "random bytes with a type byte a server never receives or an id it does not have, "
          "unknown ids)")
    if args.json:
        write_json(args.json, results, indent=2)


if __name__ == "__main__":
    main()

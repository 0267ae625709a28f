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

Runs, per packet loop (--loop native|python|both):
  1. unflooded: iperf3 -c <server tunnel address> -t S/2 (TCP, one stream, client -> server)
  2. flooded:   the flood runs for S seconds; iperf3 -t S-4 starts 2 s into it

and reports, as a Markdown table (and JSON with --json): the legit throughput flooded
and unflooded and their ratio (the goal is >= 50%), the flood's rate (packets/s sent,
arrived on the server's veth, read by the daemon, dropped by the kernel at the full
socket buffer), what the daemon counted as drops, by reason, and how many datagrams it
read but did not count, its resident memory before and after (VmRSS) and its peak
(VmHWM), its CPU time during the flood, and what the server sent to the flooder (must
be nothing; counted by a capture on the flooder's link and on the flooder's socket).

    sudo .venv/bin/python bench/flood.py [--seconds 20] [--loop native] [--json FILE]

Needs root, iproute2, iperf3 and tcpdump. Namespaces and processes go away at the end.
The machine's other load changes the numbers; run it on a quiet machine for figures.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, REPO)

from hostile import (FLOOD_SERVER, Flooder, capture_client_packets, delta, drops,  # noqa: E402
                     flood_result, link_stats, udp_snmp, vmrss_kb)
from netns import Netns  # noqa: E402
from vpnharness import PORT, SERVER_TUN4, Deployment, transfer  # noqa: E402

from vpncrypt.protocol.keys import generate_key  # noqa: E402

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
        try:
            srv.wait(10)
        except subprocess.TimeoutExpired:
            srv.kill()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vmhwm_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M).group(1))


def run(loop: str, seconds: float, workdir: str) -> dict:
    hosts = []

    def make():
        host = Netns()
        hosts.append(host)
        return host

    tmp = tempfile.mkdtemp(prefix=f"flood-{loop}-", dir=workdir)
    try:
        vpn = Deployment(make, tmp, keepalive=25, loop=loop)
        vpn.write("server.conf", vpn.server_text()
                  + f"\n[client ghost]\nid = {GHOST_ID}\nkey = {generate_key()}\n"
                    "allowed_ips = 10.201.0.200/32\n")
        flooder = Flooder(make, vpn.server_host)
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
        rss0, cpu0 = vmrss_kb(pid), cpu_seconds(pid)
        flooder.start_capture(os.path.join(tmp, "to-flooder.pcap"))
        flood = flooder.flood(tmp, FLOOD_SERVER, PORT, seconds=seconds, max_packets=10**9,
                              client_ids=[1, GHOST_ID], replays=replays, background=True)
        time.sleep(2)
        flooded = iperf(vpn, max(2, seconds - 4))
        report = flood_result(flood, seconds + 120)
        to_flooder = flooder.stop_capture()
        time.sleep(0.5)
        cpu1 = cpu_seconds(pid)
        after = vpn.server.stats()
        snmp = delta(udp_snmp(vpn.server_host), snmp0)
        link = delta(link_stats(vpn.server_host, flooder.server_if), link0)
        rss1, hwm = vmrss_kb(pid), vmhwm_kb(pid)
        alive = vpn.server.proc.poll() is None
        legit_rx = (int(after["peers"].get("c1", {}).get("rx_packets", 0))
                    - int(before["peers"].get("c1", {}).get("rx_packets", 0)))
        got = delta(drops(after), drops(before))
        read = snmp.get("InDatagrams", 0) - legit_rx
        return {
            "loop": loop, "seconds": report["seconds"],
            "unflooded_mbit": round(unflooded, 1), "flooded_mbit": round(flooded, 1),
            "ratio": round(flooded / unflooded, 3) if unflooded else None,
            "flood_sent": report["sent"], "flood_rate": report["rate"],
            "by_kind": report["by_kind"],
            "arrived_on_veth": link.get("rx_packets", 0),
            "read_by_daemon": read, "kernel_rcvbuf_drops": snmp.get("RcvbufErrors", 0),
            "drops": got, "uncounted": read - sum(got.values()),
            "rss_before_kb": rss0, "rss_after_kb": rss1, "hwm_kb": hwm,
            "daemon_cpu_s": round(cpu1 - cpu0, 2), "server_alive": alive,
            "to_flooder_captured": to_flooder, "to_flooder_received": report["received"],
        }
    finally:
        for host in reversed(hosts):
            host.close()
        shutil.rmtree(tmp, ignore_errors=True)


def markdown(results: list[dict]) -> str:
    cols = [r["loop"] for r in results]
    rows = [
        ("legit TCP, unflooded (Mbit/s)", lambda r: f"{r['unflooded_mbit']:.1f}"),
        ("legit TCP, flooded (Mbit/s)", lambda r: f"{r['flooded_mbit']:.1f}"),
        ("flooded / unflooded (goal >= 50%)", lambda r: f"{r['ratio']:.0%}"),
        ("flood sent (packets/s)", lambda r: f"{r['flood_rate']:,}"),
        ("frames on the server's veth (/s; large datagrams are several)",
         lambda r: f"{r['arrived_on_veth'] / r['seconds']:,.0f}"),
        ("read by the daemon (packets/s)", lambda r: f"{r['read_by_daemon'] / r['seconds']:,.0f}"),
        ("dropped by the kernel, socket buffer full", lambda r: f"{r['kernel_rcvbuf_drops']:,}"),
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
    out = ["| | " + " | ".join(f"{c} loop" for c in cols) + " |",
           "|---|" + "---:|" * len(cols)]
    out += [f"| {name} | " + " | ".join(fmt(r) for r in results) + " |" for name, fmt in rows]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="flood duration (default 20)")
    ap.add_argument("--loop", choices=["native", "python", "both"], default="native")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/flood.py: needs root (network namespaces)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    loops = ["native", "python"] if args.loop == "both" else [args.loop]
    workdir = tempfile.mkdtemp(prefix="vpncrypt-flood-")
    try:
        results = [run(loop, args.seconds, workdir) for loop in loops]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"## Garbage flood, {args.seconds:.0f} s ({time.strftime('%Y-%m-%d')}, "
          f"{platform.node()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f})\n")
    print(markdown(results))
    kinds = results[0]["by_kind"]
    total = sum(kinds.values())
    print("\nFlood mix: " + ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(kinds.items())))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

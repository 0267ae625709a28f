"""Helpers for the hostile-network tests (tests/test_hostile.py) and bench/flood.py.

A flooding host joined to the server's namespace by its own veth, kernel counters of a
namespace, a daemon's resident memory, packet captures, and the drop counters the
daemon reports on SIGUSR1.
"""

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time

from netns import TESTS_DIR, link

FLOOD_SERVER = "10.200.9.1"
FLOOD_HOST = "10.200.9.2"


class Flooder:
    """A third host on its own link to the server (10.200.9.2 -> 10.200.9.1)."""

    def __init__(self, make_host, server_host):
        self.host = make_host()
        self.server_if, self.if_name = link(server_host, self.host,
                                            f"{FLOOD_SERVER}/24", f"{FLOOD_HOST}/24")
        self.server_host = server_host
        self._dump = None
        self._dump_path = None

    def start_capture(self, path: str) -> None:
        """Capture every IPv4 packet the server's side sends towards the flooder."""
        self._dump_path = path
        self._dump = self.host.popen(
            ["tcpdump", "-n", "-U", "-i", self.if_name, "-w", path, "ip", "and", "src", "host",
             FLOOD_SERVER], stderr=subprocess.PIPE, text=True)
        line = self._dump.stderr.readline()
        assert "listening on" in line, line

    def stop_capture(self) -> dict:
        """Stop the capture; what it holds, by kind ({"udp": n, "icmp 11/1": n, ...})."""
        time.sleep(0.3)
        self._dump.send_signal(signal.SIGINT)
        self._dump.wait(10)
        return pcap_kinds(self._dump_path)

    def flood(self, tmp_path, target: str, port: int, seconds: float, max_packets: int,
              client_ids, unknown_ids=(999, 4242), replays=(), weights=None, seed: int = 7,
              linger: float = 1.0, background: bool = False, prefix=(), rate: float = 0,
              server_ids=None):
        """Run flooder.py here; its JSON report (or the Popen, with background=True).
        `rate`: packets a second (0: as fast as it goes). `server_ids`: every client id
        the server has, when `client_ids` (the ones to forge) are not all of them.
        `prefix` goes before the command (e.g. ["taskset", "-c", "1"])."""
        spec = {"target": target, "port": port, "seconds": seconds, "max_packets": max_packets,
                "seed": seed, "client_ids": list(client_ids), "unknown_ids": list(unknown_ids),
                "replays": [p.hex() for p in replays], "weights": weights or {},
                "linger": linger, "rate": rate, "server_ids": list(server_ids or client_ids)}
        spec_path = os.path.join(str(tmp_path), f"flood-{seed}.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        proc = self.host.popen([*prefix, sys.executable, os.path.join(TESTS_DIR, "flooder.py"),
                                spec_path],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if background:
            return proc
        return flood_result(proc, seconds + linger + 60)


def flood_result(proc, timeout: float) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"flooder failed ({proc.returncode}):\n{out}\n{err}"
    return json.loads(out.strip().splitlines()[-1])


# The kernel, not the daemon, sends this one: a datagram's fragments did not all arrive
# within 30 s (the flood's large datagrams, when the backlog dropped some fragments).
FRAGMENT_REASSEMBLY_TIMEOUT = "icmp 11/1"

# A one-way UDP stream through the tunnel (a camera, a log shipper): a sink that never
# answers, on port 9999 of argv[1], and a source sending to it every 20 ms, for argv[2]
# seconds or until killed.
ONE_WAY_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999))
print("ready", flush=True)
while True:
    s.recv(65536)
"""

ONE_WAY_SOURCE = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + float(sys.argv[2]) if len(sys.argv) > 2 else float("inf")
while time.monotonic() < end:
    try:
        s.sendto(b"x" * 200, (sys.argv[1], 9999))
    except OSError:  # the tunnel interface goes away at teardown
        pass
    time.sleep(0.02)
"""


def pcap_kinds(path: str) -> dict:
    """{"udp": n, "icmp TYPE/CODE": n, "ip proto N": n, "other": n} of an Ethernet pcap."""
    with open(path, "rb") as f:
        data = f.read()
    kinds: dict = {}
    if len(data) < 24:
        return kinds
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    offset = 24
    while offset + 16 <= len(data):
        incl_len = struct.unpack_from(endian + "I", data, offset + 8)[0]
        frame = data[offset + 16: offset + 16 + incl_len]
        offset += 16 + incl_len
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            kind = "other"
        else:
            ip = frame[14:]
            ihl = (ip[0] & 0x0F) * 4
            if ip[9] == 17:
                kind = "udp"
            elif ip[9] == 1 and len(ip) >= ihl + 2:
                kind = f"icmp {ip[ihl]}/{ip[ihl + 1]}"
            else:
                kind = f"ip proto {ip[9]}"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def udp_snmp(host) -> dict:
    """The namespace's `Udp:` counters from /proc/net/snmp (InDatagrams, RcvbufErrors, ...)."""
    text = host.run(["cat", "/proc/net/snmp"]).stdout
    rows = [ln.split()[1:] for ln in text.splitlines() if ln.startswith("Udp:")]
    return {k: int(v) for k, v in zip(rows[0], rows[1])}


def filter_drops(snmp: dict) -> int:
    """What socket filters dropped, from (a delta of) udp_snmp: InErrors less the
    receive-buffer overflows and checksum errors it also holds."""
    return snmp.get("InErrors", 0) - snmp.get("RcvbufErrors", 0) - snmp.get("InCsumErrors", 0)


def link_stats(host, ifname: str) -> dict:
    [info] = host.ip_json("-s", "link", "show", "dev", ifname)
    return {"rx_packets": info["stats64"]["rx"]["packets"],
            "rx_dropped": info["stats64"]["rx"]["dropped"],
            "tx_packets": info["stats64"]["tx"]["packets"]}


def vmrss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1))


def drops(fields: dict) -> dict:
    """{reason: count} from a stats or peer line's drop_<reason>=N fields."""
    return {k[5:]: int(v) for k, v in fields.items() if k.startswith("drop_")}


def delta(after: dict, before: dict) -> dict:
    keys = set(after) | set(before)
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys)
            if after.get(k, 0) != before.get(k, 0)}


# Sends the hex-encoded datagrams of file argv[1] to argv[2]:argv[3] (a replaying attacker).
REPLAY_SENDER = """
import socket, sys
payloads = [bytes.fromhex(h) for h in open(sys.argv[1]).read().split()]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for p in payloads:
    s.sendto(p, (sys.argv[2], int(sys.argv[3])))
print(len(payloads))
"""


def capture_client_packets(vpn, tmp_path, traffic, index: int = 0) -> list[bytes]:
    """Run `traffic()` while capturing the server's underlay to client `index`; return the
    client->server UDP payloads (genuine, sealed packets)."""
    from pcap import udp_payloads

    vpn.segment_on_the_wire(index + 1)
    path = os.path.join(str(tmp_path), f"genuine{index}.pcap")
    dump = vpn.server_host.popen(["tcpdump", "-n", "-U", "-i", vpn.links[index][0], "-w", path,
                                  "udp port 51900"], stderr=subprocess.PIPE, text=True)
    assert "listening on" in dump.stderr.readline()
    traffic()
    time.sleep(0.5)
    dump.send_signal(signal.SIGINT)
    dump.wait(10)
    return [p[4] for p in udp_payloads(path) if p[3] == 51900]

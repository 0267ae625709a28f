"""Fifty clients at once: one server, 50 client hosts, 50 real vpncryptd clients, all active.

Topology (every host a network namespace this test made):

    client 1 ... client 50          each: eth0 10.200.1.i/16 (underlay)
        |          |                       vpn0 10.201.0.(i+1)/24, fd00:201::(i+1)/64
     sw1 ...     sw50               veth ends in the "switch" host,
        \\   br0   /                 all enslaved to one Linux bridge (STP off)
            sw0
             |
          server                    eth0 10.200.0.1/16, vpn0 10.201.0.1/24, fd00:201::1/64

A bridge instead of 50 veth pairs into the server keeps the server an ordinary host with
one underlay interface, as in a real deployment, and each client a distinct source
address on it. Every client pings the server's tunnel address, the server pings every
client back (IPv4 and IPv6 inside), and `vpncrypt show --json` on the server must list
50 connected clients, each at its own underlay address.

Bounded: hosts and links are set up by a small thread pool, the 50 clients start in
parallel (byte code shared through a PYTHONPYCACHEPREFIX, so 51 interpreters do not each
compile vpncrypt, and `mtu` set so that none probes the underlay), pings run in parallel,
and the daemons are stopped together. The whole test must finish within 90 s on a
2-core machine (30-45 s here). 51 daemons at about 20 MB each need about 1 GB.
"""

import ipaddress
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from netns import REPO_ROOT, python_env
from vpnharness import PORT, Daemon

from vpncrypt.protocol.keys import generate_key

pytestmark = pytest.mark.netns

CLIENTS = 50
WORKERS = 8  # parallel `ip`/ping/daemon-start jobs; the machine has 2 cores
SERVER_UNDERLAY = "10.200.0.1"
SERVER_TUN4 = "10.201.0.1"
SERVER_TUN6 = "fd00:201::1"
TEST_BUDGET = 90.0  # seconds, the whole test (set-up, traffic, checks)
# Set explicitly: the default (underlay MTU minus overhead) costs each daemon one more
# short-lived netlink helper process (a pyroute2 import) at start-up, 51 times here.
MTU = 1420


def client_underlay(i: int) -> str:
    return f"10.200.1.{i}"


def client_tun4(i: int) -> str:
    return f"10.201.0.{i + 1}"


def client_tun6(i: int) -> str:
    return f"fd00:201::{i + 1:x}"


def write(path: str, text: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def server_conf(tmp: str, keys: list[str]) -> str:
    text = (f"[server]\nlisten = 0.0.0.0:{PORT}\ninterface = vpn0\n"
            f"address = {SERVER_TUN4}/24, {SERVER_TUN6}/64\nserver_id = 7\nmtu = {MTU}\n"
            f"state_dir = {tmp}/server-state\n")
    for i, key in enumerate(keys, start=1):
        text += (f"\n[client c{i}]\nid = {i}\nkey = {key}\n"
                 f"allowed_ips = {client_tun4(i)}/32, {client_tun6(i)}/128\n")
    return write(os.path.join(tmp, "server.conf"), text)


def client_conf(tmp: str, i: int, key: str) -> str:
    return write(os.path.join(tmp, f"client{i}.conf"),
                 f"[client]\nid = {i}\nserver = {SERVER_UNDERLAY}:{PORT}\nserver_id = 7\n"
                 f"key = {key}\ninterface = vpn0\n"
                 f"address = {client_tun4(i)}/24, {client_tun6(i)}/64\nkeepalive = 5\n"
                 f"mtu = {MTU}\n"
                 f"state_dir = {tmp}/client{i}-state\n")


def attach(switch, host, port: str, addr: str) -> None:
    """A veth from the switch's bridge to `host` (eth0, `addr`), both ends up."""
    switch.ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.name)
    switch.ip("link", "set", port, "master", "br0", "up")
    host.add_addr("eth0", addr)
    host.set_up("eth0")


def ping(host, target: str, count: int = 3):
    return host.run(["ping", "-c", str(count), "-i", "0.2", "-W", "2", "-q", target],
                    check=False, timeout=count * 3 + 10)


def ping_until(host, target: str, timeout: float = 20.0) -> float:
    """Ping once a time until a reply comes (the client's first data waits for its
    clock sync); return how long it took."""
    started = time.monotonic()
    while True:
        if ping(host, target, count=1).returncode == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"no ping reply from {target} in {host.name} within {timeout} s")


def vm_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def test_fifty_clients_all_pass_traffic(netns_factory, tmp_path):
    t_start = time.monotonic()
    tmp = str(tmp_path)
    phases = {}
    pool = ThreadPoolExecutor(WORKERS)
    daemons: list[Daemon] = []
    try:
        # -- hosts and the bridged underlay --------------------------------------------------
        switch = netns_factory()
        server_host = netns_factory()
        client_hosts = list(pool.map(lambda _: netns_factory(), range(CLIENTS)))
        switch.ip("link", "add", "br0", "type", "bridge", "stp_state", "0")
        switch.ip("link", "set", "br0", "up")
        attach(switch, server_host, "sw0", f"{SERVER_UNDERLAY}/16")
        list(pool.map(lambda i: attach(switch, client_hosts[i - 1], f"sw{i}",
                                       f"{client_underlay(i)}/16"), range(1, CLIENTS + 1)))
        phases["namespaces"] = time.monotonic() - t_start

        # -- configuration and daemons -------------------------------------------------------
        keys = [generate_key() for _ in range(CLIENTS)]
        env = {
            "VPNCRYPT_LOOP": "native",
            # One shared byte-code cache: 51 interpreters need not each compile vpncrypt.
            "PYTHONDONTWRITEBYTECODE": "",
            "PYTHONPYCACHEPREFIX": os.path.join(tmp, "pycache"),
        }
        t = time.monotonic()
        server = Daemon(server_host, server_conf(tmp, keys), os.path.join(tmp, "server.log"),
                        env=env)
        daemons.append(server)
        server.wait_log(r"server started: .* 50 clients", timeout=30)
        confs = [client_conf(tmp, i, keys[i - 1]) for i in range(1, CLIENTS + 1)]
        clients = [Daemon(client_hosts[i - 1], confs[i - 1], os.path.join(tmp, f"client{i}.log"),
                          env=env) for i in range(1, CLIENTS + 1)]
        daemons.extend(clients)
        loops = [c.wait_log(r"client started: .* (native|Python) loop", timeout=60).group(1)
                 for c in clients]
        if os.environ.get("CI"):
            assert set(loops) == {"native"}, loops
        phases["daemons"] = time.monotonic() - t

        # -- every client -> server, then server -> every client --------------------------------
        t = time.monotonic()
        first = list(pool.map(lambda h: ping_until(h, SERVER_TUN4), client_hosts))
        up = list(pool.map(lambda h: ping(h, SERVER_TUN4), client_hosts))
        back4 = list(pool.map(lambda i: ping(server_host, client_tun4(i)), range(1, CLIENTS + 1)))
        back6 = list(pool.map(lambda i: ping(server_host, client_tun6(i)), range(1, CLIENTS + 1)))
        phases["pings"] = time.monotonic() - t
        failed = [f"client{i} -> server" for i, r in enumerate(up, 1) if r.returncode]
        failed += [f"server -> client{i} (v4)" for i, r in enumerate(back4, 1) if r.returncode]
        failed += [f"server -> client{i} (v6)" for i, r in enumerate(back6, 1) if r.returncode]
        assert not failed, f"{len(failed)} pings failed: {failed}"

        # -- the server's view -----------------------------------------------------------------
        show = subprocess.run(
            [sys.executable, "-m", "vpncrypt.cli.vpncrypt", "show", "--state-dir",
             os.path.join(tmp, "server-state"), "--json"],
            capture_output=True, text=True, timeout=30, env=python_env(), cwd=REPO_ROOT)
        assert show.returncode == 0, show.stderr
        [doc] = json.loads(show.stdout)
        assert doc["role"] == "server"
        entries = doc["clients"]
        assert len(entries) == CLIENTS
        connected = [c for c in entries if c["endpoint"]]
        assert len(connected) == CLIENTS, [c["name"] for c in entries if not c["endpoint"]]
        endpoints = {c["endpoint"] for c in entries}
        assert len(endpoints) == CLIENTS, f"endpoints not distinct: {sorted(endpoints)}"
        for c in entries:
            host = c["endpoint"].rpartition(":")[0]
            assert ipaddress.ip_address(host) == ipaddress.ip_address(client_underlay(c["id"])), c
            assert c["rx_packets"] > 0 and c["tx_packets"] > 0, c
        bad = {r: n for r, n in doc["totals"]["drops"].items()
               if r in ("auth", "clock-skew", "spoofed-source", "unknown-client", "replay",
                        "malformed", "bad-type")}
        assert not bad, f"unexpected drops on the server: {bad}"

        rss = [vm_rss(d.proc.pid) for d in daemons]
        elapsed = time.monotonic() - t_start
        print(f"\n50 clients: set-up {phases['namespaces']:.1f} s, daemons "
              f"{phases['daemons']:.1f} s, pings {phases['pings']:.1f} s (first reply after "
              f"max {max(first):.2f} s), total {elapsed:.1f} s; server VmRSS "
              f"{rss[0] / 2**20:.1f} MiB, all daemons {sum(rss) / 2**20:.0f} MiB")
        assert elapsed < TEST_BUDGET, f"took {elapsed:.1f} s (budget {TEST_BUDGET:.0f} s): {phases}"
    finally:
        # Stop all daemons together (the fixture would stop them one by one).
        for d in daemons:
            if d.proc.poll() is None:
                d.proc.terminate()
        for d in daemons:
            try:
                d.proc.wait(10)
            except subprocess.TimeoutExpired:
                d.proc.kill()
        pool.shutdown(wait=True)

#!/usr/bin/env python3
"""vpncrypt against peer VPNs, through the same veth underlay, each side on its own core.

Two network namespaces, A (server side) and B (client side), joined by one veth pair
(MTU 1500, 10.200.0.1/24 in A, 10.200.0.2/24 in B). Then, one system after another:

  novpn            iperf3 straight over the veth (the ceiling)
  vpncrypt         vpncryptd, native packet loop (the default, offloads on)
  vpncrypt-nooffload  the same with `offload = no` in both configurations
  vpncrypt-python  vpncryptd with VPNCRYPT_LOOP=python (same native crypto, Python loop)
  vpncrypt-tcp     vpncryptd over TCP (listen_tcp / transport = tcp), native loop
  fastd-salsa2012  fastd, method salsa2012+umac
  fastd-aes128-gcm fastd, method aes128-gcm (reported as failed if fastd refuses it)
  openvpn          OpenVPN 2.6, UDP, AES-256-GCM, TLS in p2p mode (tls-server/tls-client,
                   self-signed certificates checked by peer-fingerprint), DCO disabled
  openvpn-tcp      the same with proto tcp-server / tcp-client
  wireguard-go     wireguard-go (userspace) configured by `wg`, tunnel MTU 1420
  tinc             tinc 1.0, router mode, Cipher aes-256-cbc + Digest sha256, MTU 1420

vpncrypt runs as users run it, like the peers' packaged binaries (--install wheel, the
default): this checkout's wheel is built and pip-installed into a fresh venv and its
`vpncryptd` script started; --install checkout runs `python -m vpncrypt.cli.vpncryptd`
from the checkout instead (its runpy and editable-install hook add ~0.8 MB of RSS).

Server side in A, client side in B. Everything in A (daemon, iperf3 server) runs under
`taskset -c 0`, everything in B (daemon, iperf3 client) under `taskset -c 1`. Each
system gets its own tunnel subnet 10.201.K.0/24 (.1 in A, .2 in B). Tunnel MTUs: vpncrypt
keeps its default (underlay 1500 - IP - UDP - 24 = 1448); fastd, wireguard-go and tinc
1420; OpenVPN its defaults (tun-mtu 1500, mssfix 1492). The MTU actually found on each
tunnel interface is recorded.

Tests, driven from B towards A's tunnel address (iperf3 -J, each with a timeout):
  tcp_fwd  TCP, one stream, B -> A           iperf3 -c A -t S
  tcp_rev  TCP, one stream, A -> B           iperf3 -c A -t S -R
  tcp_p4   TCP, 4 parallel streams, B -> A   iperf3 -c A -t S -P 4
  udp64    UDP, 64-byte payloads, unlimited  iperf3 -c A -t S -u -l 64 -b 0
           (reported: packets/s received by the iperf3 server)
Each test runs --runs times (default 2) per system, in rounds: every system is started,
measured once (all four tests) and stopped, then the next; round 2 starts them all again,
and so on, so that drifts in the machine's load hit all systems alike. Tables show
MEDIANS over the rounds, and the JSON has every run. Around each run the script reads
utime+stime of both daemons (and of each of their threads, with the kernel part) from
/proc/PID[/task/TID]/stat, and /proc/stat per CPU, so it can say how busy each daemon,
thread and core was; iperf3's own CPU figures come from its JSON. The daemons' pids are
the processes found in the namespaces (`ip netns pids`) with the expected executable, not
the `ip netns exec` wrappers. Peak RSS is VmHWM from /proc/PID/status after each round's
tests (the largest over the rounds).

Other work on the machine: around each run the script also sums the CPU time that
processes outside the benchmark (not in its namespaces, not its children) used; a run in
which they took more than --max-foreign % of a core is repeated (--retries, after waiting
up to --wait-quiet s for a quiet machine), and a noisy run that had to be kept is flagged.

"Mbit per daemon CPU-second" = Mbit received in the two single-stream TCP tests (fwd +
rev) / CPU seconds that both daemons used during them (utime+stime). Per-test values are
in the JSON.

vpncryptd runs from this checkout with the dev venv's Python; its byte code is cached in
a warmed PYTHONPYCACHEPREFIX (as an installed package would have it), so start-up and
peak RSS do not include compiling the sources.

Output: Markdown on stdout, bench/out/peers.json (--json), and next to it peers.png when
matplotlib can be imported (also from bench/out/.pylib, e.g. after
`.venv/bin/pip install --target bench/out/.pylib matplotlib`).

    sudo .venv/bin/python bench/peers.py [--runs 2] [--seconds 10]
        [--only novpn,vpncrypt,fastd,openvpn,wireguard-go,tinc]

--only takes row keys (above) or families (vpncrypt = both vpncrypt rows, fastd = both
fastd rows). Needs root, iproute2, iperf3, taskset, and the peers' Debian packages
(`apt-get install iperf3 wireguard-go wireguard-tools openvpn fastd tinc`); a peer whose
binary is missing or that does not come up is reported and skipped. All namespaces and
processes are removed at the end, also on errors, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# harness first: it puts tests/ (netns) and the checkout on sys.path
from harness import (BENCH, CLK_TCK, OUT, ROOT, cpu_model, cpu_ticks, is_vpncryptd, log,
                     proc_cmdline, proc_status, read_stat, utc_date, wait_listening, write_json)
import netns  # tests/netns.py: Netns, link; its atexit hook also cleans up

PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() \
    else sys.executable

UNDERLAY_A, UNDERLAY_B = "10.200.0.1", "10.200.0.2"
IPERF_PORT = 5201
CORE_A, CORE_B = "0", "1"
TESTS_ORDER = ("tcp_fwd", "tcp_rev", "tcp_p4", "udp64")
TEST_ARGS = {
    "tcp_fwd": [],
    "tcp_rev": ["-R"],
    "tcp_p4": ["-P", "4"],
    "udp64": ["-u", "-l", "64", "-b", "0"],
}
FAMILIES = {"vpncrypt": ("vpncrypt", "vpncrypt-nooffload", "vpncrypt-python"),
            "fastd": ("fastd-salsa2012", "fastd-aes128-gcm")}
TAG = f"{os.getpid() % 100000}"  # keeps names that live outside the namespaces unique


class SetupError(RuntimeError):
    pass


# -- /proc ----------------------------------------------------------------------------------

def daemon_ticks(pid: int) -> int | None:
    """utime + stime (clock ticks) of pid, or None if gone."""
    try:
        return cpu_ticks(pid)
    except (OSError, IndexError, ValueError):
        return None


def thread_ticks(pid: int) -> dict[int, int]:
    return {tid: u + s for tid, (u, s) in thread_split(pid).items()}


def thread_split(pid: int) -> dict[int, tuple[int, int]]:
    """tid -> (utime, stime) in clock ticks, for each thread of pid."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            fields = read_stat(f"/proc/{pid}/task/{tid}/stat")[1]
            out[int(tid)] = (int(fields[11]), int(fields[12]))
        except (OSError, IndexError, ValueError):
            continue
    return out


def cpu_times() -> dict[str, list[int]]:
    """Per-CPU jiffies from /proc/stat: user nice system idle iowait irq softirq steal."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if re.match(r"cpu\d", line):
                name, *vals = line.split()
                out[name] = [int(v) for v in vals[:8]]
    return out


def cpu_busy(before, after) -> dict[str, dict[str, float]]:
    """Percent of each CPU's time in user(+nice), system, softirq(+irq), idle, steal."""
    res = {}
    for cpu in after:
        d = [a - b for a, b in zip(after[cpu], before.get(cpu, after[cpu]))]
        total = sum(d) or 1
        user, nice, system, idle, iowait, irq, softirq, steal = d
        res[cpu] = {"user": 100 * (user + nice) / total, "system": 100 * system / total,
                    "softirq": 100 * (softirq + irq) / total,
                    "idle": 100 * (idle + iowait) / total, "steal": 100 * steal / total}
        res[cpu]["busy"] = 100 - res[cpu]["idle"]
    return {c: {k: round(v, 1) for k, v in r.items()} for c, r in res.items()}


def all_ticks() -> dict[int, tuple[int, int, int, str]]:
    """Every process: pid -> (ppid, utime+stime, cutime+cstime, comm)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm, fields = read_stat(f"/proc/{entry}/stat")
        except OSError:
            continue
        try:
            out[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]),
                               int(fields[13]) + int(fields[14]), comm)
        except (IndexError, ValueError):
            continue
    return out


def foreign_cpu(before, after, ours: set[int], wall: float) -> dict:
    """CPU (% of one core) used during a run by processes that are not ours (not in our
    namespaces, not this script or its children), and by kernel threads.
    `foreign_alive_pct`: utime+stime of the foreign processes alive at the end of the run
    (those started during it count whole); `foreign_reaped_pct`: the cutime+cstime that
    foreign parents gained, i.e. the whole lifetimes of the children they reaped during the
    run (a test suite's many short-lived processes show up only there; a long-lived child
    reaped in the window over-counts). `foreign_pct` is their sum: on a quiet machine it
    stays below 1%."""
    foreign, reaped, kthreads, top = 0, 0, 0, {}
    for pid, (ppid, own, kids, comm) in after.items():
        if pid in ours:
            continue
        b = before.get(pid)
        d = own - (b[1] if b else 0)
        dk = kids - (b[2] if b else 0)
        if pid == 2 or ppid == 2:
            kthreads += max(d, 0)
            continue
        reaped += max(dk, 0)
        if d > 0:
            foreign += d
            top[f"{pid} {comm}"] = d
    busiest = sorted(top.items(), key=lambda kv: -kv[1])[:3]
    pct = lambda t: round(100 * t / CLK_TCK / wall, 1)  # noqa: E731
    return {"foreign_pct": pct(foreign + reaped), "foreign_alive_pct": pct(foreign),
            "foreign_reaped_pct": pct(reaped), "kthreads_pct": pct(kthreads),
            "foreign_top": {k: pct(v) for k, v in busiest}}


def proc_exe(pid: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""


def affinity(pid: int) -> str:
    try:
        return ",".join(str(c) for c in sorted(os.sched_getaffinity(pid)))
    except OSError:
        return "?"


def vpncrypt_thread_roles(pid: int) -> dict[int, str]:
    """Name vpncryptd's threads: the main thread is the pid; a native loop thread sits in
    poll() on [its input fd, stop pipe], so the first pollfd tells which loop it is
    (TUN fd -> tun-to-udp, UDP socket -> udp-to-tun, the stop pipe -> tcp-to-tun, the
    reader of TCP connections). Read while idle."""
    roles = {}
    for tid in sorted(thread_ticks(pid)):
        if tid == pid:
            roles[tid] = "main"
            continue
        role = f"thread-{tid}"
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                parts = f.read().split()
            if parts and parts[0] == "7":  # poll(fds, nfds, timeout)
                with open(f"/proc/{pid}/mem", "rb") as mem:
                    mem.seek(int(parts[1], 16))
                    fd = int.from_bytes(mem.read(4), "little", signed=True)
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:"):
                    role = "udp-to-tun"
                elif "tun" in target:
                    role = "tun-to-udp"
                elif target.startswith("pipe:"):
                    role = "tcp-to-tun"
        except (OSError, ValueError, IndexError):
            pass
        roles[tid] = role
    return roles


# -- process helpers ------------------------------------------------------------------------

def stop_procs(procs, grace: float = 5.0) -> None:
    """SIGTERM each Popen's process group, wait, then SIGKILL."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            p.wait(5)
        try:
            os.killpg(p.pid, signal.SIGKILL)  # stragglers of the group
        except (ProcessLookupError, PermissionError):
            pass


def kill_leftovers(host) -> None:
    for _ in range(3):
        pids = host.pids()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def tail(path: str, n: int = 1500) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def version_of(argv: list[str], pattern: str | None = None) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (p.stdout + p.stderr).strip()
    if pattern:
        m = re.search(pattern, text)
        return m.group(0) if m else text.splitlines()[0] if text else "?"
    return text.splitlines()[0] if text else "?"


# -- the systems ----------------------------------------------------------------------------

class System:
    """One row: knows how to start its server side in A and client side in B."""

    key = ""
    family = ""
    label = ""
    binary = ""   # must be on PATH
    exe = ""      # basename of /proc/PID/exe of the daemon
    ifname = ""

    def __init__(self, ctx: Bench, k: int):
        self.ctx = ctx
        self.k = k
        self.dir = os.path.join(ctx.tmp, self.key)
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.procs: list[subprocess.Popen] = []
        self.logs: dict[str, str] = {}
        self.notes: list[str] = []

    @property
    def tun_a(self) -> str:
        return f"10.201.{self.k}.1"

    @property
    def tun_b(self) -> str:
        return f"10.201.{self.k}.2"

    def target(self) -> str:
        return self.tun_a

    def available(self) -> str | None:
        if self.binary and shutil.which(self.binary) is None:
            return f"{self.binary} not installed"
        return None

    def version(self) -> str:
        return ""

    def write(self, name: str, text: str, mode: int = 0o600) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def spawn(self, side: str, argv: list[str], env=None) -> subprocess.Popen:
        host = self.ctx.a if side == "a" else self.ctx.b
        core = CORE_A if side == "a" else CORE_B
        logpath = os.path.join(self.dir, f"{side}.log")
        self.logs[side] = logpath
        logf = open(logpath, "ab")
        try:
            proc = host.popen(["taskset", "-c", core, *argv], stdout=logf,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        finally:
            logf.close()
        self.procs.append(proc)
        return proc

    def wait_log(self, side: str, pattern: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if re.search(pattern, tail(self.logs[side], 1 << 20)):
                return
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise SetupError(f"{self.key}: a daemon exited ({dead[0].returncode}):\n"
                                 f"{tail(self.logs[side])}")
            if time.monotonic() > deadline:
                raise SetupError(f"{self.key}: no /{pattern}/ in the {side} log within "
                                 f"{timeout} s:\n{tail(self.logs[side])}")
            time.sleep(0.05)

    def wait_link(self, host, ifname: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while ifname not in host.link_names():
            if any(p.poll() is not None for p in self.procs):
                raise SetupError(f"{self.key}: a daemon exited before {ifname} appeared:\n"
                                 + "\n".join(tail(p) for p in self.logs.values()))
            if time.monotonic() > deadline:
                raise SetupError(f"{self.key}: no interface {ifname} in {host.name}")
            time.sleep(0.05)

    def configure_link(self, host, ifname: str, cidr: str, mtu: int | None) -> None:
        host.ip("addr", "add", cidr, "dev", ifname)
        if mtu:
            host.ip("link", "set", "dev", ifname, "mtu", str(mtu))
        host.ip("link", "set", "dev", ifname, "up")

    def reset(self) -> None:
        """Fresh directory, keys and logs for a new start."""
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o755)
        self.procs, self.logs, self.notes = [], {}, []

    def start(self) -> None:
        raise NotImplementedError

    def check(self) -> None:
        """After the tunnel works: assert what the row claims (e.g. which loop)."""

    def stop(self) -> None:
        stop_procs(self.procs)
        self.procs = []


class NoVPN(System):
    key = family = "novpn"
    label = "no VPN (veth)"

    def target(self) -> str:
        return UNDERLAY_A

    def start(self) -> None:
        pass


class Vpncrypt(System):
    key = family = "vpncrypt"
    label = "vpncrypt (native loop)"
    exe = "python3"
    ifname = "vpn0"
    loop_env: str | None = None
    extra_conf = ""
    server_conf = client_conf = ""  # lines for one end only
    expect_log = r"native loop \(offloads: csum, tso4, tso6, (uso4, uso6, )?udp-gso, udp-gro\)"

    def available(self) -> str | None:
        return None if os.path.exists(PYTHON) else f"{PYTHON} missing"

    def version(self) -> str:
        return self.ctx.vpncrypt_version

    def genkey(self) -> str:
        return subprocess.run([PYTHON, "-m", "vpncrypt.cli.vpncrypt", "genkey"], cwd=ROOT,
                              env=self.ctx.py_env, check=True, capture_output=True,
                              text=True, timeout=30).stdout.strip()

    def start(self) -> None:
        key = self.genkey()
        server = self.write("server.conf", (
            f"[server]\nlisten = {UNDERLAY_A}:51900\ninterface = {self.ifname}\n"
            f"address = {self.tun_a}/24\nserver_id = 7\n"
            f"state_dir = {os.path.join(self.dir, 'server-state')}\n{self.server_conf}\n"
            f"{self.extra_conf}\n"
            f"[client c1]\nid = 1\nkey = {key}\nallowed_ips = {self.tun_b}/32\n"))
        client = self.write("client.conf", (
            f"[client]\nid = 1\nserver = {UNDERLAY_A}:51900\nserver_id = 7\nkey = {key}\n"
            f"interface = {self.ifname}\naddress = {self.tun_b}/24\nkeepalive = 25\n"
            f"state_dir = {os.path.join(self.dir, 'client-state')}\n{self.extra_conf}"
            f"{self.client_conf}"))
        env = dict(self.ctx.installed_env or self.ctx.py_env)
        env.pop("VPNCRYPT_LOOP", None)
        if self.loop_env:
            env["VPNCRYPT_LOOP"] = self.loop_env
        argv = [*(self.ctx.vpncryptd or [PYTHON, "-m", "vpncrypt.cli.vpncryptd"]), "-c"]
        self.spawn("a", [*argv, server, "--foreground"], env=env)
        self.wait_log("a", r"server started")
        self.spawn("b", [*argv, client, "--foreground"], env=env)
        self.wait_log("b", r"client started")

    def check(self) -> None:
        for side in ("a", "b"):
            text = tail(self.logs[side], 1 << 20)
            m = re.search(r"(server|client) started: .*", text)
            line = m.group(0) if m else "?"
            self.notes.append(f"{side}: {line}")
            if not re.search(self.expect_log, line):
                raise SetupError(f"{self.key}: expected /{self.expect_log}/ in: {line}")

    def daemon_filter(self, pid: int) -> bool:
        return is_vpncryptd(proc_cmdline(pid))


class VpncryptNoOffload(Vpncrypt):
    key = "vpncrypt-nooffload"
    label = "vpncrypt (native loop, offload = no)"
    extra_conf = "offload = no\n"
    expect_log = r"native loop \(offloads: none\)"


class VpncryptPython(Vpncrypt):
    key = "vpncrypt-python"
    label = "vpncrypt (VPNCRYPT_LOOP=python)"
    loop_env = "python"
    expect_log = r"Python loop"


class VpncryptTCP(Vpncrypt):
    key = "vpncrypt-tcp"
    label = "vpncrypt over TCP (native loop)"
    server_conf = f"listen_tcp = {UNDERLAY_A}:51900\n"
    client_conf = "transport = tcp\n"


class Fastd(System):
    family = "fastd"
    binary = exe = "fastd"
    ifname = "fastd0"
    method = ""

    @property
    def label(self) -> str:  # type: ignore[override]
        return f"fastd {self.method}"

    def version(self) -> str:
        return version_of(["fastd", "--version"])

    def keypair(self) -> tuple[str, str]:
        out = subprocess.run(["fastd", "--generate-key"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
        secret = re.search(r"Secret:\s*([0-9a-f]+)", out).group(1)
        public = re.search(r"Public:\s*([0-9a-f]+)", out).group(1)
        return secret, public

    def start(self) -> None:
        sa, pa = self.keypair()
        sb, pb = self.keypair()

        def conf(secret, bind, peer, peer_key, remote):
            return (f'log level info;\nmode tun;\ninterface "{self.ifname}";\n'
                    f'method "{self.method}";\nbind {bind}:10000;\nsecret "{secret}";\n'
                    f'mtu 1420;\npeer "{peer}" {{\n  key "{peer_key}";\n'
                    + (f"  remote {remote}:10000;\n" if remote else "") + "}\n")

        ca = self.write("a.conf", conf(sa, UNDERLAY_A, "b", pb, None))
        cb = self.write("b.conf", conf(sb, UNDERLAY_B, "a", pa, UNDERLAY_A))
        self.spawn("a", ["fastd", "-c", ca])
        self.spawn("b", ["fastd", "-c", cb])
        self.wait_link(self.ctx.a, self.ifname)
        self.wait_link(self.ctx.b, self.ifname)
        self.configure_link(self.ctx.a, self.ifname, f"{self.tun_a}/24", None)
        self.configure_link(self.ctx.b, self.ifname, f"{self.tun_b}/24", None)


class FastdSalsa(Fastd):
    key = "fastd-salsa2012"
    method = "salsa2012+umac"


class FastdGCM(Fastd):
    key = "fastd-aes128-gcm"
    method = "aes128-gcm"


class OpenVPN(System):
    key = family = "openvpn"
    label = "OpenVPN UDP AES-256-GCM, TLS p2p"
    binary = exe = "openvpn"
    ifname = "ovpn0"

    def version(self) -> str:
        return version_of(["openvpn", "--version"], r"OpenVPN [\d.]+")

    def cert(self, name: str) -> str:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30",
                        "-subj", f"/CN={name}", "-keyout", os.path.join(self.dir, f"{name}.key"),
                        "-out", os.path.join(self.dir, f"{name}.crt")],
                       check=True, capture_output=True, timeout=30)
        fp = subprocess.run(["openssl", "x509", "-in", os.path.join(self.dir, f"{name}.crt"),
                             "-noout", "-fingerprint", "-sha256"],
                            check=True, capture_output=True, text=True, timeout=30).stdout
        return fp.strip().split("=", 1)[1]

    protos = ("udp", "udp")  # (a, b)

    def start(self) -> None:
        fa, fb = self.cert("a"), self.cert("b")
        common = (f"dev {self.ifname}\ndev-type tun\ndisable-dco\n"
                  "data-ciphers AES-256-GCM\ndh none\nverb 3\n")
        ca = self.write("a.conf", common + (
            f"proto {self.protos[0]}\nlocal {UNDERLAY_A}\nlport 1194\ntls-server\n"
            f"cert {self.dir}/a.crt\nkey {self.dir}/a.key\npeer-fingerprint {fb}\n"
            f"ifconfig {self.tun_a} {self.tun_b}\n"))
        cb = self.write("b.conf", common + (
            f"proto {self.protos[1]}\nremote {UNDERLAY_A} 1194\nnobind\ntls-client\n"
            f"cert {self.dir}/b.crt\nkey {self.dir}/b.key\npeer-fingerprint {fa}\n"
            f"ifconfig {self.tun_b} {self.tun_a}\n"))
        self.spawn("a", ["openvpn", "--config", ca])
        self.spawn("b", ["openvpn", "--config", cb])
        self.wait_log("a", r"Initialization Sequence Completed", 30)
        self.wait_log("b", r"Initialization Sequence Completed", 30)

    def check(self) -> None:
        for side in ("a", "b"):
            text = tail(self.logs[side], 1 << 20)
            m = re.search(r"(Data Channel|Outgoing Data Channel).*", text)
            self.notes.append(f"{side}: {m.group(0) if m else '?'}")
            if "AES-256-GCM" not in text:
                raise SetupError(f"{self.key}: data channel is not AES-256-GCM:\n{tail(self.logs[side])}")


class OpenVPNTCP(OpenVPN):
    key = "openvpn-tcp"
    label = "OpenVPN TCP AES-256-GCM, TLS p2p"
    protos = ("tcp-server", "tcp-client")


class WireguardGo(System):
    key = family = "wireguard-go"
    label = "wireguard-go"
    binary = exe = "wireguard-go"

    def __init__(self, ctx, k):
        super().__init__(ctx, k)
        self.ifa, self.ifb = f"wg{TAG}a", f"wg{TAG}b"  # UAPI sockets live in /var/run/wireguard
        self.ifname = self.ifa

    def available(self) -> str | None:
        if shutil.which("wg") is None:
            return "wg (wireguard-tools) not installed"
        return super().available()

    def version(self) -> str:
        return (version_of(["wireguard-go", "--version"], r"wireguard-go v\S+") + ", "
                + version_of(["wg", "--version"], r"wireguard-tools v\S+"))

    def start(self) -> None:
        def keys():
            priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True,
                                  check=True).stdout.strip()
            pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True,
                                 check=True).stdout.strip()
            return priv, pub

        (ka, pa), (kb, pb) = keys(), keys()
        fa, fb = self.write("a.key", ka + "\n"), self.write("b.key", kb + "\n")
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL="error")
        self.spawn("a", ["wireguard-go", self.ifa], env=env)
        self.spawn("b", ["wireguard-go", self.ifb], env=env)
        self.wait_link(self.ctx.a, self.ifa)
        self.wait_link(self.ctx.b, self.ifb)
        for _ in range(50):  # the UAPI socket appears right after the device
            if all(os.path.exists(f"/var/run/wireguard/{n}.sock") for n in (self.ifa, self.ifb)):
                break
            time.sleep(0.1)
        self.ctx.a.run(["wg", "set", self.ifa, "listen-port", "51820", "private-key", fa,
                        "peer", pb, "allowed-ips", f"{self.tun_b}/32"])
        self.ctx.b.run(["wg", "set", self.ifb, "listen-port", "51821", "private-key", fb,
                        "peer", pa, "allowed-ips", f"10.201.{self.k}.0/24",
                        "endpoint", f"{UNDERLAY_A}:51820"])
        self.configure_link(self.ctx.a, self.ifa, f"{self.tun_a}/24", 1420)
        self.configure_link(self.ctx.b, self.ifb, f"{self.tun_b}/24", 1420)

    def stop(self) -> None:
        super().stop()
        for n in (self.ifa, self.ifb):
            try:
                os.unlink(f"/var/run/wireguard/{n}.sock")
            except OSError:
                pass


class Tinc(System):
    key = family = "tinc"
    label = "tinc 1.0, aes-256-cbc + sha256"
    binary = exe = "tincd"
    ifname = "tinc0"

    def version(self) -> str:
        return version_of(["tincd", "--version"], r"tinc version [\d.]+")

    def start(self) -> None:
        subnets = {"a": self.tun_a, "b": self.tun_b}
        for side in ("a", "b"):
            d = os.path.join(self.dir, side)
            os.makedirs(os.path.join(d, "hosts"), exist_ok=True)
            with open(os.path.join(d, "tinc.conf"), "w") as f:
                f.write(f"Name = {side}\nInterface = {self.ifname}\nMode = router\n"
                        f"AddressFamily = ipv4\nBindToAddress = "
                        f"{UNDERLAY_A if side == 'a' else UNDERLAY_B}\nPort = 655\n"
                        "Cipher = aes-256-cbc\nDigest = sha256\n"
                        + ("ConnectTo = a\n" if side == "b" else ""))
            with open(os.path.join(d, "hosts", side), "w") as f:
                f.write(("Address = 10.200.0.1\n" if side == "a" else "")
                        + f"Port = 655\nSubnet = {subnets[side]}/32\n"
                        "Cipher = aes-256-cbc\nDigest = sha256\n")
            subprocess.run(["tincd", "-c", d, "-K2048"], stdin=subprocess.DEVNULL,
                           capture_output=True, check=True, timeout=60)
        for side, other in (("a", "b"), ("b", "a")):
            shutil.copy(os.path.join(self.dir, side, "hosts", side),
                        os.path.join(self.dir, other, "hosts", side))
        for side, host, cidr in (("a", self.ctx.a, self.tun_a), ("b", self.ctx.b, self.tun_b)):
            d = os.path.join(self.dir, side)
            self.spawn(side, ["tincd", "-c", d, "-D", "-d1", f"--pidfile={d}/tincd.pid",
                              f"--logfile={d}/tincd.log"])
            self.logs[side] = f"{d}/tincd.log"
            self.wait_link(host, self.ifname)
            self.configure_link(host, self.ifname, f"{cidr}/24", 1420)


SYSTEMS = [NoVPN, Vpncrypt, VpncryptNoOffload, VpncryptPython, VpncryptTCP, FastdSalsa, FastdGCM,
           OpenVPN, OpenVPNTCP, WireguardGo, Tinc]


# -- the bench ------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="vpncrypt-peers-")
        os.chmod(self.tmp, 0o755)  # vpncryptd drops to `nobody` and keeps its state_dir
        self.a = self.b = None
        self.iperf_server = None
        self.py_env = netns.python_env({"PYTHONPYCACHEPREFIX": os.path.join(self.tmp, "pycache")})
        self.py_env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.py_env.pop("VPNCRYPT_CRYPTO", None)
        self.vpncrypt_version = ""
        self.vpncryptd = None  # argv of the installed `vpncryptd` (--install wheel)
        self.installed_env = None

    # set-up / teardown
    def open(self) -> None:
        self.a, self.b = netns.Netns(), netns.Netns()
        netns.link(self.a, self.b, f"{UNDERLAY_A}/24", f"{UNDERLAY_B}/24", mtu=1500,
                   name_a="ul0", name_b="ul0")

    def close(self) -> None:
        for host in (self.b, self.a):
            if host is not None:
                host.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def install(self) -> None:
        """--install wheel: vpncrypt as users run it, like the peers' packaged binaries:
        this checkout's wheel pip-installed into a fresh venv (bench/memory.py builds it),
        its `vpncryptd` script started without the checkout on the path."""
        sys.path.insert(0, str(BENCH))
        import memory  # bench/memory.py

        python, self.vpncryptd = memory.install_wheel(os.path.join(self.tmp, "install"))
        self.installed_env = {k: v for k, v in self.py_env.items()
                              if k not in ("PYTHONPATH", "PYTHONPYCACHEPREFIX")}
        version = subprocess.run(
            [python, "-c", "import vpncrypt, sys; from vpncrypt import _fast; "
             "print(vpncrypt.__version__, '| CPython', sys.version.split()[0], '|', "
             "vpncrypt.__file__.rsplit('/vpncrypt/', 1)[0])"],
            env=self.installed_env, cwd="/", capture_output=True, text=True, timeout=60,
            check=True)
        self.vpncrypt_version = version.stdout.strip()

    def warm_bytecode(self) -> None:
        code = ("import runpy, vpncrypt.cli.vpncryptd, vpncrypt.cli.vpncrypt, vpncrypt.config, "
                "vpncrypt.daemon.server, vpncrypt.daemon.client, vpncrypt.daemon.fastpath, "
                "vpncrypt.tun.linux, vpncrypt.tun.netlink, docopt\n"
                "try:\n import pyroute2\nexcept ImportError:\n pass\n")
        env = dict(self.py_env)
        subprocess.run([PYTHON, "-c", code], env=env, cwd=ROOT, capture_output=True, timeout=120)
        if self.vpncryptd is None:
            self.vpncrypt_version = subprocess.run(
                [PYTHON, "-c", "import vpncrypt, ssl, sys; from vpncrypt import _fast; "
                 "print(vpncrypt.__version__, '| CPython', sys.version.split()[0])"],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=60).stdout.strip()
        rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True).stdout.strip()
        self.vpncrypt_version = f"vpncrypt {self.vpncrypt_version} | git {rev}"

    def start_iperf_server(self) -> None:
        self.stop_iperf_server()
        self.iperf_server = self.a.popen(["taskset", "-c", CORE_A, "iperf3", "-s", "-p",
                                          str(IPERF_PORT)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        if not wait_listening(self.a, IPERF_PORT, timeout=10):
            raise SetupError("iperf3 server did not start")

    def stop_iperf_server(self) -> None:
        if self.iperf_server is not None:
            stop_procs([self.iperf_server], grace=3)
            self.iperf_server = None

    def wait_ping(self, target: str, timeout: float = 30.0) -> float:
        t0 = time.monotonic()
        while True:
            r = self.b.run(["ping", "-c", "1", "-W", "1", target], check=False, timeout=10)
            if r.returncode == 0:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise SetupError(f"no ping reply from {target} within {timeout} s")
            time.sleep(0.2)

    def wait_quiet(self) -> None:
        """Wait (up to --wait-quiet s) until processes outside this benchmark use less than
        --max-foreign % of a core over 2 s."""
        deadline = time.monotonic() + self.args.wait_quiet
        while True:
            ours = set(self.a.pids()) | set(self.b.pids()) | {os.getpid()}
            before, t0 = all_ticks(), time.monotonic()
            time.sleep(2)
            f = foreign_cpu(before, all_ticks(), ours, time.monotonic() - t0)
            if f["foreign_pct"] <= self.args.max_foreign:
                return
            if time.monotonic() > deadline:
                log(f"   machine still busy ({f['foreign_pct']}% {f['foreign_top']}); going on")
                return

    def find_daemon(self, system: System, host) -> int:
        """The daemon's real pid: a process in the namespace with the expected executable."""
        found = []
        for pid in host.pids():
            exe = proc_exe(pid)
            if not exe.startswith(system.exe):
                continue
            if hasattr(system, "daemon_filter") and not system.daemon_filter(pid):
                continue
            found.append(pid)
        if len(found) != 1:
            raise SetupError(f"{system.key}: expected one {system.exe} in {host.name}, "
                             f"found {found}")
        return found[0]

    # one measurement
    def iperf(self, target: str, test: str, pids: dict[str, int]) -> dict:
        secs = self.args.seconds
        argv = ["taskset", "-c", CORE_B, "iperf3", "-c", target, "-p", str(IPERF_PORT),
                "-t", str(secs), "-J", "--connect-timeout", "5000", *TEST_ARGS[test]]
        before_p = {s: daemon_ticks(p) for s, p in pids.items()}
        before_t = {s: thread_split(p) for s, p in pids.items()}
        before_c = cpu_times()
        before_all = all_ticks()
        t0 = time.monotonic()
        try:
            r = self.b.run(argv, check=False, timeout=secs + 30)
            out, rc = r.stdout, r.returncode
        except subprocess.TimeoutExpired:
            out, rc = "", "timeout"
        wall = time.monotonic() - t0
        after_c = cpu_times()
        after_all = all_ticks()
        ours = set(self.a.pids()) | set(self.b.pids()) | {os.getpid()}
        after_p = {s: daemon_ticks(p) for s, p in pids.items()}
        after_t = {s: thread_split(p) for s, p in pids.items()}
        res: dict = {"test": test, "wall_s": round(wall, 2), "cpu": cpu_busy(before_c, after_c),
                     **foreign_cpu(before_all, after_all, ours, wall)}
        try:
            rep = json.loads(out)
        except ValueError:
            rep = {"error": f"iperf3 exit {rc}, no JSON: {out[-300:]}"}
        if "error" in rep:
            res["error"] = rep["error"]
            return res
        end = rep["end"]
        recv = end["sum_received"]
        seconds = recv["seconds"]
        res["seconds"] = round(seconds, 3)
        res["mbps"] = round(recv["bits_per_second"] / 1e6, 1)
        res["mbit"] = round(recv["bytes"] * 8 / 1e6, 1)
        util = end.get("cpu_utilization_percent", {})
        res["iperf3_cpu_pct"] = {"server": round(util.get("remote_total", 0), 1),
                                 "client": round(util.get("host_total", 0), 1)}
        if test == "udp64":
            got = recv.get("packets", 0) - recv.get("lost_packets", 0)
            if got <= 0:
                got = recv["bytes"] // 64
            res["pps"] = round(got / seconds) if seconds else 0
            res["sent_pps"] = round(end["sum_sent"].get("packets", 0) / seconds) if seconds else 0
            res["lost_percent"] = round(recv.get("lost_percent", 0.0), 1)
        else:
            res["retransmits"] = end.get("sum_sent", {}).get("retransmits")
        if pids:
            cpu_s = {}
            for side, pid in pids.items():
                if before_p[side] is None or after_p[side] is None:
                    cpu_s[side] = None
                else:
                    cpu_s[side] = (after_p[side] - before_p[side]) / CLK_TCK
            res["daemon_cpu_s"] = cpu_s
            res["daemon_cpu_pct"] = {s: (round(100 * v / wall, 1) if v is not None else None)
                                     for s, v in cpu_s.items()}
            total = sum(v for v in cpu_s.values() if v is not None)
            res["mbit_per_cpu_s"] = round(res["mbit"] / total, 1) if total > 0 else None
            threads, threads_sys = {}, {}
            for side in pids:
                b = before_t[side]
                deltas = {tid: (sum(ut) - sum(b.get(tid, (0, 0)))) / CLK_TCK
                          for tid, ut in after_t[side].items()}
                sys_d = {tid: (ut[1] - b.get(tid, (0, 0))[1]) / CLK_TCK
                         for tid, ut in after_t[side].items()}
                threads[side] = {str(tid): round(100 * d / wall, 1)
                                 for tid, d in sorted(deltas.items(), key=lambda kv: -kv[1])
                                 if d > 0}
                threads_sys[side] = {str(tid): round(100 * sys_d[tid] / wall, 1)
                                     for tid in deltas if deltas[tid] > 0}
            res["thread_cpu_pct"] = threads  # utime+stime, % of one core
            res["thread_sys_pct"] = threads_sys  # stime alone (in the kernel)
        # user+system time of both CPUs not explained by the daemons, iperf3 and kernel
        # threads (% of one core). About -30..-10 on a quiet machine (per-process times
        # include some softirq work that /proc/stat counts apart), higher when other
        # work ran: a cross-check for foreign_pct.
        us = sum(c["user"] + c["system"] for c in res["cpu"].values())
        ours = sum(v for v in res.get("daemon_cpu_pct", {}).values() if v)
        ours += sum(res["iperf3_cpu_pct"].values()) + res["kthreads_pct"]
        res["unattributed_pct"] = round(us - ours, 1)
        return res

    def new_record(self, system: System) -> dict:
        rec = {"key": system.key, "label": system.label, "version": system.version(),
               "runs": [], "rounds": [], "notes": []}
        rec["medians"] = medians(rec)
        return rec

    def run_round(self, system: System, rec: dict, run: int) -> None:
        """Start `system`, run each test once (run number `run`), stop it. A set-up failure
        marks the whole row failed."""
        rnd: dict = {"run": run + 1}
        rec["rounds"].append(rnd)
        system.reset()
        log(f"== {system.key} (run {run + 1}): starting")
        t0 = time.monotonic()
        try:
            system.start()
            rnd["ping_after_s"] = round(self.wait_ping(system.target()), 2)
            rnd["startup_s"] = round(time.monotonic() - t0, 2)
            system.check()
            for n in system.notes:
                if n not in rec["notes"]:
                    rec["notes"].append(n)
            pids = {}
            roles: dict[str, dict[int, str]] = {}
            if system.exe:
                pids = {"server": self.find_daemon(system, self.a),
                        "client": self.find_daemon(system, self.b)}
                rnd["pids"] = pids
                rnd["affinity"] = {s: affinity(p) for s, p in pids.items()}
                rnd["exe"] = {s: proc_exe(p) for s, p in pids.items()}
            if system.family == "vpncrypt":
                roles = {s: vpncrypt_thread_roles(p) for s, p in pids.items()}
                rnd["thread_roles"] = {s: {str(t): r for t, r in v.items()}
                                       for s, v in roles.items()}
            if system.ifname:
                for side, host in (("server", self.a), ("client", self.b)):
                    name = system.ifb if (side == "client" and isinstance(system, WireguardGo)) \
                        else system.ifname
                    [info] = host.ip_json("link", "show", "dev", name)
                    rnd.setdefault("tunnel_mtu", {})[side] = info.get("mtu")
            else:
                rnd["tunnel_mtu"] = {"server": 1500, "client": 1500}
            rec["tunnel_mtu"] = rnd["tunnel_mtu"]
            self.start_iperf_server()
            self.wait_quiet()
            results: dict = {}
            rec["runs"].append(results)  # filled as the tests finish (partial on Ctrl-C)
            for test in TESTS_ORDER:
                for attempt in range(self.args.retries + 1):
                    res = self.iperf(system.target(), test, pids)
                    res["attempt"] = attempt + 1
                    noisy = res.get("foreign_pct", 0) > self.args.max_foreign
                    res["noisy"] = noisy
                    if not noisy or "error" in res or attempt == self.args.retries:
                        break
                    log(f"   {system.key} run {run + 1} {test}: other processes took "
                        f"{res['foreign_pct']}% of a core {res['foreign_top']}: again")
                    self.wait_quiet()
                if roles and "thread_cpu_pct" in res:
                    for src, dst in (("thread_cpu_pct", "role_cpu_pct"),
                                     ("thread_sys_pct", "role_sys_pct")):
                        res[dst] = {
                            side: {roles[side].get(int(tid), f"thread-{tid}"): v
                                   for tid, v in threads.items()}
                            for side, threads in res[src].items()}
                if "error" in res:
                    log(f"   {system.key} run {run + 1} {test}: ERROR {res['error']}")
                    self.start_iperf_server()  # a failed run may leave it wedged
                else:
                    extra = (f"{res['pps'] / 1000:.0f} kpps (lost {res['lost_percent']}%)"
                             if test == "udp64" else f"{res['mbps']:.0f} Mbit/s")
                    cpu = res.get("role_cpu_pct") or res.get("daemon_cpu_pct", {})
                    log(f"   {system.key} run {run + 1} {test}: {extra}; daemon CPU% "
                        f"{cpu}; iperf3 CPU% {res['iperf3_cpu_pct']}; cores busy "
                        f"{ {c: v['busy'] for c, v in res['cpu'].items()} }; foreign "
                        f"{res['foreign_pct']}% {res['foreign_top']}")
                results[test] = res
                time.sleep(1)
            if pids:
                rnd["status"] = {}
                for s, p in pids.items():
                    try:
                        rnd["status"][s] = proc_status(p)
                    except OSError:  # gone: noted just below
                        rnd["status"][s] = {}
                peak = rec.setdefault("peak_rss_mb", {})
                for s, v in rnd["status"].items():
                    peak[s] = max(peak.get(s, 0), round(v.get("VmHWM", 0) / 1024, 1))
                gone = [s for s, p in pids.items() if not os.path.exists(f"/proc/{p}")]
                if gone:
                    rec["notes"].append(f"run {run + 1}: daemon gone after the tests: {gone}")
        except (SetupError, subprocess.SubprocessError, OSError) as e:
            if any(rec["runs"]):  # an earlier round worked: keep it, say what happened
                rec["notes"].append(f"run {run + 1} failed: {str(e).splitlines()[0]}")
            else:
                rec["error"] = str(e)
            log(f"   {system.key}: FAILED: {e}")
            for side, path in system.logs.items():
                rnd.setdefault("log_tail", {})[side] = tail(path)
        finally:
            self.stop_iperf_server()
            for side, path in system.logs.items():
                rnd.setdefault("log_head", {})[side] = tail(path, 1 << 20)[:3000]
            system.stop()
            kill_leftovers(self.a)
            kill_leftovers(self.b)
            rec["medians"] = medians(rec)


# -- results --------------------------------------------------------------------------------

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values):
    values = [v for v in values if v is not None]
    if len(values) < 2 or not min(values):
        return None
    return round(100 * (max(values) / min(values) - 1), 1)


def runs_all(runs, test):
    return [r[test] for r in runs if test in r and "foreign_pct" in r[test]]


def medians(rec: dict) -> dict:
    runs = rec.get("runs", [])
    out: dict = {}
    for test in TESTS_ORDER:
        rs = [r[test] for r in runs if test in r and "error" not in r[test]]
        key = "pps" if test == "udp64" else "mbps"
        vals = [r.get(key) for r in rs]
        out[test] = med(vals)
        out[f"{test}_spread_pct"] = spread(vals)
        out[f"{test}_n"] = len(rs)
        for side in ("server", "client"):
            out[f"{test}_cpu_pct_{side}"] = med(r.get("daemon_cpu_pct", {}).get(side) for r in rs)
        for cpu in ("cpu0", "cpu1"):
            out[f"{test}_{cpu}_busy"] = med(r["cpu"].get(cpu, {}).get("busy") for r in rs)
            out[f"{test}_{cpu}_steal"] = med(r["cpu"].get(cpu, {}).get("steal") for r in rs)
        out[f"{test}_mbit_per_cpu_s"] = med(r.get("mbit_per_cpu_s") for r in rs)
        for side in ("server", "client"):
            out[f"{test}_iperf3_pct_{side}"] = med(r.get("iperf3_cpu_pct", {}).get(side)
                                                   for r in rs)
        fp = [r.get("foreign_pct") for r in runs_all(runs, test)]
        out[f"{test}_foreign_pct_max"] = max(fp) if fp else None
        out[f"{test}_noisy"] = sum(1 for r in runs_all(runs, test) if r.get("noisy"))
    # Mbit per daemon CPU-second over the single-stream TCP tests (fwd + rev), per run.
    per_run = []
    for r in runs:
        parts = [r.get(t) for t in ("tcp_fwd", "tcp_rev")]
        if any(p is None or "error" in p or "daemon_cpu_s" not in p for p in parts):
            continue
        cpu = sum(sum(v for v in p["daemon_cpu_s"].values() if v) for p in parts)
        if cpu > 0:
            per_run.append(sum(p["mbit"] for p in parts) / cpu)
    out["mbit_per_cpu_s"] = round(med(per_run), 1) if per_run else None
    # Per-thread CPU (vpncrypt): median % per role and test.
    if any("thread_roles" in r for r in rec.get("rounds", [])):
        thr: dict = {}
        sys_: dict = {}
        for test in TESTS_ORDER:
            rs = [r[test] for r in runs if test in r and "role_cpu_pct" in r[test]]
            for side in ("server", "client"):
                names = sorted({n for r in rs for n in r["role_cpu_pct"].get(side, {})})
                for role in names:
                    v = med(r["role_cpu_pct"].get(side, {}).get(role, 0.0) for r in rs)
                    thr.setdefault(test, {}).setdefault(side, {})[role] = v
                    v = med(r.get("role_sys_pct", {}).get(side, {}).get(role, 0.0) for r in rs)
                    sys_.setdefault(test, {}).setdefault(side, {})[role] = v
        out["threads"] = thr
        out["threads_sys"] = sys_
    return out


def fmt(v, scale=1.0, digits=0):
    if v is None:
        return "-"
    x = v / scale
    s = f"{x:,.{digits}f}".replace(",", " ")
    return s


def machine_info() -> dict:
    return {"date": utc_date(),
            "kernel": platform.release(), "cpu": f"{cpu_model()}, {os.cpu_count()} CPUs",
            "host": socket.gethostname(),
            "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
            "iperf3": version_of(["iperf3", "--version"], r"iperf [\d.]+"),
            "openssl": version_of(["openssl", "version"])}


def ratios(records: list[dict]) -> dict:
    by = {r["key"]: r for r in records if "error" not in r}
    vp = by.get("vpncrypt")
    if vp is None:
        return {}
    peers = [r for k, r in by.items() if k != "novpn" and not k.startswith("vpncrypt")]
    out = {}
    for metric, getter in (("tcp_fwd", lambda r: r["medians"]["tcp_fwd"]),
                           ("tcp_rev", lambda r: r["medians"]["tcp_rev"]),
                           ("tcp_p4", lambda r: r["medians"]["tcp_p4"]),
                           ("mbit_per_cpu_s", lambda r: r["medians"]["mbit_per_cpu_s"])):
        cands = [(getter(r), r["key"]) for r in peers if getter(r)]
        if cands and getter(vp):
            best, who = max(cands)
            out[metric] = {"vpncrypt": getter(vp), "best_peer": who, "best": best,
                           "ratio": round(getter(vp) / best, 2)}
    wg = by.get("wireguard-go")
    if wg and wg["medians"]["udp64"] and vp["medians"]["udp64"]:
        out["udp64_vs_wireguard_go"] = {
            "vpncrypt": vp["medians"]["udp64"], "wireguard-go": wg["medians"]["udp64"],
            "ratio": round(vp["medians"]["udp64"] / wg["medians"]["udp64"], 2)}
    cands = [(r["medians"]["udp64"], r["key"]) for r in peers if r["medians"]["udp64"]]
    if cands and vp["medians"]["udp64"]:
        best, who = max(cands)
        out["udp64"] = {"vpncrypt": vp["medians"]["udp64"], "best_peer": who, "best": best,
                        "ratio": round(vp["medians"]["udp64"] / best, 2)}
    return out


def report(meta: dict, records: list[dict], rat: dict) -> str:
    L = []
    L.append(f"# vpncrypt vs. peer VPNs ({meta['machine']['date']})\n")
    m = meta["machine"]
    L.append(f"- kernel {m['kernel']}; CPU {m['cpu']}; host {m['host']}; load average at start "
             f"{' '.join(m['loadavg_at_start'])}")
    L.append(f"- {m['iperf3']}; {m['openssl']}")
    if meta.get("interrupted"):
        L.append(f"- **interrupted ({meta['interrupted']}): partial results**")
    L.append(f"- iperf3 -t {meta['args']['seconds']}, {meta['args']['runs']} runs per test, "
             "medians; side A (server, iperf3 -s) on CPU 0, side B (client, iperf3 -c) on CPU 1")
    L.append("- versions:")
    for r in records:
        if r.get("version"):
            L.append(f"  - {r['key']}: {r['version']}")
    L.append("")
    L.append("| system | tunnel MTU | TCP fwd Mbit/s | TCP rev | 4 streams | UDP-64 kpps "
             "| peak RSS server/client MB | Mbit per daemon CPU-second |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in records:
        if "error" in r:
            L.append(f"| {r['label']} | failed: {r['error'].splitlines()[0][:80]} "
                     "| | | | | | |")
            continue
        md = r["medians"]
        rss = r.get("peak_rss_mb")
        rss_s = f"{rss['server']} / {rss['client']}" if rss else "-"
        mtu = r.get("tunnel_mtu", {})
        mtu_s = ("-" if not mtu else str(mtu.get("server"))
                 if mtu.get("server") == mtu.get("client")
                 else f"{mtu.get('server')}/{mtu.get('client')}")
        L.append(f"| {r['label']} | {mtu_s} | {fmt(md['tcp_fwd'])} | {fmt(md['tcp_rev'])} | "
                 f"{fmt(md['tcp_p4'])} | {fmt(md['udp64'], 1000, 1)} | {rss_s} | "
                 f"{fmt(md['mbit_per_cpu_s'])} |")
    L.append("")
    if rat:
        L.append("vpncrypt (native loop) / best peer (no-VPN and vpncrypt rows excluded):")
        names = {"tcp_fwd": "TCP fwd", "tcp_rev": "TCP rev", "tcp_p4": "4 streams",
                 "mbit_per_cpu_s": "Mbit per daemon CPU-second", "udp64": "UDP-64 pps"}
        for k, label in names.items():
            if k in rat:
                x = rat[k]
                L.append(f"- {label}: **{x['ratio']:.2f}x** ({fmt(x['vpncrypt'])} vs "
                         f"{fmt(x['best'])}, {x['best_peer']})")
        if "udp64_vs_wireguard_go" in rat:
            x = rat["udp64_vs_wireguard_go"]
            L.append(f"- UDP-64 pps vs wireguard-go: **{x['ratio']:.2f}x** "
                     f"({fmt(x['vpncrypt'])} vs {fmt(x['wireguard-go'])} packets/s)")
        L.append("")
    # Load and variation
    L.append("Run-to-run spread (max/min - 1, %) and CPU load (medians, % of one core, "
             "server/client: the daemons, iperf3, CPU0/CPU1 busy (steal)); foreign = the most "
             "CPU that processes outside this benchmark took in any run (% of one core):\n")
    L.append("| system | spread fwd/rev/P4/UDP % | TCP fwd: daemons % | TCP fwd: iperf3 % "
             "| TCP fwd: cores busy (steal) | UDP-64: daemons % | UDP-64: iperf3 % "
             "| UDP-64: cores busy (steal) | UDP-64 sent kpps, lost % | foreign fwd/rev/P4/UDP % |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        if "error" in r:
            continue
        md = r["medians"]
        sp = "/".join(fmt(md[f"{t}_spread_pct"], digits=0) for t in TESTS_ORDER)

        def dcpu(t):
            s, c = md[f"{t}_cpu_pct_server"], md[f"{t}_cpu_pct_client"]
            return "-" if s is None else f"{s:.0f} / {c:.0f}"

        def cores(t):
            return (f"{fmt(md[f'{t}_cpu0_busy'])} / {fmt(md[f'{t}_cpu1_busy'])} "
                    f"({fmt(md[f'{t}_cpu0_steal'])} / {fmt(md[f'{t}_cpu1_steal'])})")

        udp = [x["udp64"] for x in r["runs"] if "udp64" in x and "error" not in x["udp64"]]
        sent = med(x.get("sent_pps") for x in udp)
        lost = med(x.get("lost_percent") for x in udp)
        def icpu(t):
            s, c = md[f"{t}_iperf3_pct_server"], md[f"{t}_iperf3_pct_client"]
            return "-" if s is None else f"{s:.0f} / {c:.0f}"

        fo = "/".join(fmt(md[f"{t}_foreign_pct_max"]) for t in TESTS_ORDER)
        noisy = sum(md[f"{t}_noisy"] for t in TESTS_ORDER)
        if noisy:
            fo += f" ({noisy} noisy run{'s' if noisy > 1 else ''} kept)"
        L.append(f"| {r['key']} | {sp} | {dcpu('tcp_fwd')} | {icpu('tcp_fwd')} | "
                 f"{cores('tcp_fwd')} | {dcpu('udp64')} | {icpu('udp64')} | {cores('udp64')} | "
                 f"{fmt(sent, 1000)}, {fmt(lost, digits=1)} | {fo} |")
    L.append("")
    for r in records:
        thr = r.get("medians", {}).get("threads")
        if not thr:
            continue
        L.append(f"{r['label']}: per-thread CPU % of one core (medians; in brackets the "
                 "part spent in the kernel), server | client:\n")
        roles = sorted({role for t in thr.values() for s in t.values() for role in s})
        L.append("| test | " + " | ".join(f"server {x}" for x in roles) + " | "
                 + " | ".join(f"client {x}" for x in roles) + " |")
        L.append("|---|" + "---:|" * (2 * len(roles)))
        tsys = r["medians"].get("threads_sys", {})
        for test, sides in thr.items():
            cells = []
            for side in ("server", "client"):
                for role in roles:
                    v = sides.get(side, {}).get(role)
                    k = tsys.get(test, {}).get(side, {}).get(role)
                    cells.append("-" if v is None else
                                 f"{fmt(v)} ({fmt(k)})" if k is not None and v >= 1 else fmt(v))
            L.append(f"| {test} | " + " | ".join(cells) + " |")
        L.append("")
    for r in records:
        if "error" in r:
            L.append(f"**{r['key']} failed**: {r['error'][:1500]}\n")
        for n in r.get("notes", []):
            L.append(f"- {r['key']}: {n}")
    return "\n".join(L)


def plot(records: list[dict], path: Path) -> str | None:
    try:
        import matplotlib
    except ImportError:
        lib = OUT / ".pylib"
        if not lib.is_dir():
            return "matplotlib not available: no chart"
        sys.path.insert(0, str(lib))
        try:
            import matplotlib
        except ImportError:
            return "matplotlib not available: no chart"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if "error" not in r]
    vpn = [r for r in ok if r["key"] != "novpn"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5))
    ax = axes[0]
    width = 0.27
    xs = range(len(vpn))
    for i, (t, lab) in enumerate((("tcp_fwd", "TCP fwd"), ("tcp_rev", "TCP rev"),
                                  ("tcp_p4", "4 streams"))):
        ax.bar([x + (i - 1) * width for x in xs], [r["medians"][t] or 0 for r in vpn], width,
               label=lab)
    ax.set_xticks(list(xs), [r["key"] for r in vpn], rotation=35, ha="right")
    ax.set_ylabel("Mbit/s")
    ax.set_title("TCP throughput through the tunnel")
    ax.legend()
    ax = axes[1]
    ax.bar(list(xs), [(r["medians"]["udp64"] or 0) / 1000 for r in vpn], color="tab:purple")
    ax.set_xticks(list(xs), [r["key"] for r in vpn], rotation=35, ha="right")
    ax.set_ylabel("kpackets/s received")
    ax.set_title("UDP, 64-byte payloads")
    ax = axes[2]
    ax.bar(list(xs), [r["medians"]["mbit_per_cpu_s"] or 0 for r in vpn], color="tab:green")
    ax.set_xticks(list(xs), [r["key"] for r in vpn], rotation=35, ha="right")
    ax.set_ylabel("Mbit per daemon CPU-second")
    ax.set_title("Efficiency (TCP fwd+rev)")
    nov = next((r for r in ok if r["key"] == "novpn"), None)
    if nov and nov["medians"].get("tcp_fwd"):
        fig.suptitle(f"no VPN (veth): TCP fwd {nov['medians']['tcp_fwd']:.0f} Mbit/s, "
                     f"UDP-64 {(nov['medians']['udp64'] or 0) / 1000:.0f} kpps (not shown)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def select(only: str | None) -> list[type[System]]:
    if not only:
        return list(SYSTEMS)
    wanted = {w.strip() for w in only.split(",") if w.strip()}
    known = {s.key for s in SYSTEMS} | set(FAMILIES)
    unknown = wanted - known
    if unknown:
        raise SystemExit(f"peers.py: unknown --only {sorted(unknown)}; known: {sorted(known)}")
    keys = set()
    for w in wanted:
        keys.update(FAMILIES.get(w, (w,)))
    return [s for s in SYSTEMS if s.key in keys]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated rows or families "
                    f"({', '.join(s.key for s in SYSTEMS)}; vpncrypt, fastd)")
    ap.add_argument("--seconds", type=int, default=10, help="iperf3 -t (default 10)")
    ap.add_argument("--runs", type=int, default=2, help="runs per test (default 2)")
    ap.add_argument("--max-foreign", type=float, default=10.0,
                    help="a run during which processes outside the benchmark used more than "
                    "this %% of a core is repeated (default 10)")
    ap.add_argument("--retries", type=int, default=2,
                    help="how often a noisy run is repeated (default 2; the last one is kept "
                    "and flagged)")
    ap.add_argument("--wait-quiet", type=float, default=30.0,
                    help="before repeating a noisy run, and before each system, wait up to "
                    "this many seconds for the machine to be quiet (default 30)")
    ap.add_argument("--install", choices=("wheel", "checkout"), default="wheel",
                    help="wheel: vpncryptd from this checkout's wheel pip-installed into a "
                    "fresh venv, as users run it (default); checkout: python -m from here")
    ap.add_argument("--json", default=str(OUT / "peers.json"))
    args = ap.parse_args(argv)
    systems = select(args.only)
    if os.geteuid() != 0:
        raise SystemExit("peers.py: needs root (network namespaces)")
    for tool in ("ip", "iperf3", "taskset", "ping", "ss"):
        if shutil.which(tool) is None:
            raise SystemExit(f"peers.py: {tool} not found")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("peers.py: needs 2 CPUs (one per side)")

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    bench = Bench(args)
    records = []
    interrupted = None
    meta = {"machine": machine_info(), "args": vars(args)}
    try:
        if args.install == "wheel" and any(s.family == "vpncrypt" for s in systems):
            bench.install()
        bench.warm_bytecode()
        bench.open()
        active = []
        for k, cls in enumerate(systems, start=1):
            system = cls(bench, k)
            why = system.available()
            if why:
                log(f"== {system.key}: skipped ({why})")
                records.append({"key": system.key, "label": system.label, "error": why,
                                "runs": [], "medians": {}})
                continue
            rec = bench.new_record(system)
            records.append(rec)
            active.append((system, rec))
        # Rounds: run 1 of every system, then run 2, ... so that slow drifts in the
        # machine's load hit all systems alike.
        for run in range(args.runs):
            for system, rec in active:
                if "error" not in rec:
                    bench.run_round(system, rec, run)
    except KeyboardInterrupt as e:
        interrupted = str(e) or "Ctrl-C"
        log(f"interrupted ({interrupted}): cleaning up, then the results so far")
    finally:
        bench.close()
    if interrupted:
        meta["interrupted"] = interrupted
    rat = ratios(records)
    doc = {"meta": meta, "systems": records, "ratios": rat}
    write_json(args.json, doc)
    text = report(meta, records, rat)
    print(text)
    png = Path(args.json).with_suffix(".png")
    note = plot(records, png) if records else "nothing to plot"
    print(f"\nwrote {args.json}" + ("" if note else f" and {png}")
          + (f" ({note})" if note else ""))
    if interrupted:
        print(f"\nINTERRUPTED ({interrupted}): partial results")
        return 130
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""A server with many clients: configuration load, start-up time and memory per client.

The issue's goal: a server configured with 5 000 clients starts in under 2 s, and its
memory grows by a bounded, reported number of bytes per client.

Part 1, the daemon (needs root and network namespaces). Two server configurations are
written to a temporary directory (mode 0600, `state_dir` inside it): one with --clients
clients and one with a single client. Each client gets its own key
(`vpncrypt.protocol.keys.generate_key`) and allowed_ips 10.80.x.y/32, fd80::N/128. Then,
for each packet loop (native, and VPNCRYPT_LOOP=python) and each configuration, --runs
times (medians are reported):

  - `vpncryptd -c FILE --foreground` (the venv's console script) is launched inside a
    fresh network namespace, and the time from launching it to its "server started"
    log line is measured, with the CPU time (utime+stime) the daemon had used by then;
  - after --settle s, VmRSS and VmHWM (peak) are read from /proc/PID/status of the
    daemon (checked to be the vpncryptd process itself, not an `ip netns exec`
    wrapper), then the daemon's CPU use while idle is sampled for --idle s;
  - `vpncrypt show --json` is timed once per configuration;
  - every client then sends one authenticated keepalive (sealed here with the client's
    key, paced at --activate-rate per second, from a socket in the same namespace) and
    the server's keepalive answers are counted; VmRSS is read again: the memory of
    *active* clients (each has been "connected" once).

Bytes per client = (VmRSS with N clients - VmRSS with 1 client) / (N - 1).

`config.load` of the N-client file is timed in this process (median of --runs).

Byte code: this sandbox sets PYTHONDONTWRITEBYTECODE=1 and the work tree has no
__pycache__, so a daemon started from the checkout would compile every module at each
start, which an installed package does not. `--bytecode cached` (default) points
PYTHONPYCACHEPREFIX at a temporary directory warmed by one unmeasured start;
`--bytecode none` measures the sandbox as it is.

Part 2, the profile (no root needed, --profile, on by default): where start-up time and
per-client memory go, in this process, without a TUN device: the daemon's imports
(PYTHONPROFILEIMPORTTIME of one real start), `config.load`, `Server(cfg)` (which runs
`apply_clients`: `ServerCore.set_client` x N, i.e. 2N HKDF direction keys and 2N
`_fast.SivContext`s, plus PeerState and the allowed-IPs table) and `sync_native`
(`Engine.add_peer` x N, `set_routes`) on an Engine whose descriptors are never used.
Phases are timed without a profiler (then cProfile names the hot functions), Python
heap per client comes from tracemalloc, native heap per client from glibc's
mallinfo2(), and the size of one OpenSSL EVP_CIPHER_CTX (empty, keyed with AES-256-SIV,
and a keyed copy as the per-packet work context holds after its first use) is measured
through ctypes against the same libcrypto.

The machine is shared: absolute times swing with other work (the load average is
recorded); CPU times and memory figures are steadier than wall-clock times.

Output: Markdown on stdout, bench/out/many_clients.json (and many_clients.prof).

    sudo .venv/bin/python bench/many_clients.py [--clients 5000] [--runs 3]
        [--loops native,python] [--bytecode cached|none] [--no-profile] [--profile-only]
"""

import argparse
import cProfile
import ctypes
import datetime
import gc
import io
import json
import os
import platform
import pstats
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc

# harness first: it puts tests/ (netns) and the checkout on sys.path
from harness import (OUT, ROOT, cpu_seconds, daemon_pid, fd_count, log, proc_status,
                     require_netns, vpncrypt_show, write_json)

from vpncrypt.protocol.keys import generate_key

REPO = str(ROOT)  # a str: compared with code objects' file names
VENV_BIN = os.path.dirname(sys.executable)
VPNCRYPTD = os.path.join(VENV_BIN, "vpncryptd")
PORT = 51900
MIB = 1024 * 1024
START_GOAL = 2.0  # seconds


# --------------------------------------------------------------------------- configuration


def client_addrs(i: int) -> tuple[str, str]:
    h = i + 1  # 10.80.0.1 is the server
    return f"10.80.{h >> 8}.{h & 255}/32", f"fd80::{h:x}/128"


def server_text(keys: list[str], state_dir: str, port: int = PORT) -> str:
    parts = [f"[server]\nlisten = 0.0.0.0:{port}\ninterface = vpn0\n"
             f"address = 10.80.0.1/16, fd80::1/64\nmtu = 1420\nstate_dir = {state_dir}\n"]
    for i, key in enumerate(keys, start=1):
        v4, v6 = client_addrs(i)
        parts.append(f"\n[client c{i}]\nid = {i}\nkey = {key}\nallowed_ips = {v4}, {v6}\n")
    return "".join(parts)


def write_conf(path: str, text: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


def median_time(fn, runs: int) -> tuple[float, list[float]]:
    """Median CPU seconds of this process (steadier than wall time on a shared machine)
    over `runs` calls, and the wall times."""
    cpu, wall = [], []
    for _ in range(runs):
        gc.collect()
        t, c = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - t)
    return statistics.median(cpu), wall


# --------------------------------------------------------------------------- /proc

STATUS_KEYS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads", "Uid")


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


# --------------------------------------------------------------------------- a daemon


class LoggedDaemon:
    """vpncryptd in a namespace; its log (stderr+stdout) read line by line with times."""

    def __init__(self, host, conf: str, env: dict, argv_prefix=()):
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.t0 = time.monotonic()
        self.proc = host.popen([*argv_prefix, VPNCRYPTD, "-c", conf, "--foreground"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                               cwd=REPO)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.host = host
        self._pid = None

    def _read(self) -> None:
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            with self.cond:
                self.lines.append((time.monotonic(), line))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def text(self) -> str:
        with self.cond:
            return "\n".join(line for _, line in self.lines)

    def wait_line(self, pattern: str, timeout: float = 60.0, start: int = 0):
        """(time since launch, line, index) of the first log line from `start` matching."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for k in range(start, len(self.lines)):
                    if rx.search(self.lines[k][1]):
                        return self.lines[k][0] - self.t0, self.lines[k][1], k
                start = len(self.lines)
                if self.proc.poll() is not None and not self.reader.is_alive():
                    raise RuntimeError(f"vpncryptd exited ({self.proc.returncode}):\n{self.text()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"timeout waiting for /{pattern}/:\n{self.text()[-3000:]}")
                self.cond.wait(min(left, 0.2))

    def count(self, pattern: str) -> int:
        rx = re.compile(pattern)
        with self.cond:
            return sum(1 for _, line in self.lines if rx.search(line))

    @property
    def pid(self) -> int:
        """The vpncryptd process (the `ip netns exec` wrapper execs it, but check)."""
        if self._pid is None:
            self._pid, _ = daemon_pid(self)
        return self._pid

    def stop(self, timeout: float = 30.0) -> tuple[int | None, float]:
        t = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(5)
        return self.proc.returncode, time.monotonic() - t


def daemon_env(loop: str, pycache: str | None, extra: dict | None = None) -> dict:
    from netns import python_env

    env = python_env({"VPNCRYPT_LOOP": loop, **(extra or {})})
    if pycache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    return env


def show_json(state_dir: str) -> tuple[float, list, int]:
    t = time.monotonic()
    out = vpncrypt_show(state_dir, env=daemon_env("native", None))
    elapsed = time.monotonic() - t
    return elapsed, json.loads(out), len(out)


# --------------------------------------------------------------------------- activation


def activate(conf: str, rate: float, port: int) -> dict:
    """Inside the server's namespace: one keepalive from every client of `conf` to the
    server on 127.0.0.1, paced at `rate` per second; count the server's answers."""
    from vpncrypt import config
    from vpncrypt.protocol import aead
    from vpncrypt.protocol.session import ClientSession
    from vpncrypt.protocol.wire import KEEPALIVE_BODY, Kind

    cfg = config.load(conf)
    ctx_class, _ = aead.select(None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    replies = 0

    def drain():
        nonlocal replies
        while True:
            try:
                sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            replies += 1

    packets = []
    for peer in cfg.clients:
        session = ClientSession(peer.id, cfg.server_id, peer.key, ctx_class)
        packets.append(session.seal(Kind.KEEPALIVE, KEEPALIVE_BODY, time.time()))
    start = time.monotonic()
    for k, packet in enumerate(packets):
        sock.sendto(packet, ("127.0.0.1", port))
        target = start + (k + 1) / rate
        while time.monotonic() < target:
            drain()
            time.sleep(min(0.002, max(0.0, target - time.monotonic())))
    deadline = time.monotonic() + 5
    while replies < len(packets) and time.monotonic() < deadline:
        drain()
        time.sleep(0.01)
    return {"sent": len(packets), "replies": replies,
            "seconds": round(time.monotonic() - start, 3)}


# --------------------------------------------------------------------------- part 1


def run_once(conf: str, state_dir: str, loop: str, pycache: str | None, args, n: int,
             with_show: bool) -> dict:
    from netns import Netns

    shutil.rmtree(state_dir, ignore_errors=True)
    with Netns() as host:
        d = LoggedDaemon(host, conf, daemon_env(loop, pycache))
        try:
            started, line, _ = d.wait_line(r"server started", timeout=120)
            cpu_at_start = cpu_seconds(d.pid)
            child_cpu = cpu_seconds(d.pid, children=True)
            assert f"{n} clients" in line, line
            assert f"{'native' if loop == 'native' else 'Python'} loop" in line, line
            time.sleep(args.settle)
            status = proc_status(d.pid, STATUS_KEYS, in_bytes=True)
            cpu0 = cpu_seconds(d.pid)
            time.sleep(args.idle)
            idle_cpu = (cpu_seconds(d.pid) - cpu0) / args.idle * 100 if args.idle else 0.0
            run = {"start_s": round(started, 3), "cpu_at_start_s": cpu_at_start,
                   "child_cpu_s": child_cpu,
                   "rss": status["VmRSS"], "hwm": status["VmHWM"],
                   "rss_anon": status["RssAnon"], "rss_file": status["RssFile"],
                   "threads": status["Threads"], "fds": fd_count(d.pid),
                   "idle_cpu_pct": round(idle_cpu, 2), "user_uid": status["Uid"]}
            if with_show:
                secs, docs, size = show_json(state_dir)
                run.update(show_s=round(secs, 3), show_bytes=size,
                           show_clients=len(docs[0]["clients"]))
            if args.activate_rate > 0:
                proc = host.run([sys.executable, os.path.abspath(__file__), "--activate-only",
                                 conf, str(args.activate_rate), str(PORT)],
                                timeout=120 + n / args.activate_rate, env=daemon_env(loop, pycache))
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                time.sleep(args.settle)
                status = proc_status(d.pid, STATUS_KEYS, in_bytes=True)
                connected = d.count(r"\bconnected client=")
                run.update(activated=result, connected_logged=connected,
                           rss_active=status["VmRSS"], hwm_active=status["VmHWM"])
                if with_show:
                    secs, docs, size = show_json(state_dir)
                    run.update(show_active_s=round(secs, 3), show_active_bytes=size,
                               show_connected=sum(1 for c in docs[0]["clients"] if c["endpoint"]))
            code, stop_s = d.stop()
            run.update(exit=code, stop_s=round(stop_s, 3))
            if code != 0:
                raise RuntimeError(f"vpncryptd exited {code}:\n{d.text()[-3000:]}")
            return run
        finally:
            d.stop()


def part1(args, tmp: str) -> dict:
    require_netns("many_clients: network namespaces unavailable")
    keys = [generate_key() for _ in range(args.clients)]
    confs = {}
    for n in (1, args.clients):
        state = os.path.join(tmp, f"state{n}")
        confs[n] = (write_conf(os.path.join(tmp, f"server{n}.conf"),
                               server_text(keys[:n], state)), state)
    from vpncrypt import config

    load_s, load_all = median_time(lambda: config.load(confs[args.clients][0]), args.runs)
    load_wall = statistics.median(load_all)
    load1_s, _ = median_time(lambda: config.load(confs[1][0]), args.runs)
    pycache = os.path.join(tmp, "pycache") if args.bytecode == "cached" else None
    results = {"config_bytes": os.path.getsize(confs[args.clients][0]),
               "config_load_s": load_s, "config_load_wall_s": load_wall,
               "config_load_runs": load_all, "config_load_1_s": load1_s,
               "rows": []}
    for loop in args.loops:
        # Unmeasured warm-up: byte code cache (when cached), page cache.
        warm = run_once(confs[1][0], confs[1][1], loop, pycache,
                        argparse.Namespace(**{**vars(args), "activate_rate": 0, "idle": 0.5,
                                              "settle": 0.5}), 1, False)
        del warm
        for n in (1, args.clients):
            conf, state = confs[n]
            runs = []
            for r in range(args.runs):
                run = run_once(conf, state, loop, pycache, args, n, with_show=(r == 0))
                runs.append(run)
                log(f"  [{loop} {n} clients run {r + 1}] start {run['start_s']:.3f} s, "
                    f"cpu {run['cpu_at_start_s']:.2f} s, rss {run['rss'] / MIB:.1f} MiB, "
                    f"active rss {run.get('rss_active', 0) / MIB:.1f} MiB, "
                    f"idle cpu {run['idle_cpu_pct']:.1f}%, load {loadavg()[0]:.2f}", stamp=False)
            row = {"loop": loop, "clients": n, "runs": runs}
            for key in ("start_s", "cpu_at_start_s", "child_cpu_s", "rss", "hwm", "rss_anon",
                        "idle_cpu_pct",
                        "rss_active", "hwm_active", "fds", "stop_s"):
                values = [x[key] for x in runs if key in x]
                if values:
                    row[key] = statistics.median(values)
            row["start_range"] = (min(x["start_s"] for x in runs), max(x["start_s"] for x in runs))
            for key in ("show_s", "show_bytes", "show_active_s", "show_connected"):
                if key in runs[0]:
                    row[key] = runs[0][key]
            row["activated"] = [x.get("activated") for x in runs]
            results["rows"].append(row)
        one, many = results["rows"][-2], results["rows"][-1]
        per = {"loop": loop}
        for key in ("rss", "rss_anon", "hwm"):
            per[key] = (many[key] - one[key]) / (args.clients - 1)
        if "rss_active" in many:
            per["rss_active"] = (many["rss_active"] - one["rss_active"]) / (args.clients - 1)
            per["activation_extra"] = (many["rss_active"] - many["rss"]) / args.clients
        results.setdefault("per_client", []).append(per)
    return results


def render_part1(res: dict, args) -> str:
    n = args.clients
    out = [f"### {n} clients vs 1 client ({datetime.date.today()}, {platform.node()}, "
           f"Python {platform.python_version()}, byte code {args.bytecode}, "
           f"medians of {args.runs})", "",
           f"`config.load` of the {n}-client file ({res['config_bytes']} bytes): "
           f"**{res['config_load_s']:.3f} s** CPU (wall {res['config_load_wall_s']:.3f} s; "
           f"runs: {', '.join(f'{x:.3f}' for x in res['config_load_runs'])}); 1 client: "
           f"{res['config_load_1_s'] * 1000:.1f} ms", "",
           "| loop | clients | launch -> \"server started\" (s) | min-max | daemon CPU by then "
           "(s) | + netlink helper CPU (s) "
           "| VmRSS (MiB) | VmHWM (MiB) | idle CPU (% of a core) | VmRSS, every client sent 1 "
           "keepalive (MiB) | `show --json` (s) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in res["rows"]:
        active = f"{row['rss_active'] / MIB:.1f}" if "rss_active" in row else "-"
        out.append(
            f"| {row['loop']} | {row['clients']} | {row['start_s']:.3f} | "
            f"{row['start_range'][0]:.2f}-{row['start_range'][1]:.2f} | "
            f"{row['cpu_at_start_s']:.2f} | {row['child_cpu_s']:.2f} | {row['rss'] / MIB:.1f} | "
            f"{row['hwm'] / MIB:.1f} | {row['idle_cpu_pct']:.1f} | {active} | ")
        out[-1] += f"{row['show_s']:.2f} |" if "show_s" in row else "- |"
    out += ["", "| loop | bytes per client after start (VmRSS) | (RssAnon) | (VmHWM) "
            "| bytes per client once active | of which added by activity |",
            "|---|---:|---:|---:|---:|---:|"]
    for per in res.get("per_client", []):
        out.append(f"| {per['loop']} | {per['rss']:.0f} | {per['rss_anon']:.0f} | "
                   f"{per['hwm']:.0f} | {per.get('rss_active', float('nan')):.0f} | "
                   f"{per.get('activation_extra', float('nan')):.0f} |")
    worst = max(row["start_s"] for row in res["rows"] if row["clients"] == n)
    out += ["", f"Goal (start < {START_GOAL:.0f} s with {n} clients): "
            f"{'met' if worst < START_GOAL else 'NOT met'} (slowest median {worst:.2f} s)."]
    notes = []
    for row in res["rows"]:
        for k, act in enumerate(row["activated"]):
            if act and act["replies"] < act["sent"]:
                notes.append(f"{row['loop']}/{row['clients']} run {k + 1}: {act['replies']} of "
                             f"{act['sent']} keepalives answered")
        if row.get("show_connected") is not None and row["show_connected"] != row["clients"]:
            notes.append(f"{row['loop']}/{row['clients']}: show lists {row['show_connected']} "
                         f"connected of {row['clients']}")
    if notes:
        out += ["", "Notes: " + "; ".join(notes)]
    return "\n".join(out)


# --------------------------------------------------------------------------- part 2


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]


_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = _MallInfo2


def rss_self() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def malloc_used() -> int:
    """Bytes in use by glibc malloc (heap + mmapped chunks): OpenSSL, the engine, and
    Python's allocations over 512 bytes (smaller ones live in pymalloc's arenas)."""
    m = _libc.mallinfo2()
    return m.uordblks + m.hblkhd


def evp_sizes(count: int = 2000) -> dict:
    """Heap bytes of one EVP_CIPHER_CTX: empty, keyed (AES-256-SIV), keyed copy."""
    from vpncrypt import _fast  # noqa: F401  (loads the same libcrypto)

    name = next((line.split()[-1] for line in open("/proc/self/maps") if "libcrypto" in line), None)
    cr = ctypes.CDLL(name or "libcrypto.so.3")
    cr.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
    cr.EVP_CIPHER_CTX_free.argtypes = [ctypes.c_void_p]
    cr.EVP_CIPHER_fetch.restype = ctypes.c_void_p
    cr.EVP_CIPHER_fetch.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    cr.EVP_EncryptInit_ex.argtypes = [ctypes.c_void_p] * 5
    cr.EVP_CIPHER_CTX_copy.argtypes = [ctypes.c_void_p] * 2
    cipher = cr.EVP_CIPHER_fetch(None, b"AES-256-SIV", None)
    key = os.urandom(64)
    u0 = malloc_used()
    tmpls = [cr.EVP_CIPHER_CTX_new() for _ in range(count)]
    u1 = malloc_used()
    for c in tmpls:
        assert cr.EVP_EncryptInit_ex(c, cipher, None, key, None) == 1
    u2 = malloc_used()
    works = [cr.EVP_CIPHER_CTX_new() for _ in range(count)]
    u3 = malloc_used()
    for w, c in zip(works, tmpls):
        assert cr.EVP_CIPHER_CTX_copy(w, c) == 1
    u4 = malloc_used()
    for c in tmpls + works:
        cr.EVP_CIPHER_CTX_free(c)
    return {"empty": (u1 - u0) / count, "keyed": (u2 - u0) / count,
            "copy_fill": (u4 - u3) / count}


def top_lines(snap_after, snap_before, n: int, per: int, limit: int = 8) -> list[tuple[str, float]]:
    rows = []
    for stat in snap_after.compare_to(snap_before, "lineno")[:limit]:
        frame = stat.traceback[0]
        fname = frame.filename
        short = os.path.relpath(fname, REPO) if fname.startswith(REPO) else os.path.basename(fname)
        where = f"{short}:{frame.lineno}"
        rows.append((where, stat.size_diff / per))
    return rows


class _FakeTun:
    """What NativePath reads of a TUN device; the engine's loops are never started."""

    def __init__(self):
        self.fd = os.open(os.devnull, os.O_RDWR)
        self.frame_prefix = 0
        self.name = "vpn0"
        self.offloads = ()  # no virtio header: what NativePath asks of a TUN


def build_server(cfg):
    """Server(cfg) and its native mirror, as Server.__init__ + Server.start do, no TUN."""
    from vpncrypt.daemon import fastpath
    from vpncrypt.daemon.server import Server

    srv = Server(cfg)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.tun = _FakeTun()
    srv.mtu = cfg.mtu
    srv.native = fastpath.NativePath(srv.tun, sock, True, cfg.server_id)
    srv.native_peers = {}
    srv._sock = sock
    return srv


def memory_probe(conf: str) -> dict:
    """In a fresh process: VmRSS and malloc growth per client of each start-up step."""
    from vpncrypt import config
    from vpncrypt.daemon import fastpath, server  # noqa: F401  (imports are not per client)
    from vpncrypt import _fast  # noqa: F401

    gc.collect()
    r0, m0 = rss_self(), malloc_used()
    cfg = config.load(conf)
    n = len(cfg.clients)
    gc.collect()
    r1, m1 = rss_self(), malloc_used()
    srv = build_server(cfg)
    gc.collect()
    r2, m2 = rss_self(), malloc_used()
    srv.sync_native()
    gc.collect()
    r3, m3 = rss_self(), malloc_used()
    return {"config.load": {"rss": (r1 - r0) / n, "malloc": (m1 - m0) / n},
            "Server(cfg)": {"rss": (r2 - r1) / n, "malloc": (m2 - m1) / n},
            "sync_native": {"rss": (r3 - r2) / n, "malloc": (m3 - m2) / n}}


def importtime(conf: str, state_dir: str, pycache: str | None, warm: bool = True) -> dict:
    """PYTHONPROFILEIMPORTTIME of one real start (1-client config, in a namespace)."""
    from netns import Netns

    if warm and pycache and not os.path.isdir(pycache):  # warm the byte code cache first
        importtime(conf, state_dir, pycache, warm=False)
    shutil.rmtree(state_dir, ignore_errors=True)
    with Netns() as host:
        d = LoggedDaemon(host, conf, daemon_env("native", pycache,
                                                {"PYTHONPROFILEIMPORTTIME": "1"}))
        try:
            started, _, _ = d.wait_line(r"server started", timeout=60)
            time.sleep(0.5)  # a SIGTERM before the daemon's handlers are installed kills it
        finally:
            d.stop()
    entries = []  # (self us, cumulative us, depth, name)
    for line in d.text().splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            entries.append((int(m.group(1)), int(m.group(2)), len(m.group(3)) // 2, m.group(4)))
    top = [e for e in entries if e[2] == 0]
    total = sum(e[1] for e in top)
    return {"total_s": total / 1e6, "modules": len(entries), "start_s": started,
            "top": sorted(((e[3], e[1] / 1e6) for e in top), key=lambda x: -x[1])[:10],
            "self_top": sorted(((e[3], e[0] / 1e6) for e in entries), key=lambda x: -x[1])[:8]}


def part2(args, tmp: str, with_import: bool) -> dict:
    from vpncrypt import _fast, config
    from vpncrypt.daemon.server import PeerState, Server  # noqa: F401  (imports counted out)
    from vpncrypt.protocol import keys

    n = args.clients
    keys_ = [generate_key() for _ in range(n)]
    state = os.path.join(tmp, "pstate")
    conf = write_conf(os.path.join(tmp, "profile.conf"), server_text(keys_, state))
    res = {"clients": n}

    # -- time, without a profiler -------------------------------------------------------
    phases = {"config.load": [], "Server(cfg) (apply_clients)": [], "sync_native": []}
    clock = time.process_time  # CPU seconds: the machine is shared
    for _ in range(args.runs):
        gc.collect()
        t0 = clock()
        cfg = config.load(conf)
        t1 = clock()
        srv = build_server(cfg)
        t2 = clock()
        srv.sync_native()
        t3 = clock()
        phases["config.load"].append(t1 - t0)
        phases["Server(cfg) (apply_clients)"].append(t2 - t1)
        phases["sync_native"].append(t3 - t2)
        srv.native.close()
        srv._sock.close()
        del srv, cfg
    # The steady state: what each 0.5-s tick costs (Runtime.run calls save_replay_state,
    # which walks every client), and one `show` (Server.status + JSON).
    cfg = config.load(conf)
    srv = build_server(cfg)
    srv.sync_native()
    os.makedirs(cfg.state_dir, exist_ok=True)
    tick_s, _ = median_time(srv.newest_timestamps, max(args.runs, 5))
    engine = srv.native.engine
    now = int(time.time())
    for cid in list(srv.peers)[: n // 2]:  # half the clients have sent something
        engine.restore_window(engine.index_of(cid), now)
    srv._saved_replay = {}
    save_s, _ = median_time(lambda: (srv.save_replay_state(), srv._saved_replay.clear()),
                            max(args.runs, 5))
    status_s, _ = median_time(lambda: json.dumps(srv.status()).encode(), args.runs)
    res["steady_s"] = {
        "newest_timestamps() (every 0.5-s tick)": tick_s,
        f"save_replay_state() when {n // 2} timestamps changed (writes the file)": save_s,
        "status() + JSON (one `vpncrypt show`)": status_s,
    }
    # The real tick, many times: it allocates per client, so the cyclic GC runs, and each
    # full collection walks every start-up object; gc.freeze() would exempt those.
    collections = []

    def on_gc(phase, info):
        if phase == "start":
            collections.append(info["generation"])

    def ticks(k=100):
        c = time.process_time()
        for _ in range(k):
            srv.save_replay_state()
        return (time.process_time() - c) / k

    gc.callbacks.append(on_gc)
    try:
        tick_gc = ticks()
        full_gc = collections.count(2)
        gc.freeze()
        tick_frozen = ticks()
        gc.unfreeze()
        c = time.process_time()
        gc.collect()
        one_full = time.process_time() - c
    finally:
        gc.callbacks.remove(on_gc)
    res["steady_s"]["save_replay_state() as the tick runs it (GC included, mean of 100)"] = tick_gc
    res["steady_s"]["the same after gc.freeze()"] = tick_frozen
    res["steady_s"][f"one full GC collection ({len(gc.get_objects())} objects)"] = one_full
    res["full_collections_per_100_ticks"] = full_gc
    res["idle_tick_cpu_pct"] = tick_gc / 0.5 * 100
    srv.native.close()
    srv._sock.close()
    del srv, cfg
    cfg = config.load(conf)
    psk = cfg.clients[0].key
    dk, _ = median_time(lambda: [keys.direction_key(psk, keys.CLIENT_TO_SERVER, 0, i)
                                 for i in range(1, 2 * n + 1)], args.runs)
    k64 = keys.direction_key(psk, keys.CLIENT_TO_SERVER, 0, 1)
    sc, _ = median_time(lambda: [_fast.SivContext(k64, 1, 0) for _ in range(2 * n)], args.runs)
    from vpncrypt.daemon.routing import AllowedIPs

    al, _ = median_time(lambda: AllowedIPs.from_peers(cfg.clients), args.runs)
    res["phases_s"] = {k: statistics.median(v) for k, v in phases.items()}
    res["inside_apply_clients_s"] = {
        f"keys.direction_key x {2 * n}": dk,
        f"_fast.SivContext x {2 * n}": sc,
        "AllowedIPs.from_peers": al,
    }
    res["inside_apply_clients_s"]["rest (PeerState, Counters, Sender/Receiver, dicts)"] = max(
        0.0, res["phases_s"]["Server(cfg) (apply_clients)"] - dk - sc - al)

    # config.load split: the line walk (positions and values), building the result; and
    # configparser, which config.load now runs only for a file it refuses, for reference
    text = open(conf).read()
    ctx_s, _ = median_time(lambda: config.ini._Context(conf, text), args.runs)
    cp_s, _ = median_time(lambda: config.ini._new_parser().read_string(text, source=conf), args.runs)
    ctx = config.ini._Context(conf, text)
    sections = config.ini._parse_ini(ctx)
    build_s, _ = median_time(lambda: config.sections._build(ctx, sections), args.runs)
    import ipaddress

    nets = [a for i in range(1, n + 1) for a in client_addrs(i)]
    ipn_s, _ = median_time(lambda: [config.values._network(x) for x in nets], args.runs)
    ipn_ref_s, _ = median_time(lambda: [ipaddress.ip_network(x) for x in nets], args.runs)
    res["inside_config_load_s"] = {
        "_Context._scan (the line walk: sections, values, line numbers)": ctx_s,
        "_build (sections, keys, networks, overlaps)": build_s,
        f"  of which config.values._network x {len(nets)}": ipn_s,
        "(for reference, not run: configparser.read_string of the file)": cp_s,
        f"(for reference, not run: ipaddress.ip_network x {len(nets)})": ipn_ref_s,
    }

    # -- cProfile: the hot functions -------------------------------------------------------
    prof = cProfile.Profile()
    prof.enable()
    cfg_p = config.load(conf)
    srv_p = build_server(cfg_p)
    srv_p.sync_native()
    prof.disable()
    srv_p.native.close()
    srv_p._sock.close()
    del srv_p, cfg_p
    os.makedirs(OUT, exist_ok=True)
    prof.dump_stats(os.path.join(OUT, "many_clients.prof"))
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    res["cprofile_total_s"] = stats.total_tt
    hot = []
    for (fname, line, func), (cc, nc, tt, ct, _) in sorted(stats.stats.items(),
                                                          key=lambda kv: -kv[1][2])[:14]:
        short = os.path.relpath(fname, REPO) if fname.startswith(REPO) else os.path.basename(fname)
        hot.append((f"{short}:{line}({func})", nc, tt, ct))
    res["cprofile_hot"] = hot

    # -- memory per client ------------------------------------------------------------------
    gc.collect()
    res["evp"] = evp_sizes()
    u0 = malloc_used()
    ctxs = [_fast.SivContext(k64, 1, 0) for _ in range(2000)]
    res["sivcontext_native"] = (malloc_used() - u0) / 2000
    packet = ctxs[0].seal(2, int(time.time()), 1, b"\0")
    u1 = malloc_used()
    for c in ctxs:
        c.open(packet, int(time.time()))
    res["sivcontext_first_use"] = (malloc_used() - u1) / 2000
    del ctxs

    # Pass 1 in a fresh process, without tracemalloc (its own tables are malloc'd, and
    # this process's heap has freed room that would hide growth): VmRSS and malloc deltas.
    del cfg
    probe = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-probe", conf],
                           capture_output=True, text=True, timeout=300, cwd=REPO)
    if probe.returncode != 0:
        raise RuntimeError(f"memory probe failed:\n{probe.stderr}")
    fresh = json.loads(probe.stdout.strip().splitlines()[-1])
    gc.collect()
    # Pass 2 with tracemalloc: the Python heap and where it is allocated.
    tracemalloc.start(1)
    snap0 = tracemalloc.take_snapshot()
    t0 = tracemalloc.get_traced_memory()[0]
    cfg = config.load(conf)
    gc.collect()
    snap1 = tracemalloc.take_snapshot()
    t1 = tracemalloc.get_traced_memory()[0]
    srv = build_server(cfg)
    gc.collect()
    snap2 = tracemalloc.take_snapshot()
    t2 = tracemalloc.get_traced_memory()[0]
    srv.sync_native()
    gc.collect()
    snap3 = tracemalloc.take_snapshot()
    t3 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    res["memory_per_client"] = {
        "config.load": {**fresh["config.load"], "python": (t1 - t0) / n,
                        "top": top_lines(snap1, snap0, n, n)},
        "Server(cfg)": {**fresh["Server(cfg)"], "python": (t2 - t1) / n,
                        "top": top_lines(snap2, snap1, n, n)},
        "sync_native": {**fresh["sync_native"], "python": (t3 - t2) / n,
                        "top": top_lines(snap3, snap2, n, n)},
    }
    srv.native.close()
    srv._sock.close()
    if with_import:
        pycache = os.path.join(tmp, "pycache") if args.bytecode == "cached" else None
        one = write_conf(os.path.join(tmp, "import1.conf"), server_text(keys_[:1], state))
        res["imports"] = importtime(one, state, pycache)
    return res


def render_part2(res: dict) -> str:
    n = res["clients"]
    out = [f"### Profile: where start-up time goes ({n} clients, in-process, no TUN)", "",
           "| step | seconds |", "|---|---:|"]
    if "imports" in res:
        imp = res["imports"]
        out.append(f"| imports (PYTHONPROFILEIMPORTTIME of a real start, {imp['modules']} "
                   f"modules; inflated by the tracing) | {imp['total_s']:.3f} |")
    for k, v in res["phases_s"].items():
        out.append(f"| {k} | {v:.3f} |")
        sub = {"config.load": "inside_config_load_s",
               "Server(cfg) (apply_clients)": "inside_apply_clients_s"}.get(k)
        for kk, vv in res.get(sub, {}).items() if sub else ():
            out.append(f"| &nbsp;&nbsp;{kk.strip()} | {vv:.3f} |")
    out += ["", "Steady state with all clients configured (CPU s):", "", "| step | seconds |",
            "|---|---:|"]
    for k, v in res.get("steady_s", {}).items():
        out.append(f"| {k} | {v:.4f} |")
    if "idle_tick_cpu_pct" in res:
        out += ["", f"=> the tick alone costs {res['idle_tick_cpu_pct']:.1f}% of a core while "
                "idle."]
    out += ["", "cProfile of config.load + Server(cfg) + sync_native "
            f"({res['cprofile_total_s']:.2f} s "
            "under the profiler), by own time:", "",
            "| function | calls | own s | cumulative s |", "|---|---:|---:|---:|"]
    for name, nc, tt, ct in res["cprofile_hot"]:
        out.append(f"| `{name}` | {nc} | {tt:.3f} | {ct:.3f} |")
    if "imports" in res:
        out += ["", "Largest top-level imports (cumulative s): " + ", ".join(
            f"{name} {s:.3f}" for name, s in res["imports"]["top"])]
    evp = res["evp"]
    out += ["", "### Profile: where per-client memory goes", "",
            f"OpenSSL EVP_CIPHER_CTX (for scale; the native core no longer copies these): "
            f"empty {evp['empty']:.0f} B, keyed with AES-256-SIV "
            f"{evp['keyed']:.0f} B, a work context after its first copy +{evp['copy_fill']:.0f} B. "
            f"One `_fast.SivContext` (a key: an AES-256-CBC and an AES-256-ECB context, "
            f"keyed once, and the CMAC subkeys): "
            f"{res['sivcontext_native']:.0f} B native at creation, "
            f"+{res['sivcontext_first_use']:.0f} B "
            "after its first seal/open. A server client has two (one per direction).", "",
            "| phase | VmRSS B/client | malloc B/client (mallinfo2) | Python heap B/client "
            "(tracemalloc) |", "|---|---:|---:|---:|"]
    for phase, m in res["memory_per_client"].items():
        out.append(f"| {phase} | {m['rss']:.0f} | {m['malloc']:.0f} | {m['python']:.0f} |")
    total = sum(m["rss"] for m in res["memory_per_client"].values())
    out += [f"| total | {total:.0f} | | |", "",
            "(malloc holds OpenSSL's contexts, the engine's Peer structs and Python objects "
            "over 512 B; smaller Python objects live in pymalloc arenas, which VmRSS sees and "
            "malloc does not. tracemalloc counts every Python allocation, so the last two "
            "columns overlap.)", ""]
    for phase, m in res["memory_per_client"].items():
        out.append(f"Top Python allocations in {phase} (B/client): " + ", ".join(
            f"`{where}` {size:.0f}" for where, size in m["top"][:6]))
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--loops", default="native,python")
    ap.add_argument("--bytecode", choices=("cached", "none"), default="cached")
    ap.add_argument("--settle", type=float, default=2.0, help="s after start before reading RSS")
    ap.add_argument("--idle", type=float, default=5.0, help="s of idle CPU sampling")
    ap.add_argument("--activate-rate", type=float, default=1000.0,
                    help="keepalives per second, one per client (0: skip)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--profile-only", action="store_true")
    ap.add_argument("--json", default=os.path.join(OUT, "many_clients.json"))
    ap.add_argument("--activate-only", nargs=3, metavar=("CONF", "RATE", "PORT"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--memory-probe", metavar="CONF", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe)))
        return
    if args.activate_only:  # run inside the server's namespace by part 1
        conf, rate, port = args.activate_only
        print(json.dumps(activate(conf, float(rate), int(port))))
        return
    args.loops = [x.strip() for x in args.loops.split(",") if x.strip()]
    if args.clients < 2 or args.clients > 65535:
        ap.error("--clients must be 2..65535")
    doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "host": platform.node(), "python": platform.python_version(),
           "args": {k: v for k, v in vars(args).items()}, "loadavg_before": loadavg()}
    tmp = tempfile.mkdtemp(prefix="vpncrypt-many-")
    os.chmod(tmp, 0o700)
    try:
        md = []
        if not args.profile_only:
            doc["daemon"] = part1(args, tmp)
            md.append(render_part1(doc["daemon"], args))
        if not args.no_profile:
            can_ns = os.geteuid() == 0 and shutil.which("ip")
            doc["profile"] = part2(args, tmp, with_import=bool(can_ns))
            md.append(render_part2(doc["profile"]))
        doc["loadavg_after"] = loadavg()
        md.append(f"Load average before/after: {doc['loadavg_before'][0]:.2f} / "
                  f"{doc['loadavg_after'][0]:.2f} on {os.cpu_count()} CPUs.")
        print("\n\n".join(md))
        write_json(args.json, doc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Resident memory of the running daemons, and what their imports cost.

Part 1, the deployment (needs root and network namespaces): a server and one client,
each a real `vpncryptd` process in its own namespace, built with tests/vpnharness.py.
By default (--install wheel) the daemons run as users run them: this checkout's wheel is
built (`python -m build`) and pip-installed into a fresh venv, and its `vpncryptd` script
is started (no runpy, no editable-install finder, byte code compiled by pip); with
--install checkout they are `python -m vpncrypt.cli.vpncryptd` from the checkout.
A TCP transfer runs through the tunnel for --seconds (iperf3 --bidir when installed, so
both daemons seal and open; otherwise tests/tcpxfer.py, stopped after --seconds), while
VmRSS of both daemons is sampled every 0.5 s. At the end VmHWM (peak RSS over the whole
life of the process, start-up included) and VmRSS are read from /proc/PID/status of the
real python processes (not the `ip netns exec` wrapper: the pid is checked against
`ip netns pids` and the command line), next to `python3 -S -c pass` and `python3 -c
pass` of the same interpreter as baselines.

Part 2, the import audit (no root needed): a fresh `python -S` process does what
vpncryptd does at start-up (`python -m` loads runpy, import vpncrypt.cli.vpncryptd,
parse the arguments with docopt, import and load the config, logs.setup, import the
server and client daemons, aead.select, build the crypto contexts, import the TUN
backend that open_tun/configure_interface use) and records VmRSS after each step, the
modules it ends up with, and who imports whom (an `__import__` hook plus the
`-X importtime` tree). For each standard-library or third-party module that vpncrypt
imports directly, the saving of not importing it is MEASURED: fresh interpreters import
the daemon's non-vpncrypt modules (in load order, vpncrypt._fast first so libcrypto is
always counted) with and without the modules that would no longer be reachable, and the
median VmRSS difference over --repeats runs is reported, with the chain it removes.
The same is done for the concrete changes in PROPOSALS, alone and leave-one-out (what a
change still saves once all the others are in), with the import lines they concern.
`-S` keeps this sandbox's site-packages (.pth files) out of the figures; the deployment's
daemons run with site, as they would when installed. Import-only figures leave out
vpncrypt's own modules (about 0.7 MB), which no proposal removes.

Units: "MB" is MiB (kB from /proc divided by 1024, as ps/top do). Pss and USS come from
/proc/PID/smaps_rollup: on this shared machine libpython's and libcrypto's pages are
shared with many other processes, so Pss/USS show the daemon's own cost here, while
VmRSS is what a router running only vpncryptd would see.

Byte code: this sandbox sets PYTHONDONTWRITEBYTECODE=1 and the work tree has no
__pycache__, so a daemon started from the checkout compiles every vpncrypt module from
source at each start, which an installed package (pip compiles on install) does not.
`--bytecode cached` (default) points PYTHONPYCACHEPREFIX at a temporary directory that
is warmed first, so the daemons load byte code as an installed daemon would;
`--bytecode none` reproduces the sandbox as is. The audit reports both start-ups.

Output: Markdown on stdout and bench/out/memory.json.

    sudo .venv/bin/python bench/memory.py [--seconds 30] [--crypto native|reference]
        [--bytecode cached|none] [--repeats 5] [--skip-audit | --audit-only]
"""

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# harness first: it puts tests/ (netns, vpnharness) and the checkout on sys.path
from harness import (OUT, ROOT, Hosts, cpu_model, daemon_pid, proc_cmdline, proc_status,
                     require_netns, utc_date, wait_listening, wait_or_kill, write_json)

MB = 1024.0  # /proc reports kB; the tables show MiB ("MB") like `ps`/`top`

STATUS_KEYS = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads")
# /proc/PID/smaps_rollup: Pss shares each page among the processes mapping it; USS
# (Private_Clean + Private_Dirty) is what the process alone holds.
ROLLUP_KEYS = ("Pss", "Pss_Anon", "Pss_File", "Private_Clean", "Private_Dirty")

# Peer figures measured on this machine (VmHWM, MB), for context only.
PEERS = {"fastd": 3.8, "OpenVPN": 9.4, "wireguard-go": "61-112"}
GOAL_MB = 16


# -- /proc helpers --------------------------------------------------------------------------

def memory_status(pid):
    """The memory fields of /proc/PID/status and smaps_rollup in kB (Threads as a count),
    or None if gone."""
    try:
        out = proc_status(pid, STATUS_KEYS)
    except (FileNotFoundError, ProcessLookupError):
        return None
    out.update(rollup(f"/proc/{pid}/smaps_rollup"))
    return out


def rollup(path):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ROLLUP_KEYS:
                    out[key] = int(value.split()[0])
    except OSError:
        return {}
    if "Private_Clean" in out and "Private_Dirty" in out:
        out["USS"] = out["Private_Clean"] + out["Private_Dirty"]
    return out


def mappings(pid, floor_kb=64):
    """Rss and its anonymous part per mapped file ([heap], [anon], [stack] for the rest), kB,
    largest first: says whether a figure is the interpreter, libcrypto or our own heap."""
    agg = {}
    name = None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split(None, 6)
                if not head[0].endswith(":"):  # a mapping's first line: range perms off dev inode [path]
                    name = head[5].strip() if len(head) > 5 else "[anon]"
                    agg.setdefault(name, [0, 0])
                elif head[0] == "Rss:":
                    agg[name][0] += int(head[1])
                elif head[0] == "Anonymous:":
                    agg[name][1] += int(head[1])
    except OSError:
        return []
    rows = sorted(agg.items(), key=lambda kv: -kv[1][0])
    return [{"mapping": k, "Rss": r, "Anonymous": a} for k, (r, a) in rows if r >= floor_kb]


def mb(kb):
    return None if kb is None else round(kb / MB, 2)


# -- baselines ------------------------------------------------------------------------------

_STATUS_CODE = ("import sys; sys.stdout.write(open('/proc/self/status').read() + "
                "open('/proc/self/smaps_rollup').read())")


def baseline(python, flags):
    """VmHWM/VmRSS (and Pss/USS) of `python FLAGS -c pass`, measured by the same command
    line with `pass` replaced by printing /proc/self/status and smaps_rollup (no import:
    `sys` is built in, `open` is io's). Median of 5 runs. (The kernel's ru_maxrss from
    wait4 would not do: it keeps the pre-exec high-water mark of the forked parent.)"""
    hwm, rss, pss, uss = [], [], [], []
    for _ in range(5):
        text = subprocess.run([python, *flags, "-c", _STATUS_CODE], check=True,
                              capture_output=True, text=True).stdout
        fields = {k: int(v.split()[0]) for k, _, v in
                  (line.partition(":") for line in text.splitlines())
                  if k in STATUS_KEYS or k in ROLLUP_KEYS}
        hwm.append(fields["VmHWM"])
        rss.append(fields["VmRSS"])
        pss.append(fields.get("Pss", 0))
        uss.append(fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0))
    return {"argv": [python, *flags, "-c", "pass"], "VmHWM_kB": statistics.median(hwm),
            "VmRSS_kB": statistics.median(rss), "Pss_kB": statistics.median(pss),
            "USS_kB": statistics.median(uss)}


# -- byte code ------------------------------------------------------------------------------

def bytecode_env(mode, tmp):
    """Environment changes for --bytecode; applied to os.environ so that the harness's
    python_env() hands them to the daemons."""
    if mode == "cached":
        prefix = os.path.join(tmp, "pycache")
        os.makedirs(prefix, exist_ok=True)
        return {"PYTHONPYCACHEPREFIX": prefix, "PYTHONDONTWRITEBYTECODE": None}
    return {"PYTHONPYCACHEPREFIX": None, "PYTHONDONTWRITEBYTECODE": "1"}


def apply_env(changes, env=None):
    env = os.environ if env is None else env
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


# What a copy of the checkout for the wheel build leaves out (VCS data, environments,
# build products, benchmark output).
_NOT_SOURCE = {".git", ".venv", "venv", "build", "dist", "__pycache__", ".pytest_cache",
               ".hypothesis", "out", ".cross"}  # .cross: the cross-arch chroots (GBs)


def install_wheel(tmp):
    """Build this checkout's wheel (`python -m build`) and `pip install` it into a fresh
    venv, as a user does; returns (the venv's python, argv of its `vpncryptd` script)."""
    def ignore(directory, names):
        return {n for n in names if n in _NOT_SOURCE or n.endswith((".egg-info", ".so"))
                or (n == "_fast.c" and os.path.basename(directory) == "vpncrypt")}

    src, dist, venv = (os.path.join(tmp, n) for n in ("src", "dist", "venv"))
    shutil.copytree(ROOT, src, ignore=ignore)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for argv in ([sys.executable, "-m", "build", "--wheel", "--outdir", dist, src],
                 [sys.executable, "-m", "venv", venv]):
        subprocess.run(argv, env=env, check=True, capture_output=True, timeout=600)
    wheel = next(Path(dist).glob("*.whl"))
    subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", str(wheel)],
                   env=env, check=True, capture_output=True, timeout=600)
    return os.path.join(venv, "bin", "python"), [os.path.join(venv, "bin", "vpncryptd")]


def warm_bytecode(python):
    """Load everything a daemon (and its netlink helper) loads once, so the cache is warm."""
    code = ("import runpy, vpncrypt.cli.vpncryptd, vpncrypt.config, vpncrypt.daemon.server, "
            "vpncrypt.daemon.client, vpncrypt.tun.linux, vpncrypt.tun.netlink, docopt\n"
            "try:\n import pyroute2\nexcept ImportError:\n pass\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    subprocess.run([python, "-c", code], env=env, check=True, cwd=str(ROOT), timeout=120)
    subprocess.run([python, "-m", "vpncrypt.cli.vpncryptd", "--version"], env=env, check=True,
                   cwd=str(ROOT), capture_output=True, timeout=60)


# -- part 1: the deployment -----------------------------------------------------------------

def run_deployment(args, python, command=None):
    """Start the deployment, move data for args.seconds, return the measurements.
    command: argv of an installed vpncryptd (--install wheel), None: this checkout."""
    import vpnharness  # tests/ helpers (need root + netns; tests/netns.py imports pytest)

    require_netns("memory.py: cannot run the deployment")
    tmp = tempfile.mkdtemp(prefix="vpncrypt-mem-")
    make_host = Hosts()
    result = {"tmp": tmp}
    try:
        if command is None:
            apply_env(bytecode_env(args.bytecode, tmp))
            if args.bytecode == "cached":
                warm_bytecode(python)
        else:  # pip compiled the package's byte code into site-packages at install
            apply_env({"PYTHONPYCACHEPREFIX": None})
        os.environ["VPNCRYPT_CRYPTO"] = args.crypto  # aead.select() honours it
        dep = vpnharness.Deployment(make_host, tmp, command=command)
        t0 = time.monotonic()
        dep.start()
        server, client = dep.server, dep.clients[0]
        for d in (server, client):
            d.wait_log(rf"crypto {args.crypto}")  # the daemon really uses the path asked for
        dep.wait_ping(dep.client_host(1), vpnharness.SERVER_TUN4, timeout=20)
        result["startup_seconds"] = round(time.monotonic() - t0, 2)
        pids = {}
        for name, d in (("server", server), ("client", client)):
            pid, forked = daemon_pid(d)
            pids[name] = pid
            result[f"{name}_pid"] = {"python": pid, "wrapper": d.proc.pid,
                                     "ip_netns_exec_forked": forked,
                                     "cmdline": proc_cmdline(pid)}
        time.sleep(1.0)
        result["idle"] = {n: memory_status(p) for n, p in pids.items()}

        samples = []
        transfer = {}
        t_start = time.monotonic()

        def sample():
            samples.append({"t": round(time.monotonic() - t_start, 2),
                            **{n: memory_status(p) for n, p in pids.items()}})

        if shutil.which("iperf3"):
            transfer["tool"] = "iperf3 --bidir"
            srv = dep.server_host.popen(["iperf3", "-s", "-1", "-p", "5201"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if not wait_listening(dep.server_host, 5201):
                raise RuntimeError(f"nothing listens on port 5201 in {dep.server_host.name}")
            cli = dep.client_host(1).popen(
                ["iperf3", "-c", vpnharness.SERVER_TUN4, "-p", "5201", "-t", str(args.seconds),
                 "--bidir", "-J"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + args.seconds + 30
            while cli.poll() is None and time.monotonic() < deadline:
                sample()
                time.sleep(0.5)
            if cli.poll() is None:
                cli.kill()
            out, err = cli.communicate(timeout=10)
            try:
                report = json.loads(out)
                end = report.get("end", {})
                transfer["client_to_server_bytes"] = end.get("sum_sent", {}).get("bytes")
                transfer["server_to_client_bytes"] = end.get("sum_sent_bidir_reverse", {}).get(
                    "bytes")
                transfer["seconds"] = end.get("sum_sent", {}).get("seconds")
                transfer["retransmits"] = end.get("sum_sent", {}).get("retransmits")
                if "error" in report:
                    transfer["error"] = report["error"]
            except ValueError:
                transfer["error"] = (err or out).strip()[-500:]
            wait_or_kill(srv)
        else:
            transfer["tool"] = "tests/tcpxfer.py (client -> server), stopped after --seconds"
            recv = vpnharness.start_receiver(dep.server_host)
            send = vpnharness.start_sender(dep.client_host(1), vpnharness.SERVER_TUN4, 1 << 40)
            deadline = time.monotonic() + args.seconds
            while send.poll() is None and time.monotonic() < deadline:
                sample()
                time.sleep(0.5)
            for p in (send, recv):
                if p.poll() is None:
                    p.kill()
                p.wait(10)
            transfer["seconds"] = round(time.monotonic() - t_start, 1)
        sample()
        result["transfer"] = transfer
        result["end"] = {n: memory_status(p) for n, p in pids.items()}
        result["end_mappings"] = {n: mappings(p) for n, p in pids.items()}
        time.sleep(2.0)
        result["after_idle_2s"] = {n: memory_status(p) for n, p in pids.items()}
        result["samples"] = samples
        # Counters last, best effort (SIGUSR1; the memory figures are all taken already).
        stats = {}
        for name, d in (("server", server), ("client", client)):
            try:
                stats[name] = d.stats()
            except AssertionError as e:
                stats[name] = {"error": str(e)[-300:]}
            time.sleep(0.3)
            if d.proc.poll() is not None:
                stats[name]["exited_after_sigusr1"] = d.proc.returncode
        result["daemon_stats"] = stats
        for name, d in (("server", server), ("client", client)):
            result[f"{name}_log_tail"] = d.text()[-2000:]
    finally:
        make_host.close()
        shutil.rmtree(tmp, ignore_errors=True)
        os.environ.pop("VPNCRYPT_CRYPTO", None)
    return result


# -- part 2: the import audit ---------------------------------------------------------------

# Runs as `python -S [-X importtime] -c STARTUP_CHILD PATHS CONFIG CRYPTO HOOK`. Until the
# final report it imports nothing that vpncrypt would not import itself.
STARTUP_CHILD = r'''
import sys
_base = list(sys.modules)
sys.path[:0] = sys.argv[1].split("\n")
config_path, crypto, hook = sys.argv[2], sys.argv[3], sys.argv[4] == "1"

def _status():
    d = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                d[k] = int(v.split()[0])
    return d

edges, order = [], []
if hook:
    import builtins
    _orig = builtins.__import__

    def _import(name, globals=None, locals=None, fromlist=(), level=0):
        g = globals or {}
        importer = g.get("__name__", "?")
        if level:
            pkg = g.get("__package__") or importer
            base = pkg.rsplit(".", level - 1)[0] if level > 1 else pkg
            target = base + "." + name if name else base
        else:
            target = name
        order.append(target)  # before the import runs: parents come before what they import
        mod = _orig(name, globals, locals, fromlist, level)
        edges.append((importer, target))
        for item in fromlist or ():
            if target + "." + item in sys.modules:
                edges.append((importer, target + "." + item))
        return mod

    builtins.__import__ = _import

steps = [("interpreter (python -S)", _status(), len(sys.modules))]

def step(label):
    steps.append((label, _status(), len(sys.modules)))

import runpy
step("runpy (what `python -m` loads)")
import vpncrypt.cli.vpncryptd as cli
step("import vpncrypt.cli.vpncryptd")
from vpncrypt.cli import parse_args
args = parse_args(cli.__doc__, ["-c", config_path, "-f"], "vpncryptd x", "vpncryptd")
step("parse_args() (docopt)")
from vpncrypt import config as configmod
step("import vpncrypt.config")
from vpncrypt.daemon import logs
step("import vpncrypt.daemon.logs")
from vpncrypt.daemon.runtime import FatalError
step("import vpncrypt.daemon.runtime")
cfg = configmod.load(args["--config"])
step("config.load()")
logs.setup(False, True)
step("logs.setup(foreground)")
import vpncrypt.daemon.server
step("import vpncrypt.daemon.server")
import vpncrypt.daemon.client
step("import vpncrypt.daemon.client")
from vpncrypt.protocol import aead
ctx_class, path = aead.select(crypto)
step("aead.select()")
from vpncrypt.protocol.session import ServerCore
core = ServerCore(cfg.server_id, ctx_class)
for entry in cfg.clients:
    core.set_client(entry.id, entry.key)
step("crypto contexts (ServerCore.set_client)")
vpncrypt.daemon.client.resolve("127.0.0.1", 51900)
step("client: resolve() (socket.getaddrinfo)")
from vpncrypt import tun
tun._backend()
step("TUN backend (open_tun/configure_interface)")
if hook:
    builtins.__import__ = _orig
modules = list(sys.modules)
import json
sys.stdout.write("@@audit@@" + json.dumps({"base": _base, "modules": modules, "edges": edges,
                                           "order": order,
                                           "steps": steps, "crypto_path": path}) + "\n")
'''

# Imports NAMES (comma-separated) in order into a fresh interpreter and prints its status.
IMPORT_CHILD = r'''
import sys
sys.path[:0] = sys.argv[1].split("\n")
for name in sys.argv[2].split(","):
    if name:
        try:
            __import__(name)
        except ImportError:
            pass
with open("/proc/self/status") as f:
    sys.stdout.write(f.read())
'''


# Imports NAMES in order and prints [(name, VmRSS added kB, modules now loaded), ...].
LADDER_CHILD = r'''
import sys
sys.path[:0] = sys.argv[1].split("\n")
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
prev, out = rss(), []
for name in sys.argv[2].split(","):
    try:
        __import__(name)
    except ImportError:
        pass
    now = rss()
    out.append((name, now - prev, len(sys.modules)))
    prev = now
import json  # after the last measurement
sys.stdout.write(json.dumps(out))
'''


def parse_importtime(text):
    """(parent, child) pairs and per-module (self_us, cumulative_us) from -X importtime.

    Lines are printed when an import finishes (post-order), indented two spaces per
    nesting level, so a line's parent is the next line one level shallower."""
    edges, times, pending = [], {}, {}
    for line in text.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        head, cum_us, rest = line.split("|", 2)
        name = rest[1:]  # "| " then two spaces per level
        depth = (len(name) - len(name.lstrip(" "))) // 2
        name = name.strip()
        times[name] = (int(head.split(":", 1)[1]), int(cum_us))
        for child in pending.pop(depth + 1, []):
            edges.append((name, child))
        pending.setdefault(depth, []).append(name)
    return edges, times, pending.get(0, [])


def build_graph(data, importtime_edges):
    """Import graph over the modules the start-up added. Edges from modules that were
    already loaded when it began (or from unknown importers) count as the root's."""
    base = set(data["base"])
    present = [m for m in data["modules"] if m not in base]
    # Load order = order of first import request (pre-order), then whatever was loaded
    # without going through __import__ (from C), in sys.modules order.
    mods = list(dict.fromkeys([m for m in data["order"] if m in set(present)] + present))
    node = set(mods)
    graph = {"__main__": set()}
    for m in mods:
        graph.setdefault(m, set())
        if "." in m:
            parent = m.rsplit(".", 1)[0]
            if parent in node:
                graph[m].add(parent)  # a submodule needs its package
    for importer, target in list(map(tuple, data["edges"])) + importtime_edges:
        if target not in node or importer == target:
            continue
        src = importer if importer in node else "__main__"
        graph[src].add(target)
    # Modules nobody imported through the import system were put in sys.modules by
    # another module's code: typing.io/typing.re by typing, cython_runtime and
    # _cython_3_x by the Cython extension being initialised (which enters sys.modules
    # right after them). Credit them to their package, else to the next module loaded.
    order = [m for m in data["modules"] if m not in base]
    reach = reachable(graph, set())
    for m in mods:
        if m in reach:
            continue
        parent = m.rsplit(".", 1)[0] if "." in m else None
        if parent in node:
            graph[parent].add(m)
        else:
            later = order[order.index(m) + 1:] if m in order else []
            graph[later[0] if later else "__main__"].add(m)
    return mods, graph


def reachable(graph, cut):
    """Modules reachable from __main__ when the (importer, imported) edges in `cut` are gone."""
    seen, todo = set(), ["__main__"]
    while todo:
        m = todo.pop()
        for t in graph.get(m, ()):
            if (m, t) not in cut and t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


def own(name):
    return name == "vpncrypt" or name.startswith("vpncrypt.")


def importers(graph, target):
    return sorted(m for m, ts in graph.items() if target in ts)


def import_sites(graph, targets):
    """'vpncrypt/x.py:LINE' for each import statement of a target in the vpncrypt modules
    that import it (read from the sources now: other people edit them)."""
    sites = []
    for target in targets:
        for importer in importers(graph, target):
            if not own(importer):
                if importer == "__main__":
                    sites.append("(how the daemon is started)")
                continue
            rel = importer.replace(".", "/")
            path = ROOT / (rel + ".py")
            if not path.exists():
                path = ROOT / rel / "__init__.py"
            top, _, sub = target.partition(".")
            try:
                lines = path.read_text().splitlines()
            except OSError:
                continue
            for no, line in enumerate(lines, 1):
                code = line.split("#", 1)[0].strip()
                if (code == f"import {target}" or code.startswith(f"import {target} ")
                        or code.startswith(f"from {target} import")
                        or (sub and code.startswith(f"from {top} import") and sub in code)):
                    sites.append(f"{path.relative_to(ROOT)}:{no}")
    return list(dict.fromkeys(sites))


def find_lines(spec):
    """'file:LINE' for each (file relative to the repo, text) in spec, read now."""
    out = []
    for rel, text in spec:
        try:
            lines = (ROOT / rel).read_text().splitlines()
        except OSError:
            continue
        out += [f"{rel}:{no}" for no, line in enumerate(lines, 1) if text in line]
    return out


def run_child(python, code, argv, env, importtime=False, timeout=60):
    cmd = [python, "-S", *(["-X", "importtime"] if importtime else []), "-c", code, *argv]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd="/")
    if proc.returncode != 0:
        raise RuntimeError(f"audit child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout, proc.stderr


def status_of(text):
    return {k: int(v.split()[0]) for k, _, v in
            (line.partition(":") for line in text.splitlines()) if k in STATUS_KEYS}


def make_audit_config(tmp):
    from vpncrypt.protocol.keys import generate_key  # the checkout's (harness's sys.path)

    path = os.path.join(tmp, "server.conf")
    with open(path, "w") as f:
        f.write("[server]\nlisten = 0.0.0.0:51900\ninterface = vpn0\n"
                "address = 10.201.0.1/24, fd00:201::1/64\nserver_id = 7\n\n"
                f"[client c1]\nid = 1\nkey = {generate_key()}\n"
                "allowed_ips = 10.201.0.2/32, fd00:201::2/128\n")
    os.chmod(path, 0o600)
    return path


def search_paths(python):
    """Repo root, then the directories holding docopt (and cryptography) for this python."""
    code = ("import importlib.util as u\nfor n in ('docopt', 'cryptography'):\n"
            " s = u.find_spec(n)\n"
            " if s and s.submodule_search_locations:\n"
            "  import os; print(os.path.dirname(list(s.submodule_search_locations)[0]))\n")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    return [str(ROOT)] + list(dict.fromkeys(out))


# The concrete changes proposed. Each is measured alone (against today's start-up) and
# leave-one-out (against the start-up with ALL of them applied, i.e. what this one still
# costs once the others are done: shared dependencies make the two differ).
PROPOSALS = [
    ("dataclasses", ["dataclasses"],
     "protocol/session.py: Opened/Dropped/Reply as plain classes with __slots__ and an "
     "__init__ (also cheaper per packet than frozen-dataclass __init__); config.py: "
     "Peer/ServerConfig/ClientConfig on a 20-line frozen record base (__slots__, "
     "__setattr__ raising AttributeError, __repr__ without `key`, __eq__), `role` a plain "
     "class attribute; tests/test_config.py uses dataclasses.fields() once"),
    ("logging.handlers (lazily)", ["logging.handlers"],
     "daemon/logs.py: import logging.handlers inside setup()'s syslog branch only; "
     "--foreground (systemd/procd, README) never loads it"),
    ("logging (own small logger)", ["logging", "logging.handlers"],
     "daemon/logs.py: a ~40-line logger with the same log.info/warning/error/debug(fmt, "
     "*args) calls: one formatted line to stderr, or an AF_UNIX datagram "
     "'<priority>vpncryptd[pid]: msg' to /dev/log"),
    ("docopt + typing", ["docopt", "typing"],
     "cli/__init__.py: parse vpncryptd's 4 usage forms by hand, keeping the one-line error "
     "contract; and no runtime typing import: config.py ClassVar (a plain class attribute), "
     "tun/__init__.py Protocol/runtime_checkable (a documented base class, or behind "
     "`TYPE_CHECKING = False` / `if TYPE_CHECKING:`), tun/linux.py Any/ClassVar (annotation-"
     "only under `from __future__ import annotations`: move under `if TYPE_CHECKING:`). "
     "Either half alone saves little: docopt imports typing"),
    ("subprocess", ["subprocess"],
     "tun/linux.py _run_helper(): os.posix_spawn + os.pipe + select.poll timeout + "
     "os.waitpid instead of subprocess.run (it is called at every start, so a lazy import "
     "would not help)"),
    ("json (lazily)", ["json"],
     "tun/linux.py (helper request/reply), daemon/runtime.py and control.py (control "
     "socket): import json inside the functions; it then loads only at the first control "
     "request"),
    ("runpy (console script)", ["runpy"],
     "start `vpncryptd` (the console script, as the README does) instead of `python -m "
     "vpncrypt.cli.vpncryptd` (tests/vpnharness.py, and so these measurements)",
     [("tests/vpnharness.py", '"-m", "vpncrypt.cli.vpncryptd"')]),
    ("encodings.idna (client only)", ["encodings.idna"],
     "daemon/client.py resolve(): socket.getaddrinfo() runs every str host through the "
     "'idna' codec (encodings.idna -> stringprep, unicodedata, re); pass "
     "host.encode('ascii') (config only accepts ASCII host names) or encode to idna only "
     "for non-ASCII names",
     [("vpncrypt/daemon/client.py", "socket.getaddrinfo(")]),
    ("base64 + hashlib + hmac", ["base64", "hashlib", "hmac"],
     "protocol/keys.py: binascii.a2b_base64(text, strict_mode=True) for decode_key, and "
     "HKDF-SHA256 done in vpncrypt._fast (HMAC via the libcrypto it already links); "
     "libcrypto itself stays (the extension needs it)"),
    ("configparser", ["configparser"],
     "config.py: its own INI reader (it already pre-scans lines with configparser's "
     "SECTCRE/OPTCRE for line numbers)"),
    ("glob", ["glob"], "control.py: import glob inside sockets() (the operator tool's path)"),
]


# Measured alone from a bare `python -S` (what loading them costs, shared pages included).
STANDALONE = [
    ("vpncrypt._fast (libcrypto + AES-256-SIV fetch)", ["vpncrypt._fast"]),
    ("_hashlib (libcrypto + all digests)", ["_hashlib"]),
    ("vpncrypt._fast + _hashlib", ["vpncrypt._fast", "_hashlib"]),
    ("cryptography AESSIV (reference path)",
     ["cryptography.hazmat.primitives.ciphers.aead"]),
    ("pyroute2 (the netlink helper child only)", ["pyroute2"]),
]


def audit(args, python, tmp):
    """The import audit; returns a dict (see the module docstring)."""
    paths = search_paths(python)
    conf = make_audit_config(tmp)
    pathsarg = "\n".join(paths)
    out = {"python": python, "search_paths": paths, "startups": {}}

    # Start-up emulation, per byte-code mode: VmRSS after each step (median of repeats).
    for mode in ("cached", "none"):
        env = apply_env(bytecode_env(mode, os.path.join(tmp, "audit")), dict(os.environ))
        env.pop("VPNCRYPT_CRYPTO", None)
        runs = []
        for i in range(args.repeats + (1 if mode == "cached" else 0)):
            stdout, _ = run_child(python, STARTUP_CHILD, [pathsarg, conf, args.crypto, "0"], env)
            data = json.loads(stdout.split("@@audit@@", 1)[1])
            if mode == "cached" and i == 0:
                continue  # the first run filled the byte-code cache
            runs.append(data["steps"])
        steps = []
        for k, (label, _, nmods) in enumerate(runs[0]):
            rss = statistics.median(r[k][1]["VmRSS"] for r in runs)
            hwm = statistics.median(r[k][1]["VmHWM"] for r in runs)
            steps.append({"step": label, "VmRSS_kB": rss, "VmHWM_kB": hwm, "modules": nmods})
        out["startups"][mode] = steps

    # The graph: one run with the import hook and -X importtime (cached byte code).
    env = apply_env(bytecode_env("cached", os.path.join(tmp, "audit")), dict(os.environ))
    env.pop("VPNCRYPT_CRYPTO", None)
    stdout, stderr = run_child(python, STARTUP_CHILD, [pathsarg, conf, args.crypto, "1"], env,
                               importtime=True)
    data = json.loads(stdout.split("@@audit@@", 1)[1])
    it_edges, times, _ = parse_importtime(stderr)
    mods, graph = build_graph(data, it_edges)
    out["crypto_path"] = data["crypto_path"]
    out["modules"] = mods
    out["importtime_us"] = {m: times.get(m) for m in mods}
    out["graph"] = {m: sorted(ts) for m, ts in graph.items()}
    full = reachable(graph, set())

    # Candidates: every non-vpncrypt module a vpncrypt module (or the -m machinery) imports.
    direct = sorted({t for m, ts in graph.items() if own(m) or m == "__main__" for t in ts
                     if not own(t)})
    native_first = ["vpncrypt._fast"] if "vpncrypt._fast" in full else []

    def load_order(keep):
        return native_first + [m for m in mods if m in keep and not own(m)]

    def measure(names, label):  # label: for reading tracebacks
        vals = []
        for _ in range(args.repeats):
            stdout, _ = run_child(python, IMPORT_CHILD, [pathsarg, ",".join(names)], env)
            vals.append(status_of(stdout)["VmRSS"])
        return statistics.median(vals)

    def cut_for(targets):
        return {(m, t) for m, ts in graph.items() if own(m) or m == "__main__"
                for t in ts if t in targets}

    base_rss = measure([], "nothing")
    full_rss = measure(load_order(full), "all")
    out["import_only"] = {"nothing_kB": base_rss, "all_non_vpncrypt_kB": full_rss,
                          "count": len(load_order(full))}
    candidates = [([t], t, None) for t in direct]
    results = []
    for targets, name, why in candidates:
        keep = reachable(graph, cut_for(set(targets)))
        removed = sorted(full - keep)
        if not removed:
            results.append({"name": name, "targets": targets, "removed": [], "saving_kB": 0,
                            "why": why, "kept_by": {t: [i for i in importers(graph, t)
                                                        if not own(i) and i != "__main__"]
                                                    for t in targets}})
            continue
        rss = measure(load_order(keep), name)
        results.append({
            "name": name, "targets": targets, "why": why, "removed": removed,
            "saving_kB": full_rss - rss,
            "vpncrypt_importers": {t: [i for i in importers(graph, t) if own(i) or i == "__main__"]
                                   for t in targets},
            "importers_of_removed": {r: importers(graph, r) for r in removed},
        })
    results.sort(key=lambda r: -r["saving_kB"])
    out["candidates"] = results

    # The proposals: alone, all together, and each one left out of "all".
    every = {t for _, targets, *_ in PROPOSALS for t in targets}
    keep_all = reachable(graph, cut_for(every))
    all_rss = measure(load_order(keep_all), "all proposals")
    proposals = []
    for name, targets, change, *located in PROPOSALS:
        keep = reachable(graph, cut_for(set(targets)))
        alone = full_rss - measure(load_order(keep), name) if full - keep else 0
        rest = every - set(targets)
        if any(t.startswith(x + ".") or x.startswith(t + ".") for t in targets for x in rest):
            last = None  # a part of another proposal (logging.handlers within logging)
        else:
            keep_rest = reachable(graph, cut_for(rest))
            last = measure(load_order(keep_rest), name) - all_rss if keep_rest - keep_all else 0
        proposals.append({"name": name, "targets": targets, "change": change,
                          "saving_alone_kB": alone, "saving_last_kB": last,
                          "removed_alone": sorted(full - keep),
                          "where": (find_lines(located[0]) if located
                                    else import_sites(graph, targets))})
    # Average marginal saving over random orders of applying them (a Shapley estimate):
    # single "alone"/"last" figures can straddle a step (a dict or arena growing), which
    # the average smooths; the averages add up to the saving of all of them.
    rng = random.Random(1)
    independent = [p for p in proposals if p["saving_last_kB"] is not None]
    cache = {}

    def measure_keep(keep):
        key = frozenset(keep)
        if key not in cache:
            cache[key] = measure(load_order(keep), "order")
        return cache[key]

    margins = {p["name"]: [] for p in independent}
    for _ in range(args.orders):
        order = independent[:]
        rng.shuffle(order)
        applied, prev = set(), full_rss
        for p in order:
            applied |= set(p["targets"])
            now = measure_keep(reachable(graph, cut_for(applied)))
            margins[p["name"]].append(prev - now)
            prev = now
    for p in proposals:
        m = margins.get(p["name"])
        p["saving_mean_kB"] = statistics.mean(m) if m else None
        p["saving_range_kB"] = [min(m), max(m)] if m else None
    out["proposals"] = proposals
    out["orders"] = args.orders
    out["all_proposals"] = {"VmRSS_kB": all_rss, "saving_kB": full_rss - all_rss,
                            "removed": sorted(full - keep_all)}

    # Incremental VmRSS in load order: each module is charged what importing it added,
    # i.e. itself plus whatever of its imports was not loaded yet (first loader pays).
    names = load_order(full)
    ladders = []
    for _ in range(args.repeats):
        stdout, _ = run_child(python, LADDER_CHILD, [pathsarg, ",".join(names)], env)
        ladders.append(json.loads(stdout))
    out["ladder"] = [{"module": n, "added_kB": statistics.median(l[i][1] for l in ladders),
                      "loaded": statistics.median(l[i][2] for l in ladders)}
                     for i, (n, _, _) in enumerate(ladders[0])]

    standalone = {}
    for label, names in STANDALONE:
        try:
            vals = [status_of(run_child(python, IMPORT_CHILD, [pathsarg, ",".join(names)],
                                        env)[0]) for _ in range(args.repeats)]
        except RuntimeError:
            continue
        bare = [status_of(run_child(python, IMPORT_CHILD, [pathsarg, ""], env)[0])
                for _ in range(args.repeats)]
        standalone[label] = {k: statistics.median(v[k] for v in vals) -
                             statistics.median(b[k] for b in bare)
                             for k in ("VmRSS", "RssAnon", "RssFile")}
    out["standalone"] = standalone
    return out


# -- report ---------------------------------------------------------------------------------

def mem_total():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / MB / MB:.1f} GiB"
    return "?"


def machine_info(python):
    version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True).stdout.strip()
    return {
        "date": utc_date(),
        "python": f"{platform.python_implementation()} {version} ({python})",
        "machine": f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} CPUs, {mem_total()}",
        "kernel": platform.release(),
        "host": socket.gethostname(),
    }


def print_deployment(dep, baselines, args):
    print("| process | VmHWM MB | VmRSS MB | VmRSS idle after start MB | max VmRSS in transfer MB "
          "| Pss MB | USS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in ("server", "client"):
        end, idle = dep["end"][name] or {}, dep["idle"][name] or {}
        peak = max((s[name]["VmRSS"] for s in dep["samples"] if s.get(name)), default=None)
        print(f"| vpncryptd {name} ({args.crypto}) | {mb(end.get('VmHWM'))} | "
              f"{mb(end.get('VmRSS'))} | {mb(idle.get('VmRSS'))} | {mb(peak)} | "
              f"{mb(end.get('Pss'))} | {mb(end.get('USS'))} |")
    for label, b in baselines.items():
        print(f"| `{label}` | {mb(b['VmHWM_kB'])} | {mb(b['VmRSS_kB'])} | | | "
              f"{mb(b['Pss_kB'])} | {mb(b['USS_kB'])} |")
    print()
    t = dep["transfer"]
    moved = [t.get("client_to_server_bytes"), t.get("server_to_client_bytes")]
    print(f"- transfer: {t['tool']}, {args.seconds} s"
          + (f", {moved[0] / 1e6:.0f} MB up / {moved[1] / 1e6:.0f} MB down" if all(moved) else "")
          + (f"; ERROR {t['error']}" if t.get("error") else ""))
    for name in ("server", "client"):
        st = dep["daemon_stats"].get(name, {})
        rows = list(st.get("peers", {}).values()) or [st]  # the server counts per peer
        rx = sum(int(r.get("rx_packets", 0)) for r in rows)
        tx = sum(int(r.get("tx_packets", 0)) for r in rows)
        died = st.get("exited_after_sigusr1")
        print(f"- {name} counters (SIGUSR1): rx_packets={rx} tx_packets={tx}"
              + (f"; the daemon EXITED ({died}) after SIGUSR1, see its log in the JSON"
                 if died is not None else ""))
        end = dep["end"][name] or {}
        after = dep["after_idle_2s"][name] or {}
        print(f"- {name} at the end: RssAnon {mb(end.get('RssAnon'))} MB, RssFile "
              f"{mb(end.get('RssFile'))} MB, threads {end.get('Threads')}; VmRSS 2 s later "
              f"{mb(after.get('VmRSS'))} MB")
    print(f"- peers on this machine (VmHWM): " + ", ".join(f"{k} {v} MB" for k, v in PEERS.items())
          + f"; goal: under {GOAL_MB} MB each")
    print()


def print_audit(a):
    print("## Import audit")
    print()
    print(f"Start-up emulated in a fresh `python -S` ({a['crypto_path']} crypto); VmRSS after "
          "each step, median of runs, MB:")
    print()
    cached, none = a["startups"]["cached"], a["startups"]["none"]
    print("| step | modules | VmRSS (byte code cached) | + | VmRSS (no .pyc for vpncrypt) |")
    print("|---|---:|---:|---:|---:|")
    prev = None
    for c, n in zip(cached, none):
        delta = "" if prev is None else f"{(c['VmRSS_kB'] - prev) / MB:+.2f}"
        print(f"| {c['step']} | {c['modules']} | {mb(c['VmRSS_kB'])} | {delta} | "
              f"{mb(n['VmRSS_kB'])} |")
        prev = c["VmRSS_kB"]
    print()
    print(f"sys.modules: {len(a['modules'])} modules added by the start-up (besides the "
          "interpreter's own), in load order: " + ", ".join(a["modules"]) + ".")
    print()
    io = a["import_only"]
    print(f"Those {io['count']} non-vpncrypt modules alone, imported in a fresh `python -S`: "
          f"{mb(io['all_non_vpncrypt_kB'])} MB (bare `python -S`: {mb(io['nothing_kB'])} MB).")
    print()
    print("Proposed changes, ranked by measured saving (VmRSS, MB). *mean*: average "
          f"marginal saving over {a['orders']} random orders of applying them (min-max); "
          "*alone*: applied to today's start-up; *last*: what it still saves once all the "
          "others are in. Shared dependencies and steps (a dict or an arena growing) make "
          "single figures move by up to ~0.2 MB; the means add up to the total:")
    print()
    print("| change | mean (min-max) | alone | last | where | what to do | modules removed "
          "(alone) |")
    print("|---|---:|---:|---:|---|---|---|")

    def f(kb):
        return "" if kb is None else f"{kb / MB:.2f}"

    for p in sorted(a["proposals"], key=lambda p: -(p["saving_mean_kB"]
                                                    if p["saving_mean_kB"] is not None
                                                    else p["saving_alone_kB"])):
        rng = p["saving_range_kB"]
        mean = (f"{f(p['saving_mean_kB'])} ({f(rng[0])}-{f(rng[1])})" if rng
                else "(part of logging)")
        print(f"| {p['name']} | {mean} | {f(p['saving_alone_kB'])} | {f(p['saving_last_kB'])} "
              f"| {', '.join(p['where'])} | {p['change']} | {', '.join(p['removed_alone'])} |")
    ap = a["all_proposals"]
    print(f"| **all of them** | **{ap['saving_kB'] / MB:.2f}** | | | | | "
          f"{len(ap['removed'])} modules |")
    print()
    print("Every module vpncrypt imports directly, and what not importing it would save "
          "alone (same method):")
    print()
    print("| stop importing | saving MB | imported by | modules it removes |")
    print("|---|---:|---|---|")
    for r in a["candidates"]:
        if not r["removed"] or r["name"].startswith(("_cython", "cython_")):
            continue  # (Cython's own runtime modules come with vpncrypt._fast)
        who = ", ".join(sum(r.get("vpncrypt_importers", {}).values(), []))
        print(f"| {r['name']} | {r['saving_kB'] / MB:.2f} | {who} | {', '.join(r['removed'])} |")
    kept = [r["name"] for r in a["candidates"] if not r["removed"]]
    if kept:
        print()
        print("Nothing to gain alone (the standard library imports them anyway): "
              + ", ".join(kept) + ".")
    print()
    print("Incremental VmRSS in load order (a module pays for itself and for whatever of its "
          "imports was not loaded yet), top 12:")
    print()
    print("| module | + MB | modules loaded |")
    print("|---|---:|---:|")
    for row in sorted(a["ladder"], key=lambda r: -r["added_kB"])[:12]:
        print(f"| {row['module']} | {row['added_kB'] / MB:.2f} | {row['loaded']:.0f} |")
    print()
    print("Loaded alone into a bare `python -S` (file-backed pages are shared with other "
          "processes mapping the same library):")
    print()
    print("| what | + VmRSS MB | + RssAnon MB | + RssFile MB |")
    print("|---|---:|---:|---:|")
    for label, d in a["standalone"].items():
        print(f"| {label} | {d['VmRSS'] / MB:.2f} | {d['RssAnon'] / MB:.2f} | "
              f"{d['RssFile'] / MB:.2f} |")
    print()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=30, help="length of the TCP transfer")
    ap.add_argument("--crypto", choices=("native", "reference"), default="native")
    ap.add_argument("--bytecode", choices=("cached", "none"), default="cached",
                    help="cached: daemons load .pyc as an installed package does (default); "
                         "none: compile vpncrypt at every start, as this sandbox does")
    ap.add_argument("--install", choices=("wheel", "checkout"), default="wheel",
                    help="wheel: the daemons are the `vpncryptd` script of this checkout's "
                         "wheel pip-installed into a fresh venv, as users run it (default); "
                         "checkout: `python -m vpncrypt.cli.vpncryptd` from the checkout")
    ap.add_argument("--repeats", type=int, default=5, help="audit runs per measurement (median)")
    ap.add_argument("--orders", type=int, default=6,
                    help="random orders over which each proposal's saving is averaged")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--skip-audit", action="store_true")
    group.add_argument("--audit-only", action="store_true", help="no deployment (no root needed)")
    ap.add_argument("--json", default=str(OUT / "memory.json"))
    args = ap.parse_args(argv)
    if args.seconds < 1 or args.repeats < 1:
        ap.error("--seconds and --repeats must be >= 1")

    python = sys.executable  # the daemons, the baselines and the audit all use this one

    def on_alarm(signum, frame):
        raise TimeoutError("memory.py took too long; cleaning up")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.seconds + 600)

    info = machine_info(python)
    report = {"machine": info, "args": vars(args)}
    print("# vpncryptd memory")
    print()
    for k, v in info.items():
        print(f"- {k}: {v}")
    print(f"- crypto: {args.crypto}; daemons: " + (
        "`vpncryptd` of this checkout's wheel, pip-installed into a fresh venv"
        if args.install == "wheel" else
        f"`python -m vpncrypt.cli.vpncryptd` from the checkout, byte code {args.bytecode}"))
    print()

    if not args.audit_only:
        saved = dict(os.environ)
        install_tmp = tempfile.mkdtemp(prefix="vpncrypt-mem-wheel-")
        try:
            daemon_python, command = python, None
            if args.install == "wheel":
                daemon_python, command = install_wheel(install_tmp)
            dep = run_deployment(args, python, command)
            dep["daemon_command"] = command or [python, "-m", "vpncrypt.cli.vpncryptd"]
            # The baselines: the interpreter the daemons ran on, with its own site.
            baselines = {"python3 -S -c pass": baseline(daemon_python, ["-S"]),
                         "python3 -c pass": baseline(daemon_python, [])}
        finally:
            os.environ.clear()
            os.environ.update(saved)
            shutil.rmtree(install_tmp, ignore_errors=True)
        base = getattr(sys, "_base_executable", python)
        if base != python and os.path.exists(base):
            # Outside the venv: here its site also runs the sandbox's .pth files.
            baselines[f"{base} -c pass"] = baseline(base, [])
        report["deployment"] = dep
        report["baselines"] = baselines
        print_deployment(dep, baselines, args)

    if not args.skip_audit:
        tmp = tempfile.mkdtemp(prefix="vpncrypt-audit-")
        try:
            report["audit"] = audit(args, python, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print_audit(report["audit"])

    signal.alarm(0)
    write_json(args.json, report, end="\n")
    print(f"(written: {Path(args.json)})")


if __name__ == "__main__":
    main()

"""What the benchmark scripts share; what each one measures and reports stays in it.

This module owns:
  - the paths (BENCH, ROOT, TESTS, OUT) and, on import, the sys.path entries that let a
    script run as `python bench/X.py` import the checkout's `vpncrypt` and the tests'
    helpers (tests/netns.py, tests/vpnharness.py, tests/hostile.py);
  - reading a process's figures from /proc: proc_status (VmRSS, VmHWM, ...), read_stat,
    cpu_ticks / cpu_seconds (utime+stime, or what its reaped children used),
    proc_cmdline, proc_children, fd_count;
  - finding the real vpncryptd process behind an `ip netns exec` wrapper (daemon_pid,
    is_vpncryptd);
  - the hosts of a tests/vpnharness.py deployment (Hosts, require_netns), waiting for a
    TCP listener (wait_listening), reaping a process that should end by itself
    (wait_or_kill), `vpncrypt show --json` of a daemon (vpncrypt_show);
  - describing the machine (cpu_model, utc_date), progress lines on stderr (log) and the
    JSON results file (write_json).

tests/netns.py imports pytest and is only needed for namespaces, so it is imported where
a namespace is made, not here: `--help` and memory.py's import audit work without it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TESTS = ROOT / "tests"
OUT = BENCH / "out"

# Run as `python bench/X.py`, a script has only bench/ on its path; tests/ first, then
# the checkout, in front of it.
for _path in (str(ROOT), str(TESTS)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str, stamp: bool = True) -> None:
    """A progress line on stderr (stdout carries the report), flushed at once."""
    if stamp:
        msg = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(msg, file=sys.stderr, flush=True)


# -- /proc ----------------------------------------------------------------------------------

def proc_status(pid: int, keys=("VmRSS", "VmHWM", "Threads"),
                in_bytes: bool = False) -> dict[str, int]:
    """The first number of each of the `keys` lines of /proc/PID/status: kB for the
    memory lines (bytes with in_bytes), a count for Threads, the real uid for Uid.

    Raises OSError once the process is gone: whether that is a result (peers.py records
    it) or a failure is the caller's to say."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in keys:
                first, *unit = value.split()
                out[key] = int(first) * (1024 if in_bytes and unit == ["kB"] else 1)
    return out


def read_stat(path: str) -> tuple[str, list[str]]:
    """(comm, the fields after it) of a /proc/PID[/task/TID]/stat file.

    comm may hold spaces and ')', so it ends at the last ')'. fields[0] is field 3 of
    proc_pid_stat(5) (state); fields[1] ppid; fields[11], [12] utime, stime; fields[13],
    [14] cutime, cstime (clock ticks)."""
    with open(path) as f:
        text = f.read()
    head, _, rest = text.rpartition(")")
    return head[head.find("(") + 1:], rest.split()


def cpu_ticks(pid: int, children: bool = False) -> int:
    """utime + stime of pid in clock ticks; with children, cutime + cstime instead: what
    the children it has waited for used (e.g. vpncryptd's short-lived netlink helper)."""
    fields = read_stat(f"/proc/{pid}/stat")[1]
    if children:
        return int(fields[13]) + int(fields[14])
    return int(fields[11]) + int(fields[12])


def cpu_seconds(pid: int, children: bool = False) -> float:
    return cpu_ticks(pid, children) / CLK_TCK


def proc_cmdline(pid: int) -> list[str]:
    """argv of pid, [] once it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def proc_children(pid: int) -> list[int]:
    """Direct children, from /proc/PID/task/*/children (needs CONFIG_PROC_CHILDREN) or a scan."""
    kids = set()
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.update(int(p) for p in f.read().split())
        return sorted(kids)
    except OSError:
        pass
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(read_stat(f"/proc/{entry}/stat")[1][1]) == pid:
                    kids.add(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return sorted(kids)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- the daemon's process -------------------------------------------------------------------

def is_vpncryptd(argv: list[str]) -> bool:
    """Whether a command line runs vpncryptd: `python -m vpncrypt.cli.vpncryptd` from the
    checkout, or an installed `vpncryptd` script (argv[1] of its interpreter)."""
    return "vpncrypt.cli.vpncryptd" in argv or any(a.endswith("/bin/vpncryptd")
                                                    for a in argv[:2])


def daemon_pid(daemon) -> tuple[int, bool]:
    """(pid, forked): the python process running vpncryptd for `daemon`, anything with
    .proc (the Popen of `ip netns exec NS ... vpncryptd ...`) and .host (its Netns).

    iproute2 usually exec()s in place (same pid, forked False), but a forking `ip` would
    leave the python as its child: the figures must be the daemon's, not the wrapper's.
    So walk the wrapper and its descendants; accept only a process in the namespace
    (`ip netns pids`) whose command line is the daemon's."""
    in_ns = set(daemon.host.pids())
    todo, seen = [daemon.proc.pid], []
    while todo:
        pid = todo.pop(0)
        seen.append(pid)
        argv = proc_cmdline(pid)
        exe = os.path.basename(os.path.realpath(f"/proc/{pid}/exe")) if argv else ""
        if pid in in_ns and "python" in exe and is_vpncryptd(argv) and argv[0] != "ip":
            return pid, pid != daemon.proc.pid
        todo.extend(proc_children(pid))
    raise RuntimeError(f"no vpncryptd python process under {daemon.proc.pid} (saw {seen})")


# -- namespaces and helpers of a deployment -------------------------------------------------

def require_netns(what: str) -> None:
    """SystemExit(f"{what}: {reason}") where network namespaces cannot be made here."""
    from netns import _unavailable_reason

    reason = _unavailable_reason()
    if reason:
        raise SystemExit(f"{what}: {reason}")


class Hosts:
    """The host factory a tests/vpnharness.py Deployment (and hostile.Flooder) takes:
    each call makes a Netns and remembers it, so that close() removes every one, the last
    made first (the clients before the server). Idempotent."""

    def __init__(self) -> None:
        self.made: list = []

    def __call__(self):
        from netns import Netns

        host = Netns()
        self.made.append(host)
        return host

    def close(self) -> None:
        while self.made:
            self.made.pop().close()


def wait_listening(host, port: int, timeout: float = 10.0) -> bool:
    """Whether something listens on TCP `port` in `host` within `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.run(["ss", "-Hltn", f"sport = :{port}"], check=False).stdout.strip():
            return True
        time.sleep(0.05)
    return False


def wait_or_kill(proc, timeout: float = 10.0) -> None:
    """Reap a process that should end by itself (`iperf3 -s -1` after its one test);
    kill it if it does not."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def vpncrypt_show(state_dir: str, env: dict | None = None, timeout: float = 60.0) -> str:
    """stdout of the checkout's `vpncrypt show --state-dir DIR --json` (the daemon's
    counters, from its control socket). RuntimeError if it fails."""
    from netns import python_env

    proc = subprocess.run([sys.executable, "-m", "vpncrypt.cli.vpncrypt", "show", "--state-dir",
                           state_dir, "--json"], capture_output=True, text=True, timeout=timeout,
                          env=python_env() if env is None else env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"vpncrypt show --state-dir {state_dir}: {proc.stderr.strip()}")
    return proc.stdout


# -- the machine and the results ------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()  # no "model name" (e.g. some ARM)


def utc_date() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_json(path, doc, indent: int = 1, end: str = "") -> None:
    """Write doc as JSON to path, making its directory. default=str: a stray value JSON
    cannot hold (a Path) becomes a string instead of costing the run's results."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=indent, default=str) + end)

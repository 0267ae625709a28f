"""Network-namespace "hosts" for integration tests.

Each `Netns` is a fresh network namespace with only `lo` (up): a small, disposable host
in which tests can create TUN devices, veth links and addresses, and run the daemon,
without touching the machine's own network.  Addresses used in tests should come from
10.200.0.0/16 (links), 10.201.0.0/16 (tunnels) and fd00:200::/32, and only ever be
configured inside namespaces the test created.

Everything a test starts is cleaned up even when the test fails: `close()` kills the
processes started with `popen()` (and their process groups, and anything else still
running in the namespace) and deletes the namespace.  The `netns_factory` fixture in
conftest.py does that at teardown, and an atexit hook catches what a crashed run left.

`require_netns()` turns "no root / no netns here" into a skip, or into a failure when the
CI environment variable is set, so that CI cannot go green by skipping everything.
"""

from __future__ import annotations

import atexit
import functools
import ipaddress
import itertools
import json
import os
import shlex
import signal
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)

# Namespace names carry our pid so parallel test runs never collide, and stay short.
PREFIX = "vpct"

_counter = itertools.count()
_live: dict[str, Netns] = {}
_RESULT_MARK = "@@vpct-result@@ "

Command = str | Sequence[str]


# --------------------------------------------------------------------------- availability


@functools.cache
def _unavailable_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    probe = f"{PREFIX}{os.getpid()}p"
    added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if added.returncode != 0:
        return f"'ip netns add' failed: {added.stderr.strip() or added.returncode}"
    deleted = subprocess.run(["ip", "netns", "del", probe], capture_output=True, text=True)
    if deleted.returncode != 0:
        return f"'ip netns del' failed: {deleted.stderr.strip() or deleted.returncode}"
    return None


def require_netns() -> None:
    """Skip the calling test if netns cannot be used here; fail instead when $CI is set."""
    reason = _unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"netns integration test cannot run: {reason} (CI is set)", pytrace=False)
    pytest.skip(f"netns integration test: {reason}")


# --------------------------------------------------------------------------- hosts


class CommandFailed(subprocess.CalledProcessError):
    """CalledProcessError whose message includes the command's stderr."""

    def __str__(self) -> str:
        detail = (self.stderr or self.stdout or "").strip()
        return f"{super().__str__()}\n{detail}" if detail else super().__str__()


def _argv(cmd: Command) -> list[str]:
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _check(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    if proc.returncode != 0:
        raise CommandFailed(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


def _host_ip(*args: str) -> str:
    return _check(subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)).stdout


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ plus a PYTHONPATH that finds both `vpncrypt` and the tests' helpers."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, TESTS_DIR, env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def _is_v6(cidr: str) -> bool:
    return ipaddress.ip_interface(cidr).version == 6


def _as_list(addrs: str | Iterable[str] | None) -> list[str]:
    if addrs is None:
        return []
    return [addrs] if isinstance(addrs, str) else list(addrs)


class Netns:
    """A network namespace used as a test host; see the module docstring."""

    def __init__(self) -> None:
        self.name = f"{PREFIX}{os.getpid()}x{next(_counter)}"
        _host_ip("netns", "add", self.name)
        _live[self.name] = self
        self.closed = False
        self._procs: list[subprocess.Popen[Any]] = []
        self._ifnames = itertools.count()
        self.ip("link", "set", "lo", "up")

    def __repr__(self) -> str:
        return f"<Netns {self.name}{' closed' if self.closed else ''}>"

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- running things inside

    def exec_argv(self, cmd: Command) -> list[str]:
        """The argv that runs `cmd` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *_argv(cmd)]

    def run(
        self,
        cmd: Command,
        check: bool = True,
        timeout: float = 30,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` (argv list, or a string split like a shell would) to completion."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        proc = subprocess.run(self.exec_argv(cmd), timeout=timeout, **kwargs)
        return _check(proc) if check else proc

    def popen(self, cmd: Command, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a long-running `cmd`; close() kills it and its process group."""
        # Own session (and so process group) so that cleanup can kill its children too.
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.exec_argv(cmd), **kwargs)
        self._procs.append(proc)
        return proc

    def python(self, code: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run `python -c code args...` here, able to import vpncrypt and tests helpers."""
        kwargs.setdefault("env", python_env())
        kwargs.setdefault("cwd", REPO_ROOT)
        return self.run([sys.executable, "-c", code, *args], **kwargs)

    def call(self, func: Callable[..., Any] | str, *args: Any, timeout: float = 60) -> Any:
        """Call a module-level function in a fresh Python process inside this namespace.

        `func` is a function (its module must be importable from tests/ or the repo
        root) or "module:qualname".  Arguments and the return value go through JSON.  If
        the call raises, AssertionError carries the child's traceback.
        """
        target = func if isinstance(func, str) else f"{func.__module__}:{func.__qualname__}"
        code = (
            "import importlib, json, sys\n"
            "mod, _, name = sys.argv[1].partition(':')\n"
            "obj = importlib.import_module(mod)\n"
            "for part in name.split('.'):\n"
            "    obj = getattr(obj, part)\n"
            "result = obj(*json.loads(sys.argv[2]))\n"
            f"sys.stdout.write({_RESULT_MARK!r} + json.dumps(result) + '\\n')\n"
        )
        proc = self.python(code, target, json.dumps(args), check=False, timeout=timeout)
        marked = [ln for ln in proc.stdout.splitlines() if ln.startswith(_RESULT_MARK)]
        if proc.returncode != 0 or not marked:
            raise AssertionError(
                f"{target} in {self.name} failed (exit {proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}"
            )
        return json.loads(marked[-1][len(_RESULT_MARK):])

    # -- network configuration

    def ip(self, *args: str) -> str:
        """Run `ip -n NS args...` and return its stdout (raises on failure)."""
        return _host_ip("-n", self.name, *args)

    def ip_json(self, *args: str) -> Any:
        out = self.ip("-j", *args)
        return json.loads(out) if out.strip() else []

    def next_ifname(self, stem: str = "veth") -> str:
        return f"{stem}{next(self._ifnames)}"

    def add_addr(self, ifname: str, cidr: str) -> None:
        """Add `cidr` (e.g. "10.200.0.1/24", "fd00:200::1/64") to `ifname`; IPv6 without DAD."""
        self.ip("addr", "add", cidr, "dev", ifname, *(["nodad"] if _is_v6(cidr) else []))

    def del_addr(self, ifname: str, cidr: str) -> None:
        self.ip("addr", "del", cidr, "dev", ifname)

    def replace_addr(self, ifname: str, old: str, new: str) -> None:
        """Renumber `ifname` from `old` to `new`, as a roaming host sees it.

        The old address goes first: deleting a primary IPv4 address also deletes the
        secondaries in its subnet unless promote_secondaries is set, which would
        take `new` with it if it were added first.
        """
        self.del_addr(ifname, old)
        self.add_addr(ifname, new)

    def move_addr(self, cidr: str, from_ifname: str, to_ifname: str) -> None:
        """Move `cidr` from one interface of this host to another (e.g. Wi-Fi to LTE)."""
        self.del_addr(from_ifname, cidr)
        self.add_addr(to_ifname, cidr)

    def addrs(self, ifname: str) -> list[str]:
        """Global-scope addresses of `ifname` as "addr/prefixlen" strings."""
        info = self.ip_json("addr", "show", "dev", ifname)
        return [
            f"{a['local']}/{a['prefixlen']}"
            for link in info
            for a in link.get("addr_info", [])
            if a.get("scope") == "global"
        ]

    def set_mtu(self, ifname: str, mtu: int) -> None:
        self.ip("link", "set", "dev", ifname, "mtu", str(mtu))

    def set_up(self, ifname: str, up: bool = True) -> None:
        self.ip("link", "set", "dev", ifname, "up" if up else "down")

    def wait_oper_up(self, ifname: str, timeout: float = 5.0) -> None:
        """Wait until `ifname` is operationally up (IFF_RUNNING), not just set up.

        The kernel updates operstate asynchronously (linkwatch) after carrier changes,
        so right after `set_up()` an interface can still count as down.
        """
        deadline = time.monotonic() + timeout
        while True:
            [info] = self.ip_json("link", "show", "dev", ifname)
            if info.get("operstate") in ("UP", "UNKNOWN") and "UP" in info.get("flags", []):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{ifname} in {self.name} is not up: {info}")
            time.sleep(0.02)

    def add_route(self, dst: str, *args: str) -> None:
        """`ip route add dst args...`, e.g. add_route("10.9.0.0/16", "via", "10.200.0.2")."""
        family = ["-6"] if ipaddress.ip_network(dst, strict=False).version == 6 else []
        self.ip(*family, "route", "add", dst, *args)

    def link_names(self) -> list[str]:
        return [link["ifname"] for link in self.ip_json("link", "show")]

    # -- teardown

    def pids(self) -> list[int]:
        """Pids of every process whose network namespace is this one."""
        out = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, timeout=30
        ).stdout
        return [int(p) for p in out.split()]

    def close(self) -> None:
        """Kill what runs here and delete the namespace.  Idempotent, never raises."""
        if self.closed:
            return
        self.closed = True
        for proc in self._procs:
            _stop(proc)
        # Whatever escaped the process groups (a daemonised child, a `run` that timed
        # out): it is in our namespace, so we started it.
        for _ in range(2):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                _kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
        _live.pop(self.name, None)


def _kill(pid: int, sig: int, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
    # Only signal the group if the process leads one of its own: popen()'s default.
    try:
        own_group = os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        own_group = False
    if proc.poll() is None:
        _kill(proc.pid, signal.SIGTERM, group=own_group)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _kill(proc.pid, signal.SIGKILL, group=own_group)
            proc.wait()
    if own_group:
        # Children may outlive the leader; the group id stays theirs until they exit.
        _kill(proc.pid, signal.SIGKILL, group=True)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def link(
    host_a: Netns,
    host_b: Netns,
    addr_a: str | Iterable[str] | None = None,
    addr_b: str | Iterable[str] | None = None,
    *,
    mtu: int | None = None,
    name_a: str | None = None,
    name_b: str | None = None,
) -> tuple[str, str]:
    """Join two hosts with a veth pair, address both ends, bring them up; return names.

    Addresses are CIDR strings, one or a list per side, IPv4 and/or IPv6 (added without
    duplicate-address detection, so they are usable at once).  Returns once both ends
    are operationally up.
    """
    name_a = name_a or host_a.next_ifname()
    name_b = name_b or host_b.next_ifname()
    mtu_args = ["mtu", str(mtu)] if mtu else []
    host_a.ip(
        "link", "add", name_a, *mtu_args,
        "type", "veth", "peer", "name", name_b, *mtu_args, "netns", host_b.name,
    )  # fmt: skip
    for host, name, addrs in ((host_a, name_a, addr_a), (host_b, name_b, addr_b)):
        for cidr in _as_list(addrs):
            host.add_addr(name, cidr)
        host.set_up(name)
    host_a.wait_oper_up(name_a)
    host_b.wait_oper_up(name_b)
    return name_a, name_b


@atexit.register
def _close_leftovers() -> None:
    for host in list(_live.values()):
        host.close()

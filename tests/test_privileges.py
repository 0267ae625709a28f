"""Tests of the privilege drop (vpncrypt/daemon/privileges.py) and its call site
(Runtime.drop_privileges), on the FreeBSD path above all.

FreeBSD cannot run here.  The FreeBSD path is selected by monkeypatching sys.platform,
and os.setgroups/setgid/setuid/geteuid and pwd.getpwnam are MOCKED where the test is
about which calls are made; mocks only because FreeBSD is not available.  One test
(needs root: CI runs as root) makes the FreeBSD path's real setgroups/setgid/setuid
calls on Linux in a child process and then reloads a configuration as the new user:
the file-permission rules a reload meets there are POSIX ones, the same on FreeBSD.
The Linux path (capabilities) is checked for real below (test_privilege_drop_system_calls)
and by test_packaging_systemd.py; elsewhere only that its sequence of calls is unchanged.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from pkgtest import python_env, write_key
from vpncrypt.daemon import privileges, runtime
from vpncrypt.daemon.runtime import FatalError, Runtime

VPN = pwd.struct_passwd(("vpncrypt", "*", 1234, 4321, "vpncrypt", "/nonexistent", "/usr/sbin/nologin"))


class Calls:
    """Records the credential calls (mocked) in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: str | None = None) -> None:
        self.calls: list[tuple] = []
        self.ids = {"uid": 0, "gid": 0}

        def record(name):
            def call(*args):
                self.calls.append((name, *args))
                if name == fail:
                    raise PermissionError(1, "Operation not permitted")
                if name in ("setuid", "setgid"):
                    self.ids[name[3:]] = args[0]
            return call

        for name in ("setgroups", "setgid", "setuid"):
            monkeypatch.setattr(privileges.os, name, record(name))
        monkeypatch.setattr(privileges.os, "geteuid", lambda: self.ids["uid"])
        monkeypatch.setattr(privileges.os, "getuid", lambda: self.ids["uid"])
        monkeypatch.setattr(privileges.os, "getgid", lambda: self.ids["gid"])
        monkeypatch.setattr(privileges.os, "getegid", lambda: self.ids["gid"])


@pytest.fixture
def users(monkeypatch: pytest.MonkeyPatch) -> dict:
    known = {"vpncrypt": VPN, "nobody": pwd.struct_passwd(("nobody", "*", 65534, 65534, "", "/", ""))}

    def getpwnam(name):
        try:
            return known[name]
        except KeyError:
            raise KeyError(name) from None

    monkeypatch.setattr(privileges.pwd, "getpwnam", getpwnam)
    return known


def no_capabilities(*_):
    raise AssertionError("FreeBSD has no capabilities: prctl/capset must not be called")


# --------------------------------------------------------------------------- target()


@pytest.mark.parametrize("platform", ["freebsd14", "freebsd15"])
def test_freebsd_switches_only_to_an_explicit_user(monkeypatch, users, platform) -> None:
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(privileges.os, "geteuid", lambda: 0)
    assert privileges.platform() == "freebsd"
    assert privileges.target(None) is None  # unset: stay root (no `nobody` default)
    assert privileges.target("root") is None
    assert privileges.target("vpncrypt") is VPN
    with pytest.raises(privileges.PrivilegeError) as info:
        privileges.target("nosuchuser")
    assert str(info.value) == "user 'nosuchuser' does not exist (config key 'user')"
    monkeypatch.setattr(privileges.os, "geteuid", lambda: 1000)
    assert privileges.target("vpncrypt") is None  # not root: nothing to drop


def test_linux_still_defaults_to_nobody(monkeypatch, users) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(privileges.os, "geteuid", lambda: 0)
    assert privileges.target(None) is users["nobody"]
    assert privileges.target("vpncrypt") is VPN
    assert privileges.target("root") is None
    monkeypatch.setattr(sys, "platform", "sunos5")
    assert privileges.platform() == "other" and privileges.target("vpncrypt") is None


# --------------------------------------------------------------------------- drop()


def test_freebsd_drop_is_setgroups_setgid_setuid(monkeypatch) -> None:
    monkeypatch.setattr(sys, "platform", "freebsd14")
    monkeypatch.setattr(privileges, "_syscalls", no_capabilities)
    calls = Calls(monkeypatch)
    privileges.drop(VPN)
    assert calls.calls == [("setgroups", [4321]), ("setgid", 4321), ("setuid", 1234)]


@pytest.mark.parametrize("fail", ["setgroups", "setgid", "setuid"])
def test_freebsd_drop_failure_is_one_line(monkeypatch, fail) -> None:
    monkeypatch.setattr(sys, "platform", "freebsd14")
    monkeypatch.setattr(privileges, "_syscalls", no_capabilities)
    Calls(monkeypatch, fail=fail)
    with pytest.raises(privileges.PrivilegeError) as info:
        privileges.drop(VPN)
    assert str(info.value) == "dropping privileges: switching to 'vpncrypt': Operation not permitted"


def test_freebsd_drop_checks_the_result(monkeypatch) -> None:
    monkeypatch.setattr(sys, "platform", "freebsd14")
    calls = Calls(monkeypatch)
    monkeypatch.setattr(privileges.os, "setuid", lambda uid: calls.calls.append(("setuid", uid)))
    with pytest.raises(privileges.PrivilegeError, match="still not only 'vpncrypt'"):
        privileges.drop(VPN)  # setuid "succeeded" but the uid is still 0


def test_linux_drop_sequence_is_unchanged(monkeypatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    calls = Calls(monkeypatch)
    monkeypatch.setattr(privileges, "_syscalls", lambda: (
        lambda on: calls.calls.append(("keep_caps", on)),
        lambda mask: calls.calls.append(("set_caps", mask))))
    privileges.drop(VPN)
    mask = (1 << privileges.CAP_NET_ADMIN) | (1 << privileges.CAP_DAC_READ_SEARCH)
    assert calls.calls == [("keep_caps", True), ("setgroups", []), ("setgid", 4321),
                           ("setuid", 1234), ("set_caps", mask), ("keep_caps", False)]


# --------------------------------------------------------------------------- the call site


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __getattr__(self, level):
        return lambda msg, *args: self.lines.append((level, msg % args if args else msg))


def _drop(monkeypatch, user, platform="freebsd14"):
    monkeypatch.setattr(sys, "platform", platform)
    log = Log()
    monkeypatch.setattr(runtime, "log", log)
    Runtime.drop_privileges(SimpleNamespace(config=SimpleNamespace(user=user)))
    return log.lines


def test_freebsd_without_user_stays_root_and_says_why(monkeypatch, users) -> None:
    calls = Calls(monkeypatch)
    monkeypatch.setattr(runtime.os, "geteuid", lambda: 0)
    assert _drop(monkeypatch, None) == [("warning", privileges.STAYING_ROOT_FREEBSD)]
    assert calls.calls == []
    assert "no capabilities" in privileges.STAYING_ROOT_FREEBSD
    assert "re-read on reload" in privileges.STAYING_ROOT_FREEBSD
    assert "\n" not in privileges.STAYING_ROOT_FREEBSD
    assert _drop(monkeypatch, "root") == []  # asked for: no warning


def test_freebsd_with_user_switches_and_says_so(monkeypatch, users) -> None:
    monkeypatch.setattr(privileges, "_syscalls", no_capabilities)
    calls = Calls(monkeypatch)
    monkeypatch.setattr(runtime.os, "geteuid", lambda: calls.ids["uid"])
    assert _drop(monkeypatch, "vpncrypt") == [(
        "info", "running as vpncrypt (uid 1234), no privileges kept: a reload re-reads "
                "the configuration and key files as vpncrypt")]
    assert calls.calls == [("setgroups", [4321]), ("setgid", 4321), ("setuid", 1234)]


def test_freebsd_failures_are_fatal_one_liners(monkeypatch, users) -> None:
    Calls(monkeypatch, fail="setuid")
    monkeypatch.setattr(runtime.os, "geteuid", lambda: 0)
    with pytest.raises(FatalError) as info:
        _drop(monkeypatch, "vpncrypt")
    assert str(info.value) == "dropping privileges: switching to 'vpncrypt': Operation not permitted"
    with pytest.raises(FatalError) as info:
        _drop(monkeypatch, "nosuchuser")
    assert str(info.value) == "user 'nosuchuser' does not exist (config key 'user')"


def test_linux_messages_are_unchanged(monkeypatch, users) -> None:
    calls = Calls(monkeypatch)
    monkeypatch.setattr(privileges, "_syscalls", lambda: (lambda on: None, lambda mask: None))
    monkeypatch.setattr(runtime.os, "geteuid", lambda: calls.ids["uid"])
    assert _drop(monkeypatch, None, "linux") == [
        ("info", "running as nobody (uid 65534) with CAP_NET_ADMIN and CAP_DAC_READ_SEARCH only")]
    monkeypatch.setattr(privileges.pwd, "getpwnam", lambda name: (_ for _ in ()).throw(KeyError(name)))
    calls.ids["uid"] = 0
    assert _drop(monkeypatch, None, "linux") == [
        ("warning", "no user 'nobody' to drop privileges to: staying root")]


# --------------------------------------------------------------------------- a reload as the user

RELOAD_CHILD = """
import os, sys
sys.platform = "freebsd14"                  # the FreeBSD path, on Linux's real syscalls
from vpncrypt.daemon import privileges, runtime
from vpncrypt.daemon.server import Server
from vpncrypt import config
import pwd

lines = []
class Log:
    def __getattr__(self, level):
        return lambda msg, *args: lines.append(level + " " + (msg % args if args else msg))
runtime.log = Log()

path = sys.argv[1]
old = config.load(path)                     # read as root, as at start-up
if sys.argv[3:] == ["change"]:              # the operator edits the interface's address
    text = open(path).read()
    with open(path, "w") as f:
        f.write(text.replace("10.9.0.1/24", "10.9.0.1/16"))
entry = privileges.target(sys.argv[2])
privileges.drop(entry)
assert (os.getuid(), os.geteuid(), os.getgroups()) == (entry.pw_uid, entry.pw_uid, [entry.pw_gid])
try:
    os.setuid(0)
except PermissionError:
    pass
else:
    raise SystemExit("root regained")

me = Server.__new__(Server)
me.config = old
new, error = me.reread_config()             # what a SIGHUP does first
print("ok" if new is not None else "refused")
for line in lines:
    print(line)
"""


def _server_conf(tmp_path: Path, owner: int | None) -> Path:
    key = tmp_path / "a.key"
    write_key(key)
    conf = tmp_path / "server.conf"
    conf.write_text(
        "[server]\nlisten = 0.0.0.0:51900\ninterface = vpn0\naddress = 10.9.0.1/24\n"
        f"state_dir = {tmp_path / 'state'}\n\n"
        f"[client a]\nid = 1\nkey_file = {key}\nallowed_ips = 10.9.0.2/32\n")
    conf.chmod(0o600)
    if owner is not None:
        for path in (key, conf):
            os.chown(path, owner, -1)
    return conf


@pytest.mark.parametrize("owned_by_user, change", [(True, False), (False, False), (True, True)])
def test_reload_as_the_switched_user(owned_by_user: bool, change: bool) -> None:
    """As `nobody` after the FreeBSD-path switch: a 0600 configuration and key file
    owned by that user are re-read (the key-file check refuses group/other access,
    never a non-root owner); root's 0600 files are refused with one line and the
    running configuration stays.  A changed interface setting needs no root either: a
    reload never touches the interface (RESTART_ONLY), it says so in one line and goes
    on.  Needs root (CI runs as root)."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("needs root to switch users (CI runs as root)")
        pytest.skip("needs root")
    nobody = pwd.getpwnam("nobody")
    # Not under pytest's tmp_path (a 0700 root directory): like /usr/local/etc, every
    # directory on the way must be searchable by the user.
    with tempfile.TemporaryDirectory(dir="/tmp") as top:
        os.chmod(top, 0o755)
        conf = _server_conf(Path(top), nobody.pw_uid if owned_by_user else None)
        out = subprocess.run([sys.executable, "-c", RELOAD_CHILD, str(conf), "nobody",
                              *(["change"] if change else [])],
                             capture_output=True, text=True, env=python_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    if change:
        assert lines == ["ok", "warning reload: 'addresses' changed; it takes effect after a restart"]
    elif owned_by_user:
        assert lines == ["ok"]
    else:
        assert lines == ["refused", f"error reload failed, keeping the running configuration: "
                                    f"{conf}: permission denied reading the configuration file"]


DROP_CHILD = """
import os, sys
from vpncrypt.daemon import privileges
if sys.argv[1] == "ctypes":  # the path taken without the native extension
    sys.modules["vpncrypt._fast"] = None
import pwd
privileges.drop(pwd.getpwnam("nobody"))
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(status["Uid"].split()[0], int(status["CapEff"], 16), int(status["CapPrm"], 16),
      "ctypes" in sys.modules)
"""


@pytest.mark.parametrize("path", ["native", "ctypes"])
def test_privilege_drop_system_calls(path):
    """prctl/capset through the extension (no ctypes in the daemon) and through ctypes
    (no extension): the same uid and capabilities either way. Needs root: in CI, fails
    rather than skips without it."""
    import pwd
    import subprocess
    import sys

    from netns import python_env
    from vpncrypt.daemon import privileges

    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("needs root to drop privileges (CI runs as root)")
        pytest.skip("needs root")
    out = subprocess.run([sys.executable, "-c", DROP_CHILD, path], capture_output=True,
                         text=True, env=python_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    uid, eff, prm, loaded_ctypes = out.stdout.split()
    kept = sum(1 << cap for cap in privileges.KEPT)
    assert (int(uid), int(eff), int(prm)) == (pwd.getpwnam("nobody").pw_uid, kept, kept)
    assert loaded_ctypes == ("True" if path == "ctypes" else "False")

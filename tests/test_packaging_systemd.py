"""Tests of the systemd unit (packaging/systemd/vpncryptd@.service): its keys,
`systemd-analyze verify`, and a daemon run with only the unit's capabilities.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pkgtest import REPO, SYSTEMD_UNIT, require_tool, run, python_env, write_key


# --------------------------------------------------------------------------- systemd unit


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        assert current is not None and _, line
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_keys() -> None:
    unit = parse_unit(SYSTEMD_UNIT.read_text())
    service = {k: v[-1] for k, v in unit["Service"].items()}
    assert service["ExecStart"] == "/usr/bin/vpncryptd -c /etc/vpncrypt/%i.conf --foreground"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["User"] == "root"
    assert service["AmbientCapabilities"] == "CAP_NET_ADMIN"
    assert set(service["CapabilityBoundingSet"].split()) == {
        "CAP_NET_ADMIN", "CAP_DAC_READ_SEARCH", "CAP_SETUID", "CAP_SETGID"}
    assert service["DeviceAllow"] == "/dev/net/tun rw"
    assert service["DevicePolicy"] == "closed"
    assert service["ProtectSystem"] == "strict"
    for key in ("ProtectHome", "NoNewPrivileges", "PrivateTmp"):
        assert service[key] == "yes", key
    assert service["RuntimeDirectory"] == "vpncrypt"
    assert service["RuntimeDirectoryMode"] == "0700"
    assert set(service["RestrictAddressFamilies"].split()) == {
        "AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"}
    # These would break the daemon: /proc/sys writes (addr_gen_mode) and /dev/net/tun.
    assert "ProtectKernelTunables" not in service and "PrivateDevices" not in service
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in unit["Unit"]["After"][0]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    # verify checks that ExecStart's program exists; /usr/bin/vpncryptd is not installed
    # here, so the unit is verified with its path pointing at a stand-in executable.
    shim = tmp_path / "vpncryptd"
    shim.write_text("#!/bin/sh\nexit 0\n")
    shim.chmod(0o755)
    text = SYSTEMD_UNIT.read_text()
    assert text.count("ExecStart=/usr/bin/vpncryptd ") == 1
    text = text.replace("ExecStart=/usr/bin/vpncryptd ", f"ExecStart={shim} ")
    (tmp_path / "vpncryptd@.service").write_text(text)
    (tmp_path / "vpncryptd@office.service").write_text(text)
    # --man=no: the man pages of Documentation= are not installed here (the next test
    # checks that their sources exist).
    proc = run([analyze, "verify", "--man=no", str(tmp_path / "vpncryptd@office.service")],
               env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # unknown keys are only warnings


_CAP_BITS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
    "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_ADMIN": 21,
}


def _cap_mask(names: list[str]) -> int:
    return sum(1 << _CAP_BITS[name] for name in names)


def _proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


@pytest.mark.netns
def test_daemon_runs_with_only_the_units_capabilities(netns_factory, tmp_path: Path) -> None:
    """vpncryptd@.service starts the daemon as root with only the capabilities of its
    CapabilityBoundingSet= (and AmbientCapabilities=).  Start a real server that way
    (setpriv, in a throwaway network namespace) and check that it creates and
    configures its TUN and control socket, drops to `nobody` keeping only what it
    means to keep, and stops cleanly.  The rest of the unit's sandbox needs systemd as
    PID 1, which this machine does not have."""
    import pwd

    from vpncrypt.daemon import privileges

    setpriv = require_tool("setpriv", "util-linux")
    service = parse_unit(SYSTEMD_UNIT.read_text())["Service"]
    bounding = service["CapabilityBoundingSet"][-1].split()
    ambient = service["AmbientCapabilities"][-1].split()

    def setpriv_list(names: list[str]) -> str:
        return ",".join(["-all", *(f"+{n.lower().removeprefix('cap_')}" for n in names)])

    conf = tmp_path / "server.conf"
    state = tmp_path / "state"
    key_file = tmp_path / "a.key"
    write_key(key_file)
    conf.write_text(
        "[server]\nlisten = 0.0.0.0:51900\ninterface = vpct0\n"
        f"address = 10.201.0.1/24, fd00:201::1/64\nstate_dir = {state}\n\n"
        f"[client a]\nid = 1\nkey_file = {key_file}\nallowed_ips = 10.201.0.2/32\n"
    )
    nobody = pwd.getpwnam(privileges.DEFAULT_USER).pw_uid
    host = netns_factory()
    proc = host.popen(
        [setpriv, f"--bounding-set={setpriv_list(bounding)}",
         f"--inh-caps={setpriv_list(ambient)}", f"--ambient-caps={setpriv_list(ambient)}",
         "--no-new-privs",
         sys.executable, "-m", "vpncrypt.cli.vpncryptd", "-c", str(conf), "--foreground"],
        env=python_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while True:  # until it has configured the interface and dropped root
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the daemon did not get going within 30 s"
        if ("vpct0" in host.link_names() and host.ip("-6", "addr", "show", "vpct0").strip()
                and _proc_status(proc.pid)["Uid"].split()[0] == str(nobody)):
            break
        time.sleep(0.2)
    status = _proc_status(proc.pid)
    assert int(status["CapBnd"], 16) == _cap_mask(bounding)
    kept = sum(1 << cap for cap in privileges.KEPT)
    assert kept & ~_cap_mask(bounding) == 0  # what it keeps, the unit must grant
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == kept, status
    assert status["NoNewPrivs"] == "1"
    addresses = host.ip("-br", "addr", "show", "vpct0")
    assert "10.201.0.1/24" in addresses and "fd00:201::1/64" in addresses
    assert "10.201.0.0/24 dev vpct0" in host.ip("route")
    assert stat.S_ISSOCK((state / "vpct0.sock").stat().st_mode)
    # The state directory and all in it stay root's (no CAP_CHOWN needed).
    for path in (state, state / "vpct0.sock", state / "vpct0.replay", state / "vpct0.replay.1"):
        assert path.stat().st_uid == 0 and path.stat().st_mode & 0o077 == 0, path
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, proc.stderr.read()
    assert "vpct0" not in host.link_names()
    # Not writable for `nobody`, the directory keeps the socket: nobody listens on it.
    with pytest.raises(ConnectionRefusedError):
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(state / "vpct0.sock"))


def test_systemd_unit_documentation_exists() -> None:
    unit = parse_unit(SYSTEMD_UNIT.read_text())
    pages = unit["Unit"]["Documentation"][0].split()
    assert pages
    for page in pages:
        mo = re.fullmatch(r"man:([\w.-]+)\((\d)\)", page)
        assert mo, page
        assert (REPO / "docs" / "man" / f"{mo.group(1)}.{mo.group(2)}").is_file(), page


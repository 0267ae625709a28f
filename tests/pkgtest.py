"""Helpers shared by the packaging tests (test_packaging_*.py): where the packages sit
in this checkout, running a tool, and running this checkout's CLIs.

With CI set, a missing tool fails the test that needs it instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OPENWRT_PKG = REPO / "openwrt" / "net" / "vpncrypt"
OPENWRT_INIT = OPENWRT_PKG / "files" / "vpncrypt.init"
OPENWRT_CONFIG = OPENWRT_PKG / "files" / "vpncrypt.config"
OPENWRT_UPGRADE = OPENWRT_PKG / "files" / "vpncrypt.upgrade"
FREEBSD_PORT = REPO / "freebsd-port" / "net" / "vpncrypt"
FREEBSD_RC = FREEBSD_PORT / "files" / "vpncryptd.in"
SYSTEMD_UNIT = REPO / "packaging" / "systemd" / "vpncryptd@.service"

CI = bool(os.environ.get("CI"))
VERSION = "0.1.0"


def require_tool(name: str, debian_package: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install {debian_package})"
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 120)
    return subprocess.run(argv, **kwargs)


def python_env(**extra: str) -> dict[str, str]:
    """An environment in which `python -m vpncrypt...` imports this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def check_config(path: Path) -> str:
    proc = run([sys.executable, "-m", "vpncrypt.cli.vpncrypt", "check-config", str(path)],
               env=python_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def write_key(path: Path) -> str:
    from vpncrypt.protocol.keys import generate_key

    key = generate_key()
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def project_version() -> str:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def data_files() -> set[str]:
    """The files pyproject.toml installs outside the package (man pages)."""
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {f for files in setuptools.get("data-files", {}).values() for f in files}

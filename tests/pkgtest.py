"""Helpers shared by the packaging tests (test_packaging_*.py): where the packages sit
in this checkout, running a tool, and running this checkout's CLIs.

With CI set, a missing tool fails the test that needs it instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
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


# --------------------------------------------------------------------------- sdist, wheel, venv

WHEEL_BUDGET = 180.0  # seconds for the whole build/install/run sequence


def require_build() -> None:
    # Asked of a fresh interpreter outside the checkout: in it, the setuptools output
    # directory build/ would pass for a namespace package called "build".
    probe = run([sys.executable, "-c", "import build.__main__"], cwd="/")
    if probe.returncode != 0:
        message = "the 'build' package is not installed (pip install build)"
        if CI:
            pytest.fail(message)
        pytest.skip(message)


class Built:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.deadline = time.monotonic() + WHEEL_BUDGET
        self.dist = root / "dist"
        self.venv = root / "venv"

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        assert left > 0, f"over the {WHEEL_BUDGET:.0f} s budget"
        return left

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(kwargs.pop("env", {}))
        return run(argv, timeout=self.remaining(), env=env, cwd=kwargs.pop("cwd", self.root),
                   **kwargs)

    @property
    def wheel(self) -> Path:
        (wheel,) = self.dist.glob("*.whl")
        return wheel

    @property
    def sdist(self) -> Path:
        (sdist,) = self.dist.glob("*.tar.gz")
        return sdist


# Left out of the copy the wheel test builds from: every hidden top-level entry (VCS
# data, environments, caches, the cross-architecture chroots in .cross), the other
# packages, and build products of the checkout (an in-place extension, generated C).
_SKIP_DIRS = {"venv", "build", "dist", "__pycache__", "bench", "openwrt", "freebsd-port"}


def _not_source(directory: str, names: list[str]) -> set[str]:
    skipped = {n for n in names if n in _SKIP_DIRS or n.endswith((".egg-info", ".so", ".pyc"))}
    if Path(directory) == REPO:
        skipped |= {n for n in names if n.startswith(".")}
    # Only files and directories: a device node or socket copied by content never ends.
    skipped |= {n for n in names
                if not (os.path.isfile(os.path.join(directory, n))
                        or os.path.isdir(os.path.join(directory, n)))}
    if Path(directory).name == "vpncrypt":
        skipped.add("_fast.c")
    return skipped


def build_wheel(root: Path) -> Built:
    """Build the sdist and the wheel under `root` and install the wheel into a venv."""
    require_build()
    b = Built(root)
    # Build from a copy of the package sources, so nothing is written into the checkout
    # (egg-info, build/) and nothing from it (an in-place .so, a venv) leaks in.
    src = b.root / "src"
    shutil.copytree(REPO, src, ignore=_not_source, symlinks=True)
    proc = b.run([sys.executable, "-m", "build", "--outdir", str(b.dist), str(src)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = b.run([sys.executable, "-m", "venv", str(b.venv)])
    assert proc.returncode == 0, proc.stderr
    proc = b.run([str(b.venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                  "--disable-pip-version-check", str(b.wheel)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return b

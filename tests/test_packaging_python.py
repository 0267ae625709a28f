"""Tests of the Python packages: `python -m build` makes an sdist and a wheel (needs
PyPI for build isolation), the wheel goes into a fresh venv, and vpncryptd/vpncrypt
and the native seal/open run from there; the CLIs are also run with classic docopt
0.6.2, which is what OpenWrt packages.
"""

from __future__ import annotations

import os
import re
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from pkgtest import REPO, VERSION, Built, run, write_key, project_version, data_files


def test_versions_agree() -> None:
    import vpncrypt

    assert project_version() == vpncrypt.__version__ == VERSION

# --------------------------------------------------------------------------- sdist, wheel, venv

# The `built` fixture (conftest.py, one build per session) makes the sdist and the
# wheel and installs the wheel into a fresh venv.


def test_sdist_and_wheel_contents(built: Built) -> None:
    assert re.fullmatch(rf"vpncrypt-{VERSION}-cp3\d+-cp3\d+-\S+\.whl", built.wheel.name)
    assert built.sdist.name == f"vpncrypt-{VERSION}.tar.gz"
    names = set(zipfile.ZipFile(built.wheel).namelist())
    assert [n for n in names if re.fullmatch(r"vpncrypt/_fast\..*\.so", n)], sorted(names)
    sources = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "vpncrypt").rglob("*.py")
                     if "__pycache__" not in p.parts)
    assert sources and not [s for s in sources if s not in names]
    entry_points = zipfile.ZipFile(built.wheel).read(
        f"vpncrypt-{VERSION}.dist-info/entry_points.txt").decode()
    assert "vpncryptd = vpncrypt.cli.vpncryptd:main" in entry_points
    assert "vpncrypt = vpncrypt.cli.vpncrypt:main" in entry_points

    with tarfile.open(built.sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "setup.py", "vpncrypt/_fast.pyx"} <= members
    includes = {p.relative_to(REPO).as_posix() for p in (REPO / "vpncrypt").glob("_fast_*.pxi")}
    assert includes and includes <= members  # the .pyx does not build without them
    assert data_files() <= members  # or a wheel built from the sdist fails
    assert not [s for s in sources if s not in members]


def test_wheel_runs_from_a_fresh_venv(built: Built) -> None:
    bin_dir = built.venv / "bin"
    proc = built.run([str(bin_dir / "vpncryptd"), "--version"])
    assert (proc.returncode, proc.stdout.strip()) == (0, f"vpncryptd {VERSION}"), proc.stderr
    proc = built.run([str(bin_dir / "vpncrypt"), "genkey"])
    assert proc.returncode == 0 and len(proc.stdout.strip()) == 44

    code = """
import os, sys
import vpncrypt
from vpncrypt import _fast
from vpncrypt.protocol import aead
assert vpncrypt.__file__.startswith(sys.prefix), vpncrypt.__file__
cls, path = aead.select("native")
assert path == "native" and cls is _fast.SivContext, (cls, path)
key = os.urandom(64)
sender, receiver = cls(key, 7, 9), cls(key, 7, 9)
body = bytes(range(256)) * 5
packet = sender.seal(1, 1_700_000_000, 42, body)
assert receiver.open(packet, 1_700_000_000) == body
forged = bytearray(packet)
forged[-1] ^= 1
assert receiver.open(bytes(forged), 1_700_000_000) is None
assert cls(os.urandom(64), 7, 9).open(packet, 1_700_000_000) is None
print(_fast.openssl_version())
"""
    proc = built.run([str(bin_dir / "python"), "-c", code])
    assert proc.returncode == 0, proc.stderr
    assert "OpenSSL 3" in proc.stdout


def test_cli_behaves_the_same_with_classic_docopt(built: Built, tmp_path: Path) -> None:
    """OpenWrt packages docopt 0.6.2, not docopt-ng: the CLIs must not notice."""
    classic = tmp_path / "docopt-0.6.2"
    proc = built.run([str(built.venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                      "--disable-pip-version-check", "--no-deps", "--target", str(classic),
                      "docopt==0.6.2"])
    assert proc.returncode == 0, proc.stdout + proc.stderr

    conf = tmp_path / "client.conf"
    conf.write_text(f"[client]\nid = 1\nserver = 192.0.2.1:51900\nkey_file = {tmp_path}/k\n"
                    "interface = vpn0\naddress = 10.9.0.2/24\n")
    write_key(tmp_path / "k")
    empty = tmp_path / "no-daemons"
    empty.mkdir()
    cases = [
        ["vpncryptd", "--version"],
        ["vpncryptd", "--help"],
        ["vpncryptd"],
        ["vpncryptd", "--bogus"],
        ["vpncryptd", "-c", str(tmp_path / "missing.conf"), "--foreground"],
        ["vpncryptd", "-c", str(conf), "--crypto=fast"],
        ["vpncrypt", "check-config", str(conf)],
        ["vpncrypt", "check-config"],
        ["vpncrypt", "show", f"--state-dir={empty}"],
        ["vpncrypt", "show", "--json", "--prometheus"],
        ["vpncrypt", "--version"],
    ]
    python = str(built.venv / "bin" / "python")
    for argv in cases:
        code = f"import sys; from vpncrypt.cli.{argv[0]} import main; main(sys.argv[1:])"
        ng = built.run([python, "-c", code, *argv[1:]])
        old = built.run([python, "-c", code, *argv[1:]], env={"PYTHONPATH": str(classic)})
        assert (old.returncode, old.stdout, old.stderr) == (ng.returncode, ng.stdout, ng.stderr), argv
    proc = built.run([python, "-c", "import docopt; print(docopt.__version__)"],
                     env={"PYTHONPATH": str(classic)})
    assert proc.stdout.strip() == "0.6.2"

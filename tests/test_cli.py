"""The command lines as a user runs them: exit codes and one-line errors, never a traceback."""

import base64
import subprocess
import sys

import pytest

from netns import python_env
from test_config import BROKEN, _materialise

from vpncrypt import __version__


def run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          env=python_env(), timeout=60)


def assert_one_line_error(proc, prog: str, expected: str, status: int = 2):
    assert proc.returncode == status, proc
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[0] == f"{prog}: {expected}"


# Every third broken file of the config table (30+ cases), through the real daemon CLI.
CLI_CASES = BROKEN[::3]


def test_cli_table_is_big_enough():
    assert len(CLI_CASES) >= 15


@pytest.mark.parametrize("case_id, text, keyfiles, expected", CLI_CASES,
                         ids=[c[0] for c in CLI_CASES])
def test_vpncryptd_refuses_broken_config(tmp_path, case_id, text, keyfiles, expected):
    path = _materialise(tmp_path, text, keyfiles)
    message = expected.format(path=path, dir=tmp_path)
    proc = run("vpncrypt.cli.vpncryptd", "-c", str(path), "--foreground")
    assert_one_line_error(proc, "vpncryptd", message)
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run("vpncrypt.cli.vpncrypt", "check-config", str(path))
    assert_one_line_error(proc, "vpncrypt", message)


def test_genkey_prints_a_fresh_32_byte_key():
    first, second = (run("vpncrypt.cli.vpncrypt", "genkey") for _ in range(2))
    for proc in (first, second):
        assert proc.returncode == 0
        assert len(base64.b64decode(proc.stdout.strip(), validate=True)) == 32
    assert first.stdout != second.stdout


def test_version():
    assert run("vpncrypt.cli.vpncryptd", "--version").stdout.strip() == f"vpncryptd {__version__}"
    assert run("vpncrypt.cli.vpncrypt", "--version").stdout.strip() == f"vpncrypt {__version__}"


@pytest.mark.parametrize("args, expected", [
    (["--bogus"], "unknown option '--bogus'"),
    (["-c"], "invalid arguments: '-c'"),
    ([], "invalid arguments: ''"),
])
def test_bad_arguments(args, expected):
    proc = run("vpncrypt.cli.vpncryptd", *args)
    assert_one_line_error(proc, "vpncryptd", expected)
    assert "Usage:" in proc.stderr


def test_bad_crypto_path_and_missing_file(tmp_path):
    proc = run("vpncrypt.cli.vpncryptd", "-c", str(tmp_path / "none.conf"), "--crypto=fast")
    assert_one_line_error(proc, "vpncryptd", "--crypto: unknown path 'fast' (native, reference or auto)")
    proc = run("vpncrypt.cli.vpncryptd", "-c", str(tmp_path / "none.conf"))
    assert_one_line_error(proc, "vpncryptd", f"{tmp_path / 'none.conf'}: no such file")

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


def test_genid_prints_a_fresh_nonzero_server_id():
    ids = [run("vpncrypt.cli.vpncrypt", "genid") for _ in range(3)]
    assert all(p.returncode == 0 and p.stderr == "" for p in ids)
    values = {int(p.stdout) for p in ids}
    assert len(values) == 3 and all(1 <= v <= 0xFFFFFFFF for v in values)


def test_check_config_warns_about_server_id_0(tmp_path):
    """Valid (status 0, OK on stdout) but risky: one warning line on stderr."""
    from configfiles import HEAD, client, laptop, write_conf

    for text, role in ((HEAD + laptop(), "server"), (client(), "client")):
        path = write_conf(tmp_path, text)
        proc = run("vpncrypt.cli.vpncrypt", "check-config", str(path))
        assert proc.returncode == 0 and proc.stdout.startswith(f"{path}: OK ("), proc
        (line,) = proc.stderr.splitlines()
        assert line.startswith(f"vpncrypt: warning: {path}: [{role}] server_id is 0")
        assert "replayed" in line
    for text in (HEAD + "server_id = 3141592653\n" + laptop(), client(server_id="3141592653")):
        path = write_conf(tmp_path, text)
        proc = run("vpncrypt.cli.vpncrypt", "check-config", str(path))
        assert proc.returncode == 0 and proc.stderr == "", proc


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


def test_vpncryptd_hands_its_parsed_arguments_to_its_own_exec(monkeypatch):
    """Once docopt has parsed the command line, vpncryptd execs the same command (same
    interpreter, same argv: same pid and `ps` line) with the parsed options in the
    environment, and the new image takes them from there without importing docopt. A
    value made for another command line, or garbage, is ignored (parsed again)."""
    import os

    from vpncrypt.cli import vpncryptd

    argv = ["-c", "/etc/vpncrypt/x.conf", "-f"]
    orig = ["/usr/bin/python3", "/usr/bin/vpncryptd", *argv]
    monkeypatch.setattr(sys, "argv", ["/usr/bin/vpncryptd", *argv])
    monkeypatch.setattr(sys, "orig_argv", orig)
    monkeypatch.delenv(vpncryptd.ARGS_ENV, raising=False)
    execs = []

    class Exec(Exception):
        pass

    def fake_execv(path, args):
        execs.append((path, list(args), os.environ.get(vpncryptd.ARGS_ENV)))
        raise Exec

    monkeypatch.setattr(vpncryptd.os, "execv", fake_execv)
    with pytest.raises(Exec):
        vpncryptd.main()
    ((path, args, handed),) = execs
    assert (path, args) == (sys.executable, orig) and handed
    # The new image: the same command line finds its arguments, parsed.
    parsed = vpncryptd.handed_args()
    assert parsed["--config"] == "/etc/vpncrypt/x.conf" and parsed["--foreground"] is True
    assert parsed["--crypto"] == "auto" and parsed["--verbose"] is False
    assert vpncryptd.ARGS_ENV not in os.environ  # not passed on to the helper or children
    # Another command line, or garbage: ignored.
    monkeypatch.setenv(vpncryptd.ARGS_ENV, handed)
    monkeypatch.setattr(sys, "argv", ["/usr/bin/vpncryptd", "--version"])
    assert vpncryptd.handed_args() is None
    for junk in ("zz", "00", ""):
        monkeypatch.setenv(vpncryptd.ARGS_ENV, junk)
        assert vpncryptd.handed_args() is None
    # A failed exec: the daemon goes on in this process (main continues to the config).
    monkeypatch.setattr(sys, "argv", ["/usr/bin/vpncryptd", *argv])

    def failing_execv(path, args):
        raise OSError(8, "Exec format error")

    monkeypatch.setattr(vpncryptd.os, "execv", failing_execv)
    with pytest.raises(SystemExit) as exit_info:
        vpncryptd.main()  # then fails on the (missing) configuration file, status 2
    assert exit_info.value.code == 2
    assert vpncryptd.ARGS_ENV not in os.environ


def test_vpncryptd_reexec_end_to_end(tmp_path):
    """The real thing: `python -X importtime -m vpncrypt.cli.vpncryptd` runs as two
    images of one process (the flag goes along, so each prints its own import table):
    the first parses with docopt and execs, the second imports no docopt (nor typing)
    and is the one that reads the configuration and reports the error, once."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "vpncrypt.cli.vpncryptd",
                           "-c", str(tmp_path / "none.conf"), "-f"],
                          capture_output=True, text=True, env=python_env(), timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    images = proc.stderr.split("import time: self [us] | cumulative | imported package")
    assert len(images) == 3, proc.stderr[-2000:]  # before the first table, then two tables

    def imported(text):
        return {line.rsplit("|", 1)[1].strip() for line in text.splitlines()
                if line.startswith("import time:") and "|" in line}

    first, second = imported(images[1]), imported(images[2])
    assert "docopt" in first and "vpncrypt.config" not in first
    assert "docopt" not in second and "typing" not in second and "vpncrypt.config" in second
    errors = [line for line in proc.stderr.splitlines() if line.startswith("vpncryptd:")]
    assert errors == [f"vpncryptd: {tmp_path / 'none.conf'}: no such file"]

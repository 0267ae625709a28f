"""Fuzzing: a CI-sized coverage-guided run of every target, the harness's self-tests, and
minimal reproducers of the bugs the fuzzer found.

The run: each target of fuzz/targets.py for VPNCRYPT_FUZZ_SECONDS (default 6 s; about a
minute for all seven) under atheris/libFuzzer, in a subprocess of fuzz/run.py, so that a
crash inside libFuzzer fails the test with its output. It must find no crash and must
have tried a minimum number of inputs. Without atheris the run skips locally and FAILS
when CI is set. Long campaigns: fuzz/README.md.

FUZZ-n tests reproduce the bugs the harness found (all fixed); a bug found later is listed
in KNOWN_ISSUES (fuzz/targets.py) with an xfail(strict=True) reproducer here until fixed,
so that the fuzz run counts, rather than crashes on, exactly that signature meanwhile.
"""

from __future__ import annotations

import base64
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from cryptopaths import PATHS, context_class
from vpncrypt import config
from vpncrypt.protocol import session, wire
from vpncrypt.protocol.session import Dropped
from vpncrypt.protocol.wire import Drop, Kind

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "fuzz" / "run.py"
SECONDS = float(os.environ.get("VPNCRYPT_FUZZ_SECONDS", "6"))

# Inputs each target must at least try in the CI run: above its seed corpus (so fuzzing
# really happened) and well below what a loaded 2-core VM manages in 6 s.
MIN_INPUTS = {"open_server": 800, "open_client": 800, "siv_diff": 3000, "window_diff": 2000,
              "config": 400, "key_file": 1000, "packets": 5000, "replay_state": 5000}

BASE = 1_764_000_000


def need_atheris():
    try:
        import atheris  # noqa: F401
    except ImportError:
        msg = "atheris is not installed (pip install atheris): the coverage-guided fuzz run"
        if os.environ.get("CI"):
            pytest.fail(msg + " must run in CI")
        pytest.skip(msg + " is skipped")


def run_fuzz(*args, timeout):
    proc = subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT))
    out = proc.stdout + proc.stderr
    m = re.search(r"^FUZZ-RESULT (.*)$", proc.stdout, re.M)
    assert m, f"fuzz/run.py printed no FUZZ-RESULT line (rc={proc.returncode}):\n{out[-8000:]}"
    fields = dict(kv.split("=", 1) for kv in m.group(1).split() if "=" in kv)
    return proc.returncode, fields, out


# =========================================================================== the CI run


@pytest.mark.parametrize("target", list(MIN_INPUTS))
def test_fuzz_target(target, tmp_path):
    need_atheris()
    rc, res, out = run_fuzz(target, "--seconds", str(SECONDS), "--artifacts", str(tmp_path),
                            timeout=SECONDS + 240)
    print(" ".join(f"{k}={v}" for k, v in res.items()))  # inputs tried: shown with -rA
    assert rc == 0 and res["crashes"] == "0", (
        f"the fuzzer found a crash in {target} (reproducer: {res.get('artifacts')}; re-run "
        f"with fuzz/run.py {target} --repro FILE):\n{out[-12000:]}")
    assert int(res["inputs"]) >= MIN_INPUTS[target], (
        f"{target}: only {res['inputs']} inputs tried in {res['seconds']} s:\n{out[-4000:]}")


# =========================================================================== the oracles bite


def test_forgery_oracle_crashes_libfuzzer(tmp_path):
    """Both AES-SIV paths sabotaged to accept anything: the run must stop with a FORGERY."""
    need_atheris()
    rc, res, out = run_fuzz("open_server", "--seconds", "60", "--sabotage", "accept-all",
                            "--artifacts", str(tmp_path), timeout=300)
    assert rc == 1 and int(res["crashes"]) >= 1, out[-6000:]
    assert "Forgery" in out
    assert res["artifacts"] != "-" and Path(res["artifacts"].split(",")[0]).exists()


@pytest.fixture
def harness(monkeypatch, tmp_path):
    sys.path.insert(0, str(ROOT))
    try:
        from fuzz import targets
    finally:
        sys.path.remove(str(ROOT))
    monkeypatch.setenv("VPNCRYPT_FUZZ_TMP", str(tmp_path / "fuzz"))
    monkeypatch.setattr(targets, "_TMP", None)
    monkeypatch.setattr(targets, "STRICT", False)
    return targets


def _first_failure(fn, inputs):
    for data in inputs:
        try:
            fn(data)
        except AssertionError as e:
            return e
    return None


def test_seed_corpus_passes_every_oracle(harness):
    """The unsabotaged product passes all seeds (or only hits known, reported bugs)."""
    for name, fn in harness.TARGETS.items():
        assert _first_failure(fn, harness.seeds(name)) is None, name


def test_forgery_oracle_bites_in_process(harness, monkeypatch):
    for path in harness.PATHS:
        base = harness.RAW_CLASSES[path]

        class AcceptAll(base):
            def open(self, packet, timestamp):
                body = super().open(packet, timestamp)
                return body if body is not None else bytes(packet[wire.OVERHEAD:]) or None

        monkeypatch.setitem(harness.ORACLE, path, harness.oracle_class(AcceptAll, path))
    for name in ("open_server", "open_client"):
        e = _first_failure(harness.TARGETS[name], harness.seeds(name))
        assert isinstance(e, harness.Forgery), (name, e)


def test_differential_oracles_bite_in_process(harness, monkeypatch):
    from vpncrypt import _fast

    class Forgetful(_fast.NativeWindow):
        def check(self, ts, counter):
            return 0

    monkeypatch.setattr(harness, "NativeWindow", Forgetful)
    assert isinstance(_first_failure(harness.TARGETS["window_diff"], harness.seeds("window_diff")),
                      harness.OracleFailure)

    class Lenient(harness.aead.ReferenceSivContext):  # ignores the header's timestamp byte
        def open(self, packet, timestamp):
            if len(packet) < 25:
                return None
            fixed = bytes(packet[:3]) + bytes([timestamp & 0xFF]) + bytes(packet[4:])
            return super().open(fixed, timestamp)

    monkeypatch.setitem(harness.RAW_CLASSES, "reference", Lenient)
    harness._siv_pair.cache_clear()
    try:
        key, _, _ = harness.SIV_KEYS[0]
        data = []  # genuine packets with the header's timestamp byte changed
        for p in harness.POOL:
            g = harness.STATIC_GENUINE[p]
            if g[0] == key and g[1]:
                data.append(bytes([0, 0]) + g[1].to_bytes(8, "big") + p[:3]
                            + bytes([p[3] ^ 1]) + p[4:])
        assert data
        assert isinstance(_first_failure(harness.TARGETS["siv_diff"], data),
                          harness.OracleFailure)
    finally:
        harness._siv_pair.cache_clear()


def test_config_oracles_bite_in_process(harness, monkeypatch):
    for part in (config.sections, config.values):  # each imported errors._show
        monkeypatch.setattr(part, "_show", repr)  # echo values even when they look like keys
    monkeypatch.setattr(config.errors, "_redact", lambda text: text)  # and lose the last defence
    e = _first_failure(harness.TARGETS["config"], harness.seeds("config"))
    assert isinstance(e, harness.OracleFailure) and "key material" in str(e)
    monkeypatch.undo()

    def parse(text, path="<string>"):
        raise KeyError("boom")

    monkeypatch.setattr(config, "parse", parse)
    with pytest.raises(KeyError):
        harness.TARGETS["config"](b"\x00[client]\n")


def test_key_file_oracle_bites_in_process(harness, monkeypatch):
    real = config.load_key_file

    def lax(path):  # forgets the permission check
        os.chmod(path, 0o600)
        return real(path)

    monkeypatch.setattr(config, "load_key_file", lax)
    e = _first_failure(harness.TARGETS["key_file"], harness.seeds("key_file"))
    assert isinstance(e, harness.OracleFailure) and "accepted" in str(e)


def test_known_issue_signatures_are_narrow(harness):
    """A known signature must not hide a new bug: unrelated exceptions stay crashes."""
    e = ValueError("something else")
    assert harness.classify_session_error(e, float("nan")) is None
    assert harness.classify_config_error(KeyError("x"), "") is None
    assert harness.classify_config_error(ValueError("invalid literal"), "") is None


# =========================================================================== FUZZ-n reproducers
# Found by this harness and fixed; each test keeps its bug from coming back.

KEY = "HTE1Pyw6lUmCZKYRg8WnAjbpsrotVxczwL0OfgrjqZs="  # a 32-byte key without '/'
PSK = base64.b64decode(KEY)


def _pair(path):
    cls = context_class(path)
    server = session.ServerCore(7, cls)
    server.set_client(1, PSK)
    client = session.ClientSession(1, 7, PSK, cls)
    return server, client


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("now", [2.0**64, 2.0**64 - 4096, float("inf"), float("nan")],
                         ids=["2^64", "2^64-4096", "inf", "nan"])
def test_fuzz1_open_never_raises_whatever_the_clock(path, now):
    """PROTOCOL.md §6: a candidate timestamp outside [0, 2**64) is an AUTH drop, not an
    error. 2**64-4096: the rebuilt T fits, but the clock-skew probes (T + 256k) do not."""
    server, client = _pair(path)
    for opener, packet in ((server, client.seal(Kind.DATA, b"x", BASE)),
                           (client, server.seal(1, Kind.DATA, b"x", BASE))):
        assert isinstance(opener.open(packet, now), Dropped)



@pytest.mark.parametrize("path", PATHS)
def test_fuzz2_time_sync_at_a_far_clock(path):
    server, client = _pair(path)
    request = client.time_request(BASE)
    result = server.open(request, 1e13)  # year ~318857: the answer's microseconds overflow
    assert isinstance(result, (session.Reply, session.Dropped))
    client.time_request(1e13)


@pytest.mark.parametrize("path", PATHS)
def test_fuzz3_diagnose_short_packet(path):
    server, _ = _pair(path)
    for packet in (b"", b"\x01", b"\x01\x00\x01"):
        assert isinstance(server.peer(1).receiver.diagnose(packet, BASE, Drop.AUTH), Dropped)


CLIENT = ("[client]\nid = 1\nserver = vpn.example.org:51900\nkey = " + KEY
          + "\ninterface = vpn0\naddress = 10.77.0.2/24\n")


def _parse_error(text, path="/etc/vpncrypt.conf"):
    with pytest.raises(config.ConfigError) as info:
        config.parse(text, path)
    return str(info.value)


@pytest.mark.parametrize("line", ["id = ", "server_id = ", "keepalive = ", "mtu = ",
                                  "server = vpn.example.org:"])
def test_fuzz4_huge_numbers_are_config_errors(line):
    text = CLIENT.replace("id = 1\n", "") if line == "id = " else CLIENT
    text = text.replace("server = vpn.example.org:51900\n", "") if line.startswith("server =") \
        else text
    _parse_error(text + line + "1" * 5000 + "\n")


@pytest.mark.parametrize("value", ["a\x00b", "a\ud800b"], ids=["nul", "surrogate"])
def test_fuzz5_bad_key_file_names_are_config_errors(value, tmp_path):
    text = CLIENT.replace("key = " + KEY, "key_file = " + value)
    _parse_error(text, str(tmp_path / "c.conf"))
    if "\x00" in value:  # the same through load(): a NUL byte in a file on disk
        p = tmp_path / "c.conf"
        p.write_bytes(text.encode())
        with pytest.raises(config.ConfigError):
            config.load(p)
        with pytest.raises(config.ConfigError):
            config.load_key_file(str(tmp_path / "x\x00y"))


@pytest.mark.parametrize("text", [
    CLIENT.replace("address = 10.77.0.2/24", f"address = fe80::1%{KEY}"),
    CLIENT.replace("server = vpn.example.org:51900", f"server = [ff02::1%{KEY}]:51900"),
    CLIENT.replace("key = " + KEY, f'key_file = "{KEY}"'),
    "[server]\nlisten = 0.0.0.0:51900\ninterface = vpn0\naddress = 10.77.0.1/24\n"
    f"[client a]\nid = 1\nkey = {KEY}\nallowed_ips = fe80::1%{KEY[:-1]}/64\n",
    f"[client {KEY}]\nid = 1\n",
    f"[server]\nlisten = 0.0.0.0:1\n[client {KEY}]\nid = 1\nid = 2\n",
], ids=["address-scope", "server-scope", "quoted-key_file", "allowed_ips-scope",
        "section-needs-server", "section-duplicate-key"])
def test_fuzz6_errors_never_show_key_text(text, tmp_path):
    message = _parse_error(text, str(tmp_path / "c.conf"))
    assert KEY[:43] not in message, message


@pytest.mark.parametrize("line", [f"key\x0b= {KEY}", f"key\xa0= {KEY}", f"key\x0c= {KEY}",
                                  f"\xa0key = {KEY}", f"key = {KEY}"],
                         ids=["vt-before-=", "nbsp-before-=", "ff-before-=", "nbsp-indent",
                              "cr-line-endings"])
def test_fuzz7_inline_key_in_readable_file_is_refused(line, tmp_path):
    text = CLIENT.replace("key = " + KEY + "\n", "")
    text = text.replace("[client]\n", "[client]\n" + line + "\n")
    if line.startswith("key = "):  # old Mac line endings: parse() accepts them
        text = text.replace("\n", "\r")
    p = tmp_path / "c.conf"
    p.write_bytes(text.encode())
    os.chmod(p, 0o644)
    with pytest.raises(config.ConfigError, match="too open"):
        config.load(p)

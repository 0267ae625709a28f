"""Tests for vpncrypt.daemon.logs: rate limits and the log line formats."""

import os

import pytest

from vpncrypt.daemon.logs import RateLimiter, kv


def test_rate_limiter_holds_back_and_counts():
    limiter = RateLimiter(interval=10.0, max_keys=3)
    assert limiter.allow("a", 0.0) == 0
    assert limiter.allow("a", 1.0) is None
    assert limiter.allow("a", 2.0) is None
    assert limiter.allow("b", 2.0) == 0
    assert limiter.allow("a", 10.0) == 2  # two lines were held back
    for key in "cdefgh":  # a flood of distinct keys keeps the table bounded
        limiter.allow(key, 11.0)
    assert len(limiter._next) <= 3


def test_kv_quotes_values_with_spaces():
    assert kv("drop", reason="auth", detail="a b") == 'drop reason=auth detail="a b"'
    assert kv("x", empty="") == 'x empty=""'


def test_rate_limiter_caps_lines_over_all_keys():
    limiter = RateLimiter(interval=10.0, rate=5.0)
    allowed = [limiter.allow(("auth", f"192.0.2.{i}"), 100.0) for i in range(50)]
    assert sum(a is not None for a in allowed) == 5  # 50 spoofed sources, 5 lines
    assert limiter.allow(("auth", "192.0.2.99"), 101.0) == 0  # refilled a second later


def test_log_lines_keep_the_logging_formats(monkeypatch, capsys, tmp_path):
    import re
    import socket

    from vpncrypt.daemon import logs

    logs.setup(False, True)
    logs.log.warning("drop reason=%s n=%d", "auth", 3)
    logs.log.debug("only with --verbose")
    logs.log.info("100% literal")
    logs.setup(True, True)
    logs.log.debug("now %s", "shown")
    lines = capsys.readouterr().err.splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(stamp + r" vpncryptd: WARNING drop reason=auth n=3", lines[0])
    assert re.fullmatch(stamp + r" vpncryptd: INFO 100% literal", lines[1])
    assert re.fullmatch(stamp + r" vpncryptd: DEBUG now shown", lines[2]) and len(lines) == 3

    # Detached: one datagram per line to /dev/log (here a socket of the test's own).
    path = str(tmp_path / "log")
    syslogd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    syslogd.bind(path)

    def connect():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.connect(path)
        return sock

    monkeypatch.setattr(logs, "_connect_syslog", connect)
    logs.setup(False, False)
    logs.log.warning("drop reason=%s", "stale")
    logs.log.info("started")
    logs.log.debug("not without --verbose")
    pid = os.getpid()
    assert syslogd.recv(4096) == b"<28>vpncryptd[%d]: drop reason=stale\0" % pid
    assert syslogd.recv(4096) == b"<30>vpncryptd[%d]: started\0" % pid
    syslogd.setblocking(False)
    with pytest.raises(BlockingIOError):
        syslogd.recv(4096)
    logs.log._syslog.close()
    logs.log.__init__()

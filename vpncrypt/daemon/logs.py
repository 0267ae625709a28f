"""Logging for the daemon: stderr or syslog, and rate-limited event lines in key=value form.

Event lines (drops, endpoint changes) keep a stable `event key=value ...` shape so
fail2ban/CrowdSec-style tools can match them. Keys never reach a log line: nothing
here is ever handed key material.

`log` is a small logger of our own with the `logging` calling convention
(`log.info(fmt, *args)`, %-formatting): the logging package and what it pulls in
(traceback, string, weakref, ...) cost over 1 MB of resident memory, and the daemon
needs only one formatted line per call. The lines are the ones logging wrote:
`2026-01-31 12:00:00,123 vpncryptd: WARNING message` on stderr, and
`<priority>vpncryptd[PID]: message` datagrams (facility daemon) to /dev/log.
"""

import _thread
import os
import socket
import sys
import time

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
_NAMES = {DEBUG: "DEBUG", INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR"}
_FACILITY_DAEMON = 3
_SYSLOG_PRIORITY = {DEBUG: 7, INFO: 6, WARNING: 4, ERROR: 3}  # debug, info, warning, err


class Logger:
    """Writes each line whole, under a lock (the native loop's threads log too; reentrant,
    as logging's, for a signal handler that logs). A line that cannot be formatted or
    written never raises into the daemon."""

    def __init__(self):
        # Until setup(): warnings and errors as bare lines on stderr, as logging's
        # last-resort handler writes them.
        self.level = WARNING
        self._syslog = None  # a connected AF_UNIX socket, else lines go to _stream
        self._stream = None  # None: sys.stderr at the time of the call
        self._format = "bare"  # or "foreground" (timestamped), "syslog" (vpncryptd[PID]:)
        self._lock = _thread.RLock()

    def debug(self, msg, *args):
        if self.level <= DEBUG:
            self._emit(DEBUG, msg, args)

    def info(self, msg, *args):
        if self.level <= INFO:
            self._emit(INFO, msg, args)

    def warning(self, msg, *args):
        if self.level <= WARNING:
            self._emit(WARNING, msg, args)

    def error(self, msg, *args):
        if self.level <= ERROR:
            self._emit(ERROR, msg, args)

    def _emit(self, level, msg, args):
        now = time.time()
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError, KeyError):
            text = f"{msg} {args!r}"  # a wrong format string loses no information
        with self._lock:
            try:
                if self._syslog is not None:
                    self._send(f"<{_FACILITY_DAEMON << 3 | _SYSLOG_PRIORITY[level]}>"
                               f"vpncryptd[{os.getpid()}]: {text}\0".encode(errors="replace"))
                    return
                if self._format == "syslog":
                    line = f"vpncryptd[{os.getpid()}]: {text}\n"
                elif self._format == "foreground":
                    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
                    msecs = int((now - int(now)) * 1000)
                    line = f"{stamp},{msecs:03d} vpncryptd: {_NAMES[level]} {text}\n"
                else:
                    line = text + "\n"
                stream = self._stream or sys.stderr
                stream.write(line)
                stream.flush()
            except (OSError, ValueError):  # stderr closed, syslog gone: the line is lost
                pass

    def _send(self, data: bytes):
        try:
            self._syslog.sendall(data)
        except OSError:
            # syslogd restarted: reconnect once, as logging's SysLogHandler does.
            self._syslog.close()
            self._syslog = _connect_syslog()
            self._syslog.sendall(data)


def _connect_syslog():
    """A socket connected to /dev/log: datagram, or stream where syslogd listens so."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        sock = socket.socket(socket.AF_UNIX, kind)
        try:
            sock.connect("/dev/log")
            return sock
        except OSError:
            sock.close()
            if kind == socket.SOCK_STREAM:
                raise


log = Logger()


def setup(verbose: bool, foreground: bool) -> None:
    """Foreground: timestamped lines on stderr. Else syslog through /dev/log, or, without
    a syslog daemon, the syslog-style lines on stderr."""
    if log._syslog is not None:
        log._syslog.close()
    log._syslog = None
    log._stream = sys.stderr
    log._format = "foreground" if foreground else "syslog"
    if not foreground:
        try:
            log._syslog = _connect_syslog()
        except OSError:
            pass
    log.level = DEBUG if verbose else INFO


def kv(event: str, **fields) -> str:
    """`event k=v ...`; values with spaces are quoted."""
    parts = [event]
    for key, value in fields.items():
        text = str(value)
        if not text or " " in text or '"' in text:
            text = '"%s"' % text.replace('"', "'")
        parts.append(f"{key}={text}")
    return " ".join(parts)


class RateLimiter:
    """At most one line per key per `interval` seconds; counts the ones it held back.

    Memory is bounded: past `max_keys` distinct keys (a flood from many sources) the
    table is reset, which at worst lets one extra line through per key.
    """

    def __init__(self, interval: float = 10.0, max_keys: int = 1024, rate: float = 20.0):
        self.interval = interval
        self.max_keys = max_keys
        self.rate = rate  # lines per second over all keys: spoofed sources are endless
        self._tokens = rate
        self._refilled = None
        self._next = {}
        self._held = {}

    def allow(self, key, now: float):
        """None to hold the line back, else how many lines were held back since the last one.
        `now` must be a monotonic clock."""
        if self._refilled is not None:
            self._tokens = min(self.rate, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        if now < self._next.get(key, 0.0) or self._tokens < 1:
            if key in self._held or len(self._held) < self.max_keys:
                self._held[key] = self._held.get(key, 0) + 1
            return None
        self._tokens -= 1
        if len(self._next) >= self.max_keys:
            self._next.clear()
            self._held.clear()
        self._next[key] = now + self.interval
        return self._held.pop(key, 0)

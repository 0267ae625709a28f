"""Logging for the daemon: stderr or syslog, and rate-limited event lines in key=value form.

Event lines (drops, endpoint changes) keep a stable `event key=value ...` shape so
fail2ban/CrowdSec-style tools can match them. Keys never reach a log line: nothing
here is ever handed key material.
"""

import logging
import sys

log = logging.getLogger("vpncrypt")


def setup(verbose: bool, foreground: bool) -> None:
    handler: logging.Handler
    if foreground:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s vpncryptd: %(levelname)s %(message)s"))
    else:
        # Only when detached: logging.handlers costs ~0.6 MB of resident memory.
        from logging.handlers import SysLogHandler

        try:
            handler = SysLogHandler("/dev/log", facility="daemon")
        except OSError:
            handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("vpncryptd[%(process)d]: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


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

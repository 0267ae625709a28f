"""Authenticated time for clients whose clock is wrong (a router without an RTC boots in 1970).

The client sends TIME_REQUEST with a fresh random nonce and its own protocol time;
the server answers TIME_RESPONSE with the nonce and its clock. Both are sealed with
the client's keys but with timestamp 0 in the associated data, because neither side
can rely on the other's clock yet; freshness comes from the nonce instead. The server
keeps no state for it, and a response is exactly as large as its request (no
amplification). The client keeps only the one outstanding nonce.

The server stamped its answer somewhere between the request's departure and the
answer's arrival, so one exchange proves only that the correction lies in
[server - received, server - sent]. An on-path attacker who delays packets can widen
that interval but never move it off the truth; so after the first sync (the midpoint)
the client moves its clock by the least amount that puts it inside the interval, and
not at all when it already is: delay cannot walk the clock away step by step.
"""

import math
import struct

NONCE_LEN = 16
BODY_LEN = NONCE_LEN + 8  # request and response bodies have the same size
MAX_RTT = 10.0  # seconds; a slower answer is too imprecise (and likely a replay)

_BODY = struct.Struct(">16sq")
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


def _micros(now: float) -> int:
    """`now` in microseconds, clamped to the body's int64 (a clock beyond ~year 294000 or
    not a number gives a useless but harmless answer instead of an exception)."""
    us = now * 1_000_000
    if not math.isfinite(us):
        return 0 if math.isnan(us) else (_I64_MAX if us > 0 else _I64_MIN)
    return max(_I64_MIN, min(_I64_MAX, int(us)))


def request_body(nonce: bytes, now: float) -> bytes:
    return _BODY.pack(nonce, _micros(now))


def response_body(request: bytes, now: float):
    """The response to a request body, or None if the request is malformed."""
    if len(request) != BODY_LEN:
        return None
    nonce, _ = _BODY.unpack(request)
    return _BODY.pack(nonce, _micros(now))


class ClockSync:
    """Client side: one request in flight; turns a matching response into a clock correction."""

    __slots__ = ("nonce", "sent_at", "synced")

    def __init__(self):
        self.nonce = None
        self.sent_at = 0.0
        self.synced = False

    def request(self, nonce: bytes, now: float) -> bytes:
        self.nonce, self.sent_at = nonce, now
        return request_body(nonce, now)

    def response(self, body: bytes, now: float):
        """Seconds to add to the local protocol clock, or None if unsolicited/too late."""
        if self.nonce is None or len(body) != BODY_LEN:
            return None
        nonce, server_us = _BODY.unpack(body)
        rtt = now - self.sent_at
        if nonce != self.nonce or not 0 <= rtt <= MAX_RTT:
            return None
        self.nonce = None  # one answer per request: a replayed response is unsolicited
        server = server_us / 1_000_000
        low, high = server - now, server - self.sent_at
        if not self.synced:
            self.synced = True
            return (low + high) / 2
        return min(max(0.0, low), high)

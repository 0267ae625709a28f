"""A token bucket: the budgets of the sans-IO core (time-sync answers) and of the daemon's
Python loop (daemon/budgets.py), twin of the native loop's bucket_take (_fast_peers.pxi)."""


class Bucket:
    """`rate` tokens a second, holding at most `burst` (default: `rate`), full at first.
    A `now` that goes back refills nothing."""

    __slots__ = ("rate", "burst", "tokens", "refilled")

    def __init__(self, rate: float, burst: float | None = None):
        self.rate = rate
        self.burst = rate if burst is None else burst
        self.tokens, self.refilled = self.burst, None

    def take(self, now: float) -> bool:
        last, self.refilled = self.refilled, now
        if last is not None:
            self.tokens = min(self.burst, self.tokens + max(0.0, now - last) * self.rate)
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

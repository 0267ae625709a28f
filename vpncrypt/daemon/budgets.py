"""Per-client budgets both packet loops enforce (the Python loop here in the daemon, the
native loop in _fast_receive.pxi, which compiles these numbers in through the generated
_fast_rules.pxi): how much a sender that is not where its client was may cost us."""

# DATA a second and client opened when it does not come from the client's endpoint:
# see daemon/server.py PeerState.may_open and the native loop's on_datagram.
ROAM_RATE = 1000.0
# Keepalives and time-sync packets a second and client the native loop hands up to the
# Python side (which decides them with the sans-IO core); the Python loop decides them
# itself, so this one is the native loop's only.
CTL_RATE = 50.0


class Bucket:
    """A token bucket of `rate` a second holding at most `rate`, full at first: the Python
    loop's twin of the native loop's bucket_take (_fast_peers.pxi). `now` is the wall
    clock here, so a clock stepping back refills nothing."""

    __slots__ = ("rate", "tokens", "refilled")

    def __init__(self, rate: float):
        self.rate, self.tokens, self.refilled = rate, rate, None

    def take(self, now: float) -> bool:
        last, self.refilled = self.refilled, now
        if last is not None:
            self.tokens = min(self.rate, self.tokens + max(0.0, now - last) * self.rate)
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

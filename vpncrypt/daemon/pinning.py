"""When the server pins a client to its endpoint in the kernel's socket filter, and how
much of what names it from elsewhere the filter lets through.

A flood of forged or replayed packets naming a client costs the daemon a receive and a
check per datagram even when its roaming budget (budgets.ROAM_RATE) spares it the
crypto. A client that datagrams name from addresses other than its endpoint ("foreign"
datagrams: DATA and keepalives) faster than twice the budget a second is pinned: the
socket filter (daemon/sockfilter.py) keeps 1 in `sample` of those, in the kernel, and
drops the rest. `sample` is the power of two (2 .. MAX_SAMPLE) that leaves between one
and two budgets' worth a second, so the budget is still spent in full: a roaming client
has the same odds of getting its first packet from a new address opened as without the
pin (budget / foreign rate), and the daemon reads about a budget's worth instead of the
flood. The sample is re-chosen every update from the rate, estimated from what the
filter let through times `sample`; the pin is lifted when that estimate has stayed under
twice the budget for QUIET seconds.

At most MAX_PINS clients are pinned (the program grows with each), first come first
served.

Sans-IO: `update` takes the foreign counts since the last call and the time, and says
what changed; the server re-attaches the filter then, and also when a pinned client's
endpoint changes.
"""

from ..protocol.wire import Kind

# What a pin holds back, and what counts as foreign: DATA and keepalives. Never time
# requests: a client with a wrong clock asks from wherever it is. The native loop's
# count (_fast.pyx, on_datagram) is pinned to this by tests/test_engine.py.
PINNED_KINDS = frozenset({Kind.DATA, Kind.KEEPALIVE})
QUIET = 30.0  # seconds under the pin rate before a pin is lifted
MAX_PINS = 128  # 128 IPv6 pins are ~2 600 of BPF's 4 096 instructions
MAX_SAMPLE = 1024  # at most 1 in 1024 kept: a flood of 1 M/s naming one client


class Pins:
    """The pinned clients: {client id: [when its foreign rate last reached the pin rate,
    sample]}."""

    def __init__(self, budget: float) -> None:
        self.budget = budget  # foreign DATA a second the daemon opens (budgets.ROAM_RATE)
        self.pin_rate = 2 * budget
        self.pinned: dict[int, list] = {}
        self.last: float | None = None

    def sample_for(self, rate: float) -> int:
        """The power of two that leaves between 1 and 2 budgets of `rate` a second."""
        sample = 2
        while sample < MAX_SAMPLE and rate >= 2 * sample * self.budget:
            sample *= 2
        return sample

    def samples(self) -> dict[int, int]:
        """{client id: sample} of the pinned clients."""
        return {cid: pin[1] for cid, pin in self.pinned.items()}

    def update(self, foreign: dict[int, int], now: float) -> tuple[list, list, bool]:
        """`foreign`: {client id: foreign datagrams the daemon saw since the last call}.
        Returns (newly pinned, unpinned) as lists of (client id, estimated rate a second),
        and whether the filter must change (those, or a pin's sample)."""
        last, self.last = self.last, now
        if last is None or now <= last:
            return [], [], False
        seconds = now - last
        pinned, added, removed, changed = self.pinned, [], [], False
        for cid, pin in list(pinned.items()):
            rate = foreign.get(cid, 0) * pin[1] / seconds
            if rate >= self.pin_rate:
                pin[0] = now
            elif now - pin[0] >= QUIET:
                del pinned[cid]
                removed.append((cid, rate))
                continue
            # Re-chosen only when what passes is outside 1..3 budgets (or could be), so
            # that the noise of the estimate does not rebuild the filter every update.
            if not self.budget <= rate / pin[1] < 3 * self.budget:
                sample = self.sample_for(rate)
                if sample != pin[1]:
                    pin[1], changed = sample, True
        for cid, count in foreign.items():
            rate = count / seconds
            if cid in pinned or rate < self.pin_rate or len(pinned) >= MAX_PINS:
                continue
            pinned[cid] = [now, self.sample_for(rate)]
            added.append((cid, rate))
        return added, removed, changed or bool(added or removed)

    def forget(self, cids) -> bool:
        """Drop pins of clients that are gone (a reload); True if any was pinned."""
        gone = [cid for cid in cids if cid in self.pinned]
        for cid in gone:
            del self.pinned[cid]
        return bool(gone)

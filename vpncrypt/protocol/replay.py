"""Freshness and replay state for one sender (one client and direction) at its receiver.

Rules (docs/PROTOCOL.md, "Freshness and replay"):
- a packet more than STALE_AFTER s older than the newest accepted one is stale;
- a counter already seen inside the sliding window (WINDOW packets) is a replay;
- a counter that jumps more than MAX_JUMP ahead, or lies behind the window, can only
  be explained by a sender restart (it picks a new random counter). It is accepted,
  and resets the window, only if its timestamp is strictly newer than every packet
  accepted so far; packets older than such a reset are stale from then on, so nothing
  sent before a sender restart can be replayed after it.
`check` is read-only and runs before any crypto; `accept` runs only after the packet
authenticated, so forgeries can never move the window.

Time requests are untimed (a client without a clock sends them), but they carry the
sender's counter like every packet: `mark_untimed` refuses one whose counter this
window has seen, so a replayed request is dropped before it can cost anything.
"""

from .wire import STALE_AFTER, Drop

WINDOW = 8192  # packets, like WireGuard
MAX_JUMP = 1 << 20  # largest forward counter step treated as "same sender session"
_MASK32 = 0xFFFFFFFF
_WINDOW_MASK = (1 << WINDOW) - 1


class ReplayWindow:
    __slots__ = ("newest", "floor", "top", "bits")

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Forget everything: a new window."""
        self.newest = None  # newest accepted timestamp; None until the first packet
        self.floor = 0  # timestamp of the last (re)start of the sender's counter
        self.top = 0  # highest accepted counter
        self.bits = 0  # bit i set: counter top - i was accepted

    def restore(self, floor: int) -> None:
        """Start from saved state after a receiver restart: nothing older than `floor`
        is accepted, and a packet at `floor` only if its counter continues the window."""
        self.reset()
        self.newest = self.floor = floor

    def check(self, timestamp: int, counter: int):
        """None if the packet may be fresh, else the Drop reason. Does not change state."""
        newest = self.newest
        if newest is None:
            return None
        if timestamp < newest - STALE_AFTER or timestamp < self.floor:
            return Drop.STALE
        ahead = (counter - self.top) & _MASK32
        if 0 < ahead <= MAX_JUMP:
            return None
        behind = (self.top - counter) & _MASK32
        if behind < WINDOW:
            return Drop.REPLAY if (self.bits >> behind) & 1 else None
        return None if timestamp > newest else Drop.REPLAY

    def mark_untimed(self, counter: int):
        """An authenticated untimed packet (a time request): Drop.REPLAY if its counter was
        seen; True if it continues this window (now marked, newest unchanged); False if it
        belongs to no run of the sender this window knows (a sender restarted since, or a
        replay from an older run), which the caller must treat as untrusted."""
        if self.newest is None:
            return False
        ahead = (counter - self.top) & _MASK32
        if 0 < ahead < WINDOW:
            self.bits = ((self.bits << ahead) | 1) & _WINDOW_MASK
            self.top = counter
            return True
        behind = (self.top - counter) & _MASK32
        if behind < WINDOW:
            if (self.bits >> behind) & 1:
                return Drop.REPLAY
            self.bits |= 1 << behind
            return True
        return False

    def accept(self, timestamp: int, counter: int) -> bool:
        """Record an authenticated packet that passed `check`. True if it restarted the window."""
        newest = self.newest
        ahead = (counter - self.top) & _MASK32
        behind = (self.top - counter) & _MASK32
        if newest is None:
            self.top, self.bits, self.newest = counter, 1, timestamp
            return False
        if not (0 < ahead <= MAX_JUMP or behind < WINDOW):
            self.top, self.bits, self.floor, self.newest = counter, 1, timestamp, timestamp
            return True
        if 0 < ahead <= MAX_JUMP:
            self.bits = ((self.bits << ahead) | 1) & _WINDOW_MASK if ahead < WINDOW else 1
            self.top = counter
        else:
            self.bits |= 1 << behind
        if timestamp > newest:
            self.newest = timestamp
        return False

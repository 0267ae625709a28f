"""The server's protocol clock: the time every timestamp is sealed and judged by.

Clients sync to the server's clock (timesync.py), so the server's clock *is* the
protocol's. It reads a steady clock (seconds since boot, never stepped) plus a base,
and only the base moves, by the rules below; the daemon passes both readings in.

- It follows the wall clock forward at once (an NTP fix of a router that booted in 1970).
- It never goes back. A wall clock that steps back (NTP, `date -s`) leaves the protocol
  clock where it was, ahead of the wall, and the difference is slewed out at SLEW: a
  receiver whose clock went back would otherwise accept again what it had refused as
  stale, or, if its replay windows moved with the step, packets captured that long
  before it (docs/PROTOCOL.md §14.2). Clients follow the slew through their routine
  time sync (at most 0.3 s between two syncs 600 s apart).
- A restart keeps it: the replay state carries how far it was ahead of the wall.
"""

SLEW = 0.0005  # seconds the protocol clock gives back per second while ahead (500 ppm)


class ServerClock:
    __slots__ = ("base", "_steady")

    def __init__(self, wall: float, steady: float, ahead: float = 0.0):
        """`ahead`: seconds the clock was ahead of the wall clock when last saved."""
        self.base = wall - steady + max(0.0, ahead)
        self._steady = steady

    def now(self, steady: float) -> float:
        return steady + self.base

    def ahead(self, wall: float, steady: float) -> float:
        """Seconds the protocol clock is ahead of the wall clock (0 when it is not)."""
        return max(0.0, steady + self.base - wall)

    def follow(self, wall: float, steady: float) -> float:
        """Take a reading of both clocks (every tick). Returns how far the protocol clock
        moved relative to the steady clock: > 0 when it followed the wall forward; the
        slew's tiny negative moves are included."""
        elapsed = max(0.0, steady - self._steady)
        self._steady = steady
        before = self.base
        ahead = steady + self.base - wall
        if ahead <= 0:
            self.base = wall - steady
        else:
            self.base -= min(ahead, SLEW * elapsed)
        return self.base - before

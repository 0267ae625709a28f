"""Which of several servers a client uses: the failover and failback decisions, sans-IO.

A client configured with several servers (`server = A, B, ...`, each with its own
`server_id`) carries its traffic through one of them at a time. This object is told
when the client sent something to a server (`sent`) and when an authenticated packet
came back from it (`answered`), with the caller's monotonic time, and says which
server to use (`decide`) and which servers not in use to probe now (`probes_due`).

Rules (docs/OPERATING.md, "Several servers"):
- A server is *down* once something sent to it has gone unanswered for `silence`
  seconds (the server in use: data, keepalives; the others: time-request probes).
- When the server in use is down, the client moves to the first server in list order
  that is not down; when every other server is down too it stays (and probes them all
  every `probe_every` s) until one answers, then moves to it at once.
- A server listed before the one in use (a preferred one) is probed every
  `probe_every` s; the client moves back to it only when it has answered without a
  gap for `hold` seconds, so a flapping server never drags the client back and forth.
- Servers listed after the one in use are probed every `backup_every` s, which keeps
  their clocks known (time sync per server) and their state current.
"""

FAILOVER_SILENCE = 1.5  # seconds without an answer while sending: the server is down
FAILBACK_HOLD = 10.0  # seconds a preferred server must answer without a gap before a move back
PROBE_EVERY = 1.0  # seconds between probes of a preferred server (or of all, while stuck)
BACKUP_EVERY = 30.0  # seconds between probes of a server listed after the one in use


class Failover:
    """The state of `count` servers (indices in list order); starts on server 0."""

    def __init__(self, count: int, silence: float = FAILOVER_SILENCE,
                 hold: float = FAILBACK_HOLD, probe_every: float = PROBE_EVERY,
                 backup_every: float = BACKUP_EVERY):
        self.count = count
        self.silence, self.hold = silence, hold
        self.probe_every, self.backup_every = probe_every, backup_every
        self.current = 0
        self.pending = [None] * count  # time of the first send since the last answer
        self.last_answer = [None] * count
        self.streak = [None] * count  # start of the current run of answers without a gap
        self.next_probe = [0.0] * count  # every server is probed once at start

    # -- events -------------------------------------------------------------------------------

    def sent(self, i: int, now: float) -> None:
        if self.pending[i] is None:
            self.pending[i] = now

    def answered(self, i: int, now: float) -> None:
        if self.pending[i] is not None and self.pending[i] <= now:
            self.pending[i] = None
        if self.last_answer[i] is None or now > self.last_answer[i]:
            self.last_answer[i] = now
        if self.streak[i] is None:
            self.streak[i] = now

    # -- decisions ----------------------------------------------------------------------------

    def down(self, i: int, now: float) -> bool:
        return self.pending[i] is not None and now - self.pending[i] > self.silence

    def _healthy(self, i: int, now: float) -> bool:
        return (not self.down(i, now) and self.streak[i] is not None
                and now - self.streak[i] >= self.hold)

    def decide(self, now: float):
        """The server to move to now, or None to stay; moving makes it `current`."""
        for i in range(self.count):
            if self.down(i, now):
                self.streak[i] = None  # a gap: the hold starts again at its next answer
        current = self.current
        if self.down(current, now):
            target = next((i for i in range(self.count)
                           if i != current and not self.down(i, now)), None)
        else:
            target = next((i for i in range(current) if self._healthy(i, now)), None)
        if target is None:
            return None
        self.current = target
        # The new server starts with a clean slate for its silence: what was pending
        # from its probes still counts, so a dead one is left as quickly as any.
        self.next_probe[current] = now  # the one we left: probed from now on
        return target

    def probes_due(self, now: float) -> list:
        """Servers not in use to send a time request to now (each then `sent`)."""
        stuck = self.down(self.current, now)
        due = []
        for i in range(self.count):
            if i == self.current or now < self.next_probe[i]:
                continue
            due.append(i)
            every = self.probe_every if stuck or i < self.current else self.backup_every
            self.next_probe[i] = now + every
        return due

    def state(self, i: int, now: float) -> str:
        """For `show`: in-use, up, down, returning (answering, within the hold) or unknown."""
        if i == self.current:
            return "down" if self.down(i, now) else "in-use"
        if self.down(i, now):
            return "down"
        if self.streak[i] is None:
            return "unknown"
        if i < self.current and now - self.streak[i] < self.hold:
            return "returning"
        return "up"

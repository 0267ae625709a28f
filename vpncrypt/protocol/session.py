"""Sessions: what the client and the server do with each packet, as pure decisions.

`ClientSession` and `ServerCore` turn (bytes, now) into sealed packets or into an
`Opened`, `Dropped` or `Reply` decision. `now` is the caller's protocol clock in
seconds (float); nothing here reads a clock, a socket or a file. The order of checks
puts everything cheap (size, type, known client id, timestamp, read-only replay
check) before any crypto, and the replay window moves only after authentication.
"""

import math
import os

from . import keys, timesync, wire
from .bucket import Bucket
from .ratchet import EpochContexts, Ratchet
from .replay import ReplayWindow
from .wire import FROM_SERVER, Drop, Kind

SKEW_PROBE_WINDOWS = 48  # +-48 * 256 s (about +-3.4 h) searched to diagnose clock skew
SKEW_PROBE_INTERVAL = 10.0  # seconds between diagnoses per sender (each costs ~100 opens)
TIME_BURST = 4  # time-sync answers a client may get at once ...
TIME_RATE = 1.0  # ... refilled at this many per second
TIME_SOURCES = 8  # addresses per client with a budget of their own for untrusted requests
_U64_MAX = (1 << 64) - 1


def _timestamp(low8: int, now: float):
    """The full timestamp for the header's low byte (docs/PROTOCOL.md §6), or None when it
    cannot authenticate: outside [0, 2**64) or `now` not a number."""
    if not math.isfinite(now):
        return None
    timestamp = wire.full_timestamp(low8, int(now))
    return timestamp if 0 <= timestamp <= _U64_MAX else None


# The decisions are plain slotted classes rather than frozen dataclasses: dataclasses
# costs about 1 MB resident (it imports inspect, ast and dis), and a plain __init__ is
# cheaper per packet than a frozen one. They compare equal by value, like dataclasses.
class _Decision:
    __slots__ = ()

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self):
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Opened(_Decision):
    """An authenticated packet. `restarted`: the sender restarted (new counter) and was
    re-accepted; `clock_offset` (TIME_RESPONSE): correction for the client's clock."""

    __slots__ = ("client_id", "kind", "body", "restarted", "clock_offset")

    def __init__(self, client_id: int, kind: Kind, body: bytes, restarted: bool = False,
                 clock_offset: float | None = None):
        self.client_id = client_id
        self.kind = kind
        self.body = body
        self.restarted = restarted
        self.clock_offset = clock_offset


class Dropped(_Decision):
    __slots__ = ("reason", "client_id", "detail")

    def __init__(self, reason: Drop, client_id: int | None = None, detail: str = ""):
        self.reason = reason
        self.client_id = client_id
        self.detail = detail


class Reply(_Decision):
    """A packet to send back to the datagram's source (the time-sync answer)."""

    __slots__ = ("client_id", "packet")

    def __init__(self, client_id: int, packet: bytes):
        self.client_id = client_id
        self.packet = packet


class Sender:
    """Seals packets in one direction; owns the 32-bit counter (random start, +1 per packet)."""

    __slots__ = ("ctx", "epochs", "direction", "counter")

    def __init__(self, ctx, from_server: bool, counter: int, epochs=None):
        self.ctx = ctx  # with a ratchet: the untimed (time-sync) context
        self.epochs = epochs  # ratchet.EpochContexts of a ratcheting client, else None
        self.direction = FROM_SERVER if from_server else 0
        self.counter = counter & 0xFFFFFFFF

    def seal(self, kind: Kind, body, now: float):
        """The sealed packet; None only for a ratcheting client whose clock is before the
        oldest epoch it still holds (that key is gone)."""
        ptype = kind | self.direction
        untimed = ptype in wire.UNTIMED
        timestamp = 0 if untimed else int(now)
        ctx = self.ctx if self.epochs is None or untimed else self.epochs.for_timestamp(timestamp)
        if ctx is None:
            return None
        counter = self.counter
        self.counter = (counter + 1) & 0xFFFFFFFF
        return ctx.seal(ptype, timestamp, counter, body)


class Receiver:
    """Opens packets from one sender: freshness, replay window, authentication, skew diagnosis."""

    __slots__ = ("ctx", "epochs", "window", "next_probe")

    def __init__(self, ctx, epochs=None):
        self.ctx = ctx  # with a ratchet: the untimed (time-sync) context
        self.epochs = epochs  # ratchet.EpochContexts of a ratcheting client, else None
        self.window = ReplayWindow()
        self.next_probe = 0.0

    def _open(self, packet, timestamp: int):
        """The body if `packet` authenticates as timestamped `timestamp`, else None."""
        ctx = self.ctx if self.epochs is None else self.epochs.for_timestamp(timestamp)
        return None if ctx is None else ctx.open(packet, timestamp)

    def open(self, packet, ptype: int, low8: int, counter: int, now: float, may_open=None):
        """`may_open`, if given, is asked (once, with no arguments) after the checks that
        cost nothing and before the AES-SIV pass, the one a forgery costs: the caller's
        budget for opening (the daemon's roaming budget); refused, the packet is dropped
        as rate-limited. Replays and stale packets are refused before it is asked, so
        they never spend it (the native loop's order: _fast_receive.pxi on_datagram)."""
        client_id = self.ctx.client_id
        if ptype in wire.UNTIMED:
            body = self.ctx.open(packet, 0)
            if body is None:
                return Dropped(Drop.AUTH, client_id)
            return Opened(client_id, Kind(ptype & ~FROM_SERVER), body)
        timestamp = _timestamp(low8, now)
        if timestamp is None:  # a receiver clock near 1970 (no RTC, not yet synced), or absurd
            return Dropped(Drop.AUTH, client_id)
        reason = self.window.check(timestamp, counter)
        if reason is Drop.STALE:
            # A sender whose clock is far off also looks stale here: say which it is.
            return self._diagnose(packet, timestamp, now, Drop.STALE)
        if reason is not None:
            return Dropped(reason, client_id)
        if may_open is not None and not may_open():
            return Dropped(Drop.RATE_LIMITED, client_id, "over the opening budget")
        body = self._open(packet, timestamp)
        if body is None:
            return self._diagnose(packet, timestamp, now, Drop.AUTH)
        restarted = self.window.accept(timestamp, counter)
        return Opened(client_id, Kind(ptype & ~FROM_SERVER), body, restarted)

    def diagnose(self, packet, now: float, reason: Drop, newest: int | None = None):
        """The diagnosis alone, for a packet another path (the native loop) refused;
        `newest` is that path's newest accepted timestamp from this sender."""
        if len(packet) < wire.MIN_PACKET:
            return Dropped(reason, self.ctx.client_id)
        timestamp = _timestamp(packet[3], now)
        if timestamp is None:
            return Dropped(reason, self.ctx.client_id)
        return self._diagnose(packet, timestamp, now, reason, newest)

    def _diagnose(self, packet, timestamp: int, now: float, reason: Drop, newest=None):
        """Tell a wrong key or old packet from a wrong clock: a stale packet whose sender's
        newest one is beyond our clock window means our own clock stepped back; otherwise
        try neighbouring 256-s windows (rate-limited: each costs up to ~100 opens)."""
        client_id = self.ctx.client_id
        if newest is None:
            newest = self.window.newest
        # (Only for a packet that authenticates: a forgery must not steer the diagnosis.)
        if reason is Drop.STALE and newest is not None and newest - now > wire.CLOCK_WINDOW \
                and self._open(packet, timestamp) is not None:
            return Dropped(Drop.CLOCK_SKEW, client_id,
                           f"receiver clock stepped back: the sender's newest packet is "
                           f"{int(newest) - int(now)} s ahead of it")
        # (A receiver clock that stepped back past the interval does not mute diagnoses.)
        if now < self.next_probe and self.next_probe - now <= SKEW_PROBE_INTERVAL:
            return Dropped(reason, client_id)
        self.next_probe = now + SKEW_PROBE_INTERVAL
        for k in range(1, SKEW_PROBE_WINDOWS + 1):
            for shift in (256 * k, -256 * k):
                if not 0 <= timestamp + shift <= _U64_MAX:
                    continue
                if self._open(packet, timestamp + shift) is not None:
                    return Dropped(
                        Drop.CLOCK_SKEW,
                        client_id,
                        f"sender clock off by about {shift:+d} s (window is +-128 s)",
                    )
        return Dropped(reason, client_id)


def _parse(packet, allowed_types):
    """Header fields, or a Dropped for malformed/unknown-type packets."""
    if not wire.check_size(len(packet)):
        return Dropped(Drop.MALFORMED)
    ptype, client_id, low8, counter = wire.unpack_header(packet)
    if ptype not in allowed_types:
        return Dropped(Drop.BAD_TYPE, client_id)
    return ptype, client_id, low8, counter


def _random_counter(rng) -> int:
    return int.from_bytes(rng(4), "big")


def _ends(key, send_dir: bytes, server_id: int, client_id: int, make, from_server: bool,
          counter: int):
    """(Sender, Receiver) of one side under `key`: a PSK, or a Ratchet (ratchet.py)."""
    receive_dir = keys.SERVER_TO_CLIENT if send_dir == keys.CLIENT_TO_SERVER else keys.CLIENT_TO_SERVER
    if isinstance(key, Ratchet):
        send = EpochContexts(key, send_dir, server_id, client_id, make)
        receive = EpochContexts(key, receive_dir, server_id, client_id, make)
        return (Sender(send.untimed, from_server, counter, send),
                Receiver(receive.untimed, receive))
    sealing = keys.direction_key(key, send_dir, server_id, client_id)
    opening = keys.direction_key(key, receive_dir, server_id, client_id)
    return (Sender(make(sealing, client_id, server_id), from_server, counter),
            Receiver(make(opening, client_id, server_id)))


def key_identity(key):
    """What tells one key from another: a PSK itself; a Ratchet's period and time-sync key
    (the same for the life of the chain, whichever epoch it holds)."""
    return (key.period, key.time_key) if isinstance(key, Ratchet) else key


def prepare_epochs(sender, receiver, now: float, advance: bool):
    """A ratcheting side at `now`: step the chain on (when `advance`: only on a trusted
    clock) and hold the epochs' contexts. (moved, changed): the held secret moved (save it),
    the contexts changed (the native loop needs them)."""
    if sender.epochs is None:
        return False, False
    moved = advance and sender.epochs.ratchet.advance(now)
    changed = sender.epochs.prepare(now)
    changed = receiver.epochs.prepare(now) or changed
    return moved, changed


class ClientSession:
    """The client's end: seals toward its server and opens what the server sends back."""

    def __init__(self, client_id: int, server_id: int, psk, context_class, rng=os.urandom):
        """`psk`: the client's key, or its Ratchet (ratchet.py)."""
        self.client_id = client_id
        self.sender, self.receiver = _ends(psk, keys.CLIENT_TO_SERVER, server_id, client_id,
                                           context_class, False, _random_counter(rng))
        self.clock = timesync.ClockSync()
        self._rng = rng

    def seal(self, kind: Kind, body, now: float) -> bytes:
        return self.sender.seal(kind, body, now)

    def time_request(self, now: float) -> bytes:
        body = self.clock.request(self._rng(timesync.NONCE_LEN), now)
        return self.sender.seal(Kind.TIME_REQUEST, body, now)

    def open(self, packet, now: float):
        fields = _parse(packet, wire.SERVER_TYPES)
        if isinstance(fields, Dropped):
            return fields
        ptype, client_id, low8, counter = fields
        if client_id != self.client_id:
            return Dropped(Drop.UNKNOWN_CLIENT, client_id)
        result = self.receiver.open(packet, ptype, low8, counter, now)
        if isinstance(result, Opened) and result.kind == Kind.TIME_RESPONSE:
            return self.time_response(result.body, now)
        return result

    def time_response(self, body: bytes, now: float):
        """An authenticated time-sync response's body (opened here, or by the native
        loop): Opened with the clock correction, or Dropped if it answers no request."""
        offset = self.clock.response(body, now)
        if offset is None:
            return Dropped(Drop.UNSOLICITED, self.client_id)
        return Opened(self.client_id, Kind.TIME_RESPONSE, body, clock_offset=offset)


class _Peer:
    __slots__ = ("psk", "sender", "receiver", "time_budget", "source_budgets")

    def __init__(self, psk, sender, receiver):
        self.psk, self.sender, self.receiver = psk, sender, receiver
        self.time_budget = Bucket(TIME_RATE, TIME_BURST)
        self.source_budgets = {}  # source address -> Bucket, newest use last

    def budget_of(self, source) -> Bucket:
        """The answer budget of untrusted time requests from `source`: replays from other
        addresses cannot spend the one of the client's own address."""
        budget = self.source_budgets.pop(source, None)
        if budget is None:
            budget = Bucket(TIME_RATE, TIME_BURST)
            if len(self.source_budgets) >= TIME_SOURCES:
                del self.source_budgets[next(iter(self.source_budgets))]
        self.source_budgets[source] = budget
        return budget


class ServerCore:
    """The server's end: one sender/receiver pair per configured client id."""

    def __init__(self, server_id: int, context_class, rng=os.urandom):
        self.server_id = server_id
        self._ctx = context_class
        self._rng = rng
        self._peers: dict[int, _Peer] = {}

    def set_client(self, client_id: int, psk) -> bool:
        """Add or re-key a client (`psk`: its key, or its Ratchet). An unchanged key keeps
        its counters and replay state (and a ratchet the epoch it reached).

        Returns True if anything changed.
        """
        peer = self._peers.get(client_id)
        if peer is not None and key_identity(peer.psk) == key_identity(psk):
            return False
        sender, receiver = _ends(psk, keys.SERVER_TO_CLIENT, self.server_id, client_id,
                                 self._ctx, True, _random_counter(self._rng))
        self._peers[client_id] = _Peer(psk, sender, receiver)
        return True

    def peer(self, client_id: int):
        """The crypto state of one client: .sender, .receiver (for the native loop's set-up)."""
        return self._peers[client_id]

    def remove_client(self, client_id: int) -> None:
        self._peers.pop(client_id, None)

    def client_ids(self):
        return self._peers.keys()

    def seal(self, client_id: int, kind: Kind, body, now: float) -> bytes:
        return self._peers[client_id].sender.seal(kind, body, now)

    def open(self, packet, now: float, may_open=None, source=None):
        """Decide one datagram from `source` (an address, any hashable); `may_open` as for
        Receiver.open."""
        fields = _parse(packet, wire.CLIENT_TYPES)
        if isinstance(fields, Dropped):
            return fields
        ptype, client_id, low8, counter = fields
        peer = self._peers.get(client_id)
        if peer is None:
            return Dropped(Drop.UNKNOWN_CLIENT, client_id)
        result = peer.receiver.open(packet, ptype, low8, counter, now, may_open)
        if isinstance(result, Opened) and result.kind == Kind.TIME_REQUEST:
            known = peer.receiver.window.mark_untimed(counter)
            if known is Drop.REPLAY:
                return Dropped(Drop.REPLAY, client_id, "time request seen before")
            return self.time_request(client_id, result.body, now, known, source)
        return result

    def time_request(self, client_id: int, body: bytes, now: float, known: bool, source):
        """An authenticated time-sync request's body (opened here, or by the native loop),
        not a replay within the client's window: the Reply to send back, or Dropped when
        over its answer budget or of the wrong size.

        Budgets are taken after authentication, so forgeries spend none. A request whose
        counter continues the client's window (`known`) is the client's own and spends
        the client's budget. Any other (the client restarted, or a replay of a request
        from an older run of it, which only the window's past could tell apart) spends
        the budget of the address it came from: a replay from elsewhere cannot use up
        what the real client's address has."""
        peer = self._peers[client_id]
        if not (peer.time_budget if known else peer.budget_of(source)).take(now):
            return Dropped(Drop.RATE_LIMITED, client_id)
        response = timesync.response_body(body, now)
        if response is None:
            return Dropped(Drop.MALFORMED, client_id, "time-sync request of wrong size")
        return Reply(client_id, peer.sender.seal(Kind.TIME_RESPONSE, response, now))

"""Forward secrecy without a handshake: keys that evolve with the protocol clock.

A client with `ratchet = PERIOD` has no static packet key. Time is cut into epochs of
PERIOD seconds counted from ORIGIN; epoch e has its own secret S_e, and the packet
keys of a packet timestamped T are the usual key schedule (keys.direction_key) with
S_epoch(T) in place of the PSK:

    S_0     = HKDF(PSK, "vpncrypt-v1", "vpncrypt-v1 ratchet" || u32 period, 32)
    S_e+1   = SHA-256("vpncrypt-v1 ratchet step" || S_e)        (one way)
    K_time  = HKDF(PSK, "vpncrypt-v1", "vpncrypt-v1 time sync", 32)

Both ends step the chain forward on their own and keep only the secrets the clock
window (+-128 s) needs; the stored secret is that of the oldest such epoch, so a key
taken from a device opens nothing sealed more than an epoch before. Time sync (untimed,
and needed exactly when a client does not know the epoch) uses K_time, which a thief
can use only to answer time requests: it never opens data. The wire format does not
change. docs/PROTOCOL.md §3.3. Pure: the caller passes the time.
"""

import struct

from .keys import PSK_LEN, SALT, direction_key, hkdf_sha256, sha256
from .wire import CLOCK_WINDOW, VERSION

ORIGIN = 1_767_225_600  # 2026-01-01T00:00:00Z: epoch 0 is everything up to ORIGIN + period
MIN_PERIOD = 600  # seconds: an epoch must be longer than the clock window (256 s)
MAX_PERIOD = 30 * 86400
MAX_AHEAD = 64  # epochs past the oldest held that may be derived on demand (diagnosis)
_STEP = b"vpncrypt-v%d ratchet step" % VERSION


def epoch_of(timestamp: int, period: int) -> int:
    return max(0, (timestamp - ORIGIN) // period)


def epoch_start(epoch: int, period: int) -> int:
    return ORIGIN + epoch * period


def first_secret(psk: bytes, period: int) -> bytes:
    return hkdf_sha256(psk, SALT, b"vpncrypt-v%d ratchet" % VERSION + struct.pack(">I", period),
                       PSK_LEN)


def time_sync_key(psk: bytes) -> bytes:
    return hkdf_sha256(psk, SALT, b"vpncrypt-v%d time sync" % VERSION, PSK_LEN)


def step(secret: bytes) -> bytes:
    return sha256(_STEP + secret).digest()


class Ratchet:
    """One client's chain: the secret of `epoch` (the oldest still held) and the time-sync
    key. Secrets of earlier epochs cannot be derived from it."""

    __slots__ = ("period", "epoch", "secret", "time_key")

    def __init__(self, period: int, epoch: int, secret: bytes, time_key: bytes):
        if not MIN_PERIOD <= period <= MAX_PERIOD:
            raise ValueError(f"ratchet period must be {MIN_PERIOD} to {MAX_PERIOD} s")
        self.period, self.epoch, self.secret, self.time_key = period, epoch, secret, time_key

    def __eq__(self, other):
        if not isinstance(other, Ratchet):
            return NotImplemented
        return (self.period, self.epoch, self.secret, self.time_key) == (
            other.period, other.epoch, other.secret, other.time_key)

    def __hash__(self):  # what never changes along the chain
        return hash((self.period, self.time_key))

    @classmethod
    def from_psk(cls, psk: bytes, period: int) -> "Ratchet":
        return cls(period, 0, first_secret(psk, period), time_sync_key(psk))

    def secret_at(self, epoch: int):
        """S_epoch, or None for an epoch before the one held (erased: that is the point)."""
        if epoch < self.epoch:
            return None
        secret = self.secret
        for _ in range(epoch - self.epoch):  # one hash per epoch: cheap even after months
            secret = step(secret)
        return secret

    def window(self, now: float) -> tuple[int, int]:
        """The epochs a packet within the clock window of `now` can be in (one or two)."""
        t = int(now)
        return epoch_of(t - CLOCK_WINDOW, self.period), epoch_of(t + CLOCK_WINDOW - 1, self.period)

    def advance(self, now: float) -> bool:
        """Step forward to the oldest epoch the clock window of `now` needs (never back);
        True if the held secret changed (the caller saves it and forgets the old one)."""
        oldest = self.window(now)[0]
        if oldest <= self.epoch:
            return False
        self.secret = self.secret_at(oldest)
        self.epoch = oldest
        return True


class EpochContexts:
    """The AEAD contexts of one direction of a ratcheting client: one for each epoch the
    clock window needs (prepare), one for untimed packets (time sync, K_time)."""

    __slots__ = ("ratchet", "direction", "server_id", "client_id", "make", "untimed", "by_epoch")

    def __init__(self, ratchet: Ratchet, direction: bytes, server_id: int, client_id: int, make):
        self.ratchet, self.direction, self.make = ratchet, direction, make
        self.server_id, self.client_id = server_id, client_id
        self.untimed = self._context(ratchet.time_key)
        self.by_epoch = {}

    def _context(self, secret: bytes):
        return self.make(direction_key(secret, self.direction, self.server_id, self.client_id),
                         self.client_id, self.server_id)

    def prepare(self, now: float) -> bool:
        """Hold the contexts of the epochs around `now` and no others; True if they changed."""
        lo, hi = self.ratchet.window(now)
        wanted = range(max(lo, self.ratchet.epoch), hi + 1)
        if list(self.by_epoch) == list(wanted):
            return False
        self.by_epoch = {e: self.by_epoch.get(e) or self._context(self.ratchet.secret_at(e))
                         for e in wanted}
        return True

    def for_timestamp(self, timestamp: int):
        """The context for a timed packet, or None where the epoch's secret is gone (or too
        far ahead to derive for one packet)."""
        epoch = epoch_of(timestamp, self.ratchet.period)
        ctx = self.by_epoch.get(epoch)
        if ctx is None and self.ratchet.epoch <= epoch <= self.ratchet.epoch + MAX_AHEAD:
            ctx = self._context(self.ratchet.secret_at(epoch))  # a diagnosis probe: not kept
        return ctx

    def engine_keys(self):
        """(boundary, context before it, context from it on) for the native loop: the one
        or two epochs prepared (the earlier one alone, or twice, when there is one)."""
        epochs = list(self.by_epoch)
        if not epochs:
            return None
        first, last = self.by_epoch[epochs[0]], self.by_epoch[epochs[-1]]
        return epoch_start(epochs[-1], self.ratchet.period), first, last

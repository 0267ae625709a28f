"""Fuzz targets: each takes the fuzzer's bytes and raises when an oracle fails.

A target never catches a product exception it does not understand: anything escaping
ServerCore.open / ClientSession.open / SivContext.open / config.parse / config.load /
config.load_key_file / Engine.decode_event / ippacket.* (other than the documented
results) propagates, and libFuzzer records the input as a crash. On top of "never
raises", every target has an oracle:

open_server, open_client
    A small program (decoded from the input) of packets and clock changes run through
    two sessions, one per crypto path, built fresh for every input: raw bytes, genuine
    packets from a pool the harness sealed, their bit flips, byte edits, splices,
    truncations and header rewrites, freshly sealed packets at a skewed sender clock,
    time-sync exchanges, re-keys and the native loop's `diagnose`. Oracles: the
    result is Opened/Dropped/Reply; both paths decide identically; and every
    successful AES-SIV open anywhere (session, skew probe, diagnose) must be of a
    packet the harness itself sealed, under the same key and timestamp, with the same
    plaintext. Anything else is a FORGERY.
siv_diff
    _fast.SivContext vs ReferenceSivContext: open() agrees for any bytes/timestamp and
    buffer type; seal() is byte-identical and round-trips; other timestamps with the
    same low byte and bit flips never open.
window_diff
    _fast.NativeWindow vs protocol.replay.ReplayWindow on fuzzed (timestamp, counter)
    sequences with restores; an accepted (timestamp, counter) is never accepted again.
config
    config.parse on arbitrary text, config.load on arbitrary bytes and file modes, and
    a structure-aware INI generator over both. Only ConfigError may escape; its str()
    is one line, starts with the path, names a line that exists, and never contains
    the base64 text of a key present in the input or the key files. Accepted configs
    obey their documented invariants, never show a key in repr(), and a file that
    group/others can access is never accepted with an inline key.
key_file
    config.load_key_file on arbitrary contents, modes and file types, against an
    independent model of what must be accepted.
packets
    Engine.decode_event, ippacket.addresses and ippacket.too_big on arbitrary bytes;
    results checked against independent parsers (checksums, lengths, addresses).

Known, already reported bugs (KNOWN_ISSUES) are recognised by narrow signatures and
counted instead of crashing, so the CI run stays green until they are fixed; set
VPNCRYPT_FUZZ_STRICT=1 (fuzz/run.py --strict) to make them crash again.
"""

from __future__ import annotations

import base64
import collections
import functools
import hashlib
import json
import math
import os
import random
import re
import socket
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vpncrypt import config  # noqa: E402
from vpncrypt.daemon import ippacket  # noqa: E402
from vpncrypt.protocol import aead, keys, replay, session, timesync, wire  # noqa: E402
from vpncrypt.protocol.session import Dropped, Opened, Reply  # noqa: E402
from vpncrypt.protocol.wire import Drop  # noqa: E402

try:
    from vpncrypt import _fast  # noqa: E402
except ImportError as e:  # the harness compares both paths: it needs the extension
    raise ImportError(f"fuzz: the native extension vpncrypt._fast is not built ({e})") from None


# =========================================================================== oracle plumbing


class OracleFailure(AssertionError):
    """An oracle caught wrong behaviour (not an exception escaping the product)."""


class Forgery(OracleFailure):
    """A packet the harness never sealed authenticated."""


class KnownIssue(Exception):
    def __init__(self, issue: str):
        super().__init__(issue)
        self.issue = issue


# Bugs found by this harness and reported; see tests/test_fuzz.py (FUZZ-n reproducers).
KNOWN_ISSUES: dict = {}  # FUZZ-1..7 were fixed; their reproducers stay in tests/test_fuzz.py

STRICT = os.environ.get("VPNCRYPT_FUZZ_STRICT") == "1"
KNOWN_HITS: collections.Counter = collections.Counter()
STATS: collections.Counter = collections.Counter()  # inputs run, per target


def known(issue, exc=None):
    """Turn a recognised known bug into KnownIssue (unless strict); else return."""
    if issue is None or STRICT or issue not in KNOWN_ISSUES:  # fixed bugs crash again
        return
    raise KnownIssue(issue) from exc


def _note_known(issue: str) -> None:
    KNOWN_HITS[issue] += 1
    n = KNOWN_HITS[issue]
    if n & (n - 1) == 0:  # 1, 2, 4, 8, ...: enough for run.py to report counts
        print(f"FUZZ-KNOWN {issue} count={n}", file=sys.stderr, flush=True)


def _target(name):
    """Register a target: counts inputs, turns KnownIssue into a counted non-crash."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(data: bytes) -> None:
            STATS[name] += 1
            try:
                fn(bytes(data))
            except KnownIssue as k:
                _note_known(k.issue)

        TARGETS[name] = run
        return run

    return wrap


TARGETS: dict = {}


class Reader:
    """Consumes the fuzzer's bytes; past the end it yields zeros / empty bytes."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def u8(self) -> int:
        if self.pos < len(self.data):
            self.pos += 1
            return self.data[self.pos - 1]
        return 0

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + max(n, 0)]
        self.pos += len(out)
        return out

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size).ljust(size, b"\0"), "big")

    def u16(self) -> int:
        return self.uint(2)

    def u32(self) -> int:
        return self.uint(4)

    def u64(self) -> int:
        return self.uint(8)

    def i8(self) -> int:
        v = self.u8()
        return v - 256 if v > 127 else v

    def i16(self) -> int:
        return struct.unpack(">h", self.take(2).ljust(2, b"\0"))[0]

    def i32(self) -> int:
        return struct.unpack(">i", self.take(4).ljust(4, b"\0"))[0]

    def f64(self) -> float:
        return struct.unpack(">d", self.take(8).ljust(8, b"\0"))[0]

    def rest(self) -> bytes:
        return self.take(self.left())

    def pick(self, seq):
        return seq[self.u8() % len(seq)]


def _hex(b: bytes, limit: int = 80) -> str:
    b = bytes(b)
    return b[:limit].hex() + ("..." if len(b) > limit else "") + f" ({len(b)} bytes)"


# =========================================================================== genuine packets

BASE = 1_764_000_000  # a realistic clock (2025-11-24)
PATHS = ("native", "reference")
RAW_CLASSES = {"native": _fast.SivContext, "reference": aead.ReferenceSivContext}


def _psk(label: str) -> bytes:
    return hashlib.sha256(b"vpncrypt-fuzz:" + label.encode()).digest()


PSKS = [_psk(x) for x in "abcd"]

# packet bytes -> (64-byte key, timestamp, body) for every packet the harness sealed.
STATIC_GENUINE: dict = {}
RUN_GENUINE: dict = {}  # sealed while running the current input (cleared per input)


def genuine(packet):
    packet = bytes(packet)
    return RUN_GENUINE.get(packet) or STATIC_GENUINE.get(packet)


def check_opened(key, packet, timestamp, body, path) -> None:
    """The forgery oracle: `path` authenticated `packet` at `timestamp` under `key`."""
    g = genuine(packet)
    if g is None:
        raise Forgery(f"{path} path authenticated a packet the harness never sealed: "
                      f"timestamp={timestamp} packet={_hex(packet)}")
    gkey, gts, gbody = g
    if gkey != key:
        raise Forgery(f"{path} path opened a packet under a key it was not sealed with "
                      f"(packet={_hex(packet)})")
    if gts != timestamp:
        raise Forgery(f"{path} path opened a packet sealed at T={gts} under T={timestamp}")
    if bytes(body) != gbody:
        raise OracleFailure(f"{path} path returned a plaintext other than the sealed one")


def oracle_class(base, path):
    """A SivContext class that records what it seals and checks everything it opens."""

    class OracleContext:
        PATH = path
        __slots__ = ("inner", "key", "client_id", "server_id")

        def __init__(self, key, client_id, server_id):
            self.inner = base(key, client_id, server_id)
            self.key, self.client_id, self.server_id = key, client_id, server_id

        def seal(self, ptype, timestamp, counter, body):
            packet = self.inner.seal(ptype, timestamp, counter, body)
            RUN_GENUINE.setdefault(packet, (self.key, timestamp, bytes(body)))
            return packet

        def open(self, packet, timestamp):
            body = self.inner.open(packet, timestamp)
            if body is not None:
                check_opened(self.key, packet, timestamp, body, path)
            return body

    OracleContext.__name__ = f"Oracle{base.__name__}"
    return OracleContext


ORACLE = {p: oracle_class(RAW_CLASSES[p], p) for p in PATHS}


def _sabotaged_classes(mode):
    """Deliberately broken openers for the harness self-test (VPNCRYPT_FUZZ_SABOTAGE)."""

    def accept_all(base):
        class AcceptAll(base):  # opens genuine packets correctly, and accepts anything else
            def open(self, packet, timestamp):
                body = super().open(packet, timestamp)
                if body is None and len(packet) > wire.OVERHEAD:
                    body = bytes(packet[wire.OVERHEAD:])
                return body

        return AcceptAll

    if mode == "accept-all":
        return {p: accept_all(RAW_CLASSES[p]) for p in PATHS}
    return None


def apply_sabotage(mode: str | None) -> None:
    """Break the product on purpose so tests can prove each oracle bites."""
    if not mode:
        return
    if mode == "accept-all":  # both AES-SIV paths accept anything: forgeries
        for p, cls in _sabotaged_classes(mode).items():
            RAW_CLASSES[p] = cls
            ORACLE[p] = oracle_class(cls, p)
    elif mode == "window":  # the native window forgets replays
        class Forgetful(_fast.NativeWindow):
            def check(self, ts, counter):
                return 0

        global NativeWindow
        NativeWindow = Forgetful
    elif mode == "config-leak":  # config echoes every value, key material included
        for part in (config.sections, config.values):  # each imported errors._show
            part._show = repr
    elif mode == "config-raise":  # a non-ConfigError escapes
        orig = config.parse

        def parse(text, path="<string>"):
            if "mtu" in str(text):
                raise KeyError("mtu")
            return orig(text, path)

        config.parse = parse
    else:
        raise ValueError(f"unknown sabotage mode {mode!r}")


NativeWindow = _fast.NativeWindow


def _ip4(src: str, dst: str, payload: bytes = b"") -> bytes:
    total = 20 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr + payload


def _ip6(src: str, dst: str, payload: bytes = b"") -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), 17, 64,
                       socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + payload


def _load_vectors():
    path = ROOT / "tests" / "vectors" / "packets.json"
    out = []
    for v in json.loads(path.read_text())["vectors"]:
        out.append({
            "name": v["name"], "psk": bytes.fromhex(v["psk"]), "direction": v["direction"],
            "server_id": v["server_id"], "client_id": v["client_id"],
            "key": bytes.fromhex(v["siv_key"]), "type": v["type"], "timestamp": v["timestamp"],
            "counter": v["counter"], "body": bytes.fromhex(v["body"]),
            "packet": bytes.fromhex(v["packet"]),
        })
    return out


VECTORS = _load_vectors()
DATA4 = _ip4("10.77.0.2", "10.77.0.1", b"ping")
DATA6 = _ip6("fd77::2", "fd77::1", b"ping")
TREQ = timesync.request_body(b"N" * timesync.NONCE_LEN, BASE)


def _build_pool():
    pool = []
    c2s, s2c = keys.CLIENT_TO_SERVER, keys.SERVER_TO_CLIENT
    counters = (0, 1, 2, 0xFFFFFFFF, 8191, 8192, 1 << 20, (1 << 20) + 1, 0x12345678, 0x5A5A5A5A)
    n = [0]

    def seal(psk, direction, sid, cid, ptype, ts, body, counter=None, header_cid=None):
        key = keys.direction_key(psk, direction, sid, cid)
        if counter is None:
            counter = counters[n[0] % len(counters)]
            n[0] += 1
        cid_on_wire = cid if header_cid is None else header_cid
        packet = aead.ReferenceSivContext(key, cid_on_wire, sid).seal(ptype, ts, counter, body)
        STATIC_GENUINE.setdefault(packet, (key, ts, body))
        pool.append(packet)

    deltas = (0, 1, -1, -5, -6, 127, 128, -128, -129, 255, 256, -256, 300, 256 * 5,
              -256 * 48, 256 * 48, 256 * 49)
    for cid, psk in ((1, PSKS[0]), (2, PSKS[1]), (65535, PSKS[2]), (3, PSKS[3])):
        for i, d in enumerate(deltas):
            seal(psk, c2s, 7, cid, 0x01, BASE + d, DATA6 if i % 2 else DATA4)
            seal(psk, c2s, 7, cid, 0x02, BASE + d, wire.KEEPALIVE_BODY)
            seal(psk, s2c, 7, cid, 0x81, BASE + d, DATA4 if i % 2 else DATA6)
            seal(psk, s2c, 7, cid, 0x82, BASE + d, wire.KEEPALIVE_BODY)
        seal(psk, c2s, 7, cid, 0x03, 0, TREQ)
        seal(psk, c2s, 7, cid, 0x03, 0, TREQ[:-1])  # wrong-size time request
        seal(psk, s2c, 7, cid, 0x84, 0, TREQ)
    for ts in (0, 1, 5, 127, 128, 200, 255, 256, 86400):  # routers booting in 1970
        seal(PSKS[0], c2s, 7, 1, 0x01, ts, DATA4)
        seal(PSKS[0], s2c, 7, 1, 0x81, ts, DATA4)
    for ts in (2**32, 2**32 + 5, 2**63 - 1, 2**63, 2**64 - 1, 2**64 - 256 * 49):  # far future
        seal(PSKS[0], c2s, 7, 1, 0x01, ts, DATA4)
        seal(PSKS[0], s2c, 7, 1, 0x81, ts, DATA4)
    for ptype in (0x00, 0x04, 0x05, 0x7F, 0x80, 0x83, 0x85, 0xFF):  # types nobody accepts
        seal(PSKS[0], c2s, 7, 1, ptype, BASE, DATA4)
        seal(PSKS[0], s2c, 7, 1, ptype, BASE, DATA4)
    seal(PSKS[0], c2s, 7, 1, 0x03, BASE, TREQ)  # untimed type sealed with a timestamp
    seal(PSKS[0], c2s, 7, 1, 0x01, 0, DATA4)  # timed type sealed with T = 0
    seal(PSKS[0], c2s, 0, 1, 0x01, BASE, DATA4)  # another server's id (cross-server replay)
    seal(PSKS[0], s2c, 7, 1, 0x01, BASE, DATA4)  # reflection: c2s type under the s2c key
    seal(PSKS[0], c2s, 7, 1, 0x81, BASE, DATA4)  # reflection: s2c type under the c2s key
    seal(PSKS[0], c2s, 7, 1, 0x01, BASE, DATA4, header_cid=2)  # client 1's key, id 2 on wire
    seal(PSKS[0], c2s, 7, 1, 0x01, BASE, _ip4("10.99.0.9", "10.77.0.1"))  # spoofed inner src
    seal(PSKS[0], c2s, 7, 1, 0x01, BASE, bytes(1420))
    seal(PSKS[0], s2c, 7, 1, 0x81, BASE, bytes(1420))
    seal(PSKS[0], c2s, 7, 1, 0x01, BASE, bytes(wire.MAX_BODY))
    for v in VECTORS:
        STATIC_GENUINE.setdefault(v["packet"], (v["key"], v["timestamp"], v["body"]))
        pool.append(v["packet"])
    return pool


POOL = _build_pool()


@dataclass(frozen=True)
class World:
    """Who the session under test is: server id, configured clients, the client's own id."""

    name: str
    server_id: int
    clients: dict  # client id -> psk
    me: int
    strangers: dict  # senders the server does not know: client id -> psk


WORLDS = [World("harness", 7, {1: PSKS[0], 2: PSKS[1], 65535: PSKS[2]}, 1, {3: PSKS[3]})]
WORLDS += [World(v["name"], v["server_id"], {v["client_id"]: v["psk"]}, v["client_id"], {})
           for v in VECTORS]


_direction_key = keys.direction_key


def install_speedups() -> None:
    """Memoise HKDF in this process (fuzz/run.py's workers only).

    The key schedule is deterministic and not under test here; every input builds fresh
    sessions, and this keeps that cheap (the real function still runs once per distinct
    argument tuple). Not done on import, so importing the harness changes nothing."""
    if keys.direction_key is _direction_key:
        keys.direction_key = functools.lru_cache(maxsize=4096)(_direction_key)


def _rng(seed: int):
    return random.Random(seed).randbytes


# =========================================================================== known-issue signatures

_NOW_SAFE = 9.2e12  # |now| * 1e6 fits an int64 (time-sync bodies)
_U64_EDGE = 2**64 - 256 * (session.SKEW_PROBE_WINDOWS + 2)


def _innermost_product_frame(exc):
    """(file name, function) of the innermost vpncrypt frame of exc's traceback."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "/vpncrypt/" in f.filename.replace(os.sep, "/")]
    return (os.path.basename(frames[-1].filename), frames[-1].name) if frames else (None, None)


def classify_session_error(exc, now, packet=b"", op="open"):
    """Which known bug an exception from the session API is, or None."""
    if not isinstance(exc, (OverflowError, ValueError, struct.error, IndexError)):
        return None
    where = _innermost_product_frame(exc)
    if isinstance(exc, IndexError):
        if where == ("session.py", "diagnose") and len(packet) < 4:
            return "FUZZ-3"
        return None
    if where[0] == "timesync.py" and where[1] in ("request_body", "response_body") \
            and not (math.isfinite(now) and abs(now) < _NOW_SAFE):
        return "FUZZ-2"
    if where in (("session.py", "open"), ("session.py", "_diagnose"), ("session.py", "diagnose"),
                 ("aead.py", "open")) \
            and not (math.isfinite(now) and now < _U64_EDGE):
        return "FUZZ-1"
    return None


# =========================================================================== session targets


class SessionProgram:
    """Runs one input's program against both crypto paths (see the module docstring)."""

    MAX_STEPS = 64

    def __init__(self, world: World, role: str):
        RUN_GENUINE.clear()
        self.world, self.role = world, role
        self.now = BASE + 0.5
        self.sent = []  # packets sealed while running (for replays and mutations)
        if role == "server":
            self.cores = []
            for p in PATHS:
                core = session.ServerCore(world.server_id, ORACLE[p], rng=_rng(1))
                for cid, psk in world.clients.items():
                    core.set_client(cid, psk)
                self.cores.append(core)
            self._peers = {}
        else:
            psk = world.clients[world.me]
            self.cores = [session.ClientSession(world.me, world.server_id, psk, ORACLE[p],
                                                rng=_rng(1)) for p in PATHS]
            self.peer = session.ServerCore(world.server_id, ORACLE["native"], rng=_rng(2))
            self.peer.set_client(world.me, psk)

    # -- helpers ---------------------------------------------------------------------------

    def client_peer(self, cid):
        """The harness's own client `cid` (server role): seals what the server opens."""
        peer = self._peers.get(cid)
        if peer is None:
            psk = self.world.clients.get(cid) or self.world.strangers[cid]
            peer = session.ClientSession(cid, self.world.server_id, psk, ORACLE["native"],
                                         rng=_rng(100 + cid))
            self._peers[cid] = peer
        return peer

    def sender_ids(self):
        return list(self.world.clients) + list(self.world.strangers)

    def pick(self, r: Reader) -> bytes:
        i = r.u16()
        items = self.sent if (i & 0x8000 and self.sent) else POOL
        return items[i % len(items)]

    def sender_time(self) -> int:
        now = self.now
        return int(now) if math.isfinite(now) and 0 <= now < 2**64 else BASE

    # -- running -----------------------------------------------------------------------------

    def run(self, r: Reader) -> None:
        for _ in range(self.MAX_STEPS):
            if not r.left():
                break
            self.step(r)

    def step(self, r: Reader) -> None:
        op = r.u8() % 12
        if op == 0:  # raw bytes
            n = r.u16() % 2048 if r.u8() & 1 else r.u8()
            self.deliver(r.take(n))
        elif op == 1:  # a genuine packet (pool or sealed earlier in this input: a replay)
            self.deliver(self.pick(r))
        elif op == 2:  # one bit flipped
            p = bytearray(self.pick(r))
            bit = r.u16() % (8 * len(p))
            p[bit // 8] ^= 1 << (bit % 8)
            self.deliver(bytes(p))
        elif op == 3:  # one byte set
            p = bytearray(self.pick(r))
            p[r.u16() % len(p)] = r.u8()
            self.deliver(bytes(p))
        elif op == 4:  # splice of two genuine packets
            a, b = self.pick(r), self.pick(r)
            cut = r.u16() % (min(len(a), len(b)) + 1)
            self.deliver(a[:cut] + b[cut:])
        elif op == 5:  # truncate or extend
            p = self.pick(r)
            n = r.u16() % (len(p) + 64)
            self.deliver(p[:n] if n <= len(p) else p + r.take(n - len(p)))
        elif op == 6:
            self.set_now(r)
        elif op == 7:
            self.seal(r)
        elif op == 8:
            self.time_sync(r)
        elif op == 9:
            self.rekey(r)
        elif op == 10:
            self.diagnose(r)
        else:  # a genuine tag and ciphertext under a header of the fuzzer's choice
            p = self.pick(r)
            self.deliver(r.take(8).ljust(8, b"\0") + p[8:])

    def set_now(self, r: Reader) -> None:
        mode = r.u8() % 6
        if mode == 0:
            self.now = BASE + r.i16() + r.u8() / 256
        elif mode == 1:
            self.now = r.u16() + r.u8() / 256  # a router without an RTC, in 1970
        elif mode == 2:
            self.now = r.f64()  # anything, including inf and nan
        elif mode == 3:
            self.now += r.u8() / 16
        elif mode == 4:
            self.now -= r.u8() / 16
        else:
            self.now = float(r.pick((2**32, 2**63, 2**64, 2**64 - 2**12, 2**64 - 2**16,
                                     9.2e12, 9.3e12, -9.3e12, -1.0, 0.0, 127.5, 128.0)))

    def deliver(self, packet: bytes):
        results = []
        for core in self.cores:
            try:
                result = core.open(packet, self.now)
            except Exception as e:
                known(classify_session_error(e, self.now, packet), e)
                raise
            self.check_result(result, packet)
            results.append(result)
        if results[0] != results[1]:
            raise OracleFailure(f"native and reference sessions disagree on {_hex(packet)} "
                                f"at now={self.now!r}: {results[0]!r} != {results[1]!r}")
        return results[0]

    def check_result(self, result, packet) -> None:
        if not isinstance(result, (Opened, Dropped, Reply)):
            raise OracleFailure(f"open returned {result!r}")
        g = genuine(packet)
        if isinstance(result, Opened):
            if g is None:
                raise Forgery(f"Opened for a packet the harness never sealed: {_hex(packet)}")
            if result.body != g[2] or result.client_id != int.from_bytes(packet[1:3], "big"):
                raise OracleFailure(f"Opened with the wrong body or client id: {result!r}")
        elif isinstance(result, Reply):
            if g is None:
                raise Forgery(f"time-sync Reply to a packet the harness never sealed: "
                              f"{_hex(packet)}")
            if genuine(result.packet) is None:
                raise OracleFailure("Reply packet not sealed through the session's context")
        else:
            if not isinstance(result.reason, Drop):
                raise OracleFailure(f"Dropped with a reason that is not a Drop: {result!r}")
            authenticated = result.reason in (Drop.CLOCK_SKEW, Drop.UNSOLICITED) or (
                result.reason == Drop.MALFORMED and result.client_id is not None)
            if authenticated and g is None:
                raise Forgery(f"{result!r} implies authentication of {_hex(packet)}")

    def seal(self, r: Reader) -> None:
        """The harness's peer seals a fresh packet at a skewed clock; maybe delivers it."""
        flags = r.u8()
        if self.role == "server":
            cid = r.pick(self.sender_ids())
            ctx = self.client_peer(cid).sender.ctx
            kinds = (0x01, 0x02, 0x03)
        else:
            cid = self.world.me
            ctx = self.peer.peer(cid).sender.ctx
            kinds = (0x81, 0x82, 0x84)
        ptype = r.u8() if flags & 1 else kinds[(flags >> 1) % 3]
        skew = r.i16() * (r.u8() % 4 + 1) if flags & 8 else r.i8()
        ts = 0 if ptype in wire.UNTIMED else (self.sender_time() + skew) % 2**64
        counter = r.u32() if flags & 0x10 else (0x1000 + len(self.sent) + r.u8())
        bsel = r.u8() % 6
        if bsel == 0:
            body = wire.KEEPALIVE_BODY
        elif bsel == 1:
            body = timesync.request_body(r.take(16).ljust(16, b"\0"), BASE + r.i16())
        elif bsel == 2:
            body = _ip4(r.pick(("10.77.0.2", "10.77.0.3", "10.99.0.9", "0.0.0.0")),
                        "10.77.0.1", r.take(r.u8() % 32))
        elif bsel == 3:
            body = _ip6(r.pick(("fd77::2", "fd77::3", "fe80::1", "::")), "fd77::1",
                        r.take(r.u8() % 32))
        elif bsel == 4:
            body = r.take(r.u8() + 1) or b"\x01"
        else:
            body = bytes(r.pick((23, 25, 1420)))
        packet = ctx.seal(ptype, ts, counter, body)
        self.sent.append(packet)
        if not flags & 0x20:
            self.deliver(packet)

    def time_sync(self, r: Reader) -> None:
        flags = r.u8()
        if self.role == "server":
            peer = self.client_peer(r.pick(self.sender_ids()))
            now = self.now if abs(self.now) < _NOW_SAFE else BASE  # the peer's clock is sane
            request = peer.time_request(now)
            self.sent.append(request)
            result = self.deliver(request)
            if isinstance(result, Reply):
                self.sent.append(result.packet)
                if not flags & 1:
                    try:
                        peer.open(result.packet, self.now)
                    except Exception as e:
                        known(classify_session_error(e, self.now, result.packet), e)
                        raise
        else:
            requests = []
            for core in self.cores:
                try:
                    requests.append(core.time_request(self.now))
                except Exception as e:
                    known(classify_session_error(e, self.now, op="time_request"), e)
                    raise
            if requests[0] != requests[1]:
                raise OracleFailure("the two paths sealed different time requests")
            self.sent.append(requests[0])
            try:
                reply = self.peer.open(requests[0], self.now + r.i8() / 8)
            except Exception as e:
                known(classify_session_error(e, self.now), e)
                raise
            if isinstance(reply, Reply):
                self.sent.append(reply.packet)
                if not flags & 1:
                    self.deliver(reply.packet)

    def rekey(self, r: Reader) -> None:
        if self.role != "server":
            floor = self.sender_time() + r.i8()
            for core in self.cores:  # replay state restored after a daemon restart
                core.receiver.window.restore(floor)
            return
        cid = r.pick(self.sender_ids())
        action = r.u8() % 4
        psk = PSKS[r.u8() % len(PSKS)]
        floor = self.sender_time() + r.i8()  # replay state restored after a daemon restart
        for core in self.cores:
            if action == 0:
                core.remove_client(cid)
            elif action == 1:
                core.set_client(cid, psk)
            elif action == 2:
                core.set_client(cid, self.world.clients.get(cid) or self.world.strangers[cid])
            elif cid in core.client_ids():
                core.peer(cid).receiver.window.restore(floor)

    def diagnose(self, r: Reader) -> None:
        """What the daemon does with the native loop's AUTH/STALE samples."""
        sel = r.u8()
        packet = self.pick(r) if sel & 1 else r.take(r.u8())
        if sel & 2 and packet:
            p = bytearray(packet)
            p[r.u16() % len(p)] ^= 1 << (r.u8() % 8)
            packet = bytes(p)
        reason = Drop.STALE if sel & 4 else Drop.AUTH
        results = []
        for core in self.cores:
            if self.role == "server":
                cid = int.from_bytes(packet[1:3], "big") if len(packet) >= 3 else self.world.me
                if cid not in core.client_ids():
                    return
                receiver = core.peer(cid).receiver
            else:
                receiver = core.receiver
            try:
                result = receiver.diagnose(packet, self.now, reason)
            except Exception as e:
                known(classify_session_error(e, self.now, packet, op="diagnose"), e)
                raise
            if not isinstance(result, Dropped) or result.reason not in (reason, Drop.CLOCK_SKEW):
                raise OracleFailure(f"diagnose returned {result!r}")
            if result.reason == Drop.CLOCK_SKEW and genuine(packet) is None:
                raise Forgery(f"diagnose found a clock skew in a forged packet {_hex(packet)}")
            results.append(result)
        if results[0] != results[1]:
            raise OracleFailure(f"paths disagree in diagnose: {results}")


@_target("open_server")
def open_server(data: bytes) -> None:
    r = Reader(data)
    SessionProgram(WORLDS[r.u8() % len(WORLDS)], "server").run(r)


@_target("open_client")
def open_client(data: bytes) -> None:
    r = Reader(data)
    SessionProgram(WORLDS[r.u8() % len(WORLDS)], "client").run(r)


# =========================================================================== siv_diff

SIV_KEYS = [(keys.direction_key(PSKS[0], d, 7, 1), 1, 7) for d in (b"c2s", b"s2c")]
SIV_KEYS += [(keys.direction_key(PSKS[i], b"c2s", 7, c), c, 7) for i, c in ((1, 2), (2, 65535))]
SIV_KEYS += [(v["key"], v["client_id"], v["server_id"]) for v in VECTORS]


@functools.lru_cache(maxsize=256)
def _siv_pair(key, cid, sid):
    return RAW_CLASSES["native"](key, cid, sid), RAW_CLASSES["reference"](key, cid, sid)


def _both_open(nat, ref, packet, ts, key, wrap=bytes):
    a = nat.open(wrap(packet), ts)
    b = ref.open(wrap(packet), ts)
    if a != b:
        raise OracleFailure(f"native/reference open disagree at T={ts} on {_hex(packet)}: "
                            f"native={a!r:.60} reference={b!r:.60}")
    if a is not None:
        check_opened(key, packet, ts, a, "native+reference")
    return a


@_target("siv_diff")
def siv_diff(data: bytes) -> None:
    RUN_GENUINE.clear()
    r = Reader(data)
    sel = r.u8()
    if sel & 0x80:
        key, cid, sid = r.take(64).ljust(64, b"\0"), r.u16(), r.u32()
    else:
        key, cid, sid = r.pick(SIV_KEYS)
    nat, ref = _siv_pair(key, cid, sid)
    wrap = (bytes, bytearray, memoryview)[(sel >> 4) % 3]
    mode = sel % 4
    if mode == 0:  # anything at any u64 timestamp
        ts = r.u64()
        _both_open(nat, ref, r.rest(), ts, key, wrap)
    elif mode == 1:  # anything, at the timestamp a receiver near BASE would rebuild
        packet = r.rest()
        low = packet[3] if len(packet) > 3 else 0
        ts = wire.full_timestamp(low, BASE + (packet[0] if packet else 0))
        _both_open(nat, ref, packet, ts, key, wrap)
    elif mode == 2:  # seal on both paths: identical, round trip, no other T, no bit flip
        ptype, ts, counter = r.u8(), r.u64(), r.u32()
        body = r.take(r.u16() % 2048 + 1) or b"\0"
        pn = nat.seal(ptype, ts, counter, wrap(body))
        pr = ref.seal(ptype, ts, counter, wrap(body))
        if pn != pr:
            raise OracleFailure(f"native/reference seal differ: {_hex(pn)} != {_hex(pr)}")
        if pn[:8] != struct.pack(">BHBI", ptype, cid, ts & 0xFF, counter):
            raise OracleFailure(f"bad header {pn[:8].hex()}")
        RUN_GENUINE[pn] = (key, ts, body)
        if _both_open(nat, ref, pn, ts, key, wrap) != body:
            raise OracleFailure("a freshly sealed packet does not open")
        other = ts ^ (256 << (r.u8() % 56))  # same low byte, different full timestamp
        _both_open(nat, ref, pn, other, key, wrap)
        flipped = bytearray(pn)
        bit = r.u16() % (8 * len(pn))
        flipped[bit // 8] ^= 1 << (bit % 8)
        _both_open(nat, ref, bytes(flipped), ts, key, wrap)
    else:  # a genuine packet, mutated, at its own timestamp
        packet = bytearray(r.pick(POOL))
        g = STATIC_GENUINE[bytes(packet)]
        if r.u8() & 1:
            pos = r.u16() % len(packet)
            packet[pos] ^= r.u8() or 1
        else:
            packet = packet[: r.u16() % (len(packet) + 1)] + r.take(r.u8())
        ts = g[1] if r.u8() & 1 else r.u64()
        _both_open(nat, ref, bytes(packet), ts, key, wrap)


# =========================================================================== window_diff

_SPECIAL_STEPS = (replay.WINDOW - 1, replay.WINDOW, replay.WINDOW + 1, replay.MAX_JUMP,
                  replay.MAX_JUMP + 1, -replay.WINDOW, -replay.WINDOW + 1, -replay.WINDOW - 1,
                  2**31, 2**32 - 1, 1, 0, -1)
_TS_MAX = 2**63 - 1


@_target("window_diff")
def window_diff(data: bytes) -> None:
    r = Reader(data)
    ref, nat = replay.ReplayWindow(), NativeWindow()
    ts = BASE if r.u8() & 1 else r.u64() % (_TS_MAX + 1)
    counter = r.u32()
    for _ in range(256):
        if not r.left():
            break
        op = r.u8()
        if op >> 5 == 7:  # restore from saved state (a receiver restart)
            floor = max(0, min(_TS_MAX, ts + r.i8()))
            ref.restore(floor)
            nat.restore(floor)
            continue
        dts = r.i32() if op & 0x10 else (op & 0x0F) - 6
        csel = (op >> 5) % 4
        if csel == 0:
            dc = r.i8()
        elif csel == 1:
            dc = r.i16()
        elif csel == 2:
            dc = r.pick(_SPECIAL_STEPS)
        else:
            dc = r.u32()
        ts = max(0, min(_TS_MAX, ts + dts))
        counter = (counter + dc) & 0xFFFFFFFF
        expected = ref.check(ts, counter)
        got = nat.check(ts, counter)
        if got != (0 if expected is None else int(expected)):
            raise OracleFailure(f"check({ts}, {counter}): native {got} != reference {expected!r}")
        if expected is None:
            a, b = ref.accept(ts, counter), nat.accept(ts, counter)
            if a != b:
                raise OracleFailure(f"accept({ts}, {counter}): native {b} != reference {a}")
            if ref.check(ts, counter) is None or nat.check(ts, counter) == 0:
                raise OracleFailure(f"({ts}, {counter}) accepted twice (a replay)")


# =========================================================================== config

def _b64(label: str) -> str:
    return base64.b64encode(_psk(label)).decode()


KEY_GOOD, KEY_GOOD2, KEY_OPEN = _b64("kf-good"), _b64("kf-good2"), _b64("kf-open")
INLINE_KEYS = ["3q2+7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
               "3q2+7wEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", _b64("inline-1"), _b64("inline-2")]
FILE_KEYS = [KEY_GOOD, KEY_GOOD2, KEY_OPEN]
_KEY_TEXT = re.compile(r"[A-Za-z0-9+/]{43}=")
_TMP: Path | None = None


def tmpdir() -> Path:
    """The harness's scratch directory (key files the configs point at, the file under test)."""
    global _TMP
    if _TMP is not None:
        return _TMP
    base = os.environ.get("VPNCRYPT_FUZZ_TMP")
    d = Path(base) if base else Path(tempfile.mkdtemp(prefix="vpncrypt-fuzz-"))
    d.mkdir(parents=True, exist_ok=True)

    def write(name, text, mode=0o600):
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        os.chmod(p, mode)

    write("good.key", KEY_GOOD + "\n")
    write("subdir/good2.key", KEY_GOOD2)
    write("open.key", KEY_OPEN + "\n", 0o644)
    write("bad.key", "not a key\n")
    write("big.key", "A" * 5000)
    (d / "dir.key").mkdir(exist_ok=True)
    for name, target in (("link.key", "good.key"), ("dangling.key", "nowhere.key")):
        if not os.path.lexists(d / name):
            os.symlink(target, d / name)
    if not os.path.exists(d / "fifo.key"):
        os.mkfifo(d / "fifo.key", 0o600)
    (d / "kf").mkdir(exist_ok=True)
    _TMP = d
    return d


def _example_configs():
    """Every INI example in README.md and the man pages."""
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs" / "man").glob("*.scd"))]:
        text = doc.read_text()
        for block in re.findall(r"```(?:ini)?\n(.*?)```", text, re.S):
            if re.search(r"^\[(server|client)", block, re.M):
                out.append(block)
    return out


EXAMPLES = _example_configs()

_SECTIONS = ["server", "client", "client laptop", "client phone", "client office-router",
             " server ", "Server", "client  a", "client a b", "client " + INLINE_KEYS[0],
             "client " + "x" * 65, "client é", "DEFAULT", "", "client\tz", "client\x0bq",
             "[client]", "client laptop]"]
_KEYS = list(dict.fromkeys(config.SERVER_KEYS + config.CLIENT_KEYS + config.PEER_KEYS))
_KEYS += ["Key", "KEY_FILE", "allowed-ips", "keyfile", "foo", "key file", "a" * 40,
          INLINE_KEYS[1]]
_GOOD = {
    "listen": ["0.0.0.0:51900", "[::]:51900", "127.0.0.1:1", "[fd00::1]:65535"],
    "interface": ["vpn0", "wg0", "a" * 15],
    "address": ["10.77.0.1/24, fd77::1/64", "10.77.0.2/24", "fd77::2/64", "10.77.0.1/32"],
    "server_id": ["7", "0", "4294967295"],
    "mtu": ["1420", "576", "1280", "65483"],
    "user": ["vpncrypt", "nobody"],
    "state_dir": ["/run/vpncrypt", "/tmp/x"],
    "id": ["1", "2", "65535"],
    "key": INLINE_KEYS,
    "key_file": ["good.key", "subdir/good2.key", "link.key", "open.key", "bad.key",
                 "dir.key", "fifo.key", "dangling.key", "big.key", "missing.key"],
    "allowed_ips": ["10.77.0.2/32, fd77::2/128", "10.77.0.3/32", "192.168.50.0/24",
                    "0.0.0.0/0", "10.77.0.0/24", "fd77::/64"],
    "server": ["vpn.example.org:51900", "[2001:db8::1]:51900", "10.0.0.1:1", "a:1"],
    "routes": ["10.77.0.0/24", "192.168.10.0/24, fd00::/8"],
    "keepalive": ["25", "0", "3600"],
}
_ATOMS = ["", " ", "0", "1", "-1", "65536", "4294967296", "00001", "1e3", "0x10", "\uff11",
          "\u0663", "/", ":", "[", "]", "%", ",", "=", ";", "#", "\\", "\t", "\x00", "\x0b",
          "\xa0", "\u2028", "\ud800", "\udcff", "\u00e9", "localhost", "::", "::ffff:1.2.3.4",
          "fe80::1%eth0", "10.0.0.0/8", "10.0.0.1/8", "255.255.255.255/32", "ff02::1",
          "224.0.0.1", '"', "'", "..", "a.", "-a", "x" * 64, "/etc/vpncrypt/laptop.key",
          "1.2.3.4/255.255.0.0", "fd77::1/129", "0.0.0.0", "[::1]", "\n", "\r", "%25"]
_WS = [" ", "\t", "", "  ", "\x0b", "\x0c", "\xa0", "\u3000", "\x1c", "\x85"]
_SEPS = [" = ", "=", " =", "= ", "\t=\t", " : ", ":", " ", "\x0b=\x0b", "\xa0=\xa0", " == "]


def _gen_value(r: Reader, key: str) -> str:
    sel = r.u8() % 9
    if sel == 0:
        return r.pick(_GOOD.get(key) or _GOOD["address"])
    if sel == 1:
        return "".join(r.pick(_ATOMS) for _ in range(r.u8() % 4 + 1))
    if sel == 2:
        n = r.u8()
        if n >= 248:  # a very long number
            return "1" * (r.u16() % 6000 + 1)
        return str(r.pick((0, 1, 2, 575, 576, 1279, 1280, 3600, 3601, 65483, 65484, 65535,
                           65536, 2**32 - 1, 2**32, r.u32(), r.u16())))
    if sel == 3:  # IP-ish
        if r.u8() & 1:
            ip = socket.inet_ntop(socket.AF_INET6, r.take(16).ljust(16, b"\0"))
        else:
            ip = socket.inet_ntoa(r.take(4).ljust(4, b"\0"))
        if r.u8() & 1:
            ip += "%" + r.pick(_ATOMS + INLINE_KEYS + ["eth0", "1"])
        if r.u8() & 1:
            ip += "/" + str(r.u8() % 140)
        return ip
    if sel == 4:  # key material, raw and decorated
        k = r.pick(INLINE_KEYS + FILE_KEYS)
        deco = r.u8() % 8
        return (k, f'"{k}"', f"'{k}'", k[:-1], k + "=", k + "x", k.lower(), f"{k} {k}")[deco]
    if sel == 5:
        return r.take(r.u8() % 64).decode("utf-8", "surrogateescape")
    if sel == 6:  # endpoints
        host = r.pick(["vpn.example.org", "[2001:db8::1]", "10.0.0.1", "[::]", "[fe80::1%eth0]",
                       f"[ff02::1%{INLINE_KEYS[2].replace('/', '_')}]", "0.0.0.0",
                       "[1.2.3.4]", "a..b", "-x.org", "x" * 64 + ".org", "1.2.3", ""])
        return host + r.pick([":51900", ":0", ":65536", ":", "", ":x", ":" + "9" * 10])
    if sel == 7:
        return ", ".join(r.pick(_GOOD[r.pick(list(_GOOD))]) for _ in range(r.u8() % 3 + 1))
    return str(tmpdir() / r.pick(_GOOD["key_file"]))


def _gen_line(r: Reader) -> str:
    sel = r.u8() % 10
    if sel <= 3:
        key = r.pick(_KEYS)
        return key + " = " + _gen_value(r, key)
    if sel == 4:
        return "[" + r.pick(_SECTIONS) + "]" + r.pick(["", "", " ; c", " junk", "]"])
    if sel == 5:
        return r.pick(["# comment", "; comment", "  # indented", "#" + INLINE_KEYS[3]])
    if sel == 6:
        return ""
    if sel == 7:  # continuation line
        return r.pick(_WS[:2] + ["    "]) + _gen_value(r, "allowed_ips")
    if sel == 8:
        return r.take(r.u8() % 48).decode("utf-8", "surrogateescape")
    key = r.pick(_KEYS)
    return (r.pick(_WS) + key + r.pick(_SEPS) + _gen_value(r, key)
            + r.pick(["", " ; comment", ";x", " # c", "\t#", " " + INLINE_KEYS[0]]))


def generate_config(r: Reader) -> str:
    """A structure-aware INI text: a documented example edited line by line."""
    t = r.u8() % (len(EXAMPLES) + 1)
    lines = EXAMPLES[t - 1].splitlines() if t else []
    lines = [re.sub(r"key_file = /etc/vpncrypt/\S+", "key_file = good.key", ln)
             if r.u8() & 1 else ln for ln in lines]
    for _ in range(r.u8() % 24):
        action = r.u8() % 4
        i = r.u8() % (len(lines) + 1)
        if action == 0 or not lines:
            lines.insert(i, _gen_line(r))
        elif action == 1:
            lines[i % len(lines)] = _gen_line(r)
        elif action == 2:
            del lines[i % len(lines)]
        else:
            lines.append(_gen_line(r))
    return r.pick(["\n", "\n", "\r\n", "\r"]).join(lines) + r.pick(["\n", ""])


def _key_texts(text: str):
    found = {m for m in _KEY_TEXT.findall(text)}
    return {k for k in found if len(base64.b64decode(k)) == keys.PSK_LEN} | set(FILE_KEYS)


def classify_config_error(exc, text):
    if isinstance(exc, ValueError) and "Exceeds the limit" in str(exc) and "digits" in str(exc):
        return "FUZZ-4"
    if isinstance(exc, UnicodeEncodeError) and "surrogates not allowed" in str(exc):
        return "FUZZ-5"
    if isinstance(exc, ValueError) and "embedded null" in str(exc):
        return "FUZZ-5"
    return None


def classify_leak(message: str, leaked: str):
    """FUZZ-6 when the key text sits where the known leaks put it."""
    at = message.find(leaked[:43])
    before = message[:at]
    if re.search(r"%[^\s%/,]*$", before):  # an IPv6 scope id
        return "FUZZ-6"
    if "key_file: " in before and "key file" in message[at:]:  # the missing key file's path
        return "FUZZ-6"
    if re.search(r"\[[^\]]*$", before):  # a raw section name
        return "FUZZ-6"
    return None


def check_config_error(e, path, text) -> None:
    if not isinstance(e, config.ConfigError):
        known(classify_config_error(e, text), e)
        raise e
    msg = str(e)
    if not msg or len(msg.splitlines()) != 1 or "\n" in msg or "\r" in msg:
        raise OracleFailure(f"ConfigError is not exactly one line: {msg!r}")
    if not msg.startswith(path):
        raise OracleFailure(f"ConfigError does not start with the path: {msg!r}")
    if e.line is not None and not 1 <= e.line <= text.count("\n") + text.count("\r") + 1:
        raise OracleFailure(f"ConfigError names line {e.line}, the file has fewer: {msg!r}")
    for k in _key_texts(text):
        if k[:43] in msg:
            known(classify_leak(msg, k))
            raise OracleFailure(f"ConfigError shows key material {k!r}: {msg!r}")


def _inline_key_used(text: str) -> bool:
    """Does any section set `key` (as configparser reads the file)?"""
    text = text.replace("\r\n", "\n").replace("\r", "\n").removeprefix("\ufeff")
    cp = config.ini._new_parser()
    try:
        cp.read_string(text)
    except Exception:
        return False
    return any(cp.has_option(s, "key") for s in cp.sections())


def check_config_ok(cfg, text, file_mode=None) -> None:
    shown = repr(cfg) + str(cfg)
    held = [cfg.key] if isinstance(cfg, config.ClientConfig) else [c.key for c in cfg.clients]
    for k in held:
        b64 = base64.b64encode(k).decode()
        if b64[:43] in shown or repr(k) in shown or k.hex() in shown:
            raise OracleFailure(f"repr() of the config shows the key {b64!r}")
    if isinstance(cfg, config.ServerConfig):
        ids = [c.id for c in cfg.clients]
        if len(set(ids)) != len(ids) or not all(1 <= i <= 0xFFFF for i in ids):
            raise OracleFailure(f"bad client ids accepted: {ids}")
        ks = [c.key for c in cfg.clients]
        if len(set(ks)) != len(ks) or not all(len(k) == 32 for k in ks):
            raise OracleFailure("duplicate or malformed keys accepted")
        nets = [n for c in cfg.clients for n in c.allowed_ips]
        for i, a in enumerate(nets):
            for b in nets[i + 1:]:
                if a.version == b.version and a.overlaps(b):
                    raise OracleFailure(f"overlapping allowed_ips accepted: {a} {b}")
        if not 0 <= cfg.server_id <= 0xFFFFFFFF or not 1 <= cfg.listen_port <= 65535:
            raise OracleFailure(f"out-of-range value accepted: {cfg!r}")
    else:
        if not 1 <= cfg.id <= 0xFFFF or len(cfg.key) != 32 or not 0 <= cfg.keepalive <= 3600:
            raise OracleFailure(f"out-of-range value accepted: {cfg!r}")
        if not 1 <= cfg.server_port <= 65535:
            raise OracleFailure(f"bad port accepted: {cfg!r}")
    if cfg.mtu is not None and not config.MIN_MTU <= cfg.mtu <= config.MAX_MTU:
        raise OracleFailure(f"mtu out of range accepted: {cfg.mtu}")
    if len(cfg.interface.encode("utf-8", "surrogatepass")) > 15:
        raise OracleFailure(f"interface name too long accepted: {cfg.interface!r}")
    if file_mode is not None and file_mode & 0o077 and _inline_key_used(text):
        known("FUZZ-7")
        raise OracleFailure(f"a file with mode {file_mode:04o} holding an inline key was "
                            "accepted")


def _run_parse(text: str) -> None:
    path = str(tmpdir() / "fuzz.conf")
    try:
        cfg = config.parse(text, path)
    except Exception as e:
        check_config_error(e, path, text)
        return
    check_config_ok(cfg, text)


def _run_load(data: bytes, mode: int) -> None:
    path = tmpdir() / "fuzz.conf"
    path.write_bytes(data)
    os.chmod(path, mode)
    text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape")
    try:
        cfg = config.load(str(path))
    except Exception as e:
        check_config_error(e, str(path), text)
        return
    check_config_ok(cfg, text, mode)


_MODES = (0o600, 0o600, 0o400, 0o640, 0o644, 0o604, 0o700, 0o666)


@_target("config")
def config_target(data: bytes) -> None:
    r = Reader(data)
    sel = r.u8()
    how = sel % 4
    if how == 0:  # config.parse on arbitrary text (lone surrogates included)
        _run_parse(r.rest().decode("utf-8", "surrogateescape"))
    elif how == 1:  # config.load on arbitrary bytes
        mode = r.u16() & 0o777 if sel & 4 else _MODES[(sel >> 3) % 8]
        _run_load(r.rest(), mode)
    else:  # structure-aware
        text = generate_config(r)
        if how == 2:
            _run_parse(text)
        else:
            data = text.encode("utf-8", "surrogatepass")
            _run_load(data, _MODES[(sel >> 2) % 8])


# =========================================================================== key_file

_KEYFILE_WS = [" ", "\n", "\r\n", "\t", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", ""]


def _key_file_model(kind, mode, content):
    """(accepted?, key) for load_key_file, from the documented rules alone."""
    if kind not in ("file", "symlink"):
        return False, None
    if mode & 0o077 or len(content) > config.MAX_KEY_FILE_SIZE:
        return False, None
    if os.geteuid() != 0 and not mode & 0o400:
        return False, None
    try:
        text = content.decode("ascii").strip()
    except UnicodeDecodeError:
        return False, None
    if not re.fullmatch(r"[A-Za-z0-9+/]{43}=", text):
        return False, None
    return True, base64.b64decode(text)


@_target("key_file")
def key_file(data: bytes) -> None:
    r = Reader(data)
    sel = r.u8()
    kind = ("file", "file", "file", "file", "symlink", "dir", "fifo", "missing")[sel % 8]
    mode = r.u16() & 0o7777 if sel & 8 else r.pick((0o600, 0o400, 0o644, 0o640, 0o000, 0o700))
    if sel & 0x10:  # a key text, decorated
        k = r.pick(FILE_KEYS + INLINE_KEYS + ["A" * 42 + "B=", "A" * 43 + "==", "A" * 44])
        k = r.pick([k, k[:-1], k + "=", k[:20] + " " + k[20:], k.lower(), k + "\0", "=" + k])
        content = (r.pick(_KEYFILE_WS) + k + r.pick(_KEYFILE_WS)).encode("utf-8")
        if sel & 0x20:
            content += r.rest()
    else:
        content = r.rest()
    d = tmpdir() / "kf"
    path, real = d / "k", d / "real"
    for p in (path, real):
        if p.is_dir() and not p.is_symlink():
            p.rmdir()
        elif os.path.lexists(p):
            p.unlink()
    if kind == "file":
        path.write_bytes(content)
        os.chmod(path, mode)
    elif kind == "symlink":
        real.write_bytes(content)
        os.chmod(real, mode)
        os.symlink("real", path)
    elif kind == "dir":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path, 0o600)
    want_ok, want_key = _key_file_model(kind, mode, content)
    try:
        got = config.load_key_file(str(path))
    except config.ConfigError as e:
        msg = str(e)
        if len(msg.splitlines()) != 1 or "\n" in msg or not msg.startswith(str(path)):
            raise OracleFailure(f"key-file error is not one line naming the file: {msg!r}")
        try:
            text = content.decode("ascii", "replace")
        except Exception:
            text = ""
        for k in _key_texts(text):
            if k[:43] in msg:
                raise OracleFailure(f"key-file error shows the key: {msg!r}")
        if want_ok:
            raise OracleFailure(f"load_key_file refused a valid key file ({kind}, mode "
                                f"{mode:04o}, {content!r:.80}): {msg}")
        return
    if not want_ok:
        raise OracleFailure(f"load_key_file accepted {kind} mode {mode:04o} content "
                            f"{content!r:.120}")
    if got != want_key:
        raise OracleFailure("load_key_file returned a different key than the file holds")


# =========================================================================== packets

def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _sockaddr_model(raw: bytes):
    """What _fast._address must return for raw sockaddr bytes (independent decoding)."""
    if len(raw) >= 28 and struct.unpack("=H", raw[:2])[0] == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack("!H", raw[2:4])[0]
    if len(raw) >= 16 and struct.unpack("=H", raw[:2])[0] == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), struct.unpack("!H", raw[2:4])[0]
    return None


@_target("packets")
def packets(data: bytes) -> None:
    r = Reader(data)
    sel = r.u8()
    how = sel % 3
    if how == 0:
        raw = r.rest()
        got = _fast.Engine.decode_event(raw)
        if len(raw) < 8:
            if got is not None:
                raise OracleFailure(f"decode_event of {len(raw)} bytes returned {got!r}")
            return
        alen = raw[4]
        want = (raw[0], raw[1], int.from_bytes(raw[2:4], "big"),
                _sockaddr_model(raw[8:8 + alen]), raw[8 + alen:])
        if got != want:
            raise OracleFailure(f"decode_event({_hex(raw)}) = {got!r}, expected {want!r}")
    elif how == 1:
        packet = r.rest()
        got = ippacket.addresses(packet)
        v = packet[0] >> 4 if packet else 0
        if v == 4 and len(packet) >= 20:
            want = (4, int.from_bytes(packet[12:16], "big"), int.from_bytes(packet[16:20], "big"))
        elif v == 6 and len(packet) >= 40:
            want = (6, int.from_bytes(packet[8:24], "big"), int.from_bytes(packet[24:40], "big"))
        else:
            want = None
        if got != want:
            raise OracleFailure(f"addresses({_hex(packet)}) = {got!r}, expected {want!r}")
    else:
        mtu = config.MIN_MTU + r.u16() % (config.MAX_MTU - config.MIN_MTU + 1)
        our_v4 = r.take(4).ljust(4, b"\0") if sel & 4 else None
        our_v6 = r.take(16).ljust(16, b"\0") if sel & 8 else None
        packet = r.rest()
        reply = ippacket.too_big(packet, mtu, our_v4, our_v6)
        if reply is None:
            return
        v = packet[0] >> 4
        if v == 4:
            if not (our_v4 and len(packet) >= 20 and packet[6] & 0x40):
                raise OracleFailure("ICMP reply where none is due")
            if len(reply) > 576 or int.from_bytes(reply[2:4], "big") != len(reply):
                raise OracleFailure(f"bad ICMP length {len(reply)}")
            if _csum(reply[:20]) != 0xFFFF or _csum(reply[20:]) != 0xFFFF:
                raise OracleFailure(f"bad ICMP checksums: {_hex(reply)}")
            if reply[12:16] != our_v4 or reply[16:20] != packet[12:16]:
                raise OracleFailure("ICMP reply has the wrong addresses")
            if reply[20:24] != b"\x03\x04" + reply[22:24] or \
                    int.from_bytes(reply[26:28], "big") != mtu:
                raise OracleFailure("not a fragmentation-needed with our MTU")
        elif v == 6:
            if not (our_v6 and len(packet) >= 40):
                raise OracleFailure("ICMPv6 reply where none is due")
            if len(reply) > 1280 or int.from_bytes(reply[4:6], "big") != len(reply) - 40:
                raise OracleFailure(f"bad ICMPv6 length {len(reply)}")
            pseudo = reply[8:40] + struct.pack("!I3xB", len(reply) - 40, 58)
            if _csum(pseudo + reply[40:]) != 0xFFFF:
                raise OracleFailure(f"bad ICMPv6 checksum: {_hex(reply)}")
            if reply[8:24] != our_v6 or reply[24:40] != packet[8:24]:
                raise OracleFailure("ICMPv6 reply has the wrong addresses")
            if int.from_bytes(reply[44:48], "big") != mtu:
                raise OracleFailure("ICMPv6 reply without our MTU")
        else:
            raise OracleFailure(f"reply to a packet of IP version {v}")


@_target("replay_state")
def replay_state(data: bytes) -> None:
    """The daemon's replay state files (vpncrypt/daemon/replaystate.py): any bytes decode
    to None or a well-formed state, and what is encoded decodes to itself; a change of
    one byte of an encoded save is never taken for a different state."""
    from vpncrypt.daemon.replaystate import decode, encode

    r = Reader(data)
    mode = r.u8() % 3
    if mode == 0:
        got = decode(r.rest())
        if got is not None:
            generation, state = got
            if not (isinstance(generation, int) and generation >= 0):
                raise OracleFailure(f"generation {generation!r}")
            for key, newest in state.items():
                if " " in key or "\n" in key or not 0 <= newest < 10 ** 20:
                    raise OracleFailure(f"entry {key!r} {newest!r}")
        return
    state = {}
    for _ in range(r.u8() % 16):
        key = r.take(r.u8() % 12).decode("ascii", "replace")
        key = "".join(c for c in key if c.isalnum()) or "0"
        state[key] = r.u64()
    generation = r.u32()
    blob = encode(state, generation)
    if decode(blob) != (generation, state):
        raise OracleFailure(f"round trip of {state!r} gen {generation}: {decode(blob)!r}")
    if mode == 2 and blob:
        at, flip = r.u16() % len(blob), r.u8() or 1
        changed = bytearray(blob)
        changed[at] ^= flip
        got = decode(bytes(changed))
        if got is not None and got != (generation, state):
            raise OracleFailure(f"byte {at} ^ {flip:#x} of a save decoded as {got!r}")


# =========================================================================== seeds


def _program(*steps: bytes, world: int = 0) -> bytes:
    return bytes([world]) + b"".join(steps)


def _now_step(ts: float) -> bytes:
    # op 6, mode 0: BASE + i16 + u8/256 when close to BASE; else mode 2 (raw double)
    delta = int(math.floor(ts)) - BASE
    if -32768 <= delta <= 32767:
        return bytes([6, 0]) + struct.pack(">hB", delta, int((ts % 1) * 256))
    return bytes([6, 2]) + struct.pack(">d", ts)


def _raw_step(packet: bytes) -> bytes:
    return bytes([0, 1]) + struct.pack(">H", len(packet) % 2048) + packet


def seeds(name: str):
    """The generated seed corpus of a target (bytes objects)."""
    out = []
    if name in ("open_server", "open_client"):
        for i, packet in enumerate(POOL):
            g = STATIC_GENUINE[packet]
            ts = g[1] if g[1] else BASE
            world = 0
            for w, v in enumerate(VECTORS, start=1):
                if v["packet"] == packet:
                    world = w
            now = _now_step(ts + 0.5) if ts < 2**63 else _now_step(float(ts))
            # the packet as raw bytes, again (a replay), then with one bit flipped
            first = _raw_step(packet) if len(packet) < 2048 else bytes([1]) + struct.pack(">H", i)
            out.append(_program(now, first, bytes([1]) + struct.pack(">H", i),
                                bytes([2]) + struct.pack(">HH", i, 7 * i), world=world))
        out.append(_program(bytes([7, 0, 0, 0, 0]) * 4 + bytes([1, 0x80, 0])))  # seal + replay
        out.append(_program(bytes([8, 0, 0]) + bytes([8, 0, 1]) * 5))  # time sync + rate limit
        out.append(_program(bytes([7, 8, 0, 0x02, 0x00, 0, 0])))  # sealed 512 s off: skew
        out.append(_program(bytes([10, 1, 0, 0]), bytes([10, 0, 3]) + b"abc"))
        out.append(_program(bytes([9, 0, 1, 0]), bytes([1, 0, 0])))
        out.append(_program(bytes([11, 0, 0]) + bytes(8)))
        out.append(_program(_now_step(5.5), bytes([8, 0, 0])))
    elif name == "siv_diff":
        for i, packet in enumerate(POOL[:200]):
            g = STATIC_GENUINE[packet]
            out.append(bytes([3, i % len(SIV_KEYS)]) + struct.pack(">Q", g[1]) + packet[:2048])
        for i in range(len(SIV_KEYS)):
            out.append(bytes([2, i, 1]) + struct.pack(">QI", BASE, 5) + b"\0\x10" + bytes(16))
            out.append(bytes([0x12, i, 0x81]) + struct.pack(">QI", 2**64 - 1, 0) + b"\0\x01x")
            out.append(bytes([1, i]) + POOL[i])
    elif name == "window_diff":
        out.append(b"\x01" + bytes(4) + bytes([6, 6, 6, 0x46, 0x46]) * 8)
        out.append(b"\x01" + b"\xff" * 4 + bytes([0x47, 0, 0x47, 1, 0xE0, 3, 5, 0x40, 0xff]))
        out.append(b"\x00" + struct.pack(">QI", 2**63 - 10, 7) + bytes([0x17, 0, 0, 0, 9]) * 4)
        rnd = random.Random(5)
        for _ in range(8):
            out.append(bytes(rnd.getrandbits(8) for _ in range(64)))
    elif name == "config":
        for text in EXAMPLES:
            fixed = re.sub(r"key_file = /etc/vpncrypt/\S+", "key_file = good.key", text)
            for t in (text, fixed):
                out.append(b"\x00" + t.encode())
                out.append(b"\x01" + t.encode())  # load, mode 0600
                out.append(b"\x21" + t.encode())  # load, mode 0644
        for i in range(len(EXAMPLES) + 1):
            out.append(bytes([2, i]) + bytes(8))
            out.append(bytes([3 | 16, i, 1, 3, 0, 0, 4, 0, 1, 0]))
        out.append(b"\x00[client]\nid = 1\nserver = a:1\nkey = " + INLINE_KEYS[0].encode()
                   + b"\ninterface = " + INLINE_KEYS[0].encode() + b"\naddress = 10.0.0.2/24\n")
    elif name == "key_file":
        for k in FILE_KEYS:
            out.append(b"\x00" + k.encode() + b"\n")
            out.append(b"\x08\x01\xa4" + k.encode())  # mode 0644
        for sel in range(0x10, 0x40):
            out.append(bytes([sel, 1, 0x80, 1, 2, 3, 4]))
        out.append(b"\x00" + b"A" * 5000)
    elif name == "replay_state":
        out.append(b"\x00" + b"1 1764000000\n7 1764000005\nend 3 1234\n")
        out.append(b"\x00end 1 0\n")
        out.append(bytes([1, 3, 1, ord("1"), 0, 0, 0, 0, 0x69, 0x2a, 0, 0, 1, 2, 3, 4]))
        out.append(bytes([2, 2, 1, ord("7"), 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 9, 0, 5, 0x10]))
    elif name == "packets":
        for p in (DATA4, DATA6, _ip4("1.2.3.4", "5.6.7.8", b"x" * 100), _ip6("::1", "::2")):
            out.append(b"\x01" + p)
            out.append(b"\x0e" + struct.pack(">H", 844) + bytes(20) + p)
        sa4 = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 51900) + bytes([10, 0, 0, 1]) \
            + bytes(8)
        sa6 = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 51900, 0) \
            + socket.inet_pton(socket.AF_INET6, "fd77::2") + bytes(4)
        for sa in (sa4, sa6):
            out.append(b"\x00" + bytes([1, 0, 0, 1, len(sa), 0, 0, 0]) + sa + POOL[0])
    return out

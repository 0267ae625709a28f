"""The native loop's protocol rules, pinned against the sans-IO core they mirror."""

import ipaddress
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from cryptopaths import context_class
from vpncrypt.protocol import replay


def native():
    context_class("native")  # fails in CI / skips locally when the extension is missing
    from vpncrypt import _fast

    return _fast


events = st.lists(st.tuples(st.integers(-3, 12), st.one_of(
    st.integers(-40, 40), st.integers(-20000, 20000), st.integers(0, 2**32 - 1),
    st.sampled_from([replay.WINDOW - 1, replay.WINDOW, replay.WINDOW + 1, replay.MAX_JUMP,
                     replay.MAX_JUMP + 1, -replay.WINDOW, 2**31]))), max_size=200)


@settings(max_examples=400, deadline=None)
@given(events=events, start=st.integers(0, 2**32 - 1))
def test_native_window_decides_exactly_like_the_reference(events, start):
    fast = native()
    ref, nat = replay.ReplayWindow(), fast.NativeWindow()
    ts, counter = 1_000_000, start
    for dts, dcounter in events:
        ts += dts
        counter = (counter + dcounter) & 0xFFFFFFFF
        expected = ref.check(ts, counter)
        assert nat.check(ts, counter) == (0 if expected is None else int(expected))
        if expected is None:
            assert nat.accept(ts, counter) == ref.accept(ts, counter)


def test_native_window_sequential_and_duplicates():
    fast = native()
    w = fast.NativeWindow()
    for c in range(20000):
        assert w.check(100, c) == 0
        w.accept(100, c)
    assert w.check(100, 19999) == 5 and w.check(100, 20000 - replay.WINDOW) == 5
    assert w.check(100, 20000 - replay.WINDOW + 1) == 5
    assert w.check(94, 20000) == 4  # stale


@settings(max_examples=100, deadline=None)
@given(nets=st.lists(st.tuples(st.booleans(), st.integers(0, 2**128 - 1), st.integers(0, 128)),
                     max_size=25), seed=st.integers(0, 1000))
def test_native_routes_match_longest_prefix(nets, seed):
    fast = native()
    import os
    import socket

    r, w = socket.socketpair()
    engine = fast.Engine(True, -1, -1, socket.AF_INET6, w.fileno(), r.fileno())
    table = {}
    for v6, value, plen in nets:
        if not v6:
            value, plen = value >> 96, min(plen, 32)
        cls = ipaddress.IPv6Network if v6 else ipaddress.IPv4Network
        bits = 128 if v6 else 32
        net = cls((value >> (bits - plen) << (bits - plen), plen))
        table[net] = len(table)
    engine.set_routes([(n.version, n.prefixlen, n.network_address.packed, owner)
                       for n, owner in table.items()])
    rng = random.Random(seed)
    probes = [ipaddress.ip_address(rng.getrandbits(32)) for _ in range(10)]
    probes += [ipaddress.IPv6Address(rng.getrandbits(128)) for _ in range(10)]
    probes += [n.network_address + rng.randrange(n.num_addresses) for n in list(table)[:10]]
    for ip in probes:
        matches = [n for n in table if n.version == ip.version and ip in n]
        expected = table[max(matches, key=lambda n: n.prefixlen)] if matches else -1
        assert engine.lookup(ip.version, ip.packed) == expected
    r.close()
    w.close()


@settings(max_examples=200, deadline=None)
@given(events=events, start=st.integers(0, 2**32 - 1), floor_delta=st.integers(-3, 3))
def test_restored_windows_agree(events, start, floor_delta):
    """After a restart both windows start from the saved floor and decide alike."""
    fast = native()
    ref, nat = replay.ReplayWindow(), fast.NativeWindow()
    ts, counter = 1_000_000, start
    ref.restore(ts + floor_delta)
    nat.restore(ts + floor_delta)
    for dts, dcounter in events:
        ts += dts
        counter = (counter + dcounter) & 0xFFFFFFFF
        expected = ref.check(ts, counter)
        assert nat.check(ts, counter) == (0 if expected is None else int(expected))
        if expected is None:
            assert nat.accept(ts, counter) == ref.accept(ts, counter)
    # Nothing older than the floor is ever accepted.
    assert ref.check(1_000_000 + floor_delta - 1, start) is not None

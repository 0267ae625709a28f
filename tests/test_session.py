"""Sessions and replay window: the protocol's accept/drop rules, on both crypto paths."""

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptopaths import PATHS, context_class
from vpncrypt.protocol import replay, session, timesync, wire
from vpncrypt.protocol.session import ClientSession, Dropped, Opened, Reply, ServerCore
from vpncrypt.protocol.wire import Drop, Kind

NOW = 1_764_000_000.25
PSK_A = bytes(range(32))
PSK_B = bytes(range(1, 33))


def counter_rng(start: int):
    """An rng whose first 4-byte draw is `start` (the counter), then random bytes."""
    first = [start.to_bytes(4, "big")]
    return lambda n: first.pop() if first and n == 4 else os.urandom(n)


@pytest.fixture(params=PATHS)
def ctx(request):
    return context_class(request.param)


def pair(ctx, server_id=7, client_id=1, psk=PSK_A, **kw):
    srv = ServerCore(server_id, ctx)
    srv.set_client(client_id, psk)
    return srv, ClientSession(client_id, server_id, psk, ctx, **kw)


def test_round_trip_both_directions(ctx):
    srv, cl = pair(ctx)
    for body in (b"\x45", b"x" * 1420, bytes(wire.MAX_BODY)):
        got = srv.open(cl.seal(Kind.DATA, body, NOW), NOW)
        assert got == Opened(1, Kind.DATA, body)
        got = cl.open(srv.seal(1, Kind.DATA, body, NOW), NOW)
        assert got == Opened(1, Kind.DATA, body)
    ka = srv.open(cl.seal(Kind.KEEPALIVE, wire.KEEPALIVE_BODY, NOW), NOW)
    assert ka.kind == Kind.KEEPALIVE


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, wire.MAX_BODY), seed=st.integers(0, 2**32))
def test_round_trip_any_size(size, seed):
    ctx = context_class("native")
    srv, cl = pair(ctx)
    body = random.Random(seed).randbytes(size)
    assert srv.open(cl.seal(Kind.DATA, body, NOW), NOW).body == body
    assert cl.open(srv.seal(1, Kind.DATA, body, NOW), NOW).body == body


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=200), now=st.sampled_from([NOW, 0.0, 50.0, 5000.0, 2.0**40]))
def test_garbage_never_raises(garbage, now):
    for path in PATHS:
        srv, cl = pair(context_class(path))
        for result in (srv.open(garbage, now), cl.open(garbage, now)):
            assert isinstance(result, Dropped)
            assert result.reason in (Drop.MALFORMED, Drop.BAD_TYPE, Drop.UNKNOWN_CLIENT,
                                     Drop.AUTH, Drop.RATE_LIMITED)


def test_size_reasons(ctx):
    srv, cl = pair(ctx)
    packet = cl.seal(Kind.DATA, b"hello", NOW)
    for n in range(wire.MIN_PACKET):
        assert srv.open(packet[:n], NOW) == Dropped(Drop.MALFORMED)
    assert srv.open(packet[:-1], NOW).reason == Drop.AUTH  # one byte short: body of 4
    assert srv.open(bytes(wire.MAX_DATAGRAM + 1), NOW) == Dropped(Drop.MALFORMED)
    assert srv.open(packet, NOW).body == b"hello"  # the junk did not disturb the state
    assert srv.open(cl.seal(Kind.DATA, b"again", NOW), NOW).body == b"again"


def test_unknown_client_and_bad_type(ctx):
    srv, cl = pair(ctx, client_id=1)
    other = ClientSession(2, 7, PSK_A, ctx)
    assert srv.open(other.seal(Kind.DATA, b"x", NOW), NOW) == Dropped(Drop.UNKNOWN_CLIENT, 2)
    bad = bytearray(cl.seal(Kind.DATA, b"x", NOW))
    bad[0] = 0x7F
    assert srv.open(bytes(bad), NOW) == Dropped(Drop.BAD_TYPE, 1)


def test_reflection_and_cross_direction(ctx):
    srv, cl = pair(ctx)
    up = cl.seal(Kind.DATA, b"up", NOW)
    down = srv.seal(1, Kind.DATA, b"down", NOW)
    # Each role refuses the other's packet types outright...
    assert cl.open(up, NOW).reason == Drop.BAD_TYPE
    assert srv.open(down, NOW).reason == Drop.BAD_TYPE
    # ...and relabelling the direction bit does not help: the keys are per direction.
    relabelled = bytes([down[0] & 0x7F]) + down[1:]
    assert srv.open(relabelled, NOW).reason == Drop.AUTH
    relabelled = bytes([up[0] | 0x80]) + up[1:]
    assert cl.open(relabelled, NOW).reason == Drop.AUTH


def test_cross_client_and_cross_server(ctx):
    srv = ServerCore(7, ctx)
    srv.set_client(1, PSK_A)
    srv.set_client(2, PSK_B)
    a = ClientSession(1, 7, PSK_A, ctx)
    # Client 1 claiming client 2's id (header rewritten) fails authentication.
    packet = a.seal(Kind.DATA, b"x", NOW)
    forged = packet[:1] + (2).to_bytes(2, "big") + packet[3:]
    assert srv.open(forged, NOW).reason == Drop.AUTH
    # The same key configured under another id does not open either (id is in the key schedule).
    srv.set_client(3, PSK_A)
    forged = packet[:1] + (3).to_bytes(2, "big") + packet[3:]
    assert srv.open(forged, NOW).reason == Drop.AUTH
    # A packet meant for server 7 is refused by server 8 with the same client table.
    other = ServerCore(8, ctx)
    other.set_client(1, PSK_A)
    assert other.open(a.seal(Kind.DATA, b"x", NOW), NOW).reason == Drop.AUTH
    assert srv.open(a.seal(Kind.DATA, b"x", NOW), NOW).body == b"x"


@pytest.mark.parametrize("offset", [-128, -1, 0, 1, 127])
def test_clock_window_inside(ctx, offset):
    srv, cl = pair(ctx)
    assert srv.open(cl.seal(Kind.DATA, b"x", NOW + offset), NOW).body == b"x"


@pytest.mark.parametrize("offset,shift", [(128, 256), (-129, -256), (300, 256), (-10_000, -9984),
                                          (10_000, 9984)])
def test_clock_window_outside_is_diagnosed(ctx, offset, shift):
    srv, cl = pair(ctx)
    got = srv.open(cl.seal(Kind.DATA, b"x", NOW + offset), NOW)
    assert got.reason == Drop.CLOCK_SKEW
    assert f"{shift:+d} s" in got.detail
    # The diagnosis is rate-limited: the next one within 10 s is a plain auth failure.
    assert srv.open(cl.seal(Kind.DATA, b"x", NOW + 1 + offset), NOW + 1).reason == Drop.AUTH
    assert srv.open(cl.seal(Kind.DATA, b"x", NOW + offset + 11), NOW + 11).reason == Drop.CLOCK_SKEW


def test_far_skewed_sender_looks_stale_then_diagnosed(ctx):
    srv, cl = pair(ctx)
    assert srv.open(cl.seal(Kind.DATA, b"x", NOW), NOW).body == b"x"
    skewed = ClientSession(1, 7, PSK_A, ctx)
    got = srv.open(skewed.seal(Kind.DATA, b"x", NOW + 1000), NOW + 0.5)
    assert got.reason == Drop.CLOCK_SKEW, got


@pytest.mark.parametrize("engine_newest", [False, True])
def test_receiver_clock_stepped_back_is_diagnosed(ctx, engine_newest):
    """Our own clock went back 600 s and the sender follows it (time sync): its packets are
    stale only because the window holds our old future; the drop says clock skew, without
    probing (no rate limit), whether the window is ours or the native loop's."""
    srv, cl = pair(ctx)
    assert srv.open(cl.seal(Kind.DATA, b"x", NOW), NOW).body == b"x"
    packet = cl.seal(Kind.DATA, b"y", NOW - 600)
    if engine_newest:  # the native loop's window refused it; ours never saw the first packet
        fresh, _ = pair(ctx)
        got = fresh.peer(1).receiver.diagnose(packet, NOW - 600, Drop.STALE, NOW)
    else:
        got = srv.open(packet, NOW - 600)
    assert got.reason == Drop.CLOCK_SKEW, got
    assert "receiver clock stepped back" in got.detail and "600 s" in got.detail
    # A forgery that looks the same (one bit of the tag flipped) is not diagnosed so.
    forged = bytearray(cl.seal(Kind.DATA, b"w", NOW - 600))
    forged[9] ^= 1
    assert srv.open(bytes(forged), NOW - 600).reason == Drop.STALE
    # A stale packet within the clock window stays a stale packet.
    assert srv.open(cl.seal(Kind.DATA, b"z", NOW - 100), NOW - 100).reason == Drop.STALE


def test_wrong_key_is_auth_not_skew(ctx):
    srv = ServerCore(7, ctx)
    srv.set_client(1, PSK_B)
    cl = ClientSession(1, 7, PSK_A, ctx)
    assert srv.open(cl.seal(Kind.DATA, b"x", NOW), NOW).reason == Drop.AUTH


def test_stale_edge(ctx):
    srv, cl = pair(ctx)
    assert srv.open(cl.seal(Kind.DATA, b"new", NOW + 10), NOW + 10).body == b"new"
    # Sealed earlier but delivered now (same sender session: counters are lower).
    early = ClientSession(1, 7, PSK_A, ctx, rng=counter_rng(0))
    srv2, _ = pair(ctx)
    assert srv2.open(early.seal(Kind.DATA, b"t", NOW + 10), NOW + 10).body == b"t"
    late5 = early.seal(Kind.DATA, b"5", NOW + 5)
    late6 = early.seal(Kind.DATA, b"6", NOW + 4)
    assert srv2.open(late5, NOW + 10).body == b"5"  # exactly 5 s older: accepted
    assert srv2.open(late6, NOW + 10).reason == Drop.STALE  # 6 s older: stale


def test_duplicates_dropped_reordering_accepted(ctx):
    srv, cl = pair(ctx)
    packets = [cl.seal(Kind.DATA, b"%d" % i, NOW) for i in range(300)]
    order = list(range(300))
    random.Random(1).shuffle(order[1:])  # first one in order, the rest shuffled
    seen = []
    for i in order + order[:50]:
        got = srv.open(packets[i], NOW)
        if isinstance(got, Opened):
            seen.append(int(got.body))
        else:
            assert got.reason == Drop.REPLAY
    assert sorted(seen) == list(range(300))


def test_behind_window_is_replay(ctx):
    srv, cl = pair(ctx)
    old = cl.seal(Kind.DATA, b"old", NOW)
    for _ in range(replay.WINDOW):
        cl.seal(Kind.DATA, b"skip", NOW)  # sent but lost
    assert srv.open(cl.seal(Kind.DATA, b"new", NOW), NOW).body == b"new"
    assert srv.open(old, NOW).reason == Drop.REPLAY


@pytest.mark.parametrize("new_counter_delta", [-1, -5000, -2**31, 2**21, 2**31 - 1])
def test_sender_restart_recovered_within_one_second(ctx, new_counter_delta):
    srv, cl = pair(ctx, rng=counter_rng(1_000_000))
    before = [cl.seal(Kind.DATA, b"b%d" % i, NOW) for i in range(20)]
    for p in before:
        assert isinstance(srv.open(p, NOW), Opened)
    # Restart: a new session with a new counter, at most 1 s later.
    restarted = ClientSession(1, 7, PSK_A, ctx,
                              rng=counter_rng((1_000_000 + new_counter_delta) & 0xFFFFFFFF))
    got = srv.open(restarted.seal(Kind.DATA, b"r", NOW + 1), NOW + 1)
    assert isinstance(got, Opened) and got.body == b"r"
    # Everything captured before the restart is refused from now on.
    for p in before:
        assert srv.open(p, NOW + 1).reason in (Drop.STALE, Drop.REPLAY)


def test_restart_same_second_waits_for_next_second(ctx):
    srv, cl = pair(ctx, rng=counter_rng(100_000))
    assert isinstance(srv.open(cl.seal(Kind.DATA, b"a", NOW), NOW), Opened)
    restarted = ClientSession(1, 7, PSK_A, ctx, rng=counter_rng(1))  # counter behind window
    assert srv.open(restarted.seal(Kind.DATA, b"r", NOW), NOW).reason == Drop.REPLAY
    assert srv.open(restarted.seal(Kind.DATA, b"r", NOW + 1), NOW + 1).body == b"r"


def test_counter_wraps(ctx):
    srv, cl = pair(ctx, rng=counter_rng(0xFFFFFFF0))
    for i in range(40):
        assert srv.open(cl.seal(Kind.DATA, b"w", NOW), NOW).body == b"w"


def test_forgery_does_not_move_window(ctx):
    srv, cl = pair(ctx)
    good = cl.seal(Kind.DATA, b"g", NOW)
    forged = bytearray(cl.seal(Kind.DATA, b"f", NOW + 50))
    forged[-1] ^= 1
    assert srv.open(bytes(forged), NOW + 50).reason in (Drop.AUTH, Drop.CLOCK_SKEW)
    assert srv.open(good, NOW).body == b"g"  # newest did not jump to NOW+50


def test_time_sync_for_a_client_in_1970(ctx):
    srv, cl = pair(ctx)
    client_clock = 3.0  # booted without an RTC
    request = cl.time_request(client_clock)
    reply = srv.open(request, NOW)
    assert isinstance(reply, Reply) and reply.client_id == 1
    assert len(reply.packet) <= len(request)  # no amplification
    got = cl.open(reply.packet, client_clock + 0.2)
    assert got.kind == Kind.TIME_RESPONSE
    assert abs((client_clock + 0.2 + got.clock_offset) - (NOW + 0.1)) < 0.001
    # Replaying the response, or answering a request never made, is unsolicited.
    assert cl.open(reply.packet, client_clock + 0.3).reason == Drop.UNSOLICITED
    # Now on the server's time, data flows.
    synced = client_clock + 0.3 + got.clock_offset
    assert srv.open(cl.seal(Kind.DATA, b"hi", synced), NOW + 0.3).body == b"hi"


def test_time_sync_rejects_forgery_and_is_rate_limited(ctx):
    srv, cl = pair(ctx)
    request = bytearray(cl.time_request(0.0))
    request[-1] ^= 1
    assert srv.open(bytes(request), NOW) == Dropped(Drop.AUTH, 1)
    replies = [srv.open(cl.time_request(0.0), NOW) for _ in range(session.TIME_BURST + 2)]
    kinds = [type(r) for r in replies]
    assert kinds.count(Reply) == session.TIME_BURST  # the forgery took no token
    assert replies[-1] == Dropped(Drop.RATE_LIMITED, 1)
    assert isinstance(srv.open(cl.time_request(0.0), NOW + 2), Reply)  # refilled


def test_replayed_time_requests_cannot_use_up_the_clients_answers(ctx):
    """Issue 16 part 2: an attacker who captured genuine time requests replays them, two a
    second or a hundred at once. Within the client's run they are replays (its window has
    their counters); from an older run, from another address, they spend that address's
    budget. Either way the client's own next request is answered (the old core answered
    the first replays and then refused the client as rate-limited)."""
    srv, cl = pair(ctx)
    assert srv.open(cl.seal(Kind.DATA, b"d", NOW), NOW, source="client").body == b"d"
    captured = [cl.time_request(NOW + i) for i in range(3)]
    for request in captured:
        assert isinstance(srv.open(request, NOW + 1, source="client"), Reply)
    # The same run: every replay is refused before it can cost anything.
    for k in range(100):
        for request in captured:
            got = srv.open(request, NOW + 2 + k / 100, source=("elsewhere", k))
            assert got == Dropped(Drop.REPLAY, 1, "time request seen before")
    assert isinstance(srv.open(cl.time_request(NOW + 3), NOW + 3, source="client"), Reply)
    # The client restarts (a new counter): the old run's requests are now untrusted;
    # replayed from elsewhere they spend that address's answers, not the client's own.
    restarted = ClientSession(1, 7, PSK_A, ctx)
    assert srv.open(restarted.seal(Kind.DATA, b"r", NOW + 5), NOW + 5, source="client").body == b"r"
    answered = [srv.open(r, NOW + 6, source="attacker") for r in captured * 30]
    assert sum(type(a) is Reply for a in answered) == session.TIME_BURST
    assert isinstance(srv.open(restarted.time_request(NOW + 6), NOW + 6, source="client"), Reply)
    # A restarted client that has sent nothing timed yet is untrusted too, and still
    # answered from its own address's budget.
    again = ClientSession(1, 7, PSK_A, ctx)
    for request in captured * 30:
        srv.open(request, NOW + 7, source="attacker")
    assert isinstance(srv.open(again.time_request(0.0), NOW + 7, source="new address"), Reply)


def test_untrusted_time_request_budgets_are_bounded_per_client(ctx):
    srv, cl = pair(ctx)
    for k in range(10 * session.TIME_SOURCES):
        srv.open(cl.time_request(0.0), NOW, source=("spoofed", k))
    assert len(srv.peer(1).source_budgets) == session.TIME_SOURCES


def test_time_response_from_other_server_rejected(ctx):
    _, cl = pair(ctx, server_id=7)
    other = ServerCore(8, ctx)
    other.set_client(1, PSK_A)
    reply = other.open(cl.time_request(0.0), NOW)
    # The foreign server cannot even open the request (server id is in the key schedule).
    assert reply == Dropped(Drop.AUTH, 1)


@pytest.mark.parametrize("receiver_now", [0.0, 50.0, 127.0, 5000.0])
def test_receiver_clock_near_1970_drops_instead_of_raising(ctx, receiver_now):
    srv, cl = pair(ctx)
    # A genuine packet from a server on real time, and a forgery, reach a client in 1970.
    assert cl.open(srv.seal(1, Kind.KEEPALIVE, b"x", NOW), receiver_now).reason in (
        Drop.AUTH, Drop.CLOCK_SKEW)
    forged = bytes([0x81, 0, 1, 0]) + bytes(21)
    assert cl.open(forged, receiver_now).reason == Drop.AUTH
    # And packets sealed near 1970 still work between two such clocks.
    assert srv.open(cl.seal(Kind.DATA, b"y", receiver_now), receiver_now).body == b"y"


def test_time_bodies():
    nonce = b"n" * 16
    req = timesync.request_body(nonce, 12.5)
    assert len(req) == timesync.BODY_LEN
    assert len(timesync.response_body(req, 99.0)) == len(req)
    assert timesync.response_body(req[:-1], 99.0) is None


def test_set_client_keeps_state_when_key_unchanged(ctx):
    srv, cl = pair(ctx)
    p = cl.seal(Kind.DATA, b"x", NOW)
    assert isinstance(srv.open(p, NOW), Opened)
    assert srv.set_client(1, PSK_A) is False
    assert srv.open(p, NOW).reason == Drop.REPLAY  # replay state survived the reload
    assert srv.set_client(1, PSK_B) is True
    srv.remove_client(1)
    assert srv.open(p, NOW).reason == Drop.UNKNOWN_CLIENT


class ModelWindow:
    """Straightforward model of the replay rules, for the property test below."""

    def __init__(self):
        self.accepted = set()
        self.newest = None

    def decide(self, ts, counter, index):
        if self.newest is not None and ts < self.newest - wire.STALE_AFTER:
            return False
        return index not in self.accepted


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 3)), min_size=1, max_size=80),
       start=st.integers(0, 2**32 - 1))
def test_window_matches_model_for_one_session(events, start):
    """One sender session: packet i has counter start+i and a non-decreasing timestamp.
    Delivered in any order with duplicates, each is accepted at most once, and exactly
    when it is not older than newest-5 and not already accepted."""
    window = replay.ReplayWindow()
    model = ModelWindow()
    ts_of = sorted(e[1] * 3 + 1000 for e in events)
    for index, _ in events:
        index = index % len(ts_of)
        ts, counter = ts_of[index], (start + index) & 0xFFFFFFFF
        expect = model.decide(ts, counter, index)
        got = window.check(ts, counter) is None
        assert got == expect
        if got:
            window.accept(ts, counter)
            model.accepted.add(index)
            model.newest = ts if model.newest is None else max(model.newest, ts)

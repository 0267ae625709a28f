"""Clock events cannot re-open what a replay window refused (issue 16, part 1).

The server's protocol clock never goes back (protocol/clock.py), time sync moves a
client's clock only as far as the exchange's round trip proves (protocol/timesync.py),
and the client's daemon never resets its window on a correction (daemon/client.py).
The real-daemon versions (a server's wall clock stepped back, a client's stepped
forward, both under replay) are in tests/test_hostile.py.
"""

import base64
import os
import socket
import types

import pytest

from cryptopaths import context_class
from vpncrypt.protocol import timesync
from vpncrypt.protocol.clock import SLEW, ServerClock
from vpncrypt.protocol.session import ClientSession, Opened, ServerCore
from vpncrypt.protocol.wire import Kind

NOW = 1_764_000_000.25
PSK = bytes(range(32))


# ---- the server's protocol clock -----------------------------------------------------------

def test_server_clock_follows_the_wall_forward_at_once():
    clock = ServerClock(wall=NOW, steady=100.0)
    assert clock.now(100.0) == NOW
    clock.follow(wall=NOW + 600 + 1, steady=101.0)  # NTP fixes a clock that was behind
    assert clock.now(101.0) == pytest.approx(NOW + 601)


def test_server_clock_never_goes_back_and_slews_out_the_difference():
    clock = ServerClock(wall=NOW, steady=100.0)
    clock.follow(wall=NOW + 1 - 1000, steady=101.0)  # the wall clock steps back 1000 s
    assert clock.now(101.0) == pytest.approx(NOW + 1, abs=SLEW * 1.01)
    assert clock.ahead(NOW + 1 - 1000, 101.0) == pytest.approx(1000, abs=0.01)
    readings = [clock.now(101.0)]
    for second in range(102, 102 + 3600):
        clock.follow(wall=NOW + second - 100 - 1000, steady=float(second))
        readings.append(clock.now(float(second)))
    # Monotone, and an hour gives back SLEW x 3600 s of the difference, no more.
    assert all(b > a for a, b in zip(readings, readings[1:]))
    assert clock.ahead(NOW + 3601 - 1000, 3701.0) == pytest.approx(1000 - SLEW * 3600, abs=0.01)


def test_server_clock_keeps_its_lead_across_a_restart():
    clock = ServerClock(wall=NOW, steady=5.0, ahead=1000)
    assert clock.now(5.0) == NOW + 1000
    assert ServerClock(wall=NOW, steady=5.0, ahead=-3).now(5.0) == NOW  # never behind


# ---- time sync cannot be steered by delay ---------------------------------------------------

def exchange(client, server, client_now, server_delay=0.0, reply_delay=0.0, rtt=0.002,
             server_offset=0.0):
    """One time-sync exchange between a ClientSession (whose clock reads `client_now`)
    and a ServerCore whose clock is `client_now + server_offset`; an on-path attacker
    holds the request `server_delay` s and the answer `reply_delay` s. The correction
    the client gets (or None)."""
    request = client.time_request(client_now)
    stamped = client_now + server_offset + rtt / 2 + server_delay
    reply = server.open(request, stamped)
    got = client.open(reply.packet, client_now + rtt + server_delay + reply_delay)
    return got.clock_offset if type(got) is Opened else None


def sync_pair():
    server = ServerCore(7, context_class("reference"))
    server.set_client(1, PSK)
    return server, ClientSession(1, 7, PSK, context_class("reference"))


def test_first_sync_takes_the_midpoint_of_the_round_trip():
    server, client = sync_pair()
    assert exchange(client, server, 3.0, server_offset=NOW - 3.0) == pytest.approx(NOW - 3.0)


def test_delay_cannot_walk_a_synced_clock_away():
    """The review's attack: hold requests or answers for almost MAX_RTT, exchange after
    exchange. Each exchange's interval still holds the truth, and the client's clock is
    already inside it: no correction at all (the midpoint rule moved it 4.95 s a time)."""
    server, client = sync_pair()
    clock = 0.0  # the client's protocol clock minus the server's, truth = 0
    clock += exchange(client, server, NOW)  # honest first sync
    assert abs(clock) < 0.002
    for i in range(20):
        hold = {"server_delay": 9.9} if i % 2 else {"reply_delay": 9.9}
        clock += exchange(client, server, NOW + 100 * i + clock, server_offset=-clock, **hold)
    assert abs(clock) < 0.002, f"steered by {clock:+.3f} s"


def test_a_wrong_clock_is_corrected_by_no_more_than_the_round_trip_proves():
    server, client = sync_pair()
    exchange(client, server, NOW)
    # The client's clock is now 30 s ahead (its oscillator, or a local step): the
    # correction brings it to the edge of what the exchange proves, within its RTT.
    got = exchange(client, server, NOW + 30, server_offset=-30, rtt=0.05)
    assert -30.05 <= got <= -29.95
    # An attacker holding the answer makes the interval wider, never wrong.
    got = exchange(client, server, NOW + 30, server_offset=-30, reply_delay=9.0)
    assert -30.05 <= got <= -21.0


def test_an_exchange_over_max_rtt_moves_nothing():
    server, client = sync_pair()
    exchange(client, server, NOW)
    assert exchange(client, server, NOW, reply_delay=timesync.MAX_RTT + 1) is None


# ---- the client daemon keeps its window across a correction ---------------------------------

@pytest.mark.parametrize("correction", [-9.9, -3600.0, +600.0])
def test_a_clock_correction_never_reopens_the_clients_window(tmp_path, correction):
    """Server packets the client took, replayed after a time-sync correction (the review:
    a -9.9 s steer, or a 1-hour step, reset the window and 1 078 of 1 200, or 50 of 50,
    replays were written to the TUN a second time). The Python loop of a real Client."""
    from vpncrypt import config as configmod
    from vpncrypt.daemon.client import Client

    conf = tmp_path / "client.conf"
    conf.write_text(f"[client]\nid = 1\nserver = 127.0.0.1:9\nserver_id = 7\n"
                    f"key = {base64.b64encode(PSK).decode()}\ninterface = t0\n"
                    "address = 10.9.0.2/24\n")
    os.chmod(conf, 0o600)
    client = Client(configmod.load(str(conf)), "reference")
    client.server = (socket.AF_INET, ("127.0.0.1", 9))
    written = []
    client.write_tun = lambda packet: written.append(bytes(packet)) or True
    client.send = lambda packet, addr: True
    client.tun = types.SimpleNamespace(name="t0", fd=-1, frame_prefix=0, offloads=())
    server = ServerCore(7, context_class("reference"))
    server.set_client(1, PSK)
    client.apply_clock(0.0)  # synced, on the server's time
    start = int(client.now()) + 1  # the first sync's floor refuses its own second
    inner = [bytes([0x45]) + bytes(11) + bytes([10, 9, 0, 1, 10, 9, 0, 2]) + i.to_bytes(4, "big")
             for i in range(1200)]
    captured = [server.seal(1, Kind.DATA, p, start + i / 400) for i, p in enumerate(inner)]
    for packet in captured:
        client.handle_datagram(packet, client.server[1])
    assert len(written) == 1200, dict(client.counters.drops)
    client.apply_clock(correction)
    client.apply_clock(-correction)  # and back: whatever the clock did in between
    written.clear()
    for packet in captured:
        client.handle_datagram(packet, client.server[1])
    assert written == [], f"{len(written)} of 1200 replays written to the TUN"
    # The server's new packets still get through.
    fresh = server.seal(1, Kind.DATA, inner[0], start + 4)
    client.handle_datagram(fresh, client.server[1])
    assert written == [inner[0]]

"""Tests for vpncrypt.daemon.pinning and the Python loop's roaming budget
(daemon/server.py PeerState.may_open, at daemon/budgets.py's rate)."""

from hypothesis import given
from hypothesis import strategies as st


def test_roaming_budget_of_the_python_loop():
    """PeerState.may_open (the Python loop's twin of the native ROAM_RATE): from the
    endpoint always; from elsewhere, or before there is an endpoint, ROAM_RATE a second,
    with a burst of one second's worth, refilled with time (never by a clock going back)."""
    from types import SimpleNamespace

    from vpncrypt.daemon.server import ROAM_RATE, PeerState

    peer = PeerState(SimpleNamespace(name="a", id=1, allowed_ips=(), key_file=None))
    home, away = ("192.0.2.1", 5000), ("198.51.100.7", 6000)
    assert sum(peer.may_open(away, 50.0) for _ in range(5000)) == ROAM_RATE  # no endpoint yet
    peer.endpoint = home
    assert all(peer.may_open(home, 100.0) for _ in range(5000))
    assert sum(peer.may_open(away, 100.0) for _ in range(5000)) == ROAM_RATE
    assert not peer.may_open(away, 100.0)
    assert sum(peer.may_open(away, 100.5) for _ in range(5000)) == ROAM_RATE / 2
    assert not peer.may_open(away, 90.0)  # the clock stepped back: no refill
    assert sum(peer.may_open(away, 200.0) for _ in range(5000)) == ROAM_RATE  # capped


def test_pins_follow_the_foreign_rate_with_the_sample_scaled_back():
    """A client named from elsewhere at twice the budget or more is pinned; while pinned,
    its count is the filter's sample, scaled back up, and the sample follows the rate so
    that 1..3 budgets a second pass; the pin is lifted QUIET s after the estimate last
    reached twice the budget."""
    from vpncrypt.daemon.pinning import QUIET, Pins

    pins = Pins(budget=1000.0)
    assert pins.update({1: 10**6}, 100.0) == ([], [], False)  # the first call starts the clock
    # 0.5 s: client 1 just under 2000/s, client 2 at it: pinned, 1 in 2 kept.
    assert pins.update({1: 999, 2: 1000}, 100.5) == ([(2, 2000.0)], [], True)
    assert pins.samples() == {2: 2}
    # The flood grows to 50 000/s: what the filter kept (25 000/s) is scaled back up, and
    # the sample becomes 32 (1 562/s kept, within 1..2 budgets).
    assert pins.update({2: 25_000}, 101.5) == ([], [], True)
    assert pins.samples() == {2: 32}
    # Steady, with noise in the count: the filter is left alone.
    for t, count in enumerate((1562, 1400, 1700, 1100, 2900, 1562)):
        assert pins.update({2: count}, 102.5 + t) == ([], [], False)
    # The flood stops: the sample drops back to 2 at once, the pin goes QUIET s after the
    # last time over the rate.
    now = 107.5
    assert pins.update({}, now + 1) == ([], [], True) and pins.samples() == {2: 2}
    assert pins.update({}, now + QUIET - 0.5) == ([], [], False)
    assert pins.update({}, now + QUIET) == ([], [(2, 0.0)], True)
    assert pins.pinned == {}
    # A clock that did not move changes nothing.
    assert pins.update({5: 10**6}, now + QUIET) == ([], [], False)


@given(st.floats(min_value=2000, max_value=2_000_000))
def test_pin_sample_passes_one_to_two_budgets(rate):
    """So the roaming budget is still spent in full (a roaming client's odds are those
    without the pin), and the daemon reads no more than two budgets' worth."""
    from vpncrypt.daemon.pinning import MAX_SAMPLE, Pins

    pins = Pins(budget=1000.0)
    sample = pins.sample_for(rate)
    assert sample & (sample - 1) == 0 and 2 <= sample <= MAX_SAMPLE
    assert 1000.0 <= rate / sample < 2000.0 or sample == MAX_SAMPLE


def test_pins_are_capped_and_forgotten_with_their_clients():
    from vpncrypt.daemon.pinning import MAX_PINS, Pins

    pins = Pins(budget=1000.0)
    pins.update({}, 0.0)
    flood = {cid: 2000 for cid in range(1, MAX_PINS + 50)}
    added, _, _ = pins.update(flood, 1.0)
    assert len(added) == len(pins.pinned) == MAX_PINS  # the first ones; the rest wait
    assert pins.forget([1, 2, 10**5]) and len(pins.pinned) == MAX_PINS - 2
    assert not pins.forget([10**5])
    added, _, _ = pins.update(flood, 2.0)  # freed room goes to the next ones over the rate
    assert len(added) == 2 and len(pins.pinned) == MAX_PINS

"""The failover decisions of a client with several servers (protocol/failover.py), fed
"sent" and "answered" events with made-up times."""

from vpncrypt.protocol.failover import BACKUP_EVERY, FAILBACK_HOLD, FAILOVER_SILENCE, Failover


def run(f, start, end, answering, step=0.5, sending=True):
    """Tick every `step` s from `start` to `end`: the client sends to the server in use
    and probes what is due; servers in `answering(i, t)` answer at once. Returns the
    switches [(time, from, to)]."""
    switches = []
    t = start
    while t <= end + 1e-9:
        for i in f.probes_due(t):
            f.sent(i, t)
            if answering(i, t):
                f.answered(i, t)
        if sending:
            f.sent(f.current, t)
            if answering(f.current, t):
                f.answered(f.current, t)
        before = f.current
        if f.decide(t) is not None:
            switches.append((t, before, f.current))
        t += step
    return switches


def test_stays_on_the_first_server_while_it_answers():
    f = Failover(3)
    assert run(f, 0, 120, lambda i, t: True) == []
    assert f.current == 0
    assert [f.state(i, 120) for i in range(3)] == ["in-use", "up", "up"]


def test_fails_over_to_the_next_server_after_the_silence():
    f = Failover(2)
    run(f, 0, 10, lambda i, t: True)
    dead_at = 10.2
    switches = run(f, 10.5, 20, lambda i, t: i != 0 or t < dead_at)
    assert len(switches) == 1
    when, old, new = switches[0]
    assert (old, new) == (0, 1)
    # The first unanswered send was at 10.5; down once that is more than the silence old.
    assert 10.5 + FAILOVER_SILENCE < when <= 10.5 + FAILOVER_SILENCE + 0.5
    assert f.state(0, 20) == "down" and f.state(1, 20) == "in-use"


def test_skips_a_server_known_to_be_down():
    f = Failover(3)
    alive = {0: True, 1: False, 2: True}
    run(f, 0, 5, lambda i, t: alive[i])
    assert f.state(1, 5) == "down"  # its start-up probe went unanswered
    alive[0] = False
    switches = run(f, 5.5, 10, lambda i, t: alive[i])
    assert [(o, n) for _, o, n in switches] == [(0, 2)]


def test_returns_to_the_preferred_server_only_after_the_hold():
    f = Failover(2)
    up = {0: False, 1: True}
    run(f, 0, 10, lambda i, t: up[i])
    assert f.current == 1
    back_at = 20.0
    switches = run(f, 10.5, 60, lambda i, t: i == 1 or t >= back_at)
    assert len(switches) == 1
    when, old, new = switches[0]
    assert (old, new) == (1, 0)
    assert back_at + FAILBACK_HOLD <= when <= back_at + FAILBACK_HOLD + 1.0
    assert f.state(0, 60) == "in-use" and f.state(1, 60) == "up"


def test_a_flapping_preferred_server_does_not_drag_the_client_back():
    f = Failover(2)
    run(f, 0, 5, lambda i, t: i == 1)
    assert f.current == 1
    # Server 0 answers for 6 s, is silent for 3 s, again and again: never a full hold.
    period = 9.0

    def answering(i, t):
        return i == 1 or (t % period) < 6.0

    switches = run(f, 5.5, 300, answering)
    assert switches == []
    assert f.current == 1
    states = {f.state(0, t) for t in (300.0,)}
    assert states <= {"returning", "down", "unknown"}


def test_a_flapping_server_in_use_costs_one_switch_per_failure_at_most():
    """Server 0 goes silent for 3 s every 20 s: each failure moves the client to 1 once,
    and it comes back only after 0 has been good for the hold again."""
    f = Failover(2)

    def answering(i, t):
        return i == 1 or not (10 <= t % 20 < 13)

    switches = run(f, 0, 200, answering)
    away = [s for s in switches if s[1] == 0]
    back = [s for s in switches if s[1] == 1]
    assert len(away) == 10  # one per outage
    for (t_away, _, _), (t_back, _, _) in zip(away, back):
        assert t_back - t_away >= FAILBACK_HOLD  # never sooner than the hold


def test_all_down_stays_put_then_takes_the_first_that_answers():
    f = Failover(3)
    alive = {0: True, 1: True, 2: True}
    run(f, 0, 2, lambda i, t: alive[i])
    alive.update({0: False, 1: False, 2: False})
    switches = run(f, 2.5, 10, lambda i, t: alive[i])
    # From 0 to 1, then to 2 (not probed since start: not known down), then stuck.
    assert [(o, n) for _, o, n in switches] == [(0, 1), (1, 2)]
    # Stuck, every other server is probed every second, not every BACKUP_EVERY.
    assert set(f.probes_due(100.0)) == {0, 1}
    assert set(f.probes_due(100.6)) == set()
    assert set(f.probes_due(101.0)) == {0, 1}
    alive[1] = True
    switches = run(f, 101.5, 104, lambda i, t: alive[i])
    assert [(o, n) for _, o, n in switches] == [(2, 1)]


def test_probe_schedule():
    f = Failover(3)
    assert f.probes_due(0.0) == [1, 2]  # everyone's clock at start
    assert f.probes_due(1.0) == []
    assert f.probes_due(BACKUP_EVERY) == [1, 2]
    f.current = 1
    f.next_probe[0] = 0.0
    assert f.probes_due(BACKUP_EVERY + 0.1) == [0]  # the preferred one, every second
    assert f.probes_due(BACKUP_EVERY + 1.1) == [0]


def test_idle_client_is_not_declared_down():
    """Nothing sent, nothing expected: silence alone is no failure."""
    f = Failover(2)
    assert run(f, 0, 60, lambda i, t: i != 0, sending=False) == []
    assert f.current == 0

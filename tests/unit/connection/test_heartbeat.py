"""The heartbeat deadline policy, driven by a fake clock: no sockets, no sleeping."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import pytest

from rabbit_ha_driver import from_url
from rabbit_ha_driver.clock import FakeClock
from rabbit_ha_driver.connection._heartbeat import (
    Action,
    Decision,
    HeartbeatPolicy,
    HeartbeatState,
    negotiated_interval,
)


@pytest.mark.parametrize(
    ("threshold", "interval"),
    [(0, 0), (2, 1), (3, 1), (4, 2), (5, 2), (6, 3), (30, 15), (60, 30)],
)
def test_negotiated_interval_is_half_of_t_in_whole_seconds(threshold, interval):
    assert negotiated_interval(threshold) == interval
    assert HeartbeatPolicy(threshold).negotiated_interval == interval


@pytest.mark.parametrize("threshold", range(2, 200))
def test_a_healthy_silence_of_one_interval_leaves_a_margin_of_at_least_one_second(threshold):
    h = negotiated_interval(threshold)
    assert h >= 1 and h + 1 <= threshold


@pytest.mark.parametrize("bad", [-1, 0.5, 1, 1.9])
def test_threshold_between_0_and_2_is_refused(bad):
    with pytest.raises(ValueError, match="threshold"):
        HeartbeatPolicy(bad)


def test_rate_below_one_is_refused():
    with pytest.raises(ValueError, match="rate"):
        HeartbeatPolicy(30, rate=0.5)


def test_policy_from_settings():
    s = from_url("rabbit://h1/", heartbeat_timeout_threshold=12, heartbeat_rate=4)
    p = HeartbeatPolicy.from_settings(s)
    assert (p.threshold, p.rate, p.negotiated_interval) == (12, 4, 6)
    assert p.send_interval() == 1.5
    assert p.dead_after() == 12


def test_dead_after_allows_two_intervals_when_the_interval_is_not_below_t():
    p = HeartbeatPolicy(10)
    assert p.dead_after(5) == 10
    assert p.dead_after(10) == 20
    assert p.dead_after(12) == 24


def drive(state: HeartbeatState, clock: FakeClock, until: float, *, inbound: Iterable[float] = (),
          outbound: Iterable[float] = (), writer_busy: Callable[[float], bool] = lambda now: False,
          ) -> list[tuple[float, Decision]]:
    """Run ``state`` the way a runner does: decide at each wake-up, sleep to the next.

    ``inbound``/``outbound`` are times of traffic noted by the connection's
    owner; the runner learns of them at its next wake-up, with their exact time.
    """
    ins, outs = sorted(inbound), sorted(outbound)
    log = []
    while clock.now() <= until:
        now = clock.now()
        while ins and ins[0] <= now:
            state.note_inbound(ins.pop(0))
        while outs and outs[0] <= now:
            state.note_outbound(outs.pop(0))
        d = state.decide(now)
        log.append((now, d))
        wake = d.wake_at
        if d.action is Action.SEND and writer_busy(now):
            wake = state.send_failed(now)
        if wake is None:
            break
        clock.advance(max(0.0, min(wake, until + 1) - now))
    return log


def sends(log: list[tuple[float, Decision]]) -> list[float]:
    return [t for t, d in log if d.action is Action.SEND]


def test_healthy_idle_connection_is_never_declared_dead():
    # The broker stays silent for almost a whole interval, with jitter.
    clock = FakeClock(0.0)
    policy = HeartbeatPolicy(30)
    state = policy.state(clock.now())
    rng = random.Random(7)
    inbound, t = [], 0.0
    while t < 3600:
        t += 15 * rng.uniform(0.95, 1.3)
        inbound.append(t)
    log = drive(state, clock, 3600, inbound=inbound)
    assert not [d for _, d in log if d.action is Action.DEAD]
    assert not [d for _, d in log if d.missed]


@pytest.mark.parametrize("threshold", [2, 3, 5, 30])
def test_silence_of_t_declares_dead_at_t_not_2t(threshold):
    clock = FakeClock(100.0)
    policy = HeartbeatPolicy(threshold)
    state = policy.state(clock.now())
    h = policy.negotiated_interval
    last = 100.0 + 10 * h
    inbound = [100.0 + k * h for k in range(1, 11)]
    log = drive(state, clock, last + 3 * threshold, inbound=inbound)
    when, decision = log[-1]
    assert decision.action is Action.DEAD
    assert when == pytest.approx(last + threshold)
    assert decision.silent_for == pytest.approx(threshold)
    assert decision.wake_at is None


def test_idle_connection_sends_a_frame_every_h_over_rate():
    clock = FakeClock(0.0)
    state = HeartbeatPolicy(30, rate=3).state(clock.now())
    log = drive(state, clock, 60, inbound=[15 * k for k in range(1, 5)])
    assert sends(log) == pytest.approx([5.0 * k for k in range(1, 13)])
    assert state.sent == 12


def test_default_rate_is_the_options_a_frame_every_h_over_1_5():
    # HeartbeatPolicy() without a rate behaves like the option's default
    # (heartbeat_rate = 1.5; test_defaults_agree.py keeps the two equal).
    clock = FakeClock(0.0)
    policy = HeartbeatPolicy(30)
    assert policy.rate == 1.5 and policy.send_interval() == pytest.approx(10.0)
    state = policy.state(clock.now())
    log = drive(state, clock, 60, inbound=[15 * k for k in range(1, 5)])
    assert sends(log) == pytest.approx([10.0 * k for k in range(1, 7)])


def test_wake_ups_are_deadlines_only():
    # An idle healthy connection wakes for its sends and nothing else.
    clock = FakeClock(0.0)
    state = HeartbeatPolicy(6, rate=2).state(clock.now())  # H = 3, a frame every 1.5 s
    log = drive(state, clock, 30, inbound=[3 * k - 0.01 for k in range(1, 11)])
    wakes = [t for t, _ in log][1:]
    assert wakes == pytest.approx([1.5 * k for k in range(1, 21)])
    assert all(d.action is Action.SEND for _, d in log[1:])


def test_other_outbound_frames_make_heartbeats_unnecessary():
    clock = FakeClock(0.0)
    state = HeartbeatPolicy(30, rate=3).state(clock.now())  # a frame every H/3 = 5 s
    publishes = [k * 2.0 for k in range(1, 31)]  # a frame every 2 s < H/3
    log = drive(state, clock, 70, inbound=[15 * k for k in range(1, 5)], outbound=publishes)
    # None while publishing; once it stops, heartbeats resume H/3 after the last frame.
    assert sends(log) == pytest.approx([65.0, 70.0])


def test_frame_the_writer_could_not_send_is_retried_shortly_and_not_counted():
    clock = FakeClock(0.0)
    state = HeartbeatPolicy(30, rate=3).state(clock.now())  # a frame every H/3 = 5 s
    busy_until = 5.6
    log = drive(state, clock, 12, inbound=[10.0], writer_busy=lambda now: now < busy_until)
    attempts = sends(log)
    assert attempts[0] == pytest.approx(5.0)
    assert attempts[1] == pytest.approx(5.25)  # retried after SEND_RETRY
    assert attempts[3] == pytest.approx(5.75)  # the first that went out
    assert attempts[4] == pytest.approx(10.75)  # next one H/3 after it
    assert state.sent == 2


def test_missed_heartbeat_reported_once_per_silence():
    clock = FakeClock(0.0)
    state = HeartbeatPolicy(30).state(clock.now())  # H = 15: missed after 22.5 s
    log = drive(state, clock, 100, inbound=[10.0, 40.0])
    missed = [t for t, d in log if d.missed]
    assert missed == pytest.approx([32.5, 62.5])
    assert log[-1][1].action is Action.DEAD
    assert log[-1][0] == pytest.approx(70.0)


def test_state_that_does_not_send_only_watches():
    clock = FakeClock(0.0)
    state = HeartbeatPolicy(10).state(clock.now(), sends=False)
    assert state.next_send_at() is None
    log = drive(state, clock, 100, inbound=[4.0, 8.0])
    assert sends(log) == []
    # Wake-ups: the missed-heartbeat report and the dead deadline, moved by
    # the inbound traffic the runner finds at each wake-up.
    assert [t for t, _ in log] == pytest.approx([0.0, 7.5, 11.5, 15.5, 18.0])
    assert [d.missed for _, d in log] == [False, False, False, True, False]
    assert log[-1][1].action is Action.DEAD


def test_heartbeats_off():
    state = HeartbeatPolicy(0).state(0.0)
    assert not state.enabled
    d = state.decide(1e9)
    assert (d.action, d.wake_at) == (Action.NOTHING, None)
    assert state.next_wakeup() is None
    # A connection the broker negotiated without heartbeats is not watched either.
    assert not HeartbeatPolicy(30).state(0.0, interval=0).enabled


def test_decision_wake_at_is_the_earliest_deadline():
    state = HeartbeatPolicy(30, rate=3).state(0.0)  # a frame every H/3 = 5 s
    d = state.decide(3.0)
    assert d.action is Action.NOTHING
    assert d.wake_at == pytest.approx(5.0) == state.next_send_at()
    state.note_outbound(4.9)
    assert state.next_wakeup() == pytest.approx(9.9)
    assert state.dead_at() == pytest.approx(30.0)


def test_times_in_the_past_never_move_deadlines_back():
    state = HeartbeatPolicy(30, rate=3).state(50.0)  # a frame every H/3 = 5 s
    state.note_inbound(40.0)
    state.note_outbound(45.0)
    assert state.dead_at() == 80.0
    assert state.next_send_at() == 55.0


def test_owner_times_from_the_future_are_taken_as_now():
    state = HeartbeatPolicy(30).state(0.0)
    state.observe(10.0, inbound_at=10.5, outbound_at=11.0)
    assert state.last_inbound == state.last_outbound == 10.0


# -- inbound seen only as unread bytes (the owner cannot read: a blocked hub) --


def drive_blocked_owner(policy: HeartbeatPolicy, arrivals: list[float], until: float,
                        ) -> list[tuple[float, Decision]]:
    """The owner reads nothing; the runner only sees the kernel's unread count grow."""
    clock = FakeClock(0.0)
    state = policy.state(clock.now())
    log = []
    while clock.now() <= until:
        now = clock.now()
        pending = sum(1 for t in arrivals if t <= now) * 8
        state.observe(now, marker=pending)
        d = state.decide(now)
        log.append((now, d))
        if d.wake_at is None:
            break
        clock.advance(d.wake_at - now)
    return log


@pytest.mark.parametrize("threshold", [2, 3, 10, 30])
def test_unread_bytes_keep_a_connection_with_a_blocked_owner_alive(threshold):
    policy = HeartbeatPolicy(threshold)
    h = policy.negotiated_interval
    arrivals = [k * h * 0.999 for k in range(1, 200)]
    log = drive_blocked_owner(policy, arrivals, until=arrivals[-1] - 1)
    assert not [d for _, d in log if d.action is Action.DEAD]


@pytest.mark.parametrize("threshold", [2, 3, 10, 30])
@pytest.mark.parametrize("rate", [1, 2, 3, 10])
def test_unread_bytes_evidence_never_declares_early_nor_late(threshold, rate):
    policy = HeartbeatPolicy(threshold, rate=rate)
    h = policy.negotiated_interval
    for offset in (0.0, 0.01, 0.3, 0.77):
        arrivals = [k * h + offset for k in range(1, 6)]
        log = drive_blocked_owner(policy, arrivals, until=1000)
        when, d = log[-1]
        assert d.action is Action.DEAD
        silence = when - arrivals[-1]
        # Never a false alarm: silent well past one interval...
        assert silence >= (policy.dead_after(h) + h) / 2 - 1e-9
        # ...and never later than T + 1 s after the last byte.
        assert silence <= threshold + 1


def test_first_observation_of_a_marker_is_only_a_baseline():
    state = HeartbeatPolicy(10).state(0.0)
    state.observe(0.0, marker=500)  # bytes already waiting when the watch began
    state.observe(9.0, marker=500)
    assert state.dead_at() == 10.0
    state.observe(9.5, marker=508)
    assert state.last_inbound == pytest.approx(9.0)  # the previous observation

"""The polling loop's failures in a row, as a value; the pauses the listener takes."""

from __future__ import annotations

import pytest

from rabbit_ha_driver.connection import Backoff
from rabbit_ha_driver.rpc.failure_streak import FailureStreak
from rabbit_ha_driver.rpc.listener import POLL_BACKOFF


def test_each_failure_counts_and_keeps_when_the_streak_began():
    streak = FailureStreak(Backoff(interval=1.0, step=1.0, cap=2.5, jitter=0.0))
    assert (streak.attempts, streak.pause, streak.seconds(50.0)) == (0, 0.0, 0.0)
    first = streak.failed(10.0)
    second = first.failed(11.0)
    third = second.failed(13.0)
    assert [s.attempts for s in (first, second, third)] == [1, 2, 3]
    assert [s.pause for s in (first, second, third)] == [1.0, 2.0, 2.5]
    assert third.first_at == 10.0 and third.seconds(14.5) == 4.5
    assert streak.attempts == 0  # a value: failing made new ones


def test_a_success_clears_the_streak():
    streak = FailureStreak(POLL_BACKOFF).failed(1.0).failed(2.0)
    cleared = streak.cleared()
    assert cleared == FailureStreak(POLL_BACKOFF)
    assert cleared.cleared() is cleared


def test_the_listener_pauses_longer_while_failures_go_on_at_most_five_seconds():
    streak = FailureStreak(POLL_BACKOFF)
    pauses = []
    for n in range(16):
        streak = streak.failed(float(n))
        pauses.append(streak.pause)
    assert pauses[:4] == pytest.approx([0.2, 0.6, 1.0, 1.4])
    assert pauses == sorted(pauses) and max(pauses) == 5.0

"""The connect plan and the consumer-cancel schedule: pure values, no clock of their own."""

from __future__ import annotations

import pytest

from rabbit_ha_driver.connection._cancels import CancelSchedule
from rabbit_ha_driver.connection._connect_plan import Attempt, ConnectPlan, GiveUp, Pause, Why
from rabbit_ha_driver.connection._hosts import HostRing
from rabbit_ha_driver.connection._retry import Backoff
from rabbit_ha_driver.settings import Host

HOSTS = [Host("a", 1), Host("b", 2), Host("c", 3)]
BACKOFF = Backoff(interval=1.0, step=1.0, cap=3.0, jitter=0.0)


def plan(max_retries: int = 0, hosts: list[Host] | None = HOSTS) -> ConnectPlan:
    ring = HostRing(hosts) if hosts else None
    return ConnectPlan(ring, BACKOFF, max_retries)


def walk(p: ConnectPlan, failures: int, now: float = 0.0, forever: bool = False) -> list[object]:
    """Fail ``failures`` attempts in a row; what the plan said at each step."""
    said: list[object] = []
    for _ in range(failures):
        step = p.next_attempt(deadline_expired=False)
        said.append(step)
        if isinstance(step, GiveUp):
            break
        said.append(p.failed(now, forever=forever))
    return said


def test_the_next_host_comes_at_once_and_a_pause_only_after_a_whole_pass():
    said = walk(plan(), 4)
    assert said == [
        Attempt(HOSTS[0], 1), None,
        Attempt(HOSTS[1], 2), None,
        Attempt(HOSTS[2], 3), Pause(1.0, 1.0, 1),
        Attempt(HOSTS[0], 4), None,
    ]


def test_pauses_grow_per_failed_pass_up_to_the_cap():
    p = plan(hosts=[Host("a", 1)])
    pauses = [step for step in walk(p, 5) if isinstance(step, Pause)]
    assert [pause.seconds for pause in pauses] == [1.0, 2.0, 3.0, 3.0, 3.0]
    assert p.failed_passes == 5


def test_a_pause_outlives_the_connect_that_began_it():
    p = plan(hosts=[Host("a", 1)])
    walk(p, 1, now=10.0)
    p.begin()  # a later, shorter turn of a draining consumer
    assert p.wait_due(10.4) == pytest.approx(0.6)
    assert p.wait_due(12.0) == 0.0


def test_at_least_one_attempt_even_with_no_time_left_then_give_up():
    p = plan()
    first = p.next_attempt(deadline_expired=True)
    assert first == Attempt(HOSTS[0], 1)
    p.failed(0.0, forever=False)
    assert p.next_attempt(deadline_expired=True) == GiveUp(Why.DEADLINE, 1, 0)


def test_max_retries_ends_a_connect_without_a_deadline_only():
    p = plan(max_retries=2)
    said = walk(p, 6, forever=True)
    assert said[-1] == GiveUp(Why.MAX_RETRIES, 6, 2)
    with_deadline = plan(max_retries=2)
    assert not any(isinstance(s, GiveUp) for s in walk(with_deadline, 9, forever=False))


def test_success_forgets_the_failures_and_a_loss_moves_to_the_next_host():
    p = plan()
    walk(p, 3, now=5.0)
    assert p.failed_passes == 1 and p.wait_due(5.0) > 0
    p.begin()
    assert p.next_attempt(False) == Attempt(HOSTS[0], 1)
    p.succeeded()
    assert (p.failed_passes, p.wait_due(5.0)) == (0, 0.0)
    p.lost()
    p.begin()
    assert p.next_attempt(False) == Attempt(HOSTS[1], 1)
    # A fresh pass: two more failures do not pause yet.
    assert walk(p, 2)[1::2] == [None, None]


def test_the_memory_broker_has_no_hosts_and_pauses_after_each_failure():
    p = plan(hosts=None, max_retries=1)
    said = walk(p, 2, forever=True)
    assert said == [Attempt(None, 1), Pause(1.0, 1.0, 1), Attempt(None, 2), Pause(2.0, 2.0, 2)]


def test_cancelled_consumers_come_due_after_their_delay_oldest_first():
    s = CancelSchedule()
    assert not s and s.wait(0.0) is None
    s.cancelled("q2", now=1.0, delay=2.0)
    s.cancelled("q1", now=0.0, delay=2.0)
    assert s and "q1" in s and s.keys() == {"q1", "q2"}
    assert s.wait(0.5) == pytest.approx(1.5)
    assert s.due_count(1.5) == 0 and s.pop_due(1.5) is None
    assert s.due_count(3.0) == 2
    assert [s.pop_due(3.0), s.pop_due(3.0)] == ["q1", "q2"]
    assert not s and s.pop_due(10.0) is None


def test_a_restore_that_failed_is_reported_once_after_the_reconnect():
    s = CancelSchedule()
    s.cancelled("q", now=0.0, delay=0.0)
    assert s.pop_due(0.0) == "q"
    s.restore_by_reconnect("q")
    s.restore_by_reconnect("q")
    assert s.reconnected() == ["q"]
    assert s.reconnected() == []


def test_a_lost_connection_clears_what_waits_its_reconnect_consumes_everything():
    s = CancelSchedule()
    s.cancelled("q", now=0.0, delay=5.0)
    s.clear()
    assert not s and s.pop_due(10.0) is None

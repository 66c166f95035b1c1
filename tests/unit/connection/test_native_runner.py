"""The native scheduler's edges with a fake clock: a poke during a step, a cancel
during a failed write, a forked child, and the outbox drained by a green thread."""

from __future__ import annotations

import os
import select
import sys
import threading
import time

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.clock import FakeClock
from rabbit_ha_driver.connection import _native_runner as native_runner
from rabbit_ha_driver.connection import _natives as natives
from rabbit_ha_driver.connection._heartbeat import HeartbeatPolicy
from rabbit_ha_driver.connection._native_runner import NativeScheduler
from rabbit_ha_driver.connection._natives import Natives
from rabbit_ha_driver.connection._outbox import Outbox
from rabbit_ha_driver.connection._watch import Watch

from .test_runners import FakeMember


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock(0.0)


def test_a_poke_while_the_connection_is_stepped_is_not_lost(fake_clock):
    sched = NativeScheduler(clock=fake_clock)
    m = FakeMember(fake_clock)
    w = sched.watch(m, HeartbeatPolicy(30, rate=3))
    first = sched.run_pending()
    assert first is not None and first > 1.0
    fake_clock.advance(first)
    sent = len(m.sent)
    observe = m.last_inbound_at

    def poked_meanwhile() -> float | None:
        w.poke()  # another thread asks for a look while this step runs
        return observe()

    m.last_inbound_at = poked_meanwhile  # type: ignore[method-assign]
    assert sched.run_pending() == pytest.approx(fake_clock.now())
    assert len(m.sent) == sent + 1  # the step itself went on


def test_a_connection_cancelled_while_its_write_fails_is_not_declared_dead(fake_clock):
    bus, rec = ev.EventBus(), ev.Recorder()
    bus.subscribe(rec)
    m = FakeMember(fake_clock)
    w = Watch(m, HeartbeatPolicy(30, rate=3), 0.0, runner="native", native=True, events=bus)

    def closed_by_its_owner(native: bool) -> bool:
        w.cancel()
        raise OSError("socket closed by its owner")

    m.send_heartbeat = closed_by_its_owner  # type: ignore[method-assign]
    wake = w.step(0.0)
    while wake is not None and not w.cancelled:
        wake = w.step(wake)
    assert wake is None and w.cancelled
    assert m.dead is None and not w.dead
    assert not [e for e in rec.events if isinstance(e, ev.DeclaredDead)]
    assert w.step(wake or 1e6) is None  # no longer served


def test_in_a_forked_child_cancel_and_poke_leave_the_parents_scheduler_alone(fake_clock):
    sched = NativeScheduler(clock=fake_clock)
    w = sched.watch(FakeMember(fake_clock), HeartbeatPolicy(30, rate=3))
    sched._pid = os.getpid() + 1  # as if this process were a child of the one that made it
    w.poke()
    w.cancel()
    assert len(sched) == 1  # its lock may be held by a thread that does not exist here


def test_a_fork_forgets_the_shared_scheduler(monkeypatch):
    monkeypatch.setattr(native_runner, "_shared", native_runner._shared)
    monkeypatch.setattr(native_runner, "_shared_lock", native_runner._shared_lock)
    native_runner._forget_shared_after_fork()
    assert native_runner._shared is None


def test_without_eventlet_imported_nothing_is_patched(monkeypatch):
    monkeypatch.delitem(sys.modules, "eventlet", raising=False)
    assert natives.eventlet_patched() is False


def test_the_outbox_pump_runs_posts_of_another_thread_in_the_hub():
    eventlet = pytest.importorskip("eventlet")
    box = Outbox(Natives(True, threading, select, os, time))
    box.ensure_pump()
    box.ensure_pump()  # one pump
    seen: list[str] = []
    poster = threading.Thread(target=box.post, args=(seen.append, "from the native thread"))
    poster.start()
    poster.join(5)
    try:
        for _ in range(1000):
            if seen:
                break
            eventlet.sleep(0.001)  # the hub waits on the outbox's pipe
        assert seen == ["from the native thread"]
    finally:
        box._pump.kill()
        os.close(box._rfd)
        os.close(box._wfd)

"""Heartbeat runners: the native scheduler's loop driven by a fake clock, the green loop, selection."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.clock import FakeClock
from rabbit_ha_driver.connection import _runners as runners
from rabbit_ha_driver.connection._heartbeat import HeartbeatPolicy
from rabbit_ha_driver.connection._outbox import Outbox
from rabbit_ha_driver.connection._runners import GreenRunner, Natives, NativeScheduler, Watch
from rabbit_ha_driver.exceptions import ConfigurationError


class FakeMember:
    """A connection as a runner sees it, with a broker that can be scripted."""

    def __init__(self, clock: FakeClock, name: str = "c1", interval: float = 15.0, *,
                 native_heartbeats: bool = True) -> None:
        self.clock = clock
        self.name = name
        self.host = "127.0.0.1:5672"
        self.heartbeat_interval = interval
        self.native_heartbeats = native_heartbeats
        self.inbound_at: float | None = None
        self.outbound_at: float | None = None
        self.marker = 0
        self.sent: list[tuple[float, bool]] = []
        self.busy = False
        self.fail: BaseException | None = None
        self.dead: Any = None  # (when, silent_for, reason) once declared dead
        self.observations = 0

    def last_inbound_at(self):
        self.observations += 1
        return self.inbound_at

    def inbound_marker(self):
        if isinstance(self.fail, RuntimeError):
            raise self.fail
        return self.marker

    def last_outbound_at(self):
        return self.outbound_at

    def send_heartbeat(self, native: bool) -> bool:
        if isinstance(self.fail, OSError):
            raise self.fail
        if self.busy:
            return False
        self.sent.append((self.clock.now(), native))
        return True

    def declare_dead(self, silent_for: float, reason: str) -> None:
        self.dead = (self.clock.now(), silent_for, reason)

    def broker_heartbeats(self, every: float, until: float, start: float | None = None) -> None:
        """The broker's frames arrive every ``every`` seconds and the owner reads them."""
        t = (self.clock.now() if start is None else start) + every
        while t <= until:
            self.clock.call_at(t, lambda t=t: setattr(self, "inbound_at", t))
            t += every

    def send_times(self):
        return [t for t, _ in self.sent]


def run_until(sched: NativeScheduler, clock: FakeClock, until: float) -> list[float]:
    """Do what the scheduler's thread does, with fake time: run, sleep to the next deadline."""
    wakes: list[float] = []
    while True:
        wake = sched.run_pending()
        if wake is None or wake > until:
            clock.advance(max(0.0, until - clock.now()))
            return wakes
        clock.advance(max(0.0, wake - clock.now()))
        wakes.append(clock.now())


@pytest.fixture
def clock():
    return FakeClock(0.0)


@pytest.fixture
def sched(clock):
    return NativeScheduler(clock=clock)


@pytest.fixture
def recorder():
    bus = ev.EventBus()
    rec = ev.Recorder()
    bus.subscribe(rec)
    return bus, rec


def test_healthy_idle_connection_is_served_and_never_declared_dead(sched, clock):
    m = FakeMember(clock)
    m.broker_heartbeats(every=14.9, until=3600)
    sched.watch(m, HeartbeatPolicy(30, rate=3))
    run_until(sched, clock, 3600)
    assert m.dead is None
    assert m.send_times() == pytest.approx([5.0 * k for k in range(1, 721)])
    assert all(native for _, native in m.sent)


def test_silent_connection_is_declared_dead_at_t_with_events(sched, clock, recorder):
    bus, rec = recorder
    m = FakeMember(clock)
    m.broker_heartbeats(every=15, until=60)
    sched.watch(m, HeartbeatPolicy(30, rate=3), events=bus)
    run_until(sched, clock, 1000)
    when, silent, reason = m.dead
    assert when == pytest.approx(90.0)
    assert silent == pytest.approx(30.0)
    assert "nothing received for 30.0s" in reason
    [missed] = rec.of(ev.HeartbeatMissed)
    assert missed.silent_for == pytest.approx(22.5) and missed.host == m.host
    [dead] = rec.of(ev.DeclaredDead)
    assert (dead.connection, dead.silent_for, dead.threshold) == ("c1", pytest.approx(30.0), 30)
    assert len(sched) == 0
    assert sched.next_wakeup() is None


def test_wakes_only_at_deadlines(sched, clock):
    m = FakeMember(clock, interval=3)
    m.broker_heartbeats(every=2.9, until=60)
    sched.watch(m, HeartbeatPolicy(6, rate=2))
    wakes = run_until(sched, clock, 60)
    assert wakes == pytest.approx([1.5 * k for k in range(1, 41)])
    assert m.observations == 41  # the first look at registration, then one per deadline


def test_many_connections_one_scheduler(sched, clock):
    members = []
    for i in range(300):
        clock.advance(0.01)
        m = FakeMember(clock, name=f"c{i}")
        if i % 100 != 7:
            m.broker_heartbeats(every=15, until=400)
        sched.watch(m, HeartbeatPolicy(30, rate=3))
        members.append(m)
    start = clock.now()
    run_until(sched, clock, 400)
    dead = [m for m in members if m.dead]
    assert [m.name for m in dead] == ["c7", "c107", "c207"]
    for m in dead:
        assert m.dead[1] == pytest.approx(30.0)
    for m in members:
        if not m.dead:
            gaps = [b - a for a, b in zip(m.send_times(), m.send_times()[1:], strict=False)]
            assert gaps and all(g == pytest.approx(5.0) for g in gaps)
    assert len(sched) == 297
    assert start < 3.01


def test_removed_connection_is_left_alone(sched, clock):
    keep, gone = FakeMember(clock, "keep"), FakeMember(clock, "gone")
    keep.broker_heartbeats(every=15, until=200)
    watches = [sched.watch(keep, HeartbeatPolicy(30, rate=3)), sched.watch(gone, HeartbeatPolicy(30, rate=3))]
    run_until(sched, clock, 12)
    assert len(gone.sent) == 2
    watches[1].cancel()
    watches[1].cancel()  # twice is fine
    assert len(sched) == 1
    run_until(sched, clock, 200)
    assert len(gone.sent) == 2 and gone.dead is None
    assert keep.dead is None and len(keep.sent) == 40
    assert not watches[1].active and watches[0].active


def test_busy_writer_is_retried_shortly(sched, clock):
    m = FakeMember(clock)
    m.broker_heartbeats(every=15, until=100)
    sched.watch(m, HeartbeatPolicy(30, rate=3))
    run_until(sched, clock, 4.9)
    m.busy = True
    run_until(sched, clock, 5.6)
    m.busy = False
    run_until(sched, clock, 11)
    assert m.send_times() == pytest.approx([5.75, 10.75])


def test_write_error_declares_the_connection_dead(sched, clock, caplog):
    m = FakeMember(clock)
    m.fail = ConnectionResetError(104, "reset by peer")
    w = sched.watch(m, HeartbeatPolicy(30, rate=3))
    run_until(sched, clock, 100)
    assert m.dead[0] == pytest.approx(5.0)
    assert "heartbeat write failed" in m.dead[2] and "reset by peer" in w.dead_reason
    assert w.dead and len(sched) == 0
    assert "declaring the connection dead" in caplog.text


def test_a_write_error_is_an_event_the_metrics_count_at_once(sched, clock):
    m = FakeMember(clock)
    m.fail = ConnectionResetError(104, "reset by peer")
    bus, recorder = ev.EventBus(), ev.Recorder()
    bus.subscribe(recorder)
    sched.watch(m, HeartbeatPolicy(30, rate=3), events=bus)
    run_until(sched, clock, 100)
    [dead] = recorder.of(ev.DeclaredDead)
    assert dead.reason.startswith("heartbeat write failed") and "reset by peer" in dead.describe()


def test_cancel_while_a_step_writes_is_not_a_death(sched, clock, caplog):
    m = FakeMember(clock)
    w = sched.watch(m, HeartbeatPolicy(30, rate=3))
    sched.run_pending()

    def detached_meanwhile(native: bool) -> bool:
        w.cancel()  # the owner closes the connection while the frame goes out
        raise OSError(9, "connection detached from its heartbeat runner")

    m.send_heartbeat = detached_meanwhile  # type: ignore[method-assign]
    run_until(sched, clock, 100)
    assert m.dead is None and not w.dead
    assert "declaring the connection dead" not in caplog.text
    assert len(sched) == 0


def test_tls_connection_is_watched_but_not_written_by_the_native_thread(sched, clock):
    m = FakeMember(clock, native_heartbeats=False)
    m.broker_heartbeats(every=15, until=45)
    w = sched.watch(m, HeartbeatPolicy(30, rate=3))
    wakes = run_until(sched, clock, 200)
    assert m.sent == []
    assert m.dead[0] == pytest.approx(75.0)
    assert wakes == pytest.approx([22.5, 37.5, 52.5, 67.5, 75.0])
    assert not w.state.sends


def test_owner_traffic_replaces_heartbeats(sched, clock):
    m = FakeMember(clock)
    m.broker_heartbeats(every=15, until=100)
    sched.watch(m, HeartbeatPolicy(30, rate=3))
    for t in range(1, 60):
        clock.call_at(float(t), lambda t=t: setattr(m, "outbound_at", float(t)))
    run_until(sched, clock, 70)
    assert m.send_times() == pytest.approx([64.0, 69.0])


def test_unread_bytes_count_as_life(sched, clock):
    # The owner reads nothing (its hub is blocked), bytes pile up in the kernel.
    m = FakeMember(clock, interval=1)
    for k in range(1, 40):
        clock.call_at(k * 0.99, lambda: setattr(m, "marker", m.marker + 8))
    sched.watch(m, HeartbeatPolicy(3, rate=3))
    run_until(sched, clock, 45)
    assert m.dead is not None
    assert 39 * 0.99 + 2.0 <= m.dead[0] <= 39 * 0.99 + 3.0
    assert len(m.sent) >= 3 * 38


def test_poke_looks_at_a_connection_now(sched, clock):
    m = FakeMember(clock)
    w = sched.watch(m, HeartbeatPolicy(30, rate=3))
    sched.run_pending()
    assert sched.next_wakeup() == pytest.approx(5.0)
    clock.advance(1.0)
    w.poke()
    assert sched.next_wakeup() == pytest.approx(1.0)
    before = m.observations
    assert sched.run_pending() == pytest.approx(5.0)
    assert m.observations == before + 1


def test_unexpected_error_in_a_step_is_logged_and_retried(sched, clock, caplog):
    m = FakeMember(clock)
    m.fail = RuntimeError("boom")
    sched.watch(m, HeartbeatPolicy(30, rate=3))
    assert sched.run_pending() == pytest.approx(runners.STEP_ERROR_RETRY)
    assert "heartbeat step for 127.0.0.1:5672 failed" in caplog.text and "boom" in caplog.text
    m.fail = None
    m.broker_heartbeats(every=15, until=100)
    run_until(sched, clock, 20)
    assert m.dead is None and len(m.sent) == 4


def test_heartbeats_off_is_not_watched(sched, clock):
    assert not sched.watch(FakeMember(clock), HeartbeatPolicy(0)).active
    assert not sched.watch(FakeMember(clock, interval=0), HeartbeatPolicy(30, rate=3)).active
    assert len(sched) == 0


def test_native_thread_follows_the_fake_clock_step_by_step(clock):
    """The real thread: added connections wake it, pokes wake it, stop ends it; no real waiting."""
    sched = NativeScheduler(clock=clock).start()
    try:
        sent = threading.Event()
        m = FakeMember(clock)
        original = m.send_heartbeat

        def send(native):
            ok = original(native)
            sent.set()
            return ok

        m.send_heartbeat = send  # type: ignore[method-assign]
        w = sched.watch(m, HeartbeatPolicy(30, rate=3))
        clock.advance(5.0)  # the next frame is due now...
        w.poke()  # ...and the thread learns of it without waiting for its timeout
        assert sent.wait(10)
        assert m.sent == [(5.0, True)]
        assert sched.running
    finally:
        sched.stop()
    assert not sched.running


def test_shared_scheduler_is_one_thread_per_process():
    a, b = runners.native_scheduler(), runners.native_scheduler()
    assert a is b and a.running
    assert "threads" in repr(a)


def test_outbox_runs_posted_calls_later():
    natives = Natives(True, threading, select, os, time)
    box = Outbox(natives)
    seen: list[int] = []
    box.post(seen.append, 1)
    box.post(seen.append, 2)
    box.post(lambda: 1 / 0)
    assert seen == []
    assert box.drain() == 3
    assert seen == [1, 2]
    assert box.drain() == 0


def test_scheduler_in_a_patched_process_posts_instead_of_emitting(clock):
    natives = Natives(True, threading, select, os, time)
    sched = NativeScheduler(clock=clock, natives=natives)
    outbox = sched._outbox
    assert outbox is not None
    outbox.ensure_pump = lambda: None  # type: ignore[method-assign]  # no hub in this test
    bus, rec = ev.EventBus(), ev.Recorder()
    bus.subscribe(rec)
    m = FakeMember(clock)
    sched.watch(m, HeartbeatPolicy(30, rate=3), events=bus)
    run_until(sched, clock, 100)
    assert m.dead is not None
    assert rec.events == []
    outbox.drain()
    assert [type(e) for e in rec.events] == [ev.HeartbeatMissed, ev.DeclaredDead]


# -- the green runner ----------------------------------------------------------


def test_green_loop_wakes_at_deadlines_and_at_least_every_half_interval(clock):
    m = FakeMember(clock, interval=15)
    m.broker_heartbeats(every=15, until=45)
    w = Watch(m, HeartbeatPolicy(30, rate=1), clock.now(), runner="green", native=False)
    runners.run_green(w, clock, clock.sleep)
    assert max(clock.sleeps) <= 7.5
    assert m.send_times() == pytest.approx([15.0, 30.0, 45.0, 60.0])
    assert all(not native for _, native in m.sent)
    assert m.dead[0] == pytest.approx(75.0)


def test_green_loop_survives_an_unexpected_error(clock, caplog):
    m = FakeMember(clock)
    m.fail = RuntimeError("boom")
    w = Watch(m, HeartbeatPolicy(30, rate=3), clock.now(), runner="green", native=False)

    def sleep(s):
        m.fail = None
        clock.sleep(s)

    runners.run_green(w, clock, sleep)
    assert "boom" in caplog.text
    assert m.dead is not None


def test_green_runner_spawns_a_green_thread_and_cancel_kills_it(clock):
    eventlet = pytest.importorskip("eventlet")

    def sleep(seconds):
        clock.advance(seconds)
        eventlet.sleep(0)

    m = FakeMember(clock)
    m.broker_heartbeats(every=15, until=10**6)
    w = GreenRunner(clock=clock, sleep=sleep).watch(m, HeartbeatPolicy(30, rate=3))
    for _ in range(10):
        eventlet.sleep(0)
    assert len(m.sent) >= 5 and all(not native for _, native in m.sent)
    w.cancel()
    count = len(m.sent)
    for _ in range(10):
        eventlet.sleep(0)
    assert len(m.sent) == count
    assert not GreenRunner(clock=clock).watch(FakeMember(clock), HeartbeatPolicy(0)).active


def test_acquire_cooperatively_yields_to_the_hub_until_the_lock_is_free():
    eventlet = pytest.importorskip("eventlet")
    lock = threading.Lock()
    runners.acquire_cooperatively(lock)  # free: taken at once
    got = []

    def waiter():
        runners.acquire_cooperatively(lock)
        got.append(True)
        lock.release()

    eventlet.spawn(waiter)
    for _ in range(5):
        eventlet.sleep(0)
    assert got == []
    lock.release()
    for _ in range(1000):
        if got:
            break
        eventlet.sleep(0.001)
    assert got == [True]


# -- choosing a runner -----------------------------------------------------------


def test_auto_and_native_select_the_shared_scheduler():
    for choice in ("auto", "native"):
        runner, reason = runners.select_runner(choice)
        assert runner is runners.native_scheduler()
        assert "one OS thread" in reason and "monkey-patching" not in reason


def test_auto_mentions_monkey_patching_when_detected(monkeypatch, clock):
    monkeypatch.setattr(runners, "eventlet_patched", lambda: True)
    fake = NativeScheduler(clock=clock, natives=Natives(False, threading, select, os, time))
    monkeypatch.setattr(runners, "native_scheduler", lambda: fake)
    runner, reason = runners.select_runner("auto")
    assert runner is fake
    assert "monkey-patching detected" in reason and "never the hub" in reason


def test_green_is_chosen_only_when_asked():
    runner, reason = runners.select_runner("green")
    assert isinstance(runner, GreenRunner)
    assert "stalls while the eventlet hub is blocked" in reason


def test_unknown_runner_names_the_option():
    with pytest.raises(ConfigurationError, match="heartbeat_runner"):
        runners.select_runner("fast")


def test_watch_connection_reports_the_runner(monkeypatch, clock, recorder):
    bus, rec = recorder
    fake = NativeScheduler(clock=clock)
    monkeypatch.setattr(runners, "native_scheduler", lambda: fake)
    w = runners.watch_connection(FakeMember(clock, native_heartbeats=False), HeartbeatPolicy(30, rate=3),
                                 events=bus)
    [selected] = rec.of(ev.RunnerSelected)
    assert selected.runner == "native" and "over TLS" in selected.reason
    assert w.active and len(fake) == 1
    assert "native" in repr(w) and "active" in repr(w)


def test_not_patched_in_this_process():
    assert runners.eventlet_patched() is False
    assert runners.native_modules().threading is threading


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.strip()


def test_importing_the_library_does_not_import_eventlet():
    out = run_python(
        "import sys, rabbit_ha_driver, rabbit_ha_driver.connection._runners, "
        "rabbit_ha_driver.connection._amqp_io\n"
        "from rabbit_ha_driver.connection import _runners as runners\n"
        "print('eventlet' in sys.modules, runners.eventlet_patched())"
    )
    assert out == "False False"


def test_importing_eventlet_is_not_patching_but_monkey_patching_is_detected():
    out = run_python(
        "import eventlet\n"
        "from rabbit_ha_driver.connection import _runners as runners\n"
        "before = runners.eventlet_patched()\n"
        "eventlet.monkey_patch()\n"
        "import threading\n"
        "n = runners.native_modules()\n"
        "print(before, runners.eventlet_patched(), n.patched, n.threading is threading)"
    )
    assert out == "False True True False"

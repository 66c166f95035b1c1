"""A green thread per connection: the classic heartbeat runner.

How this works. :class:`GreenRunner` spawns an eventlet green thread per
connection that runs :func:`run_green`: one :meth:`~._watch.Watch.step`,
then a sleep until the next deadline, but never longer than half an
interval. It stalls while the hub is blocked (a CPU-bound request); the
broker then closes the connection for missed heartbeats. It exists for
comparison and for configurations that ask for it (``heartbeat_runner =
green``). It runs in the owner's hub, so it always sends its heartbeats
through py-amqp's own frame writer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.connection._heartbeat import HeartbeatPolicy
from rabbit_ha_driver.connection._natives import native_modules
from rabbit_ha_driver.connection._watch import LOG, Monitored, Watch


def run_green(watch: Watch, clock: Clock, sleep: Callable[[float], Any]) -> None:
    """The green runner's loop for one connection: step, then sleep.

    Sleeps until the next deadline, but never longer than half an interval.
    """
    max_gap = watch.state.interval / 2.0
    while True:
        now = clock.now()
        try:
            wake = watch.step(now)
        except Exception:
            LOG.exception("[%s] heartbeat step for %s failed", watch.member.name, watch.member.host)
            wake = now + max_gap
        if wake is None:
            return
        sleep(max(0.0, min(wake, now + max_gap) - now))


class GreenRunner:
    """An eventlet green thread per connection (stalls while the hub is blocked)."""

    kind = "green"

    def __init__(self, *, clock: Clock = REAL_CLOCK, sleep: Callable[[float], Any] | None = None) -> None:
        self._clock = clock
        self._sleep = sleep

    def watch(self, member: Monitored, policy: HeartbeatPolicy,
              events: ev.EventBus | None = None) -> Watch:
        import eventlet

        w = Watch(member, policy, self._clock.now(), runner=self.kind, native=False, events=events)
        if not w.active:
            LOG.debug("[%s] heartbeats off for %s; not watched", member.name, member.host)
            return w
        thread = eventlet.spawn(run_green, w, self._clock, self._sleep or eventlet.sleep)
        owner = native_modules().threading.get_ident()

        def cancel(_: Watch) -> None:
            # Killing a green thread is only possible from its hub's OS thread;
            # elsewhere the loop ends at its next wake-up.
            if native_modules().threading.get_ident() == owner:
                thread.kill()

        w._on_cancel = cancel
        return w


__all__ = ["GreenRunner", "run_green"]

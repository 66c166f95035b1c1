"""One connection served by a heartbeat runner: what it offers, and the step.

How this works. A runner serves connections through the :class:`Monitored`
protocol below and drives a :class:`~._heartbeat.HeartbeatState` per
connection, held by a :class:`Watch`: at each deadline :meth:`Watch.step`
observes the connection (times of the owner's last read and write, a marker
of unread inbound bytes), asks the state for a decision, and sends a
heartbeat frame or declares the connection dead. Both runners
(:mod:`~._native_runner`, :mod:`~._green_runner`) share that step; they differ
in what sleeps.

The step never logs or emits an event itself: it hands them to ``post``
(:data:`Post`), which runs them at once, or, from the native scheduler's
thread in a monkey-patched process, later in the hub (:mod:`~._outbox`).

The protocol a served connection implements (``amqp_link.AmqpLink`` is the
py-amqp one)::

    class Monitored(Protocol):
        name: str                      # connection name, for events and logs
        host: str                      # "127.0.0.1:5672"
        heartbeat_interval: float      # H negotiated for this connection; 0 = off
        native_heartbeats: bool        # send_heartbeat(native=True) can write
                                       # from any OS thread (over TLS only if
                                       # every use of the SSL object is guarded)
        def last_inbound_at() -> float | None    # owner's last read, or None
        def inbound_marker() -> Hashable         # changes when bytes arrive unread
        def last_outbound_at() -> float | None   # owner's last write, or None
        def send_heartbeat(native: bool) -> bool # one whole frame; False: writer
                                                 # busy, try again; OSError: dead
        def declare_dead(silent_for: float, reason: str) -> None
                                       # thread-safe; wakes a blocked reader

Times come from the same monotonic clock the runner uses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.connection._heartbeat import Action, HeartbeatPolicy

# The heartbeat runners' log records keep the name log configurations know.
LOG = logging.getLogger("rabbit_ha_driver.connection._runners")


class Monitored(Protocol):
    """A connection as a runner sees it (see the module docstring)."""

    name: str
    host: str

    @property
    def heartbeat_interval(self) -> float: ...

    @property
    def native_heartbeats(self) -> bool: ...

    def last_inbound_at(self) -> float | None: ...

    def inbound_marker(self) -> Hashable: ...

    def last_outbound_at(self) -> float | None: ...

    def send_heartbeat(self, native: bool) -> bool: ...

    def declare_dead(self, silent_for: float, reason: str) -> None: ...


Post = Callable[..., None]
"""``post(fn, *args)``: run ``fn(*args)`` now or later, where logging is safe."""


def run_now(fn: Callable[..., Any], *args: Any) -> None:
    """The :data:`Post` of a context where logging is safe: run ``fn`` at once."""
    fn(*args)


class Watch:
    """One connection served by a runner: its state and the step around it.

    :meth:`cancel` stops serving it (call it before closing the connection);
    :meth:`poke` asks the runner to look at it now.
    """

    def __init__(
        self,
        member: Monitored,
        policy: HeartbeatPolicy,
        now: float,
        *,
        runner: str,
        native: bool,
        events: ev.EventBus | None = None,
        post: Post = run_now,
    ) -> None:
        self.member = member
        self.policy = policy
        self.runner = runner
        self.native = native
        sends = bool(member.native_heartbeats) if native else True
        self.state = policy.state(now, member.heartbeat_interval, sends=sends)
        self.cancelled = False
        self.dead = False
        self.dead_reason: str | None = None
        self._events = events
        self._post = post
        self._on_cancel: Callable[[Watch], None] | None = None
        self._on_poke: Callable[[Watch], None] | None = None
        # Scheduling bookkeeping of the native scheduler.
        self._gen = 0
        self._at = now

    @property
    def active(self) -> bool:
        """Still served: heartbeats on, not cancelled, not declared dead."""
        return self.state.enabled and not self.cancelled and not self.dead

    def cancel(self) -> None:
        """Stop serving this connection. Safe to call twice."""
        if self.cancelled:
            return
        self.cancelled = True
        if self._on_cancel is not None:
            self._on_cancel(self)

    def poke(self) -> None:
        """Look at the connection now rather than at its next deadline."""
        if self._on_poke is not None and self.active:
            self._on_poke(self)

    def step(self, now: float) -> float | None:
        """Observe, decide, act. Returns the next wake-up time, or None when done."""
        state = self.state
        if self.cancelled or self.dead or not state.enabled:  # not self.active
            return None
        m = self.member
        state.observe(now, inbound_at=m.last_inbound_at(), marker=m.inbound_marker(),
                      outbound_at=m.last_outbound_at())
        decision = state.decide(now)
        if decision.missed:
            self._emit(ev.HeartbeatMissed(m.name, m.host, decision.silent_for))
        if decision.action is Action.DEAD:
            self._die(decision.silent_for, f"nothing received for {decision.silent_for:.1f}s "
                      f"(threshold {state.dead_after:g}s)")
            self._emit(ev.DeclaredDead(m.name, m.host, decision.silent_for, state.dead_after))
            return None
        if decision.action is Action.SEND:
            try:
                written = m.send_heartbeat(self.native)
            except OSError as error:
                if self.cancelled:  # detached by its owner meanwhile: closed on purpose
                    return None
                reason = f"heartbeat write failed: {error}"
                self._die(decision.silent_for, reason)
                if self._events is None:
                    self._post(LOG.warning, "[%s] heartbeat to %s failed (%s); declaring the "
                               "connection dead", m.name, m.host, error)
                else:  # logged by the event; the metrics count it now, not at the next use
                    self._emit(ev.DeclaredDead(m.name, m.host, decision.silent_for,
                                               state.dead_after, reason))
                return None
            if not written:
                return state.send_failed(now)
        return decision.wake_at

    def _die(self, silent_for: float, reason: str) -> None:
        self.dead = True
        self.dead_reason = reason
        self.member.declare_dead(silent_for, reason)

    def _emit(self, event: ev.Event) -> None:
        if self._events is not None:
            self._post(self._events.emit, event)

    def __repr__(self) -> str:
        status = "dead" if self.dead else "cancelled" if self.cancelled else "active"
        return f"<Watch {self.member.name} {self.member.host} {self.runner} {status} {self.state!r}>"


class Runner(Protocol):
    """Serves connections: :class:`~._native_runner.NativeScheduler` or
    :class:`~._green_runner.GreenRunner`."""

    kind: str

    def watch(self, member: Monitored, policy: HeartbeatPolicy,
              events: ev.EventBus | None = None) -> Watch: ...


__all__ = ["Monitored", "Post", "Runner", "Watch", "run_now"]

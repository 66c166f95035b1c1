"""Which heartbeat runner serves a connection: one native thread for all, or a green thread each.

How this works. A runner keeps heartbeats flowing and finds dead peers for
the connections it watches; each connection is a :class:`~._watch.Watch`
around the pure :class:`~._heartbeat.HeartbeatState`, stepped at its
deadlines. The two runners differ in what sleeps:

* :class:`~._native_runner.NativeScheduler`: ONE OS thread per process serves
  every connection, from a heap of deadlines; under eventlet monkey-patching
  it is built from the original primitives (:mod:`~._natives`), so it keeps
  sending heartbeats while a CPU-bound request blocks the hub, and it logs
  through an :class:`~._outbox.Outbox` drained in the hub.
* :class:`~._green_runner.GreenRunner`: an eventlet green thread per
  connection, which stalls while the hub is blocked.

:func:`select_runner` implements ``heartbeat_runner``: ``native``, ``green``
or ``auto`` (the default), which is the native scheduler, with the original
primitives when eventlet has monkey-patched the process.
:func:`watch_connection` chooses, reports the choice as a ``RunnerSelected``
event, and serves the connection. This module never imports eventlet unless
a green runner is asked for or the process is patched.

The names of the modules above are importable from here too, as before the
runners had a module each.
"""

from __future__ import annotations

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.connection._green_runner import GreenRunner, run_green
from rabbit_ha_driver.connection._heartbeat import HeartbeatPolicy
from rabbit_ha_driver.connection._native_runner import (
    COALESCE,
    COALESCE_SHARE,
    EARLY,
    STEP_ERROR_RETRY,
    NativeScheduler,
    native_scheduler,
)
from rabbit_ha_driver.connection._natives import (
    COOPERATIVE_MAX_PAUSE,
    Natives,
    acquire_cooperatively,
    eventlet_patched,
    native_modules,
)
from rabbit_ha_driver.connection._watch import Monitored, Post, Runner, Watch
from rabbit_ha_driver.exceptions import ConfigurationError

RUNNERS = ("auto", "green", "native")


def select_runner(choice: str = "auto") -> tuple[Runner, str]:
    """The runner for a ``heartbeat_runner`` value, and why, for the log."""
    if choice not in RUNNERS:
        raise ConfigurationError("[rabbit_ha] heartbeat_runner", choice,
                                 "expected one of " + ", ".join(RUNNERS))
    patched = eventlet_patched()
    if choice == "green":
        reason = "configured: a green thread per connection, which stalls while the eventlet hub is blocked"
        if not patched:
            reason += "; eventlet has not monkey-patched this process, so it runs only while the hub runs"
        return GreenRunner(), reason
    if choice == "native":
        reason = "configured: one OS thread for all connections"
    else:
        reason = "auto: one OS thread for all connections"
    if patched:
        reason += ("; eventlet monkey-patching detected, so it uses the original threading and select "
                   "and never the hub")
    return native_scheduler(), reason


def watch_connection(member: Monitored, policy: HeartbeatPolicy, *, runner: str = "auto",
                     events: ev.EventBus | None = None) -> Watch:
    """Select the runner, report it (``RunnerSelected``), and serve ``member``."""
    chosen, reason = select_runner(runner)
    if chosen.kind == "native" and not member.native_heartbeats:
        reason += ("; over TLS this thread only watches (a socket it cannot guard), "
                   "the connection's owner sends the heartbeats")
    if events is not None:
        events.emit(ev.RunnerSelected(member.name, chosen.kind, reason))
    return chosen.watch(member, policy, events)


__all__ = [
    "COALESCE",
    "COALESCE_SHARE",
    "COOPERATIVE_MAX_PAUSE",
    "EARLY",
    "RUNNERS",
    "STEP_ERROR_RETRY",
    "GreenRunner",
    "Monitored",
    "NativeScheduler",
    "Natives",
    "Post",
    "Runner",
    "Watch",
    "acquire_cooperatively",
    "eventlet_patched",
    "native_modules",
    "native_scheduler",
    "run_green",
    "select_runner",
    "watch_connection",
]

"""What keeps heartbeats flowing: one native thread for all, or a green thread each.

How this works. A runner serves connections through the :class:`Monitored`
protocol below and drives a :class:`~.heartbeat.HeartbeatState` per
connection: at each deadline it observes the connection (times of the owner's
last read and write, a marker of unread inbound bytes), asks the state for a
decision, and sends a heartbeat frame or declares the connection dead. Both
runners share that step (:meth:`Watch.step`); they differ in what sleeps.

* :class:`NativeScheduler`: ONE OS thread per process serves every
  connection, from a heap of deadlines, waiting on a condition that is
  notified when a connection is added or poked, so it wakes at the next
  deadline, at most :data:`COALESCE` late (less for short intervals,
  :data:`COALESCE_SHARE`): the deadlines that fall within that
  slack are served in the same pass (a wake-up of an OS thread costs more
  than a step, and with many connections their deadlines would otherwise
  come one by one). Under eventlet monkey-patching it is built from the
  *original* ``threading``/``select``/``os`` modules and never touches the hub
  or a green object, so it keeps sending heartbeats while a CPU-bound request
  blocks the hub. From that thread nothing may log or emit events directly
  under monkey-patching (logging's locks are green then; a contended green
  lock taken from a foreign OS thread fails with "cannot switch to a different
  thread"): log records and events go through an outbox that a green thread
  drains, woken through a pipe.
* :class:`GreenRunner`: the classic design, an eventlet green thread per
  connection that wakes at its deadlines and at least every ``H/2``. It stalls
  while the hub is blocked; the broker then closes the connection for missed
  heartbeats. It exists for comparison and for configurations that ask for it.

:func:`select_runner` implements ``heartbeat_runner``: ``native``, ``green`` or
``auto`` (the default), which is the native scheduler, with the original
primitives when eventlet has monkey-patched the process. Monkey-patching is
detected only if eventlet is already imported, through
``eventlet.patcher.is_monkey_patched`` (a mere import of eventlet, as
oslo.messaging does, is not patching); this module never imports eventlet
unless a green runner is asked for or the process is patched.

The protocol a served connection implements (``amqp_io.AmqpLink`` is the
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

import collections
import contextlib
import dataclasses
import heapq
import itertools
import logging
import os
import select
import sys
import threading
import time
import traceback
from collections.abc import Callable, Hashable
from types import ModuleType
from typing import Any, Protocol

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.connection.heartbeat import Action, HeartbeatPolicy
from rabbit_ha_driver.exceptions import ConfigurationError

LOG = logging.getLogger(__name__)

RUNNERS = ("auto", "green", "native")

#: A deadline this close is treated as reached (timed waits may return early).
EARLY = 0.001
#: Timer slack of the native scheduler: how late it may wake for a deadline so
#: that deadlines close together are served in one pass. Small against the
#: tolerances it eats into: a heartbeat frame every ``H/3`` with the broker
#: waiting ``2H``, and the one second between ``T`` and the liveness bound.
#: With 200 idle connections at T = 10 s it cuts the thread's wake-ups from
#: about 150 to about 11 a second, and its CPU use by about two thirds.
COALESCE = 0.05
#: ...and at most this share of the connection's send interval: each late
#: frame delays the next one, so the slack thins an idle connection's frames
#: by up to this share (at T = 3 s a full 50 ms would cost an eighth of them).
COALESCE_SHARE = 0.05
#: Seconds before a connection whose step raised unexpectedly is tried again.
STEP_ERROR_RETRY = 1.0
#: Longest pause of a green thread waiting for a native lock.
COOPERATIVE_MAX_PAUSE = 0.005


# -- eventlet awareness --------------------------------------------------------


def eventlet_patched() -> bool:
    """True if eventlet has monkey-patched sockets or threads in this process.

    Never imports eventlet: if it is not imported yet, nothing is patched.
    """
    if "eventlet" not in sys.modules:
        return False
    from eventlet import patcher

    return bool(patcher.is_monkey_patched("socket") or patcher.is_monkey_patched("thread"))


@dataclasses.dataclass(frozen=True)
class Natives:
    """Modules that really block an OS thread, whatever eventlet patched."""

    patched: bool
    threading: ModuleType
    select: ModuleType
    os: ModuleType
    time: ModuleType


def native_modules() -> Natives:
    """The standard modules, or eventlet's originals in a monkey-patched process."""
    if not eventlet_patched():
        return Natives(False, threading, select, os, time)
    from eventlet import patcher

    return Natives(
        True,
        patcher.original("threading"),
        patcher.original("select"),
        patcher.original("os"),
        patcher.original("time"),
    )


def acquire_cooperatively(lock: Any) -> None:
    """Take a native lock from a green thread without blocking the hub.

    Tries without blocking and yields to the hub between attempts, pausing a
    little longer each time (up to a few milliseconds).
    """
    if lock.acquire(False):
        return
    from eventlet import sleep as green_sleep

    pause = 0.0
    while not lock.acquire(False):
        green_sleep(pause)
        pause = min(COOPERATIVE_MAX_PAUSE, pause * 2 or 0.0001)


# -- what a runner serves ------------------------------------------------------


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


def _run_now(fn: Callable[..., Any], *args: Any) -> None:
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
        post: Post = _run_now,
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
        if not self.active:
            return None
        m = self.member
        state = self.state
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
    """Serves connections: :class:`NativeScheduler` or :class:`GreenRunner`."""

    kind: str

    def watch(self, member: Monitored, policy: HeartbeatPolicy,
              events: ev.EventBus | None = None) -> Watch: ...


# -- the native scheduler --------------------------------------------------------


class _Outbox:
    """Hands log records and events from the native thread to the eventlet hub.

    Only used in a monkey-patched process. ``post`` never blocks: it appends to
    a deque and writes a byte to a non-blocking pipe; a green thread waits on
    the pipe and runs what was posted.
    """

    def __init__(self, natives: Natives) -> None:
        self._items: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = collections.deque()
        self._os = natives.os
        self._rfd, self._wfd = self._os.pipe()
        self._os.set_blocking(self._rfd, False)
        self._os.set_blocking(self._wfd, False)
        self._pump: Any = None

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        self._items.append((fn, args))
        # A full pipe means the pump is behind; it drains everything anyway.
        with contextlib.suppress(OSError):
            self._os.write(self._wfd, b"\0")

    def ensure_pump(self) -> None:
        """Start the green thread that drains the outbox (call from the hub's thread)."""
        if self._pump is None:
            import eventlet

            self._pump = eventlet.spawn(self._pump_loop)

    def _pump_loop(self) -> None:
        from eventlet.hubs import trampoline

        while True:
            trampoline(self._rfd, read=True)
            self.drain()

    def drain(self) -> int:
        """Run everything posted so far; returns how many items ran."""
        try:
            while self._os.read(self._rfd, 4096):
                pass
        except OSError:  # nothing more to read
            pass
        done = 0
        while True:
            try:
                fn, args = self._items.popleft()
            except IndexError:
                return done
            try:
                fn(*args)
            except Exception:
                LOG.exception("heartbeat runner: posted %r failed", fn)
            done += 1


class NativeScheduler:
    """One OS thread that serves every watched connection of the process.

    ``run_pending`` is the loop body and can be driven by hand (with a fake
    clock) in tests; ``start`` runs it in a daemon thread made from
    :func:`native_modules`.
    """

    kind = "native"

    def __init__(self, *, clock: Clock = REAL_CLOCK, natives: Natives | None = None,
                 name: str = "rabbit-ha-heartbeat") -> None:
        self.natives = natives or native_modules()
        self._clock = clock
        self._name = name
        self._cond = self.natives.threading.Condition(self.natives.threading.Lock())
        self._heap: list[tuple[float, int, int, Watch]] = []
        self._seq = itertools.count()
        self._watches: set[Watch] = set()
        self._thread: Any = None
        self._stopping = False
        self._pid = os.getpid()
        self._outbox = _Outbox(self.natives) if self.natives.patched else None
        self._post: Post = self._outbox.post if self._outbox is not None else _run_now

    # -- registration (any thread) ----------------------------------------------

    def watch(self, member: Monitored, policy: HeartbeatPolicy,
              events: ev.EventBus | None = None) -> Watch:
        """Serve ``member`` from now on; returns its :class:`Watch`."""
        now = self._clock.now()
        w = Watch(member, policy, now, runner=self.kind, native=True, events=events, post=self._post)
        if not w.active:
            LOG.debug("[%s] heartbeats off for %s; not watched", member.name, member.host)
            return w
        if self._outbox is not None:
            self._outbox.ensure_pump()
        w._on_cancel = self._cancel
        w._on_poke = self._poke
        with self._cond:
            self._watches.add(w)
            self._schedule(w, now)
            self._cond.notify()
        return w

    def _cancel(self, w: Watch) -> None:
        if os.getpid() != self._pid:
            return  # a forked child: the lock may be held by a thread that is gone
        with self._cond:
            self._watches.discard(w)
            w._gen += 1

    def _poke(self, w: Watch) -> None:
        if os.getpid() != self._pid:
            return
        with self._cond:
            if w in self._watches:
                self._schedule(w, min(w._at, self._clock.now()))
                self._cond.notify()

    def __len__(self) -> int:
        return len(self._watches)

    # -- the loop ---------------------------------------------------------------

    def _schedule(self, w: Watch, at: float) -> None:
        w._gen += 1
        w._at = at
        heapq.heappush(self._heap, (at, next(self._seq), w._gen, w))

    def _peek(self) -> float | None:
        """Time of the first live entry (caller holds the lock)."""
        heap = self._heap
        while heap:
            _, _, gen, w = heap[0]
            if gen == w._gen and w in self._watches:
                return heap[0][0]
            heapq.heappop(heap)
        return None

    def _slack(self) -> float:
        """Timer slack for the first deadline (caller holds the lock, after :meth:`_peek`)."""
        return min(COALESCE, COALESCE_SHARE * self._heap[0][3].state.send_interval)

    def next_wakeup(self) -> float | None:
        with self._cond:
            return self._peek()

    def run_pending(self) -> float | None:
        """Step every connection whose deadline has come; return the next deadline."""
        due: list[tuple[Watch, int]] = []
        with self._cond:
            now = self._clock.now()
            while self._heap and self._heap[0][0] <= now + EARLY:
                _, _, gen, w = heapq.heappop(self._heap)
                if gen == w._gen and w in self._watches:
                    due.append((w, gen))
        for w, gen in due:
            now = self._clock.now()
            try:
                wake = w.step(now)
            except Exception:
                self._post(LOG.error, "[%s] heartbeat step for %s failed:\n%s",
                           w.member.name, w.member.host, traceback.format_exc())
                wake = now + STEP_ERROR_RETRY
            with self._cond:
                if w not in self._watches:
                    continue
                if wake is None:
                    self._watches.discard(w)
                    w._gen += 1
                    continue
                if w._gen != gen:  # poked while it was being stepped
                    wake = min(wake, w._at)
                self._schedule(w, wake)
        return self.next_wakeup()

    def start(self) -> NativeScheduler:
        """Run the loop in a daemon OS thread."""
        if self._thread is None:
            self._thread = self.natives.threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (tests, shutdown); connections are no longer served."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    top = self._peek()
                    now = self._clock.now()
                    if top is not None and top <= now + EARLY:
                        break
                    self._cond.wait(None if top is None else top - now + self._slack())
            try:
                self.run_pending()
            except Exception:  # never let the thread die: every connection depends on it
                self._post(LOG.error, "heartbeat scheduler failed:\n%s", traceback.format_exc())

    def __repr__(self) -> str:
        mode = "original primitives" if self.natives.patched else "threads"
        return f"<NativeScheduler {len(self._watches)} connections, {mode}, running={self.running}>"


_shared: NativeScheduler | None = None
_shared_lock = threading.Lock()


def native_scheduler() -> NativeScheduler:
    """The process's scheduler, started on first use (and again after a fork)."""
    global _shared
    current = _shared
    if current is not None and current._pid == os.getpid():
        return current
    with _shared_lock:
        if _shared is None or _shared._pid != os.getpid():
            _shared = NativeScheduler().start()
        return _shared


def _forget_shared_after_fork() -> None:
    global _shared, _shared_lock
    _shared = None
    _shared_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    # The scheduler's thread does not exist in a child; the first connection
    # there starts a new one (the parent's watches stay the parent's).
    os.register_at_fork(after_in_child=_forget_shared_after_fork)


# -- the green runner --------------------------------------------------------------


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


# -- choosing ----------------------------------------------------------------------


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
    "GreenRunner",
    "Monitored",
    "NativeScheduler",
    "Natives",
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

"""One OS thread that sends the heartbeats of every connection of the process.

How this works. :class:`NativeScheduler` serves every watched connection
from a heap of deadlines, waiting on a condition that is notified when a
connection is added or poked, so it wakes at the next deadline, at most
:data:`COALESCE` late (less for short intervals, :data:`COALESCE_SHARE`): the
deadlines that fall within that slack are served in the same pass (a wake-up
of an OS thread costs more than a step, and with many connections their
deadlines would otherwise come one by one). Each due connection gets one
:meth:`~._watch.Watch.step`; a step that raises is logged and tried again
:data:`STEP_ERROR_RETRY` later, and the thread itself never dies, since every
connection depends on it.

Under eventlet monkey-patching it is built from the *original*
``threading``/``select``/``os`` modules (:mod:`~._natives`) and never touches
the hub or a green object, so it keeps sending heartbeats while a CPU-bound
request blocks the hub; its log records and events then go through an
:class:`~._outbox.Outbox` that a green thread drains.

:func:`native_scheduler` is the process's one scheduler, started on first
use; a forked child starts its own (the parent's thread does not exist
there, and the parent's watches stay the parent's).
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import traceback
from typing import Any

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.connection._heartbeat import HeartbeatPolicy
from rabbit_ha_driver.connection._natives import Natives, native_modules
from rabbit_ha_driver.connection._outbox import Outbox
from rabbit_ha_driver.connection._watch import LOG, Monitored, Post, Watch, run_now

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
        self._outbox = Outbox(self.natives) if self.natives.patched else None
        self._post: Post = self._outbox.post if self._outbox is not None else run_now

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
        """Step every connection whose deadline has come; return the next deadline.

        The lock is taken twice a pass, not twice a connection: once to take
        the due connections off the heap, once to put them back.
        """
        due: list[tuple[Watch, int]] = []
        with self._cond:
            heap, watches = self._heap, self._watches
            reached = self._clock.now() + EARLY
            while heap and heap[0][0] <= reached:
                _, _, gen, w = heapq.heappop(heap)
                if gen == w._gen and w in watches:
                    due.append((w, gen))
        stepped: list[tuple[Watch, int, float | None]] = []
        for w, gen in due:
            now = self._clock.now()
            try:
                wake = w.step(now)
            except Exception:
                self._post(LOG.error, "[%s] heartbeat step for %s failed:\n%s",
                           w.member.name, w.member.host, traceback.format_exc())
                wake = now + STEP_ERROR_RETRY
            stepped.append((w, gen, wake))
        with self._cond:
            watches = self._watches
            for w, gen, wake in stepped:
                if w not in watches:
                    continue
                if wake is None:
                    watches.discard(w)
                    w._gen += 1
                    continue
                if w._gen != gen:  # poked while it was being stepped
                    wake = min(wake, w._at)
                self._schedule(w, wake)
            return self._peek()

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


__all__ = ["COALESCE", "COALESCE_SHARE", "EARLY", "STEP_ERROR_RETRY", "NativeScheduler", "native_scheduler"]

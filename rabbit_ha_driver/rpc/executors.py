"""Executors: where a server runs the handling of each incoming message.

How this works: a server's loop reserves a worker slot *before* it takes a
message off the listener (:meth:`Executor.reserve`), then submits the work
into that slot. So a server holds at most ``max_workers`` messages in flight;
the rest stay in the broker's queue for other servers, instead of piling up
in this process.

``threading`` runs work on a pool of OS threads; ``eventlet`` on a pool of
green threads, and needs a monkey-patched process (as oslo.messaging's
eventlet executor does): the loop itself calls blocking socket code. eventlet
is imported only when that executor is chosen.
"""

from __future__ import annotations

import abc
import collections
import logging
import math
import threading
from collections.abc import Callable
from typing import Any

from rabbit_ha_driver import optional

LOG = logging.getLogger(__name__)

EXECUTORS = ("threading", "eventlet")


class Executor(abc.ABC):
    """A bounded pool of workers with slot reservation."""

    name = "abstract"

    def __init__(self, max_workers: int) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, not {max_workers}")
        self.max_workers = max_workers
        self._cond = threading.Condition()
        self._reserved = 0
        self._running = 0
        self._shut = False

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self._running} running, "
                f"{self._reserved} reserved of {self.max_workers}>")

    @property
    def busy(self) -> int:
        """Slots reserved or running."""
        with self._cond:
            return self._reserved + self._running

    def reserve(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a free slot and hold it."""
        with self._cond:
            if not self._cond.wait_for(
                    lambda: self._shut or self._reserved + self._running < self.max_workers,
                    timeout=None if timeout == math.inf else timeout):
                return False
            if self._shut:
                return False
            self._reserved += 1
            return True

    def release(self) -> None:
        """Give back a reserved slot that was not used."""
        with self._cond:
            self._reserved -= 1
            self._cond.notify_all()

    def submit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in a reserved slot."""
        with self._cond:
            self._reserved -= 1
            self._running += 1

        def run() -> None:
            try:
                fn()
            except Exception:
                LOG.exception("unhandled error in %s worker", self.name)
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()

        try:
            self._start(run)
        except BaseException:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()
            raise

    def shutdown(self, timeout: float | None = None) -> bool:
        """Take no more work; wait up to ``timeout`` for running work to end.

        Returns False if work was still running when the time ran out.
        """
        with self._cond:
            self._shut = True
            self._cond.notify_all()
            done = self._cond.wait_for(lambda: self._running == 0, timeout=timeout)
        self._close()
        if not done:
            LOG.warning("%s executor: %d handlers still running after %ss",
                        self.name, self._running, timeout)
        return done

    @abc.abstractmethod
    def _start(self, fn: Callable[[], None]) -> None:
        """Start ``fn`` on a worker."""

    @abc.abstractmethod
    def spawn(self, fn: Callable[[], Any], name: str) -> Callable[[float | None], bool]:
        """Run a long-lived task (a server loop); returns ``join(timeout) -> done``."""

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Release the pool."""


class ThreadingExecutor(Executor):
    """OS threads, started as work needs them and kept for the next message.

    The workers are daemon threads: a process that exits without stopping its
    servers is not held up at exit by a polling loop that never ends (a
    ``concurrent.futures`` pool joins its threads at exit, so such a process
    would hang there for ever while the loop retried a broker that is gone).
    """

    name = "threading"

    def __init__(self, max_workers: int = 64) -> None:
        super().__init__(max_workers)
        self._work: collections.deque[Callable[[], None]] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._threads = 0
        self._idle = 0
        self._closed = False

    def _start(self, fn: Callable[[], None]) -> None:
        with self._ready:
            if self._closed:
                raise RuntimeError(f"{self!r} is shut down")
            self._work.append(fn)
            if self._idle > len(self._work) - 1:
                self._ready.notify()
                return
            number = self._threads
            self._threads += 1
        try:
            threading.Thread(target=self._serve, name=f"rpc-worker_{number}", daemon=True).start()
        except Exception:
            # No thread (a pids limit, no memory for its stack). Unless a
            # worker that came free took the work meanwhile, it must not run
            # later: submit() raises and gives its slot back.
            with self._ready:
                self._threads -= 1
                if fn not in self._work:
                    return
                self._work.remove(fn)
            raise

    def _serve(self) -> None:
        while True:
            with self._ready:
                self._idle += 1
                while not self._work and not self._closed:
                    self._ready.wait()
                self._idle -= 1
                if not self._work:
                    self._threads -= 1
                    return
                fn = self._work.popleft()
            fn()

    def spawn(self, fn: Callable[[], Any], name: str) -> Callable[[float | None], bool]:
        thread = threading.Thread(target=fn, name=name, daemon=True)
        thread.start()

        def join(timeout: float | None) -> bool:
            if thread is threading.current_thread():
                return False
            thread.join(timeout)
            return not thread.is_alive()

        return join

    def _close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()


class EventletExecutor(Executor):
    """Green threads; the process must be monkey-patched."""

    name = "eventlet"

    def __init__(self, max_workers: int = 64) -> None:
        optional.require_eventlet("executor", self.name)
        super().__init__(max_workers)
        import eventlet
        import eventlet.patcher

        if not eventlet.patcher.is_monkey_patched("thread"):
            LOG.warning("the eventlet executor runs in a process that eventlet has not "
                        "monkey-patched: blocking calls will stall every green thread")
        self._eventlet = eventlet
        self._pool = eventlet.GreenPool(max_workers)

    def _start(self, fn: Callable[[], None]) -> None:
        self._pool.spawn_n(fn)

    def spawn(self, fn: Callable[[], Any], name: str) -> Callable[[float | None], bool]:
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        self._eventlet.spawn_n(run)
        return lambda timeout: done.wait(timeout)


def make_executor(kind: str | Executor, max_workers: int = 64) -> Executor:
    """An executor by name (``threading`` or ``eventlet``), or the one given."""
    if isinstance(kind, Executor):
        return kind
    if kind == "threading":
        return ThreadingExecutor(max_workers)
    if kind == "eventlet":
        return EventletExecutor(max_workers)
    raise ValueError(f"unknown executor {kind!r}; expected one of {', '.join(EXECUTORS)}")

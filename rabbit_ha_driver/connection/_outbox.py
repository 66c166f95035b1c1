"""Log records and events from the native scheduler's thread, run in the eventlet hub.

How this works. In a monkey-patched process logging's locks are green, and a
contended green lock taken from a foreign OS thread fails with "cannot switch
to a different thread". So nothing on the native scheduler's thread may log
or emit events directly: it posts them to an :class:`Outbox` instead.
``post`` never blocks: it appends to a deque and writes a byte to a
non-blocking pipe; a green thread of the hub waits on the pipe and runs what
was posted. Only used in a monkey-patched process; elsewhere the scheduler
logs at once.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable
from typing import Any

from rabbit_ha_driver.connection._natives import Natives
from rabbit_ha_driver.connection._watch import LOG


class Outbox:
    """Hands log records and events from the native thread to the eventlet hub."""

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


__all__ = ["Outbox"]

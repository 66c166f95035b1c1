"""Time as a value that can be swapped: a real clock and a fake one for tests.

Core logic (backoff, deadlines, heartbeat schedule, the consumer-cancel delay)
takes a :class:`Clock` so that unit tests drive time by hand and never sleep.
"""

from __future__ import annotations

import heapq
import threading
import time
from typing import Protocol


class Clock(Protocol):
    """What the library needs of time."""

    def now(self) -> float:
        """Monotonic seconds."""

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (cooperatively under eventlet)."""


class RealClock:
    """``time.monotonic`` and ``time.sleep`` (green under monkey-patching)."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def __repr__(self) -> str:
        return "<RealClock>"


class FakeClock:
    """A clock that moves only when told to; ``sleep`` advances it at once.

    ``sleeps`` records every sleep, so tests can assert on the waits a policy
    chose. ``call_at`` schedules callbacks that run when time passes them.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []
        self._timers: list[tuple[float, int, object]] = []
        self._seq = 0

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))

    def advance(self, seconds: float) -> None:
        """Move time forward, running callbacks that fall due on the way."""
        target = self._now + seconds
        while True:
            with self._lock:
                if not self._timers or self._timers[0][0] > target:
                    self._now = target
                    return
                when, _, fn = heapq.heappop(self._timers)
                self._now = max(self._now, when)
            fn()  # type: ignore[operator]

    def call_at(self, when: float, fn: object) -> None:
        with self._lock:
            self._seq += 1
            heapq.heappush(self._timers, (when, self._seq, fn))

    def __repr__(self) -> str:
        return f"<FakeClock now={self._now:.3f}>"


REAL_CLOCK = RealClock()

"""Deadlines and backoff as values.

A :class:`Deadline` is an absolute point on a clock; every retry loop and every
synchronous broker request takes one, so no call blocks past what its caller
allowed. "Retry forever" is :meth:`Deadline.never`, an explicit choice.

A :class:`Backoff` decides how long to wait before the next pass over the
hosts: nothing between the hosts of one pass (moving to the next node is
immediate), then ``interval``, ``interval + step``, ... capped at ``cap``, each
with up to ``jitter`` of random extra so a fleet does not reconnect in step.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable

from rabbit_ha_driver.clock import REAL_CLOCK, Clock


@dataclasses.dataclass(frozen=True)
class Deadline:
    """An absolute time on ``clock`` after which an operation gives up."""

    at: float
    clock: Clock = dataclasses.field(default=REAL_CLOCK, compare=False, repr=False)

    @classmethod
    def after(cls, seconds: float | None, clock: Clock = REAL_CLOCK) -> Deadline:
        """A deadline ``seconds`` from now; None means never."""
        if seconds is None:
            return cls(math.inf, clock)
        return cls(clock.now() + max(0.0, seconds), clock)

    @classmethod
    def never(cls, clock: Clock = REAL_CLOCK) -> Deadline:
        return cls(math.inf, clock)

    @property
    def is_never(self) -> bool:
        return self.at == math.inf

    def remaining(self) -> float:
        """Seconds left (``inf`` for never), never negative."""
        return max(0.0, self.at - self.clock.now())

    def expired(self) -> bool:
        return self.clock.now() >= self.at

    def cap(self, seconds: float) -> float:
        """``seconds`` or what is left, whichever is less."""
        return min(seconds, self.remaining())

    def sooner(self, seconds: float | None) -> Deadline:
        """This deadline or one ``seconds`` from now, whichever comes first."""
        if seconds is None:
            return self
        return Deadline(min(self.at, self.clock.now() + seconds), self.clock)


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Wait between passes over the hosts: grows by ``step``, capped, jittered."""

    interval: float = 0.2
    step: float = 1.0
    cap: float = 3.0
    jitter: float = 0.2
    random: Callable[[], float] = dataclasses.field(default=random.random, compare=False, repr=False)

    def delay(self, failed_passes: int) -> float:
        """Seconds to wait after ``failed_passes`` (1 or more) complete failed passes."""
        if failed_passes <= 0:
            return 0.0
        base = min(self.cap, self.interval + self.step * (failed_passes - 1))
        return base * (1.0 + self.jitter * self.random())

"""Failures in a row of a loop that goes on regardless: how many, since when, what pause next.

How this works. A polling loop that fails (the broker refused a declaration,
draining the connection raised) logs the failure and pauses before it tries
again, longer while the failures go on. :class:`FailureStreak` is that
history as a value, like urllib3's ``Retry``: :meth:`FailureStreak.failed`
returns a new value with one more attempt and the pause its
:class:`~rabbit_ha_driver.connection.Backoff` gives for it, and
:meth:`FailureStreak.cleared` starts over after a success. The loop does the
waiting; times come from the caller's clock.
"""

from __future__ import annotations

import dataclasses

from rabbit_ha_driver.connection import Backoff


@dataclasses.dataclass(frozen=True)
class FailureStreak:
    """Failures in a row: ``attempts``, the time of the first, the pause after the last."""

    backoff: Backoff
    attempts: int = 0
    first_at: float | None = None
    #: Seconds to pause after the latest failure (0 before any).
    pause: float = 0.0

    def failed(self, now: float) -> FailureStreak:
        """One more failure, at ``now``."""
        attempts = self.attempts + 1
        return dataclasses.replace(
            self, attempts=attempts, first_at=now if self.first_at is None else self.first_at,
            pause=self.backoff.delay(attempts))

    def cleared(self) -> FailureStreak:
        """After a success: no failures in a row."""
        return FailureStreak(self.backoff) if self.attempts else self

    def seconds(self, now: float) -> float:
        """Seconds since the first failure of the streak (0 without one)."""
        return 0.0 if self.first_at is None else max(0.0, now - self.first_at)

"""Where the next connection attempt goes: the connect plan, as values.

How it works. Connecting walks the hosts in failover order
(:class:`~rabbit_ha_driver.connection._hosts.HostRing`): after a failed attempt
it moves to the next host at once, and only when a whole pass over the hosts
has failed does it wait, for the :class:`~rabbit_ha_driver.connection._retry.Backoff`
of that many failed passes. With ``rabbit_max_retries`` set, a connection
nobody gave a deadline gives up after that many failed passes.

The plan holds that walk and its history and answers "what now?" with a step:
:class:`Attempt` a host, :class:`Pause` before the next pass, or
:class:`GiveUp`. It does no I/O and reads no clock: the connection tells it
the time and whether its deadline has passed, and does what the step says.
The failed passes and the end of the current pause outlive one connect: a
reader whose turns are short (a consumer draining in slices) keeps the
backoff across its turns.
"""

from __future__ import annotations

import dataclasses
import enum

from rabbit_ha_driver.connection._hosts import HostRing
from rabbit_ha_driver.connection._retry import Backoff
from rabbit_ha_driver.settings import Host


class Why(enum.Enum):
    """Why a plan gave up."""

    DEADLINE = "deadline"
    MAX_RETRIES = "max_retries"


@dataclasses.dataclass(frozen=True)
class Attempt:
    """Open a connection to ``host`` (``None``: the in-memory broker)."""

    host: Host | None
    number: int


@dataclasses.dataclass(frozen=True)
class Pause:
    """Wait ``seconds`` (until ``until`` on the connection's clock), then try again."""

    seconds: float
    until: float
    failed_passes: int


@dataclasses.dataclass(frozen=True)
class GiveUp:
    """Stop connecting: the deadline passed, or the passes allowed are used up."""

    why: Why
    attempts: int
    failed_passes: int


class ConnectPlan:
    """The failover walk of one connection: attempts, passes, pauses, giving up."""

    def __init__(self, ring: HostRing | None, backoff: Backoff, max_retries: int = 0) -> None:
        self._ring = ring
        self._backoff = backoff
        self.max_retries = max_retries
        #: Failed passes since the last successful connect.
        self.failed_passes = 0
        #: When the next attempt is due (0: now), on the connection's clock.
        self.retry_at = 0.0
        #: Attempts of the current connect (see :meth:`begin`).
        self.attempts = 0

    def __repr__(self) -> str:
        return (f"ConnectPlan(attempts={self.attempts}, failed_passes={self.failed_passes}, "
                f"retry_at={self.retry_at:.3f})")

    def begin(self) -> None:
        """A new connect starts: count its attempts from zero."""
        self.attempts = 0

    def wait_due(self, now: float) -> float:
        """Seconds until the next attempt is due (a pause an earlier turn began)."""
        return max(0.0, self.retry_at - now)

    def next_attempt(self, deadline_expired: bool) -> Attempt | GiveUp:
        """The next host to try; at least one attempt even when no time is left."""
        if self.attempts and deadline_expired:
            return GiveUp(Why.DEADLINE, self.attempts, self.failed_passes)
        self.attempts += 1
        return Attempt(self._ring.current if self._ring is not None else None, self.attempts)

    def failed(self, now: float, forever: bool) -> Pause | GiveUp | None:
        """After a failed attempt: ``None`` to try the next host at once, a
        :class:`Pause` when a pass is complete, or :class:`GiveUp` when
        ``forever`` (no deadline) and the passes allowed are used up."""
        if self._ring is not None:
            self._ring.advance()
            if not self._ring.pass_complete():
                return None
        self.failed_passes += 1
        if self._ring is not None:
            if self.max_retries and self.failed_passes >= self.max_retries and forever:
                return GiveUp(Why.MAX_RETRIES, self.attempts, self.failed_passes)
            self._ring.reset_pass()
        delay = self._backoff.delay(self.failed_passes)
        self.retry_at = now + delay
        return Pause(delay, self.retry_at, self.failed_passes)

    def succeeded(self) -> None:
        """Connected: forget the failures; the next loss starts a fresh walk."""
        self.failed_passes = 0
        self.retry_at = 0.0
        if self._ring is not None:
            self._ring.reset_pass()

    def lost(self) -> None:
        """The open connection died: the next attempt goes to the next host."""
        if self._ring is not None:
            self._ring.advance()
            self._ring.reset_pass()

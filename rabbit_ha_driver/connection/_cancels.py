"""Consumers the broker cancelled, and when each is consumed again.

How it works. A ``basic.cancel`` from the broker (its queue was deleted, or
its node went down) is noted with the time it is due to be restored: now plus
``kombu_reconnect_delay``, so a queue that is being moved is not declared
again on the node that is going away. The connection's drain loop asks for
the due ones, declares each queue again and consumes it on the same channel;
one that fails there is restored by a reconnect instead, and reported once
the connection is up again. A reconnect re-consumes everything, so it clears
the schedule. The schedule does no I/O and reads no clock.
"""

from __future__ import annotations


class CancelSchedule:
    """Queues whose consumer the broker cancelled, by the time they are due again."""

    def __init__(self) -> None:
        self._due: dict[str, float] = {}
        self._by_reconnect: list[str] = []

    def __repr__(self) -> str:
        return f"CancelSchedule(due={self._due!r}, by_reconnect={self._by_reconnect!r})"

    def __bool__(self) -> bool:
        return bool(self._due)

    def __contains__(self, key: str) -> bool:
        return key in self._due

    def keys(self) -> set[str]:
        """The queues waiting to be consumed again."""
        return set(self._due)

    def cancelled(self, key: str, now: float, delay: float) -> None:
        """The broker cancelled the consumer of ``key``: due again ``delay`` from ``now``."""
        self._due[key] = now + delay

    def wait(self, now: float) -> float | None:
        """Seconds until the next restore is due (0: one is due); ``None``: none waits."""
        if not self._due:
            return None
        return max(0.0, min(self._due.values()) - now)

    def pop_due(self, now: float) -> str | None:
        """Remove and return the oldest queue due to be consumed again; None when none is.

        One at a time: if consuming one fails (a refusal raises), the others
        stay scheduled."""
        due = [(at, n, key) for n, (key, at) in enumerate(self._due.items()) if at <= now]
        if not due:
            return None
        key = min(due)[2]
        del self._due[key]
        return key

    def due_count(self, now: float) -> int:
        """How many queues are due to be consumed again."""
        return sum(at <= now for at in self._due.values())

    def restore_by_reconnect(self, key: str) -> None:
        """Consuming ``key`` again on the same connection failed: a reconnect does it."""
        if key not in self._by_reconnect:
            self._by_reconnect.append(key)

    def reconnected(self) -> list[str]:
        """A reconnect replayed every consumer: the queues it restored for us."""
        restored, self._by_reconnect = self._by_reconnect, []
        return restored

    def clear(self) -> None:
        """The connection is gone: its reconnect consumes everything again."""
        self._due.clear()

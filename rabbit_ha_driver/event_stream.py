"""The event stream: the base of every event, the bus that delivers them, two subscribers.

How it works. Every state change is one small frozen :class:`Event` (the kinds
are in :mod:`rabbit_ha_driver.connection_events` and
:mod:`rabbit_ha_driver.rpc_events`). An :class:`EventBus` delivers each event
to its subscribers in order, on the thread that emitted it; a subscriber that
raises is logged and never breaks the connection. :class:`LogSubscriber` turns
events into log lines that name the host and port, never a password;
:class:`Recorder` keeps them, for tests and ``rabbit-ha check``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

from rabbit_ha_driver import forks

# A failing subscriber is logged under the name operators know it by, from
# when the stream lived in one module.
LOG = logging.getLogger("rabbit_ha_driver.events")


@dataclasses.dataclass(frozen=True)
class Event:
    """Base of all events. ``connection`` is the connection's name."""

    connection: str

    level = logging.INFO

    def describe(self) -> str:
        fields = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name != "connection"
        )
        return f"{type(self).__name__}({fields})"


Subscriber = Callable[[Event], None]


class EventBus:
    """Delivers events to subscribers; thread-safe; subscribers must be quick."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        forks.at_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread of the parent, gone
        in the child, may have held it while subscribing)."""
        self._lock = threading.Lock()

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Add ``fn``; returns a function that removes it again."""
        with self._lock:
            self._subscribers = [*self._subscribers, fn]

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = [s for s in self._subscribers if s is not fn]

        return unsubscribe

    def emit(self, event: Event) -> None:
        for fn in self._subscribers:
            try:
                fn(event)
            except Exception:
                LOG.exception("event subscriber %r failed on %s", fn, type(event).__name__)


class LogSubscriber:
    """Writes each event as one log line: ``[connection] what happened``."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("rabbit_ha_driver.connection")

    def __call__(self, event: Event) -> None:
        if self._log.isEnabledFor(event.level):
            self._log.log(event.level, "[%s] %s", event.connection, event.describe())


class Recorder:
    """Keeps every event; for tests and for ``rabbit-ha check``."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]

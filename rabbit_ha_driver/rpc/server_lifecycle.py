"""The lifecycle of a message-handling server: its states and every allowed move.

How this works. A server is in one :class:`ServerState`; the moves it may make
are the rows of :data:`SERVER_TRANSITIONS`, in this one place, and any other
move is a bug and raises. :class:`ServerLifecycle` holds the state and the
time (on the server's clock) it was entered; the server makes each move under
its own lock. The state shows in the server's ``repr`` and so in its log lines.

.. code-block:: text

     NEW ──start()──► RUNNING ──stop()──► STOPPING ──wait()──► STOPPED
                         └───────── wait() without stop() ────────┘

A start that fails leaves the server NEW (it may be started again); a stopped
server is not started again.
"""

from __future__ import annotations

import enum
import logging

from rabbit_ha_driver.clock import Clock

LOG = logging.getLogger(__name__)


class ServerState(enum.Enum):
    """Lifecycle of a message-handling server."""

    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


#: Allowed moves; anything else is a bug and raises.
SERVER_TRANSITIONS: dict[ServerState, frozenset[ServerState]] = {
    ServerState.NEW: frozenset({ServerState.RUNNING}),
    ServerState.RUNNING: frozenset({ServerState.STOPPING, ServerState.STOPPED}),
    ServerState.STOPPING: frozenset({ServerState.STOPPED}),
    ServerState.STOPPED: frozenset(),
}


class ServerLifecycle:
    """A server's state and when it was entered; not locked (the server's lock guards it)."""

    def __init__(self, name: str, clock: Clock) -> None:
        self.name = name
        self._clock = clock
        self._state = ServerState.NEW
        self._since = clock.now()

    def __repr__(self) -> str:
        return f"<ServerLifecycle {self.name} {self._state.value} for {self.elapsed():.3f}s>"

    @property
    def state(self) -> ServerState:
        return self._state

    @property
    def since(self) -> float:
        """When the current state was entered, on the server's clock."""
        return self._since

    def elapsed(self) -> float:
        """Seconds in the current state."""
        return self._clock.now() - self._since

    def allows(self, new: ServerState) -> bool:
        """Whether the current state may move to ``new``."""
        return new in SERVER_TRANSITIONS[self._state]

    def move(self, new: ServerState) -> ServerState:
        """Enter ``new``; returns the state left. Raises RuntimeError on an illegal move."""
        old = self._state
        if not self.allows(new):
            raise RuntimeError(f"server {self.name}: illegal transition {old.value} -> {new.value}")
        now = self._clock.now()
        LOG.debug("server %s: %s -> %s after %.3fs", self.name, old.value, new.value,
                  now - self._since)
        self._state, self._since = new, now
        return old

    def end_in_child(self) -> bool:
        """In a forked child: a started server is its parent's, so it is STOPPED
        here (a move the table allows); True if it was started. Not logged: this
        runs in the fork hook, before the child may take the logging locks."""
        if self._state in (ServerState.NEW, ServerState.STOPPED):
            return False
        self._state, self._since = ServerState.STOPPED, self._clock.now()
        return True

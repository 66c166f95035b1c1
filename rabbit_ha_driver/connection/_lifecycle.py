"""The connection's state and lifecycle: states, the lock, tear-down, fork safety.

How it works. A :class:`Connection` moves through the states of
:class:`State`; every move goes through ``_set_state``, which checks it against
:data:`TRANSITIONS` and emits a ``StateChanged`` event. This module holds that
state and what every other part of the connection needs: the lock that lets one
thread at a time drive the connection, per-request deadlines on the socket,
losing a connection (``_lost``) and tearing one down, and what a forked child
does with the connection it inherited: it closes the inherited socket without
a byte on it and connects anew on first use.

The connection is assembled from layers, each a class in its own module that
builds on the one below: lifecycle, channel recovery, connecting, consuming,
publishing, and :class:`~rabbit_ha_driver.connection._ha_connection.Connection`
with the topology API on top.
"""

from __future__ import annotations

import collections
import enum
import itertools
import logging
import os
import socket
import sys
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.connection._backend import Link
from rabbit_ha_driver.connection._cancels import CancelSchedule
from rabbit_ha_driver.connection._channel import BrokerClose, ChannelLife, ChannelState
from rabbit_ha_driver.connection._confirms import ConfirmTracker, Pending
from rabbit_ha_driver.connection._connect_plan import ConnectPlan
from rabbit_ha_driver.connection._hosts import HostRing
from rabbit_ha_driver.connection._liveness import Liveness
from rabbit_ha_driver.connection._locks import HandoverLock
from rabbit_ha_driver.connection._retry import Backoff, Deadline
from rabbit_ha_driver.connection._topology import Topology
from rabbit_ha_driver.connection._transport import (
    AMQPTransport,
    MemoryTransport,
)
from rabbit_ha_driver.settings import Host, Settings

LOG = logging.getLogger(__name__)


class State(enum.Enum):
    """Lifecycle of a connection."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BLOCKED = "blocked"
    RECOVERING = "recovering"
    FAILED = "failed"
    CLOSED = "closed"


#: Allowed transitions; anything else is a bug and raises.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.NEW: frozenset({State.CONNECTING, State.CLOSED}),
    State.CONNECTING: frozenset({State.CONNECTED, State.FAILED, State.CLOSED, State.CONNECTING}),
    State.CONNECTED: frozenset({State.BLOCKED, State.RECOVERING, State.CLOSED}),
    State.BLOCKED: frozenset({State.CONNECTED, State.RECOVERING, State.CLOSED}),
    State.RECOVERING: frozenset({State.CONNECTED, State.FAILED, State.CLOSED, State.RECOVERING}),
    State.FAILED: frozenset({State.CONNECTING, State.RECOVERING, State.CLOSED}),
    State.CLOSED: frozenset(),
}

OPEN_STATES = frozenset({State.CONNECTED, State.BLOCKED})
_ALL_CONNECTIONS: weakref.WeakSet[_Lifecycle] = weakref.WeakSet()


def default_connection_name() -> str:
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return f"{prog}:{os.getpid()}:{socket.gethostname()}"


class _Lifecycle:
    """State, lock, deadlines and tear-down of a connection (the lowest layer)."""

    def __init__(
        self,
        settings: Settings,
        *,
        name: str | None = None,
        events: ev.EventBus | None = None,
        clock: Clock | None = None,
        transport: type | None = None,
        transport_options: dict[str, Any] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.name = name or settings.connection_name or default_connection_name()
        self.events = events if events is not None else ev.EventBus()
        if events is None:
            self.events.subscribe(ev.LogSubscriber())
        self._clock = clock or REAL_CLOCK
        self._lock = HandoverLock(self._finish_cut_close)
        #: close() cut the socket of a connection another thread held; the
        #: lock's last holder finishes the close (see :mod:`._locks`).
        self._cut = False
        self._topology = Topology()
        self._backoff = backoff or Backoff(
            interval=settings.rabbit_retry_interval,
            step=settings.rabbit_retry_backoff,
            cap=settings.rabbit_interval_max,
        )
        #: The failover walk over the hosts (see :mod:`._connect_plan`).
        self._plan = ConnectPlan(
            HostRing(settings.hosts, settings.kombu_failover_strategy) if settings.hosts else None,
            self._backoff, settings.rabbit_max_retries)
        self._transport_cls = transport or (MemoryTransport if settings.is_memory else AMQPTransport)
        self._transport_options = dict(transport_options or {})
        self._state = State.NEW
        #: The open link to a broker (see :mod:`._backend`); None when there is none.
        self._link: Link | None = None
        self._channel: Any = None
        self._host: Host | None = None
        self._last_host: Host | None = None
        self._pid = os.getpid()
        self._confirms = False
        self._tracker = ConfirmTracker()
        #: Consumers the broker cancelled, until consumed again (see :mod:`._cancels`).
        self._cancels = CancelSchedule()
        self._next_consumer_check = 0.0
        #: Consumed queues whose last check counted no consumer on the broker.
        self._zero_consumers: set[Any] = set()
        #: Deliveries per consumed queue, and those of the current channel not
        #: yet acknowledged or rejected (see _consumer_starved).
        self._delivered: collections.Counter[Any] = collections.Counter()
        self._unsettled = 0
        #: Consumed queues whose checks found ready messages that did not
        #: come: the delivery count and the time of the first such check.
        self._starving: dict[Any, tuple[int, float]] = {}
        #: Queues whose consumer was found lost or starved since this
        #: connection last received from them (a second time reconnects).
        self._relost: set[Any] = set()
        self._active_tags: set[str] = set()
        self._tags = itertools.count(1)
        self._tag_prefix = f"rha-{uuid.uuid4().hex[:12]}"
        self._life = ChannelLife(self.name)
        self._closing = False
        # Messages that waited on a channel closed over a publish, until the
        # refused one is known (see _settle_refused).
        self._refused_waiting: list[Pending] = []
        self._refused_close: BrokerClose | None = None
        # Heartbeats, dead-peer detection and socket tuning (AMQP only). Its
        # times come from the real clock shared with the heartbeat scheduler.
        self.liveness: Liveness | None = None if settings.is_memory else Liveness(
            settings, name=self.name, events=self.events)
        _ALL_CONNECTIONS.add(self)

    @property
    def state(self) -> State:
        return self._state

    @property
    def host(self) -> Host | None:
        """The host connected to, or None."""
        return self._host

    @property
    def raw(self) -> Any:
        """The transport's own connection object (py-amqp's on AMQP), or None."""
        return self._raw

    @property
    def topology(self) -> Topology:
        return self._topology

    @property
    def local_port(self) -> int | None:
        sock = self._socket()
        try:
            return sock.getsockname()[1] if sock is not None else None
        except OSError:
            return None

    @property
    def channel_state(self) -> ChannelState:
        """The lifecycle state of the connection's channel."""
        return self._life.state

    def __repr__(self) -> str:
        where = self._host.address if self._host else "-"
        return (f"<Connection {self.name} {self._state.value} {where} "
                f"channel {self._life.state.value}#{self._life.generation}>")

    def _default_deadline(self) -> Deadline:
        seconds = self.settings.publish_timeout
        return Deadline.after(seconds if seconds > 0 else None, self._clock)

    def _addr(self) -> str | None:
        return self._host.address if self._host else None

    def _set_state(self, new: State) -> None:
        old = self._state
        if new is old:
            return
        if new not in TRANSITIONS[old]:
            raise RuntimeError(f"{self!r}: illegal transition {old.value} -> {new.value}")
        self._state = new
        self.events.emit(ev.StateChanged(self.name, old.value, new.value))

    @contextmanager
    def _locked(self, deadline: Deadline, operation: str) -> Iterator[None]:
        """The connection's lock, waited for no longer than ``deadline`` allows."""
        wait = deadline.remaining()
        if not self._lock.acquire(timeout=-1 if wait == float("inf") else wait):
            raise exc.MessagingTimeout(
                f"{operation}: connection {self.name} stayed busy past the deadline", waited=wait)
        try:
            yield
        finally:
            self._lock.release()

    # Each reads self._link once: another thread may tear it down meanwhile
    # (close() of a busy connection).

    @property
    def _raw(self) -> Any:
        """The transport's own connection object (py-amqp's, kombu's memory one)."""
        link = self._link
        return link.raw if link is not None else None

    @property
    def _transport(self) -> Any:
        link = self._link
        return link.transport if link is not None else None

    @contextmanager
    def _request_deadline(self, operation: str, seconds: float) -> Iterator[None]:
        link = self._link
        if link is None:
            yield
            return
        with link.request_deadline(operation, seconds):
            yield

    def _request_budget(self) -> Deadline:
        return Deadline.after(self.settings.request_timeout, self._clock)

    def _on_blocked(self, reason: str = "") -> None:
        if self.liveness is not None:
            self.liveness.blocked()
        if self._state is State.CONNECTED:
            self._set_state(State.BLOCKED)
        self.events.emit(ev.Blocked(self.name, self._addr() or "-", str(reason)))

    def _on_unblocked(self) -> None:
        if self.liveness is not None:
            self.liveness.unblocked()
        if self._state is State.BLOCKED:
            self._set_state(State.CONNECTED)
        self.events.emit(ev.Unblocked(self.name, self._addr() or "-"))

    def _socket(self) -> socket.socket | None:
        link = self._link
        return link.socket() if link is not None else None

    def _lost(self, reason: str) -> None:
        if self._state in OPEN_STATES:
            self.events.emit(ev.ConnectionLost(self.name, self._addr() or "memory", reason))
            self._set_state(State.RECOVERING)
            self._plan.lost()
        self._teardown()

    def _teardown(self) -> None:
        self._tracker.lose_all()
        link, self._link = self._link, None
        self._channel = None
        if self._life.state is not ChannelState.NONE:
            self._life.move(ChannelState.NONE)
        self._host = None
        self._cancels.clear()
        if self.liveness is not None:
            self.liveness.detach()
        if link is not None:
            try:
                link.discard()
            except Exception as error:
                LOG.debug("[%s] teardown: %s", self.name, error)

    def _finish_cut_close(self) -> None:
        """Run by the lock's last holder: end a connection close() could only cut."""
        if self._cut and self._state is not State.CLOSED:
            self._teardown()
            self._set_state(State.CLOSED)

    def _stop_if_closing(self, operation: str) -> None:
        """close() was called while this thread held the connection: end it here."""
        if not self._closing or self._state is State.CLOSED:
            return
        self._teardown()
        self._set_state(State.CLOSED)
        raise exc.ConnectionLost(f"connection {self.name} is closed", operation=operation)

    def _forget_after_fork(self) -> None:
        """In a child process, on first use: drop the parent's connection and
        connect anew (the socket itself was closed by :meth:`_reinit_after_fork`)."""
        LOG.debug("[%s] process forked; opening a new connection in the child", self.name)
        self._close_inherited_socket()
        self._link = None
        self._teardown()
        self._pid = os.getpid()
        if self._state in OPEN_STATES:
            if self._last_host is None:
                # memory:// has no host to recover to: in the child the
                # connection starts anew.
                self._state = State.NEW
            else:
                self._set_state(State.RECOVERING)

    def _reinit_after_fork(self) -> None:
        """Right after a fork, in the child: a fresh lock, and the inherited
        socket closed without a byte or a shutdown() on it (both would reach
        the parent's connection)."""
        self._lock = HandoverLock(self._finish_cut_close)
        self._cut = False
        self._close_inherited_socket()

    def _close_inherited_socket(self) -> None:
        if self._link is not None:
            self._link.forget_after_fork()


def _after_fork_in_child() -> None:
    for conn in list(_ALL_CONNECTIONS):
        conn._reinit_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

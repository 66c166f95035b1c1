"""What the clients and notifiers of one process share: connections, the reply queue.

How this works. An :class:`RPCTransport` holds a
:class:`~rabbit_ha_driver.rpc.publisher.Publisher` (one connection that
threads take turns on) and, from the first call on, a reply queue with its own
connection and draining thread (:mod:`rabbit_ha_driver.rpc.replies`) and the
table of calls waiting for their reply. Its connections come from a
:class:`ConnectionFactory`, which names each by its purpose; all of them
report to the transport's event bus. After a fork the child makes its own
reply queue on its first call, so the parent's replies stay the parent's.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Protocol

from rabbit_ha_driver import forks
from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.connection import Connection, default_connection_name
from rabbit_ha_driver.events import EventBus, LogSubscriber
from rabbit_ha_driver.rpc.envelope import DEFAULT_EXCHANGE
from rabbit_ha_driver.rpc.publisher import Publisher
from rabbit_ha_driver.rpc.replies import ClientClosed, ReplyListener, ReplyWaiters
from rabbit_ha_driver.settings import Settings


class ConnectionFactory(Protocol):
    """Makes the connections of the RPC layer; ``purpose`` names them."""

    def __call__(self, purpose: str) -> Connection: ...


def default_connection_factory(settings: Settings, *, events: EventBus | None = None,
                               clock: Clock | None = None) -> ConnectionFactory:
    """Connections named ``<connection_name>:<purpose>`` in the broker's list."""
    base = settings.connection_name or default_connection_name()

    def make(purpose: str) -> Connection:
        return Connection(settings, name=f"{base}:{purpose}", events=events, clock=clock)

    return make


class RPCTransport:
    """What the clients and notifiers of one process share; thread-safe.

    ``exchange`` is oslo.messaging's ``control_exchange``: the topic exchange
    calls, casts and notifications go through unless a target names another.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        events: EventBus | None = None,
        clock: Clock | None = None,
        connection_factory: ConnectionFactory | None = None,
    ) -> None:
        self.settings = settings
        self.exchange = exchange
        self.clock = clock or REAL_CLOCK
        if events is None:
            events = EventBus()
            events.subscribe(LogSubscriber())
        #: Every connection of this transport reports here (logs, metrics).
        self.events = events
        self._factory = connection_factory or default_connection_factory(
            settings, events=events, clock=clock)
        self.publisher = Publisher(settings, self._factory, clock=self.clock)
        self.waiters = ReplyWaiters(self.clock)
        self._replies: ReplyListener | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        forks.at_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """In a forked child: the reply listener (its thread, its queue) is
        the parent's; the child makes its own on its first call."""
        self._lock = threading.Lock()
        self._replies = None
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"<RPCTransport {self.settings.transport_url.redacted()} exchange={self.exchange}>"

    @property
    def reply_listener(self) -> ReplyListener:
        """The reply queue's listener (created, not started, on first use)."""
        with self._lock:
            if self._replies is not None and self._pid != os.getpid():
                # After a fork the draining thread is gone; the child gets its
                # own reply queue so the parent's replies stay the parent's.
                self._replies.abandon()
                self._replies = None
                self._pid = os.getpid()
            if self._replies is None:
                self._replies = ReplyListener(
                    self.settings, self._factory("reply"), self.waiters, clock=self.clock)
            return self._replies

    def close(self) -> None:
        """Fail outstanding calls, close connections; never hangs."""
        if self._closed:
            return
        self._closed = True
        self.waiters.fail_all(ClientClosed("the RPC client was closed"))
        with self._lock:
            replies, self._replies = self._replies, None
        if replies is not None:
            replies.stop()
        self.publisher.close()


def as_transport(transport_or_settings: RPCTransport | Settings, **kwargs: Any) -> tuple[RPCTransport, bool]:
    """``(transport, owned)``: a given transport, or a new one for settings."""
    if isinstance(transport_or_settings, RPCTransport):
        if kwargs:
            raise TypeError(f"{', '.join(sorted(kwargs))}: only for a new transport, "
                            "not with an existing one")
        return transport_or_settings, False
    if isinstance(transport_or_settings, Settings):
        return RPCTransport(transport_or_settings, **kwargs), True
    raise TypeError(f"expected RPCTransport or Settings, not {type(transport_or_settings).__name__}")

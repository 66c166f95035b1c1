"""The HA connection: one kombu transport connection that recovers by itself.

How it works. Every broker operation runs inside :meth:`Connection.ensure`,
which holds the connection's lock, makes sure a connection and a channel are
open, runs the operation under a deadline, and on failure asks
:func:`~rabbit_ha_driver.connection._errors.classify` what to do: raise at once
(a refusal retrying cannot mend), reopen the channel on the same connection,
or drop the connection and reconnect. Reconnecting walks the hosts in
failover order, moving to the next host at once and backing off only after a
full pass, and then replays the recorded topology (QoS, exchanges, queues,
bindings, consumers). Nothing waits past the caller's :class:`Deadline`.

A consumer cancel notification (``basic.cancel`` from the broker) is noted by
the reader and handled by :meth:`drain_events` once the configured delay has
passed: the queue, its bindings and its consumers are declared again on the
same channel; only if that fails does the connection reconnect.

Publishes use publisher confirms and the mandatory flag on AMQP. A publish
that the broker returned as unroutable raises
:class:`~rabbit_ha_driver.exceptions.Unroutable` and a nack
:class:`~rabbit_ha_driver.exceptions.PublishNacked`: the caller decides whether
to send again. A publish whose frame was never written is sent again after
recovery; one that was written but not confirmed before the connection died
is sent again only when the caller allows it (``retry_uncertain``).

A channel the broker closes while the connection stays up (a consumer
acknowledgement timeout, a publish to a missing exchange, a refused
request) is replaced by a new one with confirm mode, QoS and the recorded
topology restored, by whichever thread reads the close (see
:mod:`~rabbit_ha_driver.connection._channel`); messages waiting for a confirm
on it are settled as lost, and deliveries of the old channel are never
acknowledged on the new one.

Where each part lives. The connection is built in layers, each a class in
its own module that builds on the one below: :mod:`._lifecycle` (states, the
lock, tear-down, fork safety), :mod:`._channel_recovery` (opening channels,
restoring one the broker closed), :mod:`._connecting` (the retry loop,
connecting and failing over along the :mod:`._connect_plan`), :mod:`._consuming`
(deliveries, consumer cancels along the :mod:`._cancels` schedule, queue checks,
acknowledgements), :mod:`._publishing` (confirms), and this module's
:class:`Connection` with the topology API on top.

One connection is meant to be driven by one thread at a time (a consumer's
drain loop, or publishers taking turns); the lock makes sharing safe, not
concurrent.
"""

from __future__ import annotations

import _socket
import logging
import os
import socket
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from rabbit_ha_driver.connection import _errors as errors
from rabbit_ha_driver.connection._channel import close_of
from rabbit_ha_driver.connection._lifecycle import OPEN_STATES, TRANSITIONS, State, default_connection_name
from rabbit_ha_driver.connection._publishing import _Publishing
from rabbit_ha_driver.connection._retry import Deadline
from rabbit_ha_driver.connection._sockets import raw_socket
from rabbit_ha_driver.connection._topology import BindingDecl, ConsumerDecl, ExchangeDecl, QueueDecl

LOG = logging.getLogger(__name__)


__all__ = ["TRANSITIONS", "Connection", "State", "default_connection_name"]


class Connection(_Publishing):
    """A broker connection that survives broker, network and consumer failures."""

    #: Seconds close() waits for another thread to let go of the connection.
    CLOSE_WAIT = 2.0

    def connect(self, deadline: Deadline | None = None) -> None:
        """Connect (to the first host that answers) before ``deadline``."""
        with self._lock:
            self._ensure_open(deadline or self._default_deadline(), "connection.open")

    def close(self) -> None:
        """Close the connection; never blocks for more than a couple of seconds.

        If another thread holds the connection past that (a reconnect, a
        long read), its socket is shut down instead of written to, and that
        thread ends the connection itself as soon as it looks: no reconnect
        started before the close can leave a connection behind.
        """
        self._closing = True
        acquired = self._lock.acquire(timeout=self.CLOSE_WAIT)
        try:
            if self._state is State.CLOSED:
                return
            if not acquired:
                LOG.info("[%s] close: the connection is busy in another thread; cutting its socket",
                         self.name)
                self._cut = True
                sock = self._socket()
                if sock is not None:
                    with suppress(OSError, TypeError):
                        _socket.socket.shutdown(raw_socket(sock), socket.SHUT_RDWR)
                return
            link = self._link
            if link is not None and os.getpid() == self._pid and self._state in OPEN_STATES:
                try:
                    with self._request_deadline("connection.close", min(2.0, self.settings.request_timeout)):
                        link.close()
                except Exception as error:  # closing a dying connection may fail
                    LOG.debug("[%s] close: %s", self.name, error)
            self._teardown()
            self._set_state(State.CLOSED)
        finally:
            if acquired:
                self._lock.release()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def set_qos(self, prefetch_count: int | None = None, deadline: Deadline | None = None) -> None:
        """Bound unacknowledged deliveries; recorded and applied before consumers."""
        count = self.settings.rabbit_qos_prefetch_count if prefetch_count is None else prefetch_count
        self._topology.prefetch_count = count
        self.ensure(lambda ch: self._declarer(ch).qos(count), operation="basic.qos", deadline=deadline)

    def declare_exchange(self, name: str, type: str = "topic", *, durable: bool = False,
                         auto_delete: bool = False, arguments: dict[str, Any] | None = None,
                         deadline: Deadline | None = None) -> None:
        decl = ExchangeDecl(name, type, durable, auto_delete, tuple(sorted((arguments or {}).items())))
        self.ensure(lambda ch: self._declarer(ch).exchange(decl), operation="exchange.declare",
                    deadline=deadline)
        self._topology.add_exchange(decl)

    def declare_queue(self, name: str = "", *, durable: bool = False, auto_delete: bool = False,
                      exclusive: bool = False, arguments: dict[str, Any] | None = None,
                      deadline: Deadline | None = None) -> str:
        """Declare a queue; returns its name (the broker's choice when ``name`` is empty)."""
        decl = QueueDecl(name, name, durable, auto_delete, exclusive, dict(arguments or {}),
                         server_named=not name)
        actual = self.ensure(lambda ch: self._declarer(ch).queue(decl), operation="queue.declare",
                             deadline=deadline)
        decl.name = actual
        if not name:
            decl.key = actual
        self._topology.add_queue(decl)
        return actual

    def bind(self, queue: str, exchange: str, routing_key: str = "", *,
             deadline: Deadline | None = None) -> None:
        key = self._topology.key_for(queue)
        decl = BindingDecl(key, exchange, routing_key)
        self.ensure(lambda ch: self._declarer(ch).bind(self._topology.queue_name(key), decl),
                    operation="queue.bind", deadline=deadline)
        self._topology.add_binding(decl)

    def consume(self, queue: str, callback: Callable[[Any], None], *, no_ack: bool = False,
                arguments: dict[str, Any] | None = None, tag: str | None = None,
                deadline: Deadline | None = None) -> str:
        """Consume ``queue``; ``callback(message)`` runs in :meth:`drain_events`.

        The consumer is recorded: it is re-created after a reconnect and after a
        consumer cancel notification. Returns its tag, stable across both.
        """
        args = dict(arguments or {})
        if self.settings.enable_cancel_on_failover:
            args.setdefault("x-cancel-on-ha-failover", True)
        decl = ConsumerDecl(tag or f"{self._tag_prefix}-{next(self._tags)}",
                            self._topology.key_for(queue), callback, no_ack, args)
        self._topology.add_consumer(decl)
        try:
            # A reopened channel replays recorded consumers, this one included.
            def start(channel: Any) -> None:
                if decl.tag not in self._active_tags:
                    self._declarer(channel).consume(self._topology.queue_name(decl.queue_key), decl)

            self.ensure(start, operation="basic.consume", deadline=deadline)
        except BaseException:
            self._topology.remove_consumer(decl.tag)
            raise
        return decl.tag

    def set_consumer_argument(self, tag: str, key: str, value: Any) -> None:
        """Change an argument the consumer ``tag`` is re-created with after a
        reconnect or a cancel (a stream consumer's ``x-stream-offset``)."""
        decl = self._topology.consumers.get(tag)
        if decl is not None:
            decl.arguments[key] = value

    def cancel(self, tag: str, deadline: Deadline | None = None) -> None:
        """Stop a consumer. It is forgotten even if the broker cannot be told."""
        with self._lock:
            if self._topology.remove_consumer(tag) is None:
                return
            if self._state not in OPEN_STATES or self._channel is None:
                return
            try:
                with self._request_deadline("basic.cancel", self.settings.request_timeout):
                    self._channel.basic_cancel(tag)
            except Exception as error:
                close = close_of(error)
                if close is not None:
                    self._restore_after_close(close)
                    return
                errors.raise_refusal(error, "basic.cancel", self._addr())
                self._lost(f"basic.cancel failed: {error}")

    def delete_queue(self, name: str, deadline: Deadline | None = None) -> None:
        """Delete a queue and forget it (and its bindings and consumers)."""
        key = self._topology.key_for(name)
        self._topology.remove_queue(key)
        self.ensure(lambda ch: ch.queue_delete(name), operation="queue.delete", deadline=deadline)

    def queue_name(self, key: str) -> str:
        """Current name of a queue first declared (or first named) ``key``."""
        return self._topology.queue_name(key)

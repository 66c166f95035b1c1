"""The HA connection: one kombu transport connection that recovers by itself.

How it works. Every broker operation runs inside :meth:`Connection.ensure`,
which holds the connection's lock, makes sure a connection and a channel are
open, runs the operation under a deadline, and on failure asks
:func:`~rabbit_ha_driver.connection.errors.classify` what to do: raise at once
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
:mod:`~rabbit_ha_driver.connection.channel`); messages waiting for a confirm
on it are settled as lost, and deliveries of the old channel are never
acknowledged on the new one.

One connection is meant to be driven by one thread at a time (a consumer's
drain loop, or publishers taking turns); the lock makes sharing safe, not
concurrent.
"""

from __future__ import annotations

import _socket
import collections
import enum
import itertools
import logging
import os
import socket
import sys
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import kombu

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.connection import errors, frames
from rabbit_ha_driver.connection.amqp_io import Liveness, raw_socket
from rabbit_ha_driver.connection.cancels import CancelSchedule
from rabbit_ha_driver.connection.channel import BrokerClose, ChannelLife, ChannelState, close_of, concerns
from rabbit_ha_driver.connection.confirms import (
    ConfirmTracker,
    Outcome,
    Pending,
    settle_after_refusal,
    settled,
)
from rabbit_ha_driver.connection.connect_plan import ConnectPlan, GiveUp, Pause, Why
from rabbit_ha_driver.connection.hosts import HostRing
from rabbit_ha_driver.connection.locks import HandoverLock
from rabbit_ha_driver.connection.refusals import closed_connection, note_refusal
from rabbit_ha_driver.connection.retry import Backoff, Deadline
from rabbit_ha_driver.connection.tls_options import amqp_ssl_options
from rabbit_ha_driver.connection.topology import (
    BindingDecl,
    ConsumerDecl,
    ExchangeDecl,
    QueueDecl,
    Topology,
)
from rabbit_ha_driver.connection.transport import (
    AMQPTransport,
    DeadlineConnection,
    MemoryTransport,
    counts_consumers,
    supports_confirms,
)
from rabbit_ha_driver.settings import Host, Settings

LOG = logging.getLogger(__name__)
T = TypeVar("T")


#: Seconds a read of frames that already arrived may wait for the rest of one.
WAITING_READ = 0.001


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

_OPEN_STATES = frozenset({State.CONNECTED, State.BLOCKED})
#: Seconds after a channel opens before its consumed queues are first checked.
POST_RECOVERY_CHECK = 1.0
#: The methods a topology replay sends: a refusal of one of them is the replay's own.
_REPLAY_METHODS = frozenset({"basic.qos", "exchange.declare", "queue.declare", "queue.bind",
                             "basic.consume"})
#: A reader with a deadline of its own checks queues only with this much left.
MAINTENANCE_FLOOR = 0.5
#: Seconds between the two checks that find a consumed queue holding ready
#: messages while this connection, with nothing unacknowledged, got none.
STARVED_RECHECK = 2.0
_ALL_CONNECTIONS: weakref.WeakSet[Connection] = weakref.WeakSet()
_names = itertools.count(1)


#: A waiter past its deadline first reads what already arrived: at most this
#: many reads of at most this many seconds each (see _read_what_arrived).
LAST_LOOK_READS = 16
LAST_LOOK_WAIT = 0.005


def default_connection_name() -> str:
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return f"{prog}:{os.getpid()}:{socket.gethostname()}"


class Connection:
    """A broker connection that survives broker, network and consumer failures."""

    #: Seconds close() waits for another thread to let go of the connection.
    CLOSE_WAIT = 2.0

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
        #: lock's last holder finishes the close (see :mod:`.locks`).
        self._cut = False
        self._topology = Topology()
        self._backoff = backoff or Backoff(
            interval=settings.rabbit_retry_interval,
            step=settings.rabbit_retry_backoff,
            cap=settings.rabbit_interval_max,
        )
        #: The failover walk over the hosts (see :mod:`.connect_plan`).
        self._plan = ConnectPlan(
            HostRing(settings.hosts, settings.kombu_failover_strategy) if settings.hosts else None,
            self._backoff, settings.rabbit_max_retries)
        self._transport_cls = transport or (MemoryTransport if settings.is_memory else AMQPTransport)
        self._transport_options = dict(transport_options or {})
        self._state = State.NEW
        self._kombu: kombu.Connection | None = None
        self._transport: Any = None
        self._raw: Any = None
        self._channel: Any = None
        self._host: Host | None = None
        self._last_host: Host | None = None
        self._pid = os.getpid()
        self._confirms = False
        self._tracker = ConfirmTracker()
        #: Consumers the broker cancelled, until consumed again (see :mod:`.cancels`).
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

    # -- public state ------------------------------------------------------

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

    # -- lifecycle ---------------------------------------------------------

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
            raw, transport = self._raw, self._transport
            if raw is not None and os.getpid() == self._pid and self._state in _OPEN_STATES:
                try:
                    with self._request_deadline("connection.close", min(2.0, self.settings.request_timeout)):
                        transport.close_connection(raw)
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

    # -- the retry loop ----------------------------------------------------

    def ensure(self, fn: Callable[[Any], T], *, operation: str, deadline: Deadline | None = None) -> T:
        """Run ``fn(channel)``, recovering from broker faults until ``deadline``.

        ``operation`` is the AMQP method it performs (``queue.declare``...), used
        to judge broker refusals by the error table.
        """
        deadline = deadline or self._default_deadline()
        began = self._clock.now()
        with self._locked(deadline, operation):
            recovering = False
            failures = 0
            while True:
                self._ensure_open(deadline, operation)
                try:
                    with self._request_deadline(operation, deadline.cap(self.settings.request_timeout)):
                        return fn(self._channel)
                except (exc.Unroutable, exc.PublishNacked, exc.MessagingTimeout, exc.ConnectionLost):
                    # Verdicts of the operation itself (a publish whose outcome
                    # is unknown says so with ConnectionLost after recovery):
                    # the caller decides, the connection is fine.
                    raise
                except Exception as error:
                    failures += 1
                    self._on_failure(error, operation, recovering, deadline, failures, began)
                    recovering = True

    def _on_failure(self, error: BaseException, operation: str, recovering: bool,
                    deadline: Deadline, failures: int, began: float) -> None:
        host = self._host.address if self._host else None
        close = close_of(error)
        if close is not None and self._state in _OPEN_STATES and not concerns(close, operation):
            # The broker closed the channel over something else (a consumer
            # timeout, another thread's publish or ack): not this caller's
            # fault. Restore the channel and run the operation again.
            self._channel_closed(close)
            if failures > 1:
                self._clock.sleep(deadline.cap(self._backoff.delay(failures - 1)))
            if self._restore_channel(deadline):
                return
            # ensure() reconnects next, within the caller's deadline.
            self._lost(f"restoring the channel after the broker closed it ({close}) failed")
            return
        if close is not None and self._state in _OPEN_STATES:
            self._channel_closed(close)
        action = errors.classify(error, operation, recovering)
        if action is errors.Action.RAISE:
            refused = errors.translate(error, operation, host)
            note_refusal(self, error, operation, refused)
            if errors.closes_channel(error) and self._state in _OPEN_STATES:
                # The broker closed the channel: give the next caller a fresh one,
                # whole (a replay cut short would leave it without its
                # consumers), or a new connection.
                if not self._reopen_channel(deadline, f"{operation} refused"):
                    self._lost(f"reopening the channel after {operation} was refused failed")
            elif closed_connection(error):
                # The broker closed the connection: the next caller reconnects.
                self._lost(str(refused))
            raise refused from error
        if isinstance(error, errors.RequestTimeout):
            self.events.emit(ev.RequestDeadlineMissed(self.name, host or "-", operation, error.timeout))
        reason = str(errors.translate(error, operation, host, failures))
        if action is errors.Action.REOPEN_CHANNEL and self._state in _OPEN_STATES:
            if failures > 1:
                self._clock.sleep(deadline.cap(self._backoff.delay(failures - 1)))
            if self._reopen_channel(deadline, reason):
                return
        self._lost(reason)
        if deadline.expired():
            raise exc.MessagingTimeout(
                f"{operation} did not succeed before its deadline: {reason}",
                waited=self._clock.now() - began, last_error=error) from error

    # -- topology ------------------------------------------------------------

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
            if self._state not in _OPEN_STATES or self._channel is None:
                return
            try:
                with self._request_deadline("basic.cancel", self.settings.request_timeout):
                    self._channel.basic_cancel(tag)
            except Exception as error:
                close = close_of(error)
                if close is not None:
                    self._restore_after_close(close)
                    return
                action = errors.classify(error, "basic.cancel")
                if action is errors.Action.RAISE:
                    raise errors.translate(error, "basic.cancel", self._addr()) from error
                self._lost(f"basic.cancel failed: {error}")

    def delete_queue(self, name: str, deadline: Deadline | None = None) -> None:
        """Delete a queue and forget it (and its bindings and consumers)."""
        key = self._topology.key_for(name)
        self._topology.remove_queue(key)
        self.ensure(lambda ch: ch.queue_delete(name), operation="queue.delete", deadline=deadline)

    def queue_name(self, key: str) -> str:
        """Current name of a queue first declared (or first named) ``key``."""
        return self._topology.queue_name(key)

    # -- publish -------------------------------------------------------------

    def publish(self, body: bytes, exchange: str, routing_key: str, *,
                headers: dict[str, Any] | None = None, properties: dict[str, Any] | None = None,
                mandatory: bool = True, deadline: Deadline | None = None,
                retry_uncertain: bool = False) -> None:
        """Publish and wait for the broker's confirm.

        Raises :class:`Unroutable` if returned, :class:`PublishNacked` if
        nacked. A message whose frames were never written is sent again after
        recovery. If the connection dies after the write but before the
        confirm, the outcome is unknown: it is sent again only if
        ``retry_uncertain`` (at-least-once); otherwise
        :class:`~rabbit_ha_driver.exceptions.ConnectionLost` is raised.
        """
        deadline = deadline or self._default_deadline()
        while True:
            pending = self.publish_nowait(body, exchange, routing_key, headers=headers,
                                          properties=properties, mandatory=mandatory,
                                          deadline=deadline)
            self.wait_confirm(pending, deadline)
            if pending.outcome is Outcome.DROPPED and not deadline.expired():
                continue  # dropped unread after another message's refusal: never taken
            if pending.outcome is Outcome.LOST and retry_uncertain:
                continue
            self.raise_for(pending, exchange, routing_key)
            return

    def publish_nowait(self, body: bytes, exchange: str, routing_key: str, *,
                       headers: dict[str, Any] | None = None,
                       properties: dict[str, Any] | None = None,
                       mandatory: bool = True, deadline: Deadline | None = None) -> Pending:
        """Write a message without waiting for its confirm; returns its :class:`Pending`.

        The confirm is read by whoever reads this connection next
        (:meth:`wait_confirm`, another publish's wait, a drain). Messages
        written one after the other this way are confirmed together, a
        round trip for many instead of one each. Recovers the connection
        before writing, like every operation.
        """
        deadline = deadline or self._default_deadline()
        base_props = properties or {}
        if self._confirms and self._state is State.CONNECTED:
            written = self._publish_open(body, exchange, routing_key, headers, base_props,
                                         mandatory, deadline)
            if written is not None:
                return written

        def attempt(channel: Any) -> Pending:
            self._wait_unblocked(deadline)
            props = dict(base_props)
            if self._confirms:
                encoded = self._encode_publish(channel, body, exchange, routing_key, headers,
                                               props, mandatory)
                if encoded is not None:
                    return self._write_recorded(*encoded)
            message = channel.prepare_message(
                body, props.pop("priority", None), props.pop("content_type", None),
                props.pop("content_encoding", None), headers, props)
            channel.basic_publish(message, exchange=exchange, routing_key=routing_key,
                                  mandatory=mandatory)
            if not self._confirms:
                return settled(Outcome.ACKED)  # memory: refused at once if unroutable
            return self._tracker.published(props.get("message_id"), exchange, self._clock.now())

        return self.ensure(attempt, operation="basic.publish", deadline=deadline)

    def _publish_open(self, body: bytes, exchange: str, routing_key: str,
                      headers: dict[str, Any] | None, base_props: dict[str, Any],
                      mandatory: bool, deadline: Deadline) -> Pending | None:
        """The common case of :meth:`publish_nowait`, without :meth:`ensure`'s machinery.

        On an open, unblocked AMQP connection nothing can need recovering
        before the write, and a write needs no request deadline. Returns
        None, having written nothing, whenever :meth:`ensure` must decide
        (busy lock, state changed, a property left to py-amqp, a failed
        write).
        """
        wait = deadline.remaining()
        if not self._lock.acquire(timeout=-1 if wait == float("inf") else max(0.0, wait)):
            return None
        try:
            channel = self._channel
            if self._state is not State.CONNECTED or channel is None or os.getpid() != self._pid:
                return None
            encoded = self._encode_publish(channel, body, exchange, routing_key, headers,
                                           dict(base_props), mandatory)
            if encoded is None:
                return None
            try:
                return self._write_recorded(*encoded, deadline=deadline)
            except Exception as error:
                # Nothing of it reached the broker as a whole message:
                # ensure() reconnects and sends it.
                self._lost(str(errors.translate(error, "basic.publish", self._addr())))
                return None
        finally:
            self._lock.release()

    def _encode_publish(self, channel: Any, body: bytes, exchange: str, routing_key: str,
                        headers: dict[str, Any] | None, props: dict[str, Any],
                        mandatory: bool) -> tuple[bytes, str | None, str] | None:
        """The frames of a publish on ``channel``, the ``message_id`` that tells
        a return apart (set in ``props``) and the exchange; None if a property
        is left to py-amqp."""
        message_id = (props.setdefault("message_id", self._tracker.next_message_id())
                      if mandatory else None)
        data = frames.publish(channel.channel_id, self._raw.frame_max, exchange, routing_key,
                              body, {**props, "headers": headers}, mandatory=mandatory)
        return None if data is None else (data, message_id, exchange)

    def _write_recorded(self, data: bytes, message_id: str | None, exchange: str,
                        deadline: Deadline | None = None) -> Pending:
        """Write encoded publish frames and record the message for its confirm.

        A failed write raises with nothing recorded (one that missed its
        deadline, ``deadline`` or the request's, may have left a frame half
        written: the caller tears the connection down). After the write, not
        before, the frames that arrived meanwhile are read (confirms, a
        blocked notice); the message was written, so a failure there must
        not send it again: the connection is only marked lost.
        """
        raw = self._raw
        if deadline is not None:
            with self._request_deadline("basic.publish", deadline.cap(self.settings.request_timeout)):
                raw.transport.write(data)
        else:
            raw.transport.write(data)
        raw.bytes_sent += 1
        pending = self._tracker.published(message_id, exchange, self._clock.now())
        try:
            self._read_waiting()
        except Exception as error:
            close = close_of(error)
            if close is not None:
                self._restore_after_close(close, deadline)
            else:
                self._lost(f"reading after a publish failed: {error}")
        return pending

    def _read_waiting(self) -> None:
        """Dispatch the frames that already arrived (confirms, a blocked notice).

        What py-amqp's own publish does first; here after the write, only
        when the socket or the read-ahead buffer holds something (so nothing
        waits and no timeout is set for nothing), and every frame already
        read ahead whole, so confirms never pile up.
        """
        liveness = self.liveness
        link = liveness.link if liveness is not None else None
        if link is None or not link.pending_bytes():
            return
        raw = self._raw
        self._drain_once(WAITING_READ)
        while raw is self._raw and isinstance(raw, DeadlineConnection) and raw.frame_buffered():
            self._drain_once(WAITING_READ)

    def wait_confirm(self, pending: Pending, deadline: Deadline | None = None) -> None:
        """Read this connection until ``pending`` is settled (see :class:`Outcome`).

        A connection that dies or stays silent past ``request_timeout``
        settles it as LOST (and recovers on the next operation). Raises
        MessagingTimeout when ``deadline`` passes first.
        """
        if pending.done:
            return
        deadline = deadline or self._default_deadline()
        began = self._clock.now()
        with self._locked(deadline, "basic.publish"):
            budget = self.settings.request_timeout
            while not pending.done:
                # When the caller's deadline comes before request_timeout,
                # running out of it says nothing about the broker: the wait
                # ends, the connection (and every other message waiting for
                # a confirm on it) stays.
                callers = deadline.remaining() < budget
                try:
                    with self._request_deadline("basic.publish", deadline.cap(budget)):
                        self._drain_once(deadline.cap(budget))
                except errors.RequestTimeout as error:
                    # A broker under a resource alarm holds confirms back on
                    # purpose: that is not a dead channel. Wait up to the
                    # publish's own deadline instead.
                    # But a broker that has confirmed nothing for
                    # request_timeout (the oldest message still waits) is
                    # stuck, whoever is waiting: without this, callers with
                    # short deadlines would keep a deaf channel for ever.
                    oldest = self._tracker.oldest_at()
                    stuck = oldest is not None and self._clock.now() - oldest >= budget
                    if self._state is not State.BLOCKED and (not callers or stuck):
                        self._lost(f"no publisher confirm within {budget:g}s" if stuck
                                   else f"no publisher confirm within {error.timeout:g}s")
                        continue
                    if self._state is not State.BLOCKED:
                        if self._read_what_arrived(pending):
                            continue
                        raise exc.MessagingTimeout(
                            f"broker {self._addr()} did not confirm the message before the deadline",
                            waited=self._clock.now() - began) from None
                    if deadline.expired():
                        raise exc.MessagingTimeout(
                            f"broker {self._addr()} kept publishing blocked (resource alarm) past "
                            "the deadline; the message may still be delivered when it unblocks",
                            waited=self._clock.now() - began) from None
                except Exception as error:
                    close = close_of(error)
                    if close is not None:
                        # Settles every waiting message of the closed channel.
                        self._restore_after_close(close, deadline)
                        continue
                    if errors.classify(error, "basic.publish") is errors.Action.RAISE:
                        raise errors.translate(error, "basic.publish", self._addr()) from error
                    self._lost(str(errors.translate(error, "basic.publish", self._addr())))
                    continue
                if not pending.done and deadline.expired() and not self._read_what_arrived(pending):
                    raise exc.MessagingTimeout(
                        f"broker {self._addr()} did not confirm the message before the deadline",
                        waited=self._clock.now() - began)

    def _read_what_arrived(self, pending: Pending) -> bool:
        """Read, without waiting, what already arrived; True once ``pending`` is settled.

        A thread that could not run for a while (an eventlet hub held by
        CPU-bound work) wakes past its deadline with its read timed out and
        the confirm it waited for unread in the socket: that is not a missed
        deadline. At most :data:`LAST_LOOK_READS` short reads; any error is
        left to the next operation.
        """
        for _ in range(LAST_LOOK_READS):
            if pending.done:
                break
            try:
                with self._request_deadline("basic.publish", LAST_LOOK_WAIT):
                    self._drain_once(LAST_LOOK_WAIT)
            except Exception:  # the caller reports the missed deadline
                break
        return pending.done

    def raise_for(self, pending: Pending, exchange: str, routing_key: str) -> None:
        """Raise what a settled publish that was not acked means; return if acked."""
        outcome = pending.outcome
        if outcome is Outcome.ACKED:
            return
        if outcome is Outcome.RETURNED:
            raise exc.Unroutable(
                f"broker returned message for {exchange!r}/{routing_key!r}: "
                f"{pending.reply_code} {pending.reply_text}", host=self._addr(),
                reply_code=pending.reply_code, operation="basic.publish")
        if outcome is Outcome.NACKED:
            raise exc.PublishNacked("broker nacked the message", host=self._addr(),
                                    operation="basic.publish")
        if outcome is Outcome.REFUSED:
            raise exc.IrrecoverableError(
                f"publish to {exchange!r}/{routing_key!r}: the broker closed the channel over it: "
                f"{pending.reply_code} {pending.reply_text}", host=self._addr(),
                reply_code=pending.reply_code, operation="basic.publish")
        if outcome is Outcome.DROPPED:
            raise exc.ChannelDead(
                f"publish to {exchange!r}/{routing_key!r}: dropped unread by the broker after it "
                f"refused another message on the channel ({pending.closed_by}); safe to send again",
                host=self._addr(), operation="basic.publish")
        if pending.closed_by is not None:
            raise exc.ConnectionLost(
                f"publish to {exchange!r}/{routing_key!r}: the broker closed the channel "
                f"({pending.closed_by}) after the message was written and before it was "
                "confirmed; not sent again", host=self._addr(), operation="basic.publish")
        raise exc.ConnectionLost(
            f"publish to {exchange!r}/{routing_key!r}: connection lost after the "
            "message was written and before the broker confirmed it; not sent again",
            host=self._addr(), operation="basic.publish")

    def _wait_unblocked(self, deadline: Deadline) -> None:
        began = self._clock.now()
        while self._state is State.BLOCKED:
            if deadline.expired():
                raise exc.MessagingTimeout(
                    f"broker {self._addr()} kept publishing blocked past the deadline",
                    waited=self._clock.now() - began)
            self._drain_once(deadline.cap(0.5))

    # -- acknowledgements ------------------------------------------------------

    def ack(self, message: Any) -> bool:
        """Acknowledge ``message``; False if its channel is gone (the broker redelivers)."""
        return self._settle(message, "basic.ack", self._write_ack if self._confirms
                            else lambda m: m.ack())

    def reject(self, message: Any, requeue: bool = False) -> bool:
        """Reject (and maybe requeue) ``message``; False if its channel is gone."""
        return self._settle(message, "basic.reject", lambda m: m.reject(requeue=requeue))

    def _write_ack(self, message: Any) -> None:
        """``basic.ack`` written directly (see :mod:`frames`), the delivery marked acked."""
        if not hasattr(message, "_state"):
            message.ack()
            return
        raw = self._raw
        raw.transport.write(frames.ack(message.channel.channel_id, message.delivery_tag))
        raw.bytes_sent += 1
        message._state = "ACK"  # what kombu's Message.ack() records

    def _settle(self, message: Any, operation: str, fn: Callable[[Any], None]) -> bool:
        with self._lock:
            if getattr(message, "channel", None) is not self._channel or self._channel is None:
                LOG.debug("[%s] %s skipped: delivery belongs to a closed channel", self.name, operation)
                return False
            if getattr(message, "acknowledged", False):
                return True
            try:
                fn(message)
                self._unsettled = max(0, self._unsettled - 1)
                return True
            except Exception as error:
                self._lost(f"{operation} failed: {error}")
                return False

    # -- consuming -------------------------------------------------------------

    def drain_events(self, timeout: float, *, within: float | None = None) -> None:
        """Deliver messages to consumer callbacks for up to ``timeout`` seconds.

        Recovers the connection (and re-creates cancelled consumers after their
        delay) within the same time. Returns early after a delivery.

        ``within`` is for a reader that has a deadline of its own (a caller
        reading its reply queue): nothing here then blocks for longer than
        ``max(timeout, within)`` seconds, not the lock, not a connect
        attempt, not a queue check (checks are left to a later turn when
        less than :data:`MAINTENANCE_FLOOR` is left). Without it (a
        consumer's own loop, which nobody waits on) a recovery attempt that
        starts gets its full connect and request timeouts.
        """
        deadline = Deadline.after(timeout, self._clock)
        patient = within is None
        bound = deadline if within is None else Deadline.after(max(timeout, within), self._clock)
        with self._locked(bound if not patient else Deadline.never(self._clock), "basic.consume"):
            try:
                self._ensure_open(bound, "basic.consume", patient=patient)
                self._restore_cancelled(bound, patient)
            except exc.MessagingTimeout:
                return
            wait = deadline.remaining()
            cancel_due = self._cancels.wait(self._clock.now())
            if cancel_due is not None:
                wait = min(wait, cancel_due)
            if self.settings.consumer_check_interval > 0 and self._topology.consumers:
                wait = min(wait, max(0.0, self._next_consumer_check - self._clock.now()))
            try:
                self._drain_once(wait)
            except Exception as error:
                close = close_of(error)
                if close is not None:
                    self._restore_after_close(close, None if patient else bound)
                    return
                if errors.classify(error, "basic.consume") is errors.Action.RAISE:
                    raise errors.translate(error, "basic.consume", self._addr()) from error
                dead = self.liveness.dead_reason if self.liveness is not None else None
                self._lost(dead or str(errors.translate(error, "basic.consume", self._addr())))
            try:
                self._restore_cancelled(bound, patient)
                self._check_consumers(self._maintenance_budget(bound, patient))
            except exc.MessagingTimeout:
                return

    def _maintenance_budget(self, bound: Deadline, patient: bool) -> float:
        """Seconds a queue check or re-consume may wait for the broker; 0: not now."""
        if patient:
            return self.settings.request_timeout
        left = bound.cap(self.settings.request_timeout)
        return left if left >= MAINTENANCE_FLOOR else 0.0

    def _check_consumers(self, budget: float) -> None:
        """Passively declare consumed queues now and then; re-create a vanished one.

        The safety net for a consumer cancel the broker never sent: without it
        a consumer of a deleted queue would wait for ever on a healthy
        connection.
        """
        interval = self.settings.consumer_check_interval
        now = self._clock.now()
        if interval <= 0 or now < self._next_consumer_check or self._state not in _OPEN_STATES \
                or budget <= 0:
            return
        self._next_consumer_check = now + interval
        keys = {c.queue_key for c in self._topology.consumers.values()} - self._cancels.keys()
        for key in sorted(keys):
            name = self._topology.queue_name(key)
            try:
                with self._request_deadline("queue.declare", budget):
                    ok = self._channel.queue_declare(queue=name, passive=True)
                why = self._consumer_lost(key, ok)
                if why is not None:
                    self.events.emit(ev.ConsumerLost(self.name, name, why))
                    if key in self._relost:
                        # A new channel on this node did not help: another node may.
                        self._relost.discard(key)
                        self._lost(f"the consumer of queue {name!r} was lost again on a new "
                                   f"channel ({why})")
                        return
                    self._relost.add(key)
                    if not self._reopen_channel(Deadline.after(budget, self._clock),
                                                f"the broker lost the consumer of queue {name!r}"):
                        self._lost(f"consuming queue {name!r} again failed")
                    return
            except Exception as error:
                close = close_of(error)
                if close is not None and close.reply_code != 404:
                    # Closed over something else (a consumer timeout) while checking.
                    self._restore_after_close(close)
                    return
                if errors.reply_code_of(error) != 404:
                    self._lost(f"checking queue {name!r} failed: {error}")
                    return
                self.events.emit(ev.ConsumerCancelled(self.name, name, 0.0))
                if self._reopen_channel(Deadline.after(budget, self._clock),
                                        f"queue {name!r} vanished without a consumer cancel"):
                    self.events.emit(ev.ConsumerRestored(self.name, self._topology.queue_name(key), True))
                else:
                    self._lost(f"re-creating vanished queue {name!r} failed")
                return

    def _consumer_lost(self, key: Any, declare_ok: Any) -> str | None:
        """Why the broker's queue does not deliver to this connection's
        consumer, or None; it takes two checks in a row to say so.

        RabbitMQ can lose a consumer without a ``basic.cancel`` (a quorum
        queue whose members restarted around a leader change): the channel
        still lists it, the queue delivers to nobody, and messages wait for
        ever. Two signs, each needing a second check to count (a first one
        may be the broker catching up, and the next check comes soon):

        * the queue counts no consumer;
        * the queue holds ready messages, and this connection, which had
          nothing unacknowledged, received none from it in between. With
          another server's consumer counted, that is the only sign a lost
          consumer of ours gives; a live consumer with free prefetch would
          have been sent them.

        Only some transports count a queue's consumers (see
        :func:`counts_consumers`), and RabbitMQ counts none for a stream,
        whose messages stay in it once read: a stream shows neither sign.
        """
        count = getattr(declare_ok, "consumer_count", None)
        if not counts_consumers(self._transport) or count is None \
                or self._topology.is_stream(key):
            self._zero_consumers.discard(key)
            self._starving.pop(key, None)
            return None
        if count > 0:
            self._zero_consumers.discard(key)
            if self._topology.single_active(key):
                # A standby consumer is sent nothing while the active one lives.
                self._starving.pop(key, None)
                return None
            return self._consumer_starved(key, getattr(declare_ok, "message_count", None))
        self._starving.pop(key, None)
        if key in self._zero_consumers:
            self._zero_consumers.discard(key)
            return "the queue counts no consumer"
        self._zero_consumers.add(key)
        self._check_again_in(POST_RECOVERY_CHECK)
        return None

    def _consumer_starved(self, key: Any, ready: int | None) -> str | None:
        if not ready or self._unsettled > 0:
            # Nothing waits, or our own prefetch may be what holds it back.
            self._starving.pop(key, None)
            return None
        delivered, now = self._delivered[key], self._clock.now()
        first = self._starving.get(key)
        if first is None or first[0] != delivered:
            self._starving[key] = (delivered, now)
            self._check_again_in(STARVED_RECHECK)
            return None
        if now - first[1] < STARVED_RECHECK:
            # Checked sooner (a short interval, another queue's first zero):
            # a broker slow to deliver for less than that is no lost consumer.
            self._check_again_in(first[1] + STARVED_RECHECK - now)
            return None
        del self._starving[key]
        return (f"{ready} message(s) ready in the queue and none delivered to this "
                f"consumer with free prefetch since the last check")

    def _check_again_in(self, seconds: float) -> None:
        self._next_consumer_check = min(self._next_consumer_check, self._clock.now() + seconds)

    def _drain_once(self, wait: float) -> None:
        """One read of up to ``wait`` seconds; a timeout is not an error."""
        liveness = self.liveness
        owner_wait = liveness.owner_wait() if liveness is not None else None
        if owner_wait is not None:
            wait = min(wait, owner_wait)
        try:
            if isinstance(self._raw, DeadlineConnection):
                self._raw.drain_for(wait)
            else:
                self._transport.drain_events(self._raw, timeout=wait)
        except TimeoutError:
            pass
        finally:
            if liveness is not None:
                liveness.owner_tick()

    def _deliver(self, decl: ConsumerDecl, channel: Any) -> Callable[[Any], None]:
        to_python = None
        if supports_confirms(self._transport):
            to_python = getattr(channel, "message_to_python", None)

        def deliver(raw_message: Any) -> None:
            message = to_python(raw_message) if to_python is not None else raw_message
            self._delivered[decl.queue_key] += 1
            self._relost.discard(decl.queue_key)
            if decl.no_ack:
                if hasattr(message, "_state"):
                    # The broker counts it acknowledged on delivery: an ack
                    # written for it would name an unknown tag and close the channel.
                    message._state = "ACK"
            elif channel is self._channel:
                self._unsettled += 1
            try:
                decl.callback(message)
            except Exception:
                LOG.exception("[%s] consumer callback for queue %r failed",
                              self.name, self._topology.queue_name(decl.queue_key))

        return deliver

    def _on_cancel(self, tag: str) -> None:
        decl = self._topology.consumers.get(tag)
        if decl is None:
            return
        self._active_tags.discard(tag)
        delay = self.settings.kombu_reconnect_delay
        self._cancels.cancelled(decl.queue_key, self._clock.now(), delay)
        self.events.emit(ev.ConsumerCancelled(self.name, self._topology.queue_name(decl.queue_key), delay))

    def _restore_cancelled(self, deadline: Deadline, patient: bool = True) -> None:
        budget = self._maintenance_budget(deadline, patient)
        if budget <= 0 or self._channel is None:
            return
        for key in self._cancels.take_due(self._clock.now()):
            try:
                with self._request_deadline("queue.declare", budget):
                    self._topology.replay_queue(self._declarer(self._channel), key)
                self.events.emit(ev.ConsumerRestored(self.name, self._topology.queue_name(key), True))
            except Exception as error:
                action = errors.classify(error, "queue.declare", recovering=True)
                if action is errors.Action.RAISE:
                    raise errors.translate(error, "queue.declare", self._addr()) from error
                LOG.warning("[%s] re-consuming queue %r on the same connection failed (%s); "
                            "reconnecting", self.name, self._topology.queue_name(key), error)
                self._lost(f"re-consume after cancel failed: {error}")
                self._cancels.restore_by_reconnect(key)
                self._ensure_open(deadline, "basic.consume", patient=patient)

    # -- internals: connecting -----------------------------------------------------

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

    def _ensure_open(self, deadline: Deadline, operation: str, patient: bool = False) -> None:
        self._stop_if_closing(operation)
        if self._state is State.CLOSED:
            raise exc.ConnectionLost(f"connection {self.name} is closed", operation=operation)
        if os.getpid() != self._pid:
            self._forget_after_fork()
        if self._state in _OPEN_STATES and self._channel is not None:
            return
        if self._state in _OPEN_STATES and self._life.state is ChannelState.BROKER_CLOSED:
            if self._restore_channel(deadline if not patient else self._request_budget()):
                return
            self._lost(f"restoring the channel the broker closed ({self._life.last_close}) failed")
        elif self._state in _OPEN_STATES:
            # Connected without a channel (reopening one failed after a
            # refusal): tear it down before connecting again, or it is left open.
            self._lost("the connection has no channel: reopening it failed")
        self._establish(deadline, patient)

    def _establish(self, deadline: Deadline, patient: bool = False) -> None:
        """Connect to the first host that answers and replay the topology.

        ``patient`` (a consumer's drain loop, which has no caller waiting on
        it): an attempt that starts before the deadline gets its full connect
        and request timeouts, however little of the deadline is left, so a
        replay that takes longer than one drain slice still completes.
        """
        recovering = self._last_host is not None
        self._set_state(State.RECOVERING if recovering else State.CONNECTING)
        plan = self._plan
        plan.begin()
        started = self._clock.now()
        last_error: BaseException | None = None
        self._wait_for_retry(deadline)
        while True:
            step = plan.next_attempt(deadline.expired())
            if isinstance(step, GiveUp):
                raise exc.MessagingTimeout(
                    f"could not connect to any of {self._hosts_text()} within "
                    f"{self._clock.now() - started:.1f}s ({step.attempts} attempts): {last_error}",
                    waited=self._clock.now() - started, last_error=last_error)
            host = step.host
            self.events.emit(ev.Connecting(self.name, host.address if host else "memory", step.number))
            phase = ["connection.open"]
            try:
                self._open(host, deadline, phase, patient)
            except Exception as error:
                self._teardown()
                action = errors.classify(error, phase[0], recovering=True)
                if action is errors.Action.RAISE:
                    self._set_state(State.FAILED)
                    refused = errors.translate(error, phase[0], host.address if host else None)
                    note_refusal(self, error, phase[0], refused)
                    raise refused from error
                last_error = error
                self.events.emit(ev.ConnectFailed(self.name, host.address if host else "memory",
                                                  f"{phase[0]}: {type(error).__name__}: {error}"))
                after = plan.failed(self._clock.now(), forever=deadline.is_never)
                if isinstance(after, GiveUp):
                    assert after.why is Why.MAX_RETRIES
                    self._set_state(State.FAILED)
                    raise exc.ConnectionLost(
                        f"gave up after {after.failed_passes} passes over the hosts: {error}",
                        attempts=after.attempts) from error
                if isinstance(after, Pause):
                    self.events.emit(ev.RetryScheduled(self.name, after.failed_passes, after.seconds))
                    self._clock.sleep(deadline.cap(after.seconds))
                continue
            plan.succeeded()
            self._stop_if_closing("connection.open")
            self._set_state(State.CONNECTED)
            heartbeat = getattr(self._raw, "heartbeat", 0) or 0
            where = host.address if host else "memory"
            self.events.emit(ev.Connected(self.name, where, self.local_port, float(heartbeat)))
            if self._last_host is not None and host is not None and self._last_host != host:
                self.events.emit(ev.FailedOver(self.name, self._last_host.address, host.address))
            self._last_host = host
            for key in self._cancels.reconnected():
                self.events.emit(ev.ConsumerRestored(self.name, self._topology.queue_name(key), False))
            return

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

    def _hosts_text(self) -> str:
        return ", ".join(h.address for h in self.settings.hosts) or "memory://"

    def _wait_for_retry(self, deadline: Deadline) -> None:
        """Honour a backoff an earlier, shorter turn began (see :mod:`.connect_plan`).

        Raises MessagingTimeout, without an attempt, when the deadline ends
        before the next attempt is due.
        """
        wait = self._plan.wait_due(self._clock.now())
        if wait <= 0:
            return
        if deadline.remaining() < wait:
            waited = max(0.0, deadline.remaining())
            self._clock.sleep(waited)
            raise exc.MessagingTimeout(
                f"could not connect to any of {self._hosts_text()}: backing off after "
                f"{self._plan.failed_passes} failed passes, next attempt in {wait:.1f}s",
                waited=waited)
        self._clock.sleep(wait)

    def _open(self, host: Host | None, deadline: Deadline, phase: list[str], patient: bool = False) -> None:
        if patient:  # this attempt's own budget; no new attempt starts past the caller's
            deadline = Deadline.after(self.settings.connect_timeout + self.settings.request_timeout,
                                      self._clock)
        budget = max(0.05, deadline.cap(self.settings.connect_timeout))
        if host is None:
            kconn = kombu.Connection("memory://", transport=self._transport_cls,
                                     transport_options={"polling_interval": 0.01, **self._transport_options})
        else:
            assert self.liveness is not None
            options = {"client_properties": {"connection_name": self.name},
                       "on_blocked": self._on_blocked, "on_unblocked": self._on_unblocked,
                       **self.liveness.transport_options(), **self._transport_options}
            kconn = kombu.Connection(
                hostname=host.hostname, port=host.port, userid=host.username,
                password=host.password, virtual_host=self.settings.virtual_host,
                transport=self._transport_cls, heartbeat=self.liveness.heartbeat,
                connect_timeout=budget, ssl=self._ssl_options(host),
                login_method=self.settings.rabbit_login_method, transport_options=options)
        self._kombu = kconn
        self._transport = kconn.transport
        self._raw = self._transport.establish_connection()
        if isinstance(self._raw, DeadlineConnection):
            self._raw.frame_write_timeout = self.settings.request_timeout
        self._host = host
        self._pid = os.getpid()
        if self.liveness is not None and supports_confirms(self._transport):
            self.liveness.attach(self._raw)
        phase[0] = "channel.open"
        # What is left of the caller's time, not the budget the connect began with.
        with self._request_deadline("channel.open", max(0.05, deadline.cap(self.settings.connect_timeout))):
            self._open_channel()
        phase[0] = "queue.declare"
        with self._request_deadline("queue.declare", deadline.cap(self.settings.request_timeout)):
            self._topology.replay(self._declarer(self._channel))
        self._life.move(ChannelState.OPEN)
        if self._topology.queues or self._topology.consumers:
            self.events.emit(ev.TopologyRestored(self.name, host.address if host else "memory",
                                                 len(self._topology.queues), len(self._topology.consumers)))

    def _open_channel(self) -> None:
        self._life.move(ChannelState.OPENING)
        channel = self._transport.create_channel(self._raw)
        # The channel tells us first when the broker closes it (see channel.py).
        channel.on_broker_close = self._on_broker_close
        self._active_tags = set()
        # Check soon after every (re)open: right after a node dies, the broker
        # can accept a declare and a consume for a queue whose process died
        # with the node, and such a consumer would hear nothing.
        self._next_consumer_check = self._clock.now() + min(
            self.settings.consumer_check_interval, POST_RECOVERY_CHECK)
        self._zero_consumers.clear()
        self._starving.clear()
        self._unsettled = 0
        self._confirms = supports_confirms(self._transport)
        self._tracker.lose_all()
        if self._confirms:
            channel.confirm_select()
            tracker = self._tracker = ConfirmTracker()
            channel.events["basic_ack"].add(tracker.on_ack)
            channel.events["basic_nack"].add(tracker.on_nack)
            channel.events["basic_return"].add(
                lambda error, exchange, key, message: tracker.on_return(
                    getattr(error, "reply_code", 312), getattr(error, "reply_text", ""),
                    getattr(message, "properties", None) or {}))
        self._channel = channel

    def _reopen_channel(self, deadline: Deadline, reason: str) -> bool:
        """A new channel on the same connection, with the topology replayed."""
        LOG.info("[%s] reopening channel on %s: %s", self.name, self._addr(), reason)
        try:
            with self._request_deadline("channel.open", deadline.cap(self.settings.request_timeout)):
                old = self._channel
                self._channel = None
                if old is not None:
                    self._release(old)
                self._open_channel()
                self._topology.replay(self._declarer(self._channel))
            self._life.move(ChannelState.OPEN)
            return True
        except Exception as error:
            close = close_of(error)
            operation = close.method if close is not None and close.method else "queue.declare"
            if operation in _REPLAY_METHODS and \
                    errors.classify(error, operation, recovering=True) is errors.Action.RAISE:
                raise errors.translate(error, operation, self._addr()) from error
            LOG.info("[%s] reopening the channel failed (%s); reconnecting", self.name, error)
            return False

    def _release(self, channel: Any) -> None:
        """Let go of a channel being replaced: closed properly unless the broker closed it."""
        try:
            if getattr(channel, "broker_close", None) is None and getattr(channel, "is_open", False):
                channel.close()  # else the broker would keep it, and its consumers
            else:
                channel.collect()
        except Exception as error:  # already gone
            LOG.debug("[%s] dropping old channel: %s", self.name, error)

    def _on_broker_close(self, channel: Any, close: BrokerClose) -> None:
        """The channel's own report that the broker closed it (called while reading)."""
        if channel is self._channel:
            self._channel_closed(close)

    def _channel_closed(self, close: BrokerClose) -> None:
        """Drop the channel the broker closed: its waiting confirms are settled as lost."""
        channel, self._channel = self._channel, None
        if channel is None and self._life.state is ChannelState.BROKER_CLOSED:
            return  # already noted (the channel reported it before raising)
        if channel is not None:
            with suppress(Exception):  # released already by RecoverableChannel
                channel.collect()
        waiting = self._tracker.take_waiting()
        if close.method == "basic.publish" and close.reply_code == 404:
            # Which message was refused is told after the restore (see
            # _settle_refused); until then their publishers wait for the lock.
            self._refused_waiting.extend(waiting)
            self._refused_close = close
        else:
            settle_after_refusal(waiting, close, None)
        self._active_tags = set()
        self._life.closed_by_broker(close)
        self.events.emit(ev.ChannelClosedByBroker(self.name, self._addr() or "memory",
                                                  close.reply_code, str(close), len(waiting)))

    def _restore_channel(self, deadline: Deadline) -> bool:
        """A new channel in place of one the broker closed; False if that failed."""
        started = self._clock.now()
        try:
            # Before the replay: it declares the connection's exchanges
            # again, and the probe would then find the missing one present.
            self._settle_refused(deadline)
            if not self._reopen_channel(deadline, f"the broker closed the channel ({self._life.last_close})"):
                return False
        finally:
            # Never leave a publisher waiting: unknown stays lost.
            waiting, self._refused_waiting = self._refused_waiting, []
            settle_after_refusal(waiting, self._refused_close, None)
        self._life.restores += 1
        self.events.emit(ev.ChannelRestored(self.name, self._addr() or "memory",
                                            len(self._topology.consumers), self._clock.now() - started))
        return True

    def _settle_refused(self, deadline: Deadline) -> None:
        """After a close over a publish: find the missing exchange, settle who waited.

        The broker names the refused method, not the message. A passive
        declare of each exchange the waiting messages went to, on a channel
        of its own opened before the restore replays the topology, finds
        the missing one (and makes the broker close that channel); the
        oldest message to it was refused, later ones were dropped unread,
        earlier ones may have been taken.
        """
        waiting, close = self._refused_waiting, self._refused_close
        names = sorted({p.exchange for p in waiting if p.exchange})
        if not names or close is None:
            return
        try:
            with self._request_deadline("channel.open", deadline.cap(self.settings.request_timeout)):
                probe_channel = self._transport.create_channel(self._raw)
        except Exception as error:
            LOG.debug("[%s] could not tell which publish was refused: %s", self.name, error)
            return
        try:
            for name in names:
                try:
                    with self._request_deadline("exchange.declare",
                                                deadline.cap(self.settings.request_timeout)):
                        probe_channel.exchange_declare(exchange=name, type="topic", passive=True)
                except Exception as error:
                    probe = close_of(error)
                    if probe is None or probe.reply_code != 404:
                        LOG.debug("[%s] could not tell which publish was refused: %s", self.name, error)
                        return
                    self._refused_waiting = []
                    settle_after_refusal(waiting, close, name)
                    return
        finally:
            with self._request_deadline("channel.close", deadline.cap(self.settings.request_timeout)):
                self._release(probe_channel)

    def _restore_after_close(self, close: BrokerClose, bound: Deadline | None = None) -> None:
        """Seen by a reader: note the close and restore at once (or reconnect).

        ``bound``: the reader's own deadline, if it has one (see drain_events).
        """
        if self._state not in _OPEN_STATES:
            return
        self._channel_closed(close)
        budget = self._request_budget()
        if bound is not None:
            budget = Deadline(min(budget.at, bound.at), self._clock)
        if not self._restore_channel(budget):
            self._lost(f"restoring the channel after the broker closed it ({close}) failed")

    def _request_budget(self) -> Deadline:
        return Deadline.after(self.settings.request_timeout, self._clock)

    def _ssl_options(self, host: Host) -> Any:
        """py-amqp's TLS options: the chain is always verified, the name on request."""
        return amqp_ssl_options(self.settings, host)

    def _lost(self, reason: str) -> None:
        if self._state in _OPEN_STATES:
            self.events.emit(ev.ConnectionLost(self.name, self._addr() or "memory", reason))
            self._set_state(State.RECOVERING)
            self._plan.lost()
        self._teardown()

    def _teardown(self) -> None:
        self._tracker.lose_all()
        raw, transport = self._raw, self._transport
        self._channel = None
        if self._life.state is not ChannelState.NONE:
            self._life.move(ChannelState.NONE)
        self._raw = None
        self._transport = None
        self._host = None
        self._cancels.clear()
        if self.liveness is not None:
            self.liveness.detach()
        if raw is not None:
            try:
                if isinstance(raw, DeadlineConnection):
                    raw.discard()
                elif supports_confirms(transport):
                    raw.collect()
                else:
                    transport.close_connection(raw)
            except Exception as error:
                LOG.debug("[%s] teardown: %s", self.name, error)

    def _forget_after_fork(self) -> None:
        """In a child process, on first use: drop the parent's connection and
        connect anew (the socket itself was closed by :meth:`_reinit_after_fork`)."""
        LOG.debug("[%s] process forked; opening a new connection in the child", self.name)
        self._close_inherited_socket()
        self._raw = None
        self._teardown()
        self._pid = os.getpid()
        if self._state in _OPEN_STATES:
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
        raw = self._raw
        if raw is None or not supports_confirms(self._transport):
            return
        transport = getattr(raw, "_transport", None)
        sock = getattr(transport, "sock", None)
        if transport is None or sock is None:
            return
        transport.sock = None  # py-amqp's close() then sends and shuts down nothing
        with suppress(OSError, ValueError):
            # detach() drops an SSL object without a close_notify; closing
            # the descriptor in the child leaves the parent's open.
            fd = sock.detach()
            if fd >= 0:
                os.close(fd)

    def _socket(self) -> socket.socket | None:
        raw = self._raw
        transport = getattr(raw, "_transport", None) or getattr(raw, "transport", None)
        return getattr(transport, "sock", None)

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

    @contextmanager
    def _request_deadline(self, operation: str, seconds: float) -> Iterator[None]:
        raw = self._raw
        if isinstance(raw, DeadlineConnection):
            with raw.deadline(operation, max(0.001, seconds)):
                yield
        else:
            yield

    # -- internals: broker callbacks --------------------------------------------

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

    def _declarer(self, channel: Any) -> _ChannelDeclarer:
        return _ChannelDeclarer(self, channel)


class _ChannelDeclarer:
    """Topology declarations on one channel (used for first use and replay)."""

    def __init__(self, conn: Connection, channel: Any) -> None:
        self._conn = conn
        self._channel = channel

    def qos(self, prefetch_count: int) -> None:
        self._channel.basic_qos(0, prefetch_count, False)

    def exchange(self, decl: ExchangeDecl) -> None:
        self._channel.exchange_declare(exchange=decl.name, type=decl.type, durable=decl.durable,
                                       auto_delete=decl.auto_delete, arguments=dict(decl.arguments))

    def queue(self, decl: QueueDecl) -> str:
        name = "" if decl.server_named else decl.name
        result = self._channel.queue_declare(queue=name, durable=decl.durable, auto_delete=decl.auto_delete,
                                             exclusive=decl.exclusive, arguments=decl.arguments or None)
        return str(getattr(result, "queue", None) or (result[0] if result else name))

    def bind(self, queue: str, decl: BindingDecl) -> None:
        self._channel.queue_bind(queue=queue, exchange=decl.exchange, routing_key=decl.routing_key)

    def consume(self, queue: str, decl: ConsumerDecl) -> None:
        conn = self._conn
        if decl.tag in conn._active_tags:
            # Already consuming on this channel (a channel restore replayed
            # it while its cancel waited for its delay): a second
            # basic.consume with the tag makes RabbitMQ close the connection.
            return
        kwargs: dict[str, Any] = {}
        if supports_confirms(conn._transport):
            kwargs["on_cancel"] = conn._on_cancel
            kwargs["arguments"] = decl.arguments or None
        elif hasattr(self._channel, "fake_broker"):
            kwargs["on_cancel"] = conn._on_cancel
        self._channel.basic_consume(queue=queue, no_ack=decl.no_ack,
                                    callback=conn._deliver(decl, self._channel),
                                    consumer_tag=decl.tag, **kwargs)
        conn._active_tags.add(decl.tag)


def _after_fork_in_child() -> None:
    for conn in list(_ALL_CONNECTIONS):
        conn._reinit_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

"""A fake broker that fails on demand, for tests of code built on this library.

How it works: :class:`FakeTransport` is kombu's in-process memory transport
with a :class:`FakeBroker` behind it. The broker refuses connects
(``fail_connects``, ``down_hosts``, ``refuse_login``), makes the next call of an
AMQP operation fail with a given error (:meth:`FakeBroker.fail_next`), drops
live connections (:meth:`FakeBroker.drop_connections`), returns unroutable
mandatory messages, cancels consumers the way RabbitMQ does when a queue
is deleted (:meth:`FakeBroker.cancel_consumers`), and closes channels while
keeping the connection, the way RabbitMQ does for a consumer acknowledgement
timeout or a publish to a missing exchange (:meth:`FakeBroker.close_channels`).

For the paths only AMQP has (publisher confirms, nacks, returns, a broker that
blocks publishing), :class:`~rabbit_ha_driver.testing.amqp_broker.AmqpServer`
is a scripted AMQP 0-9-1 broker on a loopback socket that a connection reaches
through the real py-amqp transport (:mod:`rabbit_ha_driver.testing.amqp_broker`).

Use the fake broker by handing the transport and the broker to a connection::

    broker = FakeBroker()
    conn = Connection(settings, transport=FakeTransport,
                      transport_options={"fake_broker": broker})
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable
from typing import Any

import amqp.exceptions
from kombu.transport import memory as kombu_memory
from kombu.transport.virtual import BrokerState

from rabbit_ha_driver.connection._backend import MemoryLink
from rabbit_ha_driver.connection._channel import close_of, method_sig
from rabbit_ha_driver.connection._transport import MemoryChannel
from rabbit_ha_driver.testing._amqp_wire import ACK as ACK
from rabbit_ha_driver.testing._amqp_wire import BLOCK as BLOCK
from rabbit_ha_driver.testing._amqp_wire import DROP as DROP
from rabbit_ha_driver.testing._amqp_wire import HOLD as HOLD
from rabbit_ha_driver.testing._amqp_wire import NACK as NACK
from rabbit_ha_driver.testing._amqp_wire import RETURN as RETURN
from rabbit_ha_driver.testing._amqp_wire import SILENT as SILENT
from rabbit_ha_driver.testing._amqp_wire import Seen as Seen
from rabbit_ha_driver.testing.amqp_broker import AmqpServer as AmqpServer

_broker_ids = itertools.count(1)


class FakeBroker:
    """In-process broker state plus the faults to inject."""

    def __init__(self) -> None:
        self.state = BrokerState()
        self.queues: dict[str, Any] = {}
        self.fail_connects = 0
        self.down_hosts: set[str] = set()
        self.refuse_login = False
        self.connects: list[str] = []
        self.failures: dict[str, collections.deque[BaseException]] = collections.defaultdict(
            collections.deque)
        self.consumers: dict[str, tuple[str, Callable[[str], None] | None, Any]] = {}
        self.calls: list[str] = []
        self.generation = 0
        self.prefix = f"fake{next(_broker_ids)}"
        self.channels: list[FakeChannel] = []
        self.channel_closes = 0
        #: When set, every connect waits until the event is set (a slow broker).
        self.connect_gate: threading.Event | None = None
        self.open_connections = 0
        #: Queues declared as streams, and how many messages each holds: as
        #: RabbitMQ, reading a stream removes nothing and its declare-ok
        #: counts every message and no consumer.
        self.streams: collections.Counter[str] = collections.Counter()

    def fail_next(self, operation: str, error: BaseException, times: int = 1) -> None:
        """Make the next ``times`` calls of ``operation`` (``queue.declare``...) raise ``error``.

        ``channel.open`` makes opening a channel fail (not recorded in ``calls``).
        """
        for _ in range(times):
            self.failures[operation].append(error)

    def drop_connections(self) -> None:
        """Every live connection fails on its next read or write."""
        self.generation += 1

    def cancel_consumers(self, queue: str, delete: bool = True) -> int:
        """Send basic.cancel to the consumers of ``queue`` (and delete it, like RabbitMQ)."""
        cancelled = 0
        for tag, (q, on_cancel, channel) in list(self.consumers.items()):
            if q != queue:
                continue
            del self.consumers[tag]
            kombu_memory.Channel.basic_cancel(channel, tag)
            if on_cancel is not None:
                on_cancel(tag)
            cancelled += 1
        if delete:
            self.queues.pop(queue, None)
            self.state.queue_bindings_delete(queue)
        return cancelled

    def close_channels(self, reply_code: int = 406, reply_text: str = "PRECONDITION_FAILED - "
                       "delivery acknowledgement on channel 1 timed out", method: str | None = None) -> int:
        """Close every open channel and keep the connections, like RabbitMQ's ``channel.close``.

        The close reaches the connection on its next read (or the channel's
        next operation) as py-amqp's error, after the channel's
        ``on_broker_close`` was told; the channel's consumers are gone.
        ``method`` is the AMQP method the broker blames (``basic.publish``),
        None for none (a timeout). Returns how many channels were closed.
        """
        closed = 0
        for channel in list(self.channels):
            if channel.broker_closed is None and not channel.closed:
                error = amqp.exceptions.error_for_code(
                    reply_code, reply_text, method_sig(method) if method else (0, 0),
                    amqp.exceptions.ChannelError)
                channel.broker_closed = error
                self.lose_consumers_of(channel)
                closed += 1
        self.channel_closes += closed
        return closed

    def _forget_consumers(self, match: Callable[[str, Any], bool]) -> int:
        """Drop the consumers for which ``match(queue, channel)`` holds, telling
        no one; returns how many."""
        lost = 0
        for tag, (queue, _, channel) in list(self.consumers.items()):
            if match(queue, channel):
                del self.consumers[tag]
                kombu_memory.Channel.basic_cancel(channel, tag)
                lost += 1
        return lost

    def lose_consumers(self, queue: str) -> int:
        """Forget the consumers of ``queue`` without telling them, the queue kept:
        their channels still list them and nothing reaches them."""
        return self._forget_consumers(lambda q, _channel: q == queue)

    def lose_consumers_of(self, channel: Any) -> int:
        """Forget the consumers of one ``channel`` without telling it, every
        queue and every other consumer kept: the queue still counts the
        others, and nothing reaches this one."""
        return self._forget_consumers(lambda _queue, owner: owner is channel)

    def delete_queue_silently(self, queue: str) -> None:
        """Delete ``queue`` and forget its consumers without telling them (a lost basic.cancel)."""
        self._forget_consumers(lambda q, _channel: q == queue)
        self.queues.pop(queue, None)
        self.state.queue_bindings_delete(queue)

    def _check(self, operation: str) -> None:
        self.calls.append(operation)
        pending = self.failures.get(operation)
        if pending:
            error = pending.popleft()
            if isinstance(error, amqp.exceptions.AMQPError) and not getattr(error, "method_sig", None):
                # RabbitMQ names the method it refuses, as py-amqp reports it.
                error.method_sig = method_sig(operation)
            raise error


def not_found(text: str = "NOT_FOUND - home node of queue is down") -> amqp.exceptions.NotFound:
    return amqp.exceptions.NotFound(text, reply_code=404)


def precondition_failed(text: str = "PRECONDITION_FAILED - inequivalent arg") -> BaseException:
    return amqp.exceptions.PreconditionFailed(text, reply_code=406)


def feature_denied(feature: str = "transient_nonexcl_queues") -> BaseException:
    """RabbitMQ 4's connection.close for a deprecated feature its configuration denies."""
    return amqp.exceptions.InternalError(
        f"INTERNAL_ERROR - Feature `{feature}` is deprecated.\nIts use is not permitted per "
        "the configuration (overriding the default, which is permitted):\n    "
        f'"deprecated_features.permit.{feature} = false"', reply_code=541,
        method_sig=(50, 10))


def internal_error(text: str = "INTERNAL_ERROR") -> BaseException:
    """A 541 that is not a denied feature: a node in trouble, retried."""
    return amqp.exceptions.InternalError(text, reply_code=541, method_sig=(50, 10))


class FakeChannel(MemoryChannel):
    """A memory channel that consults its :class:`FakeBroker` before each operation."""

    #: Set by :meth:`FakeBroker.close_channels`: the error the next read raises.
    broker_closed: BaseException | None = None
    _close_delivered = False
    on_broker_close: Callable[[Any, Any], None] | None = None

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        self.fake_broker: FakeBroker = connection.fake_broker
        failures = self.fake_broker.failures.get("channel.open")
        if failures:  # fail_next("channel.open", ...): opening a channel fails
            raise failures.popleft()
        self._generation = self.fake_broker.generation
        super().__init__(connection, **kwargs)
        self.fake_broker.channels.append(self)

    def deliver_close(self) -> None:
        """Raise the broker's close, once, after telling ``on_broker_close`` (a read saw it)."""
        error = self.broker_closed
        if error is None or self._close_delivered:
            return
        self._close_delivered = True
        # Like RabbitMQ: unacknowledged deliveries go back to their queues.
        if self._qos is not None:
            self._qos.restore_unacked()
        self.close()
        listener = self.on_broker_close
        if listener is not None:
            listener(self, close_of(error))
        raise error

    def close(self) -> None:
        if self in self.fake_broker.channels:
            self.fake_broker.channels.remove(self)
        super().close()

    @property
    def queues(self) -> dict[str, Any]:
        return self.fake_broker.queues

    @queues.setter
    def queues(self, value: dict[str, Any]) -> None:
        """kombu resets its class-level table here; the broker keeps its own."""

    def _alive(self, operation: str) -> None:
        if self._generation != self.fake_broker.generation:
            raise ConnectionResetError(f"fake broker dropped the connection ({operation})")
        self.deliver_close()
        self.fake_broker._check(operation)

    def exchange_declare(self, *args: Any, **kwargs: Any) -> Any:
        self._alive("exchange.declare")
        return super().exchange_declare(*args, **kwargs)

    def queue_declare(self, *args: Any, **kwargs: Any) -> Any:
        self._alive("queue.declare")
        if kwargs.get("passive") and kwargs.get("queue") not in self.fake_broker.queues:
            raise not_found(f"NOT_FOUND - no queue '{kwargs.get('queue')}'")
        if not kwargs.get("queue"):
            kwargs["queue"] = f"amq.gen-{self.fake_broker.prefix}-{len(self.fake_broker.calls)}"
        ok = super().queue_declare(*args, **kwargs)
        if (kwargs.get("arguments") or {}).get("x-queue-type") == "stream":
            self.fake_broker.streams.setdefault(ok.queue, 0)
        if ok.queue in self.fake_broker.streams:
            return ok._replace(message_count=self.fake_broker.streams[ok.queue], consumer_count=0)
        # kombu's memory transport counts no consumers; this broker does, as RabbitMQ.
        consumers = sum(1 for q, _, _ in self.fake_broker.consumers.values() if q == ok.queue)
        return ok._replace(consumer_count=consumers)

    def queue_delete(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        """As RabbitMQ: the queue goes with its consumers, those of lost connections too."""
        self._alive("queue.delete")
        self.fake_broker._forget_consumers(lambda q, _channel: q == queue)
        result = super().queue_delete(queue, *args, **kwargs)
        # kombu deletes through the queue's bindings; a queue bound to none
        # (a reply queue) would keep its messages.
        self.fake_broker.queues.pop(queue, None)
        return result

    def queue_bind(self, *args: Any, **kwargs: Any) -> Any:
        self._alive("queue.bind")
        return super().queue_bind(*args, **kwargs)

    def basic_qos(self, *args: Any, **kwargs: Any) -> Any:
        self._alive("basic.qos")
        return super().basic_qos(*args, **kwargs)

    def basic_consume(self, queue: str, no_ack: bool, callback: Any, consumer_tag: str,
                      on_cancel: Callable[[str], None] | None = None, **kwargs: Any) -> Any:
        self._alive("basic.consume")
        if queue not in self.fake_broker.queues:
            raise not_found(f"NOT_FOUND - no queue '{queue}'")
        self.fake_broker.consumers[consumer_tag] = (queue, on_cancel, self)
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def basic_publish(self, message: Any, exchange: str, routing_key: str, **kwargs: Any) -> Any:
        self._alive("basic.publish")
        return super().basic_publish(message, exchange, routing_key, **kwargs)

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        if queue in self.fake_broker.streams:
            self.fake_broker.streams[queue] += 1
        super()._put(queue, message, **kwargs)


class FakeLink(MemoryLink):
    """The fake broker's link: the memory link plus what the fake adds."""

    #: Consumers hear of a cancel (see :meth:`FakeBroker.cancel_consumers`).
    notifies_cancel = True
    #: queue.declare-ok counts a queue's consumers (see FakeChannel.queue_declare).
    counts_consumers = True


class FakeTransport(kombu_memory.Transport):
    """Memory transport whose broker fails on demand; see :class:`FakeBroker`."""

    Channel = FakeChannel
    polling_interval = 0.01
    link_class = FakeLink

    def __init__(self, client: Any, **kwargs: Any) -> None:
        self.fake_broker: FakeBroker = client.transport_options["fake_broker"]
        super().__init__(client, **kwargs)
        self.state = self.fake_broker.state
        self._generation = self.fake_broker.generation

    def establish_connection(self) -> Any:
        broker = self.fake_broker
        client: Any = self.client
        where = f"{client.hostname}:{client.port}"
        broker.connects.append(where)
        if broker.connect_gate is not None:
            broker.connect_gate.wait(30)
        if where in broker.down_hosts:
            raise ConnectionRefusedError(f"fake broker: {where} is down")
        if broker.fail_connects > 0:
            broker.fail_connects -= 1
            raise ConnectionRefusedError("fake broker: connection refused")
        if broker.refuse_login:
            raise amqp.exceptions.AccessRefused("ACCESS_REFUSED - Login was refused", reply_code=403)
        self._generation = broker.generation
        connection = super().establish_connection()
        broker.open_connections += 1
        return connection

    def close_connection(self, connection: Any) -> None:
        self.fake_broker.open_connections -= 1
        super().close_connection(connection)

    def drain_events(self, connection: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        if self._generation != self.fake_broker.generation:
            raise ConnectionResetError("fake broker dropped the connection")
        for channel in list(self.fake_broker.channels):
            if channel.broker_closed is not None and channel in getattr(connection, "channels", ()):
                channel.deliver_close()
        return super().drain_events(connection, timeout=timeout, **kwargs)

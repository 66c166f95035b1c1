"""A fake broker that fails on demand, for tests of code built on this library.

How it works: :class:`FakeTransport` is kombu's in-process memory transport
with a :class:`FakeBroker` behind it. The broker refuses connects
(``fail_connects``, ``down_hosts``, ``refuse_login``), makes the next call of an
AMQP operation fail with a given error (:meth:`FakeBroker.fail_next`), drops
live connections (:meth:`FakeBroker.drop_connections`), returns unroutable
mandatory messages, and cancels consumers the way RabbitMQ does when a queue
is deleted (:meth:`FakeBroker.cancel_consumers`).

Use it by handing the transport and the broker to a connection::

    broker = FakeBroker()
    conn = Connection(settings, transport=FakeTransport,
                      transport_options={"fake_broker": broker})
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable
from typing import Any

import amqp.exceptions
from kombu.transport import memory as kombu_memory
from kombu.transport.virtual import BrokerState

from rabbit_ha_driver.connection.channel import method_sig
from rabbit_ha_driver.connection.transport import MemoryChannel

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

    def fail_next(self, operation: str, error: BaseException, times: int = 1) -> None:
        """Make the next ``times`` calls of ``operation`` (``queue.declare``...) raise ``error``."""
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

    def delete_queue_silently(self, queue: str) -> None:
        """Delete ``queue`` and forget its consumers without telling them (a lost basic.cancel)."""
        for tag, (q, _, channel) in list(self.consumers.items()):
            if q == queue:
                del self.consumers[tag]
                kombu_memory.Channel.basic_cancel(channel, tag)
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


class FakeChannel(MemoryChannel):
    """A memory channel that consults its :class:`FakeBroker` before each operation."""

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        self.fake_broker: FakeBroker = connection.fake_broker
        self._generation = self.fake_broker.generation
        super().__init__(connection, **kwargs)

    @property
    def queues(self) -> dict[str, Any]:
        return self.fake_broker.queues

    @queues.setter
    def queues(self, value: dict[str, Any]) -> None:
        """kombu resets its class-level table here; the broker keeps its own."""

    def _alive(self, operation: str) -> None:
        if self._generation != self.fake_broker.generation:
            raise ConnectionResetError(f"fake broker dropped the connection ({operation})")
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
        return super().queue_declare(*args, **kwargs)

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


class FakeTransport(kombu_memory.Transport):
    """Memory transport whose broker fails on demand; see :class:`FakeBroker`."""

    Channel = FakeChannel
    polling_interval = 0.01

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
        if where in broker.down_hosts:
            raise ConnectionRefusedError(f"fake broker: {where} is down")
        if broker.fail_connects > 0:
            broker.fail_connects -= 1
            raise ConnectionRefusedError("fake broker: connection refused")
        if broker.refuse_login:
            raise amqp.exceptions.AccessRefused("ACCESS_REFUSED - Login was refused", reply_code=403)
        self._generation = broker.generation
        return super().establish_connection()

    def drain_events(self, connection: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        if self._generation != self.fake_broker.generation:
            raise ConnectionResetError("fake broker dropped the connection")
        return super().drain_events(connection, timeout=timeout, **kwargs)

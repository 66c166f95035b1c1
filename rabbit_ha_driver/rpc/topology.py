"""What the RPC layer declares: exchanges and queues as frozen values.

How this works. Every exchange and queue the RPC layer uses is built here
from the settings, as an :class:`ExchangeSpec` or a :class:`QueueSpec` (a
queue together with the binding that feeds it and the arguments of its
consumer): the names come from :mod:`rabbit_ha_driver.rpc.naming`, the type,
durability and arguments from :mod:`rabbit_ha_driver.rpc.queue_types`, so a
queue is declared exactly as oslo.messaging declares it. The values are
frozen and hashable: a publisher keeps the set of those it has declared on
its connection.

A spec declares itself through the :class:`~rabbit_ha_driver.connection.Connection`
topology API (``declare``, ``bind``, ``setup``, ``consume``); the connection
records each declaration and replays it after a reconnect (its own record,
:mod:`rabbit_ha_driver.connection._topology`, also knows server-made names and
consumer callbacks, which a spec does not). A queue on the default exchange
``""`` (a reply queue) has no binding: that exchange routes by queue name.
A stream queue's consumer remembers the offset after each delivery, so after
a reconnect it reads on from there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rabbit_ha_driver.rpc import naming, queue_types
from rabbit_ha_driver.settings import Settings

if TYPE_CHECKING:
    from rabbit_ha_driver.connection import Connection, Deadline


@dataclasses.dataclass(frozen=True)
class ExchangeSpec:
    """An exchange to declare before using it."""

    name: str
    type: str = "topic"
    durable: bool = False
    auto_delete: bool = False

    def declare(self, conn: Connection, deadline: Deadline | None = None) -> None:
        """Declare the exchange on ``conn`` (recorded there for recovery)."""
        conn.declare_exchange(self.name, self.type, durable=self.durable,
                              auto_delete=self.auto_delete, deadline=deadline)


@dataclasses.dataclass(frozen=True)
class QueueSpec:
    """A queue and the binding that feeds it (see :mod:`~rabbit_ha_driver.rpc.queue_types`)."""

    name: str
    exchange: str
    routing_key: str
    durable: bool = False
    arguments: tuple[tuple[str, Any], ...] = ()
    auto_delete: bool = False
    #: Arguments of its consumer (a stream's ``x-stream-offset``).
    consumer_arguments: tuple[tuple[str, Any], ...] = ()

    @property
    def is_stream(self) -> bool:
        """Whether its consumer reads a stream from an offset."""
        return any(key == queue_types.STREAM_OFFSET for key, _ in self.consumer_arguments)

    def declare(self, conn: Connection, deadline: Deadline | None = None) -> None:
        """Declare the queue alone on ``conn`` (never server-named: it has its name)."""
        conn.declare_queue(self.name, durable=self.durable, auto_delete=self.auto_delete,
                           arguments=dict(self.arguments) or None, deadline=deadline)

    def bind(self, conn: Connection, deadline: Deadline | None = None) -> None:
        """Bind the queue to its exchange (nothing to do on the default exchange)."""
        if self.exchange:
            conn.bind(self.name, self.exchange, self.routing_key, deadline=deadline)

    def setup(self, conn: Connection, deadline: Deadline | None = None) -> None:
        """Declare the queue and bind it: what a publisher does before sending to it."""
        self.declare(conn, deadline)
        self.bind(conn, deadline)

    def consume(self, conn: Connection, callback: Callable[[Any], None],
                deadline: Deadline | None = None) -> str:
        """Consume the queue on ``conn`` with its consumer arguments; returns the tag.

        A stream consumer is told, after each delivery, to resume after it
        when the connection re-creates it (a reconnect, a consumer cancel).
        """
        arguments = dict(self.consumer_arguments) or None
        if not self.is_stream:
            return conn.consume(self.name, callback, deadline=deadline, arguments=arguments)
        tag: list[str] = []

        def on_stream(raw: Any) -> None:
            resume_at = queue_types.stream_offset_after(raw.headers)
            if resume_at is not None and tag:
                conn.set_consumer_argument(tag[0], queue_types.STREAM_OFFSET, resume_at)
            callback(raw)

        tag.append(conn.consume(self.name, on_stream, deadline=deadline, arguments=arguments))
        return tag[0]


# -- the declarations oslo.messaging makes ---------------------------------------


def topic_exchange(settings: Settings, name: str) -> ExchangeSpec:
    """The control exchange ``name``: calls, casts and notifications go through it."""
    return ExchangeSpec(name, "topic", durable=queue_types.topic_durable(settings),
                        auto_delete=settings.amqp_auto_delete)


def fanout_exchange(settings: Settings, topic: str) -> ExchangeSpec:
    """The topic's fanout exchange (deleted by the broker with its last queue)."""
    return ExchangeSpec(naming.fanout_exchange_name(topic), "fanout",
                        durable=queue_types.transient_durable(settings), auto_delete=True)


def topic_queue(settings: Settings, exchange: str, routing_key: str,
                name: str | None = None) -> QueueSpec:
    """A topic, server or notification queue (named after its key by default)."""
    return QueueSpec(name or routing_key, exchange, routing_key,
                     durable=queue_types.topic_durable(settings),
                     arguments=queue_types.topic_queue_arguments(settings),
                     auto_delete=settings.amqp_auto_delete)


def fanout_queue(settings: Settings, topic: str) -> QueueSpec:
    """This server's queue on the topic's fanout exchange (the topic's stream, shared)."""
    exchange = naming.fanout_exchange_name(topic)
    if settings.rabbit_stream_fanout:
        return QueueSpec(exchange, exchange, topic, durable=True,
                         arguments=queue_types.stream_arguments(settings),
                         consumer_arguments=((queue_types.STREAM_OFFSET,
                                              queue_types.STREAM_START),))
    return QueueSpec(naming.fanout_queue_name(settings, topic), exchange, topic,
                     durable=queue_types.transient_durable(settings),
                     arguments=queue_types.transient_queue_arguments(settings))


def reply_queue(settings: Settings, name: str | None = None) -> QueueSpec:
    """A transport's reply queue (a new name unless ``name``), on the default exchange."""
    name = name or naming.reply_queue_name(settings)
    return QueueSpec(name, "", name, durable=queue_types.transient_durable(settings),
                     arguments=queue_types.transient_queue_arguments(settings),
                     auto_delete=False)

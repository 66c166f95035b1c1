"""Topology as data: what was declared, so it can be declared again.

How it works: every QoS setting, exchange, queue, binding and consumer made
through a connection is recorded here. After a reconnect (or a reopened
channel) :meth:`Topology.replay` declares them again in that order: QoS first,
because it only applies to consumers created after it. A queue declared with
an empty name gets a fresh server-made name on every replay; its record keeps
the key the caller first saw and maps it to the current name, so bindings and
consumers follow the new name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True)
class ExchangeDecl:
    name: str
    type: str = "topic"
    durable: bool = False
    auto_delete: bool = False
    arguments: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass
class QueueDecl:
    key: str
    name: str
    durable: bool = False
    auto_delete: bool = False
    exclusive: bool = False
    arguments: dict[str, Any] = dataclasses.field(default_factory=dict)
    server_named: bool = False


@dataclasses.dataclass(frozen=True)
class BindingDecl:
    queue_key: str
    exchange: str
    routing_key: str


@dataclasses.dataclass
class ConsumerDecl:
    tag: str
    queue_key: str
    callback: Callable[[Any], None]
    no_ack: bool = False
    arguments: dict[str, Any] = dataclasses.field(default_factory=dict)


class Declarer(Protocol):
    """What replay needs of a channel, one synchronous request per call."""

    def qos(self, prefetch_count: int) -> None: ...
    def exchange(self, decl: ExchangeDecl) -> None: ...
    def queue(self, decl: QueueDecl) -> str: ...
    def bind(self, queue: str, decl: BindingDecl) -> None: ...
    def consume(self, queue: str, decl: ConsumerDecl) -> None: ...


class Topology:
    """Ordered record of declarations; not thread-safe (the connection locks)."""

    def __init__(self) -> None:
        self.prefetch_count: int | None = None
        self.exchanges: dict[str, ExchangeDecl] = {}
        self.queues: dict[str, QueueDecl] = {}
        self.bindings: list[BindingDecl] = []
        self.consumers: dict[str, ConsumerDecl] = {}

    def add_exchange(self, decl: ExchangeDecl) -> None:
        self.exchanges[decl.name] = decl

    def add_queue(self, decl: QueueDecl) -> None:
        self.queues[decl.key] = decl

    def add_binding(self, decl: BindingDecl) -> None:
        if decl not in self.bindings:
            self.bindings.append(decl)

    def add_consumer(self, decl: ConsumerDecl) -> None:
        self.consumers[decl.tag] = decl

    def remove_consumer(self, tag: str) -> ConsumerDecl | None:
        return self.consumers.pop(tag, None)

    def remove_queue(self, key: str) -> None:
        self.queues.pop(key, None)
        self.bindings = [b for b in self.bindings if b.queue_key != key]
        for tag in [t for t, c in self.consumers.items() if c.queue_key == key]:
            del self.consumers[tag]

    def queue_name(self, key: str) -> str:
        """The current name of the queue first declared as ``key``."""
        decl = self.queues.get(key)
        return decl.name if decl else key

    def key_for(self, name: str) -> str:
        """The record key of the queue now called ``name``."""
        for key, decl in self.queues.items():
            if decl.name == name:
                return key
        return name

    def consumers_of(self, queue_key: str) -> list[ConsumerDecl]:
        return [c for c in self.consumers.values() if c.queue_key == queue_key]

    def is_stream(self, queue_key: str) -> bool:
        """Whether the queue is a stream: declared as one, or consumed from an offset."""
        queue = self.queues.get(queue_key)
        if queue is not None and queue.arguments.get("x-queue-type") == "stream":
            return True
        return any("x-stream-offset" in c.arguments for c in self.consumers_of(queue_key))

    def single_active(self, queue_key: str) -> bool:
        """Whether the queue delivers to one of its consumers only (the others wait)."""
        queue = self.queues.get(queue_key)
        return queue is not None and bool(queue.arguments.get("x-single-active-consumer"))

    def replay(self, declarer: Declarer) -> None:
        """Declare everything again, in dependency order."""
        if self.prefetch_count is not None:
            declarer.qos(self.prefetch_count)
        for exchange in self.exchanges.values():
            declarer.exchange(exchange)
        for queue in self.queues.values():
            queue.name = declarer.queue(queue)
        for binding in self.bindings:
            declarer.bind(self.queue_name(binding.queue_key), binding)
        for consumer in self.consumers.values():
            declarer.consume(self.queue_name(consumer.queue_key), consumer)

    def replay_queue(self, declarer: Declarer, key: str) -> None:
        """Declare one queue, its bindings and its consumers again (after a cancel)."""
        queue = self.queues.get(key)
        if queue is not None:
            queue.name = declarer.queue(queue)
        for binding in self.bindings:
            if binding.queue_key == key:
                declarer.bind(self.queue_name(key), binding)
        for consumer in self.consumers_of(key):
            declarer.consume(self.queue_name(key), consumer)

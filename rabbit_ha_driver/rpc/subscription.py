"""A listener's declarations and consumers, as steps run once each, in order.

How this works. :class:`Subscription` turns a listener's exchanges and queues
into a list of steps: QoS, each exchange, each queue and its bindings, then a
consumer per queue. :meth:`Subscription.run` carries out the steps left before
a deadline and keeps its place when the deadline passes, so a listener that
could not reach a broker goes on subscribing from its poll loop where it
stopped. The connection records what was declared and replays it after a
reconnect; a step is never run twice here.

A stream queue's consumer remembers the offset after each delivery, so after a
reconnect it reads on from there (see :mod:`rabbit_ha_driver.rpc.queue_types`).
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import Connection, Deadline
from rabbit_ha_driver.rpc import queue_types
from rabbit_ha_driver.rpc.envelope import ExchangeSpec, QueueSpec

# These lines are the listener's: operators and tests filter on its logger.
LOG = logging.getLogger("rabbit_ha_driver.rpc.listener")

Step = Callable[[Deadline], None]


class Subscription:
    """What a listener declares and consumes; see the module docstring."""

    def __init__(self, connection: Connection, exchanges: Sequence[ExchangeSpec],
                 queues: Sequence[QueueSpec], on_delivery: Callable[[Any], None], *,
                 prefetch_size: int, owner: object) -> None:
        self._conn = connection
        self._on_delivery = on_delivery
        self._owner = owner
        #: Consumer tags, in the order the consumers started.
        self.tags: list[str] = []
        self._steps = self._plan(list(exchanges), list(queues), prefetch_size)

    @property
    def done(self) -> bool:
        return not self._steps

    def _plan(self, exchanges: list[ExchangeSpec], queues: list[QueueSpec],
              prefetch_size: int) -> collections.deque[Step]:
        """Every declaration and consumer, in order, as steps to run once each."""
        conn = self._conn
        steps: collections.deque[Step] = collections.deque()
        consumer_arguments = {q.name: q.consumer_arguments for q in queues
                              if q.consumer_arguments}

        def qos(dl: Deadline) -> None:
            conn.set_qos(prefetch_size, deadline=dl)

        def exchange(ex: ExchangeSpec, dl: Deadline) -> None:
            conn.declare_exchange(ex.name, ex.type, durable=ex.durable,
                                  auto_delete=ex.auto_delete, deadline=dl)

        def queue(q: QueueSpec, dl: Deadline) -> None:
            conn.declare_queue(q.name, durable=q.durable, auto_delete=q.auto_delete,
                               arguments=dict(q.arguments) or None, deadline=dl)

        def bind(q: QueueSpec, dl: Deadline) -> None:
            conn.bind(q.name, q.exchange, q.routing_key, deadline=dl)

        def consume(name: str, dl: Deadline) -> None:
            arguments = dict(consumer_arguments.get(name, ()))
            if queue_types.STREAM_OFFSET not in arguments:
                self.tags.append(conn.consume(name, self._on_delivery, deadline=dl,
                                              arguments=arguments or None))
                return
            tag: list[str] = []

            def on_stream(raw: Any) -> None:
                # A stream: after a reconnect, go on after this delivery.
                resume_at = queue_types.stream_offset_after(raw.headers)
                if resume_at is not None and tag:
                    conn.set_consumer_argument(tag[0], queue_types.STREAM_OFFSET, resume_at)
                self._on_delivery(raw)

            tag.append(conn.consume(name, on_stream, deadline=dl, arguments=arguments))
            self.tags.append(tag[0])

        if prefetch_size:
            steps.append(qos)
        steps.extend(functools.partial(exchange, ex) for ex in exchanges)
        names: list[str] = []
        for q in queues:
            if q.name not in names:
                names.append(q.name)
                steps.append(functools.partial(queue, q))
            steps.append(functools.partial(bind, q))
        steps.extend(functools.partial(consume, name) for name in names)
        return steps

    def run(self, deadline: Deadline) -> bool:
        """Run the steps left before ``deadline``; True once all are done.

        Raises IrrecoverableError (a refusal retrying cannot mend, e.g.
        inequivalent queue arguments); the failed step is tried again next time.
        """
        while self._steps:
            try:
                self._steps[0](deadline)
            except exc.MessagingTimeout as error:
                LOG.debug("%r: subscribing not finished: %s", self._owner, error)
                return False
            self._steps.popleft()
        return True

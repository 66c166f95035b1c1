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
from rabbit_ha_driver.rpc.topology import ExchangeSpec, QueueSpec

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
        """Every declaration and consumer, in order, as steps to run once each.

        A queue fed by several bindings (several specs of one name) is
        declared and consumed once, with the consumer arguments one of them
        names (a stream's offset)."""
        conn = self._conn
        steps: collections.deque[Step] = collections.deque()

        def qos(dl: Deadline) -> None:
            conn.set_qos(prefetch_size, deadline=dl)

        def consume(q: QueueSpec, dl: Deadline) -> None:
            self.tags.append(q.consume(conn, self._on_delivery, dl))

        if prefetch_size:
            steps.append(qos)
        steps.extend(functools.partial(ex.declare, conn) for ex in exchanges)
        consumed: dict[str, QueueSpec] = {}
        for q in queues:
            if q.name not in consumed:
                consumed[q.name] = q
                steps.append(functools.partial(q.declare, conn))
            elif q.consumer_arguments and not consumed[q.name].consumer_arguments:
                consumed[q.name] = q
            steps.append(functools.partial(q.bind, conn))
        steps.extend(functools.partial(consume, q) for q in consumed.values())
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

"""Notifications: a notifier, and a server that hands them to endpoints.

How this works. A :class:`Notifier` publishes each notification to the topic
exchange (oslo.messaging's ``control_exchange``, ``openstack`` by default)
with routing key ``<topic>.<priority>`` for each of its topics, as
oslo.messaging's ``messagingv2`` driver does. Like that driver it first
declares a queue named after the routing key and binds it, so notifications
sent before any listener started are kept for it; that also makes every
publish routable, so confirms and the mandatory flag mean "stored". A send
that cannot be confirmed before the notifier's timeout is logged and
reported by the return value, never raised: a service must not fail its own
work because the notification bus is down (oslo.messaging's rule too).

The caller's context travels only as its ``redacted_copy()`` (a plain dict
context is dropped), as oslo.messaging does since it stopped leaking tokens.

A :class:`NotificationServer` consumes ``<topic>.<priority>`` for every
priority some endpoint has a method for (``info``, ``warn``, ``error``...),
from the queue of that name, or from one queue named ``pool`` for all of
them (listeners of one pool share the work). The method is called as
``endpoint.<priority>(ctxt, publisher_id, event_type, payload, metadata)``;
returning :data:`REQUEUE` (or raising, when ``allow_requeue`` is set) gives
the notification back to the queue, anything else acknowledges it after it
was handled (at least once).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.rpc import envelope
from rabbit_ha_driver.rpc.envelope import PRIORITIES
from rabbit_ha_driver.rpc.executors import Executor
from rabbit_ha_driver.rpc.listener import (
    IncomingMessage,
    NotificationIncomingMessage,
    PollListener,
    notification_listener,
)
from rabbit_ha_driver.rpc.publisher import Publisher
from rabbit_ha_driver.rpc.server import MessageHandlingServer
from rabbit_ha_driver.rpc.transport import RPCTransport, as_transport
from rabbit_ha_driver.settings import Settings

LOG = logging.getLogger(__name__)

HANDLED = "handled"
REQUEUE = "requeue"

DEFAULT_TOPICS = ("notifications",)


class Notifier:
    """Sends notifications; safe to share between (green) threads.

    ``timeout`` bounds each send, broker confirm included (default
    ``publish_timeout``).
    """

    def __init__(
        self,
        transport_or_settings: RPCTransport | Settings,
        publisher_id: str,
        *,
        topics: Sequence[str] = DEFAULT_TOPICS,
        exchange: str | None = None,
        timeout: float | None = None,
        **transport_kwargs: Any,
    ) -> None:
        if not topics:
            raise ValueError("a notifier needs at least one topic")
        self.transport, self._owns_transport = as_transport(transport_or_settings,
                                                            **transport_kwargs)
        self.publisher_id = publisher_id
        self.topics = tuple(topics)
        self.exchange = exchange or self.transport.exchange
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<Notifier {self.publisher_id} topics={','.join(self.topics)}>"

    def prepare(self, publisher_id: str | None = None) -> Notifier:
        """A notifier on the same transport with another publisher id."""
        clone = object.__new__(Notifier)
        clone.__dict__.update(self.__dict__)
        clone._owns_transport = False
        if publisher_id is not None:
            clone.publisher_id = publisher_id
        return clone

    def close(self) -> None:
        if self._owns_transport:
            self.transport.close()

    def notify(self, ctxt: Any, event_type: str, payload: Any, priority: str) -> bool:
        """Send one notification to every topic; True if all were confirmed."""
        settings, clock = self.transport.settings, self.transport.clock
        level = envelope.normalize_priority(priority)
        message = envelope.build_notification(_redacted(ctxt), self.publisher_id,
                                              event_type, level, payload)
        seconds = self.timeout if self.timeout is not None else settings.publish_timeout
        deadline = clock.now() + seconds if seconds and seconds > 0 else math.inf
        try:
            body = envelope.encode(message, settings.rpc_max_message_size,
                                   f"notification {event_type}")
        except exc.InvalidMessage as error:
            LOG.error("notification %s not sent: %s", event_type, error)
            return False
        exchange = envelope.topic_exchange(settings, self.exchange)
        ok = True
        for topic in self.topics:
            key = f"{topic}.{level}"
            queue = envelope.topic_queue(settings, self.exchange, key)
            try:
                self.transport.publisher.publish(
                    body, exchange, key, deadline=deadline, declare=(queue,),
                    what=f"notification {event_type} to {key}",
                    persistent=envelope.durable(settings))
            except exc.RabbitHAError as error:
                ok = False
                LOG.error("could not send notification %s to %s: %s", event_type, key, error)
        return ok

    def audit(self, ctxt: Any, event_type: str, payload: Any) -> bool:
        return self.notify(ctxt, event_type, payload, "audit")

    def debug(self, ctxt: Any, event_type: str, payload: Any) -> bool:
        return self.notify(ctxt, event_type, payload, "debug")

    def info(self, ctxt: Any, event_type: str, payload: Any) -> bool:
        return self.notify(ctxt, event_type, payload, "info")

    def warn(self, ctxt: Any, event_type: str, payload: Any) -> bool:
        return self.notify(ctxt, event_type, payload, "warn")

    warning = warn

    def error(self, ctxt: Any, event_type: str, payload: Any) -> bool:
        return self.notify(ctxt, event_type, payload, "error")

    def critical(self, ctxt: Any, event_type: str, payload: Any) -> bool:
        return self.notify(ctxt, event_type, payload, "critical")

    def sample(self, ctxt: Any, event_type: str, payload: Any) -> bool:
        return self.notify(ctxt, event_type, payload, "sample")


def _redacted(ctxt: Any) -> dict[str, Any]:
    """The context a notification may carry, by oslo.messaging's rule.

    Notifications are read by many consumers, so credentials must not travel
    in them: a context object is sent as its ``redacted_copy()``, and a plain
    dict (or None) not at all, since nothing says which keys are secret.
    """
    if ctxt is None or isinstance(ctxt, dict):
        return {}
    redact = getattr(ctxt, "redacted_copy", None)
    if not callable(redact):
        LOG.warning("context %s has no redacted_copy(); notification sent without it",
                    type(ctxt).__name__)
        return {}
    return envelope.context_dict(redact())


def _priorities(endpoints: Sequence[object]) -> list[str]:
    return [p for p in PRIORITIES if any(callable(getattr(e, p, None)) for e in endpoints)]


class NotificationServer(MessageHandlingServer):
    """Hands notifications of ``topics`` to ``endpoints`` by priority.

    ``topics`` are topic names, or ``(topic, exchange)`` pairs to listen on
    another exchange than the default.
    """

    def __init__(
        self,
        settings: Settings,
        topics: Iterable[str | tuple[str, str | None]],
        endpoints: Sequence[object],
        executor: str | Executor = "threading",
        max_workers: int = 64,
        *,
        pool: str | None = None,
        allow_requeue: bool = False,
        **kwargs: Any,
    ) -> None:
        self.targets = [(t, None) if isinstance(t, str) else (t[0], t[1]) for t in topics]
        if not self.targets:
            raise ValueError("a notification server needs at least one topic")
        self.endpoints = list(endpoints)
        self.priorities = _priorities(self.endpoints)
        if not self.priorities:
            raise ValueError("no endpoint has a method named after a priority "
                             f"({', '.join(PRIORITIES)})")
        self.pool = pool
        self.allow_requeue = allow_requeue
        name = pool or ",".join(t for t, _ in self.targets)
        super().__init__(settings, f"notify:{name}", executor=executor,
                         max_workers=max_workers, **kwargs)

    def _make_listener(self, publisher: Publisher) -> PollListener:
        wanted = [(topic, exchange, p) for topic, exchange in self.targets
                  for p in self.priorities]
        return notification_listener(self.settings, wanted, connection=self.connection("listen"),
                                     publisher=publisher, pool=self.pool, clock=self._clock)

    def dispatch(self, incoming: NotificationIncomingMessage) -> str:
        """Call every endpoint's method for the priority; REQUEUE or HANDLED."""
        note = incoming.notification
        for endpoint in self.endpoints:
            method = getattr(endpoint, note.priority, None)
            if not callable(method):
                continue
            outcome = method(note.context, note.publisher_id, note.event_type,
                             note.payload, note.metadata)
            if outcome == REQUEUE:
                return REQUEUE
        return HANDLED

    def _handle(self, incoming: IncomingMessage) -> None:
        assert isinstance(incoming, NotificationIncomingMessage)
        try:
            outcome = self.dispatch(incoming)
        except Exception:
            LOG.exception("%r: handling notification %s failed", self,
                          incoming.notification.event_type)
            outcome = REQUEUE
        if outcome == REQUEUE and self.allow_requeue:
            incoming.requeue()
        else:
            incoming.acknowledge()

"""Poll-style listeners: incoming RPC requests and notifications, one by one.

How this works. A :class:`PollListener` owns one connection. It declares its
exchanges, queues and bindings, consumes them (:mod:`.subscription`), and then
only :meth:`PollListener.poll` touches the connection: each call drains it in
short slices, decodes what arrived in the consumer callback and hands out the
messages of :mod:`.incoming`. The shape mirrors oslo.messaging's
``PollStyleListener`` / ``RpcIncomingMessage`` (``poll(timeout, batch_size,
batch_timeout)``, ``stop()``, ``cleanup()``; ``reply()``, ``heartbeat()``,
``acknowledge()``, ``requeue()``), so an oslo.messaging driver can wrap it.

kombu channels are not thread-safe, so a message handled on a worker thread
never touches the connection itself: its ``acknowledge()`` and ``requeue()``
are queued and carried out by the polling thread on its next pass (or by
:meth:`PollListener.cleanup`). Replies and heartbeats go out through a
separate :class:`~rabbit_ha_driver.rpc.client.Publisher`
(:mod:`.reply_sender`).

What differs between the kinds of listener (:class:`~.intake.ListenerKind`)
is its :class:`~.intake.Intake`: RPC requests are acknowledged when
:meth:`~PollListener.poll` hands them out, before they run (at most once, as
oslo.messaging does); a request whose acknowledgement fails (its channel
died) is not handed out: the broker delivers it again. A call whose
``_msg_id`` this listener took lately is not run again: a copy of one still
running is dropped, a copy of one that replied gets the same reply again, from
a bounded cache (:mod:`rabbit_ha_driver.rpc.reply_cache`). Casts and
notifications whose ``_unique_id`` is among the last :data:`DUPLICATE_WINDOW`
this listener took are dropped as duplicates; beyond that window, or on
another listener, a copy runs again (at-least-once). Messages that arrived
but were not handed out when the listener stops are requeued, never lost and
never run.

A message that is not JSON, has a malformed envelope or no method is rejected
without requeue (it would come back forever) and logged with where it came
from; when it still names a caller, the caller gets an
:class:`~rabbit_ha_driver.exceptions.InvalidMessage` failure at once instead of
a timeout.

When the loop itself fails (subscribing refused, draining raised) it logs and
pauses before the next pass, longer while the failures go on
(:data:`POLL_BACKOFF`, :mod:`.failure_streak`); :meth:`PollListener.stop`
ends the pause at once.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.connection import Backoff, Connection, Deadline, State
from rabbit_ha_driver.events import EventBus
from rabbit_ha_driver.rpc import envelope, queue_types
from rabbit_ha_driver.rpc.envelope import ExchangeSpec, QueueSpec
from rabbit_ha_driver.rpc.failure_streak import FailureStreak
from rabbit_ha_driver.rpc.incoming import (
    IncomingMessage,
    NotificationIncomingMessage,
    RpcIncomingMessage,
)
from rabbit_ha_driver.rpc.intake import INTAKES, ListenerKind
from rabbit_ha_driver.rpc.publisher import Publisher
from rabbit_ha_driver.rpc.recent import Recent
from rabbit_ha_driver.rpc.reply_cache import ReplyCache
from rabbit_ha_driver.rpc.reply_sender import (
    GONE_REPLY_QUEUE_TTL,
    REJECTION_REPLY_TIMEOUT,
    ReplySender,
)
from rabbit_ha_driver.rpc.subscription import Subscription
from rabbit_ha_driver.settings import Settings

__all__ = [
    "DRAIN_SLICE",
    "DUPLICATE_WINDOW",
    "GONE_REPLY_QUEUE_TTL",
    "POLL_BACKOFF",
    "REJECTION_REPLY_TIMEOUT",
    "IncomingMessage",
    "ListenerKind",
    "NotificationIncomingMessage",
    "PollListener",
    "RpcIncomingMessage",
    "deletes_fanout_queue",
    "notification_listener",
    "rpc_listener",
]

LOG = logging.getLogger(__name__)

#: Longest single drain of the connection: how soon queued acknowledgements
#: run and how soon :meth:`PollListener.stop` is noticed.
DRAIN_SLICE = 0.1
#: Recent ``_unique_id`` values remembered to drop duplicate requests.
DUPLICATE_WINDOW = 1024
#: Pause after the n-th failure of the polling loop in a row: 0.2 s, then
#: 0.4 s longer each time, at most 5 s; no jitter (one loop, not a fleet).
POLL_BACKOFF = Backoff(interval=2 * DRAIN_SLICE, step=0.4, cap=5.0, jitter=0.0)


def _where(raw: Any) -> str:
    info = getattr(raw, "delivery_info", None) or {}
    return f"exchange {info.get('exchange', '?')!r} routing key {info.get('routing_key', '?')!r}"


class PollListener:
    """Consumes a set of queues on one connection; see the module docstring.

    ``kind`` is a :class:`~.intake.ListenerKind` or its value (``"rpc"``,
    ``"notification"``).
    """

    def __init__(
        self,
        settings: Settings,
        connection: Connection,
        publisher: Publisher,
        *,
        kind: str,
        exchanges: Sequence[ExchangeSpec],
        queues: Sequence[QueueSpec],
        temporary: Iterable[str] = (),
        clock: Clock = REAL_CLOCK,
        prefetch_size: int | None = None,
    ) -> None:
        self.kind = ListenerKind.of(kind)
        self.settings = settings
        self.prefetch_size = (settings.rabbit_qos_prefetch_count
                              if prefetch_size is None else prefetch_size)
        self._conn = connection
        self._clock = clock
        self._queues = list(queues)
        self._temporary = set(temporary)
        self._subscription = Subscription(connection, exchanges, self._queues,
                                          self._on_delivery,
                                          prefetch_size=self.prefetch_size, owner=self)
        self._incoming: collections.deque[IncomingMessage] = collections.deque()
        self._ops: collections.deque[tuple[IncomingMessage, bool | None]] = collections.deque()
        self._seen: Recent[None] = Recent(DUPLICATE_WINDOW)
        #: Replies by request msg_id, to answer a repeated call without running it.
        self.reply_cache = ReplyCache(settings.rpc_reply_cache_size,
                                      settings.rpc_reply_cache_ttl, clock)
        self._replies = ReplySender(settings, publisher, self.reply_cache, clock)
        self._intake = INTAKES[self.kind](self, connection, self._seen, self._replies, clock)
        self._stopping = threading.Event()
        self._shut_down = False
        self._failures = FailureStreak(POLL_BACKOFF)

    def __repr__(self) -> str:
        names = ",".join(q.name for q in self._queues)
        return f"<PollListener {self.kind.value} {names}>"

    @property
    def queues(self) -> list[QueueSpec]:
        return list(self._queues)

    @property
    def events(self) -> EventBus:
        """The bus of this listener's connection (its events and the listener's)."""
        return self._conn.events

    @property
    def subscribed(self) -> bool:
        return self._subscription.done

    def subscribe(self, deadline: float) -> bool:
        """Declare and consume what is left to do before ``deadline``.

        Returns True once everything is in place. Raises IrrecoverableError
        (a refusal retrying cannot mend, e.g. inequivalent queue arguments).
        """
        return self._subscription.run(Deadline(deadline, self._clock))

    # -- polling ---------------------------------------------------------------

    def poll(self, timeout: float | None = None, batch_size: int = 1,
             batch_timeout: float | None = None) -> list[IncomingMessage]:
        """Up to ``batch_size`` messages, waiting up to ``timeout`` seconds.

        With ``batch_timeout``, once one message is in hand, waits up to that
        long for the batch to fill. Returns ``[]`` at once after :meth:`stop`.
        Must be called from one thread at a time.
        """
        deadline = Deadline.after(timeout, self._clock)
        out: list[IncomingMessage] = []
        filling = False  # the batch timeout started with the first message
        while True:
            self._run_ops()
            self._replies.send_refusals()
            if self._stopping.is_set():
                self._shutdown()
                return out
            while self._incoming and len(out) < batch_size:
                incoming = self._incoming.popleft()
                if self._intake.take(incoming):
                    out.append(incoming)
            if len(out) >= batch_size:
                return out
            if out and not filling:
                if not batch_timeout:
                    return out
                deadline = deadline.sooner(batch_timeout)
                filling = True
            left = deadline.remaining()
            if left <= 0:
                return out
            self._drain(min(left, DRAIN_SLICE))

    def has_waiting(self) -> bool:
        """Whether messages were received that :meth:`poll` has not handed out yet."""
        return bool(self._incoming)

    def _failed(self, what: str) -> None:
        """Log a failure of the polling loop and pause, longer when it repeats."""
        now = self._clock.now()
        streak = self._failures = self._failures.failed(now)
        LOG.log(logging.ERROR if streak.attempts == 1 else logging.DEBUG,
                "%r: %s failed (%d in a row over %.1fs); trying again in %.1fs", self, what,
                streak.attempts, streak.seconds(now), streak.pause, exc_info=True)
        # An event, not the clock: stop() ends the pause at once.
        self._stopping.wait(streak.pause)

    def _drain(self, seconds: float) -> None:
        if not self._subscription.done:
            try:
                if not self.subscribe(self._clock.now() + seconds):
                    return
            except exc.IrrecoverableError:
                self._failed("subscribing")
                return
        try:
            self._conn.drain_events(seconds)
            self._failures = self._failures.cleared()
        except Exception:
            self._failed("draining the connection")

    def stop(self) -> None:
        """Stop handing out messages; :meth:`poll` returns soon. Thread-safe."""
        self._stopping.set()

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    def _shutdown(self) -> None:
        """On the polling thread: stop consuming, give back what was not handed out."""
        if self._shut_down:
            return
        self._shut_down = True
        for tag in self._subscription.tags:
            try:
                self._conn.cancel(tag)
            except exc.RabbitHAError as error:
                LOG.debug("%r: cancelling consumer %s: %s", self, tag, error)
        requeued = 0
        while self._incoming:
            incoming = self._incoming.popleft()
            if self._conn.reject(incoming.raw, requeue=True):
                requeued += 1
        if requeued:
            LOG.info("%r: stopping; gave %d messages back to the broker", self, requeued)

    def cleanup(self) -> None:
        """Carry out pending acknowledgements, remove temporary queues, close.

        Call once the polling thread has finished; never hangs.
        """
        self._stopping.set()
        self._shutdown()
        self._run_ops()
        for name in self._temporary if self._conn.state is State.CONNECTED else ():
            try:
                self._conn.delete_queue(name, deadline=Deadline.after(1.0, self._clock))
            except exc.RabbitHAError as error:
                LOG.debug("%r: deleting queue %s: %s (it expires by itself)", self, name, error)
        self._conn.close()

    # -- acknowledgements (called from worker threads) ---------------------------

    def settle(self, incoming: IncomingMessage, requeue: bool | None) -> None:
        """Queue an ack (``requeue=None``) or a reject for the polling thread."""
        self._ops.append((incoming, requeue))

    def _run_ops(self) -> None:
        while self._ops:
            incoming, requeue = self._ops.popleft()
            if requeue is None:
                ok = self._conn.ack(incoming.raw)
                if ok and incoming.unique_id:
                    self._seen.add(incoming.unique_id)
            else:
                ok = self._conn.reject(incoming.raw, requeue=requeue)
            if not ok:
                LOG.warning("%r: could not %s it (its channel is gone); the broker "
                            "delivers it again", incoming,
                            "acknowledge" if requeue is None else "requeue")

    # -- receiving (called in drain_events, on the polling thread) -------------

    def _on_delivery(self, raw: Any) -> None:
        try:
            inner = envelope.decode(
                raw.body, content_type=raw.content_type, content_encoding=raw.content_encoding,
                headers=raw.headers, max_size=self.settings.rpc_max_message_size,
                compression=getattr(raw, "compression", None))
            incoming = self._intake.build(raw, inner)
        except exc.InvalidMessage as error:
            LOG.warning("%r: rejecting message from %s: %s", self, _where(raw), error)
            self._conn.reject(raw, requeue=False)
            self._intake.refused(raw, error)
            return
        if self._intake.is_duplicate(incoming):
            LOG.info("%r: dropping duplicate message %s", self, incoming.unique_id)
            self._conn.ack(raw)
            return
        self._incoming.append(incoming)

    # -- replying (called from worker threads) ------------------------------------

    def send_reply(self, incoming: RpcIncomingMessage, result: Any,
                   failure: str | None) -> None:
        """Send a reply; replaces one that cannot be encoded by a failure."""
        self._replies.send_reply(incoming, result, failure)

    def send_heartbeat(self, incoming: RpcIncomingMessage) -> None:
        """A call-monitor heartbeat; raises Unroutable if the reply queue is gone."""
        self._replies.send_heartbeat(incoming)


# -- building listeners ----------------------------------------------------------


def rpc_listener(
    settings: Settings,
    topic: str,
    server: str,
    *,
    connection: Connection,
    publisher: Publisher,
    exchange: str = envelope.DEFAULT_EXCHANGE,
    clock: Clock = REAL_CLOCK,
) -> PollListener:
    """Requests to ``topic``, to ``topic.server`` and to the topic's fanout."""
    fanout = envelope.fanout_queue(settings, topic)
    return PollListener(
        settings, connection, publisher, kind=ListenerKind.RPC,
        exchanges=[envelope.topic_exchange(settings, exchange),
                   envelope.fanout_exchange(settings, topic)],
        queues=[envelope.topic_queue(settings, exchange, topic),
                envelope.topic_queue(settings, exchange, f"{topic}.{server}"),
                fanout],
        temporary=[fanout.name] if deletes_fanout_queue(settings) else [], clock=clock)


def deletes_fanout_queue(settings: Settings) -> bool:
    """A server deletes its fanout queue on close, as oslo.messaging does; but not
    a stable name (it is taken up again) nor a stream (other servers read it)."""
    return queue_types.deletes_own_queues(settings) and not settings.rabbit_stream_fanout


def notification_listener(
    settings: Settings,
    targets_and_priorities: Iterable[tuple[str, str | None, str]],
    *,
    connection: Connection,
    publisher: Publisher,
    pool: str | None = None,
    clock: Clock = REAL_CLOCK,
) -> PollListener:
    """Notifications by ``(topic, exchange or None, priority)``.

    Each ``topic.priority`` has its own shared queue, unless ``pool`` is
    given: then one queue of that name takes them all (listeners in a pool
    share the work; every pool sees every notification).
    """
    exchanges: dict[str, ExchangeSpec] = {}
    queues: list[QueueSpec] = []
    for topic, exchange, priority in targets_and_priorities:
        name = exchange or envelope.DEFAULT_EXCHANGE
        exchanges.setdefault(name, envelope.topic_exchange(settings, name))
        key = f"{topic}.{envelope.normalize_priority(priority)}"
        queues.append(envelope.topic_queue(settings, name, key, name=pool))
    if not queues:
        raise ValueError("a notification listener needs at least one topic and priority")
    return PollListener(settings, connection, publisher, kind=ListenerKind.NOTIFICATION,
                        exchanges=list(exchanges.values()), queues=queues, clock=clock)

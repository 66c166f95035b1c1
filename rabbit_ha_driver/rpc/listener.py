"""Poll-style listeners: incoming RPC requests and notifications, one by one.

How this works. A :class:`PollListener` owns one connection. It declares its
exchanges, queues and bindings, consumes them, and then only
:meth:`PollListener.poll` touches the connection: each call drains it in short
slices, decodes what arrived in the consumer callback and hands out
:class:`IncomingMessage` objects. The shape mirrors oslo.messaging's
``PollStyleListener`` / ``RpcIncomingMessage`` (``poll(timeout, batch_size,
batch_timeout)``, ``stop()``, ``cleanup()``; ``reply()``, ``heartbeat()``,
``acknowledge()``, ``requeue()``), so an oslo.messaging driver can wrap it.

kombu channels are not thread-safe, so a message handled on a worker thread
never touches the connection itself: its ``acknowledge()`` and ``requeue()``
are queued and carried out by the polling thread on its next pass (or by
:meth:`PollListener.cleanup`). Replies and heartbeats go out through a
separate :class:`~rabbit_ha_driver.rpc.client.Publisher`.

RPC requests are acknowledged when :meth:`~PollListener.poll` hands them out,
before they run (at most once, as oslo.messaging does); a request whose
acknowledgement fails (its channel died) is not handed out: the broker
delivers it again. A call whose ``_msg_id`` this listener took lately is
not run again: a copy of one still running is dropped, a copy of one that
replied gets the same reply again, from a bounded cache
(:mod:`rabbit_ha_driver.rpc.reply_cache`). Casts and notifications whose
``_unique_id`` is among the last :data:`DUPLICATE_WINDOW` this listener took
are dropped as duplicates; beyond that window, or on another listener, a copy
runs again (at-least-once). Messages that arrived but were not handed out when the
listener stops are requeued, never lost and never run.

A message that is not JSON, has a malformed envelope or no method is rejected
without requeue (it would come back forever) and logged with where it came
from; when it still names a caller, the caller gets an
:class:`~rabbit_ha_driver.exceptions.InvalidMessage` failure at once instead of
a timeout.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.connection import Connection, Deadline, State
from rabbit_ha_driver.events import DuplicateRequest, EventBus
from rabbit_ha_driver.rpc import envelope, queue_types
from rabbit_ha_driver.rpc.client import Publisher, Receipt
from rabbit_ha_driver.rpc.envelope import ExchangeSpec, QueueSpec
from rabbit_ha_driver.rpc.recent import Recent
from rabbit_ha_driver.rpc.reply_cache import RUNNING, ReplyCache
from rabbit_ha_driver.settings import Settings

LOG = logging.getLogger(__name__)

#: Longest single drain of the connection: how soon queued acknowledgements
#: run and how soon :meth:`PollListener.stop` is noticed.
DRAIN_SLICE = 0.1
#: Recent ``_unique_id`` values remembered to drop duplicate requests.
DUPLICATE_WINDOW = 1024
#: How long a reply queue that took no reply is remembered as gone.
GONE_REPLY_QUEUE_TTL = 60.0
#: Longest wait to tell a caller its request was refused.
REJECTION_REPLY_TIMEOUT = 1.0


class IncomingMessage:
    """A message handed out by :meth:`PollListener.poll`."""

    def __init__(self, listener: PollListener, raw: Any, ctxt: dict[str, Any],
                 message: dict[str, Any], *, msg_id: str | None = None,
                 unique_id: str | None = None) -> None:
        self.listener = listener
        self.raw = raw
        self.ctxt = ctxt
        self.message = message
        self.msg_id = msg_id
        self.unique_id = unique_id
        self.client_timeout: float | None = None
        self.acknowledged = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.msg_id or self.unique_id}>"

    def acknowledge(self) -> None:
        """Take the message off the queue (done on the polling thread)."""
        if not self.acknowledged:
            self.acknowledged = True
            self.listener.settle(self, requeue=None)

    def requeue(self) -> None:
        """Give the message back to the queue for another consumer."""
        if self.acknowledged:
            LOG.debug("%r was already acknowledged; cannot requeue it", self)
            return
        self.acknowledged = True
        self.listener.settle(self, requeue=True)


class RpcIncomingMessage(IncomingMessage):
    """An RPC request; ``reply()`` answers a call (a cast needs no answer)."""

    def __init__(self, listener: PollListener, raw: Any, request: envelope.Request,
                 received_at: float) -> None:
        super().__init__(listener, raw, request.context, request.as_message(),
                         msg_id=request.msg_id, unique_id=request.unique_id)
        self.request = request
        self.reply_q = request.reply_q
        self.client_timeout = request.client_timeout
        self.received_at = received_at
        self.replied = False
        ttl = _expiration(raw)
        budget = ttl if ttl is not None else float(listener.settings.rpc_response_timeout)
        #: When the caller stops waiting, as far as the request tells.
        self.reply_deadline = received_at + budget

    def acknowledge(self) -> None:
        """Requests are acknowledged when handed out; nothing left to do."""

    def requeue(self) -> None:
        LOG.debug("%r: RPC requests are acknowledged before they run; not requeued", self)

    def reply(self, reply: Any = None, failure: Any = None) -> None:
        """Send the result, or ``failure`` (an exception or exc_info), to the caller.

        Never raises: a reply that cannot be delivered before the caller's
        deadline is logged and dropped.
        """
        if not self.request.wants_reply:
            return
        if self.replied:
            LOG.warning("%r: already replied; ignoring a second reply", self)
            return
        self.replied = True
        failure_text = envelope.encode_failure(failure) if failure is not None else None
        self.listener.send_reply(self, reply, failure_text)

    def heartbeat(self) -> None:
        """Tell a monitoring caller the call is still running.

        Raises Unroutable (the caller's reply queue is gone) or another
        library error; the call-monitor loop stops on any error.
        """
        if not self.request.wants_reply:
            return
        self.listener.send_heartbeat(self)


class NotificationIncomingMessage(IncomingMessage):
    """A notification; acknowledge or requeue it when handled."""

    def __init__(self, listener: PollListener, raw: Any,
                 notification: envelope.Notification) -> None:
        message = {
            "message_id": notification.message_id,
            "publisher_id": notification.publisher_id,
            "event_type": notification.event_type,
            "priority": notification.priority.upper(),
            "payload": notification.payload,
            "timestamp": notification.timestamp,
        }
        super().__init__(listener, raw, notification.context, message,
                         unique_id=notification.unique_id)
        self.notification = notification


def _expiration(raw: Any) -> float | None:
    properties = getattr(raw, "properties", None) or {}
    try:
        seconds = int(properties.get("expiration", "")) / 1000.0
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


_ID = re.compile(r"[A-Za-z0-9_.:-]{1,255}")


def _answer_to(raw: Any) -> tuple[str | None, str | None]:
    """``(msg_id, reply_q)`` from a request's AMQP ``correlation_id`` and
    ``reply_to``, which the library's callers set beside the body's: the one
    way to answer a body that cannot be read (compressed past the limit)."""
    properties = getattr(raw, "properties", None) or {}
    msg_id, reply_q = properties.get("correlation_id"), properties.get("reply_to")
    if isinstance(msg_id, str) and isinstance(reply_q, str) \
            and _ID.fullmatch(msg_id) and _ID.fullmatch(reply_q):
        return msg_id, reply_q
    return None, None


def _where(raw: Any) -> str:
    info = getattr(raw, "delivery_info", None) or {}
    return f"exchange {info.get('exchange', '?')!r} routing key {info.get('routing_key', '?')!r}"


class PollListener:
    """Consumes a set of queues on one connection; see the module docstring."""

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
        if kind not in ("rpc", "notification"):
            raise ValueError(f"unknown listener kind {kind!r}")
        self.settings = settings
        self.kind = kind
        self.prefetch_size = (settings.rabbit_qos_prefetch_count
                              if prefetch_size is None else prefetch_size)
        self._conn = connection
        self._publisher = publisher
        self._clock = clock
        self._exchanges = list(exchanges)
        self._queues = list(queues)
        self._temporary = set(temporary)
        self._steps = self._plan()
        self._tags: list[str] = []
        self._incoming: collections.deque[IncomingMessage] = collections.deque()
        self._ops: collections.deque[tuple[Any, bool | None]] = collections.deque()
        self._rejections: collections.deque[tuple[str, str, str]] = collections.deque()
        self._seen: Recent[None] = Recent(DUPLICATE_WINDOW)
        self._gone_reply_queues: Recent[None] = Recent(256, GONE_REPLY_QUEUE_TTL)
        #: Replies by request msg_id, to answer a repeated call without running it.
        self.reply_cache = ReplyCache(settings.rpc_reply_cache_size,
                                      settings.rpc_reply_cache_ttl, clock)
        self._stopping = threading.Event()
        self._shut_down = False
        self._failures = 0

    def __repr__(self) -> str:
        names = ",".join(q.name for q in self._queues)
        return f"<PollListener {self.kind} {names}>"

    @property
    def queues(self) -> list[QueueSpec]:
        return list(self._queues)

    @property
    def events(self) -> EventBus:
        """The bus of this listener's connection (its events and the listener's)."""
        return self._conn.events

    @property
    def subscribed(self) -> bool:
        return not self._steps

    # -- subscribing -----------------------------------------------------------

    def _plan(self) -> collections.deque[Callable[[Deadline], None]]:
        """Every declaration and consumer, in order, as steps to run once each."""
        conn = self._conn
        steps: collections.deque[Callable[[Deadline], None]] = collections.deque()

        def qos(dl: Deadline) -> None:
            conn.set_qos(self.prefetch_size, deadline=dl)

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
                self._tags.append(conn.consume(name, self._on_delivery, deadline=dl,
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
            self._tags.append(tag[0])

        consumer_arguments = {q.name: q.consumer_arguments for q in self._queues
                              if q.consumer_arguments}

        if self.prefetch_size:
            steps.append(qos)
        steps.extend(functools.partial(exchange, ex) for ex in self._exchanges)
        names: list[str] = []
        for q in self._queues:
            if q.name not in names:
                names.append(q.name)
                steps.append(functools.partial(queue, q))
            steps.append(functools.partial(bind, q))
        steps.extend(functools.partial(consume, name) for name in names)
        return steps

    def subscribe(self, deadline: float) -> bool:
        """Declare and consume what is left to do before ``deadline``.

        Returns True once everything is in place. Raises IrrecoverableError
        (a refusal retrying cannot mend, e.g. inequivalent queue arguments).
        """
        dl = Deadline(deadline, self._clock)
        while self._steps:
            try:
                self._steps[0](dl)
            except exc.MessagingTimeout as error:
                LOG.debug("%r: subscribing not finished: %s", self, error)
                return False
            self._steps.popleft()
        return True

    # -- polling ---------------------------------------------------------------

    def poll(self, timeout: float | None = None, batch_size: int = 1,
             batch_timeout: float | None = None) -> list[IncomingMessage]:
        """Up to ``batch_size`` messages, waiting up to ``timeout`` seconds.

        With ``batch_timeout``, once one message is in hand, waits up to that
        long for the batch to fill. Returns ``[]`` at once after :meth:`stop`.
        Must be called from one thread at a time.
        """
        clock = self._clock
        deadline = math.inf if timeout is None else clock.now() + max(0.0, timeout)
        out: list[IncomingMessage] = []
        filling = False  # the batch timeout started with the first message
        while True:
            self._run_ops()
            self._send_rejections()
            if self._stopping.is_set():
                self._shutdown()
                return out
            while self._incoming and len(out) < batch_size:
                incoming = self._incoming.popleft()
                if self.kind == "rpc" and not self._take(incoming):
                    continue
                out.append(incoming)
            if len(out) >= batch_size:
                return out
            if out and not filling:
                if not batch_timeout:
                    return out
                deadline = min(deadline, clock.now() + batch_timeout)
                filling = True
            left = deadline - clock.now()
            if left <= 0:
                return out
            self._drain(min(left, DRAIN_SLICE))

    def has_waiting(self) -> bool:
        """Whether messages were received that :meth:`poll` has not handed out yet."""
        return bool(self._incoming)

    def _take(self, incoming: IncomingMessage) -> bool:
        """Acknowledge a request before it runs; False if it must not run."""
        if isinstance(incoming, RpcIncomingMessage) and self._cached_call(incoming):
            return self._take_call(incoming)
        uid = incoming.unique_id
        if uid and uid in self._seen:
            LOG.info("%r: dropping duplicate request %s", self, uid)
            self._conn.ack(incoming.raw)
            return False
        if not self._ack_before_running(incoming):
            return False
        if uid:
            self._seen.add(uid)
        return True

    def _cached_call(self, incoming: RpcIncomingMessage) -> bool:
        """Whether a repeat of this request is told apart by its msg_id (the reply cache)."""
        return bool(incoming.msg_id and incoming.request.wants_reply and self.reply_cache.enabled)

    def _ack_before_running(self, incoming: IncomingMessage) -> bool:
        if not self._conn.ack(incoming.raw):
            LOG.warning("%r: acknowledging failed (its channel is gone); not running it, "
                        "the broker delivers it again", incoming)
            return False
        incoming.acknowledged = True
        return True

    def _take_call(self, incoming: RpcIncomingMessage) -> bool:
        """A call: run it unless its msg_id ran lately; answer a repeat from the cache.

        A repeat is a copy the caller sent again after its first copy's fate
        was uncertain, or a redelivery after an acknowledgement was lost.
        """
        msg_id = incoming.msg_id
        assert msg_id is not None
        known = self.reply_cache.seen(msg_id)
        if known is None:
            if not self._ack_before_running(incoming):
                return False
            self.reply_cache.running(msg_id)
            return True
        self._conn.ack(incoming.raw)
        answered = known is not RUNNING
        self._conn.events.emit(DuplicateRequest(self._conn.name, msg_id, answered))
        if known is RUNNING:
            LOG.info("%r: request %s for %s arrived again while it runs; dropping the copy "
                     "(its reply follows)", self, msg_id, incoming.request.method)
            return False
        assert isinstance(known, bytes) and incoming.reply_q
        LOG.info("%r: request %s for %s arrived again after it ran; answering the copy from "
                 "the reply cache, not running it again", self, msg_id, incoming.request.method)
        self._publish_reply(known, incoming.reply_q, deadline=incoming.reply_deadline,
                            what=f"cached reply to {incoming.request.method} {msg_id}")
        return False

    def _failed(self, what: str) -> None:
        """Log a failure of the polling loop and pause, longer when it repeats."""
        self._failures += 1
        pause = min(DRAIN_SLICE * 2 ** min(self._failures, 6), 5.0)
        LOG.log(logging.ERROR if self._failures == 1 else logging.DEBUG,
                "%r: %s failed (%d in a row); trying again in %.1fs", self, what,
                self._failures, pause, exc_info=True)
        self._stopping.wait(pause)

    def _drain(self, seconds: float) -> None:
        if self._steps:
            try:
                if not self.subscribe(self._clock.now() + seconds):
                    return
            except exc.IrrecoverableError:
                self._failed("subscribing")
                return
        try:
            self._conn.drain_events(seconds)
            self._failures = 0
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
        for tag in self._tags:
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
        body = raw.body
        try:
            inner = envelope.decode(
                body, content_type=raw.content_type, content_encoding=raw.content_encoding,
                headers=raw.headers, max_size=self.settings.rpc_max_message_size,
                compression=getattr(raw, "compression", None))
            if self.kind == "rpc":
                incoming: IncomingMessage = self._rpc_incoming(raw, inner)
            else:
                incoming = NotificationIncomingMessage(
                    self, raw, envelope.parse_notification(inner))
        except exc.InvalidMessage as error:
            self._refuse(raw, error)
            return
        by_msg_id = isinstance(incoming, RpcIncomingMessage) and self._cached_call(incoming)
        if not by_msg_id and incoming.unique_id and incoming.unique_id in self._seen:
            LOG.info("%r: dropping duplicate message %s", self, incoming.unique_id)
            self._conn.ack(raw)
            return
        self._incoming.append(incoming)

    def _rpc_incoming(self, raw: Any, inner: dict[str, Any]) -> RpcIncomingMessage:
        request = envelope.parse_request(inner)
        if request.msg_id:
            LOG.debug("request %s for %s, reply to %s", request.msg_id,
                      request.method, request.reply_q)
        return RpcIncomingMessage(self, raw, request, self._clock.now())

    def _refuse(self, raw: Any, error: exc.InvalidMessage) -> None:
        LOG.warning("%r: rejecting message from %s: %s", self, _where(raw), error)
        self._conn.reject(raw, requeue=False)
        if self.kind != "rpc":
            return
        msg_id, reply_q = ((error.msg_id, error.reply_q)
                           if isinstance(error, envelope.BadRequest) else (None, None))
        if not (msg_id and reply_q):
            msg_id, reply_q = _answer_to(raw)
        if not (msg_id and reply_q) and isinstance(raw.body, bytes | str) \
                and not getattr(raw, "compression", None):
            msg_id, reply_q = envelope.sniff_ids(raw.body)
        if msg_id and reply_q:
            self._rejections.append((msg_id, reply_q, envelope.encode_failure(error)))

    # -- replying --------------------------------------------------------------

    def _send_rejections(self) -> None:
        while self._rejections:
            msg_id, reply_q, failure = self._rejections.popleft()
            self._publish_reply(
                envelope.encode(envelope.build_reply(msg_id, None, failure),
                                self.settings.rpc_max_message_size, "refusal"), reply_q,
                deadline=self._clock.now() + REJECTION_REPLY_TIMEOUT,
                what=f"refusal of request {msg_id}", retry=False)

    def send_reply(self, incoming: RpcIncomingMessage, result: Any,
                   failure: str | None) -> None:
        """Send a reply; replaces one that cannot be encoded by a failure."""
        assert incoming.msg_id and incoming.reply_q
        message = envelope.build_reply(incoming.msg_id, result, failure)
        what = f"reply to {incoming.request.method} {incoming.msg_id}"
        try:
            body = envelope.encode(message, self.settings.rpc_max_message_size, "reply")
        except exc.InvalidMessage as error:
            LOG.warning("%r: cannot send the result of %s: %s", self,
                        incoming.request.method, error)
            message = envelope.build_reply(
                incoming.msg_id, None,
                envelope.encode_failure(exc.InvalidMessage(f"the result was not sent: {error}")))
            body = envelope.encode(message, self.settings.rpc_max_message_size, what)
        if self.reply_cache.enabled:
            self.reply_cache.replied(incoming.msg_id, body)
        self._publish_reply(body, incoming.reply_q, deadline=incoming.reply_deadline, what=what)

    def send_heartbeat(self, incoming: RpcIncomingMessage) -> None:
        assert incoming.msg_id and incoming.reply_q
        interval = (incoming.client_timeout or 2.0) / 2
        message = envelope.build_reply(incoming.msg_id, None, None, ending=False)
        body = envelope.encode(message, self.settings.rpc_max_message_size, "heartbeat")
        sent = self._publisher.publish(
            body, "", incoming.reply_q,
            deadline=min(incoming.reply_deadline, self._clock.now() + interval),
            what=f"call-monitor heartbeat for {incoming.msg_id}", retry_unroutable=0.0)
        if not sent:
            raise exc.Unroutable(f"reply queue {incoming.reply_q} is gone",
                                 operation="basic.publish")

    def _publish_reply(self, body: bytes, reply_q: str, *, deadline: float,
                       what: str, retry: bool = True) -> None:
        """Send a reply without waiting for its confirm; the outcome is handled when it comes.

        The handler's thread is free once the reply is written; confirms of
        replies sent one after the other are read together (see
        :meth:`Publisher.publish_async`). A reply whose confirm was lost
        with the connection is sent again: the caller drops a second copy
        (by ``_unique_id``, or as a reply to a finished call), while a lost
        one fails the call.
        """
        now = self._clock.now()
        if self._gone_reply_queues.contains(reply_q, now=now):
            retry = False

        def settled(receipt: Receipt) -> None:
            error = receipt.error
            if isinstance(error, exc.MessagingTimeout):
                if isinstance(error.last_error, exc.Unroutable):
                    self._gone_reply_queues.add(reply_q, now=self._clock.now())
                LOG.error("%s abandoned: %s", what, error)
            elif error is not None:
                LOG.error("%s failed: %s", what, error)
            elif not receipt.sent:
                self._gone_reply_queues.add(reply_q, now=self._clock.now())
                LOG.warning("%s dropped: reply queue %s does not exist", what, reply_q)

        # Raises only when not even written, after settled() reported it.
        with contextlib.suppress(exc.RabbitHAError):
            self._publisher.publish_async(
                body, "", reply_q, deadline=max(deadline, now + 0.001), what=what,
                retry_unroutable=None if retry else 0.0, retry_uncertain=True,
                on_settled=settled)


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
        settings, connection, publisher, kind="rpc",
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
    return PollListener(settings, connection, publisher, kind="notification",
                        exchanges=list(exchanges.values()), queues=queues, clock=clock)


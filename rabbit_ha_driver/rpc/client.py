"""Sending: calls, casts and fanout casts with deadlines, over one transport.

How this works. An :class:`RPCTransport` holds what clients (and notifiers)
of a process share: a :class:`Publisher` (one connection that threads take
turns on) and, from the first call on, a reply queue with its own connection
and draining thread (:mod:`rabbit_ha_driver.rpc.replies`). An
:class:`RPCClient` is a cheap view on a transport with a target (topic,
optional server, fanout) and a timeout; :meth:`RPCClient.prepare` makes
another view on the same transport.

A call computes one absolute deadline and everything it does runs under it:
waiting for the publisher's lock, connecting, declaring the exchange,
publishing and waiting for the broker's confirm, re-sending, and waiting for
the reply. Nothing blocks past it, also when every broker is down; the
:class:`~rabbit_ha_driver.exceptions.MessagingTimeout` says which of these it
was stuck in and why. The request carries the time left as its AMQP
``expiration`` so the broker drops it once nobody waits for the answer.

Messages are published with the mandatory flag and publisher confirms. A
message is sent again only when the broker provably did not take it: it came
back unroutable (no queue bound yet, e.g. while a server re-declares its queue
after a failover), it was nacked, or its frame never went out. When the
connection dies between writing a call and the confirm, the request may have
arrived: the call waits a short grace for its reply and then sends the same
request again, which a server that ran it answers from its reply cache (see
:mod:`rabbit_ha_driver.rpc.calls`). A cast in that state is sent again when
its queues are durable or quorum queues (at-least-once: the server drops the
copy by its ``_unique_id``); otherwise it
raises :class:`~rabbit_ha_driver.exceptions.ConnectionLost` (its fate is
unknown). A fanout that no queue takes is retried only for a short
grace (a listener re-declaring its queue after a consumer cancel), then logged
as reaching no listener: a fanout to nobody is not an error in oslo.messaging.

Wire format and names are oslo.messaging's rabbit driver's (see
:mod:`rabbit_ha_driver.rpc.envelope` and :mod:`rabbit_ha_driver.rpc`).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver import forks
from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.connection import (
    Connection,
    Deadline,
    Outcome,
    Pending,
    default_connection_name,
)
from rabbit_ha_driver.events import (
    CallCompleted,
    CallTimedOut,
    Event,
    EventBus,
    LogSubscriber,
    UnroutableRetry,
)
from rabbit_ha_driver.rpc import compression, envelope
from rabbit_ha_driver.rpc.calls import CallSender, ResendRule
from rabbit_ha_driver.rpc.envelope import DEFAULT_EXCHANGE, ExchangeSpec, QueueSpec, durable
from rabbit_ha_driver.rpc.replies import ClientClosed, ReplyListener, ReplyWaiters
from rabbit_ha_driver.settings import Settings

LOG = logging.getLogger(__name__)

_FIRST_RETRY_DELAY = 0.05
_MAX_RETRY_DELAY = 0.5

#: Receipts of :meth:`Publisher.publish_async` that may wait for their confirm
#: at once; beyond it the oldest half is settled before the next write.
CONFIRM_WINDOW = 512
#: The keeper thread settles waiting receipts once no message was written
#: for this many seconds.
KEEPER_IDLE = 0.02
#: The keeper thread ends after this many seconds with nothing to settle.
KEEPER_EXIT = 1.0
#: Seconds a closing publisher gives its waiting receipts.
CLOSE_SETTLE = 5.0


class ConnectionFactory(Protocol):
    """Makes the connections of the RPC layer; ``purpose`` names them."""

    def __call__(self, purpose: str) -> Connection: ...


def default_connection_factory(settings: Settings, *, events: EventBus | None = None,
                       clock: Clock | None = None) -> ConnectionFactory:
    """Connections named ``<connection_name>:<purpose>`` in the broker's list."""
    base = settings.connection_name or default_connection_name()

    def make(purpose: str) -> Connection:
        return Connection(settings, name=f"{base}:{purpose}", events=events, clock=clock)

    return make


# -- publishing ----------------------------------------------------------------


def _acquire(lock: threading.Lock, timeout: float) -> bool:
    if timeout == math.inf:
        return lock.acquire()
    return lock.acquire(timeout=min(max(0.0, timeout), threading.TIMEOUT_MAX))


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "the broker did not confirm it in time"
    if isinstance(error, exc.Unroutable):
        return f"no queue took it (unroutable: {error})"
    if isinstance(error, exc.PublishNacked):
        return f"the broker refused it (nack: {error})"
    return f"{type(error).__name__}: {error}"


class Publisher:
    """One publishing connection, shared by threads that take turns on it.

    :meth:`publish` returns once the broker confirmed the message and sends
    it again only when the broker provably did not take it. Waiting for the
    turn is bounded by each caller's own deadline.
    """

    def __init__(self, settings: Settings, factory: ConnectionFactory, *,
                 purpose: str = "publish", clock: Clock = REAL_CLOCK) -> None:
        self.settings = settings
        self._factory = factory
        self._purpose = purpose
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._declared: set[ExchangeSpec | QueueSpec] = set()
        self._closed = False
        self._outstanding: collections.deque[Receipt] = collections.deque()
        self._outstanding_lock = threading.Lock()
        self._last_async = 0.0
        self._keeper: threading.Thread | None = None
        self._keeper_wake = threading.Event()
        #: Threads sending a returned (or nacked) message again (see _settle_batch).
        self._resending: set[threading.Thread] = set()
        self._closing = False
        forks.at_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """In a forked child: fresh locks, no keeper thread, and none of the
        parent's receipts (settling one here could send its message again).
        The connection resets itself and reconnects on first use."""
        self._lock = threading.Lock()
        self._outstanding_lock = threading.Lock()
        self._outstanding.clear()
        self._keeper = None
        self._keeper_wake = threading.Event()
        self._resending = set()

    def __repr__(self) -> str:
        return f"<Publisher {self._purpose} {self._conn!r}>"

    def publish(
        self,
        body: bytes,
        exchange: ExchangeSpec | str,
        routing_key: str,
        *,
        deadline: float,
        what: str,
        ttl: bool = False,
        persistent: bool = False,
        declare: tuple[QueueSpec, ...] = (),
        retry_unroutable: float | None = None,
        retry_uncertain: bool = False,
        expires_at: float | None = None,
        answer_to: tuple[str, str] | None = None,
    ) -> bool:
        """Publish ``body`` before ``deadline`` (a time on the clock).

        ``exchange`` is declared first unless it is the default exchange
        (``""``). With ``ttl`` the message expires when the deadline passes
        (or at ``expires_at``, when given).
        Unroutable messages are retried until the deadline, or for
        ``retry_unroutable`` seconds, after which False is returned. With
        ``retry_uncertain`` a message whose confirm was lost with the
        connection is sent again (at-least-once) instead of raising
        ConnectionLost. ``answer_to`` is a call's ``(msg_id, reply queue)``,
        sent also as the AMQP ``correlation_id`` and ``reply_to`` properties:
        a server that cannot read the body (a compression bomb) still
        knows whom to tell.
        Raises MessagingTimeout, ConnectionLost (outcome unknown),
        IrrecoverableError or InvalidMessage.
        """
        exchange_name = exchange.name if isinstance(exchange, ExchangeSpec) else exchange
        started = self._clock.now()
        give_up_unroutable = (started + retry_unroutable
                              if retry_unroutable is not None else math.inf)
        delay = _FIRST_RETRY_DELAY
        last_error: BaseException | None = None
        attempts = 0
        while True:
            now = self._clock.now()
            if now >= deadline:
                raise exc.MessagingTimeout(
                    f"{what}: not sent within {now - started:.1f}s "
                    f"({attempts} attempts): {_describe(last_error)}",
                    waited=now - started, last_error=last_error)
            if isinstance(last_error, exc.Unroutable) and now >= give_up_unroutable:
                return False
            if not _acquire(self._lock, deadline - now):
                last_error = last_error or exc.MessagingTimeout(
                    "the publishing connection stayed busy", waited=now - started)
                continue
            try:
                attempts += 1
                self._attempt(body, exchange, exchange_name, routing_key, deadline,
                              ttl=ttl, persistent=persistent, declare=declare,
                              retry_uncertain=retry_uncertain,
                              expires_at=expires_at or deadline, answer_to=answer_to)
                return True
            except exc.Unroutable as error:
                last_error = error
                # A queue this message declares may have been deleted since it
                # was declared (an operator, a consumer cancel): declare again.
                self._declared.difference_update(declare)
                LOG.debug("%s: attempt %d not taken by the broker: %s", what, attempts, error)
                self._emit(UnroutableRetry(*self.where(), exchange_name, routing_key, attempts))
            except exc.PublishNacked as error:
                # RabbitMQ 3.10 can leave a channel that published to a quorum
                # queue while its leader died nacking every later publish to
                # it, although a new leader was elected; a fresh connection
                # publishes fine. So the resend goes out on a new one.
                last_error = error
                LOG.info("%s: attempt %d nacked by the broker (%s); resending on a "
                         "fresh connection", what, attempts, error)
                self._reset()
            except exc.IrrecoverableError as error:
                if error.reply_code != 404 or not isinstance(exchange, ExchangeSpec):
                    raise
                # The exchange vanished (an auto-delete exchange lost its last
                # queue): the broker dropped the message and closed the
                # channel. Start over on a fresh connection: declare, resend.
                last_error = error
                self._reset()
            except exc.MessagingTimeout as error:
                now = self._clock.now()
                raise exc.MessagingTimeout(
                    f"{what}: not sent within {now - started:.1f}s "
                    f"({attempts} attempts): {error}",
                    waited=now - started, last_error=error.last_error or last_error,
                ) from error
            finally:
                self._lock.release()
            pause = min(delay, deadline - self._clock.now(),
                        max(0.0, give_up_unroutable - self._clock.now()))
            if pause > 0:
                self._clock.sleep(pause)
            delay = min(delay * 2, _MAX_RETRY_DELAY)

    def where(self) -> tuple[str, str]:
        """(connection name, host) of the publishing connection, for events."""
        conn = self._conn
        if conn is None:
            return (self._purpose, "-")
        return (conn.name, conn.host.address if conn.host else "memory")

    def _emit(self, event: Event) -> None:
        """An event on the publishing connection's bus (for metrics)."""
        if self._conn is not None:
            self._conn.events.emit(event)

    def _prepare(self, conn: Connection, exchange: ExchangeSpec | str, dl: Deadline,
                 deadline: float, *, ttl: bool, persistent: bool,
                 declare: tuple[QueueSpec, ...],
                 answer_to: tuple[str, str] | None = None) -> dict[str, Any]:
        """Declare what the message needs (once per connection); its properties."""
        if isinstance(exchange, ExchangeSpec) and exchange not in self._declared:
            conn.declare_exchange(exchange.name, exchange.type, durable=exchange.durable,
                                  auto_delete=exchange.auto_delete, deadline=dl)
            self._declared.add(exchange)
        for queue in declare:
            if queue not in self._declared:
                conn.declare_queue(queue.name, durable=queue.durable,
                                   arguments=dict(queue.arguments) or None, deadline=dl)
                conn.bind(queue.name, queue.exchange, queue.routing_key, deadline=dl)
                self._declared.add(queue)
        properties: dict[str, Any] = {
            "content_type": envelope.CONTENT_TYPE,
            "content_encoding": envelope.CONTENT_ENCODING,
            "delivery_mode": 2 if persistent else 1,
        }
        if ttl:
            left_ms = int((deadline - self._clock.now()) * 1000)
            properties["expiration"] = str(max(1, left_ms))
        if answer_to is not None:
            properties["correlation_id"], properties["reply_to"] = answer_to
        return properties

    def _attempt(self, body: bytes, exchange: ExchangeSpec | str, exchange_name: str,
                 routing_key: str, deadline: float, *, ttl: bool, persistent: bool,
                 declare: tuple[QueueSpec, ...], retry_uncertain: bool,
                 expires_at: float, answer_to: tuple[str, str] | None = None) -> None:
        conn = self._connection()
        dl = Deadline(deadline, self._clock)
        properties = self._prepare(conn, exchange, dl, expires_at, ttl=ttl,
                                   persistent=persistent, declare=declare, answer_to=answer_to)
        body, headers = self._compressed(body)
        conn.publish(body, exchange_name, routing_key, headers=headers, properties=properties,
                     mandatory=True, deadline=dl, retry_uncertain=retry_uncertain)

    def _compressed(self, body: bytes) -> tuple[bytes, dict[str, Any] | None]:
        """The body as sent, and its headers: compressed with ``kombu_compression``."""
        method = self.settings.kombu_compression
        if not method:
            return body, None
        packed, header = compression.compress(body, method)
        return packed, {"compression": header}

    def publish_async(
        self,
        body: bytes,
        exchange: ExchangeSpec | str,
        routing_key: str,
        *,
        deadline: float,
        what: str,
        ttl: bool = False,
        persistent: bool = False,
        declare: tuple[QueueSpec, ...] = (),
        retry_unroutable: float | None = None,
        retry_uncertain: bool = False,
        on_settled: Callable[[Receipt], None] | None = None,
        answer_to: tuple[str, str] | None = None,
    ) -> Receipt:
        """Write ``body`` now and learn later whether the broker confirmed it.

        Takes what :meth:`publish` takes. Returns a :class:`Receipt` at
        once, without waiting for the confirm: messages sent one after the
        other are confirmed in batches. The receipt reports the message sent
        only once the broker confirmed it; one that was returned, nacked or
        whose confirm was lost with the connection is sent again by
        :meth:`publish`'s rules when the receipt is settled. At most
        :data:`CONFIRM_WINDOW` receipts wait at a time: beyond that the
        oldest are settled before the next write, and a keeper thread
        settles the rest once publishing pauses. ``on_settled(receipt)`` is
        called once it is settled, in whichever thread settled it.
        """
        exchange_name = exchange.name if isinstance(exchange, ExchangeSpec) else exchange

        def resend(until: float) -> bool:
            return self.publish(body, exchange, routing_key, deadline=until, expires_at=deadline,
                                what=what,
                                ttl=ttl, persistent=persistent, declare=declare,
                                retry_unroutable=retry_unroutable,
                                retry_uncertain=retry_uncertain, answer_to=answer_to)

        conn: Connection | None = None
        pending: Pending | None = None
        if _acquire(self._lock, deadline - self._clock.now()):
            try:
                conn = self._connection()
                dl = Deadline(deadline, self._clock)
                properties = self._prepare(conn, exchange, dl, deadline, ttl=ttl,
                                           persistent=persistent, declare=declare,
                                           answer_to=answer_to)
                wire, headers = self._compressed(body)
                pending = conn.publish_nowait(wire, exchange_name, routing_key, headers=headers,
                                              properties=properties, deadline=dl)
            except exc.RabbitHAError as error:
                # Not written: the receipt sends it by publish()'s rules.
                LOG.debug("%s: not written at once (%s); sent when settled", what, error)
                conn = pending = None
            finally:
                self._lock.release()
        receipt = Receipt(what, conn, pending, resend, deadline=deadline, clock=self._clock,
                          retry_uncertain=retry_uncertain, on_settled=on_settled)
        if pending is None:
            receipt.result()  # not written: publish() now, raising as it does
        elif pending.done and pending.outcome is Outcome.ACKED:
            receipt.settle_quietly()  # settled already (no confirms, e.g. memory://)
        else:
            # Unconfirmed yet, or already returned, nacked or lost: sending it again
            # can take until its deadline, which is the receipt's business,
            # not this caller's (a cast to a topic nobody serves yet returns).
            self._keep(receipt)
        return receipt

    def _keep(self, receipt: Receipt) -> None:
        with self._outstanding_lock:
            outstanding = self._outstanding
            outstanding.append(receipt)
            while outstanding and outstanding[0].settled_ok():
                outstanding.popleft()
            overflow = ([outstanding.popleft() for _ in range(len(outstanding) // 2)]
                        if len(outstanding) > CONFIRM_WINDOW else [])
            self._last_async = self._clock.now()
            if self._keeper is None and not self._closing:
                self._keeper = threading.Thread(target=self._keep_settling, daemon=True,
                                                name=f"confirms-{self._purpose}")
                self._keeper.start()
        self._settle_batch(overflow)

    def _settle_batch(self, batch: list[Receipt]) -> None:
        """Settle receipts in order; one that must be sent again is sent apart.

        Reading a confirm is quick, but sending a returned message again may
        take until its deadline (no queue bound yet): done here, it would hold
        up every receipt after it, and their ``on_settled`` (a call's
        uncertain request waiting to be re-sent, a cast's failure report).
        """
        for receipt in batch:
            if receipt.settle_unless_resending():
                self._resend_apart(receipt)

    def _resend_apart(self, receipt: Receipt) -> None:
        """Settle ``receipt`` (send it again) in a thread of its own."""
        thread = threading.Thread(target=self._resend_one, args=(receipt,), daemon=True,
                                  name=f"resend-{self._purpose}")
        with self._outstanding_lock:
            self._resending.add(thread)
        thread.start()

    def _resend_one(self, receipt: Receipt) -> None:
        try:
            receipt.settle_quietly()
        finally:
            with self._outstanding_lock:
                self._resending.discard(threading.current_thread())

    def _keep_settling(self) -> None:
        """The keeper thread: settle receipts nobody settled once publishing pauses.

        It looks every :data:`KEEPER_IDLE` seconds and ends after
        :data:`KEEPER_EXIT` seconds with nothing to settle (the next
        :meth:`publish_async` starts another), so an idle publisher costs no
        wake-ups.
        """
        empty_since = self._clock.now()
        while not self._closing:
            with self._outstanding_lock:
                now = self._clock.now()
                idle = now - self._last_async
                batch = list(self._outstanding) if idle >= KEEPER_IDLE else []
                if batch:
                    self._outstanding.clear()
                if batch or self._outstanding:
                    empty_since = now
                elif now - empty_since >= KEEPER_EXIT:
                    self._keeper = None
                    return
            if not batch:
                self._keeper_wake.wait(KEEPER_IDLE)
                continue
            self._settle_batch(batch)
        with self._outstanding_lock:
            self._keeper = None

    def settle_all(self, timeout: float | None = None) -> list[Receipt]:
        """Settle every outstanding receipt; returns those that failed.

        ``timeout`` bounds the whole batch, not each receipt: once it has
        passed, the receipts left get no time to wait for their confirm.
        """
        with self._outstanding_lock:
            batch = list(self._outstanding)
            self._outstanding.clear()
        until = None if timeout is None else self._clock.now() + timeout
        failed = []
        for receipt in batch:
            left = None if until is None else max(0.0, until - self._clock.now())
            if not receipt.settle_quietly(left):
                failed.append(receipt)
        return failed

    def _connection(self) -> Connection:
        if self._closed:
            raise ClientClosed(f"{self._purpose} connection is closed")
        if self._conn is None:
            self._conn = self._factory(self._purpose)
            self._declared.clear()
        return self._conn

    def _reset(self) -> None:
        """Drop the connection (the lock is held); the next attempt opens another."""
        conn, self._conn = self._conn, None
        self._declared.clear()
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Settle outstanding receipts, close the connection; never blocks for long.

        Receipts still waiting get :data:`CLOSE_SETTLE` seconds in all
        (plus up to 2 s for a publish in progress to let go of the
        connection); any that fail are logged, naming the message.
        """
        self._closing = True
        self._keeper_wake.set()
        until = self._clock.now() + CLOSE_SETTLE
        keeper = self._keeper
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join(CLOSE_SETTLE)  # it finishes the batch it took
        with self._outstanding_lock:
            resending = list(self._resending)
        for thread in resending:
            if thread is not threading.current_thread():
                thread.join(max(0.0, until - self._clock.now()))
        left = max(0.0, until - self._clock.now())
        for receipt in self.settle_all(left):
            LOG.error("%s: not confirmed by the broker before the publisher closed: %s",
                      receipt.what, receipt.error)
        self._closed = True
        acquired = self._lock.acquire(timeout=2.0)
        try:
            conn, self._conn = self._conn, None
        finally:
            if acquired:
                self._lock.release()
        if conn is not None:
            conn.close()


class Receipt:
    """The fate of a message written by :meth:`Publisher.publish_async`.

    :meth:`result` waits for the broker's confirm and, if the message was
    returned, nacked or its confirm was lost, sends it again by
    :meth:`Publisher.publish`'s rules. It reports the message sent only
    after a confirm. Thread-safe; settling happens once.
    """

    #: What was sent, for logs (``cast 'method' to topic``).
    what: str
    #: Why it failed, once settled (None if sent).
    error: BaseException | None

    def __init__(self, what: str, conn: Connection | None, pending: Pending | None,
                 resend: Callable[[float], bool], *, deadline: float, clock: Clock,
                 retry_uncertain: bool,
                 on_settled: Callable[[Receipt], None] | None = None) -> None:
        self.what = what
        self._on_settled = on_settled
        self.deadline = deadline
        self._clock = clock
        self._conn = conn
        self._pending = pending
        self._resend = resend
        self._retry_uncertain = retry_uncertain
        self._lock = threading.Lock()
        self._settled = False
        self._sent = False
        self.error = None

    def __repr__(self) -> str:
        state = ("sent" if self._sent else f"failed: {self.error}") if self._settled else "waiting"
        return f"<Receipt {self.what} {state}>"

    @property
    def sent(self) -> bool:
        """Settled and confirmed (False while waiting, failed, or a fanout to nobody)."""
        return self._settled and self._sent

    def settled_ok(self) -> bool:
        """True once confirmed (without waiting, without reading)."""
        if self._settled:
            return self._sent
        pending = self._pending
        return pending is not None and pending.outcome is Outcome.ACKED

    def result(self, timeout: float | None = None) -> bool:
        """Wait until settled; True if confirmed, False if a fanout reached nobody.

        Raises what :meth:`Publisher.publish` raises when it fails.
        """
        with self._lock:
            if not self._settled:
                try:
                    self._sent = self._settle(timeout)
                except BaseException as error:
                    self.error = error
                    raise
                finally:
                    self._finish()
            elif self.error is not None:
                raise self.error
            return self._sent

    def settle_unless_resending(self) -> bool:
        """Settle at once unless that means sending the message again.

        Reads the confirm (bounded by the deadline); True, still unsettled,
        when the broker did not take the message and :meth:`result` would
        send it again. Failures are logged as by :meth:`settle_quietly`.
        """
        with self._lock:
            if self._settled:
                return False
            try:
                if not self._confirmed(self.deadline):
                    return True
                self._sent = True
            except Exception as error:
                self.error = error
                if self._on_settled is None:
                    LOG.error("%s: failed after it was written: %s", self.what, error)
            except BaseException as error:
                self.error = error
                raise
            finally:
                if self.error is not None or self._sent:
                    self._finish()
            return False

    def _finish(self) -> None:
        self._settled = True
        self._conn = self._pending = None
        self._report()

    def settle_quietly(self, timeout: float | None = None) -> bool:
        """:meth:`result` that logs instead of raising (unless a callback
        handles the outcome); True if sent."""
        try:
            return self.result(timeout)
        except Exception as error:
            if self._on_settled is None:
                LOG.error("%s: failed after it was written: %s", self.what, error)
            return False

    def _report(self) -> None:
        callback, self._on_settled = self._on_settled, None
        if callback is not None:
            try:
                callback(self)
            except Exception:
                LOG.exception("%s: handling its outcome failed", self.what)
        self._on_settled = callback

    def _settle(self, timeout: float | None) -> bool:
        until = self.deadline
        if timeout is not None:
            until = min(until, self._clock.now() + timeout)
        if self._confirmed(until):
            return True
        pending = self._pending
        LOG.debug("%s: %s; sending it again", self.what,
                  pending.outcome.value if pending and pending.outcome else "not written")
        return self._resend(until)

    def _confirmed(self, until: float) -> bool:
        """Wait for the confirm: True if acked, False if it must be sent again.

        Raises ConnectionLost when the confirm was lost and the message is
        not to be sent again, MessagingTimeout when ``until`` passes first.
        """
        conn, pending = self._conn, self._pending
        if conn is None or pending is None:
            return False  # never written: publish() sends it
        conn.wait_confirm(pending, Deadline(until, self._clock))
        if pending.outcome is Outcome.ACKED:
            return True
        if pending.outcome is Outcome.LOST and not self._retry_uncertain:
            raise exc.ConnectionLost(
                f"{self.what}: connection lost after the message was written and before "
                "the broker confirmed it; not sent again", operation="basic.publish")
        return False


# -- transport -----------------------------------------------------------------


class RPCTransport:
    """What the clients and notifiers of one process share; thread-safe.

    ``exchange`` is oslo.messaging's ``control_exchange``: the topic exchange
    calls, casts and notifications go through unless a target names another.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        events: EventBus | None = None,
        clock: Clock | None = None,
        connection_factory: ConnectionFactory | None = None,
    ) -> None:
        self.settings = settings
        self.exchange = exchange
        self.clock = clock or REAL_CLOCK
        if events is None:
            events = EventBus()
            events.subscribe(LogSubscriber())
        #: Every connection of this transport reports here (logs, metrics).
        self.events = events
        self._factory = connection_factory or default_connection_factory(
            settings, events=events, clock=clock)
        self.publisher = Publisher(settings, self._factory, clock=self.clock)
        self.waiters = ReplyWaiters(self.clock)
        self._replies: ReplyListener | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        forks.at_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """In a forked child: the reply listener (its thread, its queue) is
        the parent's; the child makes its own on its first call."""
        self._lock = threading.Lock()
        self._replies = None
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"<RPCTransport {self.settings.transport_url.redacted()} exchange={self.exchange}>"

    @property
    def reply_listener(self) -> ReplyListener:
        """The reply queue's listener (created, not started, on first use)."""
        with self._lock:
            if self._replies is not None and self._pid != os.getpid():
                # After a fork the draining thread is gone; the child gets its
                # own reply queue so the parent's replies stay the parent's.
                self._replies.abandon()
                self._replies = None
                self._pid = os.getpid()
            if self._replies is None:
                self._replies = ReplyListener(
                    self.settings, self._factory("reply"), self.waiters, clock=self.clock)
            return self._replies

    def close(self) -> None:
        """Fail outstanding calls, close connections; never hangs."""
        if self._closed:
            return
        self._closed = True
        self.waiters.fail_all(ClientClosed("the RPC client was closed"))
        with self._lock:
            replies, self._replies = self._replies, None
        if replies is not None:
            replies.stop()
        self.publisher.close()


def as_transport(transport_or_settings: RPCTransport | Settings, **kwargs: Any) -> tuple[RPCTransport, bool]:
    """``(transport, owned)``: a given transport, or a new one for settings."""
    if isinstance(transport_or_settings, RPCTransport):
        if kwargs:
            raise TypeError(f"{', '.join(sorted(kwargs))}: only for a new transport, "
                            "not with an existing one")
        return transport_or_settings, False
    if isinstance(transport_or_settings, Settings):
        return RPCTransport(transport_or_settings, **kwargs), True
    raise TypeError(f"expected RPCTransport or Settings, not {type(transport_or_settings).__name__}")


# -- client --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a message goes: a topic, optionally one server of it, or all (fanout)."""

    topic: str
    server: str | None = None
    fanout: bool = False
    exchange: str | None = None
    namespace: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        if not self.topic or not isinstance(self.topic, str):
            raise ValueError(f"a target needs a topic, not {self.topic!r}")

    def __str__(self) -> str:
        if self.fanout:
            return f"fanout {self.topic}"
        return f"{self.topic}.{self.server}" if self.server else self.topic


def as_target(target: Target | str | Any, server: str | None = None) -> Target:
    """A Target from a topic, a Target, or anything shaped like oslo's Target."""
    if isinstance(target, Target):
        return dataclasses.replace(target, server=server) if server else target
    if isinstance(target, str):
        return Target(target, server=server)
    return Target(
        topic=target.topic,
        server=server or getattr(target, "server", None),
        fanout=bool(getattr(target, "fanout", False)),
        exchange=getattr(target, "exchange", None),
        namespace=getattr(target, "namespace", None),
        version=getattr(target, "version", None),
    )


_UNSET: Any = object()


class RPCClient:
    """Calls and casts to a target; safe to share between (green) threads.

    ``timeout`` bounds a call from start to reply (default
    ``rpc_response_timeout``); for a cast it bounds sending and the broker's
    confirm (default ``publish_timeout``; 0 there means no limit).
    ``call_monitor_timeout`` enables oslo.messaging's call monitoring: the
    server sends heartbeats while it works and the call fails when none
    arrives for that long.
    """

    def __init__(
        self,
        transport_or_settings: RPCTransport | Settings,
        target: Target | str | Any,
        server: str | None = None,
        timeout: float | None = None,
        *,
        call_monitor_timeout: float | None = None,
        **transport_kwargs: Any,
    ) -> None:
        self.transport, self._owns_transport = as_transport(transport_or_settings, **transport_kwargs)
        self.target = as_target(target, server)
        self.timeout = timeout
        self.call_monitor_timeout = call_monitor_timeout

    def __repr__(self) -> str:
        return f"<RPCClient {self.target} timeout={self.timeout}>"

    def __enter__(self) -> RPCClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def prepare(
        self,
        *,
        topic: str | None = None,
        server: str | None = _UNSET,
        fanout: bool | None = None,
        timeout: float | None = _UNSET,
        exchange: str | None = _UNSET,
        namespace: str | None = _UNSET,
        version: str | None = _UNSET,
        call_monitor_timeout: float | None = _UNSET,
    ) -> RPCClient:
        """A client on the same transport with some of its settings changed."""
        changes: dict[str, Any] = {}
        if topic is not None:
            changes["topic"] = topic
        if fanout is not None:
            changes["fanout"] = fanout
        for name, value in (("server", server), ("exchange", exchange),
                            ("namespace", namespace), ("version", version)):
            if value is not _UNSET:
                changes[name] = value
        clone = object.__new__(RPCClient)
        clone.transport, clone._owns_transport = self.transport, False
        clone.target = dataclasses.replace(self.target, **changes)
        clone.timeout = self.timeout if timeout is _UNSET else timeout
        clone.call_monitor_timeout = (self.call_monitor_timeout
                                      if call_monitor_timeout is _UNSET
                                      else call_monitor_timeout)
        return clone

    def close(self) -> None:
        """Close the transport if this client made it."""
        if self._owns_transport:
            self.transport.close()

    # -- addressing -------------------------------------------------------

    def _route(self) -> tuple[ExchangeSpec, str]:
        target, settings = self.target, self.transport.settings
        if target.fanout:
            return envelope.fanout_exchange(settings, target.topic), ""
        exchange = envelope.topic_exchange(settings, target.exchange or self.transport.exchange)
        key = f"{target.topic}.{target.server}" if target.server else target.topic
        return exchange, key

    def _message(self, ctxt: Any, method: str, kwargs: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return envelope.build_request(ctxt, method, kwargs, namespace=self.target.namespace,
                                      version=self.target.version, **extra)

    # -- call -------------------------------------------------------------

    def call(self, ctxt: Any, method: str, **kwargs: Any) -> Any:
        """Invoke ``method`` on one server of the target and return its result.

        Raises RemoteError (the server raised), MessagingTimeout (no reply in
        time; says what it waited for), InvalidMessage (arguments not JSON or
        too large) or IrrecoverableError (the broker refused us).
        """
        if self.target.fanout:
            raise ValueError("a call cannot be fanout; use cast()")
        transport = self.transport
        settings = transport.settings
        timeout = float(self.timeout if self.timeout is not None else settings.rpc_response_timeout)
        if timeout <= 0:
            raise ValueError(f"call timeout must be positive, not {timeout}")
        what = f"call {method!r} to {self.target}"
        msg_id = envelope.new_id()
        replies = transport.reply_listener
        pending = transport.waiters.register(
            msg_id, timeout, self.call_monitor_timeout, what=f"the reply to {what}")
        deadline = pending.deadline
        started = transport.clock.now()
        where = transport.publisher.where
        try:
            body = envelope.encode(
                self._message(ctxt, method, kwargs, msg_id=msg_id, reply_q=replies.queue,
                              call_monitor_timeout=self.call_monitor_timeout),
                settings.rpc_max_message_size, f"request of {what}")
            replies.ensure_started(deadline, what)
            exchange, key = self._route()
            LOG.debug("CALL %s msg_id %s reply queue %s", what, msg_id, replies.queue)
            # The reply tells more than the confirm: wait for it straight
            # away; the sender re-sends the request by the rules of
            # rabbit_ha_driver.rpc.calls meanwhile.
            sender = CallSender(transport.publisher, transport.waiters, pending, body,
                                exchange, key, what=what, rule=ResendRule.of(settings),
                                clock=transport.clock, events=transport.events,
                                persistent=durable(settings), reply_q=replies.queue)
            sender.send()
            result = sender.wait()
        except exc.MessagingTimeout:
            transport.events.emit(CallTimedOut(*where(), timeout))
            raise
        except Exception:
            transport.events.emit(CallCompleted(*where(), transport.clock.now() - started, False))
            raise
        else:
            transport.events.emit(CallCompleted(*where(), transport.clock.now() - started, True))
            return result
        finally:
            transport.waiters.discard(msg_id)

    # -- cast -------------------------------------------------------------

    def cast(self, ctxt: Any, method: str, **kwargs: Any) -> None:
        """Send ``method`` without waiting for a result; returns once confirmed.

        To a topic (one server takes it), ``prepare(server=...)`` (that
        server) or ``prepare(fanout=True)`` (every server of the topic).
        """
        what, body, exchange, key, options = self._cast_message(ctxt, method, kwargs)
        if not self.transport.publisher.publish(body, exchange, key, **options):
            LOG.warning("%s reached no listener: no queue is bound to exchange %r",
                        what, exchange.name)

    def cast_async(self, ctxt: Any, method: str, **kwargs: Any) -> Receipt:
        """Like :meth:`cast`, but returns once written, with a :class:`Receipt`.

        Casts sent one after the other this way are confirmed by the broker
        in batches instead of one round trip each, which multiplies the rate
        of a single sender. ``receipt.result()`` reports the cast sent only
        once confirmed (False: a fanout that reached no listener) and raises
        what :meth:`cast` would; a cast that was returned, nacked or whose
        confirm was lost is sent again by :meth:`cast`'s rules first.
        Receipts nobody waits for are settled in the background once
        sending pauses, and failures are logged; closing the client settles
        the rest.
        """
        _, body, exchange, key, options = self._cast_message(ctxt, method, kwargs)
        return self.transport.publisher.publish_async(body, exchange, key, **options)

    def _cast_message(self, ctxt: Any, method: str, kwargs: dict[str, Any],
                      ) -> tuple[str, bytes, ExchangeSpec, str, dict[str, Any]]:
        """What a cast sends and how: ``(what, body, exchange, key, publish options)``."""
        transport = self.transport
        settings, clock = transport.settings, transport.clock
        seconds = self.timeout if self.timeout is not None else settings.publish_timeout
        deadline = clock.now() + seconds if seconds and seconds > 0 else math.inf
        what = f"cast {method!r} to {self.target}"
        body = envelope.encode(self._message(ctxt, method, kwargs),
                               settings.rpc_max_message_size, f"request of {what}")
        exchange, key = self._route()
        LOG.debug("CAST %s", what)
        options: dict[str, Any] = {"deadline": deadline, "what": what}
        if self.target.fanout:
            options["retry_unroutable"] = settings.kombu_reconnect_delay + 1.0
        else:
            # A durable cast must survive a node failure, so one whose confirm
            # was lost is sent again; a transient one would die with its
            # queue's node anyway, so it stays at-most-once.
            options["persistent"] = options["retry_uncertain"] = durable(settings)
        return what, body, exchange, key, options

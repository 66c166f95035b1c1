"""Publishing: one connection that threads take turns on, and when to send again.

How this works. A :class:`Publisher` owns one connection (made on first use
by a :class:`~rabbit_ha_driver.rpc.transport.ConnectionFactory`) and a lock
that callers take in turn, each waiting no longer than its own deadline.
Messages are published with the mandatory flag and publisher confirms, after
declaring what they need (their exchange, queues to store them in) once per
connection.

A message is sent again only when the broker provably did not take it: it came
back unroutable (no queue bound yet, e.g. while a server re-declares its queue
after a failover), it was nacked (sent again on a fresh connection), its
exchange vanished (declared again), or its frame never went out. When the
connection dies between writing it and the confirm, the message may have
arrived: :meth:`Publisher.publish` raises
:class:`~rabbit_ha_driver.exceptions.ConnectionLost` unless the caller allows
at-least-once (``retry_uncertain``).

The attempts of one publish run under a
:class:`~rabbit_ha_driver.connection.Deadline`; between two attempts it waits
for :data:`RETRY_BACKOFF`, never past the deadline, and when the deadline
passes it raises a :class:`~rabbit_ha_driver.exceptions.MessagingTimeout`
that says how many attempts it made, how long it waited and why the last one
failed. :meth:`Publisher.publish_async` writes without waiting for the
confirm; its :class:`~rabbit_ha_driver.rpc.receipts.Receipt` sends the
message again by the same rules when it is settled.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver import forks
from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.connection import Backoff, Connection, Deadline, Outcome, Pending
from rabbit_ha_driver.events import Event, UnroutableRetry
from rabbit_ha_driver.rpc import compression, envelope
from rabbit_ha_driver.rpc.envelope import ExchangeSpec, QueueSpec
from rabbit_ha_driver.rpc.receipts import Receipt, ReceiptKeeper
from rabbit_ha_driver.rpc.replies import ClientClosed
from rabbit_ha_driver.settings import Settings

if TYPE_CHECKING:
    from rabbit_ha_driver.rpc.transport import ConnectionFactory

LOG = logging.getLogger(__name__)

#: The pause after the n-th failed attempt of one publish is
#: ``RETRY_BACKOFF.delay(2 ** (n - 1))``: 0.05 s, doubling, at most 0.5 s.
#: (A Backoff grows by ``step`` per count; fed 1, 2, 4, 8... it doubles.)
RETRY_BACKOFF = Backoff(interval=0.05, step=0.05, cap=0.5, jitter=0.0)

#: Seconds a closing publisher gives its waiting receipts.
CLOSE_SETTLE = 5.0


def retry_pause(failed_attempts: int) -> float:
    """Seconds to wait after ``failed_attempts`` (1 or more) failed attempts of one publish."""
    # The exponent stops growing once the cap is reached (2 ** 10 * 0.05 > 0.5).
    return RETRY_BACKOFF.delay(2 ** min(max(0, failed_attempts - 1), 10))


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
        self._receipts = ReceiptKeeper(purpose, clock)
        forks.at_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """In a forked child: fresh locks, no keeper thread, and none of the
        parent's receipts (settling one here could send its message again).
        The connection resets itself and reconnects on first use."""
        self._lock = threading.Lock()
        self._receipts.after_fork()

    def __repr__(self) -> str:
        return f"<Publisher {self._purpose} {self._conn!r}>"

    @property
    def _keeper(self) -> threading.Thread | None:
        """The thread settling receipts nobody waits for, while one runs."""
        return self._receipts.thread

    @property
    def _outstanding_lock(self) -> threading.Lock:
        """The lock of the receipts waiting for their confirm."""
        return self._receipts.lock

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
        until = Deadline(deadline, self._clock)
        unroutable_until = until.sooner(retry_unroutable)
        last_error: BaseException | None = None
        attempts = 0
        while True:
            if until.expired():
                raise self._timed_out(what, started, attempts, _describe(last_error),
                                      last_error)
            if isinstance(last_error, exc.Unroutable) and unroutable_until.expired():
                return False
            if not _acquire(self._lock, until.remaining()):
                last_error = last_error or exc.MessagingTimeout(
                    "the publishing connection stayed busy",
                    waited=self._clock.now() - started)
                continue
            try:
                attempts += 1
                self._attempt(body, exchange, exchange_name, routing_key, deadline,
                              ttl=ttl, persistent=persistent, declare=declare,
                              retry_uncertain=retry_uncertain,
                              expires_at=expires_at or deadline, answer_to=answer_to)
                return True
            except exc.Unroutable as error:
                error.attempts = attempts
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
                error.attempts = attempts
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
                raise self._timed_out(what, started, attempts, str(error),
                                      error.last_error or last_error) from error
            finally:
                self._lock.release()
            pause = unroutable_until.cap(until.cap(retry_pause(attempts)))
            if pause > 0:
                self._clock.sleep(pause)

    def _timed_out(self, what: str, started: float, attempts: int, why: str,
                   last_error: BaseException | None) -> exc.MessagingTimeout:
        """The error of a publish whose deadline passed: its attempts, its wait, why."""
        waited = self._clock.now() - started
        return exc.MessagingTimeout(
            f"{what}: not sent within {waited:.1f}s ({attempts} attempts): {why}",
            waited=waited, last_error=last_error)

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
            exchange.declare(conn, dl)
            self._declared.add(exchange)
        for queue in declare:
            if queue not in self._declared:
                # As the listener declares it, auto_delete included: a queue
                # declared twice with different flags is refused (406).
                queue.setup(conn, dl)
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
        :data:`~rabbit_ha_driver.rpc.receipts.CONFIRM_WINDOW` receipts wait
        at a time: beyond that the oldest are settled before the next write,
        and a keeper thread settles the rest once publishing pauses.
        ``on_settled(receipt)`` is called once it is settled, in whichever
        thread settled it.
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
            self._receipts.keep(receipt)
        return receipt

    def settle_all(self, timeout: float | None = None) -> list[Receipt]:
        """Settle every outstanding receipt; returns those that failed.

        ``timeout`` bounds the whole batch, not each receipt: once it has
        passed, the receipts left get no time to wait for their confirm.
        """
        return self._receipts.settle_all(timeout)

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
        for receipt in self._receipts.close(CLOSE_SETTLE):
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

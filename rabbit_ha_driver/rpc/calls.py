"""One call's request on its way: sent, re-sent when its fate is uncertain, answered.

How this works. A call publishes its request without waiting for the broker's
confirm and waits for the reply straight away (the reply says more than the
confirm). The confirm is read later by whoever reads the publishing
connection, and :class:`CallSender` learns the request's fate from it:

* confirmed: nothing to do, the reply comes;
* returned (no queue bound) or nacked: the broker provably did not take it;
  the publisher sends it again at once, by its own rules, until the call's
  deadline;
* *uncertain*: the connection died after the request was written and before
  its confirm. The request may or may not have reached a queue. Then the call
  waits a short grace for its reply (:class:`ResendRule`) and, if none came,
  sends the *same* request again: same ``_msg_id``, same ``_unique_id``, on a
  new connection. A server that already ran it answers the copy from its
  cache of recent replies instead of running it again (see
  :mod:`rabbit_ha_driver.rpc.listener`); a server still running it drops
  the copy. oslo.messaging's rabbit driver re-sends such a publish after
  reconnecting, so without this a node kill would lose calls it does not.

The grace is ``rpc_resend_uncertain_after`` seconds, but never more than half
the time the call has left, so a call that became uncertain late still has
time for the copy and its reply; no re-send is scheduled past the call's
deadline, and at most :data:`MAX_UNCERTAIN_RESENDS` are made per call (each
needs a connection to die again). Nothing here waits past the deadline.

:class:`RPCClient.call <rabbit_ha_driver.rpc.client.RPCClient.call>` and the
oslo.messaging driver's call both go through :class:`CallSender`; they differ
only in how they encode the request and which errors they raise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.clock import Clock
from rabbit_ha_driver.events import CallCompleted, CallTimedOut, EventBus, RequestResent
from rabbit_ha_driver.rpc import envelope
from rabbit_ha_driver.rpc.envelope import ExchangeSpec
from rabbit_ha_driver.rpc.replies import PendingCall, ReplyWaiters
from rabbit_ha_driver.settings import Settings

if TYPE_CHECKING:
    from rabbit_ha_driver.rpc.publisher import Publisher
    from rabbit_ha_driver.rpc.receipts import Receipt
    from rabbit_ha_driver.rpc.transport import RPCTransport

LOG = logging.getLogger(__name__)

#: The most times one call's request is sent again because its fate was
#: uncertain (a bound, not a target: each one needs another connection loss).
MAX_UNCERTAIN_RESENDS = 3


@dataclasses.dataclass(frozen=True)
class ResendRule:
    """When a request whose fate is uncertain is sent again; a pure value.

    ``after`` is the grace in seconds without a reply (0: never re-sent, the
    call waits for a reply that may not come), ``limit`` the most re-sends of
    one call.
    """

    after: float
    limit: int = MAX_UNCERTAIN_RESENDS

    @classmethod
    def of(cls, settings: Settings) -> ResendRule:
        return cls(settings.rpc_resend_uncertain_after)

    def resend_at(self, uncertain_at: float, deadline: float, resends: int) -> float | None:
        """When to send again if no reply came, for a request that became
        uncertain at ``uncertain_at``; None if it is not sent again."""
        if self.after <= 0 or resends >= self.limit:
            return None
        left = deadline - uncertain_at
        if left <= 0:
            return None
        return uncertain_at + min(self.after, left / 2)

    def why_not(self, uncertain_at: float, deadline: float, resends: int) -> str:
        """Why :meth:`resend_at` said None, for the log."""
        if self.after <= 0:
            return "rpc_resend_uncertain_after is 0"
        if resends >= self.limit:
            return f"already sent again {resends} times"
        return "no time left before the call's deadline"


class CallSender:
    """Sends one call's request and sends it again by the rules above.

    ``send_by`` bounds publishing (default: the call's deadline); the
    request's TTL runs to it. ``reply_q`` (the queue the request names for
    its reply) also goes in the AMQP ``reply_to`` property, with the
    ``msg_id`` as ``correlation_id``, so a server that refuses a body it
    cannot read (a compression bomb) can still answer with the reason.
    Use :meth:`send` once, then :meth:`wait`.
    """

    def __init__(self, publisher: Publisher, waiters: ReplyWaiters, call: PendingCall,
                 body: bytes, exchange: ExchangeSpec, routing_key: str, *, what: str,
                 rule: ResendRule, clock: Clock, events: EventBus | None = None,
                 persistent: bool = False, send_by: float | None = None,
                 retry_unroutable: float | None = None, reply_q: str | None = None) -> None:
        self.publisher = publisher
        self.waiters = waiters
        self.call = call
        self.what = what
        self.rule = rule
        self._clock = clock
        self._events = events
        self._body = body
        self._exchange = exchange
        self._key = routing_key
        self._persistent = persistent
        self._retry_unroutable = retry_unroutable
        # Also in the AMQP properties, for a server that cannot read the body.
        self._answer_to = (call.msg_id, reply_q) if reply_q else None
        self.send_by = min(call.deadline, send_by if send_by is not None else call.deadline)
        #: How many times the request was sent again because its fate was uncertain.
        self.resends = 0

    def __repr__(self) -> str:
        return f"<CallSender {self.what} msg_id {self.call.msg_id} resends={self.resends}>"

    def send(self, *, wait_confirm: bool = False) -> bool:
        """Send the request; with ``wait_confirm``, wait for the broker's confirm.

        Returns False only with ``wait_confirm``, when no queue took the
        request within ``retry_unroutable``. Raises what
        :meth:`Publisher.publish` raises, except ConnectionLost: a request
        whose fate is uncertain is waited for and sent again by the rule.
        """
        if not wait_confirm:
            self._publish()
            return True
        try:
            return self.publisher.publish(
                self._body, self._exchange, self._key, deadline=self.send_by, what=self.what,
                ttl=True, persistent=self._persistent, retry_unroutable=self._retry_unroutable,
                answer_to=self._answer_to)
        except exc.ConnectionLost as error:
            self._uncertain(error)
            return True

    def wait(self) -> Any:
        """The reply's result; raises what :meth:`ReplyWaiters.wait` raises."""
        return self.waiters.wait(self.call, self._resend)

    def _publish(self) -> None:
        # Written now, confirmed later: _settled() hears how it went.
        with contextlib.suppress(exc.ConnectionLost):  # handled by _settled
            self.publisher.publish_async(
                self._body, self._exchange, self._key, deadline=self.send_by, what=self.what,
                ttl=True, persistent=self._persistent, retry_unroutable=self._retry_unroutable,
                on_settled=self._settled, answer_to=self._answer_to)

    def _settled(self, receipt: Receipt) -> None:
        """The request's fate, in whichever thread read its confirm."""
        error = receipt.error
        if isinstance(error, exc.ConnectionLost):
            self._uncertain(error)
        elif error is not None:
            LOG.error("%s: the request was not delivered: %s", self.what, error)
        elif not receipt.sent:
            LOG.error("%s: the request was not delivered: no queue took it", self.what)

    def _uncertain(self, error: BaseException) -> None:
        now = self._clock.now()
        msg_id = self.call.msg_id
        at = self.rule.resend_at(now, self.send_by, self.resends)
        if at is None:
            LOG.warning("%s: %s; the request may have arrived, waiting for its reply "
                        "(msg_id %s; not sent again: %s)", self.what, error, msg_id,
                        self.rule.why_not(now, self.send_by, self.resends))
            return
        if self.waiters.resend_at(msg_id, at):
            LOG.warning("%s: %s; the request may have arrived: sending it again in %.2fs "
                        "unless its reply comes first (msg_id %s)", self.what, error,
                        at - now, msg_id)

    def _resend(self) -> None:
        """No reply within the grace after an uncertain publish: the same request again."""
        if self.resends >= self.rule.limit or self._clock.now() >= self.send_by:
            return
        self.resends += 1
        LOG.info("%s: no reply after its request's fate became uncertain; sending the "
                 "request again (msg_id %s, re-send %d)", self.what, self.call.msg_id,
                 self.resends)
        if self._events is not None:
            self._events.emit(RequestResent(*self.publisher.where(), self.call.msg_id,
                                            self.resends))
        self._publish()


class OutgoingCall:
    """One call on ``transport``, from registering for its reply to the reply.

    Registers for the reply at once (``timeout`` bounds the whole call);
    encode the request naming :attr:`msg_id` and :attr:`reply_q`, then
    :meth:`send` it and :meth:`wait` for the result. Use it as a context
    manager: on the way out the call is forgotten (a late reply is dropped)
    and reported on the transport's event bus: ``CallTimedOut`` when the
    error leaving the block is one of ``timeouts`` (the caller's own timeout
    errors, after any translation), else ``CallCompleted``.
    """

    def __init__(self, transport: RPCTransport, what: str, timeout: float, *,
                 call_monitor_timeout: float | None = None,
                 timeouts: tuple[type[BaseException], ...] = (exc.MessagingTimeout,)) -> None:
        self.transport = transport
        self.what = what
        self.timeout = timeout
        self._timeouts = timeouts
        self._clock = transport.clock
        self.started = self._clock.now()
        self.msg_id = envelope.new_id()
        self.replies = transport.reply_listener
        self.pending = transport.waiters.register(
            self.msg_id, timeout, call_monitor_timeout, what=f"the reply to {what}")
        self._sender: CallSender | None = None

    def __repr__(self) -> str:
        return f"<OutgoingCall {self.what} msg_id {self.msg_id}>"

    @property
    def reply_q(self) -> str:
        """The queue the reply comes to; the request names it."""
        return self.replies.queue

    @property
    def deadline(self) -> float:
        """When the call gives up waiting, on the transport's clock."""
        return self.pending.deadline

    def __enter__(self) -> OutgoingCall:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        transport = self.transport
        transport.waiters.discard(self.msg_id)
        where = transport.publisher.where()
        if error is None:
            transport.events.emit(CallCompleted(*where, self._clock.now() - self.started, True))
        elif isinstance(error, self._timeouts):
            transport.events.emit(CallTimedOut(*where, self.timeout))
        elif isinstance(error, Exception):
            transport.events.emit(CallCompleted(*where, self._clock.now() - self.started, False))

    def send(self, body: bytes, exchange: ExchangeSpec, routing_key: str, *,
             send_by: float | None = None, retry_unroutable: float | None = None,
             wait_confirm: bool = False) -> bool:
        """Start the reply queue and send the request by :class:`CallSender`'s rules.

        ``send_by`` bounds sending (default: the call's deadline);
        ``retry_unroutable`` and ``wait_confirm`` are :class:`CallSender`'s.
        Returns False only with ``wait_confirm``, when no queue took the
        request. Raises MessagingTimeout (sending did not finish by
        ``send_by``) and what :meth:`CallSender.send` raises.
        """
        transport = self.transport
        settings = transport.settings
        sender = CallSender(transport.publisher, transport.waiters, self.pending, body,
                            exchange, routing_key, what=self.what, rule=ResendRule.of(settings),
                            clock=self._clock, events=transport.events,
                            persistent=envelope.durable(settings), send_by=send_by,
                            retry_unroutable=retry_unroutable, reply_q=self.reply_q)
        self._sender = sender
        self.replies.ensure_started(sender.send_by, self.what)
        LOG.debug("CALL %s msg_id %s reply queue %s", self.what, self.msg_id, self.reply_q)
        return sender.send(wait_confirm=wait_confirm)

    def wait(self) -> Any:
        """The reply's result (the request re-sent meanwhile by the rules above).

        Raises RemoteError, MessagingTimeout, ClientClosed.
        """
        if self._sender is None:
            raise RuntimeError(f"{self.what}: wait() before send()")
        return self._sender.wait()

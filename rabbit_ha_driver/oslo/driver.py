"""The driver class oslo.messaging loads for ``rabbit-ha://`` URLs.

How this works. :class:`RabbitHADriver` reads ``[rabbit_ha]`` and the URL once
into frozen settings, then keeps three things for the life of the transport:
an :class:`~rabbit_ha_driver.rpc.transport.RPCTransport` (one publishing
connection that threads take turns on, the reply queue with its connection
and draining thread, and the table of calls waiting for replies), a second
:class:`~rabbit_ha_driver.rpc.publisher.Publisher` for the replies of its
servers, and the connection factory that gives each listener a connection of
its own.

A send computes its :class:`~rabbit_ha_driver.oslo.policy.SendBudget` first
and everything it does runs under it; errors become oslo.messaging's here,
at one boundary (:meth:`RabbitHADriver._publish` and
:meth:`RabbitHADriver._call`). A call runs on the library's own call path,
:class:`~rabbit_ha_driver.rpc.calls.OutgoingCall`, as ``RPCClient.call``
does: registered for its reply, sent, re-sent when its fate is uncertain,
waited for and reported on the event bus; a cast is published by the
transport's :class:`~rabbit_ha_driver.rpc.publisher.Publisher`, as
``RPCClient.cast`` is, with the options oslo.messaging's ``retry`` and
``transport_options`` ask for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from oslo_config import cfg
from oslo_messaging import exceptions as oslo_exc
from oslo_messaging._drivers import base

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.events import EventBus, LogSubscriber
from rabbit_ha_driver.options import from_conf
from rabbit_ha_driver.oslo import announce, exposition, upstream
from rabbit_ha_driver.oslo.incoming import OsloPollListener
from rabbit_ha_driver.oslo.policy import SendBudget, library_url, send_budget
from rabbit_ha_driver.oslo.wire import encode, remote_exception, with_context
from rabbit_ha_driver.rpc import envelope
from rabbit_ha_driver.rpc.calls import OutgoingCall
from rabbit_ha_driver.rpc.envelope import ExchangeSpec, QueueSpec
from rabbit_ha_driver.rpc.listener import PollListener, rpc_listener
from rabbit_ha_driver.rpc.publisher import Publisher
from rabbit_ha_driver.rpc.receipts import Receipt
from rabbit_ha_driver.rpc.transport import ConnectionFactory, RPCTransport, default_connection_factory
from rabbit_ha_driver.settings import Settings

LOG = logging.getLogger(__name__)


class RabbitHADriver(base.BaseDriver):
    """oslo.messaging's driver interface on this library; see :mod:`rabbit_ha_driver.oslo`.

    ``connections`` (settings -> connection factory) and ``clock`` are for
    tests, e.g. a fake broker; an oslo.messaging transport passes neither.
    """

    def __init__(
        self,
        conf: cfg.ConfigOpts,
        url: Any,
        default_exchange: str | None = None,
        allowed_remote_exmods: list[str] | None = None,
        *,
        connections: Callable[[Settings], ConnectionFactory] | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(conf, url, default_exchange, allowed_remote_exmods)
        # One rule (rabbit_ha_driver.precedence): URL query, [rabbit_ha],
        # [oslo_messaging_rabbit], defaults; every oslo.messaging option has
        # a fate (rabbit_ha_driver.oslo.upstream).
        reading = upstream.read(conf, getattr(url, "query", None) or {})
        self.settings = from_conf(conf, library_url(url, conf, query=reading.query),
                                  upstream=reading.honoured)
        self.exchange = default_exchange or envelope.DEFAULT_EXCHANGE
        self.clock = clock or REAL_CLOCK
        #: Every connection of this driver reports here (logs; attach metrics).
        self.events = EventBus()
        self.events.subscribe(LogSubscriber())
        self._exported = exposition.export(self.events, self.settings)
        #: The metrics served on ``metrics_http_port`` (shared by the drivers
        #: of the process naming that port), or None when it is unset.
        self.metrics = self._exported.metrics if self._exported else None
        self.metrics_server = self._exported.server if self._exported else None
        self._factory = (connections(self.settings) if connections is not None
                         else default_connection_factory(self.settings, events=self.events,
                                                         clock=self.clock))
        self.prefetch_size = self.settings.rabbit_qos_prefetch_count
        self._transport = RPCTransport(self.settings, exchange=self.exchange, clock=self.clock,
                                       connection_factory=self._factory, events=self.events)
        # Replies and call-monitor heartbeats of this driver's servers have
        # their own connection, so they never wait behind a cast that keeps
        # retrying while the brokers are away.
        self._replies = Publisher(self.settings, self._factory, purpose="reply-send",
                                  clock=self.clock)
        # Once per process at INFO: a service making several transports
        # from one configuration would repeat these lines for each.
        summary = (self.settings.transport_url.redacted(),
                   self.settings.heartbeat_timeout_threshold,
                   f", metrics on {self.metrics_server!r}" if self.metrics_server else "")
        level = announce.level_for((*upstream.reading_lines(reading), *map(str, summary)))
        upstream.log_reading(reading, level=level)
        LOG.log(level, "rabbit-ha driver for %s (heartbeat_timeout_threshold=%s%s)", *summary)

    def __repr__(self) -> str:
        return f"<RabbitHADriver {self.settings.transport_url.redacted()}>"

    def require_features(self, requeue: bool = False) -> None:
        """Every optional feature (requeueing notifications) is supported."""

    # -- sending ------------------------------------------------------------

    def send(self, target: Any, ctxt: Any, message: Mapping[str, Any],
             wait_for_reply: bool | None = None, timeout: float | None = None,
             call_monitor_timeout: float | None = None, retry: int | None = None,
             transport_options: Any = None) -> Any:
        """A call (``wait_for_reply``), a cast or a fanout cast to ``target``."""
        fanout = bool(target.fanout)
        if wait_for_reply and fanout:
            raise oslo_exc.InvalidTarget("A call cannot be sent to a fanout target", target)
        budget = send_budget(
            self.settings, self.clock.now(), call=bool(wait_for_reply), timeout=timeout,
            retry=retry, fanout=fanout,
            at_least_once=bool(getattr(transport_options, "at_least_once", False)))
        if fanout:
            exchange, key = envelope.fanout_exchange(self.settings, target.topic), target.topic
        else:
            exchange = envelope.topic_exchange(self.settings, target.exchange or self.exchange)
            key = f"{target.topic}.{target.server}" if target.server else target.topic
        kind = "call" if wait_for_reply else "fanout cast" if fanout else "cast"
        what = f"{kind} {message.get('method')!r} to {key}"
        if wait_for_reply:
            return self._call(ctxt, message, exchange, key, budget, call_monitor_timeout, what)
        LOG.debug("CAST %s", what)
        body = self._encode(with_context(message, ctxt), what)
        if (self.settings.cast_confirm == "background" and retry is None
                and not budget.undeliverable):
            # A sender that bounds the retries or asked to learn of
            # undeliverable messages (at_least_once) waits for the outcome.
            self._publish_async(body, exchange, key, budget, what, persistent=not fanout)
        else:
            self._publish(body, exchange, key, budget, what, persistent=not fanout)
        return None

    def _publish_async(self, body: bytes, exchange: ExchangeSpec, key: str, budget: SendBudget,
                       what: str, *, persistent: bool) -> None:
        """A cast written now and confirmed later (``cast_confirm = background``).

        Raises like :meth:`_publish` when it cannot be written; once written,
        a cast the broker returns or nacks is sent again by the same rules
        until the budget runs out, and a failure is logged. A cast whose
        confirm is lost with the connection is sent again (at least once:
        receivers drop a copy by its ``_unique_id``).
        """
        durable = persistent and envelope.durable(self.settings)

        def settled(receipt: Receipt) -> None:
            if receipt.error is not None:
                LOG.error("%s: not delivered: %s", what, receipt.error)
            elif not receipt.sent and exchange.type == "fanout":
                LOG.warning("%s reached no listener: no queue is bound to exchange %r",
                            what, exchange.name)
            elif not receipt.sent:
                LOG.error("%s: not delivered: no queue is bound to exchange %r with key %r",
                          what, exchange.name, key)

        try:
            self._transport.publisher.publish_async(
                body, exchange, key, deadline=budget.send_by, what=what, persistent=durable,
                retry_unroutable=budget.unroutable_for, retry_uncertain=True,
                on_settled=settled)
        except exc.MessagingTimeout as error:
            raise self._gave_up(error, budget) from error
        except exc.RabbitHAError as error:
            raise oslo_exc.MessageDeliveryFailure(f"{what}: {error}") from error

    def _call(self, ctxt: Any, message: Mapping[str, Any], exchange: ExchangeSpec, key: str,
              budget: SendBudget, call_monitor_timeout: float | None, what: str) -> Any:
        """A call on the library's call path, its errors made oslo.messaging's.

        :class:`~rabbit_ha_driver.rpc.calls.OutgoingCall` registers for the
        reply, sends and re-sends the request by the library's rules, waits
        for the reply and reports the call on the event bus as the library's
        own calls are (metrics; a timeout is an oslo.messaging
        ``MessagingTimeout`` leaving it). What differs from ``RPCClient.call``
        is oslo.messaging's: the request is encoded as its rabbit driver
        encodes it, sending ends by the budget's ``send_by`` (``retry``), and
        with ``at_least_once`` the confirm is awaited and a request no queue
        takes raises ``MessageUndeliverable``.
        """
        assert budget.reply_by is not None
        with OutgoingCall(self._transport, what, budget.reply_by - self.clock.now(),
                          call_monitor_timeout=call_monitor_timeout or None,
                          timeouts=(oslo_exc.MessagingTimeout,)) as call:
            body = self._encode(with_context(message, ctxt, **{
                envelope.MSG_ID: call.msg_id, envelope.REPLY_Q: call.reply_q,
                envelope.TIMEOUT: call_monitor_timeout}), what)
            try:
                sent = call.send(body, exchange, key, send_by=budget.send_by,
                                 retry_unroutable=budget.unroutable_for,
                                 wait_confirm=budget.undeliverable)
            except exc.MessagingTimeout as error:
                raise self._gave_up(error, budget) from error
            except exc.RabbitHAError as error:
                raise oslo_exc.MessageDeliveryFailure(f"{what}: {error}") from error
            if not sent:
                reason = f"{what}: no queue is bound to exchange {exchange.name!r} with key {key!r}"
                raise oslo_exc.MessageUndeliverable(exc.Unroutable(reason, reply_code=312),
                                                    exchange.name, key, body)
            try:
                return call.wait()
            except exc.MessagingTimeout as error:
                raise oslo_exc.MessagingTimeout(str(error)) from error
            except exc.RemoteError as error:
                raise remote_exception(error, self._allowed_remote_exmods) from None
            except exc.RabbitHAError as error:
                raise oslo_exc.MessageDeliveryFailure(f"{what}: {error}") from error

    def send_notification(self, target: Any, ctxt: Any, message: Mapping[str, Any],
                          version: float, retry: int | None = None) -> None:
        """Store a notification in the queue named ``target.topic`` (``<topic>.<priority>``)."""
        budget = send_budget(self.settings, self.clock.now(), call=False, retry=retry,
                             notification=True)
        name = target.exchange or self.exchange
        key = target.topic
        what = f"notification {message.get('event_type')!r} to {key}"
        body = self._encode(with_context(message, ctxt), what, wrap=version >= 2.0)
        self._publish(body, envelope.topic_exchange(self.settings, name), key, budget, what,
                      declare=(envelope.topic_queue(self.settings, name, key),))

    def _encode(self, message: Mapping[str, Any], what: str, wrap: bool = True) -> bytes:
        try:
            return encode(message, self.settings.rpc_max_message_size, wrap=wrap, what=what)
        except exc.InvalidMessage as error:
            raise oslo_exc.MessageDeliveryFailure(f"{what} not sent: {error}") from error

    def _publish(self, body: bytes, exchange: ExchangeSpec, key: str, budget: SendBudget,
                 what: str, *, persistent: bool = True,
                 declare: tuple[QueueSpec, ...] = ()) -> None:
        """Publish under ``budget``, or raise oslo.messaging's error saying why not.

        A persistent cast or notification to durable queues whose confirm is
        lost with the connection is sent again (receivers drop the copy by
        its ``_unique_id``); any other is a ``MessageDeliveryFailure``.
        """
        durable = persistent and envelope.durable(self.settings)
        try:
            sent = self._transport.publisher.publish(
                body, exchange, key, deadline=budget.send_by, what=what,
                persistent=durable, declare=declare, retry_unroutable=budget.unroutable_for,
                retry_uncertain=durable)
        except exc.MessagingTimeout as error:
            raise self._gave_up(error, budget) from error
        except exc.RabbitHAError as error:
            raise oslo_exc.MessageDeliveryFailure(f"{what}: {error}") from error
        if sent:
            return
        if exchange.type == "fanout":
            LOG.warning("%s reached no listener: no queue is bound to exchange %r",
                        what, exchange.name)
            return
        reason = f"{what}: no queue is bound to exchange {exchange.name!r} with key {key!r}"
        if budget.undeliverable:
            raise oslo_exc.MessageUndeliverable(exc.Unroutable(reason, reply_code=312),
                                                exchange.name, key, body)
        raise oslo_exc.MessageDeliveryFailure(reason)

    def _gave_up(self, error: exc.MessagingTimeout, budget: SendBudget) -> Exception:
        """A call past its deadline timed out; a send past its retries failed."""
        if budget.reply_by is not None and self.clock.now() >= budget.reply_by:
            return oslo_exc.MessagingTimeout(str(error))
        return oslo_exc.MessageDeliveryFailure(str(error))

    # -- receiving -------------------------------------------------------------

    def listen(self, target: Any, batch_size: int, batch_timeout: float | None) -> Any:
        """Requests to ``topic``, to ``topic.server`` and to the topic's fanout."""
        listener = rpc_listener(
            self.settings, target.topic, target.server,
            connection=self._factory(f"listen:{target.topic}.{target.server}"),
            publisher=self._replies, exchange=target.exchange or self.exchange,
            clock=self.clock)
        return self._start(listener, batch_size, batch_timeout)

    def listen_for_notifications(self, targets_and_priorities: Iterable[tuple[Any, str]],
                                 pool: str | None, batch_size: int,
                                 batch_timeout: float | None) -> Any:
        """Notifications from the queues ``<topic>.<priority>``, or from one queue ``pool``."""
        exchanges: dict[str, ExchangeSpec] = {}
        queues: list[QueueSpec] = []
        for target, priority in targets_and_priorities:
            name = target.exchange or self.exchange
            exchanges.setdefault(name, envelope.topic_exchange(self.settings, name))
            queues.append(envelope.topic_queue(self.settings, name, f"{target.topic}.{priority}",
                                               name=pool))
        prefetch = self.settings.rabbit_qos_prefetch_count
        if prefetch and batch_size > prefetch:
            # A batch fills only if the broker may deliver that many messages
            # before the first of them is acknowledged.
            prefetch = batch_size
        listener = PollListener(
            self.settings, self._factory(f"notify:{pool or queues[0].name}"), self._replies,
            kind="notification", exchanges=list(exchanges.values()), queues=queues,
            clock=self.clock, prefetch_size=prefetch)
        return self._start(listener, batch_size, batch_timeout)

    def _start(self, listener: PollListener, batch_size: int, batch_timeout: float | None) -> Any:
        """Subscribe (bounded in time), then hand the listener to oslo.messaging's poll loop.

        If the brokers are not reachable in time the listener goes on
        subscribing from its poll loop; a refusal retrying cannot mend
        (credentials, inequivalent queue arguments) raises at once.
        """
        limit = self.settings.connect_timeout + self.settings.request_timeout
        try:
            subscribed = listener.subscribe(self.clock.now() + limit)
        except exc.RabbitHAError as error:
            listener.cleanup()
            raise base.TransportDriverError(f"{listener!r}: {error}") from error
        if not subscribed:
            LOG.warning("%r: brokers not reachable within %.1fs; subscribing in the background",
                        listener, limit)
        return base.PollStyleListenerAdapter(OsloPollListener(listener), batch_size, batch_timeout)

    def cleanup(self) -> None:
        """Fail calls still waiting, close the connections; never hangs."""
        self._transport.close()
        self._replies.close()
        if self._exported is not None:
            self._exported.release()

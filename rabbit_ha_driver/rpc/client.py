"""Sending: calls, casts and fanout casts with deadlines, over one transport.

How this works. An :class:`RPCClient` is a cheap view on an
:class:`~rabbit_ha_driver.rpc.transport.RPCTransport` (what the clients of a
process share: the publishing connection, the reply queue) with a
:class:`~rabbit_ha_driver.rpc.target.Target` (topic, optional server, fanout)
and a timeout; :meth:`RPCClient.prepare` makes another view on the same
transport.

A call computes one absolute deadline and everything it does runs under it:
waiting for the publisher's lock, connecting, declaring the exchange,
publishing and waiting for the broker's confirm, re-sending, and waiting for
the reply (:class:`~rabbit_ha_driver.rpc.calls.OutgoingCall`). Nothing blocks
past it, also when every broker is down; the
:class:`~rabbit_ha_driver.exceptions.MessagingTimeout` says which of these it
was stuck in and why. The request carries the time left as its AMQP
``expiration`` so the broker drops it once nobody waits for the answer.

Messages are published with the mandatory flag and publisher confirms and
sent again only when the broker provably did not take them (see
:mod:`rabbit_ha_driver.rpc.publisher`). When the connection dies between
writing a call and the confirm, the request may have arrived: the call waits
a short grace for its reply and then sends the same request again, which a
server that ran it answers from its reply cache (see
:mod:`rabbit_ha_driver.rpc.calls`). A cast in that state is sent again when
its queues are durable or quorum queues (at-least-once: the server drops the
copy by its ``_unique_id``); otherwise it raises
:class:`~rabbit_ha_driver.exceptions.ConnectionLost` (its fate is unknown). A
fanout that no queue takes is retried only for a short grace (a listener
re-declaring its queue after a consumer cancel), then logged as reaching no
listener: a fanout to nobody is not an error in oslo.messaging.

Wire format and names are oslo.messaging's rabbit driver's (see
:mod:`rabbit_ha_driver.rpc.envelope` and :mod:`rabbit_ha_driver.rpc`). The
names of the modules this one grew out of are importable from here too.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from rabbit_ha_driver.rpc import envelope
from rabbit_ha_driver.rpc.calls import OutgoingCall
from rabbit_ha_driver.rpc.envelope import ExchangeSpec, durable
from rabbit_ha_driver.rpc.publisher import CLOSE_SETTLE, Publisher
from rabbit_ha_driver.rpc.receipts import CONFIRM_WINDOW, KEEPER_EXIT, KEEPER_IDLE, Receipt
from rabbit_ha_driver.rpc.target import Target, as_target
from rabbit_ha_driver.rpc.transport import (
    ConnectionFactory,
    RPCTransport,
    as_transport,
    default_connection_factory,
)
from rabbit_ha_driver.settings import Settings

__all__ = [
    "CLOSE_SETTLE",
    "CONFIRM_WINDOW",
    "KEEPER_EXIT",
    "KEEPER_IDLE",
    "ConnectionFactory",
    "Publisher",
    "RPCClient",
    "RPCTransport",
    "Receipt",
    "Target",
    "as_target",
    "as_transport",
    "default_connection_factory",
]

LOG = logging.getLogger(__name__)


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
        with OutgoingCall(transport, what, timeout,
                          call_monitor_timeout=self.call_monitor_timeout) as call:
            body = envelope.encode(
                self._message(ctxt, method, kwargs, msg_id=call.msg_id, reply_q=call.reply_q,
                              call_monitor_timeout=self.call_monitor_timeout),
                settings.rpc_max_message_size, f"request of {what}")
            exchange, key = self._route()
            # The reply tells more than the confirm: wait for it straight
            # away; the request is re-sent by the rules of
            # rabbit_ha_driver.rpc.calls meanwhile.
            call.send(body, exchange, key)
            return call.wait()

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

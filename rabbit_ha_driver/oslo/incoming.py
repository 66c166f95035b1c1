"""Receiving for oslo.messaging: a poll-style listener and its incoming messages.

How this works. oslo.messaging runs a driver's
``PollStyleListener`` in a thread of its own (``PollStyleListenerAdapter``):
it calls :meth:`OsloPollListener.poll` in a loop, hands each batch to the
server's executor, and calls ``stop()`` and ``cleanup()`` when the server
stops. :class:`OsloPollListener` passes these straight to the library's
:class:`~rabbit_ha_driver.rpc.listener.PollListener`, which already has that
shape, and wraps every message it hands out in oslo.messaging's own
incoming-message classes, so servers, dispatchers and the call monitor see
the attributes and methods they expect.

What the wrapped messages do is the library's: RPC requests are acknowledged
when handed out, before they run (at most once, as the rabbit driver does),
so ``acknowledge()`` and ``requeue()`` of a request do nothing; a
notification's ``acknowledge()`` and ``requeue()`` are carried out by the
polling thread, never by the worker that calls them. ``reply()`` never
raises; ``heartbeat()`` raises ``MessageDeliveryFailure`` when the caller's
reply queue is gone, which stops oslo.messaging's call monitor.
"""

from __future__ import annotations

import logging
from typing import Any

from oslo_messaging import exceptions as oslo_exc
from oslo_messaging._drivers import base

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.rpc.listener import (
    IncomingMessage,
    NotificationIncomingMessage,
    PollListener,
    RpcIncomingMessage,
)

LOG = logging.getLogger(__name__)


class OsloRpcIncoming(base.RpcIncomingMessage):
    """An RPC request, as oslo.messaging's RPC server handles it."""

    def __init__(self, inner: RpcIncomingMessage) -> None:
        super().__init__(inner.ctxt, inner.message, inner.msg_id)
        self.inner = inner
        self.client_timeout = inner.client_timeout
        self.unique_id = inner.unique_id

    def __repr__(self) -> str:
        return f"<OsloRpcIncoming {self.inner.request.method} {self.msg_id}>"

    def acknowledge(self) -> None:
        """Already acknowledged when the listener handed it out."""
        self.inner.acknowledge()

    def requeue(self) -> None:
        self.inner.requeue()

    def reply(self, reply: Any = None, failure: Any = None) -> None:
        """Send the result, or ``failure`` (an exception or exc_info), to the caller."""
        self.inner.reply(reply, failure)

    def heartbeat(self) -> None:
        """Tell a monitoring caller the call is still running."""
        try:
            self.inner.heartbeat()
        except exc.RabbitHAError as error:
            raise oslo_exc.MessageDeliveryFailure(f"call-monitor heartbeat not sent: {error}") from error


class OsloNotificationIncoming(base.IncomingMessage):
    """A notification, as oslo.messaging's notification dispatcher handles it."""

    def __init__(self, inner: NotificationIncomingMessage) -> None:
        super().__init__(inner.ctxt, inner.message)
        self.inner = inner
        self.unique_id = inner.unique_id

    def __repr__(self) -> str:
        return f"<OsloNotificationIncoming {self.message.get('event_type')} {self.unique_id}>"

    def acknowledge(self) -> None:
        self.inner.acknowledge()

    def requeue(self) -> None:
        self.inner.requeue()


def wrap(incoming: IncomingMessage) -> Any:
    """oslo.messaging's view of a message the library's listener handed out."""
    if isinstance(incoming, RpcIncomingMessage):
        return OsloRpcIncoming(incoming)
    if isinstance(incoming, NotificationIncomingMessage):
        return OsloNotificationIncoming(incoming)
    raise TypeError(f"unexpected incoming message {incoming!r}")


class OsloPollListener(base.PollStyleListener):
    """The library's :class:`PollListener` behind oslo.messaging's interface."""

    def __init__(self, listener: PollListener) -> None:
        # oslo.messaging caps a batch at the prefetch size when it is positive.
        super().__init__(listener.prefetch_size or -1)
        self.listener = listener

    def __repr__(self) -> str:
        return f"<OsloPollListener {self.listener!r}>"

    def poll(self, timeout: float | None = None, batch_size: int = 1,
             batch_timeout: float | None = None) -> list[Any]:
        """Up to ``batch_size`` messages; ``[]`` soon after :meth:`stop`."""
        return [wrap(m) for m in self.listener.poll(timeout, batch_size, batch_timeout)]

    def stop(self) -> None:
        self.listener.stop()

    def cleanup(self) -> None:
        """Acknowledge what workers finished, delete the fanout queue, close."""
        self.listener.cleanup()

"""The messages a :class:`~rabbit_ha_driver.rpc.listener.PollListener` hands out.

How this works. Each is a plain object around the delivery (``raw``) and its
decoded content, shaped like oslo.messaging's ``RpcIncomingMessage`` and
``IncomingMessage`` (``ctxt``, ``message``, ``reply()``, ``heartbeat()``,
``acknowledge()``, ``requeue()``). None touches a connection: settling and
replying go back to the listener that handed it out, which acknowledges on its
polling thread and replies through its reply publisher (kombu channels are
not thread-safe, and a message is often handled on a worker thread).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from rabbit_ha_driver.rpc import envelope

if TYPE_CHECKING:
    from rabbit_ha_driver.rpc.listener import PollListener

# These lines are the listener's: operators and tests filter on its logger.
LOG = logging.getLogger("rabbit_ha_driver.rpc.listener")


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
        ttl = expiration(raw)
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


def expiration(raw: Any) -> float | None:
    """A delivery's AMQP ``expiration`` in seconds (the caller's timeout), if set."""
    properties = getattr(raw, "properties", None) or {}
    try:
        seconds = int(properties.get("expiration", "")) / 1000.0
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None

"""A listener's way back to its callers: replies, call-monitor heartbeats, refusals.

How this works. Replies go to the caller's reply queue through the default
exchange, on a publishing connection of their own (a
:class:`~rabbit_ha_driver.rpc.client.Publisher`), never on the listener's.
A reply is written without waiting for its confirm; its outcome is handled
when the confirm comes (:meth:`ReplySender.publish`). A reply queue found gone
is remembered for :data:`GONE_REPLY_QUEUE_TTL` seconds, so further replies to
it are tried once instead of retried until their deadline. Refusals of
requests that could not be read are queued by the receiving callback and
sent by the polling thread (:meth:`ReplySender.send_refusals`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
from typing import Any

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.clock import Clock
from rabbit_ha_driver.rpc import envelope
from rabbit_ha_driver.rpc.incoming import RpcIncomingMessage
from rabbit_ha_driver.rpc.publisher import Publisher
from rabbit_ha_driver.rpc.receipts import Receipt
from rabbit_ha_driver.rpc.recent import Recent
from rabbit_ha_driver.rpc.reply_cache import ReplyCache
from rabbit_ha_driver.settings import Settings

# These lines are the listener's: operators and tests filter on its logger.
LOG = logging.getLogger("rabbit_ha_driver.rpc.listener")

#: How long a reply queue that took no reply is remembered as gone.
GONE_REPLY_QUEUE_TTL = 60.0
#: Longest wait to tell a caller its request was refused.
REJECTION_REPLY_TIMEOUT = 1.0


class ReplySender:
    """Replies of one listener; see the module docstring."""

    def __init__(self, settings: Settings, publisher: Publisher, reply_cache: ReplyCache,
                 clock: Clock) -> None:
        self.settings = settings
        self.reply_cache = reply_cache
        self._publisher = publisher
        self._clock = clock
        self._gone: Recent[None] = Recent(256, GONE_REPLY_QUEUE_TTL)
        self._refusals: collections.deque[tuple[str, str, str]] = collections.deque()

    def refuse(self, msg_id: str, reply_q: str, failure: str) -> None:
        """Queue a refusal (an encoded failure) for :meth:`send_refusals`."""
        self._refusals.append((msg_id, reply_q, failure))

    def send_refusals(self) -> None:
        """On the polling thread: tell each refused caller, tried once."""
        while self._refusals:
            msg_id, reply_q, failure = self._refusals.popleft()
            self.publish(
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
            LOG.warning("%r: cannot send the result of %s: %s", incoming.listener,
                        incoming.request.method, error)
            message = envelope.build_reply(
                incoming.msg_id, None,
                envelope.encode_failure(exc.InvalidMessage(f"the result was not sent: {error}")))
            body = envelope.encode(message, self.settings.rpc_max_message_size, what)
        if self.reply_cache.enabled:
            self.reply_cache.replied(incoming.msg_id, body)
        self.publish(body, incoming.reply_q, deadline=incoming.reply_deadline, what=what)

    def send_heartbeat(self, incoming: RpcIncomingMessage) -> None:
        """A call-monitor heartbeat; raises Unroutable if the reply queue is gone."""
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

    def publish(self, body: bytes, reply_q: str, *, deadline: float,
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
        if self._gone.contains(reply_q, now=now):
            retry = False

        def settled(receipt: Receipt) -> None:
            error = receipt.error
            if isinstance(error, exc.MessagingTimeout):
                if isinstance(error.last_error, exc.Unroutable):
                    self._gone.add(reply_q, now=self._clock.now())
                LOG.error("%s abandoned: %s", what, error)
            elif error is not None:
                LOG.error("%s failed: %s", what, error)
            elif not receipt.sent:
                self._gone.add(reply_q, now=self._clock.now())
                LOG.warning("%s dropped: reply queue %s does not exist", what, reply_q)

        # Raises only when not even written, after settled() reported it.
        with contextlib.suppress(exc.RabbitHAError):
            self._publisher.publish_async(
                body, "", reply_q, deadline=max(deadline, now + 0.001), what=what,
                retry_unroutable=None if retry else 0.0, retry_uncertain=True,
                on_settled=settled)

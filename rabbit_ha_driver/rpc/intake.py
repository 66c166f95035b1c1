"""What a listener does with each delivery, one class per kind of listener.

How this works. A :class:`~rabbit_ha_driver.rpc.listener.PollListener` is of
one :class:`ListenerKind`; its kind's :class:`Intake` turns a decoded delivery
into an incoming message (:meth:`Intake.build`), tells a duplicate on arrival
(:meth:`Intake.is_duplicate`), decides before handing a message out whether it
runs (:meth:`Intake.take`), and answers a delivery that could not be read
(:meth:`Intake.refused`). The listener's loop is the same for every kind.

RPC requests (:class:`RequestIntake`) are acknowledged before they run (at
most once, as oslo.messaging does); a call whose ``_msg_id`` ran lately is
told apart by the reply cache (:mod:`rabbit_ha_driver.rpc.reply_cache`): a
copy of one still running is dropped, a copy of one that replied gets the same
reply again. Casts are told apart by ``_unique_id`` among the last few this
listener took. A request that cannot be read is answered with the reason at
once when it still names its caller. Notifications
(:class:`NotificationIntake`) are acknowledged after they were handled, and
nobody waits for an answer.
"""

from __future__ import annotations

import abc
import enum
import logging
import re
from typing import TYPE_CHECKING, Any, ClassVar

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.clock import Clock
from rabbit_ha_driver.connection import Connection
from rabbit_ha_driver.events import DuplicateRequest
from rabbit_ha_driver.rpc import envelope
from rabbit_ha_driver.rpc.incoming import (
    IncomingMessage,
    NotificationIncomingMessage,
    RpcIncomingMessage,
)
from rabbit_ha_driver.rpc.recent import Recent
from rabbit_ha_driver.rpc.reply_cache import RUNNING
from rabbit_ha_driver.rpc.reply_sender import ReplySender

if TYPE_CHECKING:
    from rabbit_ha_driver.rpc.listener import PollListener

# These lines are the listener's: operators and tests filter on its logger.
LOG = logging.getLogger("rabbit_ha_driver.rpc.listener")


class ListenerKind(str, enum.Enum):
    """What a listener consumes. A ``str``: it equals its old spelling (``"rpc"``)."""

    RPC = "rpc"
    NOTIFICATION = "notification"

    @classmethod
    def of(cls, kind: str) -> ListenerKind:
        """The kind named ``kind`` (a member or its value); ValueError if none."""
        try:
            return cls(kind)
        except ValueError:
            raise ValueError(f"unknown listener kind {kind!r}") from None


class Intake(abc.ABC):
    """The kind-specific part of a listener; see the module docstring."""

    kind: ClassVar[ListenerKind]

    def __init__(self, owner: PollListener, connection: Connection, seen: Recent[None],
                 replies: ReplySender, clock: Clock) -> None:
        self.owner = owner
        self._conn = connection
        self._seen = seen
        self._replies = replies
        self._clock = clock

    @abc.abstractmethod
    def build(self, raw: Any, inner: dict[str, Any]) -> IncomingMessage:
        """The incoming message of a decoded delivery; raises InvalidMessage."""

    def is_duplicate(self, incoming: IncomingMessage) -> bool:
        """Whether a delivery just arrived is a copy of one taken lately."""
        uid = incoming.unique_id
        return bool(uid) and uid in self._seen

    def take(self, incoming: IncomingMessage) -> bool:
        """Whether to hand ``incoming`` out; it may be acknowledged or answered here."""
        return True

    def refused(self, raw: Any, error: exc.InvalidMessage) -> None:  # noqa: B027 - a hook
        """A delivery that could not be read was rejected; tell whoever waits."""


class NotificationIntake(Intake):
    """Notifications: handed out as they come, acknowledged once handled."""

    kind = ListenerKind.NOTIFICATION

    def build(self, raw: Any, inner: dict[str, Any]) -> IncomingMessage:
        return NotificationIncomingMessage(self.owner, raw, envelope.parse_notification(inner))


_ID = re.compile(r"[A-Za-z0-9_.:-]{1,255}")


def answer_to(raw: Any) -> tuple[str | None, str | None]:
    """``(msg_id, reply_q)`` from a request's AMQP ``correlation_id`` and
    ``reply_to``, which the library's callers set beside the body's: the one
    way to answer a body that cannot be read (compressed past the limit)."""
    properties = getattr(raw, "properties", None) or {}
    msg_id, reply_q = properties.get("correlation_id"), properties.get("reply_to")
    if isinstance(msg_id, str) and isinstance(reply_q, str) \
            and _ID.fullmatch(msg_id) and _ID.fullmatch(reply_q):
        return msg_id, reply_q
    return None, None


class RequestIntake(Intake):
    """RPC requests: acknowledged before they run, repeats answered once."""

    kind = ListenerKind.RPC

    def build(self, raw: Any, inner: dict[str, Any]) -> IncomingMessage:
        request = envelope.parse_request(inner)
        if request.msg_id:
            LOG.debug("request %s for %s, reply to %s", request.msg_id,
                      request.method, request.reply_q)
        return RpcIncomingMessage(self.owner, raw, request, self._clock.now())

    def _cached_call(self, incoming: IncomingMessage) -> bool:
        """Whether a repeat of this request is told apart by its msg_id (the reply cache)."""
        return (isinstance(incoming, RpcIncomingMessage) and bool(incoming.msg_id)
                and incoming.request.wants_reply and self._replies.reply_cache.enabled)

    def is_duplicate(self, incoming: IncomingMessage) -> bool:
        return not self._cached_call(incoming) and super().is_duplicate(incoming)

    def take(self, incoming: IncomingMessage) -> bool:
        """Acknowledge a request before it runs; False if it must not run."""
        if isinstance(incoming, RpcIncomingMessage) and self._cached_call(incoming):
            return self._take_call(incoming)
        uid = incoming.unique_id
        if uid and uid in self._seen:
            LOG.info("%r: dropping duplicate request %s", self.owner, uid)
            self._conn.ack(incoming.raw)
            return False
        if not self._ack_before_running(incoming):
            return False
        if uid:
            self._seen.add(uid)
        return True

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
        cache = self._replies.reply_cache
        known = cache.seen(msg_id)
        if known is None:
            if not self._ack_before_running(incoming):
                return False
            cache.running(msg_id)
            return True
        self._conn.ack(incoming.raw)
        answered = known is not RUNNING
        self._conn.events.emit(DuplicateRequest(self._conn.name, msg_id, answered))
        if known is RUNNING:
            LOG.info("%r: request %s for %s arrived again while it runs; dropping the copy "
                     "(its reply follows)", self.owner, msg_id, incoming.request.method)
            return False
        assert isinstance(known, bytes) and incoming.reply_q
        LOG.info("%r: request %s for %s arrived again after it ran; answering the copy from "
                 "the reply cache, not running it again", self.owner, msg_id,
                 incoming.request.method)
        self._replies.publish(known, incoming.reply_q, deadline=incoming.reply_deadline,
                              what=f"cached reply to {incoming.request.method} {msg_id}")
        return False

    def refused(self, raw: Any, error: exc.InvalidMessage) -> None:
        """Answer the caller at once, when the delivery still names one."""
        msg_id, reply_q = ((error.msg_id, error.reply_q)
                           if isinstance(error, exc.BadRequest) else (None, None))
        if not (msg_id and reply_q):
            msg_id, reply_q = answer_to(raw)
        if not (msg_id and reply_q) and isinstance(raw.body, bytes | str) \
                and not getattr(raw, "compression", None):
            msg_id, reply_q = envelope.sniff_ids(raw.body)
        if msg_id and reply_q:
            self._replies.refuse(msg_id, reply_q, envelope.encode_failure(error))


#: The intake of each kind of listener.
INTAKES: dict[ListenerKind, type[Intake]] = {
    ListenerKind.RPC: RequestIntake,
    ListenerKind.NOTIFICATION: NotificationIntake,
}

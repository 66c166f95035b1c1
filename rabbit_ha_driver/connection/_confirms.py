"""Publisher confirms of one channel, kept by sequence number.

How this works. After ``confirm.select`` the broker numbers the messages
published on a channel 1, 2, 3... and answers each with ``basic.ack`` or
``basic.nack`` carrying that number, possibly for several at once
(``multiple``: every number up to it). A mandatory message that no queue
takes comes back first as ``basic.return``, then is acked. So a publisher
need not wait for each confirm before sending the next message: it writes,
gets a :class:`Pending` for the message's number, and learns its fate when
the confirm is read, whoever reads it.

A returned message is told apart from the others by its ``message_id``
property, which :class:`ConfirmTracker` hands out (``<channel prefix>.<n>``)
when the publisher did not set one. When the channel or connection goes,
every message still waiting is marked :attr:`Outcome.LOST`: it may or may not
have reached a queue. When the *broker* closed the channel over a publish (a
missing exchange), the connection finds out which exchange is missing and
:func:`settle_after_refusal` decides each message's fate: the oldest one to
that exchange is the refused one (:attr:`Outcome.REFUSED`); the broker
handles a channel's methods in order and drops what follows the refused one
unread (:attr:`Outcome.DROPPED`, safe to send again); what came before may
have been taken (:attr:`Outcome.LOST`).

Nothing here reads or writes: the connection feeds the broker's answers in
(:meth:`ConfirmTracker.on_ack`, ``on_nack``, ``on_return``) and reads frames
until the pendings it waits for are settled.
"""

from __future__ import annotations

import enum
import itertools
import uuid
from typing import Any

_channel_ids = itertools.count(1)


class Outcome(enum.Enum):
    """What became of a published message."""

    ACKED = "acked"
    """The broker took responsibility for it."""
    RETURNED = "returned"
    """No queue took it (``basic.return``, then acked)."""
    NACKED = "nacked"
    """The broker refused it."""
    LOST = "lost"
    """The channel closed before the confirm: it may or may not have arrived."""
    REFUSED = "refused"
    """The broker closed the channel over this publish (404: no such exchange)."""
    DROPPED = "dropped"
    """Written after a message the broker refused on the same channel: dropped unread."""


class Pending:
    """One published message waiting for its confirm."""

    __slots__ = ("at", "closed_by", "exchange", "message_id", "outcome", "reply_code",
                 "reply_text", "seq")

    def __init__(self, seq: int, message_id: str | None, exchange: str | None = None,
                 at: float = 0.0) -> None:
        self.seq = seq
        #: When it was written (the connection's clock).
        self.at = at
        self.message_id = message_id
        self.exchange = exchange
        self.outcome: Outcome | None = None
        self.reply_code = 0
        self.reply_text = ""
        #: The broker's reason when it closed the channel before the confirm.
        self.closed_by: Any = None

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def __repr__(self) -> str:
        return f"<Pending #{self.seq} {self.outcome.value if self.outcome else 'waiting'}>"


def settled(outcome: Outcome) -> Pending:
    """A pending that is already decided (a transport without confirms)."""
    pending = Pending(0, None)
    pending.outcome = outcome
    return pending


class ConfirmTracker:
    """The unconfirmed messages of one channel, oldest first."""

    def __init__(self) -> None:
        self._prefix = f"rha{next(_channel_ids)}-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self._waiting: dict[int, Pending] = {}
        # Waiting messages by message_id, oldest first (an id set by the
        # publisher may repeat; RabbitMQ returns messages in publish order).
        self._by_id: dict[str, list[Pending]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def next_message_id(self) -> str:
        """The ``message_id`` the next message should carry to be recognised if returned."""
        return f"{self._prefix}.{self._seq + 1}"

    def published(self, message_id: str | None, exchange: str | None = None,
                  at: float = 0.0) -> Pending:
        """Record the message just written (at ``at``); its confirm number is the next one."""
        self._seq += 1
        pending = Pending(self._seq, message_id, exchange, at)
        self._waiting[self._seq] = pending
        if message_id is not None:
            self._by_id.setdefault(message_id, []).append(pending)
        return pending

    def oldest_at(self) -> float | None:
        """When the oldest message still waiting for its confirm was written."""
        return min((p.at for p in self._waiting.values()), default=None)

    def on_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self._settle(delivery_tag, multiple, Outcome.ACKED)

    def on_nack(self, delivery_tag: int, multiple: bool = False) -> None:
        self._settle(delivery_tag, multiple, Outcome.NACKED)

    def on_return(self, reply_code: int, reply_text: str, properties: dict[str, Any]) -> bool:
        """Note that the message with these properties came back; False if not ours."""
        same_id = self._by_id.get(properties.get("message_id") or "", ())
        pending = next((p for p in same_id if not p.done), None)
        if pending is None:
            return False
        pending.reply_code, pending.reply_text = int(reply_code or 312), str(reply_text)
        pending.outcome = Outcome.RETURNED  # final once its ack arrives
        return True

    def _settle(self, tag: int, multiple: bool, outcome: Outcome) -> None:
        waiting = self._waiting
        if multiple:
            tags = list(itertools.takewhile(lambda seq: seq <= tag, waiting))
        else:
            tags = [tag] if tag in waiting else []
        for seq in tags:
            pending = waiting.pop(seq)
            if pending.message_id is not None:
                self._forget_id(pending)
            # A nack overrides a return; an ack leaves a return standing.
            if pending.outcome is None or outcome is Outcome.NACKED:
                pending.outcome = outcome

    def _forget_id(self, pending: Pending) -> None:
        assert pending.message_id is not None
        same_id = self._by_id.get(pending.message_id)
        if same_id is None:
            return
        same_id.remove(pending)
        if not same_id:
            del self._by_id[pending.message_id]

    def lose_all(self, close: Any = None) -> int:
        """The channel is gone: every waiting message's fate is unknown.

        A message already returned stays returned (the broker did not take
        it, so it is safe to send again). ``close`` is the broker's reason
        when the broker closed the channel (a :class:`~._channel.BrokerClose`).
        Returns how many were lost.
        """
        lost = self.take_waiting()
        settle_after_refusal(lost, close, None)
        return len(lost)

    def take_waiting(self) -> list[Pending]:
        """Forget the waiting messages, still unsettled: whoever takes them settles them."""
        waiting = [p for p in self._waiting.values() if p.outcome is None]
        self._waiting.clear()
        self._by_id.clear()
        return waiting


def settle_after_refusal(waiting: list[Pending], close: Any, refused_exchange: str | None) -> None:
    """Settle the messages that waited on a channel the broker closed.

    ``refused_exchange``: the exchange found missing after a close over a
    publish, or None when nobody knows which message was refused (then
    every one is lost: it may or may not have been taken).
    """
    refused = None
    if refused_exchange is not None:
        refused = min((p for p in waiting if p.exchange == refused_exchange),
                      key=lambda p: p.seq, default=None)
    for pending in waiting:
        if pending.done:
            continue
        pending.closed_by = close
        if refused is None or pending.seq < refused.seq:
            pending.outcome = Outcome.LOST
        elif pending is refused:
            pending.outcome = Outcome.REFUSED
            pending.reply_code = getattr(close, "reply_code", 404)
            pending.reply_text = getattr(close, "reply_text", "")
        else:
            pending.outcome = Outcome.DROPPED

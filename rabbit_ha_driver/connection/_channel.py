"""One AMQP channel of the HA connection, and what happens when the broker closes it.

How this works. RabbitMQ can close a *channel* and keep the connection: a
consumer held a delivery past ``consumer_timeout`` (406), an ack named an
unknown delivery tag (406), a publish named a missing exchange (404), an
operation was refused (403, 405, 406). py-amqp answers ``channel.close-ok``
and then silently opens the same channel id again, with no confirm mode, no
QoS and no consumers: a connection that looks healthy and no longer
consumes or confirms. The library decides this in one place instead:

* :class:`RecoverableChannel` answers ``close-ok``, releases the channel
  (never reopens it), records the broker's reason as a :class:`BrokerClose`
  and raises py-amqp's error to whoever was reading.
* The connection sees the error (in a read, a write's read-back, a confirm
  wait or a synchronous request) and restores a *new* channel object:
  confirm mode, QoS, the recorded declarations and consumers. Deliveries of
  the old channel keep their old channel object, so an ack of one is never
  written on its successor (the broker redelivers them).
* Every message still waiting for a confirm on the closed channel is settled
  ``LOST`` with the broker's reason: whoever published it decides by the
  resend rules. The thread that happened to read the close is not blamed
  for it unless the close names the very request that thread made
  (:func:`concerns`).

:class:`ChannelLife` is the channel's lifecycle: one enum and its allowed
moves, kept by the connection for its current channel and shown in its
``repr``.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable
from typing import Any

import amqp.exceptions
from amqp import spec
from kombu.transport import pyamqp as kombu_pyamqp

from rabbit_ha_driver.connection._inbound import AMQPMessage

LOG = logging.getLogger(__name__)


class ChannelState(enum.Enum):
    """Lifecycle of the connection's channel."""

    NONE = "none"                  # no channel (no connection, or torn down)
    OPENING = "opening"            # channel.open, confirm.select, QoS, replay under way
    OPEN = "open"                  # fully restored: confirm mode, QoS, consumers
    BROKER_CLOSED = "broker-closed"  # the broker closed it; the connection is up


#: Allowed moves; anything else is a bug and raises.
CHANNEL_TRANSITIONS: dict[ChannelState, frozenset[ChannelState]] = {
    ChannelState.NONE: frozenset({ChannelState.OPENING}),
    ChannelState.OPENING: frozenset({ChannelState.OPEN, ChannelState.BROKER_CLOSED, ChannelState.NONE}),
    ChannelState.OPEN: frozenset({ChannelState.BROKER_CLOSED, ChannelState.NONE, ChannelState.OPENING}),
    ChannelState.BROKER_CLOSED: frozenset({ChannelState.OPENING, ChannelState.NONE}),
}


@dataclasses.dataclass(frozen=True)
class BrokerClose:
    """Why the broker closed a channel: its reply and the method it blamed."""

    reply_code: int
    reply_text: str
    method: str | None = None
    """``basic.publish``...; None when the broker named no method (a timeout)."""

    def __str__(self) -> str:
        blamed = f" ({self.method})" if self.method else ""
        return f"{self.reply_code} {self.reply_text}{blamed}"


def method_name(method_sig: Any) -> str | None:
    """``(60, 40)`` -> ``"basic.publish"``; None for ``(0, 0)`` or an unknown pair."""
    try:
        name = amqp.exceptions.METHOD_NAME_MAP.get(tuple(method_sig))
    except TypeError:
        return None
    return name.lower() if name else None


def method_sig(name: str) -> tuple[int, int] | None:
    """``"basic.publish"`` -> ``(60, 40)``; None for a name py-amqp does not know."""
    for sig, known in amqp.exceptions.METHOD_NAME_MAP.items():
        if known.lower() == name:
            return sig
    return None


def close_of(error: BaseException) -> BrokerClose | None:
    """The :class:`BrokerClose` a channel-level broker error stands for, else None."""
    if not isinstance(error, amqp.exceptions.AMQPError) or isinstance(error, amqp.exceptions.ConnectionError):
        return None
    code = getattr(error, "reply_code", None)
    if not isinstance(code, int) or not code:
        return None
    return BrokerClose(code, str(getattr(error, "reply_text", "") or ""),
                       method_name(getattr(error, "method_sig", None)))


#: Closes that may concern any of several writers at once: publishes are
#: pipelined (the close cannot tell whose message it was) and acks are
#: written without waiting for an answer.
_SHARED_METHODS = frozenset({"basic.publish", "basic.ack", "basic.reject", "basic.nack"})


def concerns(close: BrokerClose, operation: str) -> bool:
    """Whether ``close`` is the broker's answer to ``operation`` itself.

    Only then may the thread running ``operation`` be told of it (a refused
    declare, a consume of a missing queue). A close that blames another
    method, none at all (a consumer timeout) or a pipelined one (a publish,
    an ack) is a fault of the channel: it is restored and the operation
    goes on.
    """
    return close.method == operation and operation not in _SHARED_METHODS


class RecoverableChannel(kombu_pyamqp.Channel):
    """kombu's py-amqp channel, released (never reopened) when the broker closes it."""

    #: Deliveries keep a compressed body compressed (see connection.inbound).
    Message = AMQPMessage

    broker_close: BrokerClose | None = None
    #: Called with the channel and the close, before the error is raised.
    on_broker_close: Callable[[Any, BrokerClose], None] | None = None

    def _on_close(self, reply_code: int, reply_text: str, class_id: int, method_id: int) -> None:
        self.send_method(spec.Channel.CloseOk)
        closing = self.is_closing or (self.connection is not None and self.connection.is_closing)
        error = amqp.exceptions.error_for_code(
            reply_code, reply_text, (class_id, method_id), amqp.exceptions.ChannelError)
        close = BrokerClose(int(reply_code), str(reply_text), method_name((class_id, method_id)))
        self.broker_close = close
        # close-ok is sent: the broker has forgotten this id, so it can be
        # used again by a new channel object. This one is done.
        self.collect()
        if closing:
            return
        listener = self.on_broker_close
        if listener is not None:
            listener(self, close)
        raise error


class ChannelLife:
    """The state of the connection's current channel, with checked moves."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.state = ChannelState.NONE
        self.generation = 0
        """How many channels were opened; a delivery remembers its channel's."""
        self.last_close: BrokerClose | None = None
        self.restores = 0

    def move(self, new: ChannelState) -> None:
        old = self.state
        if new is old:
            return
        if new not in CHANNEL_TRANSITIONS[old]:
            raise RuntimeError(f"[{self.name}] illegal channel transition {old.value} -> {new.value}")
        if new is ChannelState.OPENING:
            self.generation += 1
        self.state = new
        LOG.debug("[%s] channel %s -> %s", self.name, old.value, new.value)

    def closed_by_broker(self, close: BrokerClose) -> None:
        self.last_close = close
        if self.state is not ChannelState.NONE:
            self.move(ChannelState.BROKER_CLOSED)

    def __repr__(self) -> str:
        return f"<ChannelLife {self.state.value} #{self.generation}>"

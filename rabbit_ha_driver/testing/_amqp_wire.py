"""The wire side of the scripted broker: AMQP framing, the methods it knows, what it records.

Frames are built and parsed with py-amqp's own serializers; the framing
(type, channel, size, payload, ``0xCE``) is spelled out here. See
:mod:`rabbit_ha_driver.testing.amqp_broker`.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import TYPE_CHECKING, Any

from amqp import spec
from amqp.basic_message import Message
from amqp.serialization import dumps

if TYPE_CHECKING:
    from rabbit_ha_driver.testing._amqp_session import _ServerConnection

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = b"\xce"
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

#: Reactions to a publish (see :attr:`AmqpServer.publish_script`).
ACK, NACK, RETURN, SILENT, HOLD, DROP, BLOCK = "ack", "nack", "return", "silent", "hold", "drop", "block"

#: Methods a client sends: name and argument format (AMQP 0-9-1, section 1.4).
CLIENT_METHODS: dict[tuple[int, int], tuple[str, str, tuple[str, ...]]] = {
    spec.Connection.StartOk: ("connection.start-ok", "FsSs",
                              ("client_properties", "mechanism", "response", "locale")),
    spec.Connection.TuneOk: ("connection.tune-ok", "BlB", ("channel_max", "frame_max", "heartbeat")),
    spec.Connection.Open: ("connection.open", "ssb", ("virtual_host", "capabilities", "insist")),
    spec.Connection.Close: ("connection.close", "BsBB",
                            ("reply_code", "reply_text", "class_id", "method_id")),
    spec.Connection.CloseOk: ("connection.close-ok", "", ()),
    spec.Channel.Open: ("channel.open", "s", ("reserved",)),
    spec.Channel.Close: ("channel.close", "BsBB", ("reply_code", "reply_text", "class_id", "method_id")),
    spec.Channel.CloseOk: ("channel.close-ok", "", ()),
    spec.Channel.Flow: ("channel.flow", "b", ("active",)),
    spec.Channel.FlowOk: ("channel.flow-ok", "b", ("active",)),
    spec.Confirm.Select: ("confirm.select", "b", ("nowait",)),
    spec.Basic.Qos: ("basic.qos", "lBb", ("prefetch_size", "prefetch_count", "global")),
    spec.Exchange.Declare: ("exchange.declare", "BssbbbbbF",
                            ("reserved", "exchange", "type", "passive", "durable", "auto_delete",
                             "internal", "nowait", "arguments")),
    spec.Exchange.Delete: ("exchange.delete", "Bsbb", ("reserved", "exchange", "if_unused", "nowait")),
    spec.Queue.Declare: ("queue.declare", "BsbbbbbF",
                         ("reserved", "queue", "passive", "durable", "exclusive", "auto_delete",
                          "nowait", "arguments")),
    spec.Queue.Bind: ("queue.bind", "BsssbF",
                      ("reserved", "queue", "exchange", "routing_key", "nowait", "arguments")),
    spec.Queue.Delete: ("queue.delete", "Bsbbb", ("reserved", "queue", "if_unused", "if_empty", "nowait")),
    spec.Queue.Purge: ("queue.purge", "Bsb", ("reserved", "queue", "nowait")),
    spec.Basic.Consume: ("basic.consume", "BssbbbbF",
                         ("reserved", "queue", "consumer_tag", "no_local", "no_ack", "exclusive",
                          "nowait", "arguments")),
    spec.Basic.Cancel: ("basic.cancel", "sb", ("consumer_tag", "nowait")),
    spec.Basic.Publish: ("basic.publish", "Bssbb",
                         ("reserved", "exchange", "routing_key", "mandatory", "immediate")),
    spec.Basic.Ack: ("basic.ack", "Lb", ("delivery_tag", "multiple")),
    spec.Basic.Reject: ("basic.reject", "Lb", ("delivery_tag", "requeue")),
    spec.Basic.Nack: ("basic.nack", "Lbb", ("delivery_tag", "multiple", "requeue")),
}
_IDS = {name: sig for sig, (name, _, _) in CLIENT_METHODS.items()}


@dataclasses.dataclass
class Seen:
    """One method the server received, with its content for a publish."""

    conn: int
    channel: int
    method: str
    args: dict[str, Any]
    body: bytes | None = None
    properties: dict[str, Any] | None = None


@dataclasses.dataclass
class _Stored:
    body: bytes
    properties: dict[str, Any]
    exchange: str
    routing_key: str
    redelivered: bool = False


@dataclasses.dataclass
class _Consumer:
    conn: _ServerConnection
    channel: int
    tag: str
    queue: str
    no_ack: bool


class _Dropped(Exception):
    """The server let go of this connection."""


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + FRAME_END


def _method(channel: int, sig: tuple[int, int], fmt: str = "", args: tuple[Any, ...] = ()) -> bytes:
    return _frame(FRAME_METHOD, channel, struct.pack(">HH", *sig) + (dumps(fmt, list(args)) if fmt else b""))


def _content(channel: int, body: bytes, properties: dict[str, Any], frame_max: int) -> bytes:
    header = struct.pack(">HHQ", spec.Basic.CLASS_ID, 0, len(body)) \
        + Message(**properties)._serialize_properties()
    chunk = max(1, frame_max - 8)
    return _frame(FRAME_HEADER, channel, header) + b"".join(
        _frame(FRAME_BODY, channel, body[i:i + chunk]) for i in range(0, len(body), chunk))



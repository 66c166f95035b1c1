"""AMQP 0-9-1 frames of the two methods on every message's path, encoded directly.

How this works. py-amqp encodes every method generically: argument
signatures, a properties serializer, a shared buffer behind a lock. A
publish and an acknowledgement are the same few bytes every time, so
:func:`publish` and :func:`ack` build them with :mod:`struct` in one go and
the connection writes the result through the transport, where py-amqp's own
writer would have. The frame layout (AMQP 0-9-1, section 4.2.3): a type
octet, the channel as a short, the payload size as a long, the payload and
the end octet ``0xCE``. A message is a ``basic.publish`` method frame, a
content header frame (class, weight, body size, property flags, properties)
and body frames of at most ``frame_max - 8`` bytes each. A heartbeat is a
frame of its own type with no payload, always the same eight bytes
(:data:`HEARTBEAT_FRAME`).

Only the property types of the basic class are supported; a message with a
property this module does not know (or header values it cannot encode) gets
``None`` from :func:`publish`, and the caller falls back to py-amqp.
"""

from __future__ import annotations

import struct
from typing import Any

from amqp.serialization import dumps as amqp_dumps

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = b"\xce"

#: An AMQP heartbeat frame: type 8, channel 0, size 0, frame-end.
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"

BASIC = 60
PUBLISH = 40
ACK = 80

#: The basic class's properties in wire order with their flag bits and types
#: (``s``: short string, ``F``: table, ``o``: octet, ``T``: timestamp, left
#: to py-amqp).
PROPERTIES: tuple[tuple[str, int, str], ...] = (
    ("content_type", 1 << 15, "s"),
    ("content_encoding", 1 << 14, "s"),
    ("application_headers", 1 << 13, "F"),
    ("delivery_mode", 1 << 12, "o"),
    ("priority", 1 << 11, "o"),
    ("correlation_id", 1 << 10, "s"),
    ("reply_to", 1 << 9, "s"),
    ("expiration", 1 << 8, "s"),
    ("message_id", 1 << 7, "s"),
    ("timestamp", 1 << 6, "T"),
    ("type", 1 << 5, "s"),
    ("user_id", 1 << 4, "s"),
    ("app_id", 1 << 3, "s"),
    ("cluster_id", 1 << 2, "s"),
)
_KNOWN = {name for name, _, _ in PROPERTIES} | {"headers"}

_frame_head = struct.Struct(">BHI").pack
_publish_head = struct.Struct(">HHH").pack(BASIC, PUBLISH, 0)
_ack = struct.Struct(">BHIHHQB").pack


def _shortstr(value: Any) -> bytes:
    # bytes(12) would be twelve NUL bytes: anything but bytes is sent as its text.
    raw = bytes(value) if isinstance(value, bytes | bytearray) else str(value).encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"short string longer than 255 bytes: {raw[:40]!r}...")
    return bytes((len(raw),)) + raw


def encode_properties(properties: dict[str, Any]) -> bytes | None:
    """Property flags and list of a content header; None if one is not supported."""
    if not _KNOWN.issuperset(properties):
        return None
    flags = 0
    parts: list[bytes] = []
    for name, bit, kind in PROPERTIES:
        value = properties.get(name)
        if value is None and name == "application_headers":
            value = properties.get("headers")
        if value is None:
            continue
        flags |= bit
        if kind == "s":
            parts.append(_shortstr(value))
        elif kind == "o":
            parts.append(bytes((int(value) & 0xFF,)))
        elif kind == "T":
            return None  # py-amqp's reading of a datetime is its own
        else:
            if not value:
                flags &= ~bit
                continue
            try:
                parts.append(amqp_dumps("F", (value,)))
            except Exception:
                return None  # a header value py-amqp must judge
    return struct.pack(">H", flags) + b"".join(parts)


def publish(channel: int, frame_max: int, exchange: str, routing_key: str, body: bytes,
            properties: dict[str, Any], *, mandatory: bool = False) -> bytes | None:
    """The frames of one published message, ready to write; None to let py-amqp do it."""
    if isinstance(body, str):
        # Say how the text was encoded, as py-amqp and kombu do for a str body.
        body = body.encode("utf-8")
        if not properties.get("content_encoding"):
            properties = {**properties, "content_encoding": "utf-8"}
    props = encode_properties(properties)
    if props is None:
        return None
    method = b"".join((_publish_head, _shortstr(exchange), _shortstr(routing_key),
                       b"\x01" if mandatory else b"\x00"))
    header = struct.pack(">HHQ", BASIC, 0, len(body)) + props
    parts = [_frame_head(FRAME_METHOD, channel, len(method)), method, FRAME_END,
             _frame_head(FRAME_HEADER, channel, len(header)), header, FRAME_END]
    chunk = max(1, frame_max - 8) if frame_max else len(body) or 1
    for start in range(0, len(body), chunk):
        piece = body[start:start + chunk]
        parts += (_frame_head(FRAME_BODY, channel, len(piece)), piece, FRAME_END)
    return b"".join(parts)


def ack(channel: int, delivery_tag: int, multiple: bool = False) -> bytes:
    """The ``basic.ack`` frame of a delivery."""
    return _ack(FRAME_METHOD, channel, 13, BASIC, ACK, delivery_tag, 1 if multiple else 0) + FRAME_END

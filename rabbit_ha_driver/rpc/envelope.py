"""The former home of the wire format, kept for the names it has always provided.

How this works: what this module once held now lives in one module per
concept, and it re-exports each name from there (see ``__all__``); new code
imports from the module that owns a name:

* :mod:`rabbit_ha_driver.rpc.wire`: the JSON envelope, its keys and
  properties, size limits, message ids;
* :mod:`rabbit_ha_driver.rpc.context`: the caller's context on the wire;
* :mod:`rabbit_ha_driver.rpc.messages`: requests, replies, notifications;
* :mod:`rabbit_ha_driver.rpc.failures`: remote exceptions on the wire;
* :mod:`rabbit_ha_driver.rpc.naming`: exchange and queue names;
* :mod:`rabbit_ha_driver.rpc.topology`: the exchanges and queues the RPC
  layer declares; :mod:`rabbit_ha_driver.rpc.queue_types`: their durability
  and arguments.

:class:`~rabbit_ha_driver.exceptions.BadRequest` stays importable from here
for good: it travels on the wire as ``rabbit_ha_driver.rpc.envelope.BadRequest``
(:data:`~rabbit_ha_driver.rpc.failures.WIRE_MODULES`), and an oslo.messaging
caller that allows this module imports the class from it.
"""

from __future__ import annotations

from rabbit_ha_driver.exceptions import BadRequest
from rabbit_ha_driver.rpc.context import context_dict
from rabbit_ha_driver.rpc.failures import WIRE_MODULES, ExcInfo, decode_failure, encode_failure
from rabbit_ha_driver.rpc.messages import (
    PRIORITIES,
    Notification,
    Reply,
    Request,
    build_notification,
    build_reply,
    build_request,
    normalize_priority,
    parse_notification,
    parse_reply,
    parse_request,
)
from rabbit_ha_driver.rpc.naming import DEFAULT_EXCHANGE, reply_queue_name, unique_part
from rabbit_ha_driver.rpc.queue_types import topic_durable as durable
from rabbit_ha_driver.rpc.queue_types import topic_queue_arguments, transient_queue_arguments
from rabbit_ha_driver.rpc.topology import (
    ExchangeSpec,
    QueueSpec,
    fanout_exchange,
    fanout_queue,
    topic_exchange,
    topic_queue,
)
from rabbit_ha_driver.rpc.wire import (
    CONTENT_ENCODING,
    CONTENT_TYPE,
    CONTEXT_PREFIX,
    ENVELOPE_VERSION,
    MESSAGE_KEY,
    MSG_ID,
    REPLY_Q,
    TIMEOUT,
    UNIQUE_ID,
    VERSION_KEY,
    body_size,
    check_size,
    decode,
    encode,
    new_id,
    sniff_ids,
    to_json,
)

__all__ = [
    "CONTENT_ENCODING",
    "CONTENT_TYPE",
    "CONTEXT_PREFIX",
    "DEFAULT_EXCHANGE",
    "ENVELOPE_VERSION",
    "MESSAGE_KEY",
    "MSG_ID",
    "PRIORITIES",
    "REPLY_Q",
    "TIMEOUT",
    "UNIQUE_ID",
    "VERSION_KEY",
    "WIRE_MODULES",
    "BadRequest",
    "ExcInfo",
    "ExchangeSpec",
    "Notification",
    "QueueSpec",
    "Reply",
    "Request",
    "body_size",
    "build_notification",
    "build_reply",
    "build_request",
    "check_size",
    "context_dict",
    "decode",
    "decode_failure",
    "durable",
    "encode",
    "encode_failure",
    "fanout_exchange",
    "fanout_queue",
    "new_id",
    "normalize_priority",
    "parse_notification",
    "parse_reply",
    "parse_request",
    "reply_queue_name",
    "sniff_ids",
    "to_json",
    "topic_exchange",
    "topic_queue",
    "topic_queue_arguments",
    "transient_queue_arguments",
    "unique_part",
]

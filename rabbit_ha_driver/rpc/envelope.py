"""The wire format: oslo.messaging's rabbit message envelope, JSON only.

How this works: every message body is a JSON object, the *envelope*
``{"oslo.version": "2.0", "oslo.message": "<JSON text>"}``, whose
``oslo.message`` member is itself JSON text (encoded twice, as oslo.messaging
does). The inner object is one of three kinds:

* a request: ``method``, ``args``, optional ``namespace`` and ``version``, and
  for a call ``_msg_id``, ``_reply_q`` and ``_timeout`` (the call-monitor
  timeout, usually null); the caller's context is spread over top-level
  ``_context_<key>`` members;
* a reply: ``result``, ``failure`` (JSON text describing a remote exception, or
  null), ``ending`` (false for a call-monitor heartbeat) and ``_msg_id``;
* a notification: ``message_id``, ``publisher_id``, ``event_type``,
  ``priority``, ``payload``, ``timestamp``, plus context members.

Every kind carries ``_unique_id`` so receivers can drop duplicates. The AMQP
properties are ``content_type=application/json`` and
``content_encoding=utf-8``, as kombu's JSON serializer writes them.

Decoding is strict about what it trusts and liberal about what oslo.messaging
itself accepts: any content type other than JSON (pickle, YAML, msgpack...),
a body over the size limit (compressed, or once expanded: gzip and bz2
``kombu_compression`` bodies are expanded within the limit), text that is not JSON, a
half-formed envelope or an envelope of another major version raises
:class:`~rabbit_ha_driver.exceptions.InvalidMessage`; nothing here can run code
from the wire. A bare JSON object without envelope keys is accepted as a
version 1.0 message, as oslo.messaging accepts it (its notification driver
``messaging`` still sends that).

Remote exceptions travel in oslo.messaging's shape (``class``, ``module``,
``message``, ``tb``, ``args``, ``kwargs``) and always come back as
:class:`~rabbit_ha_driver.exceptions.RemoteError`: no module is imported and no
class is instantiated from what a peer sent.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import logging
import os
import re
import secrets
import traceback
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from rabbit_ha_driver.exceptions import (
    BadRequest,
    InvalidArguments,
    InvalidMessage,
    NoSuchMethod,
    RemoteError,
    UnsupportedVersion,
)
from rabbit_ha_driver.rpc import compression as compression_codec
from rabbit_ha_driver.rpc import queue_types
from rabbit_ha_driver.rpc.queue_manager import QueueManager
from rabbit_ha_driver.settings import Settings

LOG = logging.getLogger(__name__)

ENVELOPE_VERSION = "2.0"
VERSION_KEY = "oslo.version"
MESSAGE_KEY = "oslo.message"
CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"

MSG_ID = "_msg_id"
REPLY_Q = "_reply_q"
TIMEOUT = "_timeout"
UNIQUE_ID = "_unique_id"
CONTEXT_PREFIX = "_context_"

#: Notification priorities, as oslo.messaging names them (routing keys use
#: the lower-case form, the message body the upper-case one).
PRIORITIES = ("audit", "debug", "info", "warn", "error", "critical", "sample")

_ACCEPTED_ENCODINGS = {"", "utf-8", "utf8"}
_REMOTE_SUFFIX = "_Remote"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

#: The module an error names on the wire when it is not where the class is
#: defined: these errors were defined in the modules named here before they
#: joined :mod:`rabbit_ha_driver.exceptions`, and they travel under those
#: names still, so a caller matching ``exc_type`` and a peer of an earlier
#: release see what they saw before. Both modules still provide each class
#: (an oslo.messaging caller that allows the module imports it from there).
WIRE_MODULES: Mapping[type[BaseException], str] = {
    BadRequest: "rabbit_ha_driver.rpc.envelope",
    NoSuchMethod: "rabbit_ha_driver.rpc.server",
    UnsupportedVersion: "rabbit_ha_driver.rpc.server",
    InvalidArguments: "rabbit_ha_driver.rpc.server",
}


class _Ids:
    """32-hex-digit ids: 16 random digits per process, then a counter.

    As unique as oslo.messaging's ``uuid4().hex`` for what they are used for
    (matching replies, dropping duplicates) without asking the kernel for
    random bytes on every message. A forked child draws a new prefix.
    """

    def __init__(self) -> None:
        self.reseed()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(int.from_bytes(secrets.token_bytes(4), "big"))

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFFFFFF:016x}"


#: A fresh message id: 32 hex digits, like oslo.messaging's.
new_id = _Ids()


# -- JSON and the envelope ---------------------------------------------------

def _json_default(value: Any) -> Any:
    """Values JSON lacks, converted the way oslo.serialization does."""
    if isinstance(value, datetime.datetime):
        return value.strftime(_TIME_FORMAT)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_json(value: Any) -> str:
    """JSON text of ``value``; raises InvalidMessage naming what is not JSON."""
    try:
        return json.dumps(value, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise InvalidMessage(f"cannot encode as JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidMessage("cannot encode as JSON: nested too deeply") from exc


def _from_json(text: str | bytes, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidMessage(f"{what} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidMessage(f"{what} is nested too deeply") from exc


def check_size(size: int, limit: int, what: str) -> None:
    """Refuse a body over ``limit`` bytes (``rpc_max_message_size``)."""
    if size > limit:
        raise InvalidMessage(
            f"{what} is {size} bytes, over the limit of {limit} bytes "
            f"(rpc_max_message_size)"
        )


def body_size(body: bytes | str, limit: int) -> int:
    """Size in bytes of a body; py-amqp hands out UTF-8 bodies already decoded."""
    if isinstance(body, bytes | bytearray | memoryview):
        return len(body)
    if len(body) > limit or len(body) * 4 <= limit:
        return len(body)  # the exact byte count cannot change the verdict
    return len(body.encode("utf-8", "surrogatepass"))


def encode(message: Mapping[str, Any], max_size: int, what: str = "message") -> bytes:
    """The body to publish for ``message``: the 2.0 envelope as UTF-8 JSON."""
    envelope = {VERSION_KEY: ENVELOPE_VERSION, MESSAGE_KEY: to_json(message)}
    body = json.dumps(envelope).encode(CONTENT_ENCODING)
    check_size(len(body), max_size, what)
    return body


def _is_compatible(version: str) -> bool:
    """Same major version and no newer minor version than ours."""
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        return False
    ours_major, ours_minor = (int(p) for p in ENVELOPE_VERSION.split("."))
    return major == ours_major and minor <= ours_minor


def decode(
    body: bytes | str,
    *,
    content_type: str | None,
    content_encoding: str | None,
    headers: Mapping[str, Any] | None,
    max_size: int,
    compression: str | None = None,
) -> dict[str, Any]:
    """The inner message of a received body; raises InvalidMessage.

    Checks, in this order: size, kombu compression (``compression``, the
    header the transport kept aside, see :mod:`rabbit_ha_driver.connection.inbound`:
    the body is expanded to at most ``max_size`` bytes), content type,
    encoding, JSON, envelope. Nothing is deserialised before the content
    type is known to be JSON.
    """
    check_size(body_size(body, max_size), max_size, "received message")
    if headers and headers.get("compression"):
        # Still in the headers: something expanded the body without a bound.
        raise InvalidMessage(
            f"compressed message ({headers['compression']!r}) refused: it was not "
            f"received through the library's transports, which bound its expansion"
        )
    if compression:
        body = compression_codec.decompress(body, compression, max_size)
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != CONTENT_TYPE:
        raise InvalidMessage(
            f"content type {content_type!r} refused: only {CONTENT_TYPE} is accepted"
        )
    encoding = (content_encoding or "").strip().lower()
    if encoding not in _ACCEPTED_ENCODINGS:
        raise InvalidMessage(
            f"content encoding {content_encoding!r} refused: only utf-8 is accepted"
        )
    outer = _from_json(body, "message body")
    if not isinstance(outer, dict):
        raise InvalidMessage(f"message body is a JSON {type(outer).__name__}, not an object")
    has_version, has_message = VERSION_KEY in outer, MESSAGE_KEY in outer
    if not (has_version or has_message):
        return outer  # version 1.0: no envelope
    if not (has_version and has_message):
        raise InvalidMessage(f"malformed envelope: needs both {VERSION_KEY!r} and {MESSAGE_KEY!r}")
    version = outer[VERSION_KEY]
    if not isinstance(version, str) or not _is_compatible(version):
        raise InvalidMessage(f"envelope version {version!r} not supported (ours: {ENVELOPE_VERSION})")
    text = outer[MESSAGE_KEY]
    if not isinstance(text, str):
        raise InvalidMessage(f"malformed envelope: {MESSAGE_KEY!r} is not a JSON string")
    inner = _from_json(text, MESSAGE_KEY)
    if not isinstance(inner, dict):
        raise InvalidMessage(f"{MESSAGE_KEY!r} is a JSON {type(inner).__name__}, not an object")
    return inner


# Finding whom to tell about a body that is too large to decode. In the outer
# JSON text the inner keys appear with escaped quotes (\"_msg_id\": \"...\");
# a key nested one level deeper would show more backslashes, hence the
# look-behind. oslo.messaging writes _msg_id and _reply_q after the payload,
# so the last match is the real one.
_SNIFF = {
    key: re.compile(rb'(?<!\\)\\"' + key.encode() + rb'\\":\s*\\"([A-Za-z0-9_.:-]{1,255})\\"')
    for key in (MSG_ID, REPLY_Q)
}


def sniff_ids(body: bytes | str) -> tuple[str | None, str | None]:
    """``(msg_id, reply_q)`` of a body refused before decoding, if findable."""
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    found: list[str | None] = []
    for key in (MSG_ID, REPLY_Q):
        matches = _SNIFF[key].findall(body)
        found.append(matches[-1].decode("ascii") if matches else None)
    return found[0], found[1]


# -- context -----------------------------------------------------------------

def context_dict(ctxt: Any) -> dict[str, Any]:
    """A caller context as a dict: a Mapping, or anything with ``to_dict()``."""
    if ctxt is None:
        return {}
    if isinstance(ctxt, Mapping):
        return dict(ctxt)
    to_dict = getattr(ctxt, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    raise TypeError(f"context must be a mapping or have to_dict(), not {type(ctxt).__name__}")


def _pack_context(message: dict[str, Any], ctxt: Any) -> None:
    for key, value in context_dict(ctxt).items():
        message[f"{CONTEXT_PREFIX}{key}"] = value


def _unpack_context(message: Mapping[str, Any]) -> dict[str, Any]:
    return {k[len(CONTEXT_PREFIX):]: v for k, v in message.items()
            if isinstance(k, str) and k.startswith(CONTEXT_PREFIX)}


# -- requests ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Request:
    """A decoded RPC request (a call when ``msg_id`` and ``reply_q`` are set)."""

    method: str
    args: dict[str, Any]
    context: dict[str, Any]
    msg_id: str | None = None
    reply_q: str | None = None
    client_timeout: float | None = None
    unique_id: str | None = None
    namespace: str | None = None
    version: str | None = None

    @property
    def wants_reply(self) -> bool:
        return bool(self.msg_id and self.reply_q)

    def as_message(self) -> dict[str, Any]:
        """The user part, as oslo.messaging's dispatcher sees ``incoming.message``."""
        message: dict[str, Any] = {"method": self.method, "args": self.args}
        if self.namespace is not None:
            message["namespace"] = self.namespace
        if self.version is not None:
            message["version"] = self.version
        return message


def build_request(
    ctxt: Any,
    method: str,
    args: Mapping[str, Any],
    *,
    msg_id: str | None = None,
    reply_q: str | None = None,
    call_monitor_timeout: float | None = None,
    unique_id: str | None = None,
    namespace: str | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """The inner message of a call (with ``msg_id``/``reply_q``) or a cast."""
    message: dict[str, Any] = {"method": method, "args": dict(args)}
    if namespace is not None:
        message["namespace"] = namespace
    if version is not None:
        message["version"] = version
    if msg_id is not None:
        message[MSG_ID] = msg_id
        message[REPLY_Q] = reply_q
        message[TIMEOUT] = call_monitor_timeout
    message[UNIQUE_ID] = unique_id or new_id()
    _pack_context(message, ctxt)
    return message


def _optional_str(message: Mapping[str, Any], key: str) -> str | None:
    value = message.get(key)
    if value is None or isinstance(value, str):
        return value or None
    raise InvalidMessage(f"{key} is a {type(value).__name__}, not a string")


def parse_request(message: Mapping[str, Any]) -> Request:
    """Check and unpack a request; raises BadRequest with the caller, if known."""
    try:
        msg_id = _optional_str(message, MSG_ID)
        reply_q = _optional_str(message, REPLY_Q)
    except InvalidMessage as exc:
        raise BadRequest(str(exc)) from None

    def bad(reason: str) -> BadRequest:
        return BadRequest(reason, msg_id=msg_id, reply_q=reply_q)

    method = message.get("method")
    if not isinstance(method, str) or not method:
        raise bad(f"request has no method name (method={method!r})")
    args = message.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise bad(f"arguments of {method!r} are not an object with string keys")
    timeout = message.get(TIMEOUT)
    if timeout is not None and (isinstance(timeout, bool)
                                or not isinstance(timeout, int | float)):
        raise bad(f"{TIMEOUT} is {timeout!r}, not a number")
    try:
        client_timeout = float(timeout) if timeout else None
    except OverflowError:  # an integer of hundreds of digits is valid JSON
        raise bad(f"{TIMEOUT} is out of range") from None
    try:
        unique_id = _optional_str(message, UNIQUE_ID)
        namespace = _optional_str(message, "namespace")
        version = _optional_str(message, "version")
    except InvalidMessage as exc:
        raise bad(str(exc)) from None
    return Request(
        method=method,
        args=args,
        context=_unpack_context(message),
        msg_id=msg_id,
        reply_q=reply_q,
        client_timeout=client_timeout,
        unique_id=unique_id,
        namespace=namespace,
        version=version,
    )


# -- replies -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Reply:
    """A decoded reply; a call-monitor heartbeat when nothing is in it."""

    msg_id: str
    result: Any = None
    failure: RemoteError | None = None
    ending: bool = True
    unique_id: str | None = None

    @property
    def is_heartbeat(self) -> bool:
        return not self.ending and self.result is None and self.failure is None


def build_reply(
    msg_id: str,
    result: Any = None,
    failure: str | None = None,
    ending: bool = True,
) -> dict[str, Any]:
    """The inner message of a reply; ``failure`` is :func:`encode_failure` text."""
    return {
        "result": result,
        "failure": failure,
        "ending": ending,
        MSG_ID: msg_id,
        UNIQUE_ID: new_id(),
    }


def parse_reply(message: Mapping[str, Any]) -> Reply:
    """Check and unpack a reply; raises InvalidMessage."""
    msg_id = _optional_str(message, MSG_ID)
    if not msg_id:
        raise InvalidMessage("reply without a _msg_id")
    failure = message.get("failure")
    return Reply(
        msg_id=msg_id,
        result=message.get("result"),
        failure=decode_failure(failure) if failure else None,
        ending=bool(message.get("ending", True)),
        unique_id=_optional_str(message, UNIQUE_ID),
    )


# -- remote exceptions -------------------------------------------------------

def _jsonable(value: Any) -> Any:
    try:
        json.loads(to_json(value))
    except InvalidMessage:
        return str(value)
    return value


def encode_failure(failure: BaseException | ExcInfo) -> str:
    """JSON text describing an exception, in oslo.messaging's shape."""
    if isinstance(failure, tuple):
        exc_type, exc, tb = failure
    else:
        exc_type, exc, tb = type(failure), failure, failure.__traceback__
    if isinstance(exc, RemoteError):
        # Passing a remote error on: keep the original type and text.
        name, module, text = exc.exc_type, "", exc.value
    else:
        name, text = exc_type.__name__, str(exc)
        module = WIRE_MODULES.get(exc_type, exc_type.__module__)
        if name.endswith(_REMOTE_SUFFIX) and module.endswith(_REMOTE_SUFFIX):
            name, module = name[: -len(_REMOTE_SUFFIX)], module[: -len(_REMOTE_SUFFIX)]
    kwargs = getattr(exc, "kwargs", None)
    data = {
        "class": name,
        "module": module,
        "message": text,
        "tb": traceback.format_exception(exc_type, exc, tb),
        "args": [_jsonable(a) for a in exc.args],
        "kwargs": ({str(k): _jsonable(v) for k, v in kwargs.items()}
                   if isinstance(kwargs, dict) else {}),
    }
    return json.dumps(data)


def decode_failure(data: Any) -> RemoteError:
    """A RemoteError from a reply's ``failure``; never raises, never imports."""
    failure = data
    if isinstance(data, str):
        try:
            failure = json.loads(data)
        except (ValueError, RecursionError):
            return RemoteError("UnknownError", data[:2000])
    if not isinstance(failure, dict):
        return RemoteError("UnknownError", str(failure)[:2000])
    name = failure.get("class")
    message = failure.get("message", "")
    tb = failure.get("tb", [])
    module = failure.get("module")
    exc_type = name if isinstance(name, str) and name else "UnknownError"
    if isinstance(module, str) and module and module not in ("builtins", "exceptions"):
        exc_type = f"{module}.{exc_type}"
    text = message if isinstance(message, str) else str(message)
    trace = "".join(str(line) for line in tb) if isinstance(tb, list) else str(tb)
    return RemoteError(exc_type, text, trace)


# -- notifications -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Notification:
    """A decoded notification."""

    message_id: str
    publisher_id: str | None
    event_type: str
    priority: str
    payload: Any
    timestamp: str
    context: dict[str, Any]
    unique_id: str | None = None

    @property
    def metadata(self) -> dict[str, str]:
        """What oslo.messaging passes listeners as ``metadata``."""
        return {"message_id": self.message_id, "timestamp": self.timestamp}


def normalize_priority(priority: str) -> str:
    """``"INFO"`` -> ``"info"``; ``warning`` is ``warn``; raises ValueError."""
    value = priority.lower()
    if value == "warning":
        value = "warn"
    if value not in PRIORITIES:
        raise ValueError(f"unknown notification priority {priority!r}; "
                         f"expected one of {', '.join(PRIORITIES)}")
    return value


def build_notification(ctxt: Any, publisher_id: str, event_type: str,
                       priority: str, payload: Any) -> dict[str, Any]:
    """The inner message of a notification (priority in upper case)."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    message: dict[str, Any] = {
        "message_id": str(uuid.uuid4()),
        "publisher_id": publisher_id,
        "event_type": event_type,
        "priority": normalize_priority(priority).upper(),
        "payload": payload,
        "timestamp": str(now),
        UNIQUE_ID: new_id(),
    }
    _pack_context(message, ctxt)
    return message


def parse_notification(message: Mapping[str, Any]) -> Notification:
    """Check and unpack a notification; raises InvalidMessage."""
    fields: dict[str, str] = {}
    for key in ("event_type", "priority"):
        value = message.get(key)
        if not isinstance(value, str):
            raise InvalidMessage(f"notification without a string {key!r}")
        fields[key] = value
    # oslo.messaging's Notifier and LoggingNotificationHandler allow no publisher id.
    publisher_id = message.get("publisher_id")
    if publisher_id is not None and not isinstance(publisher_id, str):
        raise InvalidMessage("notification's 'publisher_id' is not a string")
    try:
        priority = normalize_priority(fields["priority"])
    except ValueError as exc:
        raise InvalidMessage(str(exc)) from None
    return Notification(
        message_id=str(message.get("message_id", "")),
        publisher_id=publisher_id,
        event_type=fields["event_type"],
        priority=priority,
        payload=message.get("payload"),
        timestamp=str(message.get("timestamp", "")),
        context=_unpack_context(message),
        unique_id=_optional_str(message, UNIQUE_ID),
    )


# -- names: exchanges, queues, routing keys ------------------------------------
#
# oslo.messaging's rabbit driver, for a control exchange E and a topic T:
#   call / cast       topic exchange E, routing key T, queue T
#   to one server S   topic exchange E, routing key T.S, queue T.S
#   fanout            fanout exchange T_fanout (auto-delete), one queue
#                     T_fanout_<hex> per server (x-expires), or one stream
#                     T_fanout for all (rabbit_stream_fanout)
#   reply             default exchange "", routing key = queue reply_<hex>
#   notification      topic exchange E, routing key T.<priority>, queue
#                     T.<priority> (or the pool's name)

#: oslo.messaging's default ``control_exchange``.
DEFAULT_EXCHANGE = "openstack"


@dataclasses.dataclass(frozen=True)
class ExchangeSpec:
    """An exchange to declare before using it."""

    name: str
    type: str = "topic"
    durable: bool = False
    auto_delete: bool = False


@dataclasses.dataclass(frozen=True)
class QueueSpec:
    """A queue and the binding that feeds it (see :mod:`~rabbit_ha_driver.rpc.queue_types`)."""

    name: str
    exchange: str
    routing_key: str
    durable: bool = False
    arguments: tuple[tuple[str, Any], ...] = ()
    auto_delete: bool = False
    #: Arguments of its consumer (a stream's ``x-stream-offset``).
    consumer_arguments: tuple[tuple[str, Any], ...] = ()


def durable(settings: Settings) -> bool:
    """Whether topic exchanges and queues are durable (quorum queues always are)."""
    return queue_types.topic_durable(settings)


def topic_queue_arguments(settings: Settings) -> tuple[tuple[str, Any], ...]:
    """Arguments of topic, server and notification queues, as oslo.messaging's."""
    return queue_types.topic_queue_arguments(settings)


def transient_queue_arguments(settings: Settings) -> tuple[tuple[str, Any], ...]:
    """Arguments of reply and fanout queues: deleted by the broker when unused."""
    return queue_types.transient_queue_arguments(settings)


def topic_exchange(settings: Settings, name: str) -> ExchangeSpec:
    return ExchangeSpec(name, "topic", durable=durable(settings),
                        auto_delete=settings.amqp_auto_delete)


def fanout_exchange(settings: Settings, topic: str) -> ExchangeSpec:
    return ExchangeSpec(f"{topic}_fanout", "fanout",
                        durable=queue_types.transient_durable(settings), auto_delete=True)


def topic_queue(settings: Settings, exchange: str, routing_key: str,
                name: str | None = None) -> QueueSpec:
    """A topic, server or notification queue (named after its key by default)."""
    return QueueSpec(name or routing_key, exchange, routing_key,
                     durable=durable(settings), arguments=topic_queue_arguments(settings),
                     auto_delete=settings.amqp_auto_delete)


def fanout_queue(settings: Settings, topic: str) -> QueueSpec:
    """This server's queue on the topic's fanout exchange (the topic's stream, shared)."""
    exchange = f"{topic}_fanout"
    if settings.rabbit_stream_fanout:
        return QueueSpec(exchange, exchange, topic, durable=True,
                         arguments=queue_types.stream_arguments(settings),
                         consumer_arguments=((queue_types.STREAM_OFFSET,
                                              queue_types.STREAM_START),))
    return QueueSpec(f"{topic}_fanout_{unique_part(settings)}", exchange, topic,
                     durable=queue_types.transient_durable(settings),
                     arguments=transient_queue_arguments(settings))


def unique_part(settings: Settings) -> str:
    """The unique end of a reply or fanout queue name: random, or the queue manager's."""
    if settings.use_queue_manager:
        return QueueManager(settings.hostname, settings.processname).get()
    return new_id()


def reply_queue_name(settings: Settings) -> str:
    return f"reply_{unique_part(settings)}"

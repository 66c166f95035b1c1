"""The three kinds of message inside the envelope: requests, replies, notifications.

How this works: each kind has a ``build_*`` function that makes the inner
message to send (a dict, wrapped by :func:`rabbit_ha_driver.rpc.wire.encode`)
and a ``parse_*`` function that checks a received one (unwrapped by
:func:`~rabbit_ha_driver.rpc.wire.decode`) and returns a frozen value:

* a request: ``method``, ``args``, optional ``namespace`` and ``version``, and
  for a call ``_msg_id``, ``_reply_q`` and ``_timeout`` (the call-monitor
  timeout, usually null); the caller's context is spread over top-level
  ``_context_<key>`` members (:mod:`rabbit_ha_driver.rpc.context`);
* a reply: ``result``, ``failure`` (JSON text describing a remote exception, or
  null, see :mod:`rabbit_ha_driver.rpc.failures`), ``ending`` (false for a
  call-monitor heartbeat) and ``_msg_id``;
* a notification: ``message_id``, ``publisher_id``, ``event_type``,
  ``priority``, ``payload``, ``timestamp``, plus context members.

Every kind carries ``_unique_id`` so receivers can drop duplicates. A
malformed request raises :class:`~rabbit_ha_driver.exceptions.BadRequest`
naming the caller when its ``_msg_id`` and ``_reply_q`` could be read (so it
can be told); a malformed reply or notification raises
:class:`~rabbit_ha_driver.exceptions.InvalidMessage`.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import Mapping
from typing import Any

from rabbit_ha_driver.exceptions import BadRequest, InvalidMessage, RemoteError
from rabbit_ha_driver.rpc.context import pack_context, unpack_context
from rabbit_ha_driver.rpc.failures import decode_failure
from rabbit_ha_driver.rpc.wire import MSG_ID, REPLY_Q, TIMEOUT, UNIQUE_ID, new_id

#: Notification priorities, as oslo.messaging names them (routing keys use
#: the lower-case form, the message body the upper-case one).
PRIORITIES = ("audit", "debug", "info", "warn", "error", "critical", "sample")


def _optional_str(message: Mapping[str, Any], key: str) -> str | None:
    value = message.get(key)
    if value is None or isinstance(value, str):
        return value or None
    raise InvalidMessage(f"{key} is a {type(value).__name__}, not a string")


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
    pack_context(message, ctxt)
    return message


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
        context=unpack_context(message),
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
    """The inner message of a reply; ``failure`` is
    :func:`~rabbit_ha_driver.rpc.failures.encode_failure` text."""
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
    pack_context(message, ctxt)
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
        context=unpack_context(message),
        unique_id=_optional_str(message, UNIQUE_ID),
    )

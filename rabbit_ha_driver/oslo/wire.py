"""Messages between oslo.messaging and the wire, as its rabbit driver writes them.

How this works. oslo.messaging hands a driver a message dict (``method``,
``args``, ``namespace``, ``version`` of a request; the fields of a
notification) and a context. :func:`with_context` adds what the rabbit
driver adds (``_unique_id``, ``_context_<key>`` members, and for a call
``_msg_id``, ``_reply_q``, ``_timeout``); :func:`encode` serialises it with
oslo.serialization, as the rabbit driver does, so every value it can send
(datetimes, sets, UUIDs, iterables...) arrives in the same form, and puts the
2.0 envelope around it. The receiving side is the library's, which accepts
exactly this.

A remote failure arrives as the library's
:class:`~rabbit_ha_driver.exceptions.RemoteError` (type, text, traceback);
:func:`remote_exception` gives it to oslo.messaging's own
``deserialize_remote_exception`` so a caller gets what the rabbit driver
raises: a builtin exception or one of an allowed module re-created with the
remote traceback in its text, anything else as ``oslo_messaging.RemoteError``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from oslo_messaging._drivers import common as oslo_common
from oslo_serialization import jsonutils

from rabbit_ha_driver.exceptions import InvalidMessage, RemoteError
from rabbit_ha_driver.rpc import envelope
from rabbit_ha_driver.rpc.wire import envelope_body

#: ``jsonutils.dumps(message)``, without a new encoder per message:
#: oslo.serialization's ``dumps`` is ``json.dumps(obj, default=to_primitive)``,
#: which builds a ``JSONEncoder`` with these very arguments on every call.
_encode_json = json.JSONEncoder(default=jsonutils.to_primitive).encode


def with_context(message: Mapping[str, Any], ctxt: Any, **extra: Any) -> dict[str, Any]:
    """``message`` with ``extra`` members, a fresh ``_unique_id`` and ``_context_*``."""
    inner = dict(message)
    inner.update(extra)
    inner[envelope.UNIQUE_ID] = envelope.new_id()
    for key, value in envelope.context_dict(ctxt).items():
        inner[f"{envelope.CONTEXT_PREFIX}{key}"] = value
    return inner


def encode(message: Mapping[str, Any], max_size: int, *, wrap: bool = True,
           what: str = "message") -> bytes:
    """The body to publish; ``wrap=False`` for a notification of version 1.0.

    Raises InvalidMessage when a value cannot be converted to JSON or the body
    is over ``max_size`` bytes.
    """
    try:
        text = _encode_json(message)
    except (TypeError, ValueError, RecursionError) as error:
        raise InvalidMessage(f"{what} cannot be encoded as JSON: {error}") from error
    # The text is ASCII (ensure_ascii): the envelope's bytes without a second
    # pass of json's escaping over it.
    body = envelope_body(text) if wrap else text.encode(envelope.CONTENT_ENCODING)
    envelope.check_size(len(body), max_size, what)
    return body


def remote_exception(error: RemoteError, allowed_modules: Iterable[str]) -> Exception:
    """The exception oslo.messaging's rabbit driver raises for this remote failure.

    The library keeps the remote type, text and traceback, not the
    constructor arguments, so the exception is re-created from its text: the
    same class and message, the remote traceback appended as oslo.messaging
    appends it.
    """
    module, _, name = error.exc_type.rpartition(".")
    data = {
        "class": name,
        "module": module or "builtins",
        "message": error.value,
        "tb": [error.traceback] if error.traceback else [],
        "args": [error.value],
        "kwargs": {},
    }
    result: Exception = oslo_common.deserialize_remote_exception(
        json.dumps(data), list(allowed_modules))
    return result

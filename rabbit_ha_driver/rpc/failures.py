"""Remote exceptions on the wire: how a server's error reaches its caller.

How this works: a reply's ``failure`` member is JSON text in oslo.messaging's
shape (``class``, ``module``, ``message``, ``tb``, ``args``, ``kwargs``).
:func:`encode_failure` writes it for an exception raised here;
:func:`decode_failure` reads it and always returns a
:class:`~rabbit_ha_driver.exceptions.RemoteError`: no module is imported and
no class is instantiated from what a peer sent. A class whose name and
module end in ``_Remote`` (oslo.messaging's wrapper of a re-raised remote
error) travels under its original name, and a :class:`RemoteError` passed on
keeps the type and text it came with.

Some errors travel under the module they were defined in before they joined
:mod:`rabbit_ha_driver.exceptions` (:data:`WIRE_MODULES`), so callers and
peers of earlier releases see the names they saw before.
"""

from __future__ import annotations

import json
import traceback
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
from rabbit_ha_driver.rpc.wire import to_json

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

_REMOTE_SUFFIX = "_Remote"

#: The module an error names on the wire when it is not where the class is
#: defined: these errors were defined in the modules named here before they
#: joined :mod:`rabbit_ha_driver.exceptions`, and they travel under those
#: names still, so a caller matching ``exc_type`` and a peer of an earlier
#: release see what they saw before. Both modules still provide each class
#: (an oslo.messaging caller that allows the module imports it from there):
#: ``rpc/envelope.py`` re-exports BadRequest for that reason.
WIRE_MODULES: Mapping[type[BaseException], str] = {
    BadRequest: "rabbit_ha_driver.rpc.envelope",
    NoSuchMethod: "rabbit_ha_driver.rpc.server",
    UnsupportedVersion: "rabbit_ha_driver.rpc.server",
    InvalidArguments: "rabbit_ha_driver.rpc.server",
}


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

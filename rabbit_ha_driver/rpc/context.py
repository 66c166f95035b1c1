"""The caller's context on the wire: spread over top-level ``_context_<key>`` members.

How this works: oslo.messaging sends a request context (a dict, or an object
with ``to_dict()``, such as oslo.context's ``RequestContext``) not as one
member but as one top-level member per key, ``_context_<key>``, beside the
message's own members. :func:`pack_context` writes them into an inner
message, :func:`unpack_context` collects them back into a dict; nothing else
of the context travels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rabbit_ha_driver.rpc.wire import CONTEXT_PREFIX


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


def pack_context(message: dict[str, Any], ctxt: Any) -> None:
    """Add ``ctxt``'s keys to the inner ``message`` as ``_context_<key>`` members."""
    for key, value in context_dict(ctxt).items():
        message[f"{CONTEXT_PREFIX}{key}"] = value


def unpack_context(message: Mapping[str, Any]) -> dict[str, Any]:
    """The context a received inner ``message`` carries (its ``_context_`` members)."""
    return {k[len(CONTEXT_PREFIX):]: v for k, v in message.items()
            if isinstance(k, str) and k.startswith(CONTEXT_PREFIX)}

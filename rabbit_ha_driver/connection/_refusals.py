"""Broker refusals told in the broker's own words, and the ones retrying cannot mend.

How it works. The error table of :mod:`rabbit_ha_driver.connection._errors`
judges a refusal by its reply code and operation. One code is ambiguous:
541 INTERNAL_ERROR is usually a node in trouble (reconnecting mends it), but
RabbitMQ 3.13 and 4 also answer with it, closing the whole *connection*, when
a request uses a deprecated feature that the broker's configuration denies
(``deprecated_features.permit.transient_nonexcl_queues = false`` refuses a
non-durable, non-exclusive queue; ``global_qos`` a global ``basic.qos``).
Such a refusal comes back on every retry, so retrying only hides it behind a
connect timeout. Its only mark is the text RabbitMQ writes,
"Feature `NAME` is deprecated"; :func:`denied_feature` reads it. This is the
one place where the library looks at a refusal's text, and it does so only
to stop retrying, never to start.

:func:`reason_of` gives the broker's reply text on one line (RabbitMQ's
deprecation texts span several lines of advice), for error messages and log
lines; :func:`advice_for` what to change in the library's configuration.
"""

from __future__ import annotations

import re
from typing import Any

import amqp.exceptions

from rabbit_ha_driver import events as ev

#: RabbitMQ's words for a denied deprecated feature (rabbit_deprecated_features).
_DENIED = re.compile(r"Feature `?([A-Za-z0-9_]+)`? is deprecated")
_MAX_REASON = 300

#: What to set instead of asking the broker for a denied feature.
ADVICE = {
    "transient_nonexcl_queues": (
        "the broker denies non-durable, non-exclusive queues: set "
        "rabbit_quorum_queue = true (topic, server and notification queues) and "
        "rabbit_transient_quorum_queue = true (reply and fanout queues), "
        "or permit the feature on the broker"),
    "global_qos": "the broker denies global QoS (basic.qos with global=true)",
}


def reply_code_of(error: BaseException) -> int | None:
    code = getattr(error, "reply_code", None)
    return code if isinstance(code, int) and code else None


def reason_of(error: BaseException) -> str:
    """The broker's reply text on one line, shortened; else the error's text."""
    text = getattr(error, "reply_text", None) or str(error) or type(error).__name__
    text = " ".join(str(text).split())
    if len(text) > _MAX_REASON:
        text = text[:_MAX_REASON - 3].rstrip() + "..."
    return text


def denied_feature(error: BaseException) -> str | None:
    """The deprecated feature a broker refusal names as denied, else None."""
    if not isinstance(error, amqp.exceptions.AMQPError) or reply_code_of(error) != 541:
        return None
    match = _DENIED.search(str(getattr(error, "reply_text", "") or ""))
    return match.group(1) if match else None


def is_permanent(error: BaseException) -> bool:
    """A refusal the error table would retry although it comes back every time."""
    return denied_feature(error) is not None


def advice_for(feature: str) -> str:
    return ADVICE.get(feature, f"the broker denies the deprecated feature {feature}")


def closed_connection(error: BaseException) -> bool:
    """The broker closed the whole connection with this refusal (connection.close)."""
    return isinstance(error, amqp.exceptions.ConnectionError) and reply_code_of(error) is not None


def note_refusal(conn: Any, error: BaseException, operation: str, refused: BaseException) -> None:
    """Emit :class:`~rabbit_ha_driver.events.Refused` for a broker refusal raised to the caller.

    ``refused`` is the library's error for it (its text names the advice).
    Errors that are not broker replies (a TLS failure...) are not refusals."""
    code = reply_code_of(error)
    if code is None:
        return
    host = conn.host.address if conn.host is not None else "memory"
    conn.events.emit(ev.Refused(conn.name, host, operation, code, str(refused)))

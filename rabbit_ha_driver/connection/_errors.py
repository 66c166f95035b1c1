"""The one place where kombu, py-amqp and socket errors are judged and translated.

How it works: :func:`classify` looks at an exception raised by a broker
operation and returns an :class:`Action`: reconnect (the connection is gone or
cannot be trusted), reopen the channel (the broker closed only the channel and
the connection is healthy), or raise (retrying cannot help). Broker refusals
are judged by the explicit table :data:`REPLY_CODE_TABLE` of reply code and
operation, never by the text of the error. :func:`translate` turns the
exception into the library's own error tree with context attached.
"""

from __future__ import annotations

import enum
import socket
import ssl
from collections.abc import Mapping

import amqp.exceptions

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import _refusals as refusals


class Action(enum.Enum):
    """What ensure() does about an error."""

    RECONNECT = "reconnect"
    REOPEN_CHANNEL = "reopen-channel"
    RAISE = "raise"


class RequestTimeout(Exception):
    """A synchronous AMQP request got no reply before its deadline (internal)."""

    def __init__(self, operation: str, timeout: float) -> None:
        self.operation = operation
        self.timeout = timeout
        super().__init__(f"no reply to {operation} within {timeout:g}s")


class WriteTimeout(OSError):
    """A frame could not be written before its deadline; the stream may hold half of it (internal)."""

    def __init__(self, operation: str, timeout: float) -> None:
        self.operation = operation
        self.timeout = timeout
        super().__init__(f"{operation}: could not write to the broker within {timeout:g}s")


#: Operations whose 404/405 are transient while the cluster is recovering:
#: the queue's home node is down (404) or an exclusive queue is still held by
#: the connection that just died (405).
QUEUE_OPERATIONS = frozenset({
    "queue.declare", "queue.bind", "queue.unbind", "basic.consume",
    "basic.get", "queue.purge", "queue.delete",
})

ANY = "*"

#: (reply code, operation or ANY) -> (action during recovery, action otherwise).
#: Looked up first with the operation, then with ANY.
REPLY_CODE_TABLE: Mapping[tuple[int, str], tuple[Action, Action]] = {
    # connection-level: the broker closed the connection or is in trouble.
    (320, ANY): (Action.RECONNECT, Action.RECONNECT),      # connection-forced
    (501, ANY): (Action.RECONNECT, Action.RECONNECT),      # frame-error
    (502, ANY): (Action.RECONNECT, Action.RECONNECT),      # syntax-error
    (503, ANY): (Action.RECONNECT, Action.RECONNECT),      # command-invalid
    (504, ANY): (Action.RECONNECT, Action.RECONNECT),      # channel-error
    (505, ANY): (Action.RECONNECT, Action.RECONNECT),      # unexpected-frame
    (506, ANY): (Action.RECONNECT, Action.RECONNECT),      # resource-error
    (541, ANY): (Action.RECONNECT, Action.RECONNECT),      # internal-error
    # queue home node down / queue vanished under us: transient.
    **{(404, op): (Action.REOPEN_CHANNEL, Action.REOPEN_CHANNEL) for op in QUEUE_OPERATIONS},
    # an exchange that is missing is a mistake, unless we are re-declaring.
    (404, ANY): (Action.REOPEN_CHANNEL, Action.RAISE),
    # exclusive queue still owned by the dead connection: transient in recovery.
    **{(405, op): (Action.REOPEN_CHANNEL, Action.RAISE) for op in QUEUE_OPERATIONS},
    (405, ANY): (Action.RAISE, Action.RAISE),
    (403, ANY): (Action.RAISE, Action.RAISE),              # access-refused
    (406, ANY): (Action.RAISE, Action.RAISE),              # precondition-failed
    # acking a delivery tag of a channel that has since been replaced.
    (406, "basic.ack"): (Action.REOPEN_CHANNEL, Action.REOPEN_CHANNEL),
    (406, "basic.reject"): (Action.REOPEN_CHANNEL, Action.REOPEN_CHANNEL),
    (530, ANY): (Action.RAISE, Action.RAISE),              # not-allowed
    (311, ANY): (Action.RAISE, Action.RAISE),              # content-too-large
    (313, ANY): (Action.REOPEN_CHANNEL, Action.REOPEN_CHANNEL),  # no-consumers
}


def lookup(reply_code: int, operation: str, recovering: bool) -> Action:
    """The table's verdict for a broker refusal; unknown codes reconnect."""
    entry = REPLY_CODE_TABLE.get((reply_code, operation)) or REPLY_CODE_TABLE.get((reply_code, ANY))
    if entry is None:
        return Action.RECONNECT
    return entry[0] if recovering else entry[1]


#: TLS handshake failures that say the two sides do not agree (no common
#: protocol version, the peer refuses our certificate or speaks no TLS):
#: trying again changes nothing, so they are raised at once, like a
#: certificate that does not verify.
TLS_REFUSALS = frozenset({
    "TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE",
    "WRONG_VERSION_NUMBER", "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_HANDSHAKE_FAILURE", "TLSV13_ALERT_CERTIFICATE_REQUIRED",
})


def reply_code_of(error: BaseException) -> int | None:
    code = getattr(error, "reply_code", None) or getattr(error, "code", None)
    return code if isinstance(code, int) else None


def classify(error: BaseException, operation: str, recovering: bool = False) -> Action:
    """Decide what to do about ``error`` raised by ``operation``."""
    if isinstance(error, exc.IrrecoverableError | exc.MessagingTimeout):
        return Action.RAISE
    if isinstance(error, exc.RecoverableError | RequestTimeout):
        return Action.RECONNECT
    if isinstance(error, exc.RabbitHAError):  # bad input or configuration: a reconnect cannot mend it
        return Action.RAISE
    if isinstance(error, ssl.SSLCertVerificationError):
        return Action.RAISE
    if isinstance(error, ssl.SSLError) and getattr(error, "reason", None) in TLS_REFUSALS:
        return Action.RAISE
    if isinstance(error, amqp.exceptions.AccessRefused) and operation == "connection.open":
        return Action.RAISE
    if isinstance(error, amqp.exceptions.AMQPError):
        code = reply_code_of(error)
        if code is None:
            return Action.RECONNECT
        if refusals.is_permanent(error):  # a denied deprecated feature (541)
            return Action.RAISE
        action = lookup(code, operation, recovering)
        if action is Action.REOPEN_CHANNEL and isinstance(error, amqp.exceptions.ConnectionError):
            return Action.RECONNECT
        return action
    if isinstance(error, socket.timeout | OSError | EOFError | ConnectionError):
        return Action.RECONNECT
    if isinstance(error, AttributeError):
        return Action.RECONNECT if raised_in_io_layer(error) else Action.RAISE
    if isinstance(error, TypeError | ValueError | KeyError):
        return Action.RAISE
    return Action.RECONNECT


#: Top-level packages of the code that does the I/O for a connection: py-amqp,
#: kombu, vine (py-amqp's callbacks), the socket and TLS modules and, when a
#: service monkey-patched them, eventlet's green sockets.
IO_PACKAGES = frozenset({"amqp", "kombu", "vine", "socket", "ssl", "eventlet"})


def raised_in_io_layer(error: BaseException) -> bool:
    """Whether ``error`` was raised inside :data:`IO_PACKAGES`, by its traceback.

    An AttributeError is how py-amqp and kombu fail on a connection they
    have already dropped: they set its ``sock``, ``transport`` or
    ``connection`` to None, and the next operation reads an attribute of
    None (``'NoneType' object has no attribute 'gettimeout'`` in py-amqp's
    ``having_timeout``, ``... 'drain_events'`` in kombu). That is a lost
    connection. The same error raised by the library's own code or by the
    function a caller gave to ``ensure()`` is a bug, and reconnecting would
    only hide it until the deadline; it is raised instead. Judged by the
    innermost frame of the traceback, never by the text. An error that was
    never raised (no traceback) says nothing either way: it keeps the old
    verdict, a lost connection.
    """
    tb = error.__traceback__
    if tb is None:
        return True
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__")
    return isinstance(module, str) and module.partition(".")[0] in IO_PACKAGES


def refusal(error: BaseException, operation: str, host: str | None, *,
            recovering: bool = False) -> BaseException | None:
    """What the caller gets for ``error`` when retrying cannot mend it; None when it can.

    The one place where errors cross from kombu, py-amqp and the socket into
    the library: a broker refusal, and any error raised inside the I/O layer,
    becomes the library's own error (:func:`translate`); an error raised by
    the library's own code or by a function given to ``ensure()`` (a bug, or
    bad input: a TypeError, a KeyError) is returned as it is, so the caller
    sees it for what it is.
    """
    if classify(error, operation, recovering) is not Action.RAISE:
        return None
    if isinstance(error, exc.RabbitHAError | amqp.exceptions.AMQPError | OSError | EOFError) \
            or raised_in_io_layer(error):
        return translate(error, operation, host)
    return error


def raise_refusal(error: BaseException, operation: str, host: str | None, *,
                  recovering: bool = False) -> None:
    """Raise :func:`refusal`'s error for ``error`` (from it), or return when retrying may mend it."""
    refused = refusal(error, operation, host, recovering=recovering)
    if refused is None:
        return
    if refused is error:
        raise error
    raise refused from error


def closes_channel(error: BaseException) -> bool:
    """True for a broker refusal that closed only the channel, not the connection."""
    return (isinstance(error, amqp.exceptions.AMQPError) and reply_code_of(error) is not None
            and not isinstance(error, amqp.exceptions.ConnectionError))


def translate(error: BaseException, operation: str, host: str | None, attempts: int = 0) -> exc.RabbitHAError:
    """The library's own error for ``error``; the cause is kept as ``__cause__``."""
    if isinstance(error, exc.RabbitHAError):
        return error
    code = reply_code_of(error)
    text = refusals.reason_of(error)
    where = f" on {host}" if host else ""
    feature = refusals.denied_feature(error)
    if feature is not None:
        return exc.FeatureDenied(
            f"{operation}{where} refused with {code}: {text} ({refusals.advice_for(feature)})",
            feature=feature, host=host, reply_code=code, operation=operation)
    if isinstance(error, ssl.SSLError):
        return exc.TLSError(f"TLS handshake with {host} failed: {text}", host=host, operation=operation)
    refused = code in (403, 530) or isinstance(error, amqp.exceptions.AccessRefused)
    if operation == "connection.open" and refused:
        return exc.AuthenticationError(
            f"broker {host} refused the login or the virtual host (code {code}): {text}",
            host=host, reply_code=code, operation=operation)
    if isinstance(error, RequestTimeout):
        return exc.ChannelDead(f"{error}{where}", host=host, operation=operation, attempts=attempts)
    if code is not None and lookup(code, operation, recovering=False) is Action.RAISE:
        return exc.IrrecoverableError(
            f"{operation}{where} refused with {code}: {text}",
            host=host, reply_code=code, operation=operation)
    if code is not None and not isinstance(error, amqp.exceptions.ConnectionError):
        return exc.ChannelDead(f"{operation}{where} failed with {code}: {text}",
                               host=host, reply_code=code, operation=operation, attempts=attempts)
    return exc.ConnectionLost(f"{operation}{where} failed: {type(error).__name__}: {text}",
                              host=host, reply_code=code, operation=operation, attempts=attempts)

"""The library's one error tree.

Every error the library raises to its callers derives from
:class:`RabbitHAError`, and every such class is defined here (a unit test
walks the package's ``raise`` statements to keep it so). The tree is split by
what a caller can do about it:

* :class:`ConfigurationError`: fix the configuration; raised at start-up.
* :class:`RecoverableError`: the broker or the network failed in a way that a
  retry may mend. The library retries these itself until the caller's deadline;
  a caller sees one only when the deadline or the retry budget ran out.
* :class:`IrrecoverableError`: retrying cannot help (wrong credentials,
  inequivalent queue arguments, access refused, a deprecated feature the
  broker denies: :class:`FeatureDenied`); raised at once.
* :class:`MessagingTimeout`: a deadline passed; says what it waited for.
* :class:`ClientClosed`: the client was closed by its owner; make a new one.
* :class:`RemoteError`: the remote endpoint raised; carries its type and text.
* :class:`DispatchError`: a server has no endpoint method for a request
  (:class:`NoSuchMethod`, :class:`UnsupportedVersion`,
  :class:`InvalidArguments`); fix the caller or the server. A caller receives
  these as a :class:`RemoteError` naming the class.
* :class:`InvalidMessage`: a message from the wire was refused (not JSON in
  the expected envelope, too large; :class:`BadRequest` for a request); the
  sender must change it.

kombu, py-amqp and socket errors are translated into this tree in exactly one
place, :mod:`rabbit_ha_driver.connection._errors`.

Some classes also derive from a builtin exception (``ValueError``,
``TimeoutError``, ``AttributeError``, ``TypeError``) so that code written
against the builtin, as oslo.messaging's callers are, catches them too.
"""

from __future__ import annotations


class RabbitHAError(Exception):
    """Base class of every error raised by rabbit_ha_driver."""


class ConfigurationError(RabbitHAError, ValueError):
    """An option has a value the library cannot use."""

    def __init__(self, option: str, value: object, reason: str) -> None:
        self.option = option
        self.value = value
        self.reason = reason
        super().__init__(f"invalid value {value!r} for option {option}: {reason}")


class RecoverableError(RabbitHAError):
    """A broker or network failure that reconnecting may mend."""

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        reply_code: int | None = None,
        operation: str | None = None,
        attempts: int = 0,
    ) -> None:
        self.host = host
        self.reply_code = reply_code
        self.operation = operation
        self.attempts = attempts
        super().__init__(message)


class ConnectionLost(RecoverableError):
    """The connection to the broker failed or was declared dead."""


class ChannelDead(RecoverableError):
    """A channel was closed by the broker or missed a request deadline."""


class Unroutable(RecoverableError):
    """The broker returned a mandatory message that no queue could take."""


class PublishNacked(RecoverableError):
    """The broker refused a published message (basic.nack)."""


class IrrecoverableError(RabbitHAError):
    """A broker refusal that retrying cannot mend."""

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        reply_code: int | None = None,
        operation: str | None = None,
    ) -> None:
        self.host = host
        self.reply_code = reply_code
        self.operation = operation
        super().__init__(message)


class FeatureDenied(IrrecoverableError):
    """The broker denies a deprecated feature the request used (RabbitMQ 3.13+, 4).

    ``feature`` is the broker's name for it (``transient_nonexcl_queues``...)."""

    def __init__(self, message: str, *, feature: str, host: str | None = None,
                 reply_code: int | None = None, operation: str | None = None) -> None:
        self.feature = feature
        super().__init__(message, host=host, reply_code=reply_code, operation=operation)


class AuthenticationError(IrrecoverableError):
    """The broker refused the credentials."""


class TLSError(IrrecoverableError):
    """The TLS handshake failed: a wrong CA, hostname or certificate."""


class MessagingTimeout(RabbitHAError, TimeoutError):
    """A deadline passed before the operation finished."""

    def __init__(self, message: str, *, waited: float, last_error: BaseException | None = None) -> None:
        self.waited = waited
        self.last_error = last_error
        super().__init__(message)


class ClientClosed(RabbitHAError):
    """The client was closed while a call was in progress, or used after it was closed."""


class RemoteError(RabbitHAError):
    """The remote endpoint raised an exception while handling a call."""

    def __init__(self, exc_type: str, value: str, traceback: str = "") -> None:
        self.exc_type = exc_type
        self.value = value
        self.traceback = traceback
        super().__init__(f"remote error: {exc_type}: {value}")


class InvalidMessage(RabbitHAError):
    """A message was not valid JSON in the expected envelope, or too large; or
    a message to send has a property AMQP cannot encode (raised at once, never retried)."""


class BadRequest(InvalidMessage):
    """A request that cannot be dispatched; says whom to tell, if anyone.

    ``msg_id`` and ``reply_q`` are the caller's, when the request named them,
    so the server can answer with this error at once."""

    def __init__(self, reason: str, *, msg_id: str | None = None,
                 reply_q: str | None = None) -> None:
        self.reason = reason
        self.msg_id = msg_id
        self.reply_q = reply_q
        super().__init__(reason)


class DispatchError(RabbitHAError):
    """A server found no endpoint method that can take a request."""


class NoSuchMethod(DispatchError, AttributeError):
    """No endpoint has a public method of the requested name."""

    def __init__(self, method: str) -> None:
        self.method = method
        super().__init__(f"Endpoint does not support RPC method {method}")


class UnsupportedVersion(DispatchError):
    """No endpoint accepts the requested namespace and version."""

    def __init__(self, version: str, method: str, namespace: str | None = None) -> None:
        self.version = version
        self.method = method
        self.namespace = namespace
        where = f" in namespace {namespace}" if namespace else ""
        super().__init__(f"Endpoint does not support RPC version {version}{where}. "
                         f"Attempted method: {method}")


class InvalidArguments(DispatchError, TypeError):
    """The request's arguments do not fit the method's signature."""

    def __init__(self, method: str, reason: str) -> None:
        self.method = method
        self.reason = reason
        super().__init__(f"wrong arguments for RPC method {method}: {reason}")

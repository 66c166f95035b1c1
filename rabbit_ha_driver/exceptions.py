"""The library's one error tree.

Every error the library raises derives from :class:`RabbitHAError`. The tree is
split by what a caller can do about it:

* :class:`ConfigurationError`: fix the configuration; raised at start-up.
* :class:`RecoverableError`: the broker or the network failed in a way that a
  retry may mend. The library retries these itself until the caller's deadline;
  a caller sees one only when the deadline or the retry budget ran out.
* :class:`IrrecoverableError`: retrying cannot help (wrong credentials,
  inequivalent queue arguments, access refused, a deprecated feature the
  broker denies: :class:`FeatureDenied`); raised at once.
* :class:`MessagingTimeout`: a deadline passed; says what it waited for.
* :class:`RemoteError`: the remote endpoint raised; carries its type and text.

kombu, py-amqp and socket errors are translated into this tree in exactly one
place, :mod:`rabbit_ha_driver.connection.errors`.
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


class ConsumerCancelled(RecoverableError):
    """The broker cancelled a consumer (basic.cancel)."""

    def __init__(self, queue: str, consumer_tag: str) -> None:
        self.queue = queue
        self.consumer_tag = consumer_tag
        super().__init__(f"broker cancelled consumer {consumer_tag} on queue {queue}")


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


class RemoteError(RabbitHAError):
    """The remote endpoint raised an exception while handling a call."""

    def __init__(self, exc_type: str, value: str, traceback: str = "") -> None:
        self.exc_type = exc_type
        self.value = value
        self.traceback = traceback
        super().__init__(f"remote error: {exc_type}: {value}")


class InvalidMessage(RabbitHAError):
    """A message was not valid JSON in the expected envelope, or too large."""

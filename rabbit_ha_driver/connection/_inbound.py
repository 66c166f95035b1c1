"""Messages as the library receives them: kombu's, minus kombu's decompression.

How this works. kombu's ``Message`` decompresses a body whose ``compression``
header says so, at once and without any bound on the size it produces.
These subclasses take the header out of what kombu sees and keep it as
:attr:`compression`, so the body arrives as it was sent and the RPC layer
expands it within ``rpc_max_message_size``
(:mod:`rabbit_ha_driver.rpc.compression`). Everything else is kombu's.
"""

from __future__ import annotations

from typing import Any

from kombu import message as kombu_message
from kombu.transport import pyamqp as kombu_pyamqp
from kombu.transport import virtual as kombu_virtual

HEADER = "compression"


def _split(headers: Any) -> tuple[dict[str, Any], str | None]:
    headers = dict(headers or {})
    return headers, headers.pop(HEADER, None)


class AMQPMessage(kombu_pyamqp.Message):
    """A py-amqp delivery; :attr:`compression` is its ``compression`` header, or None."""

    compression: str | None = None

    def __init__(self, msg: Any, channel: Any = None, **kwargs: Any) -> None:
        props = msg.properties
        headers, compression = _split(props.get("application_headers"))
        kombu_message.Message.__init__(
            self, body=msg.body, channel=channel, delivery_tag=msg.delivery_tag,
            content_type=props.get("content_type"),
            content_encoding=props.get("content_encoding"),
            delivery_info=msg.delivery_info, properties=props, headers=headers, **kwargs)
        self.compression = compression


class MemoryMessage(kombu_virtual.Message):
    """A delivery of kombu's in-process transport; :attr:`compression` as above."""

    compression: str | None = None

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        headers, compression = _split(payload.get("headers"))
        super().__init__({**payload, "headers": headers}, channel=channel, **kwargs)
        self._raw = payload  # a requeue puts back the message as it came
        self.compression = compression

    def serializable(self) -> Any:
        found = super().serializable()
        if self.compression:
            found["headers"] = {**found.get("headers", {}), HEADER: self.compression}
        return found

"""What happens to RPC calls and requests, one frozen event class each.

A call that ended or timed out, a message returned unroutable and sent again,
a request sent again after its fate was uncertain, a repeated request a
server answered from its reply cache or dropped. The RPC layer emits them on
the bus of its connections, beside the connection's own events; they are
defined here, below the RPC layer, so that the metrics can count them.
"""

from __future__ import annotations

import dataclasses
import logging

from rabbit_ha_driver.event_stream import Event


@dataclasses.dataclass(frozen=True)
class CallCompleted(Event):
    """An RPC call ended with a reply (``ok``) or an error that is not a timeout."""

    host: str
    latency: float
    ok: bool
    level = logging.DEBUG

    def describe(self) -> str:
        outcome = "returned" if self.ok else "failed"
        return f"call via {self.host} {outcome} after {self.latency:.3f}s"


@dataclasses.dataclass(frozen=True)
class CallTimedOut(Event):
    """An RPC call got no reply before its deadline."""

    host: str
    timeout: float
    level = logging.DEBUG

    def describe(self) -> str:
        return f"call via {self.host} timed out after {self.timeout:g}s"


@dataclasses.dataclass(frozen=True)
class UnroutableRetry(Event):
    """The broker returned a message as unroutable; it is sent again."""

    host: str
    exchange: str
    routing_key: str
    attempt: int
    level = logging.DEBUG

    def describe(self) -> str:
        return (f"no queue took a message to exchange {self.exchange!r} key "
                f"{self.routing_key!r} on {self.host}; sending it again (attempt {self.attempt})")


@dataclasses.dataclass(frozen=True)
class RequestResent(Event):
    """A call's request whose fate was uncertain (its connection died between
    the write and the confirm) got no reply within the grace; it is sent
    again with the same message id."""

    host: str
    msg_id: str
    resend: int

    def describe(self) -> str:
        return (f"request {self.msg_id} sent again via {self.host} (re-send {self.resend}): "
                "its first copy's fate was uncertain and no reply came")


@dataclasses.dataclass(frozen=True)
class DuplicateRequest(Event):
    """A server received a call's request again (same message id): answered
    from its cache of recent replies (``answered``), or dropped while the
    first copy still runs."""

    msg_id: str
    answered: bool

    def describe(self) -> str:
        if self.answered:
            return f"repeated request {self.msg_id} answered from the reply cache"
        return f"repeated request {self.msg_id} dropped: the first copy is still running"

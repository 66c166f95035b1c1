"""What happens to a connection, one frozen event class each.

Connecting, connected, lost, retry, failed over, refused, consumer cancelled,
lost or restored, channel closed by the broker and restored, blocked,
request deadline missed, heartbeat missed, declared dead, heartbeat runner
chosen. The connection layer emits them on its
:class:`~rabbit_ha_driver.event_stream.EventBus`; each describes itself as
the log line :class:`~rabbit_ha_driver.event_stream.LogSubscriber` writes.
"""

from __future__ import annotations

import dataclasses
import logging

from rabbit_ha_driver.event_stream import Event


@dataclasses.dataclass(frozen=True)
class StateChanged(Event):
    """The connection moved from one lifecycle state to another."""

    old: str
    new: str
    level = logging.DEBUG

    def describe(self) -> str:
        return f"state {self.old} -> {self.new}"


@dataclasses.dataclass(frozen=True)
class Connecting(Event):
    """A connect attempt to one host started."""

    host: str
    attempt: int
    level = logging.DEBUG

    def describe(self) -> str:
        return f"connecting to {self.host} (attempt {self.attempt})"


@dataclasses.dataclass(frozen=True)
class Connected(Event):
    """The AMQP handshake with a host finished."""

    host: str
    local_port: int | None
    heartbeat: float

    def describe(self) -> str:
        return (f"connected to {self.host} from local port {self.local_port}, "
                f"negotiated heartbeat {self.heartbeat:g}s")


@dataclasses.dataclass(frozen=True)
class ConnectFailed(Event):
    """A connect attempt to one host failed."""

    host: str
    reason: str
    level = logging.WARNING

    def describe(self) -> str:
        return f"cannot connect to {self.host}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class ConnectionLost(Event):
    """An established connection failed; recovery starts."""

    host: str
    reason: str
    level = logging.WARNING

    def describe(self) -> str:
        return f"connection to {self.host} lost: {self.reason}; recovering"


@dataclasses.dataclass(frozen=True)
class Refused(Event):
    """The broker refused an operation in a way retrying cannot mend."""

    host: str
    operation: str
    reply_code: int
    reason: str
    level = logging.ERROR

    def describe(self) -> str:
        return (f"{self.host} refused {self.operation} ({self.reply_code}): {self.reason}; "
                "not retried")


@dataclasses.dataclass(frozen=True)
class RetryScheduled(Event):
    """Every host failed in one pass; waiting before the next pass."""

    attempt: int
    delay: float
    level = logging.WARNING

    def describe(self) -> str:
        return f"all hosts failed; retry {self.attempt} in {self.delay:.2f}s"


@dataclasses.dataclass(frozen=True)
class FailedOver(Event):
    """Recovered on a different host than before."""

    from_host: str
    to_host: str

    def describe(self) -> str:
        return f"failed over from {self.from_host} to {self.to_host}"


@dataclasses.dataclass(frozen=True)
class TopologyRestored(Event):
    """Recorded QoS, exchanges, queues, bindings and consumers were replayed."""

    host: str
    queues: int
    consumers: int
    level = logging.DEBUG

    def describe(self) -> str:
        return f"restored {self.queues} queues and {self.consumers} consumers on {self.host}"


@dataclasses.dataclass(frozen=True)
class ConsumerCancelled(Event):
    """The broker cancelled a consumer (basic.cancel)."""

    queue: str
    delay: float
    level = logging.WARNING

    def describe(self) -> str:
        return (f"broker cancelled the consumer of queue {self.queue!r}; "
                f"consuming again in {self.delay:g}s")


@dataclasses.dataclass(frozen=True)
class ConsumerLost(Event):
    """The broker's queue does not deliver to this connection's consumer,
    twice in a row (lost without a basic.cancel): the queue counts no
    consumer, or holds ready messages that a consumer with free prefetch was
    not sent. The channel is reopened and consumes again; when that happens
    twice with nothing received in between, the connection moves to another
    node."""

    queue: str
    why: str = "the queue counts no consumer"
    level = logging.WARNING

    def describe(self) -> str:
        return (f"the broker lost the consumer of queue {self.queue!r} without a "
                f"consumer cancel ({self.why}); consuming again")


@dataclasses.dataclass(frozen=True)
class ConsumerRestored(Event):
    """A cancelled consumer consumes again."""

    queue: str
    same_connection: bool

    def describe(self) -> str:
        how = "on the same connection" if self.same_connection else "after a reconnect"
        return f"consuming queue {self.queue!r} again {how}"


@dataclasses.dataclass(frozen=True)
class ChannelClosedByBroker(Event):
    """The broker closed the channel and kept the connection."""

    host: str
    reply_code: int
    reason: str
    lost_confirms: int
    level = logging.WARNING

    def describe(self) -> str:
        return (f"broker {self.host} closed the channel: {self.reason}; "
                f"{self.lost_confirms} message(s) were waiting for a confirm")


@dataclasses.dataclass(frozen=True)
class ChannelRestored(Event):
    """A new channel replaced one the broker closed: confirm mode, QoS and consumers restored."""

    host: str
    consumers: int
    seconds: float

    def describe(self) -> str:
        return (f"channel restored on {self.host} in {self.seconds:.3f}s "
                f"(confirm mode, QoS, {self.consumers} consumer(s))")


@dataclasses.dataclass(frozen=True)
class Blocked(Event):
    """The broker blocked publishing (a resource alarm)."""

    host: str
    reason: str
    level = logging.WARNING

    def describe(self) -> str:
        return f"broker {self.host} blocked publishing: {self.reason}"


@dataclasses.dataclass(frozen=True)
class Unblocked(Event):
    """The broker lifted its block."""

    host: str

    def describe(self) -> str:
        return f"broker {self.host} unblocked publishing"


@dataclasses.dataclass(frozen=True)
class RequestDeadlineMissed(Event):
    """A synchronous AMQP request got no reply in time; the channel is dead."""

    host: str
    operation: str
    timeout: float
    level = logging.WARNING

    def describe(self) -> str:
        return (f"{self.operation} on {self.host} got no reply within "
                f"{self.timeout:g}s; treating the channel as dead")


@dataclasses.dataclass(frozen=True)
class HeartbeatMissed(Event):
    """Nothing arrived for longer than the negotiated heartbeat interval."""

    host: str
    silent_for: float
    level = logging.DEBUG

    def describe(self) -> str:
        return f"nothing received from {self.host} for {self.silent_for:.1f}s"


@dataclasses.dataclass(frozen=True)
class DeclaredDead(Event):
    """No inbound traffic for the detection bound T, or a heartbeat could not
    be written (``reason``); the connection is dropped."""

    host: str
    silent_for: float
    threshold: float
    reason: str = ""
    level = logging.ERROR

    def describe(self) -> str:
        if self.reason:
            return f"connection to {self.host} declared dead: {self.reason}"
        return (f"connection to {self.host} declared dead: nothing received for "
                f"{self.silent_for:.1f}s (threshold {self.threshold:g}s)")


@dataclasses.dataclass(frozen=True)
class RunnerSelected(Event):
    """Which heartbeat runner serves this connection."""

    runner: str
    reason: str

    def describe(self) -> str:
        return f"heartbeat runner {self.runner} ({self.reason})"


"""One stream of state-change events; logging and metrics subscribe to it.

Every change a connection goes through (connecting, connected, lost, retry,
failed over, consumer cancelled, consumer restored, blocked, heartbeat missed,
declared dead...) is one small frozen event object. An :class:`EventBus`
delivers each event to its subscribers in order; a subscriber that raises is
logged and never breaks the connection. :class:`LogSubscriber` turns events
into log lines that name the host and port, never a password.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

from rabbit_ha_driver import forks

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Event:
    """Base of all events. ``connection`` is the connection's name."""

    connection: str

    level = logging.INFO

    def describe(self) -> str:
        fields = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name != "connection"
        )
        return f"{type(self).__name__}({fields})"


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

Subscriber = Callable[[Event], None]


class EventBus:
    """Delivers events to subscribers; thread-safe; subscribers must be quick."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        forks.at_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread of the parent, gone
        in the child, may have held it while subscribing)."""
        self._lock = threading.Lock()

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Add ``fn``; returns a function that removes it again."""
        with self._lock:
            self._subscribers = [*self._subscribers, fn]

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = [s for s in self._subscribers if s is not fn]

        return unsubscribe

    def emit(self, event: Event) -> None:
        for fn in self._subscribers:
            try:
                fn(event)
            except Exception:
                LOG.exception("event subscriber %r failed on %s", fn, type(event).__name__)


class LogSubscriber:
    """Writes each event as one log line: ``[connection] what happened``."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("rabbit_ha_driver.connection")

    def __call__(self, event: Event) -> None:
        if self._log.isEnabledFor(event.level):
            self._log.log(event.level, "[%s] %s", event.connection, event.describe())


class Recorder:
    """Keeps every event; for tests and for ``rabbit-ha check``."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]

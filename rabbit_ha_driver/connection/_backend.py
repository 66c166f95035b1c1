"""The backend seam: what the connection core asks of a link to one broker.

How it works. The core of the connection (:mod:`._lifecycle`,
:mod:`._channel_recovery`, :mod:`._connecting`, :mod:`._consuming`,
:mod:`._publishing`) never looks at which transport it holds. It opens a
:class:`Link` with :func:`open_link` and asks the link: what the transport
can do (publisher confirms, consumer cancel notifications, consumer counts,
heartbeats) and how to do the few things that differ between transports
(read for a while, run a request under a deadline, hand out a channel,
close politely, tear down without a word to the broker, let go of a socket
inherited over ``fork()``).

A transport class names its link in a ``link_class`` attribute:

* :class:`AMQPLink`: py-amqp through kombu. Requests and reads honour
  absolute deadlines (:class:`~._transport.DeadlineConnection`), publishes may
  take the frame fast path, heartbeats and the dead-peer deadline apply.
* :class:`MemoryLink`: kombu's in-process broker (the demo, the unit tests):
  no confirms, no deadlines, no heartbeats.
* The fake broker's link in :mod:`rabbit_ha_driver.testing`: the memory link
  plus consumer cancel notifications.

A kombu transport that names no link is judged once here: py-amqp's gets an
:class:`AMQPLink`, anything else a :class:`MemoryLink`.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import kombu
from kombu.transport import pyamqp as kombu_pyamqp


class Link:
    """One open connection to a broker, through a kombu transport."""

    #: Publisher confirms, returns and nacks; publishes may use the frame fast path.
    confirms = False
    #: The broker tells a consumer it was cancelled (``basic.cancel``).
    notifies_cancel = False
    #: ``basic.consume`` takes consumer arguments.
    consumer_arguments = False
    #: ``queue.declare-ok`` says how many consumers a queue has.
    counts_consumers = False
    #: Heartbeats and the dead-peer deadline apply (see amqp_io.Liveness).
    heartbeats = False

    def __init__(self, kombu_connection: kombu.Connection) -> None:
        self.kombu = kombu_connection
        self.transport: Any = kombu_connection.transport
        self.raw: Any = self.transport.establish_connection()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.raw!r}>"

    @property
    def heartbeat(self) -> float:
        """The heartbeat interval negotiated with the broker (0: none)."""
        return float(getattr(self.raw, "heartbeat", 0) or 0)

    def channel(self) -> Any:
        """A new channel."""
        return self.transport.create_channel(self.raw)

    def drain(self, seconds: float) -> None:
        """Dispatch what arrives for at most ``seconds``; TimeoutError when nothing did."""
        self.transport.drain_events(self.raw, timeout=seconds)

    def frame_buffered(self) -> bool:
        """Whether a whole frame already waits to be read (read-ahead)."""
        return False

    @contextlib.contextmanager
    def request_deadline(self, operation: str, seconds: float) -> Iterator[None]:
        """Run the body's synchronous requests under a deadline ``seconds`` away."""
        yield

    def message_converter(self, channel: Any) -> Callable[[Any], Any] | None:
        """What turns a raw delivery of ``channel`` into a kombu message (None: it is one)."""
        return None

    def socket(self) -> socket.socket | None:
        """The link's socket, if it has one."""
        transport = getattr(self.raw, "_transport", None) or getattr(self.raw, "transport", None)
        return getattr(transport, "sock", None)

    def close(self) -> None:
        """Close politely (``connection.close``)."""
        self.transport.close_connection(self.raw)

    def discard(self) -> None:
        """Let go without waiting for the broker (the link is lost, or is being replaced)."""
        self.transport.close_connection(self.raw)

    def forget_after_fork(self) -> None:
        """In a forked child: close the inherited socket without a byte on it."""


class MemoryLink(Link):
    """kombu's in-process broker."""


class AMQPLink(Link):
    """py-amqp through kombu: confirms, deadlines, heartbeats, the frame fast path."""

    confirms = True
    notifies_cancel = True
    consumer_arguments = True
    counts_consumers = True
    heartbeats = True

    def __init__(self, kombu_connection: kombu.Connection, frame_write_timeout: float = 10.0) -> None:
        super().__init__(kombu_connection)
        # A connection without absolute deadlines (a plain py-amqp transport
        # handed in by a test) is driven with py-amqp's own timeouts.
        self._deadlines = callable(getattr(self.raw, "deadline", None))
        if self._deadlines:
            self.raw.frame_write_timeout = frame_write_timeout

    def drain(self, seconds: float) -> None:
        if self._deadlines:
            self.raw.drain_for(seconds)
        else:
            super().drain(seconds)

    def frame_buffered(self) -> bool:
        return self._deadlines and bool(self.raw.frame_buffered())

    @contextlib.contextmanager
    def request_deadline(self, operation: str, seconds: float) -> Iterator[None]:
        if not self._deadlines:
            yield
            return
        with self.raw.deadline(operation, max(0.001, seconds)):
            yield

    def message_converter(self, channel: Any) -> Callable[[Any], Any] | None:
        converter: Callable[[Any], Any] | None = getattr(channel, "message_to_python", None)
        return converter

    def discard(self) -> None:
        if self._deadlines:
            self.raw.discard()  # also cuts the reference cycles (see DeadlineConnection)
        else:
            self.raw.collect()

    def forget_after_fork(self) -> None:
        transport = getattr(self.raw, "_transport", None)
        sock = getattr(transport, "sock", None)
        if transport is None or sock is None:
            return
        transport.sock = None  # py-amqp's close() then sends and shuts down nothing
        with contextlib.suppress(OSError, ValueError):
            # detach() drops an SSL object without a close_notify; closing
            # the descriptor in the child leaves the parent's open.
            fd = sock.detach()
            if fd >= 0:
                os.close(fd)


def link_class(transport_cls: type) -> type[Link]:
    """The link a kombu transport class names, or the one judged from its kind."""
    named: type[Link] | None = getattr(transport_cls, "link_class", None)
    if named is not None:
        return named
    return AMQPLink if issubclass(transport_cls, kombu_pyamqp.Transport) else MemoryLink


def open_link(kombu_connection: kombu.Connection, *, frame_write_timeout: float = 10.0) -> Link:
    """Establish ``kombu_connection`` and wrap it in its transport's link."""
    cls = link_class(type(kombu_connection.transport))
    if issubclass(cls, AMQPLink):
        return cls(kombu_connection, frame_write_timeout)
    return cls(kombu_connection)

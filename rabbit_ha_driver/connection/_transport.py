"""kombu transports as the HA connection uses them.

How it works: the connection talks to kombu at the transport level
(``establish_connection``, ``create_channel``, ``drain_events``) and does its own
failover, so kombu's retry loops never sleep behind its back. For AMQP it uses
kombu's py-amqp transport with one change: every synchronous request (declare,
bind, consume, cancel, qos, close, a publisher confirm) runs under an absolute
deadline. py-amqp waits for a reply by reading frame after frame, each read
with the same timeout, so every incoming heartbeat restarts its clock;
:class:`DeadlineConnection` recomputes the time left before every read instead
and raises :class:`~rabbit_ha_driver.connection._errors.RequestTimeout` when the
deadline passes.

Writes have a deadline too: every frame is written with the socket's timeout
set to the time left before the current request's deadline (or
:attr:`DeadlineConnection.frame_write_timeout` from now when no request is under
way), so a broker that stops reading (frozen, or a connection it blocked)
cannot hold a writer, and the connection lock it holds, for ever. A write
that misses its deadline may have left a frame half written: the stream is
broken, and the connection is torn down (:class:`WriteTimeout`), after which
the publish follows the resend rules of a write that never happened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import amqp.exceptions
from kombu.transport import memory as kombu_memory
from kombu.transport import pyamqp as kombu_pyamqp

from rabbit_ha_driver import forks
from rabbit_ha_driver.connection._backend import AMQPLink, MemoryLink
from rabbit_ha_driver.connection._channel import RecoverableChannel
from rabbit_ha_driver.connection._errors import RequestTimeout, WriteTimeout
from rabbit_ha_driver.connection._inbound import MemoryMessage
from rabbit_ha_driver.exceptions import Unroutable

LOG = logging.getLogger(__name__)


def _frame_size(header: bytes) -> int:
    """Payload size of the AMQP frame whose header starts ``header``."""
    return int.from_bytes(header[3:7], "big")


def _gone(*args: Any, **kwargs: Any) -> None:
    """What a discarded connection reads and writes with: it is gone."""
    raise ConnectionResetError("this connection was discarded")


def _no_goodbye() -> None:
    """A discarded connection's transport says no TLS goodbye (see discard)."""


class DeadlineConnection(kombu_pyamqp.Connection):
    """py-amqp connection whose blocking waits honour an absolute deadline."""

    #: Channels the broker closes are released, never silently reopened.
    Channel = RecoverableChannel

    request_deadline: float | None = None
    request_operation: str = ""
    request_budget: float = 0.0

    drain_deadline: float | None = None
    #: Seconds a frame written outside any request may take to leave.
    frame_write_timeout: float = 10.0
    _last_channel_id = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # From its creation, not only once the HA connection holds it: a
        # thread may be in the middle of opening it (socket made, handshake
        # under way) when the process forks, and the child must not keep it.
        forks.at_fork_in_child(self._drop_socket_in_child)

    def _drop_socket_in_child(self) -> None:
        """In a forked child: close the parent's socket without a byte or a
        ``shutdown()`` on it (either would reach the parent's connection)."""
        transport = self._transport
        sock = getattr(transport, "sock", None)
        if sock is None:
            return
        transport.sock = None  # py-amqp's close() then sends and shuts down nothing
        with contextlib.suppress(OSError, ValueError):
            # detach() drops an SSL object without a close_notify; closing
            # the descriptor in the child leaves the parent's open.
            fd = sock.detach()
            if fd >= 0:
                os.close(fd)

    def fresh_channel(self) -> Any:
        """A new channel on an id not used recently.

        py-amqp would take the lowest free id, so a channel opened right
        after the broker closed one gets its id, and a frame the broker sent
        for the old one before it saw our ``close-ok`` (a second
        ``channel.close``, a delivery) would land on the new one. Ids go
        round instead, so such a frame finds no channel and is dropped
        (:meth:`on_inbound_method`).
        """
        limit = self.channel_max or 65535
        for _ in range(limit):
            self._last_channel_id = self._last_channel_id % limit + 1
            candidate = self._last_channel_id
            if candidate not in self.channels and candidate not in self._used_channel_ids:
                return self.channel(candidate)
        raise amqp.exceptions.ResourceError("no free channel id", (20, 10))

    _discarded = False

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        if self._discarded:
            # py-amqp connects again when a property of a collected connection
            # is read; a discarded one must stay gone.
            raise ConnectionResetError("this connection was discarded")
        try:
            # The whole handshake within connect_timeout (the caller's budget),
            # not each of its reads: a broker answering every frame late
            # would otherwise get the full timeout once per frame.
            timeout = self.connect_timeout
            with (self.deadline("connection.open", max(0.001, timeout)) if timeout
                  else contextlib.nullcontext()):
                return super().connect(*args, **kwargs)
        except BaseException:
            self.discard()  # a failed attempt is freed at once too
            raise

    def discard(self) -> None:
        """Free a connection that is done with, without talking to the broker.

        py-amqp's ``collect()`` closes the socket, but the connection stays
        tied in reference cycles (its frame reader and writer, which hold the
        frame buffers and the transport; its method callbacks), so every
        connection lost to a fault would wait for the cyclic garbage collector,
        and a process reconnecting often grows. The cycles are cut here so
        the memory is freed at once.
        """
        self._discarded = True
        transport = self._transport
        if transport is not None:
            # No TLS goodbye: py-amqp's close unwraps the TLS socket, which
            # waits for the broker's close_notify, and a lost connection's
            # broker (frozen, partitioned) never sends one.
            transport._shutdown_transport = _no_goodbye
        self.collect()
        if transport is not None:  # the bounded write refers to both (see Transport)
            transport.__dict__.pop("write", None)
            transport.__dict__.pop("_shutdown_transport", None)
        self.frame_writer = _gone
        self.on_inbound_frame = _gone
        self.on_open = None  # a fulfilled promise keeps the connection as its value
        self._callbacks.clear()

    def on_inbound_method(self, channel_id: int, method_sig: Any, payload: Any, content: Any) -> Any:
        channels = self.channels
        if channels is not None and channel_id not in channels:
            # A late frame for a channel we already closed (see fresh_channel).
            LOG.debug("dropping %s for channel %s, which is closed", method_sig, channel_id)
            return None
        return super().on_inbound_method(channel_id, method_sig, payload, content)

    def Transport(self, *args: Any, **kwargs: Any) -> Any:
        transport = super().Transport(*args, **kwargs)
        # py-amqp's frame writer looks ``write`` up once, when it connects:
        # replace it on the instance before that.
        transport.write = self._bounded_write(transport.write)
        return transport

    def _bounded_write(self, write: Any) -> Any:
        def bounded_write(data: Any) -> Any:
            transport = self.transport
            sock = getattr(transport, "sock", None)
            if sock is None:
                return write(data)
            now = time.monotonic()
            until = self.request_deadline if self.request_deadline is not None \
                else now + self.frame_write_timeout
            budget = max(0.001, until - now)
            previous = sock.gettimeout()
            sock.settimeout(budget if previous is None else min(previous, budget))
            try:
                return write(data)
            except TimeoutError:
                raise WriteTimeout(self.request_operation or "write", budget) from None
            finally:
                with contextlib.suppress(OSError):
                    sock.settimeout(previous)

        return bounded_write

    def blocking_read(self, timeout: float | None = None) -> Any:
        # py-amqp's drain_events() calls this once per frame and loops past
        # heartbeat frames with the same timeout, so both deadlines are
        # applied here, to every single read.
        if self.frame_buffered():
            # A whole frame is already read ahead (see amqp_io.buffered_reader):
            # parse it without touching the socket or its timeout; it needs
            # no waiting, so no deadline applies.
            return self.on_inbound_frame(self.transport.read_frame())
        now = time.monotonic()
        request, drain = self.request_deadline, self.drain_deadline
        if request is not None:
            if now >= request:
                raise RequestTimeout(self.request_operation, self.request_budget)
            timeout = request - now if timeout is None else min(timeout, request - now)
        if drain is not None:
            if now >= drain:
                raise TimeoutError("timed out")
            timeout = drain - now if timeout is None else min(timeout, drain - now)
        try:
            return super().blocking_read(timeout)
        except TimeoutError:
            if request is not None and time.monotonic() >= request:
                raise RequestTimeout(self.request_operation, self.request_budget) from None
            raise

    def frame_buffered(self) -> bool:
        """Whether a whole frame waits in the read-ahead buffer."""
        buffered = self.transport._read_buffer if self.transport is not None else b""
        return len(buffered) >= 8 and len(buffered) >= 8 + _frame_size(buffered)

    def drain_for(self, seconds: float) -> Any:
        """Dispatch incoming frames for at most ``seconds``, heartbeats included."""
        self.drain_deadline = time.monotonic() + max(0.0, seconds)
        try:
            return self.drain_events(timeout=seconds)
        finally:
            self.drain_deadline = None

    @contextlib.contextmanager
    def deadline(self, operation: str, seconds: float) -> Iterator[None]:
        """Run the body's synchronous requests under a deadline ``seconds`` away."""
        previous = (self.request_deadline, self.request_operation, self.request_budget)
        self.request_deadline = time.monotonic() + seconds
        self.request_operation, self.request_budget = operation, seconds
        try:
            yield
        finally:
            self.request_deadline, self.request_operation, self.request_budget = previous


class AMQPTransport(kombu_pyamqp.Transport):
    """kombu's py-amqp transport with deadline-aware connections."""

    Connection = DeadlineConnection
    link_class = AMQPLink

    def create_channel(self, connection: Any) -> Any:
        return connection.fresh_channel()


class MemoryChannel(kombu_memory.Channel):
    """kombu's memory channel, plus what RabbitMQ does with a mandatory message
    that no queue takes: it is refused (:class:`Unroutable`), not dropped."""

    #: Deliveries keep a compressed body compressed (see connection.inbound).
    Message = MemoryMessage

    def basic_publish(self, message: Any, exchange: str, routing_key: str, **kwargs: Any) -> Any:
        if kwargs.get("mandatory") and not self._routable(exchange, routing_key):
            raise Unroutable(f"no queue takes {exchange or '(default)'}/{routing_key}",
                             reply_code=312, operation="basic.publish")
        return super().basic_publish(message, exchange, routing_key, **kwargs)

    def _routable(self, exchange: str, routing_key: str) -> bool:
        if not exchange:
            return routing_key in self.queues
        try:
            table = self.get_table(exchange)
        except KeyError:
            return False
        return bool(self.typeof(exchange).lookup(table, exchange, routing_key, None))


class MemoryTransport(kombu_memory.Transport):
    """kombu's in-process transport, polled often enough for interactive use."""

    Channel = MemoryChannel
    polling_interval = 0.01
    link_class = MemoryLink


"""kombu transports as the HA connection uses them.

How it works: the connection talks to kombu at the transport level
(``establish_connection``, ``create_channel``, ``drain_events``) and does its own
failover, so kombu's retry loops never sleep behind its back. For AMQP it uses
kombu's py-amqp transport with one change: every synchronous request (declare,
bind, consume, cancel, qos, close, a publisher confirm) runs under an absolute
deadline. py-amqp waits for a reply by calling ``drain_events`` in a loop, each
with the same per-read timeout, so an incoming heartbeat restarts its clock;
:class:`DeadlineConnection` recomputes the time left on every read instead and
raises :class:`~rabbit_ha_driver.connection.errors.RequestTimeout` when the
deadline passes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from kombu.transport import memory as kombu_memory
from kombu.transport import pyamqp as kombu_pyamqp

from rabbit_ha_driver.connection.errors import RequestTimeout


class DeadlineConnection(kombu_pyamqp.Connection):
    """py-amqp connection whose blocking waits honour an absolute deadline."""

    request_deadline: float | None = None
    request_operation: str = ""
    request_budget: float = 0.0

    def drain_events(self, timeout: float | None = None) -> Any:
        deadline = self.request_deadline
        if deadline is None:
            return super().drain_events(timeout=timeout)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RequestTimeout(self.request_operation, self.request_budget)
        timeout = remaining if timeout is None else min(timeout, remaining)
        try:
            return super().drain_events(timeout=timeout)
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise RequestTimeout(self.request_operation, self.request_budget) from None
            raise

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


class MemoryTransport(kombu_memory.Transport):
    """kombu's in-process transport, polled often enough for interactive use."""

    polling_interval = 0.01


def supports_confirms(transport: Any) -> bool:
    """True when the transport talks AMQP (publisher confirms, returns, cancels)."""
    return isinstance(transport, kombu_pyamqp.Transport)

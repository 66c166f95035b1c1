"""What the metrics count: the counter and gauge names, the latency histogram, a series.

:data:`COUNTERS` and :data:`GAUGES` name every figure kept, with what it
counts (the Prometheus help texts are made from them); a :class:`Series` holds
the counters, with a call latency :class:`Histogram`, of one connection or one
broker host (the gauges are read from connection states at snapshot time).
:class:`~rabbit_ha_driver.metrics.Metrics` folds the events into series;
nothing here locks or knows about events.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from typing import Any

#: Upper bounds, in seconds, of the call latency histogram's buckets; a last
#: ``+Inf`` bucket is implied. They cover a fast loopback call (milliseconds)
#: up to oslo.messaging's default 60 s call timeout.
DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)

#: Counters kept for every connection and every host, with what each counts.
COUNTERS: dict[str, str] = {
    "connects": "AMQP handshakes that succeeded",
    "reconnects": "handshakes after the first one of a connection",
    "connect_failures": "connect attempts to one host that failed",
    "connections_lost": "established connections that failed",
    "failovers": "recoveries onto a different host (counted for the host left)",
    "consumer_cancels": "consumers cancelled by the broker (basic.cancel)",
    "consumers_restored": "cancelled consumers consuming again",
    "consumers_lost": "consumers the broker lost without a cancel, consuming again",
    "heartbeats_missed": "times nothing arrived for longer than 1.5 heartbeat intervals",
    "declared_dead": "connections declared dead for lack of inbound traffic",
    "blocks": "times the broker blocked publishing (resource alarm)",
    "blocked_seconds": "seconds spent blocked by the broker",
    "request_deadlines_missed": "synchronous AMQP requests with no reply before their deadline",
    "requests_resent": "call requests sent again after their fate was uncertain",
    "duplicate_requests_answered": "repeated call requests answered from a server's reply cache",
    "duplicate_requests_dropped": "repeated call requests dropped while the first copy ran",
    "unroutable_retries": "messages returned unroutable and sent again",
    "calls": "RPC calls that ended (with a result, an error or a timeout)",
    "call_errors": "RPC calls that ended with an error other than a timeout",
    "call_timeouts": "RPC calls that timed out",
}

#: Gauges kept for every connection (0 or 1) and every host (a count).
GAUGES: dict[str, str] = {
    "connected": "connections that are open (connected or blocked)",
    "blocked": "connections the broker is blocking",
}


class Histogram:
    """Cumulative buckets, sum, count and maximum of observed values."""

    def __init__(self, bounds: Iterable[float] = DEFAULT_LATENCY_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0
        self.max = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value
        self.max = max(self.max, value)

    def snapshot(self) -> dict[str, Any]:
        """``count``, ``sum``, ``max`` and ``buckets`` (upper bound -> cumulative count)."""
        buckets: dict[float, int] = {}
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self._counts, strict=True):
            running += n
            buckets[bound] = running
        return {"count": self.count, "sum": self.sum, "max": self.max, "buckets": buckets}


class Series:
    """The counters and call latency of one connection or one host."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.counters: dict[str, float] = dict.fromkeys(COUNTERS, 0)
        self.latency = Histogram(bounds)

    def add(self, name: str, amount: float = 1) -> None:
        self.counters[name] += amount

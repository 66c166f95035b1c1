"""Counters and gauges per connection and per broker host, fed by the event stream.

How this works. A :class:`Metrics` object is an event subscriber: attach it to
one or more :class:`~rabbit_ha_driver.events.EventBus` (or to anything with an
``events`` bus, such as a :class:`~rabbit_ha_driver.connection.Connection`)
and it folds every event into two tables, one keyed by connection name and
one by broker host (``host:port``). Nothing is sampled or polled: each count
is the number of events of one kind, so the figures agree with the log lines
the same events produce.

Events that name a host are counted for that host; the others (a consumer
cancel, a state change) for the host the connection is on at that moment, as
learnt from its last ``Connected`` event. A failover is counted for the host
the connection *left*: the host that keeps losing connections is the one to
look at. Gauges (``connected``, ``blocked``) follow the connection's
lifecycle state; per host they are the number of connections in that state on
the host. Time spent blocked is measured on an injectable clock.

The connection layer emits every event counted here except those of
:mod:`rabbit_ha_driver.rpc_events` (calls completed and timed out, messages
returned unroutable, requests sent again, repeated requests), which belong to
the RPC layer and go on the bus of its connections. What is counted, and the
latency histogram, are in :mod:`rabbit_ha_driver.metric_series`.
:meth:`Metrics.snapshot` returns plain dicts (safe to serialise or compare),
:meth:`Metrics.log_summary` writes them as log lines, and
:mod:`rabbit_ha_driver.prometheus` exposes them to a Prometheus registry when
``prometheus-client`` is installed.

Subscribers run on the thread that emitted the event (a heartbeat runner's,
a consumer's, a caller's), so every update takes one short lock.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import forks
from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.metric_series import (
    COUNTERS,
    DEFAULT_LATENCY_BUCKETS,
    GAUGES,
    Histogram,
    Series,
)

__all__ = [
    "COUNTERS",
    "DEFAULT_LATENCY_BUCKETS",
    "GAUGES",
    "CallCompleted",
    "CallTimedOut",
    "Histogram",
    "Metrics",
    "UnroutableRetry",
]

LOG = logging.getLogger(__name__)

# The RPC layer's events, still importable from here.
CallCompleted = ev.CallCompleted
CallTimedOut = ev.CallTimedOut
UnroutableRetry = ev.UnroutableRetry

_OPEN_STATES = frozenset({"connected", "blocked"})


# -- the tables ------------------------------------------------------------------


@dataclasses.dataclass
class _ConnState:
    """What is known of one connection between events."""

    state: str = "new"
    host: str | None = None
    heartbeat: float | None = None
    ever_connected: bool = False
    blocked_since: float | None = None


class Metrics:
    """Counts the events of the buses it is attached to; thread-safe.

    ``clock`` measures time spent blocked (tests pass a fake clock);
    ``latency_buckets`` are the call latency histogram's upper bounds.
    """

    def __init__(self, clock: Clock | None = None,
                 latency_buckets: Iterable[float] = DEFAULT_LATENCY_BUCKETS) -> None:
        self._clock = clock or REAL_CLOCK
        self._bounds = tuple(sorted(latency_buckets))
        self._lock = threading.Lock()
        self._conns: dict[str, _ConnState] = {}
        self._by_conn: dict[str, Series] = {}
        self._by_host: dict[str, Series] = {}
        self._attached: dict[int, tuple[ev.EventBus, Callable[[], None]]] = {}
        forks.at_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread of the parent,
        gone in the child, may have held it). The counts stay the parent's
        until then; the child counts on from them."""
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Metrics {len(self._by_conn)} connections, {len(self._by_host)} hosts>"

    # -- subscribing ------------------------------------------------------------

    def attach(self, source: ev.EventBus | Any) -> Callable[[], None]:
        """Subscribe to ``source``: an EventBus, or an object with an ``events`` bus.

        Connections (and RPC transports) that share a bus share it here too:
        attaching the same bus twice does not count its events twice.
        Returns a function that detaches again.
        """
        bus = source if isinstance(source, ev.EventBus) else getattr(source, "events", None)
        if not isinstance(bus, ev.EventBus):
            raise TypeError(f"expected an EventBus or an object with an .events bus, "
                            f"not {type(source).__name__}")
        with self._lock:
            known = self._attached.get(id(bus))
            if known is not None and known[0] is bus:
                return known[1]
            unsubscribe = bus.subscribe(self)

            def detach() -> None:
                with self._lock:
                    if self._attached.get(id(bus), (None,))[0] is bus:
                        del self._attached[id(bus)]
                unsubscribe()

            self._attached[id(bus)] = (bus, detach)
            return detach

    def detach_all(self) -> None:
        """Stop counting events of every bus attached so far."""
        with self._lock:
            detachers = [d for _, d in self._attached.values()]
        for detach in detachers:
            detach()

    def forget(self, connection: str) -> None:
        """Drop a connection's own series (its host totals stay), e.g. once closed."""
        with self._lock:
            self._conns.pop(connection, None)
            self._by_conn.pop(connection, None)

    # -- counting ---------------------------------------------------------------

    def __call__(self, event: ev.Event) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is None:
            return
        with self._lock:
            handler(self, event)

    def _conn(self, name: str) -> _ConnState:
        conn = self._conns.get(name)
        if conn is None:
            conn = self._conns[name] = _ConnState()
            self._by_conn[name] = Series(self._bounds)
        return conn

    def _count(self, event: ev.Event, name: str, amount: float = 1,
               host: str | None = None) -> None:
        """Add to the connection's counter and to its host's (the event's, or current)."""
        self._conn(event.connection)
        self._by_conn[event.connection].add(name, amount)
        where = self._where(event, host)
        if where is not None:
            self._host(where).add(name, amount)

    def _where(self, event: ev.Event, host: str | None = None) -> str | None:
        """The host an event is about: given, named by the event, or the current one.

        ``"-"`` is what the connection layer writes when it knows no host.
        """
        for candidate in (host, getattr(event, "host", None), self._conn(event.connection).host):
            if candidate and candidate != "-":
                return str(candidate)
        return None

    def _host(self, host: str) -> Series:
        series = self._by_host.get(host)
        if series is None:
            series = self._by_host[host] = Series(self._bounds)
        return series

    def _end_block(self, name: str, conn: _ConnState) -> None:
        if conn.blocked_since is None:
            return
        seconds = max(0.0, self._clock.now() - conn.blocked_since)
        conn.blocked_since = None
        self._by_conn[name].add("blocked_seconds", seconds)
        if conn.host:
            self._host(conn.host).add("blocked_seconds", seconds)

    def _on_state(self, event: ev.StateChanged) -> None:
        conn = self._conn(event.connection)
        conn.state = event.new
        if event.new != "blocked":
            self._end_block(event.connection, conn)

    def _on_connected(self, event: ev.Connected) -> None:
        conn = self._conn(event.connection)
        conn.host = event.host
        conn.heartbeat = event.heartbeat
        self._count(event, "connects")
        if conn.ever_connected:
            self._count(event, "reconnects")
        conn.ever_connected = True

    def _on_blocked(self, event: ev.Blocked) -> None:
        conn = self._conn(event.connection)
        self._count(event, "blocks")
        if conn.blocked_since is None:
            conn.blocked_since = self._clock.now()

    def _on_unblocked(self, event: ev.Unblocked) -> None:
        self._end_block(event.connection, self._conn(event.connection))

    def _on_call(self, event: CallCompleted) -> None:
        self._count(event, "calls")
        if not event.ok:
            self._count(event, "call_errors")
        self._by_conn[event.connection].latency.observe(event.latency)
        where = self._where(event)
        if where is not None:
            self._host(where).latency.observe(event.latency)

    def _on_call_timeout(self, event: CallTimedOut) -> None:
        self._count(event, "calls")
        self._count(event, "call_timeouts")

    # -- reading ----------------------------------------------------------------

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every figure as plain dicts: ``{"connections": {...}, "hosts": {...}}``.

        A connection's entry holds its ``state``, ``host``, negotiated
        ``heartbeat``, the gauges ``connected`` and ``blocked`` (0 or 1), every
        counter of :data:`COUNTERS` and ``call_latency`` (see
        :meth:`Histogram.snapshot`). A host's entry holds the same counters,
        ``call_latency`` and the gauges as the number of connections in that
        state on the host. ``blocked_seconds`` includes a block still going on.
        """
        with self._lock:
            now = self._clock.now()
            hosts: dict[str, dict[str, Any]] = {
                host: {**dict.fromkeys(GAUGES, 0), **series.counters,
                       "call_latency": series.latency.snapshot()}
                for host, series in self._by_host.items()
            }
            conns: dict[str, dict[str, Any]] = {}
            for name, conn in self._conns.items():
                series = self._by_conn[name]
                connected = int(conn.state in _OPEN_STATES)
                blocked = int(conn.blocked_since is not None)
                ongoing = now - conn.blocked_since if conn.blocked_since is not None else 0.0
                entry: dict[str, Any] = {
                    "state": conn.state, "host": conn.host, "heartbeat": conn.heartbeat,
                    "connected": connected, "blocked": blocked, **series.counters,
                    "call_latency": series.latency.snapshot(),
                }
                entry["blocked_seconds"] += ongoing
                conns[name] = entry
                if conn.host is not None and conn.host in hosts:
                    host_entry = hosts[conn.host]
                    host_entry["connected"] += connected
                    host_entry["blocked"] += blocked
                    host_entry["blocked_seconds"] += ongoing
            return {"connections": conns, "hosts": hosts}

    def summary_lines(self) -> list[str]:
        """One line per connection and one per host, with the counters that are not zero."""
        snap = self.snapshot()
        lines = [f"[{name}] {entry['state']} on {entry['host'] or '-'}, heartbeat "
                 f"{_seconds(entry['heartbeat'])}: {_figures(entry)}"
                 for name, entry in sorted(snap["connections"].items())]
        lines += [f"host {host}: {entry['connected']} connected, {entry['blocked']} blocked: "
                  f"{_figures(entry)}" for host, entry in sorted(snap["hosts"].items())]
        return lines

    def log_summary(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        """Log :meth:`summary_lines`."""
        log = logger or LOG
        if log.isEnabledFor(level):
            for line in self.summary_lines():
                log.log(level, "%s", line)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g}s"


def _figures(entry: dict[str, Any]) -> str:
    """``reconnects=2 failovers=1 ... call latency mean 0.012s max 0.200s``, zeros left out."""
    parts = []
    for name in COUNTERS:
        value = entry[name]
        if value:
            parts.append(f"{name}={value:.1f}" if name == "blocked_seconds" else f"{name}={value:g}")
    latency = entry["call_latency"]
    if latency["count"]:
        parts.append(f"call latency mean {latency['sum'] / latency['count']:.3f}s "
                     f"max {latency['max']:.3f}s")
    return " ".join(parts) or "no events counted"


def _counter(name: str) -> Callable[[Metrics, Any], None]:
    def count(metrics: Metrics, event: Any) -> None:
        metrics._count(event, name)

    return count


def _failover(metrics: Metrics, event: ev.FailedOver) -> None:
    metrics._count(event, "failovers", host=event.from_host)


def _duplicate(metrics: Metrics, event: ev.DuplicateRequest) -> None:
    name = "duplicate_requests_answered" if event.answered else "duplicate_requests_dropped"
    metrics._count(event, name)


_HANDLERS: dict[type[ev.Event], Callable[[Metrics, Any], None]] = {
    ev.StateChanged: Metrics._on_state,
    ev.Connected: Metrics._on_connected,
    ev.ConnectFailed: _counter("connect_failures"),
    ev.ConnectionLost: _counter("connections_lost"),
    ev.FailedOver: _failover,
    ev.ConsumerCancelled: _counter("consumer_cancels"),
    ev.ConsumerRestored: _counter("consumers_restored"),
    ev.ConsumerLost: _counter("consumers_lost"),
    ev.HeartbeatMissed: _counter("heartbeats_missed"),
    ev.DeclaredDead: _counter("declared_dead"),
    ev.Blocked: Metrics._on_blocked,
    ev.Unblocked: Metrics._on_unblocked,
    ev.RequestDeadlineMissed: _counter("request_deadlines_missed"),
    UnroutableRetry: _counter("unroutable_retries"),
    CallCompleted: Metrics._on_call,
    CallTimedOut: Metrics._on_call_timeout,
    ev.RequestResent: _counter("requests_resent"),
    ev.DuplicateRequest: _duplicate,
}

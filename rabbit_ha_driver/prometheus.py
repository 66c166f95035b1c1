"""Prometheus exposition of :class:`~rabbit_ha_driver.metrics.Metrics` (optional).

Needs ``prometheus-client`` (``pip install rabbit_ha_driver[prometheus]``);
importing this module without it raises ImportError, and nothing else in the
library imports it.

How this works. :class:`PrometheusCollector` is a custom collector: at every
scrape it takes one :meth:`Metrics.snapshot` and turns it into metric
families, so the figures of one scrape are consistent with each other and no
state is kept twice. Per-connection and per-host figures are separate
families (``rabbit_ha_connection_*{connection}`` and
``rabbit_ha_host_*{host}``) so that summing one family never counts an event
twice. A service that already serves metrics registers the collector on its
own registry::

    registry.register(PrometheusCollector(metrics))

:func:`serve` is for services that have no HTTP server: it starts one, on
loopback by default, that serves a private registry holding only this
collector.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from rabbit_ha_driver.metric_series import COUNTERS, GAUGES
from rabbit_ha_driver.metrics import Metrics
from rabbit_ha_driver.settings import Settings

PREFIX = "rabbit_ha"

_SCOPES = (("connection", "connections"), ("host", "hosts"))


class PrometheusCollector:
    """Reads a :class:`Metrics` at every scrape; register it on any registry."""

    def __init__(self, metrics: Metrics, prefix: str = PREFIX) -> None:
        self.metrics = metrics
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"<PrometheusCollector {self.prefix}_* of {self.metrics!r}>"

    def describe(self) -> Iterator[Metric]:
        """The families without samples, so a registry can refuse duplicate names."""
        yield from self._families({"connections": {}, "hosts": {}})

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self.metrics.snapshot())

    def _families(self, snap: dict[str, dict[str, dict[str, Any]]]) -> Iterator[Metric]:
        for label, key in _SCOPES:
            entries = sorted(snap[key].items())
            base = f"{self.prefix}_{label}"
            for name, text in GAUGES.items():
                gauge = GaugeMetricFamily(f"{base}_{name}", f"{text.capitalize()} ({label}).",
                                          labels=[label])
                for who, entry in entries:
                    gauge.add_metric([who], entry[name])
                yield gauge
            for name, text in COUNTERS.items():
                counter = CounterMetricFamily(f"{base}_{name}", f"{text.capitalize()} ({label}).",
                                              labels=[label])
                for who, entry in entries:
                    counter.add_metric([who], entry[name])
                yield counter
            histogram = HistogramMetricFamily(
                f"{base}_call_latency_seconds",
                f"Seconds from sending an RPC call to its reply ({label}).", labels=[label])
            for who, entry in entries:
                latency = entry["call_latency"]
                buckets = [(_le(bound), count) for bound, count in latency["buckets"].items()]
                histogram.add_metric([who], buckets, latency["sum"])
            yield histogram
        heartbeat = GaugeMetricFamily(
            f"{self.prefix}_connection_heartbeat_seconds",
            "Heartbeat interval negotiated with the broker (connection).", labels=["connection"])
        for who, entry in sorted(snap["connections"].items()):
            if entry["heartbeat"] is not None:
                heartbeat.add_metric([who], entry["heartbeat"])
        yield heartbeat


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class MetricsServer:
    """A running exposition server; :meth:`close` stops it."""

    def __init__(self, server: Any, thread: Any, registry: CollectorRegistry) -> None:
        self._server = server
        self._thread = thread
        self.registry = registry

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the server listens on; the port is real even if 0 was asked."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2.0)

    def __repr__(self) -> str:
        host, port = self.address
        return f"<MetricsServer http://{host}:{port}/metrics>"


def serve(metrics: Metrics, port: int | None = None, *, settings: Settings | None = None,
          addr: str = "127.0.0.1") -> MetricsServer | None:
    """Serve ``metrics`` over HTTP at ``http://addr:port/metrics``; None if no port.

    ``port`` defaults to ``settings.metrics_http_port``; when neither gives one
    (the option is unset by default) nothing is started and None is returned.
    The server listens on loopback unless ``addr`` says otherwise: the figures
    name hosts and connections, which is not for everyone to read. It runs in
    a daemon thread (a green thread when eventlet has monkey-patched the
    process).
    """
    if port is None and settings is not None:
        port = settings.metrics_http_port
    if port is None:
        return None
    registry = CollectorRegistry(auto_describe=True)
    registry.register(PrometheusCollector(metrics))
    # prometheus-client >= 0.17 returns the server and its thread.
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(server, thread, registry)

"""Metrics fed by events: counters, gauges, latency, attach, logs, Prometheus text."""

from __future__ import annotations

import json
import logging
import math
import threading
import urllib.request

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.clock import FakeClock
from rabbit_ha_driver.connection import Backoff, Connection
from rabbit_ha_driver.metrics import (
    COUNTERS,
    CallCompleted,
    CallTimedOut,
    Histogram,
    Metrics,
    UnroutableRetry,
)
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.testing import FakeBroker, FakeTransport

H1, H2 = "h1:1", "h2:2"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics(clock: FakeClock) -> Metrics:
    return Metrics(clock=clock)


def feed(metrics: Metrics, *events: ev.Event) -> None:
    for event in events:
        metrics(event)


def connect(name: str, host: str, old: str = "new", first: bool = True) -> list[ev.Event]:
    """The events of one successful (re)connect, in the order the connection emits them."""
    return [
        ev.StateChanged(name, old, "connecting" if first else "recovering"),
        ev.Connecting(name, host, 1),
        ev.StateChanged(name, "connecting" if first else "recovering", "connected"),
        ev.Connected(name, host, 40000, 15.0),
    ]


def test_reconnect_and_failover_counted_per_connection_and_per_host(metrics):
    feed(metrics, *connect("svc", H1))
    feed(metrics,
         ev.ConnectionLost("svc", H1, "reset"),
         ev.StateChanged("svc", "connected", "recovering"),
         ev.ConnectFailed("svc", H1, "refused"))
    snap = metrics.snapshot()
    assert snap["connections"]["svc"]["connected"] == 0
    assert snap["hosts"][H1]["connected"] == 0

    feed(metrics,
         ev.Connecting("svc", H2, 2),
         ev.StateChanged("svc", "recovering", "connected"),
         ev.Connected("svc", H2, 40001, 15.0),
         ev.FailedOver("svc", H1, H2))
    snap = metrics.snapshot()
    conn = snap["connections"]["svc"]
    assert (conn["state"], conn["host"], conn["heartbeat"], conn["connected"]) == ("connected", H2, 15.0, 1)
    assert (conn["connects"], conn["reconnects"], conn["failovers"]) == (2, 1, 1)
    assert (conn["connections_lost"], conn["connect_failures"]) == (1, 1)
    # The failover is the fault of the host left behind.
    h1, h2 = snap["hosts"][H1], snap["hosts"][H2]
    assert (h1["failovers"], h1["connections_lost"], h1["connect_failures"], h1["connected"]) == (1, 1, 1, 0)
    assert (h2["failovers"], h2["connects"], h2["reconnects"], h2["connected"]) == (0, 1, 1, 1)


def test_host_gauge_counts_the_connections_on_it(metrics):
    for name in ("a", "b", "c"):
        feed(metrics, *connect(name, H1 if name != "c" else H2))
    feed(metrics, ev.StateChanged("b", "connected", "closed"))
    hosts = metrics.snapshot()["hosts"]
    assert (hosts[H1]["connected"], hosts[H2]["connected"]) == (1, 1)


def test_events_without_a_host_count_for_the_current_host(metrics):
    feed(metrics, *connect("svc", H2))
    feed(metrics,
         ev.ConsumerCancelled("svc", "q", 1.0),
         ev.ConsumerRestored("svc", "q", True),
         ev.RequestDeadlineMissed("svc", "-", "queue.declare", 10.0))
    conn, host = metrics.snapshot()["connections"]["svc"], metrics.snapshot()["hosts"][H2]
    for entry in (conn, host):
        assert (entry["consumer_cancels"], entry["consumers_restored"],
                entry["request_deadlines_missed"]) == (1, 1, 1)
    assert "-" not in metrics.snapshot()["hosts"]


def test_liveness_events(metrics):
    feed(metrics, *connect("svc", H1))
    feed(metrics,
         ev.HeartbeatMissed("svc", H1, 23.0),
         ev.HeartbeatMissed("svc", H1, 26.0),
         ev.DeclaredDead("svc", H1, 30.0, 30.0))
    host = metrics.snapshot()["hosts"][H1]
    assert (host["heartbeats_missed"], host["declared_dead"]) == (2, 1)


def test_blocked_gauge_count_and_seconds_on_the_clock(metrics, clock):
    feed(metrics, *connect("svc", H1))
    feed(metrics, ev.StateChanged("svc", "connected", "blocked"), ev.Blocked("svc", H1, "low on memory"))
    clock.advance(4.0)
    feed(metrics, ev.Blocked("svc", H1, "low on disk"))  # still the same block
    clock.advance(1.0)
    snap = metrics.snapshot()
    conn, host = snap["connections"]["svc"], snap["hosts"][H1]
    assert (conn["blocked"], conn["connected"], conn["blocks"]) == (1, 1, 2)
    assert conn["blocked_seconds"] == pytest.approx(5.0)
    assert (host["blocked"], host["blocked_seconds"]) == (1, pytest.approx(5.0))

    feed(metrics, ev.StateChanged("svc", "blocked", "connected"), ev.Unblocked("svc", H1))
    clock.advance(100.0)
    conn = metrics.snapshot()["connections"]["svc"]
    assert (conn["blocked"], conn["blocked_seconds"]) == (0, pytest.approx(5.0))


def test_a_lost_connection_ends_its_block(metrics, clock):
    feed(metrics, *connect("svc", H1))
    feed(metrics, ev.StateChanged("svc", "connected", "blocked"), ev.Blocked("svc", H1, "alarm"))
    clock.advance(2.0)
    feed(metrics, ev.ConnectionLost("svc", H1, "reset"), ev.StateChanged("svc", "blocked", "recovering"))
    clock.advance(50.0)
    host = metrics.snapshot()["hosts"][H1]
    assert (host["blocked"], host["blocked_seconds"]) == (0, pytest.approx(2.0))


def test_calls_timeouts_errors_and_latency(metrics):
    feed(metrics, *connect("svc:publish", H1))
    feed(metrics,
         CallCompleted("svc:publish", H1, 0.004, True),
         CallCompleted("svc:publish", H1, 0.2, True),
         CallCompleted("svc:publish", H1, 0.3, False),
         CallTimedOut("svc:publish", H1, 60.0),
         UnroutableRetry("svc:publish", H1, "nova", "compute.host1", 1))
    for entry in (metrics.snapshot()["connections"]["svc:publish"], metrics.snapshot()["hosts"][H1]):
        assert (entry["calls"], entry["call_errors"], entry["call_timeouts"],
                entry["unroutable_retries"]) == (4, 1, 1, 1)
        latency = entry["call_latency"]
        assert latency["count"] == 3
        assert latency["sum"] == pytest.approx(0.504)
        assert latency["max"] == 0.3
        assert latency["buckets"][0.005] == 1
        assert latency["buckets"][0.25] == 2
        assert latency["buckets"][0.5] == 3
        assert latency["buckets"][math.inf] == 3


def test_histogram_bucket_bounds_are_inclusive():
    hist = Histogram([1.0, 2.0])
    for value in (1.0, 1.5, 2.0, 7.0):
        hist.observe(value)
    assert hist.snapshot()["buckets"] == {1.0: 1, 2.0: 3, math.inf: 4}


def test_snapshot_is_plain_data_and_a_copy(metrics):
    feed(metrics, *connect("svc", H1), CallCompleted("svc", H1, 0.1, True))
    snap = metrics.snapshot()
    json.dumps(snap)
    snap["connections"]["svc"]["connects"] = 99
    snap["hosts"][H1]["call_latency"]["buckets"][math.inf] = 99
    again = metrics.snapshot()
    assert again["connections"]["svc"]["connects"] == 1
    assert again["hosts"][H1]["call_latency"]["buckets"][math.inf] == 1
    assert set(COUNTERS) <= set(again["connections"]["svc"])


def test_unknown_events_are_ignored(metrics):
    feed(metrics, ev.RunnerSelected("svc", "native", "auto"), ev.TopologyRestored("svc", H1, 1, 1))
    assert metrics.snapshot() == {"connections": {}, "hosts": {}}


def test_attach_twice_counts_once_and_detach_stops(metrics):
    bus = ev.EventBus()
    detach = metrics.attach(bus)
    assert metrics.attach(bus) is detach
    bus.emit(ev.ConnectFailed("svc", H1, "refused"))
    assert metrics.snapshot()["hosts"][H1]["connect_failures"] == 1
    detach()
    bus.emit(ev.ConnectFailed("svc", H1, "refused"))
    assert metrics.snapshot()["hosts"][H1]["connect_failures"] == 1
    metrics.attach(bus)  # attachable again after a detach
    bus.emit(ev.ConnectFailed("svc", H1, "refused"))
    metrics.detach_all()
    bus.emit(ev.ConnectFailed("svc", H1, "refused"))
    assert metrics.snapshot()["hosts"][H1]["connect_failures"] == 2


def test_attach_refuses_what_has_no_bus(metrics):
    with pytest.raises(TypeError, match="EventBus"):
        metrics.attach(object())


def test_forget_drops_a_connection_but_not_its_host_totals(metrics):
    feed(metrics, *connect("svc", H1))
    metrics.forget("svc")
    snap = metrics.snapshot()
    assert "svc" not in snap["connections"]
    assert snap["hosts"][H1]["connects"] == 1


def test_counts_from_many_threads_add_up(metrics):
    def work() -> None:
        for _ in range(500):
            metrics(ev.HeartbeatMissed("svc", H1, 1.0))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert metrics.snapshot()["hosts"][H1]["heartbeats_missed"] == 2000


def test_a_real_connection_failing_over_and_cancelled(metrics, clock):
    broker = FakeBroker()
    conn = Connection(from_url("rabbit://u:p@h1:1,u:p@h2:2/", kombu_reconnect_delay=1.0),
                      name="svc", clock=clock, transport=FakeTransport,
                      transport_options={"fake_broker": broker},
                      backoff=Backoff(0.2, 1.0, 3.0, jitter=0.0))
    metrics.attach(conn)
    conn.declare_queue("q")
    conn.consume("q", conn.ack)
    broker.drop_connections()
    conn.drain_events(0)
    conn.drain_events(0)
    broker.cancel_consumers("q")
    conn.drain_events(0)
    clock.advance(1.0)
    conn.drain_events(0)
    snap = metrics.snapshot()
    entry = snap["connections"]["svc"]
    assert (entry["host"], entry["connected"]) == (H2, 1)
    assert (entry["reconnects"], entry["failovers"], entry["consumer_cancels"],
            entry["consumers_restored"]) == (1, 1, 1, 1)
    assert snap["hosts"][H1]["failovers"] == 1
    assert snap["hosts"][H2]["consumer_cancels"] == 1
    conn.close()
    assert metrics.snapshot()["connections"]["svc"]["connected"] == 0


def test_log_summary_names_state_host_and_nonzero_counters(metrics, caplog):
    feed(metrics, *connect("svc", H1), ev.ConsumerCancelled("svc", "q", 1.0),
         CallCompleted("svc", H1, 0.25, True))
    with caplog.at_level(logging.INFO, logger="rabbit_ha_driver.metrics"):
        metrics.log_summary()
    conn_line, host_line = caplog.messages
    assert conn_line.startswith(f"[svc] connected on {H1}, heartbeat 15s: connects=1 ")
    assert "consumer_cancels=1" in conn_line and "reconnects" not in conn_line
    assert "call latency mean 0.250s max 0.250s" in conn_line
    assert host_line.startswith(f"host {H1}: 1 connected, 0 blocked: connects=1")


def test_log_summary_skips_work_when_the_level_is_off(metrics, caplog):
    feed(metrics, *connect("svc", H1))
    with caplog.at_level(logging.WARNING, logger="rabbit_ha_driver.metrics"):
        metrics.log_summary(level=logging.DEBUG)
    assert caplog.messages == []


def test_rpc_events_describe_themselves():
    assert CallCompleted("c", H1, 0.5, False).describe() == f"call via {H1} failed after 0.500s"
    assert CallTimedOut("c", H1, 60.0).describe() == f"call via {H1} timed out after 60s"
    assert "sending it again (attempt 2)" in UnroutableRetry("c", H1, "x", "k", 2).describe()


# -- Prometheus ----------------------------------------------------------------------


def exposition(metrics: Metrics) -> list[str]:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from rabbit_ha_driver.prometheus import PrometheusCollector

    registry = CollectorRegistry()
    registry.register(PrometheusCollector(metrics))
    return generate_latest(registry).decode().splitlines()


def test_prometheus_text(metrics, clock):
    feed(metrics, *connect("svc", H1))
    feed(metrics, ev.ConnectionLost("svc", H1, "reset"), ev.StateChanged("svc", "connected", "recovering"))
    feed(metrics, *connect("svc", H2, old="recovering", first=False)[1:], ev.FailedOver("svc", H1, H2))
    feed(metrics, ev.StateChanged("svc", "connected", "blocked"), ev.Blocked("svc", H2, "alarm"))
    clock.advance(3.0)
    feed(metrics, CallCompleted("svc", H2, 0.04, True), CallTimedOut("svc", H2, 5.0))
    lines = exposition(metrics)
    for expected in (
        'rabbit_ha_connection_connected{connection="svc"} 1.0',
        'rabbit_ha_connection_blocked{connection="svc"} 1.0',
        'rabbit_ha_connection_reconnects_total{connection="svc"} 1.0',
        'rabbit_ha_connection_blocked_seconds_total{connection="svc"} 3.0',
        'rabbit_ha_connection_heartbeat_seconds{connection="svc"} 15.0',
        f'rabbit_ha_host_connected{{host="{H1}"}} 0.0',
        f'rabbit_ha_host_connected{{host="{H2}"}} 1.0',
        f'rabbit_ha_host_failovers_total{{host="{H1}"}} 1.0',
        f'rabbit_ha_host_failovers_total{{host="{H2}"}} 0.0',
        'rabbit_ha_connection_calls_total{connection="svc"} 2.0',
        'rabbit_ha_connection_call_timeouts_total{connection="svc"} 1.0',
        'rabbit_ha_connection_call_latency_seconds_bucket{connection="svc",le="0.025"} 0.0',
        'rabbit_ha_connection_call_latency_seconds_bucket{connection="svc",le="0.05"} 1.0',
        'rabbit_ha_connection_call_latency_seconds_bucket{connection="svc",le="+Inf"} 1.0',
        'rabbit_ha_connection_call_latency_seconds_count{connection="svc"} 1.0',
        f'rabbit_ha_host_call_latency_seconds_sum{{host="{H2}"}} 0.04',
        "# TYPE rabbit_ha_host_reconnects_total counter",
        "# TYPE rabbit_ha_connection_call_latency_seconds histogram",
    ):
        assert expected in lines, expected


def test_prometheus_families_exist_before_any_event(metrics):
    lines = exposition(metrics)
    assert "# TYPE rabbit_ha_connection_connected gauge" in lines
    assert not [line for line in lines if line and not line.startswith("#")]


def test_registering_twice_on_one_registry_is_refused(metrics):
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry

    from rabbit_ha_driver.prometheus import PrometheusCollector

    registry = CollectorRegistry()
    registry.register(PrometheusCollector(metrics))
    with pytest.raises(ValueError, match="Duplicated"):
        registry.register(PrometheusCollector(metrics))


def test_serve_starts_nothing_without_a_port(metrics):
    pytest.importorskip("prometheus_client")
    from rabbit_ha_driver.prometheus import serve

    assert serve(metrics) is None
    assert serve(metrics, settings=from_url("memory://")) is None


def test_serve_on_loopback_from_the_option(metrics):
    pytest.importorskip("prometheus_client")
    from rabbit_ha_driver.prometheus import serve

    feed(metrics, *connect("svc", H1))
    server = serve(metrics, settings=from_url("memory://", metrics_http_port=0))
    assert server is not None
    try:
        host, port = server.address
        assert host == "127.0.0.1" and port > 0
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        assert 'rabbit_ha_connection_connected{connection="svc"} 1.0' in text.splitlines()
    finally:
        server.close()

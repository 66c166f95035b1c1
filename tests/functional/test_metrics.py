"""Metrics under real faults, and Prometheus text scraped from a running server.

* A consuming connection is silently dropped (iptables), then the node it
  recovered to is killed: the counters that must move (declared dead,
  connections lost, reconnects, failovers) moved, and the summary is printed.
* An RPC server and a client with metrics attached serve their figures over
  HTTP on loopback; the exposition text is scraped and checked.
"""

from __future__ import annotations

import time
import urllib.request

from rabbit_ha_driver import RPCClient, RPCServer, RPCTransport
from rabbit_ha_driver import events as ev
from rabbit_ha_driver.metrics import Metrics
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.prometheus import serve

from .helpers.probes import ConsumerUnderTest, Probe, closing, rotate_url, unique, wait_for


def test_counters_move_through_a_silent_drop_and_a_node_kill(cluster, silent_drop):
    queue = unique("metrics")
    consumer = ConsumerUnderTest(rotate_url(cluster, 0), queue, heartbeat_timeout_threshold=3)
    metrics = Metrics()
    metrics.attach(consumer.conn)
    probe = Probe(rotate_url(cluster, 2), queue, interval=0.05)
    with closing(probe, consumer):
        assert wait_for(lambda: consumer.first_after(0.0), 10)
        silent_drop(consumer.conn.local_port, cluster.nodes[0].port)
        assert wait_for(lambda: consumer.recorder.of(ev.DeclaredDead), 10), "drop not noticed"
        assert wait_for(lambda: consumer.conn.host and consumer.conn.host.port != cluster.nodes[0].port
                        and consumer.conn.state.value == "connected", 10)
        silent_drop.remove_all()
        second = next(i for i, n in enumerate(cluster.nodes) if n.port == consumer.conn.host.port)
        killed_at = time.monotonic()
        cluster.kill(second)
        assert wait_for(lambda: consumer.first_after(killed_at + 0.5), 20), "not consuming after the kill"
        snap = metrics.snapshot()["connections"][consumer.conn.name]
        print("\n".join(metrics.summary_lines()))
    assert snap["declared_dead"] >= 1
    assert snap["connections_lost"] >= 2
    # attached after the first connect: both recoveries are handshakes it saw
    assert snap["connects"] >= 2
    assert snap["failovers"] >= 2
    assert snap["connected"] == 1


class Echo:
    def ping(self, ctxt, n):
        return n


def test_prometheus_text_scraped_from_a_running_server(cluster):
    topic = unique("prom")
    settings = from_url(rotate_url(cluster, 0))
    metrics = Metrics()
    bus = ev.EventBus()
    metrics.attach(bus)
    server = RPCServer(settings, topic, "prom-server", [Echo()], events=bus)
    transport = RPCTransport(settings)
    metrics.attach(transport)
    http = serve(metrics, port=0)
    assert http is not None
    server.start()
    with closing(transport):
        try:
            client = RPCClient(transport, topic, timeout=10)
            for n in range(5):
                assert client.call({}, "ping", n=n) == n
            host, port = http.address[:2]
            assert host == "127.0.0.1"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                text = reply.read().decode()
        finally:
            http.close()
            server.stop()
            server.wait()
    wanted = [line for line in text.splitlines()
              if line.startswith(("rabbit_ha_connection_connected", "rabbit_ha_connection_calls",
                                  "rabbit_ha_host_connected", "rabbit_ha_connection_call_latency"))]
    print("\n".join(wanted[:20]))
    calls = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
             if line.startswith("rabbit_ha_connection_calls_total{")]
    assert sum(calls) >= 5
    assert any(line.startswith("rabbit_ha_connection_connected{") and line.endswith(" 1.0")
               for line in text.splitlines())

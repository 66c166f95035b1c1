"""A service moves to ``rabbit-ha://`` by changing its URL scheme and nothing else.

The same configuration file, with only ``[oslo_messaging_rabbit]`` (TLS,
``heartbeat_timeout_threshold = 6``, quorum queues, ``kombu_reconnect_delay``),
serves RPC on ``rabbit://`` and on ``rabbit-ha://``; the broker's own view
(``rabbitmqctl list_connections`` and ``list_queues``) shows TLS and quorum
queues on both, and the heartbeat each driver asks for: T on ``rabbit://``,
T // 2 on ``rabbit-ha://`` (which declares a connection dead within T + 1 s).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import oslo_messaging as om
import pytest
from oslo_config import cfg
from oslo_messaging import conffixture

from rabbit_ha_driver.oslo import RabbitHADriver


def service_conf(tmp_path: Any, tls: Any) -> cfg.ConfigOpts:
    path = tmp_path / "service.conf"
    path.write_text(f"""
[oslo_messaging_rabbit]
ssl = true
ssl_ca_file = {tls.ca_file}
heartbeat_timeout_threshold = 6
rabbit_quorum_queue = true
kombu_reconnect_delay = 2
""")
    conf = cfg.ConfigOpts()
    conffixture.ConfFixture(conf)
    conf(["--config-file", str(path)])
    return conf


def tls_url(cluster: Any, scheme: str) -> str:
    # No ?ssl=true: TLS must come from the file.
    hosts = ",".join(f"guest:guest@{n.host}:{n.tls_port}" for n in cluster.nodes)
    return f"{scheme}://{hosts}/"


class Echo:
    def echo(self, ctxt: Any, value: Any) -> Any:
        return value


def table(text: str) -> list[list[str]]:
    """Rows of a ``rabbitmqctl ... --quiet --no-table-headers`` listing."""
    return [line.split("\t") for line in text.splitlines() if line.strip()]


def connections(cluster: Any) -> list[list[str]]:
    """Every connection of the cluster (this test's only: the cluster is ours)."""
    return table(cluster.rabbitmqctl(0, "list_connections", "name", "ssl", "timeout",
                                     "--quiet", "--no-table-headers"))


@pytest.mark.parametrize("scheme", ["rabbit", "rabbit-ha"])
def test_only_oslo_messaging_rabbit_configured_same_tls_and_queues(cluster, tmp_path, scheme):
    conf = service_conf(tmp_path, cluster.tls)
    topic = f"dropin-{uuid.uuid4().hex[:8]}"
    transport = om.get_rpc_transport(conf, tls_url(cluster, scheme))
    server = None
    try:
        if scheme == "rabbit-ha":
            driver = transport._driver
            assert isinstance(driver, RabbitHADriver)
            assert driver.settings.kombu_reconnect_delay == 2.0
        server = om.get_rpc_server(transport, om.Target(topic=topic, server="s1"), [Echo()],
                                   executor="threading")
        server.start()
        client = om.get_rpc_client(transport, om.Target(topic=topic), timeout=20)
        assert client.call({}, "echo", value="hi") == "hi"
        time.sleep(1)  # let list_connections see every connection
        rows = connections(cluster)
        queues = {name: kind for name, kind in
                  table(cluster.rabbitmqctl(0, "list_queues", "name", "type", "--quiet",
                                            "--no-table-headers"))}
        print(f"\n{scheme}: list_connections name ssl timeout")
        for row in rows:
            print("   ", "\t".join(row))
        print(f"{scheme}: list_queues name type")
        for name, kind in sorted(queues.items()):
            print(f"    {name}\t{kind}")
        assert rows, "no connection seen by the broker"
        expected_timeout = "6" if scheme == "rabbit" else "3"
        assert {(ssl, timeout) for _name, ssl, timeout in rows} == {("true", expected_timeout)}
        assert queues[topic] == "quorum"
        assert queues[f"{topic}.s1"] == "quorum"
    finally:
        if server is not None:
            server.stop()
            server.wait()
        transport.cleanup()


class Recorder:
    def __init__(self) -> None:
        self.casts: list[str] = []

    def echo(self, ctxt: Any, value: Any) -> Any:
        return value

    def record(self, ctxt: Any, tag: str) -> None:
        self.casts.append(tag)


def plain_conf(**rabbit: Any) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    conffixture.ConfFixture(conf)
    conf([])
    for name, value in rabbit.items():
        conf.set_override(name, value, group="oslo_messaging_rabbit")
    return conf


# oslo.messaging documents bz2; kombu, which it hands the name to, knows bzip2.
@pytest.mark.parametrize("method", ["gzip", "bzip2"])
def test_compressed_oslo_messaging_cast_and_call_and_a_bomb(cluster, caplog, method):
    import kombu

    topic = f"compressed-{uuid.uuid4().hex[:8]}"
    hosts = ",".join(f"guest:guest@{n.host}:{n.port}" for n in cluster.nodes)
    server_transport = om.get_rpc_transport(
        plain_conf(), f"rabbit-ha://{hosts}/?rpc_max_message_size=1048576")
    sender = om.get_rpc_transport(plain_conf(kombu_compression=method), f"rabbit://{hosts}/")
    recorder = Recorder()
    server = om.get_rpc_server(server_transport, om.Target(topic=topic, server="s1"), [recorder],
                               executor="threading")
    server.start()
    try:
        client = om.get_rpc_client(sender, om.Target(topic=topic), timeout=20)
        client.cast({}, "record", tag=f"{method} cast")
        assert client.call({}, "echo", value="z" * 100_000) == "z" * 100_000
        assert recorder.casts == [f"{method} cast"]
        # 64 MiB of spaces in about 64 KiB (gzip) or 50 bytes (bz2).
        bomb = json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(
            {"method": "record", "args": {"tag": " " * (64 << 20)}})}).encode()
        with kombu.Connection(cluster.nodes[0].url) as conn:
            producer = conn.Producer()
            producer.publish(bomb, exchange="openstack", routing_key=topic, compression=method,
                             content_type="application/json", content_encoding="utf-8",
                             serializer=None)
            del bomb
        assert client.call({}, "echo", value="still serving") == "still serving"
        refused = [r.getMessage() for r in caplog.records if "expands beyond" in r.getMessage()]
        print(f"\n  {method}: cast -> {recorder.casts}, call of 100000 bytes ok, bomb: {refused}")
        assert len(refused) == 1 and recorder.casts == [f"{method} cast"]
    finally:
        server.stop()
        server.wait()
        server_transport.cleanup()
        sender.cleanup()


def scrape(server: Any) -> dict[str, float]:
    """Prometheus text of ``server``, summed by metric name (over its labels)."""
    import urllib.request

    host, port = server.address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name_labels, value = line.rsplit(" ", 1)
            name = name_labels.split("{", 1)[0]
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def test_prometheus_scrape_of_an_oslo_service_before_and_after_a_node_kill(cluster, tmp_path):
    from .helpers.faults import wait_until

    path = tmp_path / "service.conf"
    path.write_text("[rabbit_ha]\nmetrics_http_port = 0\n[oslo_messaging_rabbit]\n"
                    "heartbeat_timeout_threshold = 4\n")
    conf = cfg.ConfigOpts()
    conffixture.ConfFixture(conf)
    conf(["--config-file", str(path)])
    topic = f"metrics-{uuid.uuid4().hex[:8]}"
    transport = om.get_rpc_transport(conf, f"rabbit-ha://{cluster.url().split('://', 1)[1]}")
    driver = transport._driver
    server = om.get_rpc_server(transport, om.Target(topic=topic, server="s1"), [Recorder()],
                               executor="threading")
    server.start()
    killed = None
    try:
        client = om.get_rpc_client(transport, om.Target(topic=topic), timeout=30)
        assert client.call({}, "echo", value=1) == 1
        before = scrape(driver.metrics_server)
        snap = driver.metrics.snapshot()["hosts"]
        killed = max(snap, key=lambda h: snap[h]["connected"])  # the node most connections use
        cluster.kill(next(n for n in cluster.nodes if n.address == killed))
        wait_until(lambda: scrape(driver.metrics_server).get("rabbit_ha_host_failovers_total", 0)
                   > before.get("rabbit_ha_host_failovers_total", 0), 30, "no failover counted")
        assert client.call({}, "echo", value=2) == 2
        after = scrape(driver.metrics_server)
        host, port = driver.metrics_server.address
        print(f"\n  scrape of http://{host}:{port}/metrics, node {killed} killed in between")
        for name in ("rabbit_ha_host_failovers_total", "rabbit_ha_host_connections_lost_total",
                     "rabbit_ha_host_connects_total", "rabbit_ha_connection_calls_total",
                     "rabbit_ha_host_connected"):
            print(f"    {name}: {before.get(name, 0):g} -> {after.get(name, 0):g}")
        assert after["rabbit_ha_host_failovers_total"] >= 1
        assert after["rabbit_ha_connection_calls_total"] == before["rabbit_ha_connection_calls_total"] + 1
    finally:
        server.stop()
        server.wait()
        transport.cleanup()
        if killed is not None:
            cluster.start(next(n for n in cluster.nodes if n.address == killed))

"""A service moves to ``rabbit-ha://`` by changing its URL scheme and nothing else.

The same configuration file, with only ``[oslo_messaging_rabbit]`` (TLS,
``heartbeat_timeout_threshold = 6``, quorum queues, ``kombu_reconnect_delay``),
serves RPC on ``rabbit://`` and on ``rabbit-ha://``; the broker's own view
(``rabbitmqctl list_connections`` and ``list_queues``) shows TLS and quorum
queues on both, and the heartbeat each driver asks for: T on ``rabbit://``,
T // 2 on ``rabbit-ha://`` (which declares a connection dead within T + 1 s).
"""

from __future__ import annotations

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

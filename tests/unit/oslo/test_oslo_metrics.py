"""The library's metrics out of an oslo.messaging service (metrics_http_port)."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
import uuid

import oslo_messaging as om
import pytest
from oslo_config import cfg
from oslo_messaging import conffixture

from rabbit_ha_driver import ConfigurationError, options
from rabbit_ha_driver.oslo import RabbitHADriver


@pytest.fixture
def conf() -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    conffixture.ConfFixture(conf)
    options.register_opts(conf)
    conf.set_override("transport_url", "memory://", group="rabbit_ha")
    conf([])
    return conf


@pytest.fixture
def stack():
    items: list = []
    yield items.append
    for item in reversed(items):
        if isinstance(item, om.Transport):
            item.cleanup()
        else:
            item.stop()
            item.wait()


def scrape(server) -> dict[str, float]:
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


class Echo:
    def echo(self, ctxt, value):
        return value


def test_a_service_on_rabbit_ha_serves_the_library_metrics(conf, stack):
    transport = om.get_rpc_transport(conf, "rabbit-ha:///?metrics_http_port=0")
    stack(transport)
    driver = transport._driver
    assert isinstance(driver, RabbitHADriver) and driver.metrics_server is not None
    before = scrape(driver.metrics_server)
    topic = f"t-{uuid.uuid4().hex[:8]}"
    server = om.get_rpc_server(transport, om.Target(topic=topic, server="s1"), [Echo()],
                               executor="threading")
    server.start()
    stack(server)
    client = om.get_rpc_client(transport, om.Target(topic=topic), timeout=5)
    assert [client.call({}, "echo", value=i) for i in range(3)] == [0, 1, 2]
    after = scrape(driver.metrics_server)
    assert before.get("rabbit_ha_connection_calls_total", 0) == 0
    assert after["rabbit_ha_connection_calls_total"] == 3
    assert after["rabbit_ha_host_connects_total"] >= 2  # publisher, replies, listener...
    assert after["rabbit_ha_connection_call_latency_seconds_count"] == 3


def test_transports_naming_one_port_share_its_server_until_the_last_is_cleaned_up(conf):
    rpc = om.get_rpc_transport(conf, "rabbit-ha:///?metrics_http_port=0")
    notify = om.get_notification_transport(conf, "rabbit-ha:///?metrics_http_port=0")
    server = rpc._driver.metrics_server
    try:
        assert notify._driver.metrics_server is server
        assert notify._driver.metrics is rpc._driver.metrics
    finally:
        rpc.cleanup()
    assert scrape(server) is not None  # still answers, for the notification transport
    notify.cleanup()
    with pytest.raises(urllib.error.URLError):
        scrape(server)


def test_without_the_option_nothing_is_served(conf, stack):
    transport = om.get_rpc_transport(conf, "rabbit-ha://")
    stack(transport)
    assert transport._driver.metrics is None and transport._driver.metrics_server is None


def test_a_port_in_use_stops_the_driver_naming_the_option(conf):
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError) as err:
            om.get_rpc_transport(conf, f"rabbit-ha:///?metrics_http_port={port}")
        assert err.value.option == "[rabbit_ha] metrics_http_port"
    finally:
        taken.close()

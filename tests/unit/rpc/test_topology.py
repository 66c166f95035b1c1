"""The RPC layer's declarations: built as oslo.messaging's, declared through a Connection."""

from __future__ import annotations

import pytest

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.rpc import naming, queue_types, topology
from rabbit_ha_driver.rpc.topology import ExchangeSpec, QueueSpec


class RecordingConnection:
    """The topology API of a Connection, recording each call instead of making it."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.callbacks: dict[str, object] = {}

    def declare_exchange(self, name, type="topic", *, durable=False, auto_delete=False,
                         arguments=None, deadline=None):
        self.calls.append(("exchange", name, type, durable, auto_delete, deadline))

    def declare_queue(self, name="", *, durable=False, auto_delete=False, exclusive=False,
                      arguments=None, deadline=None):
        self.calls.append(("queue", name, durable, auto_delete, arguments, deadline))
        return name

    def bind(self, queue, exchange, routing_key="", *, deadline=None):
        self.calls.append(("bind", queue, exchange, routing_key, deadline))

    def consume(self, queue, callback, *, no_ack=False, arguments=None, tag=None, deadline=None):
        tag = f"tag-{len(self.callbacks) + 1}"
        self.callbacks[tag] = callback
        self.calls.append(("consume", queue, arguments, deadline))
        return tag

    def set_consumer_argument(self, tag, key, value):
        self.calls.append(("consumer argument", tag, key, value))


DEADLINE = object()  # passed through untouched


class Delivery:
    def __init__(self, headers):
        self.headers = headers


# -- what is declared --------------------------------------------------------------------


def test_queue_declarations_match_oslo_messaging():
    plain = from_url("memory://")
    quorum = from_url("memory://", rabbit_quorum_queue=True)
    durable = from_url("memory://", amqp_durable_queues=True)
    assert topology.topic_queue(plain, "openstack", "t").arguments == ()
    assert not topology.topic_queue(plain, "openstack", "t").durable
    assert topology.topic_queue(quorum, "openstack", "t") == QueueSpec(
        "t", "openstack", "t", durable=True, arguments=(("x-queue-type", "quorum"),))
    assert topology.topic_queue(durable, "openstack", "t.s").durable
    assert topology.topic_exchange(quorum, "openstack").durable
    fanout = topology.fanout_queue(plain, "t")
    assert fanout.name.startswith("t_fanout_") and len(fanout.name) == len("t_fanout_") + 32
    assert (fanout.exchange, fanout.routing_key, fanout.durable) == ("t_fanout", "t", False)
    assert fanout.arguments == (("x-expires", 1800 * 1000),)
    assert topology.fanout_exchange(plain, "t") == ExchangeSpec("t_fanout", "fanout", False, True)
    assert naming.reply_queue_name(plain).startswith("reply_")


@pytest.mark.parametrize("url", ["memory://", "memory://?rabbit_transient_quorum_queue=true"
                                 "&rabbit_transient_queues_ttl=60"])
def test_a_reply_queue_is_declared_as_oslo_messaging_declares_it(url):
    settings = from_url(url)
    spec = topology.reply_queue(settings)
    assert spec.name.startswith("reply_") and len(spec.name) == len("reply_") + 32
    assert (spec.exchange, spec.routing_key) == ("", spec.name)
    assert spec.durable is queue_types.transient_durable(settings)
    assert spec.arguments == queue_types.transient_queue_arguments(settings)
    assert not spec.auto_delete and not spec.consumer_arguments
    assert topology.reply_queue(settings, "reply_x").name == "reply_x"


def test_names_follow_oslo_messaging():
    assert naming.DEFAULT_EXCHANGE == "openstack"
    assert naming.server_key("t", "s1") == "t.s1"
    assert naming.notification_key("notifications", "info") == "notifications.info"
    assert naming.fanout_exchange_name("t") == "t_fanout"
    assert naming.fanout_queue_name(from_url("memory://"), "t").startswith("t_fanout_")


def test_specs_are_values_a_publisher_can_keep_in_a_set():
    settings = from_url("memory://")
    seen = {topology.topic_exchange(settings, "e"), topology.topic_queue(settings, "e", "k")}
    assert topology.topic_exchange(settings, "e") in seen
    assert topology.topic_queue(settings, "e", "k") in seen
    with pytest.raises(AttributeError):
        topology.topic_queue(settings, "e", "k").name = "other"  # type: ignore[misc]


# -- declaring through a connection -----------------------------------------------------------


def test_an_exchange_declares_itself():
    conn = RecordingConnection()
    ExchangeSpec("t_fanout", "fanout", durable=True, auto_delete=True).declare(conn, DEADLINE)
    assert conn.calls == [("exchange", "t_fanout", "fanout", True, True, DEADLINE)]


def test_a_queue_declares_itself_then_its_binding():
    conn = RecordingConnection()
    spec = QueueSpec("t", "openstack", "t", durable=True, arguments=(("x-queue-type", "quorum"),),
                     auto_delete=True)
    spec.setup(conn, DEADLINE)
    assert conn.calls == [
        ("queue", "t", True, True, {"x-queue-type": "quorum"}, DEADLINE),
        ("bind", "t", "openstack", "t", DEADLINE),
    ]
    spec.declare(conn)
    assert conn.calls[-1] == ("queue", "t", True, True, {"x-queue-type": "quorum"}, None)


def test_a_queue_without_arguments_declares_none():
    conn = RecordingConnection()
    QueueSpec("t", "openstack", "t").declare(conn)
    assert conn.calls == [("queue", "t", False, False, None, None)]


def test_a_queue_on_the_default_exchange_is_not_bound():
    conn = RecordingConnection()
    spec = topology.reply_queue(from_url("memory://"), "reply_1")
    spec.setup(conn, DEADLINE)
    spec.bind(conn, DEADLINE)
    assert [c[0] for c in conn.calls] == ["queue"]


def test_a_queue_is_consumed_with_its_consumer_arguments():
    conn = RecordingConnection()
    got = []
    spec = QueueSpec("t", "openstack", "t")
    assert not spec.is_stream
    tag = spec.consume(conn, got.append, DEADLINE)
    assert conn.calls == [("consume", "t", None, DEADLINE)]
    conn.callbacks[tag](Delivery({"x-stream-offset": 5}))
    assert len(got) == 1 and len(conn.calls) == 1  # not a stream: no offset kept


def test_a_stream_consumer_resumes_after_the_last_delivery():
    settings = from_url("memory://", rabbit_stream_fanout=True,
                        rabbit_transient_quorum_queue=True, rabbit_qos_prefetch_count=10)
    spec = topology.fanout_queue(settings, "t")
    assert spec.is_stream
    conn = RecordingConnection()
    got = []
    tag = spec.consume(conn, got.append)
    assert conn.calls == [("consume", "t_fanout", {"x-stream-offset": "next"}, None)]
    conn.callbacks[tag](Delivery({"x-stream-offset": 41}))
    conn.callbacks[tag](Delivery(None))  # no offset: nothing to remember
    assert conn.calls[1:] == [("consumer argument", tag, "x-stream-offset", 42)]
    assert len(got) == 2


# -- on a connection to the fake broker ----------------------------------------------------


def test_a_published_message_reaches_the_queue_a_spec_set_up(settings, factory):
    conn = factory("topology")
    try:
        exchange = topology.topic_exchange(settings, "openstack")
        queue = topology.topic_queue(settings, "openstack", "t.s")
        with pytest.raises(exc.Unroutable):
            exchange.declare(conn)
            conn.publish(b"{}", exchange.name, queue.routing_key)
        queue.setup(conn)
        conn.publish(b"{}", exchange.name, queue.routing_key)
        got = []
        queue.consume(conn, got.append)
        conn.drain_events(0.5)
        assert len(got) == 1
    finally:
        conn.close()


def test_a_reply_queue_takes_messages_by_its_name_without_a_binding(settings, factory):
    conn = factory("replies")
    try:
        spec = topology.reply_queue(settings)
        spec.setup(conn)
        conn.publish(b"{}", "", spec.name)
        got = []
        spec.consume(conn, got.append)
        conn.drain_events(0.5)
        assert len(got) == 1
    finally:
        conn.close()

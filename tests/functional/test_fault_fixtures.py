"""The broker-side fault fixtures do what they claim, seen by bare py-amqp clients.

Like ``test_harness_faults``, these check the harness, not the library: a
chaos run or a test built on a fixture proves nothing if the fixture is inert.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import amqp
import pytest

from rabbit_ha_driver.connection import Connection, Deadline
from rabbit_ha_driver.options import from_url

from .helpers.faults import OWN_QUEUES_DURABLE, wait_until
from .test_harness_faults import CONNECTION_ERRORS, body_text, connect, unique


def test_frozen_node_accepts_tcp_but_answers_nothing_until_thawed(
        cluster: Any, broker_faults: Any) -> None:
    node = cluster.nodes[2]
    undo = broker_faults.freeze(node)
    assert cluster.is_frozen(node)
    # The kernel completes the handshake (no refusal), the broker is silent.
    with socket.create_connection((node.host, node.port), timeout=2) as raw:
        raw.sendall(b"AMQP\x00\x00\x09\x01")
        raw.settimeout(2)
        with pytest.raises(socket.timeout):
            raw.recv(8)
    began = time.monotonic()
    with pytest.raises((socket.timeout, *CONNECTION_ERRORS)):
        amqp.Connection(node.address, connect_timeout=2, read_timeout=2,
                        write_timeout=2).connect()
    assert time.monotonic() - began < 10
    # The other nodes open connections and channels meanwhile, but a queue
    # declaration anywhere waits for the frozen node (a Mnesia transaction of
    # every member) until it is thawed or its peers give it up (net_ticktime,
    # 60 s). Their management API may hang too on anything asking every node
    # (e.g. /api/nodes): the chaos run finds connections with ``ss`` instead.
    with connect(cluster.nodes[0].address) as conn:
        channel = conn.channel()
        conn.transport.sock.settimeout(3)
        with pytest.raises(socket.timeout):
            channel.queue_declare(unique("meanwhile"), exclusive=True)

    undo()
    assert not cluster.is_frozen(node)
    with connect(node.address) as conn:
        conn.channel().queue_declare(unique("thawed"), exclusive=True)


def test_consumer_timeout_closes_a_channel_holding_a_delivery(
        cluster: Any, broker_faults: Any) -> None:
    node = cluster.nodes[0]
    queue = unique("ackto")
    broker_faults.consumer_timeout(2000, 500)
    for n in cluster.nodes:  # every node, and restarts keep it (advanced.config)
        assert cluster.rabbit_env(n, "consumer_timeout") == "{ok,2000}"
        assert "consumer_timeout, 2000" in (n.dir / "advanced.config").read_text()
    held: list[amqp.Message] = []
    with connect(node.address) as conn:
        channel = conn.channel()
        channel.queue_declare(queue, durable=OWN_QUEUES_DURABLE, auto_delete=False)
        channel.basic_consume(queue, callback=held.append)  # never acked
        conn.channel().basic_publish(amqp.Message("hold me"), routing_key=queue)
        conn.drain_events(timeout=5)
        assert [body_text(m) for m in held] == ["hold me"]
        began = time.monotonic()
        with pytest.raises(amqp.exceptions.PreconditionFailed) as closed:
            while time.monotonic() - began < 15:
                _drain_quietly(conn, 1)
        took = time.monotonic() - began
        print(f"channel closed {took:.2f}s after the delivery: {closed.value}")
        assert closed.value.reply_code == 406
        assert "delivery acknowledgement on channel" in closed.value.reply_text
        assert 1.0 < took < 6.0
        # Only the channel closed (py-amqp opens it again at once, by itself).
        assert conn.connected
    # Undone: a channel holding a delivery for 4 s stays open.
    broker_faults.undo_all()
    for n in cluster.nodes:
        assert cluster.rabbit_env(n, "consumer_timeout") == "{ok,1800000}"
        assert cluster.rabbit_env(n, "channel_tick_interval") == "{ok,60000}"
        assert not (n.dir / "advanced.config").exists()
    with connect(node.address) as conn:
        channel = conn.channel()
        channel.basic_consume(queue, callback=held.append)
        conn.drain_events(timeout=5)
        _drain_quietly(conn, 4)
        assert channel.is_open


def _drain_quietly(conn: amqp.Connection, seconds: float) -> None:
    """Read frames for ``seconds``; a quiet socket is no error."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            conn.drain_events(timeout=left)
        except TimeoutError:
            return


def test_missing_exchange_closes_the_publishing_channel_and_comes_back(
        cluster: Any, broker_faults: Any) -> None:
    exchange, queue = unique("gone-x"), unique("gone-q")
    with connect(cluster.nodes[1].address, confirm_publish=True) as conn:
        setup = conn.channel()
        setup.exchange_declare(exchange, "topic", durable=True, auto_delete=False)
        setup.queue_declare(queue, durable=OWN_QUEUES_DURABLE, auto_delete=False)
        setup.queue_bind(queue, exchange, routing_key="k.#")

        undo = broker_faults.missing_exchange(exchange)
        assert cluster.api("GET", f"/api/exchanges/%2F/{exchange}", missing_ok=True) is None
        channel = conn.channel()
        with pytest.raises(amqp.exceptions.NotFound) as closed:
            channel.basic_publish(amqp.Message("lost"), exchange=exchange, routing_key="k.1")
        assert closed.value.reply_code == 404
        assert conn.connected  # only the channel closed

        undo()
        restored = cluster.api("GET", f"/api/exchanges/%2F/{exchange}")
        assert (restored["type"], restored["durable"]) == ("topic", True)
        channel = conn.channel()
        channel.basic_publish(amqp.Message("routed"), exchange=exchange, routing_key="k.2")
        message = channel.basic_get(queue, no_ack=True)
        assert message is not None and body_text(message) == "routed"


def test_memory_alarm_blocks_publishers_until_restored(cluster: Any, broker_faults: Any) -> None:
    events: list[tuple[str, float]] = []
    with connect(cluster.nodes[1].address,
                 on_blocked=lambda reason: events.append(("blocked", time.monotonic())),
                 on_unblocked=lambda: events.append(("unblocked", time.monotonic()))) as conn:
        channel = conn.channel()
        queue = unique("alarm")
        channel.queue_declare(queue, durable=OWN_QUEUES_DURABLE, auto_delete=False)
        undo = broker_faults.memory_alarm(0)  # an alarm on one node blocks the cluster
        wait_until(lambda: cluster.memory_alarms(), 10, "the memory alarm")
        channel.basic_publish(amqp.Message("blocks"), routing_key=queue)

        def seen(kind: str) -> bool:
            _drain_quietly(conn, 0.2)
            return any(e[0] == kind for e in events)

        wait_until(lambda: seen("blocked"), 10, "connection.blocked")
        undo()
        wait_until(lambda: seen("unblocked"), 15, "connection.unblocked")
        wait_until(lambda: cluster.memory_alarms() == [], 10, "the alarm to clear")
        assert cluster.rabbitmqctl(0, "eval",
                                   "vm_memory_monitor:get_vm_memory_high_watermark().").strip() == "0.4"


def test_tls_url_connects_the_library_over_tls(cluster: Any) -> None:
    url = cluster.tls_url(nodes=[1, 2])
    assert url == (f"rabbit://guest:guest@127.0.0.1:{cluster.nodes[1].tls_port},"
                   f"guest:guest@127.0.0.1:{cluster.nodes[2].tls_port}/?ssl=true")
    conn = Connection(from_url(url, **cluster.tls_options()), name="fixture-tls")
    try:
        conn.connect(Deadline.after(10))
        port = conn._socket().getsockname()[1]
        entry = wait_until(lambda: next((c for c in cluster.connections()
                                         if c["peer_port"] == port), None),
                           10, "the TLS connection in the management API")
        assert entry["ssl"] is True and entry["port"] == cluster.nodes[1].tls_port
        assert "rha-test-client" in entry["peer_cert_subject"]
    finally:
        conn.close()

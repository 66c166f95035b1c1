"""Each fault tool of the harness does what it claims, seen by bare py-amqp clients.

These tests check the harness, not the library: if one fails, the functional
tests built on that tool prove nothing.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from typing import Any

import amqp
import pytest

from .helpers.faults import OWN_QUEUES_DURABLE, local_port, refuses_connections, wait_until

CONNECTION_ERRORS = (OSError, *amqp.Connection.connection_errors)


def unique(prefix: str) -> str:
    return f"rha-harness.{prefix}.{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def connect(host: str, **kwargs: Any) -> Iterator[amqp.Connection]:
    """A py-amqp connection with bounded waits, closed (or discarded) afterwards."""
    kwargs.setdefault("heartbeat", 0)
    conn = amqp.Connection(host, connect_timeout=5, read_timeout=5, write_timeout=5,
                           **kwargs)
    conn.connect()
    try:
        yield conn
    finally:
        try:
            conn.close()
        except CONNECTION_ERRORS:
            conn.collect()  # already dead: free it without talking to the broker


def body_text(message: amqp.Message) -> str:
    body = message.body
    return body.decode() if isinstance(body, bytes) else str(body)


def api_running(cluster: Any, node: Any, asked: Any) -> bool | None:
    """Whether ``asked``'s management API reports ``node`` as running."""
    for entry in cluster.api("GET", "/api/nodes", node=asked):
        if entry["name"] == node.name:
            return bool(entry["running"])
    return None


def test_transport_url_names_every_node(cluster: Any) -> None:
    hosts = ",".join(f"guest:guest@127.0.0.1:{n.port}" for n in cluster.nodes)
    assert cluster.url() == f"rabbit://{hosts}/"
    assert cluster.amqp_url(1) == f"amqp://guest:guest@127.0.0.1:{cluster.nodes[1].port}//"
    assert [n.name for n in cluster.nodes] == [
        f"{cluster.settings.node_prefix}{i}@localhost" for i in (1, 2, 3)]
    assert not any(n.name.startswith("rabbit") for n in cluster.nodes)


def test_silent_drop_starves_one_connection_only(cluster: Any, silent_drop: Any) -> None:
    node = cluster.nodes[0]
    queue = unique("drop")
    received: list[str] = []
    with connect(node.address) as consumer, connect(node.address) as publisher:
        channel = consumer.channel()
        channel.queue_declare(queue, durable=OWN_QUEUES_DURABLE, auto_delete=False)
        channel.basic_consume(queue, no_ack=True,
                              callback=lambda m: received.append(body_text(m)))
        out = publisher.channel()
        out.basic_publish(amqp.Message("before"), routing_key=queue)
        consumer.drain_events(timeout=5)
        assert received == ["before"]

        drop = silent_drop(local_port(consumer), node.port)
        out.basic_publish(amqp.Message("during"), routing_key=queue)
        with pytest.raises(socket.timeout):
            consumer.drain_events(timeout=3)
        assert received == ["before"]
        # From its own side the socket is fine: no error, no close.
        assert consumer.connected
        assert consumer.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0

        # A new connection to the same node passes, and the broker still
        # counts the starved consumer: neither end has noticed.
        with connect(node.address) as fresh:
            _, _, consumers = fresh.channel().queue_declare(queue, passive=True)
        assert consumers == 1

        drop.remove()
        # TCP retransmits the delivery once the rules are gone.
        consumer.drain_events(timeout=15)
        assert received == ["before", "during"]


def test_silent_drop_only_targets_cluster_ports(silent_drop: Any) -> None:
    with pytest.raises(ValueError):
        silent_drop(40000, 22)


def test_killed_node_refuses_then_rejoins(cluster: Any) -> None:
    node, witness = cluster.nodes[2], cluster.nodes[0]
    old_pid = node.pid
    assert old_pid is not None

    cluster.kill(node)
    assert node.pid is None
    assert refuses_connections(node.port)
    with pytest.raises(OSError):
        connect(node.address).__enter__()
    wait_until(lambda: api_running(cluster, node, witness) is False, 10,
               "the other nodes see the killed node as down")

    cluster.start(node)
    assert node.pid not in (None, old_pid)
    status = cluster.cluster_status(node)
    assert set(status["running_nodes"]) == {n.name for n in cluster.nodes}
    assert api_running(cluster, node, witness) is True
    with connect(node.address) as conn:
        conn.channel().queue_declare(unique("back"), exclusive=True)


def test_deleting_a_queue_sends_basic_cancel(cluster: Any) -> None:
    node = cluster.nodes[1]
    queue = unique("ccn")
    cancelled: list[str] = []
    with connect(node.address) as conn:
        channel = conn.channel()
        channel.queue_declare(queue, durable=OWN_QUEUES_DURABLE, auto_delete=False)
        tag = channel.basic_consume(queue, callback=lambda m: None,
                                    on_cancel=cancelled.append)
        cluster.delete_queue(queue)
        conn.drain_events(timeout=5)
        assert cancelled == [tag]
        # Only the consumer is gone: connection and channel stay open.
        assert conn.connected and channel.is_open
        assert cluster.queue_info(queue) is None


def test_starved_heartbeats_are_counted(cluster: Any) -> None:
    node = cluster.nodes[1]
    before = cluster.missed_heartbeat_closes(node)
    with connect(node.address, heartbeat=2) as conn:
        assert conn.heartbeat == 2
        # Never call heartbeat_tick(): the client sends nothing, so the
        # broker closes the connection after two missed intervals.
        wait_until(lambda: cluster.missed_heartbeat_closes(node) > before, 15,
                   "the broker to log a missed-heartbeat close")
        deadline = time.monotonic() + 5
        with pytest.raises(CONNECTION_ERRORS):
            while time.monotonic() < deadline:
                conn.drain_events(timeout=1)  # heartbeats, then the close
    time.sleep(1.5)  # the count must rise by this one connection only
    assert cluster.missed_heartbeat_closes(node) == before + 1
    assert cluster.missed_heartbeat_closes() >= before + 1


def test_kill_all_and_start_all_bring_the_cluster_back(cluster: Any) -> None:
    queue = unique("durable")
    with connect(cluster.nodes[0].address, confirm_publish=True) as conn:
        channel = conn.channel()
        channel.queue_declare(queue, durable=True, auto_delete=False)
        channel.basic_publish(amqp.Message("kept", delivery_mode=2), routing_key=queue)
    old_pids = {n.pid for n in cluster.nodes}
    assert None not in old_pids

    cluster.sync_metadata()  # else the just-declared queue may die in a log buffer
    cluster.kill_all()
    assert all(n.pid is None for n in cluster.nodes)
    assert all(refuses_connections(n.port) for n in cluster.nodes)

    cluster.start_all()
    assert cluster.is_healthy()
    assert not {n.pid for n in cluster.nodes} & (old_pids | {None})
    for node in cluster.nodes:
        with connect(node.address) as conn:
            conn.channel()
    # Data on disk is kept: the durable queue is back with its persistent message.
    with connect(cluster.nodes[1].address) as conn:
        message = conn.channel().basic_get(queue, no_ack=True)
        assert message is not None and body_text(message) == "kept"


def test_tls_verifies_with_the_ca_and_fails_with_the_wrong_one(cluster: Any, tls: Any) -> None:
    node = cluster.nodes[0]
    address = f"{node.host}:{node.tls_port}"
    good = {"ca_certs": tls.ca_file, "cert_reqs": ssl.CERT_REQUIRED,
            "server_hostname": "localhost", "certfile": tls.client_cert,
            "keyfile": tls.client_key}
    with connect(address, ssl=good) as conn:
        conn.channel()
        port = local_port(conn)

        def seen() -> dict[str, Any] | None:
            return next((c for c in cluster.connections() if c["peer_port"] == port), None)

        entry = wait_until(seen, 10, "the TLS connection in the management API")
        assert entry["ssl"] is True
        assert "rha-test-client" in entry["peer_cert_subject"]

    # The IP address SAN verifies too (check_hostname against 127.0.0.1).
    by_ip = {"ca_certs": tls.ca_file, "cert_reqs": ssl.CERT_REQUIRED,
             "server_hostname": node.host}
    with connect(address, ssl=by_ip) as conn:
        conn.channel()

    wrong_ca = dict(by_ip, ca_certs=tls.wrong_ca_file)
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(address, ssl=wrong_ca).__enter__()
    wrong_name = dict(by_ip, server_hostname="not-localhost.test")
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(address, ssl=wrong_name).__enter__()


def test_ha_policy_mirrors_and_quorum_queue_reports_its_leader(cluster: Any) -> None:
    names = {n.name for n in cluster.nodes}
    cluster.set_policy("rha-ha-all", r"^rha-harness\.ha\.",
                       {"ha-mode": "all", "ha-sync-mode": "automatic"})
    mirrored, quorum = unique("ha"), unique("quorum")
    home = cluster.nodes[1]
    with connect(home.address) as conn:
        channel = conn.channel()
        channel.queue_declare(mirrored, durable=True, auto_delete=False)
        channel.queue_declare(quorum, durable=True, auto_delete=False,
                              arguments={"x-queue-type": "quorum"})

    def mirrored_info() -> dict[str, Any] | None:
        info: dict[str, Any] | None = cluster.queue_info(mirrored)
        # Mirrors show at once, the policy name with the next statistics tick.
        if info and info.get("policy") and len(info.get("slave_nodes", [])) == 2:
            return info
        return None

    info = wait_until(mirrored_info, 10, "mirrors and policy of the HA queue")
    assert info["policy"] == "rha-ha-all"
    assert info["effective_policy_definition"]["ha-mode"] == "all"
    assert info["node"] == home.name  # classic queues live where they are declared
    assert set(info["slave_nodes"]) == names - {home.name}

    def quorum_info() -> dict[str, Any] | None:
        info: dict[str, Any] | None = cluster.queue_info(quorum)
        return info if info and info.get("leader") else None

    qinfo = wait_until(quorum_info, 10, "the quorum queue leader")
    assert qinfo["type"] == "quorum"
    assert qinfo["leader"] in names
    assert set(qinfo["members"]) == names


def test_ensure_healthy_restarts_a_stopped_app_and_cleans_up(cluster: Any) -> None:
    node = cluster.nodes[2]
    queue = unique("leftover")
    with connect(node.address) as conn:
        conn.channel().queue_declare(queue, durable=True, auto_delete=False)
    cluster.set_policy("rha-leftover", "^nothing$", {"max-length": 1})
    cluster.rabbitmqctl(node, "stop_app")
    wait_until(lambda: refuses_connections(node.port), 10, "the AMQP listener to close")
    assert not cluster.is_healthy()

    cluster.ensure_healthy()
    assert cluster.is_healthy()
    assert not refuses_connections(node.port)
    assert cluster.queue_info(queue) is None
    assert cluster.api("GET", "/api/policies") == []

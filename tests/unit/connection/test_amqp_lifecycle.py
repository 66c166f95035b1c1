"""The connection's lifecycle over the real AMQP path against the scripted
broker: connect, close, a broker that closes or drops the connection, refuses
the login, freezes or misses a request deadline; reconnects replay the topology."""

from __future__ import annotations

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import Deadline, State
from rabbit_ha_driver.testing import SILENT, AmqpServer

TOPOLOGY = ["basic.qos", "exchange.declare", "queue.declare", "queue.bind", "basic.consume"]


def consumer(conn, got):
    conn.set_qos(3)
    conn.declare_exchange("x", "direct")
    conn.declare_queue("q")
    conn.bind("q", "x", "k")
    return conn.consume("q", lambda m: (got.append(m.body), conn.ack(m)), tag="ctag")


def drain_until(conn, done, turns=5):
    """Run the consumer's loop (each turn at most 0.2 s) until ``done()``."""
    for _ in range(turns):
        if done():
            return
        conn.drain_events(0.2)
    assert done()


def test_connects_with_the_handshake_a_broker_expects(amqp_server, amqp_connect, recorder):
    conn = amqp_connect()
    conn.connect()
    assert conn.state is State.CONNECTED
    assert conn.host.address == f"127.0.0.1:{amqp_server.port}"
    [start_ok] = amqp_server.of("connection.start-ok")
    assert start_ok.args["client_properties"]["connection_name"] == "amqp-test"
    assert start_ok.args["mechanism"] == "AMQPLAIN"
    [tune_ok] = amqp_server.of("connection.tune-ok")
    assert tune_ok.args["heartbeat"] == 0  # liveness off in these tests
    assert amqp_server.methods() == ["channel.open", "confirm.select"]
    [connected] = recorder.of(ev.Connected)
    assert connected.local_port == conn.local_port
    assert "connected" in repr(conn)


def test_close_while_idle_says_goodbye(amqp_server, amqp_connect):
    conn = amqp_connect()
    conn.declare_queue("q")
    conn.close()
    assert conn.state is State.CLOSED
    amqp_server.wait_for(lambda: amqp_server.of("connection.close"))
    assert amqp_server.of("channel.close") == []  # the connection's close ends its channels
    amqp_server.wait_for(lambda: not amqp_server.live_connections())
    conn.close()  # a second close does nothing
    with pytest.raises(exc.ConnectionLost, match="closed"):
        conn.declare_queue("r")
    assert len(amqp_server.connections) == 1


def test_context_manager_closes(amqp_server, amqp_connect):
    with amqp_connect() as conn:
        conn.connect()
    assert conn.state is State.CLOSED
    amqp_server.wait_for(lambda: amqp_server.of("connection.close"))


def test_close_of_a_lost_connection_writes_nothing(amqp_server, amqp_connect):
    conn = amqp_connect()
    got = []
    consumer(conn, got)
    amqp_server.drop()
    conn.drain_events(0.2)
    assert conn.state is State.RECOVERING
    conn.close()
    assert conn.state is State.CLOSED
    assert amqp_server.of("connection.close") == []
    assert len(amqp_server.connections) == 1


def test_broker_closes_the_connection_reconnect_replays_topology(amqp_server, amqp_connect, recorder):
    conn = amqp_connect()
    got = []
    consumer(conn, got)
    amqp_server.close_connection(320, "CONNECTION_FORCED - broker forced connection closure")
    drain_until(conn, lambda: len(amqp_server.connections) == 2 and conn.state is State.CONNECTED)
    amqp_server.wait_for(lambda: amqp_server.of("connection.close-ok", conn=1))
    # QoS first, then exchanges, queues, bindings and consumers, in order.
    assert amqp_server.methods(conn=2) == ["channel.open", "confirm.select", *TOPOLOGY]
    assert amqp_server.of("basic.consume", conn=2)[0].args["consumer_tag"] == "ctag"
    assert amqp_server.of("basic.qos", conn=2)[0].args["prefetch_count"] == 3
    [lost] = recorder.of(ev.ConnectionLost)
    assert "320" in lost.reason or "CONNECTION_FORCED" in lost.reason
    [restored] = recorder.of(ev.TopologyRestored)
    assert (restored.queues, restored.consumers) == (1, 1)
    amqp_server.deliver("q", b"after")
    drain_until(conn, lambda: got)
    assert got == [b"after"]
    amqp_server.wait_for(lambda: amqp_server.of("basic.ack", conn=2))


def test_socket_dropped_while_idle_reconnects(amqp_server, amqp_connect, recorder):
    conn = amqp_connect()
    got = []
    consumer(conn, got)
    amqp_server.drop()
    drain_until(conn, lambda: len(amqp_server.connections) == 2 and conn.state is State.CONNECTED)
    assert amqp_server.methods(conn=2)[-len(TOPOLOGY):] == TOPOLOGY
    assert len(recorder.of(ev.ConnectionLost)) == 1
    conn.publish(b"p", "x", "k")
    drain_until(conn, lambda: got)
    assert got == [b"p"]


def test_broker_closes_the_connection_over_a_publish(amqp_server, amqp_connect):
    conn = amqp_connect()
    conn.declare_exchange("x")
    amqp_server.method_script["basic.publish"].append(
        ("close_connection", 541, "INTERNAL_ERROR"))
    with pytest.raises(exc.ConnectionLost):
        conn.publish(b"one", "x", "k")
    conn.declare_queue("q")  # the next operation reconnects
    assert len(amqp_server.connections) == 2


def test_refused_login_raises_at_once(amqp_server, amqp_connect, recorder):
    amqp_server.refuse_login = True
    conn = amqp_connect()
    with pytest.raises(exc.AuthenticationError) as err:
        conn.connect(Deadline.after(0.2))
    assert err.value.reply_code == 403
    assert conn.state is State.FAILED
    assert len(amqp_server.connections) == 1  # no retry: it cannot mend
    assert recorder.of(ev.Connected) == []


def test_nothing_listening_gives_up_at_the_deadline(amqp_server, amqp_connect):
    amqp_server.stop()
    conn = amqp_connect()
    with pytest.raises(exc.MessagingTimeout, match=f"127.0.0.1:{amqp_server.port}"):
        conn.connect(Deadline.after(0.1))
    assert conn.state is State.CONNECTING


def test_frozen_broker_handshake_is_bounded_by_the_deadline(amqp_server, amqp_connect, recorder):
    amqp_server.stall_handshake = True
    conn = amqp_connect(connect_timeout=0.1)
    with pytest.raises(exc.MessagingTimeout):
        conn.connect(Deadline.after(0.15))
    assert recorder.of(ev.ConnectFailed)
    assert amqp_server.of("connection.start-ok") == []


def test_missed_request_deadline_reconnects_and_runs_it_again(amqp_server, amqp_connect, recorder):
    conn = amqp_connect(request_timeout=0.1)
    conn.declare_exchange("x")
    amqp_server.method_script["queue.declare"].append(SILENT)
    assert conn.declare_queue("q", deadline=Deadline.after(0.3)) == "q"
    [missed] = recorder.of(ev.RequestDeadlineMissed)
    assert missed.operation == "queue.declare" and missed.timeout == pytest.approx(0.1, abs=0.01)
    assert [s.conn for s in amqp_server.of("queue.declare")] == [1, 2]
    # The exchange declared on the first connection was replayed first.
    assert amqp_server.methods(conn=2)[:3] == ["channel.open", "confirm.select", "exchange.declare"]


def test_missed_request_deadline_past_the_callers_deadline(amqp_server, amqp_connect):
    conn = amqp_connect(request_timeout=0.1)
    conn.connect()
    amqp_server.method_script["queue.declare"].append(SILENT)
    with pytest.raises(exc.MessagingTimeout):
        conn.declare_queue("q", deadline=Deadline.after(0.1))
    assert conn.state is State.RECOVERING


def test_broker_heartbeats_and_a_server_named_queue(amqp_server, amqp_connect):
    conn = amqp_connect()
    name = conn.declare_queue()
    assert name.startswith("amq.gen-")
    amqp_server.heartbeat()
    amqp_server.deliver(name, b"x")
    got = []
    conn.consume(name, lambda m: got.append(m.body), no_ack=True)
    drain_until(conn, lambda: got)
    assert got == [b"x"]
    assert conn.state is State.CONNECTED
    assert amqp_server.of("basic.consume")[0].args["no_ack"] is True


def test_delete_queue_forgets_it(amqp_server, amqp_connect):
    conn = amqp_connect()
    conn.declare_queue("q")
    conn.delete_queue("q")
    assert "q" not in amqp_server.queues
    amqp_server.drop()
    conn.declare_queue("r")  # reconnects; the deleted queue is not replayed
    assert [s.args["queue"] for s in amqp_server.of("queue.declare", conn=2)] == ["r"]


def test_next_host_at_once_when_the_first_refuses(amqp_server, amqp_connect, recorder):
    dead = AmqpServer()
    dead.stop()  # nothing listens on its port any more
    url = f"amqp://guest:guest@127.0.0.1:{dead.port},guest:guest@127.0.0.1:{amqp_server.port}//"
    conn = amqp_connect(url)
    conn.declare_queue("q")
    assert conn.host.port == amqp_server.port
    assert [e.host for e in recorder.of(ev.ConnectFailed)] == [f"127.0.0.1:{dead.port}"]
    assert recorder.of(ev.RetryScheduled) == []  # no backoff before a whole pass


def test_fails_over_to_the_next_node_and_replays(amqp_server, amqp_connect, recorder):
    with AmqpServer() as other:
        url = f"amqp://guest:guest@127.0.0.1:{amqp_server.port},guest:guest@127.0.0.1:{other.port}//"
        conn = amqp_connect(url)
        got = []
        consumer(conn, got)
        amqp_server.drop()  # the node dies
        drain_until(conn, lambda: conn.state is State.CONNECTED and other.connections)
        assert other.methods()[-len(TOPOLOGY):] == TOPOLOGY
        [failed_over] = recorder.of(ev.FailedOver)
        assert (failed_over.from_host, failed_over.to_host) == (
            f"127.0.0.1:{amqp_server.port}", f"127.0.0.1:{other.port}")
        other.deliver("q", b"on the other node")
        drain_until(conn, lambda: got)
        assert got == [b"on the other node"]

"""Publishing over the real AMQP path against the scripted broker: confirms,
nacks, returns, a blocked broker, confirms that never come, a channel closed
over a publish and a socket dropped before the confirm."""

from __future__ import annotations

import datetime

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import Deadline, State
from rabbit_ha_driver.testing import BLOCK, DROP, HOLD, NACK, RETURN, SILENT


def bound_queue(conn, queue="q", exchange="x", key="k"):
    conn.declare_exchange(exchange)
    conn.declare_queue(queue)
    conn.bind(queue, exchange, key)


def test_ack_settles_the_publish(amqp_server, amqp_connect):
    conn = amqp_connect()
    bound_queue(conn)
    conn.publish(b"one", "x", "k", headers={"h": 1}, properties={"correlation_id": "c1"})
    [seen] = amqp_server.of("basic.publish")
    assert seen.body == b"one"
    assert seen.args["exchange"] == "x" and seen.args["routing_key"] == "k"
    assert seen.args["mandatory"] is True
    assert seen.properties["correlation_id"] == "c1"
    assert seen.properties["application_headers"] == {"h": 1}
    assert seen.properties["message_id"]  # tells a return apart
    assert [m.body for m in amqp_server.queues["q"]] == [b"one"]
    assert conn.state is State.CONNECTED


def test_a_property_left_to_py_amqp_is_published_and_acked(amqp_server, amqp_connect):
    conn = amqp_connect()
    bound_queue(conn)
    stamp = 1704164645  # py-amqp writes the timestamp itself
    conn.publish(b"stamped", "x", "k", properties={"timestamp": stamp, "priority": 3})
    [seen] = amqp_server.of("basic.publish")
    assert seen.body == b"stamped"
    assert seen.properties["timestamp"] == stamp
    assert seen.properties["priority"] == 3
    assert conn.state is State.CONNECTED


def test_a_property_py_amqp_cannot_encode_fails_without_reconnecting(amqp_server, amqp_connect):
    conn = amqp_connect()
    bound_queue(conn)
    stamp = datetime.datetime(2024, 1, 2, 3, 4, 5)
    with pytest.raises(exc.RabbitHAError) as err:
        conn.publish(b"stamped", "x", "k", properties={"timestamp": stamp},
                     deadline=Deadline.after(0.1))
    assert not isinstance(err.value, exc.MessagingTimeout)
    assert len(amqp_server.connections) == 1
    assert amqp_server.of("basic.publish") == []


def test_a_body_larger_than_a_frame_arrives_whole(amqp_server, amqp_connect):
    conn = amqp_connect()
    bound_queue(conn)
    body = bytes(range(256)) * 1200  # ~300 kB: three body frames
    conn.publish(body, "x", "k")
    assert amqp_server.of("basic.publish")[0].body == body


def test_nack_raises_publish_nacked(amqp_server, amqp_connect):
    conn = amqp_connect()
    bound_queue(conn)
    amqp_server.publish_script.append(NACK)
    with pytest.raises(exc.PublishNacked):
        conn.publish(b"one", "x", "k")
    assert len(amqp_server.of("basic.publish")) == 1  # the caller decides, not sent again
    assert conn.state is State.CONNECTED
    conn.publish(b"two", "x", "k")


def test_unroutable_mandatory_publish_raises_unroutable(amqp_server, amqp_connect):
    conn = amqp_connect()
    conn.declare_exchange("x")  # no queue bound: RabbitMQ returns it, then acks
    with pytest.raises(exc.Unroutable) as err:
        conn.publish(b"lost", "x", "nowhere")
    assert err.value.reply_code == 312
    assert len(amqp_server.of("basic.publish")) == 1
    assert conn.state is State.CONNECTED


def test_scripted_return_of_a_routable_message(amqp_server, amqp_connect):
    conn = amqp_connect()
    bound_queue(conn)
    amqp_server.publish_script.append(RETURN)
    with pytest.raises(exc.Unroutable):
        conn.publish(b"one", "x", "k")
    conn.publish(b"two", "x", "k")
    assert [m.body for m in amqp_server.queues["q"]] == [b"two"]


def test_unroutable_without_mandatory_is_acked(amqp_server, amqp_connect):
    conn = amqp_connect()
    conn.declare_exchange("x")
    conn.publish(b"dropped", "x", "nowhere", mandatory=False)
    [seen] = amqp_server.of("basic.publish")
    assert seen.args["mandatory"] is False


def test_many_publishes_confirmed_by_one_multiple_ack(amqp_server, amqp_connect):
    conn = amqp_connect()
    bound_queue(conn)
    amqp_server.publish_script.extend([HOLD, HOLD, HOLD])
    pendings = [conn.publish_nowait(b"m%d" % i, "x", "k") for i in range(3)]
    amqp_server.wait_for(lambda: len(amqp_server.of("basic.publish")) == 3)
    assert not any(p.done for p in pendings)
    amqp_server.release_held()
    conn.wait_confirm(pendings[0])
    for pending in pendings:
        conn.wait_confirm(pending)  # already settled by the same ack
        conn.raise_for(pending, "x", "k")
    assert [p.seq for p in pendings] == [1, 2, 3]


def test_confirm_never_comes_loses_the_connection_within_request_timeout(
        amqp_server, amqp_connect, recorder):
    conn = amqp_connect(request_timeout=0.1)
    bound_queue(conn)
    amqp_server.publish_script.append(SILENT)
    with pytest.raises(exc.ConnectionLost, match="before the broker confirmed"):
        conn.publish(b"one", "x", "k", deadline=Deadline.after(0.2))
    assert conn.state is State.RECOVERING
    [lost] = recorder.of(ev.ConnectionLost)
    assert "no publisher confirm within 0.1s" in lost.reason
    # The next publish reconnects (and replays the topology) and is acked.
    conn.publish(b"two", "x", "k")
    assert [s.conn for s in amqp_server.of("basic.publish")] == [1, 2]
    assert [s.args["queue"] for s in amqp_server.of("queue.bind", conn=2)] == ["q"]


def test_callers_deadline_before_request_timeout_keeps_the_connection(amqp_server, amqp_connect):
    conn = amqp_connect(request_timeout=0.2)
    bound_queue(conn)
    amqp_server.publish_script.append(HOLD)
    pending = conn.publish_nowait(b"one", "x", "k")
    with pytest.raises(exc.MessagingTimeout, match="did not confirm the message before the deadline"):
        conn.wait_confirm(pending, Deadline.after(0.05))
    assert conn.state is State.CONNECTED and not pending.done
    amqp_server.release_held()
    conn.wait_confirm(pending, Deadline.after(0.2))
    conn.raise_for(pending, "x", "k")
    assert len(amqp_server.live_connections()) == 1


def test_uncertain_publish_is_sent_again_when_the_caller_allows_it(amqp_server, amqp_connect):
    conn = amqp_connect(request_timeout=0.1)
    bound_queue(conn)
    amqp_server.publish_script.append(SILENT)
    conn.publish(b"once", "x", "k", properties={"message_id": "m-1"}, retry_uncertain=True,
                 deadline=Deadline.after(0.4))
    first, second = amqp_server.of("basic.publish")
    assert (first.conn, second.conn) == (1, 2)
    assert first.properties["message_id"] == second.properties["message_id"] == "m-1"


def test_socket_dropped_before_the_confirm_is_lost_and_not_resent(amqp_server, amqp_connect):
    conn = amqp_connect()
    bound_queue(conn)
    amqp_server.publish_script.append(DROP)
    with pytest.raises(exc.ConnectionLost, match="not sent again"):
        conn.publish(b"one", "x", "k")
    assert len(amqp_server.of("basic.publish")) == 1
    assert conn.state is State.RECOVERING
    assert amqp_server.live_connections() == []


def test_socket_dropped_before_the_confirm_resent_with_retry_uncertain(amqp_server, amqp_connect):
    conn = amqp_connect()
    bound_queue(conn)
    amqp_server.publish_script.append(DROP)
    conn.publish(b"one", "x", "k", retry_uncertain=True)
    first, second = amqp_server.of("basic.publish")
    assert (first.conn, second.conn) == (1, 2)
    assert [m.body for m in amqp_server.queues["q"]] == [b"one"]


def test_blocked_connection_holds_publishes_until_unblocked(amqp_server, amqp_connect, recorder):
    conn = amqp_connect()
    bound_queue(conn)
    amqp_server.block("low on memory")
    conn.drain_events(0.05)
    assert conn.state is State.BLOCKED
    assert recorder.of(ev.Blocked)[0].reason
    amqp_server.unblock()  # read by the publish, which waits for it before writing
    conn.publish(b"after", "x", "k")
    assert conn.state is State.CONNECTED
    assert [s.body for s in amqp_server.of("basic.publish")] == [b"after"]
    assert len(recorder.of(ev.Blocked)) == 1 and len(recorder.of(ev.Unblocked)) == 1
    assert recorder.of(ev.ConnectionLost) == []
    assert len(amqp_server.connections) == 1  # blocked is not dead


def test_publish_waiting_on_a_blocked_broker_keeps_the_connection(amqp_server, amqp_connect, recorder):
    conn = amqp_connect(request_timeout=0.1)
    bound_queue(conn)
    amqp_server.block("low on memory")
    conn.drain_events(0.05)
    assert conn.state is State.BLOCKED
    with pytest.raises(exc.MessagingTimeout):
        conn.publish(b"held", "x", "k", deadline=Deadline.after(0.15))
    assert recorder.of(ev.ConnectionLost) == []
    assert len(amqp_server.connections) == 1
    assert amqp_server.of("basic.publish") == []  # nothing written while blocked


def test_confirm_held_by_a_blocked_broker_is_not_a_dead_channel(amqp_server, amqp_connect):
    conn = amqp_connect(request_timeout=0.1)
    bound_queue(conn)
    amqp_server.publish_script.append(BLOCK)
    pending = conn.publish_nowait(b"one", "x", "k")
    with pytest.raises(exc.MessagingTimeout, match="kept publishing blocked"):
        conn.wait_confirm(pending, Deadline.after(0.18))
    assert conn.state is State.BLOCKED and not pending.done
    amqp_server.unblock()
    conn.wait_confirm(pending, Deadline.after(0.2))
    conn.raise_for(pending, "x", "k")
    assert conn.state is State.CONNECTED
    assert len(amqp_server.live_connections()) == 1


def test_channel_closed_over_a_publish_is_restored_with_confirms(amqp_server, amqp_connect, recorder):
    conn = amqp_connect()
    bound_queue(conn)
    conn.set_qos(7)
    amqp_server.publish_script.append(("close", 406, "PRECONDITION_FAILED - message too large"))
    with pytest.raises(exc.ConnectionLost, match="closed the channel"):
        conn.publish(b"big", "x", "k")
    # A new channel, in confirm mode, with QoS and the topology replayed.
    first, second = (s.channel for s in amqp_server.of("channel.open"))
    assert first != second
    assert amqp_server.of("confirm.select")[-1].channel == second
    assert amqp_server.of("basic.qos")[-1].channel == second
    assert amqp_server.of("basic.qos")[-1].args["prefetch_count"] == 7
    [closed] = recorder.of(ev.ChannelClosedByBroker)
    assert closed.reply_code == 406 and closed.lost_confirms == 1
    assert len(recorder.of(ev.ChannelRestored)) == 1
    conn.publish(b"small", "x", "k")
    assert amqp_server.of("basic.publish")[-1].channel == second
    assert len(amqp_server.live_connections()) == 1


def test_publish_to_a_missing_exchange_is_refused(amqp_server, amqp_connect):
    conn = amqp_connect()
    bound_queue(conn)
    with pytest.raises(exc.IrrecoverableError) as err:
        conn.publish(b"one", "gone", "k")
    assert err.value.reply_code == 404
    # The connection found out which exchange was missing with a passive
    # declare on a channel of its own, then restored its channel.
    [probe] = [s for s in amqp_server.of("exchange.declare") if s.args["passive"]]
    assert probe.args["exchange"] == "gone"
    conn.publish(b"two", "x", "k")
    assert len(amqp_server.live_connections()) == 1


def test_a_message_before_a_refused_one_is_lost(amqp_server, amqp_connect):
    conn = amqp_connect()
    bound_queue(conn)
    amqp_server.publish_script.append(HOLD)
    earlier = conn.publish_nowait(b"earlier", "x", "k")
    refused = conn.publish_nowait(b"refused", "gone", "k")
    conn.wait_confirm(refused)
    assert earlier.outcome.value == "lost"  # it may have been taken before the refusal
    assert refused.outcome.value == "refused"
    with pytest.raises(exc.ConnectionLost, match="closed the channel"):
        conn.raise_for(earlier, "x", "k")
    with pytest.raises(exc.IrrecoverableError):
        conn.raise_for(refused, "gone", "k")


def test_a_message_after_a_refused_one_is_dropped_unread(amqp_server, amqp_connect):
    conn = amqp_connect()
    bound_queue(conn)
    amqp_server.hold_output()  # the close reaches the client after both writes
    refused = conn.publish_nowait(b"refused", "gone", "k")
    later = conn.publish_nowait(b"later", "x", "k")
    amqp_server.wait_for(lambda: len(amqp_server.of("basic.publish")) == 2)
    amqp_server.flush_output()
    conn.wait_confirm(later)
    assert refused.outcome.value == "refused"
    assert later.outcome.value == "dropped"
    with pytest.raises(exc.ChannelDead, match="safe to send again"):
        conn.raise_for(later, "x", "k")
    assert list(amqp_server.queues["q"]) == []  # the broker never took it


def test_publish_sends_again_a_message_dropped_after_a_refused_one(amqp_server, amqp_connect):
    conn = amqp_connect()
    bound_queue(conn)
    amqp_server.hold_output()
    conn.publish_nowait(b"refused", "gone", "k")
    amqp_server.wait_for(lambda: amqp_server.of("basic.publish"))
    amqp_server.flush_output()  # read during publish()'s wait: dropped, then sent again
    conn.publish(b"later", "x", "k", deadline=Deadline.after(0.2))
    assert [m.body for m in amqp_server.queues["q"]] == [b"later"]
    assert [s.body for s in amqp_server.of("basic.publish")] == [b"refused", b"later", b"later"]


def test_unknown_refused_exchange_leaves_every_waiting_message_lost(amqp_server, amqp_connect):
    conn = amqp_connect()
    bound_queue(conn)
    # The passive declare that would tell which exchange is missing is refused.
    amqp_server.method_script["exchange.declare"].append(("close", 403, "ACCESS_REFUSED"))
    pending = conn.publish_nowait(b"one", "gone", "k")
    conn.wait_confirm(pending)
    assert pending.outcome.value == "lost"
    with pytest.raises(exc.ConnectionLost, match="closed the channel"):
        conn.raise_for(pending, "gone", "k")
    conn.publish(b"two", "x", "k")  # restored all the same
    assert len(amqp_server.connections) == 1


def test_write_that_never_finished_is_sent_again_on_a_new_connection(amqp_server, amqp_connect, recorder):
    conn = amqp_connect(request_timeout=0.15)
    bound_queue(conn)
    amqp_server.stop_reading()  # a frozen broker: the write blocks, then misses its deadline
    body = b"x" * (8 * 1024 * 1024)  # more than the socket buffers hold
    conn.publish(body, "x", "k", deadline=Deadline.after(0.5))
    [seen] = amqp_server.of("basic.publish")
    assert seen.conn == 2 and len(seen.body) == len(body)
    [lost] = recorder.of(ev.ConnectionLost)
    assert "basic.publish" in lost.reason


def test_the_callers_properties_are_left_as_they_were(amqp_server, amqp_connect):
    conn = amqp_connect()
    bound_queue(conn)
    properties = {"content_type": "application/json", "delivery_mode": 2}
    conn.publish(b"one", "x", "k", properties=properties)
    conn.publish(b"two", "x", "k", headers={"h": 2}, properties=properties)
    assert properties == {"content_type": "application/json", "delivery_mode": 2}
    first, second = amqp_server.of("basic.publish")
    assert not first.properties.get("application_headers")
    assert second.properties["application_headers"] == {"h": 2}
    assert first.properties["message_id"] != second.properties["message_id"]


def test_a_header_member_in_the_properties_is_overridden_by_the_headers(amqp_server, amqp_connect):
    conn = amqp_connect()
    bound_queue(conn)
    conn.publish(b"one", "x", "k", properties={"headers": {"stale": 1}})
    [seen] = amqp_server.of("basic.publish")
    assert not seen.properties.get("application_headers")  # headers=None, as before


def test_a_frame_that_cannot_be_encoded_fails_without_reconnecting(amqp_server, amqp_connect,
                                                                   monkeypatch):
    from rabbit_ha_driver.connection import _frames

    conn = amqp_connect()
    bound_queue(conn)

    def unencodable(*args, **kwargs):
        raise OverflowError("number out of range")

    monkeypatch.setattr(_frames, "publish", unencodable)
    with pytest.raises(exc.InvalidMessage, match="AMQP cannot encode: number out of range"):
        conn.publish(b"x", "x", "k", deadline=Deadline.after(0.1))
    assert len(amqp_server.connections) == 1
    assert amqp_server.of("basic.publish") == []
    assert conn.state is State.CONNECTED


def test_the_process_id_of_the_fast_path_follows_a_fork():
    import os

    from rabbit_ha_driver.connection import _publishing

    assert _publishing._pid() == os.getpid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.write(write, str(_publishing._pid()).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        seen = int(pipe.read())
    os.waitpid(child, 0)
    assert seen == child
    assert _publishing._pid() == os.getpid()


def test_a_publish_in_another_process_than_the_connections_goes_through_ensure(
        amqp_server, amqp_connect, monkeypatch):
    from rabbit_ha_driver.connection import _publishing

    conn = amqp_connect()
    bound_queue(conn)
    ensured = []
    real = conn._publish_ensured

    def spy(*args, **kwargs):
        ensured.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(conn, "_publish_ensured", spy)
    conn.publish(b"here", "x", "k")
    assert ensured == []  # the fast path
    monkeypatch.setattr(_publishing._pid, "value", -1)  # as if forked
    conn.publish(b"elsewhere", "x", "k", deadline=Deadline.after(2))
    assert ensured == [b"elsewhere"]  # left to ensure(), which handles a fork
    assert [m.body for m in amqp_server.queues["q"]] == [b"here", b"elsewhere"]

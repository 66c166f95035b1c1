"""Channels the broker closes or cancels on, over the real AMQP path against
the scripted broker: restored with confirm mode, QoS and consumers, or by a
reconnect; consumer cancels consumed again after their delay."""

from __future__ import annotations

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import Deadline, State
from rabbit_ha_driver.testing import SILENT

ACK_TIMEOUT = "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out"


def consumer(conn, queue="q", exchange="x", key="k", *, ack=False, prefetch=5):
    """Declare, bind and consume ``queue``; returns the list deliveries go to."""
    got = []
    conn.set_qos(prefetch)
    conn.declare_exchange(exchange)
    conn.declare_queue(queue)
    conn.bind(queue, exchange, key)
    conn.consume(queue, lambda m: (got.append(m), conn.ack(m) if ack else None), tag="ctag")
    return got


def drain_until(conn, done, turns=5):
    """Run the consumer's loop (each turn at most 0.2 s) until ``done()``."""
    for _ in range(turns):
        if done():
            return
        conn.drain_events(0.2)
    assert done()


def after(methods, first):
    """The methods from the last ``first`` on (what one channel saw after opening)."""
    index = len(methods) - 1 - methods[::-1].index(first)
    return methods[index:]


def test_broker_close_during_consume_restores_the_channel(amqp_server, amqp_connect, recorder):
    conn = amqp_connect()
    got = consumer(conn)
    amqp_server.deliver("q", b"one")
    conn.drain_events(0.2)
    [old] = got
    old_channel = amqp_server.of("basic.consume")[0].channel

    amqp_server.close_channel(406, ACK_TIMEOUT)
    conn.drain_events(0.2)

    # A new channel on the same connection: confirm mode, QoS first, then
    # the topology and the consumer, under its own tag.
    assert after(amqp_server.methods(), "channel.open") == [
        "channel.open", "confirm.select", "basic.qos", "exchange.declare", "queue.declare",
        "queue.bind", "basic.consume"]
    new_channel = amqp_server.of("basic.consume")[-1].channel
    assert new_channel != old_channel  # ids go round: a late frame finds no channel
    assert amqp_server.of("basic.consume")[-1].args["consumer_tag"] == "ctag"
    assert amqp_server.of("basic.qos")[-1].args["prefetch_count"] == 5
    assert len(amqp_server.connections) == 1
    assert conn.state is State.CONNECTED
    [closed] = recorder.of(ev.ChannelClosedByBroker)
    assert closed.reply_code == 406
    [restored] = recorder.of(ev.ChannelRestored)
    assert restored.consumers == 1

    # The delivery of the closed channel is never acked on its successor; the
    # broker redelivers it on the new one.
    assert conn.ack(old) is False
    if len(got) == 1:
        conn.drain_events(0.2)
    again = got[1]
    assert again.body == b"one" and again.delivery_info["redelivered"] is True
    assert conn.ack(again) is True
    amqp_server.wait_for(lambda: amqp_server.of("basic.ack"))
    [ack] = amqp_server.of("basic.ack")
    assert ack.channel == new_channel
    assert ack.args["delivery_tag"] == again.delivery_tag


def test_late_frame_for_a_closed_channel_is_dropped(amqp_server, amqp_connect):
    conn = amqp_connect()
    got = consumer(conn)
    old = amqp_server.close_channel(406, ACK_TIMEOUT)
    conn.drain_events(0.2)
    # The broker repeats its close for the old channel: nobody answers it,
    # and the new channel is not touched.
    amqp_server.close_channel(406, ACK_TIMEOUT, channel=old)
    amqp_server.deliver("q", b"two")
    drain_until(conn, lambda: got)
    assert [m.body for m in got] == [b"two"]
    assert len(amqp_server.of("channel.close-ok")) == 1
    assert len(amqp_server.of("channel.open")) == 2
    assert conn.state is State.CONNECTED


def test_close_over_another_method_during_a_declare_runs_it_again(amqp_server, amqp_connect, recorder):
    conn = amqp_connect()
    conn.declare_exchange("x")
    # The broker closes the channel over an ack (of another thread, say)
    # while this thread declares: not this declare's fault.
    amqp_server.method_script["queue.declare"].append(
        ("close", 406, "PRECONDITION_FAILED - unknown delivery tag 9", (60, 80)))
    assert conn.declare_queue("q") == "q"
    first, second = amqp_server.of("queue.declare")
    assert first.channel != second.channel
    assert len(recorder.of(ev.ChannelRestored)) == 1
    assert len(amqp_server.connections) == 1


def test_refused_declare_raises_and_gives_the_next_caller_a_channel(amqp_server, amqp_connect):
    conn = amqp_connect()
    conn.declare_exchange("x")
    amqp_server.method_script["queue.declare"].append(
        ("close", 406, "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q'"))
    with pytest.raises(exc.IrrecoverableError) as err:
        conn.declare_queue("q", durable=True)
    assert err.value.reply_code == 406
    assert len(amqp_server.of("queue.declare")) == 1  # not retried
    assert len(amqp_server.of("channel.open")) == 2  # a fresh channel for the next caller
    conn.declare_queue("r")
    assert amqp_server.of("queue.declare")[-1].channel == amqp_server.of("channel.open")[-1].channel


def test_restore_that_fails_reconnects_and_replays(amqp_server, amqp_connect, recorder):
    conn = amqp_connect()
    got = consumer(conn)
    # The queue's home node is down: the replay on the new channel is refused.
    amqp_server.method_script["queue.declare"].append(("close", 404, "NOT_FOUND - home node down"))
    amqp_server.close_channel(406, ACK_TIMEOUT)
    conn.drain_events(0.2)
    if conn.state is not State.CONNECTED:
        conn.drain_events(0.2)  # the consumer's loop reconnects on its next turn
    assert conn.state is State.CONNECTED
    assert amqp_server.methods(conn=2) == [
        "channel.open", "confirm.select", "basic.qos", "exchange.declare", "queue.declare",
        "queue.bind", "basic.consume"]
    assert len(recorder.of(ev.ConnectionLost)) == 1
    amqp_server.deliver("q", b"after")
    conn.drain_events(0.2)
    assert [m.body for m in got] == [b"after"]


def test_server_cancel_is_consumed_again_after_the_delay(amqp_server, amqp_connect, recorder):
    conn = amqp_connect(kombu_reconnect_delay=0.05)
    got = consumer(conn, ack=True)
    assert amqp_server.cancel_consumers("q") == ["ctag"]
    conn.drain_events(0.2)  # reads the cancel
    [cancelled] = recorder.of(ev.ConsumerCancelled)
    assert cancelled.queue == "q" and cancelled.delay == 0.05
    drain_until(conn, lambda: recorder.of(ev.ConsumerRestored))  # waits for the delay, then consumes again
    [restored] = recorder.of(ev.ConsumerRestored)
    assert restored.same_connection is True
    # Declared again, bound again, consumed again on the same channel.
    assert amqp_server.methods()[-3:] == ["queue.declare", "queue.bind", "basic.consume"]
    assert amqp_server.of("basic.consume")[-1].args["consumer_tag"] == "ctag"
    assert len({s.channel for s in amqp_server.of("basic.consume")}) == 1
    assert len(amqp_server.connections) == 1
    amqp_server.deliver("q", b"again")
    conn.drain_events(0.2)
    assert [m.body for m in got] == [b"again"]


def test_cancel_whose_consume_again_fails_reconnects(amqp_server, amqp_connect, recorder):
    conn = amqp_connect(kombu_reconnect_delay=0.05)
    consumer(conn)
    amqp_server.cancel_consumers("q")
    amqp_server.method_script["queue.declare"].append(("close", 404, "NOT_FOUND - home node down"))
    conn.drain_events(0.2)
    drain_until(conn, lambda: len(amqp_server.connections) == 2 and conn.state is State.CONNECTED)
    assert amqp_server.of("basic.consume", conn=2)[0].args["consumer_tag"] == "ctag"
    restored = recorder.of(ev.ConsumerRestored)
    assert [r.same_connection for r in restored] == [False]


def test_cancel_by_the_client_is_sent_and_forgotten(amqp_server, amqp_connect):
    conn = amqp_connect()
    consumer(conn)
    conn.cancel("ctag")
    [cancel] = amqp_server.of("basic.cancel")
    assert cancel.args["consumer_tag"] == "ctag"
    assert amqp_server.consumers == {}
    # Not re-created by a later restore.
    amqp_server.close_channel(406, ACK_TIMEOUT)
    conn.drain_events(0.2)
    assert len(amqp_server.of("basic.consume")) == 1


def test_cancel_when_the_broker_closes_the_channel_over_it(amqp_server, amqp_connect):
    conn = amqp_connect()
    consumer(conn)
    conn.consume("q", lambda m: None, tag="other")
    amqp_server.method_script["basic.cancel"].append(("close", 404, "NOT_FOUND - no such consumer"))
    conn.cancel("ctag")
    # Restored without the cancelled consumer, with the other one.
    assert [s.args["consumer_tag"] for s in amqp_server.of("basic.consume")] == ["ctag", "other", "other"]
    assert conn.state is State.CONNECTED


def test_vanished_queue_is_declared_and_consumed_again(amqp_server, amqp_connect, recorder):
    conn = amqp_connect(consumer_check_interval=0.05)
    got = consumer(conn)
    amqp_server.forget_queue("q")  # deleted without a consumer cancel
    drain_until(conn, lambda: recorder.of(ev.ConsumerRestored))
    # A passive declare found it gone (and the broker closed the channel);
    # a new channel declared it and consumed it again.
    assert any(s.args["passive"] for s in amqp_server.of("queue.declare"))
    assert amqp_server.of("basic.consume")[-1].args["consumer_tag"] == "ctag"
    assert len(amqp_server.connections) == 1
    amqp_server.deliver("q", b"back")
    conn.drain_events(0.2)
    assert [m.body for m in got] == [b"back"]


def test_a_failing_callback_does_not_stop_consuming(amqp_server, amqp_connect, caplog):
    conn = amqp_connect()
    got = []

    def callback(message):
        got.append(message.body)
        conn.ack(message)
        if message.body == b"bad":
            raise ValueError("the service's bug")

    conn.declare_queue("q")
    conn.consume("q", callback)
    amqp_server.deliver("q", b"bad")
    amqp_server.deliver("q", b"good")
    drain_until(conn, lambda: len(got) == 2)
    assert got == [b"bad", b"good"]
    assert "consumer callback for queue 'q' failed" in caplog.text
    amqp_server.wait_for(lambda: len(amqp_server.of("basic.ack")) == 2)
    assert conn.state is State.CONNECTED


def test_probe_channel_that_never_opens_leaves_the_publish_lost(amqp_server, amqp_connect):
    conn = amqp_connect(request_timeout=0.1)
    conn.declare_exchange("x")
    # The broker closes the channel over a publish to a missing exchange;
    # the channel that would find which one never opens.
    amqp_server.method_script["channel.open"].append(SILENT)
    with pytest.raises(exc.ConnectionLost, match="closed the channel"):
        conn.publish(b"one", "gone", "k", deadline=Deadline.after(0.3))
    assert not any(s.args["passive"] for s in amqp_server.of("exchange.declare"))
    # The probe's wait used up the restore's budget or not: the channel is
    # restored, or the connection reconnects; either way the next publish goes.
    conn.publish(b"two", "x", "k", mandatory=False)
    assert amqp_server.of("basic.publish")[-1].body == b"two"

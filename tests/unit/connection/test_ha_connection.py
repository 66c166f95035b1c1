"""ensure(), failover, backoff, CCN and topology replay against the fake broker."""

from __future__ import annotations

import logging

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import Deadline, State
from rabbit_ha_driver.testing import (
    feature_denied,
    internal_error,
    not_found,
    precondition_failed,
)

from .conftest import URL, make_connection


def make(broker, clock, recorder, url=URL, **overrides):
    return make_connection(broker, clock, recorder, url, **overrides)


def consumer(conn, queue="q", exchange="x", key="k"):
    got = []
    conn.declare_exchange(exchange)
    conn.declare_queue(queue)
    conn.bind(queue, exchange, key)
    conn.consume(queue, lambda m: (got.append(m.body), conn.ack(m)))
    return got


def test_publish_and_consume(broker, clock, recorder):
    conn = make(broker, clock, recorder)
    got = consumer(conn)
    conn.publish(b"one", "x", "k")
    conn.drain_events(0)
    assert got == [b"one"]
    assert conn.state is State.CONNECTED
    assert broker.connects == ["h1:1"]


def test_next_host_at_once_without_backoff(broker, clock, recorder):
    broker.down_hosts = {"h1:1"}
    conn = make(broker, clock, recorder)
    conn.connect(Deadline.after(10, clock))
    assert broker.connects == ["h1:1", "h2:2"]
    assert clock.sleeps == []
    assert conn.host.address == "h2:2"


def test_backoff_only_after_a_full_pass(broker, clock, recorder):
    broker.fail_connects = 7
    conn = make(broker, clock, recorder)
    conn.connect(Deadline.after(60, clock))
    assert len(broker.connects) == 8
    # passes of 3 hosts fail twice: two waits, growing by the step
    assert clock.sleeps == [0.2, 1.2]
    assert [e.attempt for e in recorder.of(ev.RetryScheduled)] == [1, 2]


def test_gives_up_at_the_deadline(broker, clock, recorder):
    broker.down_hosts = {"h1:1", "h2:2", "h3:3"}
    conn = make(broker, clock, recorder)
    start = clock.now()
    with pytest.raises(exc.MessagingTimeout) as err:
        conn.connect(Deadline.after(5, clock))
    assert clock.now() - start <= 5.0 + 1e-9
    assert "h1:1, h2:2, h3:3" in str(err.value)
    assert conn.state is State.CONNECTING


def test_wrong_password_raises_at_once(broker, clock, recorder):
    broker.refuse_login = True
    conn = make(broker, clock, recorder)
    with pytest.raises(exc.AuthenticationError) as err:
        conn.connect(Deadline.after(60, clock))
    assert len(broker.connects) == 1 and clock.sleeps == []
    assert "s3cret" not in str(err.value)


def test_inequivalent_arguments_raise_at_once(broker, clock, recorder):
    conn = make(broker, clock, recorder)
    conn.connect()
    broker.fail_next("queue.declare", precondition_failed())
    with pytest.raises(exc.IrrecoverableError) as err:
        conn.declare_queue("q", deadline=Deadline.after(60, clock))
    assert err.value.reply_code == 406 and err.value.operation == "queue.declare"
    assert broker.calls.count("queue.declare") == 1


def test_inequivalent_arguments_are_quoted_in_the_error_and_the_log(broker, clock, recorder, caplog):
    conn = make(broker, clock, recorder)
    conn.connect()
    broker.fail_next("queue.declare", precondition_failed(
        "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'q'"))
    with caplog.at_level(logging.ERROR), pytest.raises(exc.IrrecoverableError) as err:
        conn.declare_queue("q", deadline=Deadline.after(60, clock))
    assert "inequivalent arg 'x-delivery-limit' for queue 'q'" in str(err.value)
    [refused] = recorder.of(ev.Refused)
    assert (refused.operation, refused.reply_code) == ("queue.declare", 406)
    assert any("inequivalent arg 'x-delivery-limit'" in r.getMessage() and "not retried" in r.getMessage()
               for r in caplog.records)


def test_denied_deprecated_feature_raises_at_once_with_the_broker_reason(broker, clock, recorder, caplog):
    conn = make(broker, clock, recorder)
    conn.connect()
    broker.fail_next("queue.declare", feature_denied(), times=50)
    with caplog.at_level(logging.ERROR), pytest.raises(exc.FeatureDenied) as err:
        conn.declare_queue("q", deadline=Deadline.after(60, clock))
    assert broker.calls.count("queue.declare") == 1 and clock.sleeps == []
    assert err.value.feature == "transient_nonexcl_queues" and err.value.reply_code == 541
    message = str(err.value)
    assert "Feature `transient_nonexcl_queues` is deprecated. Its use is not permitted" in message
    assert "rabbit_transient_quorum_queue" in message and "\n" not in message
    assert any("Feature `transient_nonexcl_queues` is deprecated" in r.getMessage()
               for r in caplog.records if r.levelno == logging.ERROR)
    # The broker closed the connection: the connection knows, and the next
    # operation reconnects.
    assert conn.state is State.RECOVERING
    conn.declare_exchange("x", deadline=Deadline.after(60, clock))
    assert len(broker.connects) == 2


def test_denied_feature_in_a_topology_replay_is_not_retried(broker, clock, recorder):
    conn = make(broker, clock, recorder)
    conn.declare_queue("q")
    broker.drop_connections()
    broker.fail_next("queue.declare", feature_denied(), times=50)
    with pytest.raises(exc.FeatureDenied):
        conn.declare_exchange("x", deadline=Deadline.after(60, clock))
    assert broker.calls.count("queue.declare") == 2  # the first declare and one replay


def test_other_internal_errors_are_still_retried(broker, clock, recorder):
    conn = make(broker, clock, recorder)
    conn.connect()
    broker.fail_next("queue.declare", internal_error())
    conn.declare_queue("q", deadline=Deadline.after(60, clock))
    assert broker.calls.count("queue.declare") == 2
    assert recorder.of(ev.Refused) == []


def test_404_on_consume_is_retried_on_a_new_channel(broker, clock, recorder):
    conn = make(broker, clock, recorder)
    conn.declare_queue("q")
    broker.fail_next("basic.consume", not_found())
    conn.consume("q", lambda m: None, deadline=Deadline.after(10, clock))
    assert broker.calls.count("basic.consume") == 2
    assert broker.connects == ["h1:1"]


def test_dropped_connection_fails_over_and_replays_topology(broker, clock, recorder):
    conn = make(broker, clock, recorder, rabbit_qos_prefetch_count=7)
    conn.set_qos()
    got = consumer(conn)
    broker.drop_connections()
    conn.drain_events(0)      # notices the loss
    conn.drain_events(0)      # recovers on the next host
    assert broker.connects == ["h1:1", "h2:2"]
    order = [c for c in broker.calls if c != "basic.publish"]
    replay = order[order.index("basic.qos", 1):]
    assert replay[:5] == ["basic.qos", "exchange.declare", "queue.declare", "queue.bind", "basic.consume"]
    conn.publish(b"after", "x", "k")
    conn.drain_events(0)
    assert got == [b"after"]
    assert [e.to_host for e in recorder.of(ev.FailedOver)] == ["h2:2"]


def test_publish_retried_when_not_written(broker, clock, recorder):
    conn = make(broker, clock, recorder)
    got = consumer(conn)
    broker.fail_next("basic.publish", ConnectionResetError("gone"))
    conn.publish(b"m", "x", "k", deadline=Deadline.after(10, clock))
    conn.drain_events(0)
    assert got == [b"m"]


def test_unroutable_is_reported(broker, clock, recorder):
    conn = make(broker, clock, recorder)
    conn.declare_exchange("x")
    with pytest.raises(exc.Unroutable):
        conn.publish(b"m", "x", "nobody")


def test_consumer_cancel_waits_the_delay_then_consumes_on_same_connection(broker, clock, recorder):
    conn = make(broker, clock, recorder, kombu_reconnect_delay=1.0)
    got = consumer(conn)
    assert broker.cancel_consumers("q") == 1
    conn.drain_events(0)
    assert not recorder.of(ev.ConsumerRestored)
    clock.advance(0.9)
    conn.drain_events(0)
    assert not recorder.of(ev.ConsumerRestored)
    clock.advance(0.1)
    conn.drain_events(0)
    [restored] = recorder.of(ev.ConsumerRestored)
    assert restored.same_connection and restored.queue == "q"
    assert broker.connects == ["h1:1"]
    conn.publish(b"back", "x", "k")
    conn.drain_events(0)
    assert got == [b"back"]


def test_consumer_cancel_escalates_to_reconnect_when_redeclare_fails(broker, clock, recorder):
    conn = make(broker, clock, recorder, kombu_reconnect_delay=0.5)
    got = consumer(conn)
    broker.cancel_consumers("q")
    conn.drain_events(0)
    broker.fail_next("queue.declare", ConnectionResetError("node died"))
    clock.advance(0.5)
    conn.drain_events(0)
    assert broker.connects == ["h1:1", "h2:2"]
    [restored] = recorder.of(ev.ConsumerRestored)
    assert not restored.same_connection
    conn.publish(b"x", "x", "k")
    conn.drain_events(0)
    assert got == [b"x"]


def test_server_named_queue_gets_new_name_after_reconnect(broker, clock, recorder):
    conn = make(broker, clock, recorder)
    conn.declare_exchange("x")
    first = conn.declare_queue("")
    conn.bind(first, "x", "k")
    got = []
    conn.consume(first, lambda m: got.append(m.body))
    broker.drop_connections()
    conn.drain_events(0)
    conn.drain_events(0)
    second = conn.queue_name(first)
    assert second != first and second.startswith("amq.gen-")
    conn.publish(b"to-new", "x", "k")
    conn.drain_events(0)
    assert got == [b"to-new"]


def test_closed_connection_refuses_work_and_close_is_idempotent(broker, clock, recorder):
    conn = make(broker, clock, recorder)
    conn.connect()
    conn.close()
    conn.close()
    assert conn.state is State.CLOSED
    with pytest.raises(exc.ConnectionLost):
        conn.declare_queue("q")


def test_events_for_every_state_change_and_no_password_in_logs(broker, clock, recorder, caplog):
    caplog.set_level(logging.DEBUG)
    broker.down_hosts = {"h1:1"}
    conn = make(broker, clock, recorder)
    conn.connect()
    broker.drop_connections()
    conn.drain_events(0)
    conn.drain_events(0)
    kinds = {type(e).__name__ for e in recorder.events}
    assert {"Connecting", "ConnectFailed", "Connected", "ConnectionLost", "FailedOver",
            "StateChanged"} <= kinds
    assert "s3cret" not in caplog.text
    assert "h1:1" in caplog.text


def test_repr_shows_state_and_host(broker, clock, recorder):
    conn = make(broker, clock, recorder)
    assert "new" in repr(conn)
    conn.connect()
    assert "connected h1:1" in repr(conn)


def test_queue_vanished_without_cancel_is_recreated_by_the_check(broker, clock, recorder):
    conn = make(broker, clock, recorder, consumer_check_interval=5.0)
    got = consumer(conn)
    clock.advance(1.0)
    conn.drain_events(0)      # the first check, soon after the channel opened
    broker.delete_queue_silently("q")
    clock.advance(4.9)
    conn.drain_events(0)
    assert "q" not in broker.queues
    clock.advance(0.1)
    conn.drain_events(0)
    assert "q" in broker.queues
    [restored] = recorder.of(ev.ConsumerRestored)
    assert restored.same_connection and broker.connects == ["h1:1"]
    conn.publish(b"again", "x", "k")
    conn.drain_events(0)
    assert got == [b"again"]


def test_consumer_check_can_be_turned_off(broker, clock, recorder):
    conn = make(broker, clock, recorder, consumer_check_interval=0)
    consumer(conn)
    broker.delete_queue_silently("q")
    calls_before = len(broker.calls)
    clock.advance(100)
    conn.drain_events(0)
    assert "q" not in broker.queues
    assert broker.calls[calls_before:] == []


def test_queues_are_checked_soon_after_a_reconnect(broker, clock, recorder):
    conn = make(broker, clock, recorder, consumer_check_interval=30.0)
    consumer(conn)
    broker.drop_connections()
    conn.drain_events(0)
    conn.drain_events(0)                     # reconnected, topology replayed
    broker.delete_queue_silently("q")        # a queue that died with its node
    clock.advance(1.0)
    conn.drain_events(0)
    assert "q" in broker.queues
    assert recorder.of(ev.ConsumerRestored)


def test_a_consumer_draining_in_short_turns_keeps_backing_off(broker, clock, recorder):
    """Every node answers, but the consumed queue cannot be declared (its home
    node is down: 404). A consumer loop drains in short turns; the backoff must
    grow across them, not start again at the first step every turn."""
    conn = make(broker, clock, recorder)
    consumer(conn)
    broker.fail_next("queue.declare", not_found(), times=1000)
    broker.drop_connections()
    start = clock.now()
    while clock.now() - start < 20.0:
        before = clock.now()
        conn.drain_events(0.5)
        if clock.now() == before:
            clock.advance(0.5)  # a turn that did not sleep still took its time
    attempts = [e.attempt for e in recorder.of(ev.RetryScheduled)]
    assert attempts[:4] == [1, 2, 3, 4], attempts
    # 0.2 + 1.2 + 2.2 + 3 + 3 ... over 20 s: a handful of passes of 3 hosts each
    assert len(broker.connects) <= 1 + 3 * 9, len(broker.connects)


def test_a_consumer_the_broker_lost_without_a_cancel_consumes_again(broker, clock, recorder):
    """The broker forgets a consumer without a basic.cancel (the queue kept):
    its queue counts no consumer at two checks in a row, so the channel is
    reopened and consumes again; a single zero changes nothing."""
    conn = make(broker, clock, recorder, consumer_check_interval=10)
    got = consumer(conn)
    clock.advance(10)
    conn.drain_events(0)  # a check that counts our consumer
    channel = conn._channel
    assert broker.lose_consumers("q") == 1
    conn.publish(b"waiting", "x", "k")
    clock.advance(10)
    conn.drain_events(0)  # first zero: checked again soon, nothing else
    assert recorder.of(ev.ConsumerLost) == [] and got == []
    clock.advance(1)
    conn.drain_events(0)  # second zero: consume again on a new channel
    assert [e.queue for e in recorder.of(ev.ConsumerLost)] == ["q"]
    assert conn._channel is not channel and conn.state is State.CONNECTED
    conn.drain_events(0)
    assert got == [b"waiting"]


def test_a_lost_consumer_beside_a_live_one_is_found_by_the_messages_it_is_not_sent(
        broker, clock, recorder):
    """Another server's consumer keeps the queue's count above zero: the only
    sign of our lost consumer is ready messages that never come, at two checks
    in a row, with nothing of ours unacknowledged."""
    conn = make(broker, clock, recorder, consumer_check_interval=10)
    busy = make(broker, clock, recorder)  # consumes "q" too, but never reads
    got = consumer(conn)
    busy.consume("q", lambda m: None)
    channel = conn._channel
    assert broker.lose_consumers_of(channel) == 1
    conn.publish(b"waiting", "x", "k")
    clock.advance(10)
    conn.drain_events(0)  # ready, none came: checked again soon
    assert recorder.of(ev.ConsumerLost) == [] and got == []
    clock.advance(2)
    conn.drain_events(0)  # still ready, still none: consume again on a new channel
    lost = recorder.of(ev.ConsumerLost)
    assert [e.queue for e in lost] == ["q"] and "1 message(s) ready" in lost[0].why
    assert conn._channel is not channel and conn.state is State.CONNECTED
    conn.drain_events(0)
    assert got == [b"waiting"]


def test_ready_messages_held_back_by_our_own_prefetch_are_not_a_lost_consumer(
        broker, clock, recorder):
    conn = make(broker, clock, recorder, consumer_check_interval=10)
    held = []
    conn.declare_exchange("x")
    conn.declare_queue("q")
    conn.bind("q", "x", "k")
    conn.set_qos(1)
    conn.consume("q", held.append)  # handling takes its time: nothing acknowledged
    for body in (b"1", b"2", b"3"):
        conn.publish(body, "x", "k")
    conn.drain_events(0)
    assert len(held) == 1
    for _ in range(4):
        clock.advance(10)
        conn.drain_events(0)
    assert recorder.of(ev.ConsumerLost) == []
    conn.ack(held[0])
    conn.drain_events(0)
    assert [m.body for m in held] == [b"1", b"2"]


def test_a_consumer_lost_again_on_its_new_channel_moves_to_another_node(
        broker, clock, recorder):
    conn = make(broker, clock, recorder, consumer_check_interval=10)
    consumer(conn)
    first = conn.host
    for _ in range(2):
        broker.lose_consumers("q")
        clock.advance(10)
        conn.drain_events(0)
        clock.advance(1)
        conn.drain_events(0)
    assert len(recorder.of(ev.ConsumerLost)) == 2
    assert recorder.of(ev.ConnectionLost), "a second loss with nothing received reconnects"
    assert "lost again on a new channel" in recorder.of(ev.ConnectionLost)[-1].reason
    assert conn.host != first


def test_a_stream_consumer_is_not_taken_for_a_lost_one(broker, clock, recorder):
    """RabbitMQ's declare-ok of a stream counts no consumer and every message
    the stream holds (reading one removes nothing): neither says anything
    about the consumer. A stream fanout consumer must keep its channel and
    its connection however long it reads."""
    conn = make(broker, clock, recorder, consumer_check_interval=10)
    got = []
    conn.declare_exchange("x")
    conn.declare_queue("s", durable=True, arguments={"x-queue-type": "stream"})
    conn.bind("s", "x", "k")
    conn.set_qos(10)
    conn.consume("s", lambda m: (got.append(m.body), conn.ack(m)),
                 arguments={"x-stream-offset": "next"})
    channel = conn._channel
    conn.publish(b"one", "x", "k")
    conn.drain_events(0)
    assert got == [b"one"]
    checks = broker.calls.count("queue.declare")
    for _ in range(5):
        clock.advance(10)
        conn.drain_events(0)
        clock.advance(2)
        conn.drain_events(0)
    assert broker.calls.count("queue.declare") > checks  # still checked: a vanished one is found
    assert recorder.of(ev.ConsumerLost) == []
    assert recorder.of(ev.ConnectionLost) == [] and conn._channel is channel


def test_a_standby_single_active_consumer_is_not_taken_for_a_lost_one(broker, clock, recorder):
    """With x-single-active-consumer the broker delivers to one consumer only:
    ready messages that never reach a standby consumer, counted beside the
    active one, are what the queue promises. (The fake broker has no single
    active consumer: a consumer it stopped delivering to looks the same.)"""
    conn = make(broker, clock, recorder, consumer_check_interval=10)
    active = make(broker, clock, recorder)  # the active consumer, busy: never reads
    got = []
    conn.declare_exchange("x")
    conn.declare_queue("q", arguments={"x-single-active-consumer": True})
    conn.bind("q", "x", "k")
    active.consume("q", lambda m: None)
    conn.consume("q", lambda m: (got.append(m.body), conn.ack(m)))
    channel = conn._channel
    assert broker.lose_consumers_of(channel) == 1
    conn.publish(b"waiting", "x", "k")
    for _ in range(4):
        clock.advance(10)
        conn.drain_events(0)
        clock.advance(2)
        conn.drain_events(0)
    assert recorder.of(ev.ConsumerLost) == []
    assert recorder.of(ev.ConnectionLost) == [] and conn._channel is channel


def test_ready_messages_not_sent_count_only_after_two_seconds_however_often_checked(
        broker, clock, recorder):
    """The second sign of a starved consumer comes 2 s after the first, also
    when queues are checked more often than that (a short
    consumer_check_interval, or another queue's first zero count): a broker
    slow to deliver to a live consumer for less is no lost consumer."""
    conn = make(broker, clock, recorder, consumer_check_interval=0.5)
    busy = make(broker, clock, recorder)  # consumes "q" too, but never reads
    consumer(conn)
    busy.consume("q", lambda m: None)
    assert broker.lose_consumers_of(conn._channel) == 1
    conn.publish(b"waiting", "x", "k")
    clock.advance(1)
    conn.drain_events(0)  # the first sign
    for _ in range(3):
        clock.advance(0.5)
        conn.drain_events(0)
    assert recorder.of(ev.ConsumerLost) == [], "a second sign after less than 2 s"
    clock.advance(0.5)
    conn.drain_events(0)  # 2 s after the first sign, still nothing came
    assert [e.queue for e in recorder.of(ev.ConsumerLost)] == ["q"]


def test_a_single_zero_count_is_not_a_lost_consumer(broker, clock, recorder):
    conn = make(broker, clock, recorder, consumer_check_interval=10)
    other = make(broker, clock, recorder)
    consumer(conn)
    clock.advance(10)
    conn.drain_events(0)
    broker.lose_consumers("q")
    clock.advance(10)
    conn.drain_events(0)  # zero once ...
    other.consume("q", lambda m: None)  # ... then someone consumes it again
    clock.advance(1)
    conn.drain_events(0)
    assert recorder.of(ev.ConsumerLost) == []


def test_a_confirm_that_arrived_while_its_waiter_could_not_run_is_not_a_missed_deadline(
        broker, clock, recorder):
    """An eventlet hub held by CPU-bound work: the waiter's read times out
    when the hub resumes, past the deadline, with the confirm unread."""
    from rabbit_ha_driver.connection._confirms import Outcome, Pending

    conn = make(broker, clock, recorder)
    conn.connect()
    pending = Pending(1, "m1")
    reads = []

    def drain_once(wait):
        reads.append(wait)
        if len(reads) == 1:
            clock.advance(12.0)  # could not run; the read timed out
        else:
            pending.outcome = Outcome.ACKED  # it was there all along

    conn._drain_once = drain_once
    conn.wait_confirm(pending, Deadline.after(10.0, clock))
    assert pending.done and len(reads) == 2


def test_a_confirm_that_never_came_is_still_a_missed_deadline(broker, clock, recorder):
    from rabbit_ha_driver.connection._confirms import Pending

    conn = make(broker, clock, recorder)
    conn.connect()
    reads = []

    def drain_once(wait):
        reads.append(wait)
        clock.advance(wait if wait > 0.01 else 0.0)

    conn._drain_once = drain_once
    with pytest.raises(exc.MessagingTimeout, match="did not confirm"):
        conn.wait_confirm(Pending(1, "m1"), Deadline.after(10.0, clock))
    assert 1 < len(reads) <= 2 + 16  # the last look is bounded

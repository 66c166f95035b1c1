"""The poll-style listener: batches, acknowledgements on the polling thread, stop, replies."""

from __future__ import annotations

import json
import time

import pytest

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import Connection
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.rpc import envelope
from rabbit_ha_driver.rpc.listener import (
    NotificationIncomingMessage,
    RpcIncomingMessage,
    notification_listener,
    rpc_listener,
)
from rabbit_ha_driver.rpc.publisher import Publisher
from rabbit_ha_driver.testing import FakeTransport

from .conftest import fake_factory


class RecordingConnection(Connection):
    """A connection that remembers what it acknowledged and rejected."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.settled: list[tuple[str, object]] = []

    def ack(self, message):
        self.settled.append(("ack", message))
        return super().ack(message)

    def reject(self, message, requeue=False):
        self.settled.append(("requeue" if requeue else "reject", message))
        return super().reject(message, requeue=requeue)


@pytest.fixture
def listen_conn(settings, broker):
    return RecordingConnection(settings, name="listen", transport=FakeTransport,
                               transport_options={"fake_broker": broker})


@pytest.fixture
def publisher(settings, factory):
    p = Publisher(settings, factory)
    yield p
    p.close()


@pytest.fixture
def make_rpc_listener(settings, listen_conn, publisher, topic):
    listeners = []

    def make(**kwargs):
        listener = rpc_listener(settings, topic, "s1", connection=listen_conn,
                                publisher=publisher, **kwargs)
        assert listener.subscribe(time.monotonic() + 2)
        listeners.append(listener)
        return listener

    yield make
    for listener in listeners:
        listener.cleanup()


def send(publisher, key, message, exchange="openstack", **kwargs):
    body = envelope.encode(message, 1 << 20)
    publisher.publish(body, envelope.ExchangeSpec(exchange), key,
                      deadline=time.monotonic() + 2, what="test", **kwargs)


def request(method="m", **kwargs):
    return envelope.build_request({"user": "u"}, method, {}, **kwargs)


def poll_until(listener, count, batch_size=10):
    got = []
    deadline = time.monotonic() + 2
    while len(got) < count and time.monotonic() < deadline:
        got += listener.poll(timeout=0.05, batch_size=batch_size)
    return got


def test_rpc_listener_declares_oslo_messagings_queues(make_rpc_listener, broker, topic):
    listener = make_rpc_listener()
    names = {q.name for q in listener.queues}
    fanout = next(n for n in names if n.startswith(f"{topic}_fanout_"))
    assert names == {topic, f"{topic}.s1", fanout}
    assert set(broker.queues) >= names
    assert listener.subscribed


def test_poll_returns_nothing_when_nothing_arrived(make_rpc_listener):
    listener = make_rpc_listener()
    start = time.monotonic()
    assert listener.poll(timeout=0) == []
    assert listener.poll(timeout=0.05) == []
    assert time.monotonic() - start < 0.5


def test_poll_hands_out_batches_and_acknowledges_requests_first(make_rpc_listener, publisher,
                                                                listen_conn, topic):
    listener = make_rpc_listener()
    for i in range(5):
        send(publisher, topic, request(f"m{i}"))
    first = poll_until(listener, 3, batch_size=3)
    assert len(first) == 3
    rest = poll_until(listener, 2)
    incoming = first + rest
    assert [m.message["method"] for m in incoming] == [f"m{i}" for i in range(5)]
    assert all(isinstance(m, RpcIncomingMessage) and m.acknowledged for m in incoming)
    assert [kind for kind, _ in listen_conn.settled] == ["ack"] * 5
    assert incoming[0].ctxt == {"user": "u"}
    incoming[0].requeue()  # requests are acknowledged before they run: no effect
    listener.poll(timeout=0)
    assert len(listen_conn.settled) == 5


def test_batch_timeout_waits_for_a_fuller_batch(make_rpc_listener, publisher, topic):
    listener = make_rpc_listener()
    send(publisher, topic, request())
    poll_until(listener, 0)
    start = time.monotonic()
    batch = listener.poll(timeout=2, batch_size=5, batch_timeout=0.1)
    assert len(batch) == 1
    assert 0.05 < time.monotonic() - start < 1.5


def test_stop_requeues_what_was_not_handed_out(make_rpc_listener, publisher, listen_conn, topic):
    listener = make_rpc_listener()
    for i in range(3):
        send(publisher, topic, request(f"m{i}"))
    taken = poll_until(listener, 1, batch_size=1)
    assert len(taken) == 1
    deadline = time.monotonic() + 1
    while len(listener._incoming) < 2 and time.monotonic() < deadline:  # let the rest arrive
        listener._conn.drain_events(0.05)
    listener.stop()
    assert listener.poll(timeout=1) == []
    assert [kind for kind, _ in listen_conn.settled] == ["ack", "requeue", "requeue"]
    assert listener.stopped


def test_rpc_incoming_replies_and_heartbeats(make_rpc_listener, publisher, settings, broker, topic):
    listener = make_rpc_listener()
    reply_conn = fake_factory(settings, broker)("replies")
    reply_conn.declare_queue("reply_test")
    replies = []
    reply_conn.consume("reply_test", replies.append, no_ack=True)
    send(publisher, topic, request("m", msg_id="m1", reply_q="reply_test",
                                   call_monitor_timeout=4), ttl=True)
    (incoming,) = poll_until(listener, 1)
    assert incoming.client_timeout == 4.0
    assert 0 < incoming.reply_deadline - time.monotonic() <= 2
    incoming.heartbeat()
    incoming.reply({"answer": 42})
    incoming.reply("twice")  # ignored
    reply_conn.drain_events(0.2)
    reply_conn.drain_events(0.2)
    reply_conn.drain_events(0.05)
    decoded = [envelope.parse_reply(envelope.decode(
        m.body, content_type=m.content_type, content_encoding=m.content_encoding,
        headers=m.headers, max_size=1 << 20)) for m in replies]
    assert [(r.msg_id, r.result, r.ending) for r in decoded] == [
        ("m1", None, False), ("m1", {"answer": 42}, True)]
    reply_conn.close()


def test_heartbeat_to_a_missing_reply_queue_raises(make_rpc_listener, publisher, topic):
    listener = make_rpc_listener()
    send(publisher, topic, request("m", msg_id="m1", reply_q="reply_gone", call_monitor_timeout=2))
    (incoming,) = poll_until(listener, 1)
    with pytest.raises(exc.Unroutable):
        incoming.heartbeat()


def test_a_reply_to_a_missing_queue_is_given_up_at_the_callers_deadline(
        make_rpc_listener, publisher, topic, caplog):
    listener = make_rpc_listener()
    send(publisher, topic, request("m", msg_id="m1", reply_q="reply_gone"), ttl=False)
    (incoming,) = poll_until(listener, 1)
    incoming.reply_deadline = time.monotonic() + 0.1
    incoming.reply("lost")
    assert "abandoned" in caplog.text
    # The queue is remembered as gone: the next reply to it is not retried.
    send(publisher, topic, request("m", msg_id="m2", reply_q="reply_gone"))
    (second,) = poll_until(listener, 1)
    start = time.monotonic()
    second.reply("lost too")
    assert time.monotonic() - start < 0.1


def test_a_cast_is_not_answered(make_rpc_listener, publisher, topic, broker):
    listener = make_rpc_listener()
    send(publisher, topic, request("m"))
    (incoming,) = poll_until(listener, 1)
    calls = len(broker.calls)
    incoming.reply("nobody asked")
    incoming.heartbeat()
    assert len(broker.calls) == calls


def test_fanout_queue_is_removed_on_cleanup(settings, listen_conn, publisher, topic, broker):
    listener = rpc_listener(settings, topic, "s1", connection=listen_conn, publisher=publisher)
    listener.subscribe(time.monotonic() + 2)
    fanout = next(q.name for q in listener.queues if "_fanout_" in q.name)
    assert fanout in broker.queues
    listener.cleanup()
    assert fanout not in broker.queues
    assert topic in broker.queues  # shared queues stay


def test_subscribing_continues_in_poll_after_a_broker_outage(settings, broker, publisher, topic):
    broker.fail_connects = 2
    conn = Connection(settings, name="late", transport=FakeTransport,
                      transport_options={"fake_broker": broker})
    listener = rpc_listener(settings, topic, "s1", connection=conn, publisher=publisher)
    listener.subscribe(time.monotonic())  # no time given: nothing done yet
    assert not listener.subscribed
    deadline = time.monotonic() + 2
    while not listener.subscribed and time.monotonic() < deadline:
        listener.poll(timeout=0.02)
    assert listener.subscribed
    send(publisher, topic, request())
    assert len(poll_until(listener, 1)) == 1
    listener.cleanup()


def notification(priority="info", unique_id=None):
    message = envelope.build_notification({}, "pub", "thing.done", priority, {"n": 1})
    if unique_id:
        message["_unique_id"] = unique_id
    return message


@pytest.fixture
def make_notification_listener(settings, listen_conn, publisher):
    listeners = []

    def make(targets, pool=None):
        listener = notification_listener(settings, targets, connection=listen_conn,
                                         publisher=publisher, pool=pool)
        assert listener.subscribe(time.monotonic() + 2)
        listeners.append(listener)
        return listener

    yield make
    for listener in listeners:
        listener.cleanup()


def test_notifications_are_acknowledged_on_the_polling_thread(make_notification_listener,
                                                              publisher, listen_conn, topic):
    listener = make_notification_listener([(topic, None, "info"), (topic, None, "error")])
    assert {q.name for q in listener.queues} == {f"{topic}.info", f"{topic}.error"}
    send(publisher, f"{topic}.info", notification("info"))
    send(publisher, f"{topic}.error", notification("error"))
    incoming = poll_until(listener, 2)
    assert all(isinstance(m, NotificationIncomingMessage) for m in incoming)
    assert sorted(m.message["priority"] for m in incoming) == ["ERROR", "INFO"]
    assert listen_conn.settled == []
    incoming[0].acknowledge()
    incoming[1].requeue()
    assert listen_conn.settled == []  # not yet: only the polling thread touches the channel
    listener.poll(timeout=0)
    assert [kind for kind, _ in listen_conn.settled] == ["ack", "requeue"]


def test_a_pool_is_one_queue_for_every_topic_and_priority(make_notification_listener, topic):
    listener = make_notification_listener([(topic, None, "info"), (topic, "other", "warn")],
                                          pool="pool-1")
    assert {(q.name, q.exchange, q.routing_key) for q in listener.queues} == {
        ("pool-1", "openstack", f"{topic}.info"), ("pool-1", "other", f"{topic}.warn")}


def test_acknowledged_notifications_seen_again_are_dropped(make_notification_listener, publisher,
                                                          listen_conn, topic):
    listener = make_notification_listener([(topic, None, "info")])
    send(publisher, f"{topic}.info", notification(unique_id="same"))
    (first,) = poll_until(listener, 1)
    first.acknowledge()
    listener.poll(timeout=0)
    send(publisher, f"{topic}.info", notification(unique_id="same"))
    send(publisher, f"{topic}.info", notification(unique_id="other"))
    assert [m.unique_id for m in poll_until(listener, 1)] == ["other"]


def test_junk_notifications_are_rejected_without_requeue(make_notification_listener, settings, publisher,
                                                         broker, listen_conn, topic):
    listener = make_notification_listener([(topic, None, "info")])
    conn = fake_factory(settings, broker)("raw")
    conn.publish(json.dumps({"no": "fields"}).encode(), "openstack", f"{topic}.info",
                 properties={"content_type": "application/json"})
    conn.close()
    send(publisher, f"{topic}.info", notification(unique_id="good"))
    assert [m.unique_id for m in poll_until(listener, 1)] == ["good"]
    assert [kind for kind, _ in listen_conn.settled] == ["reject"]


def test_a_request_whose_timeout_no_float_holds_is_rejected_and_serving_goes_on(
        make_rpc_listener, publisher, listen_conn, topic):
    """A client timeout of 400 digits is valid JSON but no float: a bad request
    like any other, rejected, not an error in the consumer callback that
    leaves the message unacknowledged (holding a prefetch slot until the
    channel closes, and the connection's count of unsettled deliveries above
    zero, which turns its starved-consumer check off)."""
    listener = make_rpc_listener()
    huge = request("huge")
    huge[envelope.TIMEOUT] = 10 ** 400
    send(publisher, topic, huge)
    send(publisher, topic, request("fine"))
    assert [m.message["method"] for m in poll_until(listener, 1)] == ["fine"]
    assert [kind for kind, _ in listen_conn.settled] == ["reject", "ack"]


def test_listener_kind_is_checked(settings, listen_conn, publisher):
    from rabbit_ha_driver.rpc.listener import PollListener

    with pytest.raises(ValueError):
        PollListener(settings, listen_conn, publisher, kind="other", exchanges=[], queues=[])
    with pytest.raises(ValueError):
        notification_listener(settings, [], connection=listen_conn, publisher=publisher)


def test_a_stream_consumer_resumes_after_its_last_delivery(broker, publisher, topic):
    settings = from_url("rabbit://u:p@h1:1/", rabbit_transient_quorum_queue=True,
                        rabbit_stream_fanout=True)
    conn = Connection(settings, name="listen", transport=FakeTransport,
                      transport_options={"fake_broker": broker})
    listener = rpc_listener(settings, topic, "s1", connection=conn, publisher=publisher)
    try:
        assert listener.subscribe(time.monotonic() + 2)
        stream = f"{topic}_fanout"
        [consumer] = [c for c in conn.topology.consumers.values()
                      if conn.queue_name(c.queue_key) == stream]
        # A server that starts reads only what is sent from now on.
        assert consumer.arguments == {"x-stream-offset": "next"}
        # The broker numbers stream deliveries; a reconnect goes on after the last one.
        conn.publish(envelope.encode(request("fan"), 1 << 20), stream, topic,
                     headers={"x-stream-offset": 41},
                     properties={"content_type": "application/json", "content_encoding": "utf-8"})
        [incoming] = poll_until(listener, 1)
        assert incoming.message["method"] == "fan"
        assert consumer.arguments == {"x-stream-offset": 42}
    finally:
        listener.cleanup()

"""A caller's reply connection lost and restored: replies are late, never lost, never asked twice.

Replies are consumed with acknowledgements (see :mod:`rabbit_ha_driver.rpc.replies`):
nothing is deleted or sent again when the reply connection comes back.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.rpc import RPCClient, RPCServer

from .conftest import FAKE_URL, fake_factory


class Counting:
    """An endpoint whose method is not idempotent: it counts its runs."""

    def __init__(self, name, runs):
        self.name = name
        self.runs = runs
        self.started = threading.Event()
        self.gate = threading.Event()

    def book(self, ctxt, seat):
        self.runs.append((self.name, seat))
        self.started.set()
        self.gate.wait(5)
        return f"{seat} booked by {self.name}"

    def ping(self, ctxt):
        return self.name


def drop_reply_connection(client):
    """Only the reply connection fails on its next read (as after a silent drop)."""
    conn = client.transport.reply_listener._conn
    old_channel = conn._channel
    conn._transport._generation = -1
    old_channel._generation = -1
    return old_channel


def wait_until(predicate, seconds=3.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def start(settings, factory, topic, endpoint, server, cleanup):
    srv = RPCServer(settings, topic, server, [endpoint], connection_factory=factory)
    srv.start()
    cleanup(srv)
    return srv


def test_a_call_running_on_one_server_is_not_run_again_by_another(settings, broker, topic,
                                                                    cleanup):
    """A caller's reply connection drops and comes back while a call runs on s1.

    The request was confirmed and s1 is running it. A copy of it sent to the
    *topic* would reach s2 (RabbitMQ round-robins), which, having no cache
    entry for it, would run the method a second time: nothing may be re-sent.
    """
    factory = fake_factory(settings, broker)
    runs: list = []
    first = Counting("s1", runs)
    start(settings, factory, topic, first, "s1", cleanup)
    client = RPCClient(settings, topic, timeout=6, connection_factory=factory)
    cleanup(client)
    outcome = {}
    caller = threading.Thread(target=lambda: outcome.setdefault(
        "r", client.call({}, "book", seat="12A")), daemon=True)
    caller.start()
    assert first.started.wait(3)
    # RabbitMQ hands a queue's next message to its next consumer (round
    # robin); the fake's memory transport gives it to whichever channel polls
    # first. To get RabbitMQ's order, s1's consumer of the shared topic queue
    # stops taking messages (s1 keeps running the call and replies to it).
    assert broker.lose_consumers(topic) == 1
    # Another server of the topic (another worker of the same service).
    second = Counting("s2", runs)
    start(settings, factory, topic, second, "s2", cleanup)
    time.sleep(0.2)
    drop_reply_connection(client)
    wait_until(lambda: len(runs) > 1, 2.0)
    first.gate.set()
    second.gate.set()
    caller.join(6)
    assert outcome.get("r", "").startswith("12A booked")
    assert runs == [("s1", "12A")], f"the method ran {len(runs)} times: {runs}"


@pytest.mark.parametrize("resend_after", [0, 2.0])
def test_a_reply_queued_while_the_reply_connection_was_down_answers_the_call(broker, topic, cleanup,
                                                                             resend_after):
    """The reply reaches the queue while the reply connection is down (the
    broker dropped the old consumer at once: a reset, a node restart); the
    connection comes back and consumes it, whatever the re-send option says."""
    settings = from_url(FAKE_URL, kombu_reconnect_delay=0.0, rabbit_retry_interval=0.0,
                        rabbit_retry_backoff=0.0, rabbit_interval_max=0.0,
                        rpc_resend_uncertain_after=resend_after)
    factory = fake_factory(settings, broker)
    runs: list = []
    endpoint = Counting("s1", runs)
    start(settings, factory, topic, endpoint, "s1", cleanup)
    client = RPCClient(settings, topic, timeout=4, connection_factory=factory)
    cleanup(client)
    assert client.call({}, "ping") == "s1"  # the server's reply connection is up
    outcome = {}

    def call():
        try:
            outcome["r"] = client.call({}, "book", seat="7C")
        except Exception as error:
            outcome["r"] = error

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    assert endpoint.started.wait(3)
    queue = client.transport.reply_listener.queue
    broker.connect_gate = threading.Event()  # the reconnect waits
    old = drop_reply_connection(client)
    broker.lose_consumers_of(old)  # the broker saw the connection go (RST)
    endpoint.gate.set()  # the server replies: into the queue, nobody consumes it
    assert wait_until(lambda: broker.queues[queue].qsize() == 1)
    broker.connect_gate.set()  # the reply connection comes back
    caller.join(6)
    assert outcome.get("r") == "7C booked by s1", f"the call got {outcome.get('r')!r}"


def test_the_fake_broker_deletes_a_reply_queue_with_its_messages(settings, broker):
    """As RabbitMQ: a queue bound to no exchange (a reply queue) goes with its messages."""
    conn = fake_factory(settings, broker)("raw")
    try:
        conn.declare_queue("reply_x")
        conn.publish(b"a reply", "", "reply_x")
        conn.ensure(lambda ch: ch.queue_delete(queue="reply_x"), operation="queue.delete")
        conn.declare_queue("reply_x")
        got = []
        conn.consume("reply_x", lambda m: got.append(m.body), no_ack=True)
        conn.drain_events(0.2)
        assert got == [], "a message survived queue.delete"
    finally:
        conn.close()


def test_a_reply_is_acknowledged_after_its_waiter_has_it(settings, clock):
    """Acked any earlier, a reply delivered to a connection that dies at that
    moment would be gone; acked after, it goes back to the queue."""
    from rabbit_ha_driver.rpc import envelope
    from rabbit_ha_driver.rpc.replies import ReplyListener, ReplyWaiters

    order = []
    waiters = ReplyWaiters(clock)
    call = waiters.register("m1", 10.0)

    class Conn:
        def ack(self, message):
            order.append(("ack", call.done))
            return True

    listener = ReplyListener(settings, Conn(), waiters, queue="reply_x")
    body = envelope.encode(envelope.build_reply("m1", "pong"), 1 << 20)
    message = SimpleNamespace(body=body, content_type="application/json",
                              content_encoding="utf-8", headers={})
    listener._on_message(message)
    assert order == [("ack", True)]
    assert waiters.wait(call) == "pong"


def test_a_reply_that_cannot_be_handled_is_acknowledged_all_the_same(settings, clock, monkeypatch):
    from rabbit_ha_driver.rpc import replies
    from rabbit_ha_driver.rpc.replies import ReplyListener, ReplyWaiters

    acked = []

    class Conn:
        def ack(self, message):
            acked.append(message)
            return True

    def broken(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(replies, "handle_reply_message", broken)
    listener = ReplyListener(settings, Conn(), ReplyWaiters(clock), queue="reply_x")
    message = SimpleNamespace(body=b"{}")
    with pytest.raises(RuntimeError):
        listener._on_message(message)
    assert acked == [message]  # not redelivered after every reconnect

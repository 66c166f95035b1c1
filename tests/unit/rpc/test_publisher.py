"""Publisher: confirmed publishes, re-sent only when the broker provably did not take them."""

from __future__ import annotations

import threading

import pytest

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.clock import FakeClock
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.rpc.envelope import ExchangeSpec, QueueSpec
from rabbit_ha_driver.rpc.publisher import Publisher
from rabbit_ha_driver.testing import not_found

from .conftest import FAKE_URL, fake_factory

EXCHANGE = ExchangeSpec("openstack", "topic")


class HookClock(FakeClock):
    """A fake clock that runs ``on_sleep`` whenever code under test sleeps."""

    def __init__(self) -> None:
        super().__init__()
        self.on_sleep = lambda: None

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.on_sleep()


@pytest.fixture
def hook_clock():
    return HookClock()


def consumer(settings, broker, queue="q", key="k", exchange="openstack"):
    conn = fake_factory(settings, broker)("consumer")
    got = []
    conn.declare_exchange(exchange, "topic")
    conn.declare_queue(queue)
    conn.bind(queue, exchange, key)
    conn.consume(queue, got.append, no_ack=True)
    return conn, got


def test_a_confirmed_publish_carries_json_properties_and_the_time_left(settings, broker, clock):
    conn, got = consumer(settings, broker)
    publisher = Publisher(settings, fake_factory(settings, broker, clock), clock=clock)
    assert publisher.publish(b"{}", EXCHANGE, "k", deadline=clock.now() + 5, what="t", ttl=True)
    assert publisher.publish(b"{}", EXCHANGE, "k", deadline=clock.now() + 5, what="t",
                             persistent=True)
    conn.drain_events(0.5)
    conn.drain_events(0.5)
    first, second = got
    assert (first.content_type, first.content_encoding) == ("application/json", "utf-8")
    assert first.properties["expiration"] == "5000"
    assert first.properties["delivery_mode"] == 1
    assert "expiration" not in second.properties
    assert second.properties["delivery_mode"] == 2
    publisher.close()
    conn.close()


def test_unroutable_is_sent_again_until_a_queue_takes_it(settings, broker, hook_clock):
    publisher = Publisher(settings, fake_factory(settings, broker, hook_clock), clock=hook_clock)
    sleeps = []

    def queue_appears_after_three_tries():
        sleeps.append(hook_clock.now())
        if len(sleeps) == 3:
            consumer(settings, broker)

    hook_clock.on_sleep = queue_appears_after_three_tries
    assert publisher.publish(b"{}", EXCHANGE, "k", deadline=hook_clock.now() + 10, what="call x")
    assert len(sleeps) == 3
    assert hook_clock.sleeps == [0.05, 0.1, 0.2]  # growing pauses between attempts


def test_unroutable_until_the_deadline_raises_a_timeout_saying_so(settings, broker, clock):
    publisher = Publisher(settings, fake_factory(settings, broker, clock), clock=clock)
    start = clock.now()
    with pytest.raises(exc.MessagingTimeout, match=r"call 'm' to t: not sent within 3\.0s "
                                                   r"\(\d+ attempts\): no queue took it") as info:
        publisher.publish(b"{}", EXCHANGE, "k", deadline=start + 3, what="call 'm' to t")
    assert clock.now() == pytest.approx(start + 3)
    assert isinstance(info.value.last_error, exc.Unroutable)
    assert max(clock.sleeps) <= 0.5


def test_unroutable_grace_returns_false(settings, broker, clock):
    publisher = Publisher(settings, fake_factory(settings, broker, clock), clock=clock)
    start = clock.now()
    assert publisher.publish(b"{}", EXCHANGE, "", deadline=start + 30, what="fanout",
                             retry_unroutable=1.0) is False
    assert clock.now() - start == pytest.approx(1.0)


def test_nacked_messages_are_sent_again(settings, broker, clock):
    conn, got = consumer(settings, broker)
    broker.fail_next("basic.publish", exc.PublishNacked("nack"), times=2)
    publisher = Publisher(settings, fake_factory(settings, broker, clock), clock=clock)
    assert publisher.publish(b"{}", EXCHANGE, "k", deadline=clock.now() + 5, what="t")
    conn.drain_events(0.5)
    assert len(got) == 1
    assert broker.calls.count("basic.publish") == 3


def test_a_vanished_exchange_is_declared_again(settings, broker, clock):
    conn, got = consumer(settings, broker)
    publisher = Publisher(settings, fake_factory(settings, broker, clock), clock=clock)
    broker.fail_next("basic.publish", not_found("NOT_FOUND - no exchange 'openstack'"))
    assert publisher.publish(b"{}", EXCHANGE, "k", deadline=clock.now() + 5, what="t")
    assert broker.calls.count("exchange.declare") >= 3  # consumer, first try, after the 404
    conn.drain_events(0.5)
    assert len(got) == 1


def test_queues_to_declare_are_declared_once(settings, broker, clock):
    publisher = Publisher(settings, fake_factory(settings, broker, clock), clock=clock)
    queue = QueueSpec("n.info", "openstack", "n.info")
    for _ in range(3):
        assert publisher.publish(b"{}", EXCHANGE, "n.info", deadline=clock.now() + 5,
                                 what="notify", declare=(queue,))
    assert broker.calls.count("queue.declare") == 1
    assert "n.info" in broker.queues


class UncertainConnection:
    """A connection that wrote the message and then lost the confirm."""

    def __init__(self):
        self.publishes = 0

    def declare_exchange(self, *args, **kwargs):
        pass

    def publish(self, *args, **kwargs):
        self.publishes += 1
        raise exc.ConnectionLost("connection lost before the confirm")

    def close(self):
        pass


def test_an_uncertain_publish_is_not_sent_twice(settings, clock):
    conn = UncertainConnection()
    publisher = Publisher(settings, lambda purpose: conn, clock=clock)
    with pytest.raises(exc.ConnectionLost):
        publisher.publish(b"{}", EXCHANGE, "k", deadline=clock.now() + 5, what="cast")
    assert conn.publishes == 1


def test_refusals_are_raised_at_once(settings, broker, clock):
    broker.fail_next("exchange.declare",
                     __import__("amqp").exceptions.AccessRefused("ACCESS_REFUSED", reply_code=403))
    publisher = Publisher(settings, fake_factory(settings, broker, clock), clock=clock)
    with pytest.raises(exc.IrrecoverableError):
        publisher.publish(b"{}", EXCHANGE, "k", deadline=clock.now() + 5, what="t")


def test_every_broker_down_times_out_at_the_deadline(broker, clock):
    settings = from_url(FAKE_URL.replace("@h1:1/", "@h1:1,u:p@h2:2/"), rabbit_retry_interval=0.2)
    broker.down_hosts = {"h1:1", "h2:2"}
    publisher = Publisher(settings, fake_factory(settings, broker, clock), clock=clock)
    start = clock.now()
    with pytest.raises(exc.MessagingTimeout, match="could not connect to any of h1:1, h2:2"):
        publisher.publish(b"{}", EXCHANGE, "k", deadline=start + 2, what="cast 'm' to t")
    assert clock.now() - start == pytest.approx(2.0)


def test_waiting_for_a_busy_connection_is_bounded_by_the_callers_deadline(settings, broker):
    publisher = Publisher(settings, fake_factory(settings, broker))
    holder = threading.Thread(target=publisher._lock.acquire)
    holder.start()
    holder.join()
    clock = publisher._clock
    with pytest.raises(exc.MessagingTimeout, match="publishing connection stayed busy"):
        publisher.publish(b"{}", EXCHANGE, "k", deadline=clock.now() + 0.02, what="t")
    publisher._lock.release()


def test_a_closed_publisher_refuses_to_send(settings, broker, clock):
    publisher = Publisher(settings, fake_factory(settings, broker, clock), clock=clock)
    publisher.close()
    with pytest.raises(exc.RabbitHAError, match="closed"):
        publisher.publish(b"{}", EXCHANGE, "k", deadline=clock.now() + 1, what="t")


def test_a_queue_the_publisher_declares_is_declared_as_its_listener_declares_it(
        settings, broker, clock):
    # With amqp_auto_delete the listener declares its queues auto-delete; a
    # publisher that declared the same queue without the flag would be
    # refused by a real broker (406 inequivalent arg 'auto_delete').
    made = []

    def factory(name):
        conn = fake_factory(settings, broker, clock)(name)
        made.append(conn)
        return conn

    publisher = Publisher(settings, factory, clock=clock)
    queue = QueueSpec("q-auto", "openstack", "k", auto_delete=True)
    assert publisher.publish(b"{}", EXCHANGE, "k", deadline=clock.now() + 5, what="t",
                             declare=(queue,))
    [declared] = [q for conn in made for q in conn.topology.queues.values() if q.name == "q-auto"]
    assert declared.auto_delete is True
    assert [b for conn in made for b in conn.topology.bindings if b.queue_key == declared.key]
    publisher.close()

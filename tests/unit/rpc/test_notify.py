"""Notifier and notification server on the fake broker."""

from __future__ import annotations

import threading
import time

import pytest

from rabbit_ha_driver.clock import FakeClock
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.rpc import REQUEUE, NotificationServer, Notifier

from .conftest import FAKE_URL, fake_factory


class Collector:
    def __init__(self, outcome=None, fail=False):
        self.got = []
        self.outcome = outcome
        self.fail = fail
        self.cond = threading.Condition()

    def _add(self, priority, ctxt, publisher_id, event_type, payload, metadata):
        with self.cond:
            self.got.append((priority, publisher_id, event_type, payload, ctxt, metadata))
            self.cond.notify_all()
        if self.fail:
            raise RuntimeError("handler failed")
        return self.outcome

    def info(self, *args):
        return self._add("info", *args)

    def error(self, *args):
        return self._add("error", *args)

    def wait_for(self, count, timeout=2.0):
        with self.cond:
            self.cond.wait_for(lambda: len(self.got) >= count, timeout)
            return list(self.got)


@pytest.fixture
def cleanup():
    stack = []
    yield stack.append
    for item in reversed(stack):
        if isinstance(item, NotificationServer):
            item.stop()
            item.wait(2)
        else:
            item.close()


@pytest.fixture
def listen(settings, factory, cleanup):
    def start(topics, endpoint=None, **kwargs):
        endpoint = endpoint or Collector()
        server = NotificationServer(settings, topics, [endpoint], connection_factory=factory,
                                    **kwargs)
        server.start()
        cleanup(server)
        return endpoint, server

    return start


@pytest.fixture
def notifier(settings, factory, topic, cleanup):
    n = Notifier(settings, "svc.host1", topics=[topic], connection_factory=factory)
    cleanup(n)
    return n


def test_notifications_reach_the_method_of_their_priority(listen, notifier, topic):
    collector, server = listen([topic])
    assert server.priorities == ["info", "error"]
    assert notifier.info({}, "thing.created", {"id": 1})
    assert notifier.error({}, "thing.failed", {"id": 2})
    got = collector.wait_for(2)
    assert sorted((p, e, pl) for p, _, e, pl, _, _ in got) == [
        ("error", "thing.failed", {"id": 2}), ("info", "thing.created", {"id": 1})]
    _, publisher_id, _, _, ctxt, metadata = got[0]
    assert publisher_id == "svc.host1"
    assert ctxt == {}  # a dict context is not sent, as with oslo.messaging
    assert set(metadata) == {"message_id", "timestamp"}


def test_priorities_nobody_handles_are_not_subscribed(listen, notifier, topic, broker):
    listen([topic])
    assert notifier.warn({}, "thing.warned", {})
    assert f"{topic}.warn" in broker.queues  # kept for a future listener
    assert broker.queues[f"{topic}.warn"].qsize() == 1


def test_notifications_sent_before_the_listener_started_are_kept(listen, notifier, topic):
    assert notifier.info({}, "early", {"n": 0})
    collector, _ = listen([topic])
    assert collector.wait_for(1)[0][2] == "early"


def test_pools_share_work_and_each_pool_sees_everything(listen, notifier, topic):
    a, _ = listen([topic], pool="pool-a")
    b, _ = listen([topic], pool="pool-a")
    c, _ = listen([topic], pool="pool-c")
    for i in range(6):
        notifier.info({}, "n", {"i": i})
    assert len(c.wait_for(6)) == 6
    deadline = time.monotonic() + 2
    while len(a.got) + len(b.got) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(g[3]["i"] for g in a.got + b.got) == list(range(6))


def test_requeue_only_when_allowed(listen, notifier, topic):
    requeuing = Collector(outcome=REQUEUE)
    listen([topic], endpoint=requeuing, allow_requeue=True)
    notifier.info({}, "again", {})
    assert len(requeuing.wait_for(3)) >= 3  # redelivered while it asks for it


def test_a_failing_handler_acknowledges_unless_requeue_is_allowed(listen, notifier, topic, broker):
    failing = Collector(fail=True)
    listen([topic], endpoint=failing)
    notifier.info({}, "bad", {})
    notifier.info({}, "next", {})
    got = failing.wait_for(2)
    assert [g[2] for g in got] == ["bad", "next"]  # not redelivered


def test_context_objects_travel_redacted(listen, notifier, topic):
    class Ctx:
        def redacted_copy(self):
            return self

        def to_dict(self):
            return {"user": "u", "auth_token": "***"}

    collector, _ = listen([topic])
    notifier.info(Ctx(), "with.context", {})
    assert collector.wait_for(1)[0][4] == {"user": "u", "auth_token": "***"}


def test_context_objects_that_cannot_be_redacted_are_dropped(listen, notifier, topic, caplog):
    class Ctx:
        def to_dict(self):
            return {"auth_token": "secret"}

    collector, _ = listen([topic])
    notifier.info(Ctx(), "no.redaction", {})
    assert collector.wait_for(1)[0][4] == {}
    assert "redacted_copy" in caplog.text


def test_a_notifier_never_raises_when_the_bus_is_down(broker, caplog):
    settings = from_url(FAKE_URL, rabbit_retry_interval=0.2)
    clock = FakeClock()
    broker.down_hosts = {"h1:1"}
    notifier = Notifier(settings, "svc", topics=["a", "b"], timeout=1, clock=clock,
                        connection_factory=fake_factory(settings, broker, clock))
    assert notifier.info({}, "lost", {}) is False
    assert caplog.text.count("could not send notification lost") == 2
    assert notifier.notify({}, "bad", {"x": object()}, "info") is False
    notifier.close()


def test_prepare_and_aliases(notifier):
    other = notifier.prepare(publisher_id="svc.host2")
    assert other.publisher_id == "svc.host2" and notifier.publisher_id == "svc.host1"
    assert other.transport is notifier.transport
    assert Notifier.warning is Notifier.warn
    with pytest.raises(ValueError):
        notifier.notify({}, "e", {}, "loud")


def test_a_server_needs_topics_and_priority_methods(settings):
    with pytest.raises(ValueError, match="priority"):
        NotificationServer(settings, ["t"], [object()])
    with pytest.raises(ValueError, match="topic"):
        NotificationServer(settings, [], [Collector()])

"""Sending a call's request again when its fate is uncertain (fake publisher, fake clock)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.rpc import envelope
from rabbit_ha_driver.rpc.calls import MAX_UNCERTAIN_RESENDS, CallSender, ResendRule
from rabbit_ha_driver.rpc.envelope import ExchangeSpec
from rabbit_ha_driver.rpc.replies import ReplyWaiters

#: Real seconds a test waits for the waiting thread to act on a wake-up.
STEP = 5.0


class FakePublisher:
    """Records publishes; each one's fate is settled when the test says so."""

    def __init__(self, fates=()):
        self.fates = list(fates)
        self.bodies: list[bytes] = []
        self.deadlines: list[float] = []
        self.unsettled: list[tuple[object, object]] = []
        self.published = threading.Condition()

    def publish_async(self, body, exchange, key, *, deadline, what, on_settled, **options):
        fate = self.fates.pop(0) if self.fates else "acked"
        receipt = SimpleNamespace(what=what, error=None, sent=fate == "acked")
        if fate == "lost":
            receipt.error = exc.ConnectionLost(
                f"{what}: connection lost after the message was written and before the "
                "broker confirmed it", operation="basic.publish")
        with self.published:
            self.bodies.append(body)
            self.deadlines.append(deadline)
            self.unsettled.append((receipt, on_settled))
            self.published.notify_all()
        return receipt

    def settle(self):
        """Read the confirms: every unsettled publish learns its fate."""
        with self.published:
            batch, self.unsettled = self.unsettled, []
        for receipt, callback in batch:
            callback(receipt)

    def wait_for(self, count):
        with self.published:
            assert self.published.wait_for(lambda: len(self.bodies) >= count, STEP), (
                f"{len(self.bodies)} publishes, expected {count}")

    def where(self):
        return ("test:publish", "h1:1")


@pytest.fixture
def waiters(clock):
    return ReplyWaiters(clock)


def sender_for(waiters, clock, publisher, timeout=3.0, after=1.0, events=None, msg_id="m1"):
    call = waiters.register(msg_id, timeout, what="the reply to call 'echo'")
    return CallSender(publisher, waiters, call, b"request", ExchangeSpec("openstack"), "topic",
                      what="call 'echo' to topic", rule=ResendRule(after), clock=clock,
                      events=events)


def wait_in_thread(sender):
    outcome = {}

    def run():
        try:
            outcome["result"] = sender.wait()
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def reply(msg_id, result):
    return envelope.Reply(msg_id, result, None, True, envelope.new_id())


# -- the rule ------------------------------------------------------------------


def test_the_grace_is_the_option_but_at_most_half_the_time_left():
    rule = ResendRule(1.0)
    assert rule.resend_at(100.0, 103.0, 0) == 101.0
    assert rule.resend_at(100.0, 101.0, 0) == 100.5  # late in the call: half of what is left
    assert rule.resend_at(100.0, 100.0, 0) is None  # nothing left
    assert rule.resend_at(100.0, 103.0, MAX_UNCERTAIN_RESENDS) is None
    assert ResendRule(0.0).resend_at(100.0, 103.0, 0) is None
    assert "rpc_resend_uncertain_after is 0" in ResendRule(0.0).why_not(100.0, 103.0, 0)


def test_the_rule_comes_from_the_settings():
    assert ResendRule.of(from_url()).after == 1.0
    assert ResendRule.of(from_url(rpc_resend_uncertain_after=0.25)).after == 0.25


# -- the sender ------------------------------------------------------------------


def test_an_uncertain_request_is_sent_again_after_the_grace_and_answered(waiters, clock):
    publisher = FakePublisher(["lost", "acked"])
    recorder = ev.Recorder()
    bus = ev.EventBus()
    bus.subscribe(recorder)
    sender = sender_for(waiters, clock, publisher, events=bus)
    sender.send()
    thread, outcome = wait_in_thread(sender)
    publisher.settle()  # the connection died before the confirm
    clock.advance(0.9)
    waiters.wake()
    assert len(publisher.bodies) == 1  # not yet: the reply may still come
    clock.advance(0.1)
    waiters.wake()
    publisher.wait_for(2)
    assert publisher.bodies == [b"request", b"request"]  # the same msg_id and _unique_id
    assert publisher.deadlines == [sender.call.deadline] * 2
    waiters.deliver(reply("m1", "pong"))
    thread.join(STEP)
    assert outcome == {"result": "pong"}
    assert sender.resends == 1
    (event,) = recorder.of(ev.RequestResent)
    assert (event.msg_id, event.resend, event.host) == ("m1", 1, "h1:1")


def test_a_reply_within_the_grace_means_no_resend(waiters, clock):
    publisher = FakePublisher(["lost"])
    sender = sender_for(waiters, clock, publisher)
    sender.send()
    thread, outcome = wait_in_thread(sender)
    publisher.settle()
    clock.advance(0.5)
    waiters.deliver(reply("m1", "pong"))
    thread.join(STEP)
    assert outcome == {"result": "pong"}
    assert len(publisher.bodies) == 1 and sender.resends == 0


def test_a_confirmed_request_is_not_sent_again(waiters, clock):
    publisher = FakePublisher(["acked"])
    sender = sender_for(waiters, clock, publisher)
    sender.send()
    thread, outcome = wait_in_thread(sender)
    publisher.settle()
    clock.advance(3.0)
    waiters.wake()
    thread.join(STEP)
    assert isinstance(outcome.get("error"), exc.MessagingTimeout)
    assert len(publisher.bodies) == 1


def test_resends_are_bounded_and_the_call_ends_at_its_deadline(waiters, clock):
    publisher = FakePublisher(["lost"] * 10)
    sender = sender_for(waiters, clock, publisher, timeout=30.0)
    sender.send()
    thread, outcome = wait_in_thread(sender)
    for count in range(2, MAX_UNCERTAIN_RESENDS + 2):
        publisher.settle()
        clock.advance(1.0)
        waiters.wake()
        publisher.wait_for(count)
    publisher.settle()  # the last copy is lost too: no more re-sends
    clock.advance(30.0)
    waiters.wake()
    thread.join(STEP)
    assert isinstance(outcome.get("error"), exc.MessagingTimeout)
    assert len(publisher.bodies) == MAX_UNCERTAIN_RESENDS + 1
    assert sender.resends == MAX_UNCERTAIN_RESENDS


def test_a_request_uncertain_late_in_the_call_is_sent_again_within_its_deadline(waiters, clock):
    publisher = FakePublisher(["lost", "acked"])
    sender = sender_for(waiters, clock, publisher, timeout=3.0)
    sender.send()
    thread, outcome = wait_in_thread(sender)
    clock.advance(2.6)
    publisher.settle()  # 0.4 s left: the copy goes out after 0.2 s, not 1 s
    clock.advance(0.2)
    waiters.wake()
    publisher.wait_for(2)
    clock.advance(0.2)
    waiters.wake()
    thread.join(STEP)
    assert isinstance(outcome.get("error"), exc.MessagingTimeout)  # never waits past it
    assert len(publisher.bodies) == 2


def test_with_the_option_0_an_uncertain_request_is_only_waited_for(waiters, clock, caplog):
    publisher = FakePublisher(["lost"])
    sender = sender_for(waiters, clock, publisher, after=0.0)
    sender.send()
    thread, outcome = wait_in_thread(sender)
    publisher.settle()
    clock.advance(3.0)
    waiters.wake()
    thread.join(STEP)
    assert isinstance(outcome.get("error"), exc.MessagingTimeout)
    assert len(publisher.bodies) == 1
    assert "not sent again: rpc_resend_uncertain_after is 0" in caplog.text


def test_a_synchronous_send_treats_a_lost_confirm_as_uncertain(waiters, clock):
    class Synchronous(FakePublisher):
        def publish(self, body, exchange, key, **options):
            self.bodies.append(body)
            raise exc.ConnectionLost("lost after the write", operation="basic.publish")

    publisher = Synchronous(["acked"])
    sender = sender_for(waiters, clock, publisher)
    assert sender.send(wait_confirm=True) is True
    assert sender.call.resend_at == clock.now() + 1.0
    thread, outcome = wait_in_thread(sender)
    clock.advance(1.0)
    waiters.wake()
    publisher.wait_for(2)  # the copy goes out written-now, confirmed-later
    waiters.deliver(reply("m1", "pong"))
    thread.join(STEP)
    assert outcome == {"result": "pong"}


def test_metrics_count_resent_and_repeated_requests(clock):
    from rabbit_ha_driver.metrics import Metrics

    metrics = Metrics(clock)
    bus = ev.EventBus()
    metrics.attach(bus)
    bus.emit(ev.RequestResent("c:publish", "h1:1", "m1", 1))
    bus.emit(ev.DuplicateRequest("s:listen", "m1", True))
    bus.emit(ev.DuplicateRequest("s:listen", "m2", False))
    snapshot = metrics.snapshot()["connections"]
    assert snapshot["c:publish"]["requests_resent"] == 1
    assert snapshot["s:listen"]["duplicate_requests_answered"] == 1
    assert snapshot["s:listen"]["duplicate_requests_dropped"] == 1

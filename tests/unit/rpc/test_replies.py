"""Reply waiters: matching by message id, duplicates, heartbeats, deadlines (fake clock)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from rabbit_ha_driver.exceptions import InvalidMessage, MessagingTimeout, RemoteError
from rabbit_ha_driver.rpc import envelope
from rabbit_ha_driver.rpc.replies import Outcome, ReplyWaiters, handle_reply_message


@pytest.fixture
def waiters(clock):
    return ReplyWaiters(clock)


def reply(msg_id, result=None, failure=None, ending=True, unique_id=None):
    return envelope.Reply(msg_id, result, failure, ending, unique_id or envelope.new_id())


def wait_in_thread(waiters, call):
    outcome = {}

    def run():
        try:
            outcome["result"] = waiters.wait(call)
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_result_is_delivered_to_its_waiter(waiters):
    call = waiters.register("m1", 10)
    other = waiters.register("m2", 10)
    assert waiters.deliver(reply("m1", {"v": 1})) is Outcome.RESULT
    assert waiters.wait(call) == {"v": 1}
    assert not other.done
    assert len(waiters) == 2


def test_failure_is_raised(waiters):
    call = waiters.register("m1", 10)
    waiters.deliver(reply("m1", failure=RemoteError("ValueError", "bad")))
    with pytest.raises(RemoteError, match="bad"):
        waiters.wait(call)


def test_duplicate_unique_id_is_dropped(waiters):
    call = waiters.register("m1", 10)
    first = reply("m1", 1, unique_id="u1")
    waiters.register("m2", 10)
    assert waiters.deliver(first) is Outcome.RESULT
    assert waiters.deliver(envelope.Reply("m2", 2, None, True, "u1")) is Outcome.DUPLICATE
    assert waiters.wait(call) == 1


def test_late_and_unknown_replies_are_dropped(waiters):
    call = waiters.register("m1", 10)
    waiters.deliver(reply("m1", 1))
    waiters.wait(call)
    waiters.discard("m1")
    assert waiters.deliver(reply("m1", 2)) is Outcome.DUPLICATE
    assert waiters.deliver(reply("never-asked", 3)) is Outcome.UNKNOWN
    assert len(waiters) == 0


def test_a_second_reply_does_not_replace_the_first(waiters):
    call = waiters.register("m1", 10)
    waiters.deliver(reply("m1", "first"))
    assert waiters.deliver(reply("m1", "second")) is Outcome.DUPLICATE
    assert waiters.wait(call) == "first"


def test_two_part_reply_of_older_servers(waiters):
    call = waiters.register("m1", 10)
    assert waiters.deliver(reply("m1", "payload", ending=False)) is Outcome.PARTIAL
    assert not call.done
    assert waiters.deliver(reply("m1", None, ending=True)) is Outcome.RESULT
    assert waiters.wait(call) == "payload"


def test_timeout_says_what_it_waited_for(waiters, clock):
    call = waiters.register("m1", 5, what="the reply to call 'echo' to t")
    clock.advance(5)
    with pytest.raises(MessagingTimeout, match=r"after 5.0s waiting for the reply to call 'echo' "
                                               r"to t \(msg_id m1\)") as info:
        waiters.wait(call)
    assert info.value.waited == pytest.approx(5)


def test_waiter_wakes_when_the_reply_arrives(waiters):
    call = waiters.register("m1", 30)
    thread, outcome = wait_in_thread(waiters, call)
    waiters.deliver(reply("m1", "done"))
    thread.join(2)
    assert outcome == {"result": "done"}


def test_waiter_times_out_when_the_clock_passes_the_deadline(waiters, clock):
    call = waiters.register("m1", 30)
    thread, outcome = wait_in_thread(waiters, call)
    clock.advance(31)
    waiters.wake()
    thread.join(2)
    assert isinstance(outcome.get("error"), MessagingTimeout)


def test_heartbeats_extend_the_monitor_deadline_not_the_call_deadline(waiters, clock):
    call = waiters.register("m1", 10, call_monitor_timeout=2)
    clock.advance(1.5)
    assert waiters.deliver(reply("m1", ending=False)) is Outcome.HEARTBEAT
    assert call.expires_at() == pytest.approx(clock.now() + 2)
    for _ in range(5):
        clock.advance(1.5)
        waiters.deliver(reply("m1", ending=False))
    assert call.heartbeats == 6
    assert call.expires_at() == pytest.approx(call.deadline)  # capped by the call deadline
    clock.advance(10)
    with pytest.raises(MessagingTimeout, match="waiting for"):
        waiters.wait(call)


def test_missing_heartbeat_fails_the_call_early(waiters, clock):
    call = waiters.register("m1", 60, call_monitor_timeout=2, what="the reply to slow")
    clock.advance(2.5)
    with pytest.raises(MessagingTimeout, match="no call-monitor heartbeat within 2s"):
        waiters.wait(call)


def test_fail_ends_one_call_and_fail_all_ends_every_call(waiters):
    one, two = waiters.register("m1", 10), waiters.register("m2", 10)
    assert waiters.fail("m1", InvalidMessage("refused"))
    assert not waiters.fail("nope", InvalidMessage("x"))
    with pytest.raises(InvalidMessage):
        waiters.wait(one)
    waiters.fail_all(RuntimeError("closing"))
    with pytest.raises(RuntimeError):
        waiters.wait(two)


def raw(body, content_type="application/json", headers=None):
    return SimpleNamespace(body=body, content_type=content_type, content_encoding="utf-8",
                           headers=headers or {})


def test_reply_messages_are_decoded_and_delivered(waiters):
    call = waiters.register("m1", 10)
    body = envelope.encode(envelope.build_reply("m1", [1, 2]), 1 << 20)
    assert handle_reply_message(waiters, raw(body), 1 << 20) is Outcome.RESULT
    assert waiters.wait(call) == [1, 2]


def test_undecodable_replies_are_dropped(waiters):
    waiters.register("m1", 10)
    assert handle_reply_message(waiters, raw(b"\x80\x04K\x01.", "application/x-python-serialize"),
                                1 << 20) is None
    assert handle_reply_message(waiters, raw(b"{}"), 1 << 20) is None


def test_an_oversized_reply_fails_its_call_at_once(waiters):
    call = waiters.register("m1", 10)
    body = envelope.encode(envelope.build_reply("m1", "x" * 5000), 1 << 20)
    assert handle_reply_message(waiters, raw(body), 2048) is None
    with pytest.raises(InvalidMessage, match=r"reply was refused.*over the limit"):
        waiters.wait(call)

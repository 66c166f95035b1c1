"""Repeated requests: answered from the reply cache, dropped while running; the cast window."""

# The listener fixtures of test_listener are imported and used as arguments.
# ruff: noqa: F811

from __future__ import annotations

import logging
import threading
import time

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.rpc import RPCServer, envelope
from rabbit_ha_driver.rpc.listener import DUPLICATE_WINDOW, rpc_listener
from rabbit_ha_driver.rpc.recent import Recent
from rabbit_ha_driver.rpc.reply_cache import RUNNING, ReplyCache

from .conftest import fake_factory
from .test_listener import listen_conn, make_rpc_listener, poll_until, publisher, request, send  # noqa: F401 (fixtures)  # noqa: F401


def poll_briefly(listener):
    """What the listener hands out within a moment (a copy arrives in milliseconds)."""
    got = []
    for _ in range(5):
        got += listener.poll(timeout=0.05, batch_size=10)
    return got


# -- the helpers -----------------------------------------------------------------


def test_recent_keeps_the_newest_keys_up_to_its_size():
    recent: Recent[int] = Recent(3)
    for n, key in enumerate("abcd"):
        recent.add(key, n)
    assert [k for k in "abcd" if k in recent] == ["b", "c", "d"]
    recent.add("b", 9)  # added again: newest now
    recent.add("e")
    assert [k for k in "bcde" if k in recent] == ["b", "d", "e"]
    assert recent.get("b") == 9 and len(recent) == 3


def test_recent_forgets_keys_older_than_its_ttl():
    recent: Recent[str] = Recent(10, ttl=5.0)
    recent.add("a", "x", now=100.0)
    assert recent.get("a", now=105.0) == "x"
    assert recent.get("a", now=105.1) is None
    assert len(recent) == 0


def test_reply_cache_marks_running_then_keeps_the_reply_for_its_ttl(clock):
    cache = ReplyCache(2, 60.0, clock)
    assert cache.seen("m1") is None
    cache.running("m1")
    assert cache.seen("m1") is RUNNING
    cache.replied("m1", b"reply")
    assert cache.seen("m1") == b"reply"
    clock.advance(61)
    assert cache.seen("m1") is None
    assert not ReplyCache(0, 60.0, clock).enabled


# -- the listener -----------------------------------------------------------------


@pytest.fixture
def replies(settings, broker):
    conn = fake_factory(settings, broker)("replies")
    conn.declare_queue("reply_test")
    conn.declare_queue("reply_old")  # nobody reads it: a reply sent there is lost
    got = []
    conn.consume("reply_test", got.append, no_ack=True)

    def read(count):
        deadline = time.monotonic() + 2
        while len(got) < count and time.monotonic() < deadline:
            conn.drain_events(0.05)
        return [envelope.parse_reply(envelope.decode(
            m.body, content_type=m.content_type, content_encoding=m.content_encoding,
            headers=m.headers, max_size=1 << 20)) for m in got]

    yield read
    conn.close()


def test_a_repeated_call_is_answered_from_the_cache_without_running(
        make_rpc_listener, publisher, replies, topic, caplog):
    listener = make_rpc_listener()
    recorder = ev.Recorder()
    listener.events.subscribe(recorder)
    caplog.set_level(logging.INFO, logger="rabbit_ha_driver.rpc.listener")
    # The first copy's reply is lost (nobody reads reply_old, as with a reply
    # lost with its node); the copy sent again is answered from the cache.
    first = request("echo", msg_id="m1", reply_q="reply_old", unique_id="u1")
    send(publisher, topic, first)
    (incoming,) = poll_until(listener, 1)
    incoming.reply({"answer": 42})
    again = request("echo", msg_id="m1", reply_q="reply_test", unique_id="u1")
    send(publisher, topic, again)
    assert poll_briefly(listener) == []  # not handed out: it does not run again
    (answer,) = replies(1)
    assert (answer.msg_id, answer.result) == ("m1", {"answer": 42})
    assert [(e.msg_id, e.answered) for e in recorder.of(ev.DuplicateRequest)] == [("m1", True)]
    assert "arrived again after it ran; answering the copy from the reply cache" in caplog.text
    assert "m1" in caplog.text


def test_a_repeated_call_still_running_is_dropped(make_rpc_listener, publisher, replies,
                                                  topic):
    listener = make_rpc_listener()
    recorder = ev.Recorder()
    listener.events.subscribe(recorder)
    copy = request("echo", msg_id="m1", reply_q="reply_test", unique_id="u1")
    send(publisher, topic, copy)
    (incoming,) = poll_until(listener, 1)
    send(publisher, topic, copy)  # arrives while the first copy runs
    assert poll_briefly(listener) == []
    incoming.reply("done")
    assert [(r.msg_id, r.result) for r in replies(1)] == [("m1", "done")]
    assert [(e.msg_id, e.answered) for e in recorder.of(ev.DuplicateRequest)] == [("m1", False)]


def test_a_failure_is_cached_like_a_result(make_rpc_listener, publisher, replies,
                                           topic):
    listener = make_rpc_listener()
    send(publisher, topic, request("boom", msg_id="m1", reply_q="reply_old"))
    (incoming,) = poll_until(listener, 1)
    incoming.reply(failure=ValueError("no"))
    send(publisher, topic, request("boom", msg_id="m1", reply_q="reply_test"))
    assert poll_briefly(listener) == []
    (answer,) = replies(1)
    assert answer.failure is not None and answer.failure.exc_type.endswith("ValueError")


def test_without_the_cache_a_repeated_call_is_dropped_by_its_unique_id(
        settings, listen_conn, publisher, topic):
    listener = rpc_listener(settings.replace(rpc_reply_cache_size=0), topic, "s1",
                            connection=listen_conn, publisher=publisher)
    assert listener.subscribe(time.monotonic() + 2)
    assert not listener.reply_cache.enabled
    copy = request("echo", msg_id="m1", reply_q="reply_test", unique_id="u1")
    send(publisher, topic, copy)
    assert len(poll_until(listener, 1)) == 1
    send(publisher, topic, copy)
    assert poll_briefly(listener) == []
    listener.cleanup()


# -- end to end: a server runs a repeated call once -------------------------------


class Counting:
    def __init__(self):
        self.runs = 0
        self.lock = threading.Lock()

    def echo(self, ctxt, value):
        with self.lock:
            self.runs += 1
        return value


def test_a_server_runs_a_repeated_call_once_and_answers_both(settings, broker, topic):
    endpoint = Counting()
    server = RPCServer(settings, topic, "s1", [endpoint],
                       connection_factory=fake_factory(settings, broker))
    server.start()
    try:
        conn = fake_factory(settings, broker)("raw")
        conn.declare_queue("reply_test")
        got = []
        conn.consume("reply_test", got.append, no_ack=True)
        body = envelope.encode(request("echo", msg_id="m1", reply_q="reply_test",
                                       unique_id="u1") | {"args": {"value": 7}}, 1 << 20)
        for _ in range(2):
            conn.publish(body, "openstack", topic, properties={
                "content_type": "application/json", "content_encoding": "utf-8"})
        deadline = time.monotonic() + 3
        while len(got) < 2 and time.monotonic() < deadline:
            conn.drain_events(0.05)
        conn.close()
    finally:
        server.stop()
        server.wait(2)
    assert endpoint.runs == 1
    results = [envelope.parse_reply(envelope.decode(
        m.body, content_type=m.content_type, content_encoding=m.content_encoding,
        headers=m.headers, max_size=1 << 20)).result for m in got]
    # Two replies if the copy came after the reply was cached, one if it came
    # while the call ran (dropped: the first reply answers it).
    assert results in ([7], [7, 7])


# -- casts: at-least-once beyond the window -----------------------------------------


def test_cast_duplicates_are_dropped_within_the_window_only(make_rpc_listener, publisher,
                                                            topic):
    listener = make_rpc_listener()
    send(publisher, topic, request("record", unique_id="cast-1"))
    send(publisher, topic, request("record", unique_id="cast-1"))
    assert [m.unique_id for m in poll_until(listener, 1)] == ["cast-1"]
    assert poll_briefly(listener) == []  # the copy is dropped
    for n in range(DUPLICATE_WINDOW):  # push it out of the window
        listener._seen.add(f"other-{n}")
    send(publisher, topic, request("record", unique_id="cast-1"))
    assert [m.unique_id for m in poll_until(listener, 1)] == ["cast-1"]  # runs again


def test_a_call_still_running_is_not_forgotten_when_other_calls_finish(
        settings, listen_conn, publisher, replies, topic):
    """Contract: a call whose request is sent again (same msg_id) runs at most once.

    The mark of a call that is still running sits in the same bounded LRU as
    the cached replies, so ``rpc_reply_cache_size`` calls that finish while a
    slow one runs (1,024 by default: 34 calls a second during a 30 s call)
    push the mark out, and the copy of the slow call that arrives then is
    handed out and runs a second time, concurrently with the first."""
    listener = rpc_listener(settings.replace(rpc_reply_cache_size=2), topic, "s1",
                            connection=listen_conn, publisher=publisher)
    assert listener.subscribe(time.monotonic() + 2)
    try:
        slow = request("slow", msg_id="m-slow", reply_q="reply_old", unique_id="u-slow")
        send(publisher, topic, slow)
        (running,) = poll_until(listener, 1)
        for n in range(2):  # quick calls that run and reply while the slow one runs
            send(publisher, topic, request("quick", msg_id=f"m{n}", reply_q="reply_old",
                                           unique_id=f"u{n}"))
            (quick,) = poll_until(listener, 1)
            quick.reply(n)
        send(publisher, topic, slow)  # the caller's copy, sent again after an uncertain publish
        assert poll_briefly(listener) == [], "the copy of a call still running was handed out again"
        running.reply("done")
    finally:
        listener.cleanup()

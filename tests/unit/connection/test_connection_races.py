"""Cancelled consumers restored one at a time, and close() racing the owner's tear-down."""

from __future__ import annotations

import contextlib
import threading

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.testing import precondition_failed

from .conftest import URL, make_connection


def consumer(conn, queue, exchange="x"):
    got = []
    conn.declare_exchange(exchange)
    conn.declare_queue(queue)
    conn.bind(queue, exchange, queue)
    conn.consume(queue, lambda m: (got.append(m.body), conn.ack(m)))
    return got


def test_a_refused_restore_keeps_the_other_due_cancels(broker, clock, recorder):
    """Two consumers cancelled together; the first one's re-declare is refused
    (406). The second one must still be consumed again on a later turn."""
    conn = make_connection(broker, clock, recorder, URL, kombu_reconnect_delay=0.5,
                           consumer_check_interval=0)
    consumer(conn, "q1")
    got2 = consumer(conn, "q2")
    assert broker.cancel_consumers("q1") == 1
    assert broker.cancel_consumers("q2") == 1
    conn.drain_events(0)
    clock.advance(0.5)
    broker.fail_next("queue.declare", precondition_failed())
    with pytest.raises(exc.IrrecoverableError):
        conn.drain_events(0)  # q1's refusal reaches the reader, as before
    for _ in range(3):
        with contextlib.suppress(exc.IrrecoverableError):
            conn.drain_events(0)
    restored = [e.queue for e in recorder.of(ev.ConsumerRestored)]
    assert "q2" in restored, f"q2 was never consumed again: restored={restored}"
    conn.publish(b"to-q2", "x", "q2")
    conn.drain_events(0)
    assert got2 == [b"to-q2"]


def test_close_while_another_thread_tears_the_link_down(broker, clock, recorder):
    """close() from a second thread while the owner holds the connection (a
    reconnect that tears down its link). The owner's _teardown() runs between
    close()'s check of the link and its use: simulated deterministically by an
    attribute that is set when first read and None afterwards (what a
    concurrent ``self._link = None`` does). close() must not raise."""
    conn = make_connection(broker, clock, recorder)
    conn.connect()
    conn.CLOSE_WAIT = 0.05
    held = threading.Event()
    release = threading.Event()

    def owner():
        with conn._lock:
            held.set()
            release.wait(5)

    t = threading.Thread(target=owner)
    t.start()
    held.wait(5)
    name = "_link"
    value = vars(conn).pop(name)
    reads = []

    def get(self):
        reads.append(1)
        return value if len(reads) == 1 else None  # torn down by the owner after the first read

    def set_(self, v):
        pass

    cls = type(conn)
    conn.__class__ = type("Racing", (cls,), {name: property(get, set_)})
    try:
        conn.close()  # must not raise
    finally:
        release.set()
        t.join(5)
        conn.__class__ = cls
        vars(conn)[name] = None

"""Receipts of messages written now and confirmed later (Publisher.publish_async, cast_async).

Most tests drive a :class:`ScriptedConnection`, whose confirms say what the
test wants; the last ones run on the in-memory broker end to end.
"""

from __future__ import annotations

import logging
import threading

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection._confirms import Outcome, Pending
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.rpc import RPCClient, RPCServer, RPCTransport, client
from rabbit_ha_driver.rpc.envelope import ExchangeSpec
from rabbit_ha_driver.rpc.publisher import Publisher
from rabbit_ha_driver.rpc.receipts import Receipt

from .conftest import FAKE_URL, fake_factory

EXCHANGE = ExchangeSpec("openstack", "topic")


class ScriptedConnection:
    """A publishing connection whose broker answers as the test says.

    ``fates`` maps a written message's number (1, 2, ...) to what its
    confirm brings when the connection is read (ACKED if not given);
    ``acked_at_once`` settles every message as it is written, as a transport
    without confirms does. ``resend_errors`` are raised, one per call, by the
    synchronous :meth:`publish` (the resend path).
    """

    name = "scripted:publish"
    host = None

    def __init__(self, fates: dict[int, Outcome] | None = None, *,
                 acked_at_once: bool = False,
                 returned_at_once: bool = False,
                 resend_errors: list[BaseException] | None = None) -> None:
        self.fates = dict(fates or {})
        self.acked_at_once = acked_at_once
        self.returned_at_once = returned_at_once
        self.resend_errors = list(resend_errors or [])
        self.nowait_errors: list[BaseException] = []
        self.confirm_timeouts: set[int] = set()
        self.written: list[Pending] = []
        self.reads: list[int] = []
        self.read_until: list[float] = []
        self.resent: list[dict] = []
        self.declared: list[str] = []
        self.closed = 0
        self.events = ev.EventBus()
        self.recorder = ev.Recorder()
        self.events.subscribe(self.recorder)
        self.read_twice = threading.Event()
        #: When set, the resend path waits here until it is opened (a resend
        #: that takes long: no queue bound yet).
        self.resend_gate: threading.Event | None = None
        self.resending = threading.Event()

    def declare_exchange(self, name, type_, **kwargs):
        self.declared.append(name)

    def declare_queue(self, name, **kwargs):
        self.declared.append(name)

    def bind(self, queue, exchange, routing_key, **kwargs):
        pass

    def publish_nowait(self, body, exchange, routing_key, *, properties=None, deadline=None,
                       **kwargs) -> Pending:
        if self.nowait_errors:
            raise self.nowait_errors.pop(0)
        pending = Pending(len(self.written) + 1, None)
        if self.acked_at_once:
            pending.outcome = Outcome.ACKED
        elif self.returned_at_once:
            # The return and its confirm were read right after the write.
            pending.outcome = Outcome.RETURNED
        self.written.append(pending)
        return pending

    def wait_confirm(self, pending: Pending, deadline=None) -> None:
        if pending.done:
            return  # like the real connection: nothing to read
        self.reads.append(pending.seq)
        self.read_until.append(deadline.at)
        if len(self.reads) >= 2:
            self.read_twice.set()
        if pending.seq in self.confirm_timeouts:
            raise exc.MessagingTimeout("the broker did not confirm the message before the deadline",
                                       waited=0.0)
        pending.outcome = self.fates.get(pending.seq, Outcome.ACKED)

    def publish(self, body, exchange, routing_key, **kwargs) -> None:
        self.resent.append({"body": body, "exchange": exchange, "routing_key": routing_key,
                            **kwargs})
        if self.resend_gate is not None:
            self.resending.set()
            assert self.resend_gate.wait(10), "the test never opened the resend gate"
        if self.resend_errors:
            raise self.resend_errors.pop(0)

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def closing():
    """Closes the publishers a test made and checks their keeper threads ended."""
    made: list[Publisher] = []
    yield made.append
    for publisher in made:
        publisher.close()
        keeper = publisher._keeper
        if keeper is not None:
            keeper.join(5)
            assert not keeper.is_alive(), "the keeper thread outlived its publisher"


@pytest.fixture
def publisher_for(settings, clock, closing):
    def make(conn: ScriptedConnection) -> Publisher:
        publisher = Publisher(settings, lambda purpose: conn, clock=clock)
        closing(publisher)
        return publisher

    return make


def write(publisher: Publisher, clock, body=b"{}", **options) -> Receipt:
    options.setdefault("deadline", clock.now() + 30)
    options.setdefault("what", "cast 'm' to t")
    return publisher.publish_async(body, EXCHANGE, "k", **options)


# -- one receipt -------------------------------------------------------------------


def test_an_acked_message_is_reported_sent_without_sending_it_again(publisher_for, clock):
    conn = ScriptedConnection()
    publisher = publisher_for(conn)
    receipt = write(publisher, clock)
    assert conn.declared == ["openstack"]
    assert len(conn.written) == 1
    assert receipt.result() is True
    assert conn.reads == [1]
    assert conn.resent == []
    assert receipt.settled_ok()
    assert receipt.error is None
    assert "sent" in repr(receipt)


def test_settled_ok_sees_a_confirm_read_by_someone_else_without_reading(publisher_for, clock):
    conn = ScriptedConnection()
    publisher = publisher_for(conn)
    receipt = write(publisher, clock)
    assert not receipt.settled_ok()
    conn.written[0].outcome = Outcome.ACKED  # another publish's wait read the confirm
    assert receipt.settled_ok()
    assert conn.reads == []
    assert receipt.result() is True
    assert conn.reads == [] and conn.resent == []


def test_settled_ok_is_false_for_a_returned_message_until_it_is_resent(publisher_for, clock):
    conn = ScriptedConnection()
    publisher = publisher_for(conn)
    receipt = write(publisher, clock)
    conn.written[0].outcome = Outcome.RETURNED
    assert not receipt.settled_ok()
    assert receipt.result() is True
    assert receipt.settled_ok()
    assert len(conn.resent) == 1


def test_result_twice_reads_the_confirm_once(publisher_for, clock):
    conn = ScriptedConnection()
    receipt = write(publisher_for(conn), clock)
    assert receipt.result() is True
    assert receipt.result() is True
    assert conn.reads == [1]


@pytest.mark.parametrize("fate", [Outcome.RETURNED, Outcome.NACKED])
def test_a_message_the_broker_did_not_take_is_sent_again_by_publish(publisher_for, clock, fate):
    conn = ScriptedConnection({1: fate})
    receipt = write(publisher_for(conn), clock, body=b'{"n": 1}', persistent=True)
    assert receipt.result() is True
    assert conn.reads == [1]
    assert len(conn.resent) == 1
    resent = conn.resent[0]
    assert (resent["body"], resent["exchange"], resent["routing_key"]) == (
        b'{"n": 1}', "openstack", "k")
    assert resent["mandatory"] is True
    assert resent["properties"]["delivery_mode"] == 2  # the resend keeps the options


def test_the_result_of_a_resend_is_publishs_own(publisher_for, clock):
    # Returned, then unroutable on every resend: a fanout's grace runs out
    # and publish() returns False, which becomes the receipt's result.
    conn = ScriptedConnection({1: Outcome.RETURNED},
                              resend_errors=[exc.Unroutable("no queue")] * 100)
    receipt = write(publisher_for(conn), clock, retry_unroutable=1.0)
    start = clock.now()
    assert receipt.result() is False
    assert clock.now() - start == pytest.approx(1.0)
    assert len(conn.resent) >= 2
    assert len(conn.recorder.of(ev.UnroutableRetry)) == len(conn.resent)
    assert not receipt.settled_ok()
    assert receipt.result() is False  # settled: not sent again
    assert len(conn.resent) == len(conn.recorder.of(ev.UnroutableRetry))


def test_a_message_returned_while_it_was_written_is_not_resent_in_the_writers_thread(
        publisher_for, clock):
    """The return came with the write (a topic nobody serves yet): publish_async
    returns at once and leaves the resends to the receipt, instead of making
    its caller wait up to the deadline (a cast_async before the server starts)."""
    conn = ScriptedConnection(returned_at_once=True,
                              resend_errors=[exc.Unroutable("no queue")] * 3)
    start = clock.now()
    receipt = write(publisher_for(conn), clock)
    assert clock.now() == start and conn.resent == []
    assert receipt.result() is True  # sent again until a queue took it
    assert len(conn.resent) == 4


def test_a_lost_confirm_is_not_sent_again_unless_asked(publisher_for, clock):
    conn = ScriptedConnection({1: Outcome.LOST})
    receipt = write(publisher_for(conn), clock, what="cast 'm' to t")
    with pytest.raises(exc.ConnectionLost, match="cast 'm' to t: connection lost after the "
                                                 "message was written") as info:
        receipt.result()
    assert conn.resent == []
    assert receipt.error is info.value
    assert not receipt.settled_ok()
    assert "failed" in repr(receipt)


def test_a_lost_confirm_is_sent_again_when_at_least_once_is_asked(publisher_for, clock):
    conn = ScriptedConnection({1: Outcome.LOST})
    receipt = write(publisher_for(conn), clock, retry_uncertain=True)
    assert receipt.result() is True
    assert len(conn.resent) == 1
    assert conn.resent[0]["retry_uncertain"] is True


def test_a_failure_is_raised_again_by_every_result(publisher_for, clock):
    refused = exc.IrrecoverableError("ACCESS_REFUSED", reply_code=403)
    conn = ScriptedConnection({1: Outcome.NACKED}, resend_errors=[refused])
    receipt = write(publisher_for(conn), clock)
    with pytest.raises(exc.IrrecoverableError) as first:
        receipt.result()
    with pytest.raises(exc.IrrecoverableError) as second:
        receipt.result()
    assert first.value is second.value is refused is receipt.error
    assert len(conn.resent) == 1  # the second result() did not send it again


def test_a_confirm_that_does_not_come_in_time_is_not_sent_again(publisher_for, clock):
    conn = ScriptedConnection()
    conn.confirm_timeouts.add(1)
    receipt = write(publisher_for(conn), clock)
    with pytest.raises(exc.MessagingTimeout):
        receipt.result()
    assert conn.resent == []


def test_result_waits_no_longer_than_its_timeout_or_the_deadline(publisher_for, clock):
    conn = ScriptedConnection()
    publisher = publisher_for(conn)
    now = clock.now()
    short = write(publisher, clock, deadline=now + 30)
    long = write(publisher, clock, deadline=now + 30)
    beyond = write(publisher, clock, deadline=now + 30)
    short.result(timeout=2)
    long.result()
    beyond.result(timeout=60)
    assert conn.read_until == [now + 2, now + 30, now + 30]


def test_a_resend_is_bounded_by_the_timeout_given_to_result(publisher_for, clock):
    conn = ScriptedConnection({1: Outcome.RETURNED},
                              resend_errors=[exc.Unroutable("no queue")] * 1000)
    receipt = write(publisher_for(conn), clock, deadline=clock.now() + 60)
    start = clock.now()
    with pytest.raises(exc.MessagingTimeout, match="no queue took it"):
        receipt.result(timeout=2)
    assert clock.now() - start == pytest.approx(2)


def test_a_resend_keeps_the_expiration_of_the_messages_own_deadline(publisher_for, clock):
    # A message published with ttl expires at its deadline. Settling it
    # with a shorter timeout bounds how long the settling waits, not how
    # long the message may live in its queue.
    conn = ScriptedConnection({1: Outcome.RETURNED})
    receipt = write(publisher_for(conn), clock, deadline=clock.now() + 60, ttl=True)
    assert receipt.result(timeout=2) is True
    assert conn.resent[0]["properties"]["expiration"] == "60000"


def test_on_settled_is_called_once_with_the_settled_receipt(publisher_for, clock):
    conn = ScriptedConnection({1: Outcome.NACKED})
    seen = []
    receipt = write(publisher_for(conn), clock,
                    on_settled=lambda r: seen.append((r, r.sent, r.error)))
    assert not receipt.sent
    assert receipt.result() is True
    assert receipt.result() is True
    assert seen == [(receipt, True, None)]
    assert receipt.sent


def test_on_settled_sees_the_error_and_failures_are_not_logged_twice(publisher_for, clock,
                                                                     caplog):
    conn = ScriptedConnection({1: Outcome.LOST})
    seen = []
    receipt = write(publisher_for(conn), clock, on_settled=lambda r: seen.append(r.error))
    with caplog.at_level(logging.ERROR, logger="rabbit_ha_driver.rpc.client"):
        assert receipt.settle_quietly() is False
    assert len(seen) == 1 and isinstance(seen[0], exc.ConnectionLost)
    assert seen[0] is receipt.error
    assert caplog.records == []  # the callback handles the outcome
    assert not receipt.sent


def test_an_on_settled_that_raises_is_logged_and_the_result_stands(publisher_for, clock, caplog):
    def broken(receipt):
        raise RuntimeError("handler bug")

    conn = ScriptedConnection()
    receipt = write(publisher_for(conn), clock, what="cast 'm' to t", on_settled=broken)
    with caplog.at_level(logging.ERROR, logger="rabbit_ha_driver.rpc.client"):
        assert receipt.result() is True
    assert "cast 'm' to t: handling its outcome failed" in caplog.text


def test_settle_quietly_logs_a_failure_and_returns_false(publisher_for, clock, caplog):
    conn = ScriptedConnection({1: Outcome.LOST, 2: Outcome.ACKED})
    publisher = publisher_for(conn)
    lost, fine = write(publisher, clock, what="cast 'lost' to t"), write(publisher, clock)
    with caplog.at_level(logging.ERROR, logger="rabbit_ha_driver.rpc.client"):
        assert lost.settle_quietly() is False
    assert [r.getMessage() for r in caplog.records] == [
        "cast 'lost' to t: failed after it was written: cast 'lost' to t: connection lost after "
        "the message was written and before the broker confirmed it; not sent again"]
    assert isinstance(lost.error, exc.ConnectionLost)
    with pytest.raises(exc.ConnectionLost):
        lost.result()
    assert fine.settle_quietly() is True


def test_a_message_not_written_at_once_is_sent_by_publish(publisher_for, clock):
    conn = ScriptedConnection()
    conn.nowait_errors.append(exc.Unroutable("no queue takes openstack/k"))
    receipt = write(publisher_for(conn), clock)
    assert receipt.result() is True
    assert conn.written == [] and conn.reads == []
    assert len(conn.resent) == 1


def test_a_message_not_written_at_once_that_cannot_be_sent_raises_at_once(publisher_for, clock):
    refused = exc.IrrecoverableError("ACCESS_REFUSED", reply_code=403)
    conn = ScriptedConnection(resend_errors=[refused])
    conn.nowait_errors.append(exc.ChannelDead("channel closed"))
    publisher = publisher_for(conn)
    with pytest.raises(exc.IrrecoverableError) as info:
        write(publisher, clock)
    assert info.value is refused
    assert len(conn.resent) == 1
    assert publisher.settle_all() == []  # nothing left waiting


def test_an_unexpected_error_while_writing_leaves_the_publisher_usable(publisher_for, clock):
    conn = ScriptedConnection()
    conn.nowait_errors.append(RuntimeError("bug in a serializer"))
    publisher = publisher_for(conn)
    with pytest.raises(RuntimeError):
        write(publisher, clock)
    assert publisher._lock.acquire(blocking=False)  # released on the way out
    publisher._lock.release()
    assert write(publisher, clock).result() is True


# -- many receipts -------------------------------------------------------------------


def test_beyond_the_window_the_oldest_half_is_settled_before_the_next_write(
        publisher_for, clock, monkeypatch):
    monkeypatch.setattr("rabbit_ha_driver.rpc.receipts.CONFIRM_WINDOW", 4)
    conn = ScriptedConnection()
    publisher = publisher_for(conn)
    receipts = [write(publisher, clock) for _ in range(4)]
    assert conn.reads == []
    receipts.append(write(publisher, clock))  # five waiting: more than the window
    assert conn.reads == [1, 2]
    assert [r.settled_ok() for r in receipts] == [True, True, False, False, False]
    receipts.append(write(publisher, clock))  # four waiting again: within the window
    assert conn.reads == [1, 2]
    receipts.append(write(publisher, clock))
    assert conn.reads == [1, 2, 3, 4]
    assert all(r.result() for r in receipts)


def test_messages_confirmed_as_written_never_fill_the_window(publisher_for, clock, monkeypatch):
    monkeypatch.setattr("rabbit_ha_driver.rpc.receipts.CONFIRM_WINDOW", 4)
    conn = ScriptedConnection(acked_at_once=True)
    publisher = publisher_for(conn)
    receipts = [write(publisher, clock) for _ in range(20)]
    assert conn.reads == []
    assert all(r.settled_ok() for r in receipts)
    assert publisher.settle_all() == []
    assert all(r.result() for r in receipts)
    assert conn.reads == [] and conn.resent == []


def test_settle_all_returns_the_receipts_that_failed(publisher_for, clock, caplog):
    conn = ScriptedConnection({2: Outcome.LOST})
    publisher = publisher_for(conn)
    receipts = [write(publisher, clock, what=f"cast {n}") for n in (1, 2, 3)]
    with caplog.at_level(logging.ERROR, logger="rabbit_ha_driver.rpc.client"):
        assert publisher.settle_all() == [receipts[1]]
    assert conn.reads == [1, 2, 3]
    assert [r.settled_ok() for r in receipts] == [True, False, True]
    assert isinstance(receipts[1].error, exc.ConnectionLost)
    assert "cast 2: failed after it was written" in caplog.text
    assert publisher.settle_all() == []  # nothing left outstanding


def test_close_settles_outstanding_receipts_and_closes_the_connection(settings, clock, caplog):
    conn = ScriptedConnection({2: Outcome.LOST})
    publisher = Publisher(settings, lambda purpose: conn, clock=clock)
    receipts = [write(publisher, clock, what=f"cast {n}") for n in (1, 2)]
    keeper = publisher._keeper
    with caplog.at_level(logging.ERROR, logger="rabbit_ha_driver.rpc.client"):
        publisher.close()
    assert conn.reads == [1, 2]
    assert conn.closed == 1
    assert receipts[0].settled_ok() and not receipts[1].settled_ok()
    assert "cast 2: not confirmed by the broker before the publisher closed" in caplog.text
    if keeper is not None:
        keeper.join(5)
        assert not keeper.is_alive()
    with pytest.raises(exc.RabbitHAError, match="closed"):
        write(publisher, clock).result()


def test_close_gives_a_returned_message_no_more_than_close_settle(settings, clock):
    # Returned, and unroutable on every resend: publish() would retry until
    # the message's own deadline. Closing promises to give waiting receipts
    # no more than CLOSE_SETTLE seconds.
    conn = ScriptedConnection({1: Outcome.RETURNED},
                              resend_errors=[exc.Unroutable("no queue")] * 1000)
    publisher = Publisher(settings, lambda purpose: conn, clock=clock)
    write(publisher, clock, deadline=clock.now() + 60)
    start = clock.now()
    publisher.close()
    assert clock.now() - start <= client.CLOSE_SETTLE


def test_close_gives_all_waiting_receipts_together_no_more_than_close_settle(settings, clock):
    # Four returned messages, unroutable on every resend: each would take
    # CLOSE_SETTLE on its own; together they get CLOSE_SETTLE.
    conn = ScriptedConnection({n: Outcome.RETURNED for n in (1, 2, 3, 4)},
                              resend_errors=[exc.Unroutable("no queue")] * 4000)
    publisher = Publisher(settings, lambda purpose: conn, clock=clock)
    for _ in range(4):
        write(publisher, clock, deadline=clock.now() + 60)
    start = clock.now()
    publisher.close()
    assert clock.now() - start <= client.CLOSE_SETTLE + 0.5


def test_receipts_nobody_waits_for_are_settled_once_writing_pauses(publisher_for, clock):
    conn = ScriptedConnection()
    publisher = publisher_for(conn)
    receipts = [write(publisher, clock) for _ in range(2)]
    assert conn.reads == []  # writing has not paused on the clock
    clock.advance(client.KEEPER_IDLE * 2)
    assert conn.read_twice.wait(5), "the keeper did not settle the waiting receipts"
    assert sorted(conn.reads) == [1, 2]
    assert all(r.result() for r in receipts)
    assert len(conn.reads) == 2  # settled once, by the keeper


def test_a_returned_message_being_resent_does_not_hold_up_the_receipts_after_it(
        publisher_for, clock):
    # The first message comes back unroutable and its resend takes long (no
    # queue bound yet, until its deadline); the second was confirmed. The
    # keeper must report the second at once, not after the first's resend.
    conn = ScriptedConnection({1: Outcome.RETURNED})
    conn.resend_gate = threading.Event()
    publisher = publisher_for(conn)
    settled: dict[str, threading.Event] = {"first": threading.Event(),
                                           "second": threading.Event()}
    first = write(publisher, clock, what="first",
                  on_settled=lambda r: settled[r.what].set())
    second = write(publisher, clock, what="second",
                   on_settled=lambda r: settled[r.what].set())
    clock.advance(client.KEEPER_IDLE * 2)
    try:
        assert conn.resending.wait(5), "the returned message was not sent again"
        assert settled["second"].wait(5), (
            "the confirmed message was not settled while a returned one was being resent")
        assert second.sent
        assert not settled["first"].is_set()
    finally:
        conn.resend_gate.set()
    assert settled["first"].wait(5)
    assert first.result() is True
    assert len(conn.resent) == 1


def test_a_write_beyond_the_window_does_not_wait_for_a_returned_messages_resend(
        publisher_for, clock, monkeypatch):
    monkeypatch.setattr("rabbit_ha_driver.rpc.receipts.CONFIRM_WINDOW", 2)
    conn = ScriptedConnection({1: Outcome.RETURNED})
    conn.resend_gate = threading.Event()
    publisher = publisher_for(conn)
    try:
        receipts = [write(publisher, clock) for _ in range(3)]  # the third overflows
        assert conn.reads == [1]  # the oldest was settled before the write returned
        assert conn.resending.wait(5)
        assert not receipts[0].sent
    finally:
        conn.resend_gate.set()
    assert all(r.result() for r in receipts)


# -- casts -----------------------------------------------------------------------------


def cast_client(settings, conn, clock, topic="t"):
    transport = RPCTransport(settings, clock=clock, connection_factory=lambda purpose: conn)
    return RPCClient(transport, topic), transport


@pytest.mark.parametrize("durable, resent", [(False, 0), (True, 1)])
def test_a_cast_whose_confirm_was_lost_is_sent_again_only_when_durable(clock, durable, resent):
    settings = from_url(FAKE_URL, amqp_durable_queues=durable, kombu_reconnect_delay=0.0)
    conn = ScriptedConnection({1: Outcome.LOST})
    c, transport = cast_client(settings, conn, clock)
    try:
        receipt = c.cast_async({}, "record", tag="x")
        assert isinstance(receipt, Receipt)
        if durable:
            assert receipt.result() is True
        else:
            with pytest.raises(exc.ConnectionLost):
                receipt.result()
        assert len(conn.resent) == resent
    finally:
        transport.close()


def test_a_fanout_cast_nobody_listens_to_reports_false(settings, clock):
    conn = ScriptedConnection({1: Outcome.RETURNED},
                              resend_errors=[exc.Unroutable("no queue")] * 100)
    c, transport = cast_client(settings, conn, clock)
    try:
        receipt = c.prepare(fanout=True).cast_async({}, "record", tag="x")
        assert receipt.result() is False
        assert conn.resent[0]["exchange"] == "t_fanout"
    finally:
        transport.close()


# -- end to end on the in-memory broker ------------------------------------------------


def test_publish_async_on_the_memory_broker(settings, broker, clock, closing):
    consumer = fake_factory(settings, broker)("consumer")
    got = []
    consumer.declare_exchange("openstack", "topic")
    consumer.declare_queue("q")
    consumer.bind("q", "openstack", "k")
    consumer.consume("q", got.append, no_ack=True)
    publisher = Publisher(settings, fake_factory(settings, broker, clock), clock=clock)
    closing(publisher)
    receipt = write(publisher, clock, body=b'{"n": 1}')
    assert receipt.result() is True
    assert receipt.settled_ok()
    consumer.drain_events(0.5)
    assert [m.body for m in got] == [b'{"n": 1}']
    consumer.close()


def test_publish_async_to_nobody_on_the_memory_broker_reports_false(settings, broker, clock,
                                                                    closing):
    publisher = Publisher(settings, fake_factory(settings, broker, clock), clock=clock)
    closing(publisher)
    start = clock.now()
    receipt = write(publisher, clock, retry_unroutable=1.0)
    assert receipt.result() is False
    assert clock.now() - start == pytest.approx(1.0)


def test_cast_async_reaches_a_server(settings, broker, clock, topic):
    endpoint_seen: list[str] = []
    arrived = threading.Event()

    class Endpoint:
        def record(self, ctxt, tag):
            endpoint_seen.append(tag)
            arrived.set()

    server = RPCServer(settings, topic, "s1", [Endpoint()],
                       connection_factory=fake_factory(settings, broker))
    server.start()
    c = RPCClient(settings, topic, clock=clock,
                  connection_factory=fake_factory(settings, broker, clock))
    try:
        receipt = c.cast_async({}, "record", tag="async")
        assert isinstance(receipt, Receipt)
        assert receipt.result() is True
        assert arrived.wait(5)
        assert endpoint_seen == ["async"]
    finally:
        c.close()
        server.stop()
        server.wait(2)

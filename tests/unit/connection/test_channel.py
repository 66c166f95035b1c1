"""Channels the broker closes: the lifecycle table, who is blamed, and the restore.

The restore runs against the fake broker, which closes channels the way
RabbitMQ does for a consumer acknowledgement timeout or a publish to a
missing exchange, while the connection stays up.
"""

from __future__ import annotations

import amqp.exceptions
import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import Deadline, State
from rabbit_ha_driver.connection._channel import (
    CHANNEL_TRANSITIONS,
    BrokerClose,
    ChannelLife,
    ChannelState,
    close_of,
    concerns,
    method_name,
    method_sig,
)
from rabbit_ha_driver.connection._confirms import ConfirmTracker, Outcome, settle_after_refusal
from rabbit_ha_driver.testing import precondition_failed

from .conftest import make_connection

URL = "rabbit://u:p@h1:1,u:p@h2:2/"

def make(broker, clock, recorder, **overrides):
    return make_connection(broker, clock, recorder, URL, **overrides)


# -- values ----------------------------------------------------------------------


def test_every_state_has_a_row_and_illegal_moves_raise():
    assert set(CHANNEL_TRANSITIONS) == set(ChannelState)
    life = ChannelLife("c")
    with pytest.raises(RuntimeError, match="none -> open"):
        life.move(ChannelState.OPEN)
    life.move(ChannelState.OPENING)
    life.move(ChannelState.OPEN)
    life.closed_by_broker(BrokerClose(406, "timed out"))
    assert life.state is ChannelState.BROKER_CLOSED and life.last_close.reply_code == 406
    with pytest.raises(RuntimeError):
        life.move(ChannelState.OPEN)  # a closed channel is only restored through OPENING
    life.move(ChannelState.OPENING)
    assert life.generation == 2
    assert "opening #2" in repr(life)


def test_method_names_both_ways():
    assert method_name((60, 40)) == "basic.publish"
    assert method_name((0, 0)) is None
    assert method_name(None) is None
    assert method_sig("queue.declare") == (50, 10)
    assert method_sig("no.such") is None


def test_close_of_reads_channel_errors_only():
    error = amqp.exceptions.error_for_code(404, "NOT_FOUND - no exchange 'x'", (60, 40),
                                           amqp.exceptions.ChannelError)
    assert close_of(error) == BrokerClose(404, "NOT_FOUND - no exchange 'x'", "basic.publish")
    assert close_of(amqp.exceptions.ConnectionForced("bye", (0, 0), reply_code=320)) is None
    assert close_of(OSError("reset")) is None


@pytest.mark.parametrize(("close", "operation", "blamed"), [
    (BrokerClose(406, "inequivalent arg", "queue.declare"), "queue.declare", True),
    (BrokerClose(404, "no queue", "basic.consume"), "basic.consume", True),
    (BrokerClose(406, "ack timed out", None), "queue.declare", False),
    (BrokerClose(404, "no exchange", "basic.publish"), "basic.publish", False),   # pipelined
    (BrokerClose(406, "unknown delivery tag", "basic.ack"), "basic.ack", False),
    (BrokerClose(403, "access refused", "queue.bind"), "queue.declare", False),
])
def test_only_a_close_that_names_the_operation_is_blamed_on_it(close, operation, blamed):
    assert concerns(close, operation) is blamed


def test_a_refusal_settles_by_the_missing_exchange_and_the_order():
    tracker = ConfirmTracker()
    before = tracker.published("m0", "live")      # may have been taken
    acked = tracker.published("m1", "live")
    refused = tracker.published("m2", "gone")     # the oldest to the missing exchange
    after_live = tracker.published("m3", "live")  # dropped unread after the refusal
    after_gone = tracker.published("m4", "gone")
    tracker.on_ack(2)
    close = BrokerClose(404, "NOT_FOUND - no exchange 'gone'", "basic.publish")
    waiting = tracker.take_waiting()
    assert [p.outcome for p in waiting] == [None] * 4   # nobody settled before it is known
    settle_after_refusal(waiting, close, "gone")
    assert acked.outcome is Outcome.ACKED
    assert before.outcome is Outcome.LOST and before.closed_by == close
    assert refused.outcome is Outcome.REFUSED and refused.reply_code == 404
    assert after_live.outcome is Outcome.DROPPED and after_gone.outcome is Outcome.DROPPED


def test_a_refusal_nobody_could_attribute_loses_every_waiting_message():
    tracker = ConfirmTracker()
    pendings = [tracker.published(None, "x") for _ in range(2)]
    settle_after_refusal(tracker.take_waiting(), BrokerClose(404, "no exchange", "basic.publish"), None)
    assert [p.outcome for p in pendings] == [Outcome.LOST, Outcome.LOST]


def test_a_close_over_something_else_loses_every_waiting_message():
    tracker = ConfirmTracker()
    pendings = [tracker.published(None) for _ in range(2)]
    tracker.lose_all(BrokerClose(406, "timed out", None))
    assert [p.outcome for p in pendings] == [Outcome.LOST, Outcome.LOST]


# -- the connection restores the channel ------------------------------------------


def _consumer(conn, got):
    conn.declare_queue("q")
    return conn.consume("q", got.append)


def test_a_consumer_timeout_close_is_restored_on_the_same_connection(broker, clock, recorder):
    conn = make(broker, clock, recorder)
    got = []
    _consumer(conn, got)
    conn.publish(b"held", "", "q")
    conn.drain_events(0)
    assert [m.body for m in got] == [b"held"]
    generation = conn._life.generation
    assert broker.close_channels() == 1
    conn.drain_events(0)  # reads the close: restores at once, no reconnect
    assert conn.state is State.CONNECTED and conn.channel_state is ChannelState.OPEN
    assert conn._life.generation == generation + 1
    assert broker.connects == ["h1:1"]
    assert len(recorder.of(ev.ChannelClosedByBroker)) == 1
    assert len(recorder.of(ev.ChannelRestored)) == 1
    assert not recorder.of(ev.ConnectionLost)
    # The held delivery came back to the new consumer; the old one is never
    # acked on the new channel, the new one is.
    conn.drain_events(0)
    assert [m.body for m in got] == [b"held", b"held"]
    assert conn.ack(got[0]) is False
    assert conn.ack(got[1]) is True
    conn.publish(b"next", "", "q")
    conn.drain_events(0)
    assert [m.body for m in got][-1] == b"next"


def test_a_close_seen_by_another_operation_is_not_blamed_on_it(broker, clock, recorder):
    conn = make(broker, clock, recorder)
    got = []
    _consumer(conn, got)
    broker.close_channels(406, "PRECONDITION_FAILED - unknown delivery tag 7", method="basic.ack")
    # The declare reads the close first: restored, then the declare succeeds.
    assert conn.declare_queue("other", deadline=Deadline.after(5, clock)) == "other"
    assert conn.channel_state is ChannelState.OPEN
    assert len(recorder.of(ev.ChannelRestored)) == 1
    conn.publish(b"after", "", "q")
    conn.drain_events(0)
    assert [m.body for m in got] == [b"after"]


def test_a_refusal_of_the_operation_itself_still_raises_at_once(broker, clock, recorder):
    conn = make(broker, clock, recorder)
    conn.connect()
    broker.fail_next("queue.declare", precondition_failed())
    with pytest.raises(exc.IrrecoverableError) as refused:
        conn.declare_queue("q", deadline=Deadline.after(60, clock))
    assert refused.value.reply_code == 406
    # ...and the next caller gets a working channel on the same connection.
    assert conn.declare_queue("q2") == "q2"
    assert conn.channel_state is ChannelState.OPEN and broker.connects == ["h1:1"]


def test_a_restore_that_fails_falls_back_to_a_reconnect(broker, clock, recorder):
    conn = make(broker, clock, recorder)
    got = []
    _consumer(conn, got)
    broker.close_channels()
    broker.fail_next("queue.declare", OSError("reset while restoring"))
    conn.drain_events(0)
    conn.drain_events(0)
    assert len(recorder.of(ev.ConnectionLost)) == 1
    assert conn.state is State.CONNECTED and conn.channel_state is ChannelState.OPEN
    conn.publish(b"back", "", "q")
    conn.drain_events(0)
    assert [m.body for m in got] == [b"back"]


def test_an_ack_of_a_no_ack_delivery_writes_nothing(broker, clock, recorder):
    conn = make(broker, clock, recorder)
    got = []
    conn.declare_queue("q")
    conn.consume("q", got.append, no_ack=True)
    conn.publish(b"x", "", "q")
    conn.drain_events(0)
    assert conn.ack(got[0]) is True
    assert got[0].acknowledged


def test_close_while_a_consumer_reads_is_finished_by_that_reader(broker, clock, recorder):
    """The reader held the connection past close()'s wait and then simply
    returns (a stopping consumer never reads again): its release ends the
    connection, so no socket is left open."""
    import threading

    conn = make(broker, clock, recorder)
    conn.CLOSE_WAIT = 0.01
    conn.declare_queue("q")
    inside, leave = threading.Event(), threading.Event()

    def slow(message):
        inside.set()
        leave.wait(5)

    conn.consume("q", slow)
    conn.publish(b"x", "", "q")
    reader = threading.Thread(target=conn.drain_events, args=(0,))
    reader.start()
    assert inside.wait(5)
    conn.close()  # cannot get the connection: cuts it and returns
    assert broker.open_connections == 1
    leave.set()
    reader.join(5)
    assert conn.state is State.CLOSED
    assert broker.open_connections == 0


def test_close_during_a_reconnect_in_another_thread_leaves_no_connection(broker, clock, recorder):
    import threading

    conn = make(broker, clock, recorder)
    conn.CLOSE_WAIT = 0.01
    broker.connect_gate = threading.Event()
    outcome: list[BaseException] = []

    def connect() -> None:
        try:
            conn.connect(Deadline.after(60, clock))
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=connect)
    thread.start()
    while not broker.connects:  # the connect is under way, holding the connection
        threading.Event().wait(0.001)
    conn.close()
    assert conn.state is not State.CONNECTED
    broker.connect_gate.set()
    thread.join(5)
    assert conn.state is State.CLOSED
    assert outcome and isinstance(outcome[0], exc.ConnectionLost)
    assert broker.open_connections == 0


def test_a_refusal_whose_channel_cannot_be_reopened_leaves_no_connection_behind(
        broker, clock, recorder):
    """Contract: no socket leak; a connection is torn down before another is opened.

    A declare is refused (the broker closes the channel) and reopening the
    channel right after fails. The refusal is raised, and the connection
    stays CONNECTED without a channel; the next operation then connects
    anew over it, without tearing the old connection down, which is left
    open (on AMQP: its socket, until the garbage collector finds it)."""
    conn = make(broker, clock, recorder)
    conn.declare_queue("q")
    broker.fail_next("queue.declare", precondition_failed())
    broker.fail_next("channel.open", ConnectionResetError("reset while reopening"))
    with pytest.raises(exc.IrrecoverableError):
        conn.declare_queue("bad", deadline=Deadline.after(5, clock))
    assert conn.declare_queue("q2", deadline=Deadline.after(5, clock)) == "q2"
    assert conn.state is State.CONNECTED and conn.channel_state is ChannelState.OPEN
    assert broker.open_connections == 1, (
        f"{broker.open_connections} connections open after {broker.connects}")


def test_a_refusal_whose_channel_replay_times_out_leaves_no_deaf_consumer(
        broker, clock, recorder):
    """Contract: a channel closed by the broker ends restored (consumers
    included) or reconnected, never CONNECTED without its consumers.

    A declare is refused (the broker closes the channel); the channel
    reopened for the next caller replays the topology, and the broker does
    not answer the consumer's basic.consume in time. The refusal is raised
    and the half-restored channel is kept as if it were whole: the
    connection stays CONNECTED, its channel never reaches OPEN, and the
    consumer hears nothing again."""
    from rabbit_ha_driver.connection._errors import RequestTimeout

    conn = make(broker, clock, recorder)
    got = []
    _consumer(conn, got)
    broker.fail_next("queue.declare", precondition_failed())
    broker.fail_next("basic.consume", RequestTimeout("basic.consume", 10.0))
    with pytest.raises(exc.IrrecoverableError):
        conn.declare_queue("bad", deadline=Deadline.after(5, clock))
    conn.publish(b"after", "", "q")
    for _ in range(3):
        conn.drain_events(0)
    assert conn.channel_state is ChannelState.OPEN, conn
    assert [m.body for m in got] == [b"after"]

"""Publisher confirms by sequence number: acks, nacks, returns and a lost channel."""

from __future__ import annotations

import pytest

from rabbit_ha_driver.connection._confirms import ConfirmTracker, Outcome, Pending, settled


@pytest.fixture
def tracker() -> ConfirmTracker:
    return ConfirmTracker()


def publish(tracker: ConfirmTracker, n: int, *, with_ids: bool = False) -> list[Pending]:
    """``n`` messages written one after the other, as a connection records them."""
    return [tracker.published(tracker.next_message_id() if with_ids else None) for _ in range(n)]


def outcomes(pendings: list[Pending]) -> list[Outcome | None]:
    return [p.outcome for p in pendings]


def test_messages_are_numbered_one_two_three_per_channel(tracker):
    pendings = publish(tracker, 3)
    assert [p.seq for p in pendings] == [1, 2, 3]
    assert len(tracker) == 3
    assert not any(p.done for p in pendings)
    assert "#2 waiting" in repr(pendings[1])
    other = ConfirmTracker()
    assert other.published(None).seq == 1  # each channel counts from one


def test_a_single_ack_settles_only_its_message(tracker):
    first, second, third = publish(tracker, 3)
    tracker.on_ack(2)
    assert outcomes([first, second, third]) == [None, Outcome.ACKED, None]
    assert second.done and "#2 acked" in repr(second)
    assert len(tracker) == 2


def test_a_multiple_ack_settles_every_message_up_to_its_number(tracker):
    pendings = publish(tracker, 5)
    tracker.on_ack(3, multiple=True)
    assert outcomes(pendings) == [Outcome.ACKED] * 3 + [None, None]
    assert len(tracker) == 2
    tracker.on_ack(5, multiple=True)
    assert outcomes(pendings) == [Outcome.ACKED] * 5
    assert len(tracker) == 0


def test_a_multiple_ack_skips_numbers_already_settled(tracker):
    pendings = publish(tracker, 4)
    tracker.on_nack(2)
    tracker.on_ack(4, multiple=True)
    assert outcomes(pendings) == [Outcome.ACKED, Outcome.NACKED, Outcome.ACKED, Outcome.ACKED]


def test_single_and_multiple_nacks(tracker):
    pendings = publish(tracker, 4)
    tracker.on_nack(1)
    assert outcomes(pendings) == [Outcome.NACKED, None, None, None]
    tracker.on_nack(3, multiple=True)
    assert outcomes(pendings) == [Outcome.NACKED] * 3 + [None]
    assert len(tracker) == 1


def test_confirms_for_unknown_or_settled_numbers_change_nothing(tracker):
    first, second = publish(tracker, 2)
    tracker.on_ack(1)
    tracker.on_nack(1)  # already settled: not turned into a nack
    tracker.on_ack(99)  # never published
    assert outcomes([first, second]) == [Outcome.ACKED, None]
    assert len(tracker) == 1


def test_message_ids_are_handed_out_per_channel_and_number(tracker):
    first_id = tracker.next_message_id()
    assert first_id == tracker.next_message_id()  # asking does not consume a number
    first = tracker.published(first_id)
    second_id = tracker.next_message_id()
    assert first.message_id == first_id
    assert first_id.endswith(".1") and second_id.endswith(".2")
    assert first_id.rsplit(".", 1)[0] == second_id.rsplit(".", 1)[0]
    assert ConfirmTracker().next_message_id() != first_id  # another channel, another prefix


def test_a_return_followed_by_its_ack_stays_returned(tracker):
    first, second = publish(tracker, 2, with_ids=True)
    assert tracker.on_return(312, "NO_ROUTE", {"message_id": second.message_id})
    assert second.outcome is Outcome.RETURNED
    assert (second.reply_code, second.reply_text) == (312, "NO_ROUTE")
    tracker.on_ack(2, multiple=True)
    assert outcomes([first, second]) == [Outcome.ACKED, Outcome.RETURNED]
    assert len(tracker) == 0


def test_a_return_without_a_reply_code_counts_as_no_route(tracker):
    (pending,) = publish(tracker, 1, with_ids=True)
    assert tracker.on_return(0, "", {"message_id": pending.message_id})
    assert pending.reply_code == 312


def test_a_nack_overrides_a_return(tracker):
    (pending,) = publish(tracker, 1, with_ids=True)
    tracker.on_return(312, "NO_ROUTE", {"message_id": pending.message_id})
    tracker.on_nack(1)
    assert pending.outcome is Outcome.NACKED


def test_returns_are_recognised_by_message_id_not_by_order(tracker):
    pendings = publish(tracker, 3, with_ids=True)
    assert tracker.on_return(312, "NO_ROUTE", {"message_id": pendings[0].message_id})
    assert outcomes(pendings) == [Outcome.RETURNED, None, None]


def test_returns_of_messages_that_are_not_ours_are_ignored(tracker):
    (pending,) = publish(tracker, 1, with_ids=True)
    assert not tracker.on_return(312, "NO_ROUTE", {"message_id": "someone-else.1"})
    assert not tracker.on_return(312, "NO_ROUTE", {})
    assert not tracker.on_return(312, "NO_ROUTE", {"message_id": None})
    assert pending.outcome is None


def test_a_message_id_set_by_the_publisher_is_recognised_after_an_earlier_one_settled(tracker):
    # A publisher may set message_id itself, and may reuse it (an application
    # sending the same message again). The first copy is acked; the second,
    # written before that ack, then comes back: it is the only one waiting
    # with that id, so it is the one returned.
    first = tracker.published("order-17")
    second = tracker.published("order-17")
    tracker.on_ack(1)
    assert tracker.on_return(312, "NO_ROUTE", {"message_id": "order-17"})
    tracker.on_ack(2)
    assert first.outcome is Outcome.ACKED
    assert second.outcome is Outcome.RETURNED


def test_returns_of_a_repeated_message_id_are_matched_oldest_first(tracker):
    # RabbitMQ returns messages in publish order, so among waiting messages
    # that share an id the oldest not yet returned is the one that came back.
    first, second, third = (tracker.published("order-17") for _ in range(3))
    assert tracker.on_return(312, "NO_ROUTE", {"message_id": "order-17"})
    assert [first.outcome, second.outcome, third.outcome] == [Outcome.RETURNED, None, None]
    assert tracker.on_return(312, "NO_ROUTE", {"message_id": "order-17"})
    assert [first.outcome, second.outcome, third.outcome] == [
        Outcome.RETURNED, Outcome.RETURNED, None]
    tracker.on_ack(3, multiple=True)
    assert [first.outcome, second.outcome, third.outcome] == [
        Outcome.RETURNED, Outcome.RETURNED, Outcome.ACKED]
    assert not tracker.on_return(312, "NO_ROUTE", {"message_id": "order-17"})


def test_a_return_after_the_ack_is_ignored(tracker):
    (pending,) = publish(tracker, 1, with_ids=True)
    tracker.on_ack(1)
    assert not tracker.on_return(312, "NO_ROUTE", {"message_id": pending.message_id})
    assert pending.outcome is Outcome.ACKED


def test_a_message_returned_twice_is_noted_once(tracker):
    (pending,) = publish(tracker, 1, with_ids=True)
    assert tracker.on_return(312, "NO_ROUTE", {"message_id": pending.message_id})
    assert not tracker.on_return(313, "NO_CONSUMERS", {"message_id": pending.message_id})
    assert pending.reply_code == 312


def test_lose_all_marks_waiting_messages_lost_and_keeps_returned_ones(tracker):
    acked, returned, waiting, also_waiting = publish(tracker, 4, with_ids=True)
    tracker.on_ack(1)
    tracker.on_return(312, "NO_ROUTE", {"message_id": returned.message_id})
    assert tracker.lose_all() == 2  # the returned one is not counted as lost
    assert outcomes([acked, returned, waiting, also_waiting]) == [
        Outcome.ACKED, Outcome.RETURNED, Outcome.LOST, Outcome.LOST]
    assert len(tracker) == 0
    assert tracker.lose_all() == 0


def test_confirms_and_returns_after_lose_all_do_nothing(tracker):
    first, second = publish(tracker, 2, with_ids=True)
    tracker.lose_all()
    tracker.on_ack(2, multiple=True)
    tracker.on_nack(1)
    assert not tracker.on_return(312, "NO_ROUTE", {"message_id": first.message_id})
    assert outcomes([first, second]) == [Outcome.LOST, Outcome.LOST]


def test_numbers_keep_counting_after_lose_all(tracker):
    publish(tracker, 2)
    tracker.lose_all()
    later = tracker.published(tracker.next_message_id())
    assert later.seq == 3
    assert later.message_id is not None and later.message_id.endswith(".3")
    tracker.on_ack(3)
    assert later.outcome is Outcome.ACKED


@pytest.mark.parametrize("outcome", list(Outcome))
def test_settled_makes_a_decided_pending(outcome):
    pending = settled(outcome)
    assert pending.done
    assert pending.outcome is outcome
    assert pending.message_id is None

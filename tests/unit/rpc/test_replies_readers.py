"""Who reads the reply queue: a waiting caller in turn, else the queue's own thread.

A waiting caller calls the attached drain function itself; the drain
functions here deliver replies through ``waiters.deliver`` the way the reply
listener does. Threads that must be at a known point are observed through
the clock (:class:`WatchedClock`), never by sleeping.
"""

from __future__ import annotations

import threading

import pytest

from rabbit_ha_driver.clock import FakeClock
from rabbit_ha_driver.rpc import envelope
from rabbit_ha_driver.rpc.replies import DRAIN_SLICE, ReplyWaiters

JOIN = 5.0


class WatchedClock(FakeClock):
    """A fake clock that tells when a given thread first reads it.

    :meth:`ReplyWaiters.wait` reads the clock with the waiters' lock held,
    just before it decides to read replies itself or to wait for another
    reader: once the event is set and the lock taken again, that decision
    is made.
    """

    def __init__(self) -> None:
        super().__init__()
        self.watched: dict[str, threading.Event] = {}

    def watch(self, thread_name: str) -> threading.Event:
        event = self.watched[thread_name] = threading.Event()
        return event

    def now(self) -> float:
        event = self.watched.get(threading.current_thread().name)
        if event is not None:
            event.set()
        return super().now()


@pytest.fixture
def clock() -> WatchedClock:
    return WatchedClock()


@pytest.fixture
def waiters(clock):
    return ReplyWaiters(clock)


def reply(msg_id, result=None):
    return envelope.Reply(msg_id, result, None, True, envelope.new_id())


class Drain:
    """A drain function that records its turns and never overlaps unnoticed."""

    def __init__(self, waiters: ReplyWaiters, turn=None) -> None:
        self.waiters = waiters
        self.turn = turn or (lambda drain, seconds: None)
        self.lock = threading.Lock()
        self.active = 0
        self.overlaps = 0
        self.calls: list[tuple[str, float]] = []
        self.withins: list[float | None] = []

    def __call__(self, seconds: float, within: float | None = None) -> None:
        with self.lock:
            self.active += 1
            if self.active > 1:
                self.overlaps += 1
            self.calls.append((threading.current_thread().name, seconds))
            self.withins.append(within)
        try:
            self.turn(self, seconds)
        finally:
            with self.lock:
                self.active -= 1

    @property
    def readers(self) -> list[str]:
        return [name for name, _ in self.calls]


def wait_in_thread(waiters, call, name):
    outcome: dict[str, object] = {}

    def run():
        try:
            outcome["result"] = waiters.wait(call)
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread, outcome


def test_a_lone_caller_reads_its_own_reply(waiters):
    call = waiters.register("m1", 30)
    drain = Drain(waiters, lambda d, s: d.waiters.deliver(reply("m1", "mine")))
    waiters.attach(drain)
    assert waiters.wait(call) == "mine"
    assert drain.calls == [(threading.current_thread().name, DRAIN_SLICE)]


def test_a_caller_reads_in_slices_until_its_reply_comes(waiters):
    call = waiters.register("m1", 30)
    turns = iter([None, None, "m1"])

    def turn(d, seconds):
        msg_id = next(turns)
        if msg_id:
            d.waiters.deliver(reply(msg_id, "third time"))

    drain = Drain(waiters, turn)
    waiters.attach(drain)
    assert waiters.wait(call) == "third time"
    assert [s for _, s in drain.calls] == [DRAIN_SLICE] * 3


def test_a_turn_is_never_longer_than_the_time_left(waiters):
    call = waiters.register("m1", 0.03)
    drain = Drain(waiters, lambda d, s: d.waiters.deliver(reply("m1", 1)))
    waiters.attach(drain)
    assert waiters.wait(call) == 1
    assert drain.calls[0][1] == pytest.approx(0.03)


def test_a_caller_delivers_replies_to_others_too(waiters):
    mine, theirs = waiters.register("m1", 30), waiters.register("m2", 30)

    def turn(d, seconds):
        d.waiters.deliver(reply("m2", "theirs"))
        d.waiters.deliver(reply("m1", "mine"))

    waiters.attach(Drain(waiters, turn))
    assert waiters.wait(mine) == "mine"
    assert theirs.done and theirs.result == "theirs"


def test_while_one_caller_reads_another_waits_instead_of_reading(waiters, clock):
    leader_call, follower_call = waiters.register("m1", 30), waiters.register("m2", 30)
    reading, release = threading.Event(), threading.Event()

    def turn(d, seconds):
        if threading.current_thread().name == "leader":
            reading.set()
            assert release.wait(JOIN)
            d.waiters.deliver(reply("m1", "leader's"))

    drain = Drain(waiters, turn)
    waiters.attach(drain)
    leader, leader_out = wait_in_thread(waiters, leader_call, "leader")
    assert reading.wait(JOIN)
    decided = clock.watch("follower")
    follower, follower_out = wait_in_thread(waiters, follower_call, "follower")
    assert decided.wait(JOIN)
    # deliver() takes the waiters' lock, which the follower holds until it
    # has chosen: read itself, or wait for a delivery.
    waiters.deliver(reply("m2", "follower's"))
    follower.join(JOIN)
    assert follower_out == {"result": "follower's"}
    assert drain.readers == ["leader"]  # the follower never read
    release.set()
    leader.join(JOIN)
    assert leader_out == {"result": "leader's"}
    assert drain.overlaps == 0
    assert drain.readers == ["leader"]


def test_the_next_caller_reads_once_the_readers_turn_ends(waiters, clock):
    leader_call, follower_call = waiters.register("m1", 30), waiters.register("m2", 30)
    reading, release = threading.Event(), threading.Event()

    def turn(d, seconds):
        if threading.current_thread().name == "leader":
            reading.set()
            assert release.wait(JOIN)
            d.waiters.deliver(reply("m1", "leader's"))  # not the follower's
        else:
            d.waiters.deliver(reply("m2", "follower's"))

    drain = Drain(waiters, turn)
    waiters.attach(drain)
    leader, leader_out = wait_in_thread(waiters, leader_call, "leader")
    assert reading.wait(JOIN)
    decided = clock.watch("follower")
    follower, follower_out = wait_in_thread(waiters, follower_call, "follower")
    assert decided.wait(JOIN)
    release.set()
    leader.join(JOIN)
    follower.join(JOIN)
    assert leader_out == {"result": "leader's"}
    assert follower_out == {"result": "follower's"}
    assert drain.readers == ["leader", "follower"]
    assert drain.overlaps == 0


def test_a_failing_turn_does_not_lose_the_call(waiters, clock):
    # A short timeout keeps the pause after a failed turn (at most the
    # turn's length) tiny; the fake clock does not move, so it never expires.
    call = waiters.register("m1", 0.002)
    turns = iter(["fail", "deliver", "nothing"])

    def turn(d, seconds):
        step = next(turns)
        if step == "fail":
            raise OSError("connection reset while reading replies")
        if step == "deliver":
            d.waiters.deliver(reply("m1", "after all"))

    drain = Drain(waiters, turn)
    waiters.attach(drain)
    assert waiters.wait(call) == "after all"
    assert len(drain.calls) == 2
    waiters.discard("m1")
    clock.advance(1)
    assert waiters.drain_when_idle(0.001, 0.5) == 0  # the turn was handed back
    assert len(drain.calls) == 3


def test_a_failing_turn_lets_another_caller_read(waiters, clock):
    first_call = waiters.register("m1", 30)
    second_call = waiters.register("m2", 30)
    failing, release = threading.Event(), threading.Event()

    def turn(d, seconds):
        if threading.current_thread().name == "first" and not failing.is_set():
            failing.set()
            assert release.wait(JOIN)
            raise OSError("connection reset")
        d.waiters.deliver(reply("m2", 2))
        d.waiters.deliver(reply("m1", 1))

    drain = Drain(waiters, turn)
    waiters.attach(drain)
    first, first_out = wait_in_thread(waiters, first_call, "first")
    assert failing.wait(JOIN)
    decided = clock.watch("second")
    second, second_out = wait_in_thread(waiters, second_call, "second")
    assert decided.wait(JOIN)
    release.set()
    second.join(JOIN)
    first.join(JOIN)
    assert first_out == {"result": 1} and second_out == {"result": 2}
    assert drain.readers[0] == "first"
    assert len(drain.calls) == 2
    assert drain.overlaps == 0


# -- the reply queue's own thread -------------------------------------------------------


def test_the_queue_thread_does_not_read_while_a_call_is_outstanding(waiters, clock):
    drain = Drain(waiters)
    waiters.attach(drain)
    waiters.register("m1", 30)
    clock.advance(10)
    assert waiters.drain_when_idle(0.1, 0.5) > 0
    assert drain.calls == []


def test_the_queue_thread_waits_until_calls_stopped_for_idle_for(waiters, clock):
    drain = Drain(waiters)
    waiters.attach(drain)
    waiters.register("m1", 30)
    waiters.discard("m1")
    assert waiters.drain_when_idle(1.0, 0.5) == pytest.approx(0.5)
    assert waiters.drain_when_idle(0.1, 0.5) == pytest.approx(0.1)  # never past its slice
    clock.advance(0.3)
    assert waiters.drain_when_idle(1.0, 0.5) == pytest.approx(0.2)
    assert drain.calls == []
    clock.advance(0.2)
    assert waiters.drain_when_idle(1.0, 0.5) == 0
    assert [s for _, s in drain.calls] == [1.0]


def test_a_new_call_puts_the_queue_thread_back_to_waiting(waiters, clock):
    drain = Drain(waiters)
    waiters.attach(drain)
    clock.advance(5)
    assert waiters.drain_when_idle(0.1, 0.5) == 0
    waiters.register("m1", 30)
    assert waiters.drain_when_idle(0.1, 0.5) > 0
    assert len(drain.calls) == 1


def test_the_queue_thread_reads_nothing_without_a_drain(waiters, clock):
    clock.advance(5)
    assert waiters.drain_when_idle(0.1, 0.5) > 0


def test_the_queue_thread_does_not_read_during_anothers_turn(waiters, clock):
    reading, release = threading.Event(), threading.Event()

    def turn(d, seconds):
        if threading.current_thread().name == "queue-thread":
            reading.set()
            assert release.wait(JOIN)

    drain = Drain(waiters, turn)
    waiters.attach(drain)
    clock.advance(5)
    results = []
    other = threading.Thread(target=lambda: results.append(waiters.drain_when_idle(0.1, 0.5)),
                             name="queue-thread", daemon=True)
    other.start()
    assert reading.wait(JOIN)
    assert waiters.drain_when_idle(0.1, 0.5) > 0
    release.set()
    other.join(JOIN)
    assert results == [0]
    assert drain.readers == ["queue-thread"]
    assert waiters.drain_when_idle(0.1, 0.5) == 0  # the turn is free again


def test_a_failing_idle_turn_hands_the_turn_back(waiters, clock):
    def turn(d, seconds):
        raise OSError("connection reset")

    drain = Drain(waiters, turn)
    waiters.attach(drain)
    clock.advance(5)
    assert waiters.drain_when_idle(0.001, 0.5) == 0
    assert waiters.drain_when_idle(0.001, 0.5) == 0
    assert len(drain.calls) == 2


# -- detached ---------------------------------------------------------------------------


def test_detached_waiters_wait_for_a_delivery_from_another_thread(waiters, clock):
    drain = Drain(waiters)
    waiters.attach(drain)
    waiters.attach(None)
    call = waiters.register("m1", 30)
    decided = clock.watch("caller")
    caller, outcome = wait_in_thread(waiters, call, "caller")
    assert decided.wait(JOIN)
    waiters.deliver(reply("m1", "delivered"))
    caller.join(JOIN)
    assert outcome == {"result": "delivered"}
    assert drain.calls == []


def test_attaching_a_drain_wakes_a_waiting_caller_to_read(waiters, clock):
    call = waiters.register("m1", 30)
    decided = clock.watch("caller")
    caller, outcome = wait_in_thread(waiters, call, "caller")
    assert decided.wait(JOIN)
    drain = Drain(waiters, lambda d, s: d.waiters.deliver(reply("m1", "read myself")))
    waiters.attach(drain)
    caller.join(JOIN)
    assert outcome == {"result": "read myself"}
    assert drain.readers == ["caller"]


class CountingCondition(threading.Condition):
    """Counts the sleeping threads each notification wakes."""

    woken = 0

    def notify(self, n: int = 1) -> None:
        CountingCondition.woken += min(n, len(self._waiters))  # type: ignore[attr-defined]
        super().notify(n)

    def notify_all(self) -> None:
        self.notify(len(self._waiters))  # type: ignore[attr-defined]


def test_a_reply_wakes_its_own_caller_only(clock, monkeypatch):
    """With many callers waiting, a reply wakes the one it is for, not all of
    them to find it is not theirs (64 callers made every reply cost 63
    needless wake-ups)."""
    from rabbit_ha_driver.rpc import reply_waiters

    monkeypatch.setattr(reply_waiters.threading, "Condition", CountingCondition)
    waiters = ReplyWaiters(clock)
    callers = []
    for i in range(10):
        call = waiters.register(f"m{i}", 30)
        decided = clock.watch(f"caller{i}")
        callers.append(wait_in_thread(waiters, call, f"caller{i}"))
        assert decided.wait(JOIN)
    with waiters._cond:  # every caller is asleep once it let the lock go
        pass
    CountingCondition.woken = 0
    waiters.deliver(reply("m3", "mine"))
    thread, outcome = callers[3]
    thread.join(JOIN)
    assert outcome == {"result": "mine"}
    assert CountingCondition.woken == 1
    for i, (thread, outcome) in enumerate(callers):
        if i != 3:
            waiters.deliver(reply(f"m{i}", i))
            thread.join(JOIN)
            assert outcome == {"result": i}


def test_a_turn_handed_to_a_caller_that_resends_goes_on_to_the_next(clock):
    """The end of a reader's turn wakes the longest-waiting caller; when that
    one re-sends its request instead of reading (and the publish blocks or
    fails), the turn goes on to the next caller, whose reply is waiting."""
    waiters = ReplyWaiters(clock)
    in_turn, release, hold = threading.Event(), threading.Event(), threading.Event()
    queued: list[envelope.Reply] = []

    def drain(seconds, within=None):
        if threading.current_thread().name == "queue-thread":
            in_turn.set()
            release.wait(JOIN)
            return
        while queued:
            waiters.deliver(queued.pop())

    waiters.attach(drain)
    clock.advance(10)
    idle = threading.Thread(target=waiters.drain_when_idle, args=(0.1, 0.5),
                            name="queue-thread", daemon=True)
    idle.start()
    assert in_turn.wait(JOIN)
    first = waiters.register("m1", 30)
    waiters.resend_at("m1", clock.now() + 1)
    outcomes: dict[str, object] = {}

    def resend():
        hold.wait(JOIN)  # a publish that waits for the connection to come back

    def run(call, name, resend=None):
        try:
            outcomes[name] = waiters.wait(call, resend)
        except Exception as error:
            outcomes[name] = error

    threads = []
    for call, name, how in ((first, "first", resend), (waiters.register("m2", 30), "second", None)):
        decided = clock.watch(name)
        threads.append(threading.Thread(target=run, args=(call, name, how), name=name, daemon=True))
        threads[-1].start()
        assert decided.wait(JOIN)
        with waiters._cond:  # parked once it let the lock go
            pass
    queued.append(reply("m2", "two"))
    clock.advance(2)  # the first caller's resend is due
    release.set()  # the queue thread's turn ends
    try:
        threads[1].join(JOIN)
        assert outcomes.get("second") == "two"
    finally:
        hold.set()
        waiters.fail_all(RuntimeError("test over"))
        for thread in threads:
            thread.join(JOIN)

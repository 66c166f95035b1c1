"""Outstanding calls and the replies they wait for, matched by message id.

How this works. :class:`ReplyWaiters` holds one :class:`PendingCall` per
outstanding call of a client; the reply queue's listener
(:class:`~rabbit_ha_driver.rpc.replies.ReplyListener`) hands it every reply it
decodes (:meth:`ReplyWaiters.deliver`). A reply is matched by ``_msg_id``; a
reply whose ``_unique_id`` was already seen, or that arrives for a call that is
finished or unknown, is dropped. A reply with ``ending`` false and nothing in
it is a call-monitor heartbeat: it pushes back the call-monitor deadline,
never the call's own deadline.

A caller waiting for its reply reads the reply connection itself while nobody
else does (:meth:`ReplyWaiters.attach`), so one caller at a time needs no
thread to hand it its reply; the reply queue's own thread reads only while no
call is made (:meth:`ReplyWaiters.drain_when_idle`). A caller that waits
while another reads sleeps on a condition of its own call: a reply wakes the
caller it is for and nobody else, and the end of a reader's turn wakes the
caller that has waited longest to read next (with 64 callers, waking all of
them for every reply cost more than the calls).

Waiting is a condition variable with timeouts computed from an injected clock,
so tests move a fake clock and call :meth:`ReplyWaiters.wake` instead of
sleeping.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
from collections.abc import Callable
from typing import Any

from rabbit_ha_driver import forks
from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.exceptions import MessagingTimeout
from rabbit_ha_driver.rpc import envelope
from rabbit_ha_driver.rpc.recent import Recent

# These lines are the reply queue's: operators filter on its logger.
LOG = logging.getLogger("rabbit_ha_driver.rpc.replies")

#: Seconds one drain of the reply connection may take; bounds how long
#: :meth:`~rabbit_ha_driver.rpc.replies.ReplyListener.stop` waits for the
#: draining thread.
DRAIN_SLICE = 0.1

#: How many recent ``_unique_id`` values are remembered to drop duplicates.
DUPLICATE_WINDOW = 1024


class Outcome(enum.Enum):
    """What :meth:`ReplyWaiters.deliver` did with a reply."""

    RESULT = "result"
    HEARTBEAT = "heartbeat"
    PARTIAL = "partial"
    DUPLICATE = "duplicate"
    UNKNOWN = "unknown"


class PendingCall:
    """One call waiting for its reply. Lives in :class:`ReplyWaiters`."""

    def __init__(self, msg_id: str, deadline: float, started: float,
                 call_monitor_timeout: float | None, what: str) -> None:
        self.msg_id = msg_id
        self.deadline = deadline
        self.started = started
        self.call_monitor_timeout = call_monitor_timeout
        self.monitor_deadline = (started + call_monitor_timeout
                                 if call_monitor_timeout else math.inf)
        self.what = what
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.heartbeats = 0
        #: When the request is to be sent again if no reply came by then
        #: (set by :meth:`ReplyWaiters.resend_at`; see :mod:`.calls`).
        self.resend_at = math.inf
        #: What its waiter sleeps on (on :class:`ReplyWaiters`' lock): a reply
        #: wakes its own caller, not every caller.
        self.wakeup: threading.Condition | None = None

    def expires_at(self) -> float:
        return min(self.deadline, self.monitor_deadline)

    def __repr__(self) -> str:
        state = "done" if self.done else "waiting"
        return f"<PendingCall {self.msg_id} {state} {self.what}>"


class ReplyWaiters:
    """Outstanding calls by message id; thread-safe."""

    def __init__(self, clock: Clock = REAL_CLOCK) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._calls: dict[str, PendingCall] = {}
        #: Callers asleep in :meth:`wait`, oldest first: a reader's turn
        #: passes to the first of them.
        self._parked: dict[PendingCall, None] = {}
        #: Reads the reply connection for up to the given seconds, delivering
        #: what arrives (set by the :class:`ReplyListener` once it consumes).
        self._drain: Callable[[float, float | None], None] | None = None
        self._draining = False
        self._last_call_at = -math.inf
        self._seen: Recent[None] = Recent(DUPLICATE_WINDOW)
        self._finished: Recent[None] = Recent(DUPLICATE_WINDOW)
        forks.at_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """In a forked child: nobody reads (the reader was a thread of the
        parent) and the parent's calls are not the child's to wait for."""
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._drain = None
        self._draining = False
        self._calls.clear()
        self._parked.clear()

    def __len__(self) -> int:
        with self._cond:
            return len(self._calls)

    def register(self, msg_id: str, timeout: float,
                 call_monitor_timeout: float | None = None,
                 what: str = "") -> PendingCall:
        """Start waiting for ``msg_id``: ``timeout`` bounds the whole call."""
        now = self._clock.now()
        call = PendingCall(msg_id, now + timeout, now, call_monitor_timeout,
                           what or f"a reply to message {msg_id}")
        call.wakeup = threading.Condition(self._lock)
        with self._cond:
            self._calls[msg_id] = call
            self._last_call_at = now
        return call

    def discard(self, msg_id: str) -> None:
        """Forget a call (finished, failed or abandoned); later replies drop."""
        with self._cond:
            if self._calls.pop(msg_id, None) is not None:
                self._finished.add(msg_id)
            self._last_call_at = self._clock.now()

    def resend_at(self, msg_id: str, when: float) -> bool:
        """Have :meth:`wait` hand the call back for a re-send at ``when`` if no reply came.

        Called from whichever thread learned that the request's fate is
        uncertain; wakes the waiter. False if the call is finished or unknown.
        """
        with self._cond:
            call = self._calls.get(msg_id)
            if call is None or call.done:
                return False
            call.resend_at = when
            self._wake(call)
            return True

    def deliver(self, reply: envelope.Reply) -> Outcome:
        """Hand a received reply to its waiter."""
        with self._cond:
            if reply.unique_id:
                if reply.unique_id in self._seen:
                    LOG.debug("dropping duplicate reply %s to %s",
                              reply.unique_id, reply.msg_id)
                    return Outcome.DUPLICATE
                self._seen.add(reply.unique_id)
            call = self._calls.get(reply.msg_id)
            if call is None or call.done:
                known = reply.msg_id in self._finished or call is not None
                LOG.log(logging.DEBUG if known else logging.INFO,
                        "dropping reply to %s: %s", reply.msg_id,
                        "the call already finished" if known
                        else "no call is waiting for it")
                return Outcome.DUPLICATE if known else Outcome.UNKNOWN
            if reply.is_heartbeat:
                call.heartbeats += 1
                if call.call_monitor_timeout:
                    call.monitor_deadline = (self._clock.now()
                                             + call.call_monitor_timeout)
                    self._wake(call)
                return Outcome.HEARTBEAT
            if reply.failure is not None:
                call.error = reply.failure
            elif reply.result is not None:
                call.result = reply.result
            if not reply.ending and reply.failure is None:
                # An older two-part reply: the result first, "ending" after.
                return Outcome.PARTIAL
            call.done = True
            self._wake(call)
            return Outcome.RESULT

    def fail(self, msg_id: str, error: BaseException) -> bool:
        """End a call with a local error (e.g. its reply was refused)."""
        with self._cond:
            call = self._calls.get(msg_id)
            if call is None or call.done:
                return False
            call.error, call.done = error, True
            self._wake(call)
            return True

    def fail_all(self, error: BaseException) -> None:
        """End every outstanding call with ``error`` (the client is closing)."""
        with self._cond:
            for call in self._calls.values():
                if not call.done:
                    call.error, call.done = error, True
            self._wake_all()

    def wake(self) -> None:
        """Make waiters look at the clock again (after a fake clock moved)."""
        with self._cond:
            self._wake_all()

    def _wake(self, call: PendingCall) -> None:
        """Wake ``call``'s waiter (the lock held)."""
        if call.wakeup is not None:
            call.wakeup.notify()

    def _wake_all(self) -> None:
        """Wake every waiter (the lock held): the clock moved, the reader changed."""
        self._cond.notify_all()
        for call in self._parked:
            self._wake(call)

    def _pass_turn(self) -> None:
        """Nobody reads: wake the longest-waiting caller to take its turn (the lock held)."""
        if self._drain is not None and not self._draining:
            for call in self._parked:
                self._wake(call)
                return

    def wait(self, call: PendingCall, resend: Callable[[], None] | None = None) -> Any:
        """Block until the reply, the call's deadline or its monitor deadline.

        Returns the result; raises the remote error, or MessagingTimeout
        saying what it waited for. When the call's ``resend_at`` passes
        without a reply, ``resend()`` is called (in this thread, outside the
        lock) and the wait goes on; whatever it raises ends the wait.
        """
        cond = self._cond
        while True:
            with cond:
                if call.done:
                    self._pass_turn()
                    break
                now = self._clock.now()
                if now >= call.expires_at():
                    self._pass_turn()
                    raise self._timeout(call, now)
                due = now >= call.resend_at
                if due:
                    call.resend_at = math.inf
                    # Not reading now (re-sending instead, which may block or
                    # raise): a turn handed to this caller goes on to the next.
                    self._pass_turn()
                left = min(call.expires_at(), call.resend_at) - now
                drain = self._drain
                if not due:
                    if drain is None or self._draining:
                        self._parked[call] = None
                        try:
                            (call.wakeup or cond).wait(left)
                        finally:
                            # pop: a fork (_after_fork) may have emptied it
                            # under a green thread that survived in the child.
                            self._parked.pop(call, None)
                        continue
                    self._draining = True
            if due:
                if resend is not None:
                    resend()
            elif drain is not None:
                # The caller's whole remaining time bounds what its turn may
                # block on (recovery, queue checks), not only the slice.
                self._drain_as(drain, min(left, DRAIN_SLICE), call.expires_at() - self._clock.now())
        if call.error is not None:
            raise call.error
        return call.result

    def attach(self, drain: Callable[[float, float | None], None] | None) -> None:
        """Let waiting callers read replies themselves with ``drain``.

        A caller waiting for its reply reads the reply connection itself
        while nobody else does, and delivers whatever arrives, its own reply
        and others'; the others wait for a delivery or for the reader's turn
        to end. So one caller at a time needs no thread to hand it its
        reply. ``None`` detaches (the client is closing).
        """
        with self._cond:
            self._drain = drain
            self._wake_all()

    def drain_when_idle(self, seconds: float, idle_for: float) -> float:
        """Read replies for up to ``seconds`` if no call was made for ``idle_for``.

        The reply queue's own thread calls this: it reads what callers do
        not, while none is waiting (late replies, a consumer cancel, a
        reconnect). Returns 0 after its turn, or else how long to wait
        before asking again; it does not wait itself, so the callers' turns
        never wake it.
        """
        with self._cond:
            drain = self._drain
            quiet = self._clock.now() - self._last_call_at
            if drain is None or self._draining or self._calls or quiet < idle_for:
                return min(seconds, max(idle_for - quiet, 0.001))
            self._draining = True
        self._drain_as(drain, seconds, None)
        return 0.0

    def _drain_as(self, drain: Callable[[float, float | None], None], seconds: float,
                  within: float | None) -> None:
        """Be the one reader of the reply connection for up to ``seconds``.

        ``within``: the reading caller's remaining time (None: the reply
        queue's own thread, which nobody waits on).
        """
        try:
            drain(seconds, within)
        except Exception:
            LOG.debug("reading replies failed", exc_info=True)
            failed = True
        else:
            failed = False
        finally:
            with self._cond:
                self._draining = False
                self._pass_turn()
        if failed:
            # The connection is broken beyond what drain_events recovers
            # from within this turn; let the time pass instead of spinning.
            with self._cond:
                self._cond.wait(min(seconds, 0.05))

    def _timeout(self, call: PendingCall, now: float) -> MessagingTimeout:
        waited = now - call.started
        if now < call.deadline:
            text = (f"Timed out after {waited:.1f}s waiting for {call.what}: no "
                    f"call-monitor heartbeat within {call.call_monitor_timeout:g}s "
                    f"(msg_id {call.msg_id}; {call.heartbeats} heartbeats)")
        else:
            text = (f"Timed out after {waited:.1f}s waiting for {call.what} "
                    f"(msg_id {call.msg_id})")
        return MessagingTimeout(text, waited=waited)

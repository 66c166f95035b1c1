"""Consuming: draining deliveries, consumer cancels, queue checks, acknowledgements.

How it works. :meth:`drain_events` reads the connection for a while and hands
each delivery to its consumer's callback, recovering the connection in the same
time. A consumer the broker cancelled is consumed again once its delay has
passed (see :mod:`._cancels`). Now and then the consumed queues are declared
passively: a queue that vanished without a cancel, or one whose ready messages
never come to this consumer, is consumed again, or the connection reconnects.
An acknowledgement for a delivery of a channel that is gone is dropped: the
broker redelivers the message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import _errors as errors
from rabbit_ha_driver.connection import _frames as frames
from rabbit_ha_driver.connection._channel import close_of
from rabbit_ha_driver.connection._channel_recovery import POST_RECOVERY_CHECK
from rabbit_ha_driver.connection._connecting import _Connecting
from rabbit_ha_driver.connection._lifecycle import OPEN_STATES
from rabbit_ha_driver.connection._retry import Deadline

LOG = logging.getLogger(__name__)


#: A reader with a deadline of its own checks queues only with this much left.
MAINTENANCE_FLOOR = 0.5
#: Seconds between the two checks that find a consumed queue holding ready
#: messages while this connection, with nothing unacknowledged, got none.
STARVED_RECHECK = 2.0


class _Consuming(_Connecting):
    """Delivers messages to consumers and keeps consumers alive."""

    def drain_events(self, timeout: float, *, within: float | None = None) -> None:
        """Deliver messages to consumer callbacks for up to ``timeout`` seconds.

        Recovers the connection (and re-creates cancelled consumers after their
        delay) within the same time. Returns early after a delivery.

        ``within`` is for a reader that has a deadline of its own (a caller
        reading its reply queue): nothing here then blocks for longer than
        ``max(timeout, within)`` seconds, not the lock, not a connect
        attempt, not a queue check (checks are left to a later turn when
        less than :data:`MAINTENANCE_FLOOR` is left). Without it (a
        consumer's own loop, which nobody waits on) a recovery attempt that
        starts gets its full connect and request timeouts.
        """
        deadline = Deadline.after(timeout, self._clock)
        patient = within is None
        bound = deadline if within is None else Deadline.after(max(timeout, within), self._clock)
        with self._locked(bound if not patient else Deadline.never(self._clock), "basic.consume"):
            try:
                self._ensure_open(bound, "basic.consume", patient=patient)
                self._restore_cancelled(bound, patient)
            except exc.MessagingTimeout:
                return
            wait = deadline.remaining()
            cancel_due = self._cancels.wait(self._clock.now())
            if cancel_due is not None:
                wait = min(wait, cancel_due)
            if self.settings.consumer_check_interval > 0 and self._topology.consumers:
                wait = min(wait, max(0.0, self._next_consumer_check - self._clock.now()))
            try:
                self._drain_once(wait)
            except Exception as error:
                close = close_of(error)
                if close is not None:
                    self._restore_after_close(close, None if patient else bound)
                    return
                errors.raise_refusal(error, "basic.consume", self._addr())
                dead = self.liveness.dead_reason if self.liveness is not None else None
                self._lost(dead or str(errors.translate(error, "basic.consume", self._addr())))
            try:
                self._restore_cancelled(bound, patient)
                self._check_consumers(self._maintenance_budget(bound, patient))
            except exc.MessagingTimeout:
                return

    def _maintenance_budget(self, bound: Deadline, patient: bool) -> float:
        """Seconds a queue check or re-consume may wait for the broker; 0: not now."""
        if patient:
            return self.settings.request_timeout
        left = bound.cap(self.settings.request_timeout)
        return left if left >= MAINTENANCE_FLOOR else 0.0

    def _check_consumers(self, budget: float) -> None:
        """Passively declare consumed queues now and then; re-create a vanished one.

        The safety net for a consumer cancel the broker never sent: without it
        a consumer of a deleted queue would wait for ever on a healthy
        connection.
        """
        interval = self.settings.consumer_check_interval
        now = self._clock.now()
        if interval <= 0 or now < self._next_consumer_check or self._state not in OPEN_STATES \
                or budget <= 0:
            return
        self._next_consumer_check = now + interval
        keys = {c.queue_key for c in self._topology.consumers.values()} - self._cancels.keys()
        for key in sorted(keys):
            name = self._topology.queue_name(key)
            try:
                with self._request_deadline("queue.declare", budget):
                    ok = self._channel.queue_declare(queue=name, passive=True)
                why = self._consumer_lost(key, ok)
                if why is not None:
                    self.events.emit(ev.ConsumerLost(self.name, name, why))
                    if key in self._relost:
                        # A new channel on this node did not help: another node may.
                        self._relost.discard(key)
                        self._lost(f"the consumer of queue {name!r} was lost again on a new "
                                   f"channel ({why})")
                        return
                    self._relost.add(key)
                    if not self._reopen_channel(Deadline.after(budget, self._clock),
                                                f"the broker lost the consumer of queue {name!r}"):
                        self._lost(f"consuming queue {name!r} again failed")
                    return
            except Exception as error:
                close = close_of(error)
                if close is not None and close.reply_code != 404:
                    # Closed over something else (a consumer timeout) while checking.
                    self._restore_after_close(close)
                    return
                if errors.reply_code_of(error) != 404:
                    self._lost(f"checking queue {name!r} failed: {error}")
                    return
                self.events.emit(ev.ConsumerCancelled(self.name, name, 0.0))
                if self._reopen_channel(Deadline.after(budget, self._clock),
                                        f"queue {name!r} vanished without a consumer cancel"):
                    self.events.emit(ev.ConsumerRestored(self.name, self._topology.queue_name(key), True))
                else:
                    self._lost(f"re-creating vanished queue {name!r} failed")
                return

    def _consumer_lost(self, key: Any, declare_ok: Any) -> str | None:
        """Why the broker's queue does not deliver to this connection's
        consumer, or None; it takes two checks in a row to say so.

        RabbitMQ can lose a consumer without a ``basic.cancel`` (a quorum
        queue whose members restarted around a leader change): the channel
        still lists it, the queue delivers to nobody, and messages wait for
        ever. Two signs, each needing a second check to count (a first one
        may be the broker catching up, and the next check comes soon):

        * the queue counts no consumer;
        * the queue holds ready messages, and this connection, which had
          nothing unacknowledged, received none from it in between. With
          another server's consumer counted, that is the only sign a lost
          consumer of ours gives; a live consumer with free prefetch would
          have been sent them.

        Only some transports count a queue's consumers (see
        :attr:`._backend.Link.counts_consumers`), and RabbitMQ counts none for a stream,
        whose messages stay in it once read: a stream shows neither sign.
        """
        count = getattr(declare_ok, "consumer_count", None)
        if self._link is None or not self._link.counts_consumers or count is None \
                or self._topology.is_stream(key):
            self._zero_consumers.discard(key)
            self._starving.pop(key, None)
            return None
        if count > 0:
            self._zero_consumers.discard(key)
            if self._topology.single_active(key):
                # A standby consumer is sent nothing while the active one lives.
                self._starving.pop(key, None)
                return None
            return self._consumer_starved(key, getattr(declare_ok, "message_count", None))
        self._starving.pop(key, None)
        if key in self._zero_consumers:
            self._zero_consumers.discard(key)
            return "the queue counts no consumer"
        self._zero_consumers.add(key)
        self._check_again_in(POST_RECOVERY_CHECK)
        return None

    def _consumer_starved(self, key: Any, ready: int | None) -> str | None:
        if not ready or self._unsettled > 0:
            # Nothing waits, or our own prefetch may be what holds it back.
            self._starving.pop(key, None)
            return None
        delivered, now = self._delivered[key], self._clock.now()
        first = self._starving.get(key)
        if first is None or first[0] != delivered:
            self._starving[key] = (delivered, now)
            self._check_again_in(STARVED_RECHECK)
            return None
        if now - first[1] < STARVED_RECHECK:
            # Checked sooner (a short interval, another queue's first zero):
            # a broker slow to deliver for less than that is no lost consumer.
            self._check_again_in(first[1] + STARVED_RECHECK - now)
            return None
        del self._starving[key]
        return (f"{ready} message(s) ready in the queue and none delivered to this "
                f"consumer with free prefetch since the last check")

    def _check_again_in(self, seconds: float) -> None:
        self._next_consumer_check = min(self._next_consumer_check, self._clock.now() + seconds)

    def _drain_once(self, wait: float) -> None:
        """One read of up to ``wait`` seconds; a timeout is not an error."""
        liveness = self.liveness
        owner_wait = liveness.owner_wait() if liveness is not None else None
        if owner_wait is not None:
            wait = min(wait, owner_wait)
        try:
            if self._link is not None:
                self._link.drain(wait)
        except TimeoutError:
            pass
        finally:
            if liveness is not None:
                liveness.owner_tick()

    def _restore_cancelled(self, deadline: Deadline, patient: bool = True) -> None:
        budget = self._maintenance_budget(deadline, patient)
        if budget <= 0 or self._channel is None:
            return
        now = self._clock.now()
        # Those due now, one at a time (a cancel that comes again while one
        # is restored waits for the next turn).
        for _ in range(self._cancels.due_count(now)):
            key = self._cancels.pop_due(now)
            if key is None:
                break
            try:
                with self._request_deadline("queue.declare", budget):
                    self._topology.replay_queue(self._declarer(self._channel), key)
                self.events.emit(ev.ConsumerRestored(self.name, self._topology.queue_name(key), True))
            except Exception as error:
                errors.raise_refusal(error, "queue.declare", self._addr(), recovering=True)
                LOG.warning("[%s] re-consuming queue %r on the same connection failed (%s); "
                            "reconnecting", self.name, self._topology.queue_name(key), error)
                self._lost(f"re-consume after cancel failed: {error}")
                self._cancels.restore_by_reconnect(key)
                self._ensure_open(deadline, "basic.consume", patient=patient)

    def ack(self, message: Any) -> bool:
        """Acknowledge ``message``; False if its channel is gone (the broker redelivers)."""
        return self._settle(message, "basic.ack", self._write_ack if self._confirms
                            else lambda m: m.ack())

    def reject(self, message: Any, requeue: bool = False) -> bool:
        """Reject (and maybe requeue) ``message``; False if its channel is gone."""
        return self._settle(message, "basic.reject", lambda m: m.reject(requeue=requeue))

    def _write_ack(self, message: Any) -> None:
        """``basic.ack`` written directly (see :mod:`frames`), the delivery marked acked."""
        if not hasattr(message, "_state"):
            message.ack()
            return
        raw = self._raw
        raw.transport.write(frames.ack(message.channel.channel_id, message.delivery_tag))
        raw.bytes_sent += 1
        message._state = "ACK"  # what kombu's Message.ack() records

    def _settle(self, message: Any, operation: str, fn: Callable[[Any], None]) -> bool:
        with self._lock:
            if getattr(message, "channel", None) is not self._channel or self._channel is None:
                LOG.debug("[%s] %s skipped: delivery belongs to a closed channel", self.name, operation)
                return False
            if getattr(message, "acknowledged", False):
                return True
            try:
                fn(message)
                self._unsettled = max(0, self._unsettled - 1)
                return True
            except Exception as error:
                self._lost(f"{operation} failed: {error}")
                return False

"""The heartbeat deadline policy: when to send a frame, when a peer is dead.

How this works. :class:`HeartbeatPolicy` turns the detection bound ``T``
(``heartbeat_timeout_threshold``) and ``heartbeat_rate`` into the heartbeat
interval ``H`` to ask of the broker and the cadence of our own frames. A
:class:`HeartbeatState` per connection keeps two times, the last inbound
traffic and the last outbound frame, and :meth:`HeartbeatState.decide` turns
them and the current time into a :class:`Decision`: send a heartbeat, declare
the connection dead, or nothing, plus the time at which something next falls
due. There is no I/O, no thread and no clock in here: the runners in
:mod:`~rabbit_ha_driver.connection._runners` pass the time in, do what the
decision says and sleep until ``wake_at``. So the schedule is driven by
deadlines (the next frame to send, the dead-connection deadline), never by a
fixed tick.

Why ``H = max(1, T // 2)``. RabbitMQ checks every ``H/2`` whether it sent
anything on a connection and sends a heartbeat frame when it did not, so a
healthy connection may be silent for almost ``H`` (plus the broker's and the
network's jitter). To declare death ``T`` after the last inbound byte without
false alarms, ``H`` must stay well below ``T``; half of ``T`` leaves a margin of
``T/2`` (at least one second, since ``T >= 2``) for jitter. The interval goes
into the AMQP ``connection.tune`` field, an unsigned short of whole seconds,
hence the floor. The broker closes a connection whose client has been silent
for two to three intervals, so with ``H = T/2`` the broker in turn notices a
dead client between ``T`` and ``1.5 T``.

What ``heartbeat_rate`` means here. We send a heartbeat frame whenever we have
written nothing for ``H / rate`` seconds, so an idle connection carries
``rate`` frames per interval (the option's default is 1.5) and any other
outbound frame counts as one. The broker closes a client only after two whole
check intervals without a byte from it, so it tolerates a stall of our writer
of up to ``2 H - H / rate`` seconds (2.67 s at the defaults, T = 4, H = 2).

Where inbound time comes from. The owner of a connection reads its socket; the
runner only watches. The owner's reads give exact times (``inbound_at``).
Bytes that arrived but were not read yet (an eventlet hub blocked by a
CPU-bound request) are seen only as a change of a marker between two
observations (``marker``, e.g. the kernel's count of unread bytes); for those
the state assumes the earliest time that cannot cause a false alarm: the
previous observation, but no earlier than ``(T' - H) / 2`` before now (``T'``
being the effective dead-after time). A connection declared dead on that
evidence has then been silent for at least ``(T' + H) / 2 > H``.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Hashable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rabbit_ha_driver.settings import Settings

LOG = logging.getLogger(__name__)

#: Seconds before a heartbeat the writer could not send (another writer held
#: the socket, or the send buffer was full) is tried again, at most.
SEND_RETRY = 0.25

#: How much longer than one interval the peer may be silent before a
#: :class:`~rabbit_ha_driver.events.HeartbeatMissed` is reported.
MISSED_FACTOR = 1.5


def negotiated_interval(threshold: int) -> int:
    """The heartbeat interval ``H`` (whole seconds) to ask of the broker for ``T``.

    0 when heartbeats are off. See the module docstring for the reasoning.
    """
    if threshold <= 0:
        return 0
    return max(1, int(threshold) // 2)


@dataclasses.dataclass(frozen=True)
class HeartbeatPolicy:
    """``T`` and the rate as a value; the numbers every runner works from."""

    threshold: float
    """``T``: seconds without inbound traffic after which a connection is dead; 0 = off."""

    rate: float = 1.5
    """Heartbeat frames we send per negotiated interval on an idle connection."""

    def __post_init__(self) -> None:
        if self.threshold < 0 or 0 < self.threshold < 2:
            raise ValueError(f"heartbeat threshold must be 0 (off) or at least 2 s, not {self.threshold!r}")
        if self.rate < 1:
            raise ValueError(f"heartbeat rate must be at least 1, not {self.rate!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> HeartbeatPolicy:
        return cls(threshold=settings.heartbeat_timeout_threshold, rate=settings.heartbeat_rate)

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    @property
    def negotiated_interval(self) -> int:
        """``H`` to propose in ``connection.tune`` (kombu's ``heartbeat=``)."""
        return negotiated_interval(int(self.threshold))

    def send_interval(self, interval: float | None = None) -> float:
        """Seconds of outbound silence after which we send a heartbeat frame."""
        h = self.negotiated_interval if interval is None else interval
        return h / self.rate

    def dead_after(self, interval: float | None = None) -> float:
        """Seconds of inbound silence after which the connection is dead.

        ``T``, unless the interval actually in force is not below ``T`` (a
        caller negotiated something else): then the broker may legitimately be
        silent for about an interval, and two intervals are allowed, as py-amqp
        does.
        """
        h = self.negotiated_interval if interval is None else interval
        return float(self.threshold) if h < self.threshold else 2.0 * h

    def state(self, now: float, interval: float | None = None, *, sends: bool = True) -> HeartbeatState:
        """A fresh per-connection state; ``interval`` is the negotiated ``H``.

        ``sends=False`` makes a state that only watches for death (someone
        else sends the heartbeats).
        """
        h = float(self.negotiated_interval if interval is None else interval)
        return HeartbeatState(self, h, now, sends=sends)


class Action(enum.Enum):
    """What a runner must do now."""

    NOTHING = "nothing"
    SEND = "send"
    DEAD = "dead"


@dataclasses.dataclass(frozen=True)
class Decision:
    """The outcome of :meth:`HeartbeatState.decide`.

    ``wake_at`` is when to decide again, assuming the action is carried out;
    None once the connection is dead (or heartbeats are off). ``missed`` is
    True the first time a silence outlasts the interval (for an event only).
    """

    action: Action
    silent_for: float
    wake_at: float | None
    missed: bool = False


class HeartbeatState:
    """Deadlines of one connection. Not thread-safe: one runner owns it.

    Every method that needs the time takes it as an argument.
    """

    def __init__(self, policy: HeartbeatPolicy, interval: float, now: float, *, sends: bool = True) -> None:
        self.policy = policy
        self.interval = float(interval)
        self.enabled = policy.enabled and self.interval > 0
        self.sends = sends and self.enabled
        self.dead_after = policy.dead_after(self.interval) if self.enabled else 0.0
        self.send_interval = policy.send_interval(self.interval) if self.enabled else 0.0
        miss = MISSED_FACTOR * self.interval
        self.miss_after: float | None = miss if self.enabled and miss < self.dead_after else None
        # The widest a kernel-buffer observation may push inbound time back.
        self.bracket = max(0.0, (self.dead_after - self.interval) / 2.0)
        self.retry_delay = min(SEND_RETRY, self.send_interval / 4.0) if self.enabled else 0.0
        self.last_inbound = now
        self.last_outbound = now
        self.sent = 0
        self._retry_at: float | None = None
        self._before_send: float | None = None
        self._missed_reported = False
        self._marker: Hashable = None
        self._marker_seen = False
        self._marker_at = now

    # -- what was seen -----------------------------------------------------

    def note_inbound(self, at: float) -> None:
        """Inbound traffic was seen at time ``at`` (earlier times are ignored)."""
        if at > self.last_inbound:
            self.last_inbound = at
            self._missed_reported = False

    def note_outbound(self, at: float) -> None:
        """A frame was written at time ``at``: the next heartbeat can wait."""
        if at > self.last_outbound:
            self.last_outbound = at
            self._retry_at = None

    def observe(
        self,
        now: float,
        *,
        inbound_at: float | None = None,
        marker: Hashable = None,
        outbound_at: float | None = None,
    ) -> None:
        """Take in one observation of a connection, made at ``now``.

        ``inbound_at``/``outbound_at``: exact times of the last read/write by
        the connection's owner, when known. ``marker``: any value that changes
        when bytes arrive unread (None: not observed). A changed marker counts
        as inbound traffic at the earliest time that cannot cause a false alarm
        (see the module docstring).
        """
        if inbound_at is not None:
            self.note_inbound(min(inbound_at, now))
        if outbound_at is not None:
            self.note_outbound(min(outbound_at, now))
        if marker is not None:
            if self._marker_seen and marker != self._marker:
                self.note_inbound(max(self._marker_at, now - self.bracket))
            self._marker, self._marker_seen, self._marker_at = marker, True, now

    # -- deadlines -----------------------------------------------------------

    def next_send_at(self) -> float | None:
        """When the next heartbeat frame is due; None if this state never sends."""
        if not self.sends:
            return None
        due = self.last_outbound + self.send_interval
        if self._retry_at is not None:
            due = max(due, self._retry_at)
        return due

    def dead_at(self) -> float | None:
        """When the connection is dead if nothing arrives; None if heartbeats are off."""
        return self.last_inbound + self.dead_after if self.enabled else None

    def missed_at(self) -> float | None:
        """When a missed heartbeat is reported, if one is still to report."""
        if self.miss_after is None or self._missed_reported:
            return None
        return self.last_inbound + self.miss_after

    def next_wakeup(self) -> float | None:
        """The earliest deadline, or None when there is nothing to wait for."""
        times = [t for t in (self.next_send_at(), self.dead_at(), self.missed_at()) if t is not None]
        return min(times) if times else None

    # -- the decision ----------------------------------------------------------

    def decide(self, now: float) -> Decision:
        """What to do at ``now``.

        A ``SEND`` decision counts the frame as written at ``now``; if the
        caller could not write it, it calls :meth:`send_failed`.
        """
        self._before_send = None
        silent = now - self.last_inbound
        if not self.enabled:
            return Decision(Action.NOTHING, silent, None)
        # Compare against the very deadlines handed out as wake-up times, so a
        # runner that wakes at one always finds it reached.
        if now >= self.last_inbound + self.dead_after:
            return Decision(Action.DEAD, silent, None)
        missed = False
        missed_at = self.missed_at()
        if missed_at is not None and now >= missed_at:
            self._missed_reported = missed = True
        action = Action.NOTHING
        due = self.next_send_at()
        if due is not None and now >= due:
            action = Action.SEND
            self._before_send = self.last_outbound
            self.last_outbound = now
            self._retry_at = None
            self.sent += 1
        return Decision(action, silent, self.next_wakeup(), missed)

    def send_failed(self, now: float) -> float | None:
        """The frame of the last ``SEND`` could not be written; retry shortly.

        Returns the next wake-up time.
        """
        if self._before_send is not None:
            self.last_outbound = self._before_send
            self._before_send = None
            self.sent -= 1
        self._retry_at = now + self.retry_delay
        return self.next_wakeup()

    def __repr__(self) -> str:
        return (f"<HeartbeatState H={self.interval:g} dead_after={self.dead_after:g} "
                f"every={self.send_interval:.3g} in={self.last_inbound:.3f} "
                f"out={self.last_outbound:.3f}>")

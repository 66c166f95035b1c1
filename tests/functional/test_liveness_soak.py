"""Soak: healthy connections are never declared dead, idle or busy (T = 3 s).

Run it with::

    RHA_SOAK_SECONDS=600 pytest tests/functional/test_liveness_soak.py -m slow -s

(``tox -e figures`` runs it too, with every other figure; the duration comes
from ``RHA_SOAK_SECONDS``, 600 by default.) It is marked ``slow``: CI does not
run it.

How it works. Forty library connections with ``T = 3`` (so ``H = 1`` s and a
dead-after of 3 s, the tightest setting the policy allows with a whole-second
interval) are spread over the three nodes, each with its own queue, consumer
and OS thread, which is the connection's only user:

* 20 idle ones only drain their queue: nothing but heartbeats crosses them,
  which is where a too-eager liveness check would declare a healthy
  connection dead (the broker may be silent for almost ``H``);
* 20 busy ones publish a message to their own queue every
  ``1 / BUSY_RATE`` seconds (with a confirm) and drain between publishes, so
  the owner's reads and writes and the heartbeat scheduler's frames meet on
  the same sockets all the time.

All of them run under the one native heartbeat scheduler of the process.
After the soak, each idle connection must still carry a message end to end.
The test asserts no ``DeclaredDead`` event, no connection lost or reopened
(each connection connected exactly once) and no "missed heartbeats from
client" close in any node's log, and prints the figures: messages moved,
heartbeat frames sent, ``HeartbeatMissed`` reports (a silence over ``1.5 H``,
noted but not fatal) and the worst publish round trip.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.connection import Connection, Deadline
from rabbit_ha_driver.options import from_url

from .helpers.faults import OWN_QUEUES_DURABLE
from .helpers.probes import closing, rotate_url, unique

T = 3
IDLE = 20
BUSY = 20
#: Messages per second each busy connection publishes (and consumes).
BUSY_RATE = 5.0
SECONDS = float(os.environ.get("RHA_SOAK_SECONDS", "600"))
#: Heartbeat frames per interval: 3, so rate / H = 3 frames a second.
RATE = 3.0


class Member:
    """One soaked connection consuming its own queue, used by one OS thread only.

    ``busy`` members publish to that queue at ``BUSY_RATE`` and drain between
    publishes; idle ones only drain. Every error raised in the thread is kept
    (the thread carries on): the test fails on any.
    """

    def __init__(self, url: str, index: int, busy: bool, recorder: Callable[[ev.Event], None]) -> None:
        bus = ev.EventBus()
        bus.subscribe(recorder)
        bus.subscribe(ev.LogSubscriber())
        kind = "busy" if busy else "idle"
        self.conn = Connection(from_url(url, heartbeat_timeout_threshold=T, heartbeat_rate=RATE,
                                        request_timeout=5.0),
                               name=f"soak-{kind}-{index}", events=bus)
        self.busy = busy
        self.queue = unique(f"soak-{kind}")
        self.published = 0
        self.received: list[bytes] = []
        self.errors: list[str] = []
        self.worst_round_trip = 0.0
        self._stop = threading.Event()
        self.conn.set_qos()
        self.conn.declare_queue(self.queue, durable=OWN_QUEUES_DURABLE)
        self.conn.consume(self.queue, self._on_message, no_ack=True)
        self._thread = threading.Thread(target=self._run, name=self.conn.name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _on_message(self, message: Any) -> None:
        self.received.append(bytes(message.body))

    def _run(self) -> None:
        period = 1.0 / BUSY_RATE
        next_publish = time.monotonic()
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if self.busy and now >= next_publish:
                    self.conn.publish(b"m%d" % self.published, "", self.queue, deadline=Deadline.after(10))
                    self.worst_round_trip = max(self.worst_round_trip, time.monotonic() - now)
                    self.published += 1
                    next_publish += period
                wait = max(0.0, next_publish - time.monotonic()) if self.busy else 0.5
                self.conn.drain_events(min(wait, 0.5))
            except Exception as error:  # kept for the test to fail on, not swallowed
                self.errors.append(f"{type(error).__name__}: {error}")
                self._stop.wait(0.1)

    def heartbeats_sent(self) -> int:
        link = self.conn.liveness.link if self.conn.liveness is not None else None
        return link.heartbeats_sent if link is not None else 0

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        if wait:
            self._thread.join(timeout=10)

    def round_trip(self, body: bytes, within: float) -> bool:
        """Publish ``body`` and drain until it is consumed (after :meth:`stop`)."""
        self.conn.publish(body, "", self.queue, deadline=Deadline.after(within))
        end = time.monotonic() + within
        while body not in self.received and time.monotonic() < end:
            self.conn.drain_events(0.2)
        return body in self.received

    def drain_rest(self, within: float) -> None:
        """Drain until everything published was consumed (after :meth:`stop`)."""
        end = time.monotonic() + within
        while len(self.received) < self.published and time.monotonic() < end:
            self.conn.drain_events(0.2)

    def close(self) -> None:
        self.stop()
        self.conn.close()


@pytest.mark.slow
def test_soak_healthy_connections_are_never_declared_dead(cluster: Any) -> None:
    recorder = ev.Recorder()
    closes_before = cluster.missed_heartbeat_closes()
    members = [Member(rotate_url(cluster, i % len(cluster.nodes)), i, busy=i >= IDLE, recorder=recorder)
               for i in range(IDLE + BUSY)]
    idle, busy = members[:IDLE], members[IDLE:]
    with closing(*members):
        for m in members:
            m.start()
        beats_before = [m.heartbeats_sent() for m in idle]
        started = time.monotonic()
        time.sleep(SECONDS)
        soaked = time.monotonic() - started
        idle_beats = [m.heartbeats_sent() - b for m, b in zip(idle, beats_before, strict=True)]
        for m in members:
            m.stop(wait=False)
        for m in members:
            m.stop()
        # The idle connections still carry a message end to end, on the same socket.
        idle_ok = sum(m.round_trip(b"after-soak", 10) for m in idle)
        # Drain what the busy consumers still have in flight.
        for m in busy:
            m.drain_rest(5)
        closes = cluster.missed_heartbeat_closes() - closes_before

    dead = recorder.of(ev.DeclaredDead)
    lost = recorder.of(ev.ConnectionLost)
    connected = recorder.of(ev.Connected)
    missed = [e for e in recorder.events if isinstance(e, ev.HeartbeatMissed)]
    published = sum(m.published for m in busy)
    consumed = sum(len(m.received) for m in busy)
    errors = [e for m in members for e in m.errors]
    worst_silence = f" (longest silence {max(e.silent_for for e in missed):.2f}s)" if missed else ""
    print(f"soak, T={T}s, {IDLE} idle + {BUSY} busy connections ({BUSY_RATE:g} msg/s each) "
          f"for {soaked:.0f}s: declared dead {len(dead)}, reconnects {len(connected) - len(members)}, "
          f"connections lost {len(lost)}, broker missed-heartbeat closes {closes}, "
          f"heartbeat-missed reports {len(missed)}"
          f"{worst_silence}, "
          f"published {published}, consumed {consumed}, "
          f"worst publish round trip {max(m.worst_round_trip for m in busy):.3f}s, "
          f"heartbeats sent per idle connection during the soak min {min(idle_beats)} "
          f"max {max(idle_beats)} ({min(idle_beats) / soaked:.2f}/s), "
          f"idle connections working after the soak {idle_ok}/{IDLE}, "
          f"errors {len(errors)}")
    assert dead == [], dead[:5]
    assert lost == [], lost[:5]
    assert len(connected) == len(members), "a connection was reopened"
    assert closes == 0
    assert errors == [], errors[:5]
    assert idle_ok == IDLE
    # The busy connections really were busy: at least 80% of the nominal rate.
    assert published >= 0.8 * BUSY * BUSY_RATE * soaked
    assert consumed == published
    # Idle connections carry rate / H = 3 frames a second from us.
    assert min(idle_beats) >= 0.9 * RATE * soaked

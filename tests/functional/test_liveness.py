"""Liveness of the HA connection under silent drops, with T = 3 s.

* A consuming connection silently dropped by iptables is declared dead within
  T + 1 s of its last inbound byte and consumes again on a new connection.
* A publish-only connection with heartbeats off and TCP_USER_TIMEOUT 2 s,
  silently dropped while a publish waits for its confirm: the error surfaces
  within 3 s and the publish completes on a new connection.
* A blocked eventlet hub, with the library's own connection: see
  ``test_liveness_blocked_hub.py`` for the runner-level scenario.

CI runs each once with a margin; ``tox -e figures`` repeats them.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.connection import Connection, Deadline
from rabbit_ha_driver.options import from_url

from .helpers.probes import ConsumerUnderTest, Probe, closing, report, rotate_url, unique, wait_for

T = 3
REPEAT = 5


class Stamped:
    """Records (monotonic time, event)."""

    def __init__(self) -> None:
        self.events: list[tuple[float, ev.Event]] = []
        self._lock = threading.Lock()

    def __call__(self, event: ev.Event) -> None:
        with self._lock:
            self.events.append((time.monotonic(), event))

    def first(self, kind: type[ev.Event], after: float = 0.0) -> tuple[float, Any] | None:
        for at, event in list(self.events):
            if at >= after and isinstance(event, kind):
                return at, event
        return None


def drop_consumer(cluster: Any, silent_drop: Any) -> tuple[float, float]:
    """Silent drop of a consumer: (last inbound byte -> consuming again, drop -> consuming again)."""
    queue = unique("drop")
    consumer = ConsumerUnderTest(rotate_url(cluster, 0), queue, heartbeat_timeout_threshold=T)
    stamps = Stamped()
    consumer.conn.events.subscribe(stamps)
    probe = Probe(rotate_url(cluster, 1), queue, interval=0.05)
    with closing(probe, consumer):
        assert wait_for(lambda: consumer.first_after(0.0), 10)
        time.sleep(1.0)  # an idle stretch: only heartbeats flow
        dropped_at = time.monotonic()
        silent_drop(consumer.conn.local_port, cluster.nodes[0].port)
        dead = wait_for(lambda: stamps.first(ev.DeclaredDead, dropped_at), T + 5)
        assert dead, f"not declared dead; events: {[e for _, e in stamps.events][-8:]}"
        dead_at, dead_event = dead
        connected = wait_for(lambda: stamps.first(ev.Connected, dead_at), 10)
        assert connected, "no reconnect after the connection was declared dead"
        consuming_at = connected[0]
        last_inbound = dead_at - dead_event.silent_for
        assert consumer.conn.host.port != cluster.nodes[0].port
        # and messages flow again end to end
        assert wait_for(lambda: consumer.first_after(consuming_at), 10), "nothing consumed after recovery"
        return consuming_at - last_inbound, consuming_at - dropped_at


def test_silent_drop_of_a_consumer_is_noticed_within_t_plus_1(cluster, silent_drop):
    from_last_byte, from_drop = drop_consumer(cluster, silent_drop)
    print(f"silent drop (T={T}s): consuming again {from_last_byte:.3f}s after the last inbound byte "
          f"({from_drop:.3f}s after the drop)")
    assert from_last_byte <= T + 1 + 1.0  # CI margin for a loaded machine


@pytest.mark.slow
def test_figures_silent_drop_of_a_consumer(cluster, silent_drop):
    figures = []
    for _ in range(REPEAT):
        figures.append(drop_consumer(cluster, silent_drop)[0])
        silent_drop.remove_all()
    report(f"silent drop of a consumer, T={T}s, last inbound byte -> consuming again", figures, T + 1)
    assert max(figures) <= T + 1


def drop_publisher(cluster: Any, silent_drop: Any) -> tuple[float, float]:
    """Heartbeats off, user timeout 2 s: (drop -> error surfaced, drop -> publish confirmed)."""
    queue = unique("pubdrop")
    conn = Connection(
        from_url(rotate_url(cluster, 0), heartbeat_timeout_threshold=0, tcp_user_timeout=2.0,
                 request_timeout=30.0),
        name="func-publisher")
    stamps = Stamped()
    conn.events.subscribe(stamps)
    with closing(conn):
        conn.declare_queue(queue, durable=True)
        conn.publish(b"before", "", queue)
        dropped_at = time.monotonic()
        silent_drop(conn.local_port, cluster.nodes[0].port)
        conn.publish(b"x" * 65536, "", queue, deadline=Deadline.after(30), retry_uncertain=True)
        confirmed_at = time.monotonic()
        lost = stamps.first(ev.ConnectionLost, dropped_at)
        assert lost, "the publish succeeded without noticing the drop"
        assert conn.host.port != cluster.nodes[0].port
        return lost[0] - dropped_at, confirmed_at - dropped_at


def test_silent_drop_of_a_pending_publish_surfaces_within_3s(cluster, silent_drop):
    surfaced, confirmed = drop_publisher(cluster, silent_drop)
    print(f"publish-only, heartbeats off, TCP_USER_TIMEOUT 2s: error after {surfaced:.3f}s, "
          f"publish confirmed on a new connection after {confirmed:.3f}s")
    assert surfaced <= 3.0 + 1.0  # CI margin
    assert confirmed <= surfaced + 2.0


@pytest.mark.slow
def test_figures_silent_drop_of_a_pending_publish(cluster, silent_drop):
    figures = []
    for _ in range(REPEAT):
        figures.append(drop_publisher(cluster, silent_drop)[0])
        silent_drop.remove_all()
    report("silent drop of a pending publish, T=0, TCP_USER_TIMEOUT 2s, error surfaced", figures, 3.0)
    assert max(figures) <= 3.0

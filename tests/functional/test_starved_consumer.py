"""A consumer the broker does not deliver to, beside a live consumer of the same queue.

The broker can lose a consumer without a ``basic.cancel`` (seen in the chaos
run on a quorum queue after a node kill). With another server's consumer on
the queue the broker still counts a consumer, so only the ready messages that
never arrive show it. Here a proxy in front of one node drops every delivery
to the consumer under test (requests are still answered, heartbeats flow),
and a second consumer holds the one message its prefetch allows without
acknowledging it. The consumer under test must notice, consume again on a new
channel, and, found lost again there, move to another node and receive
everything.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.connection import Connection
from rabbit_ha_driver.options import from_url

from .helpers.faults import OWN_QUEUES_DURABLE
from .helpers.probes import ConsumerUnderTest, closing, unique, wait_for
from .helpers.swallow_proxy import DeliverySwallowProxy

MESSAGES = 30


def test_a_consumer_not_sent_ready_messages_consumes_again_elsewhere(cluster: Any) -> None:
    queue = unique("starved")
    proxy = DeliverySwallowProxy(cluster.nodes[0].port)
    others = ",".join(f"guest:guest@127.0.0.1:{n.port}" for n in cluster.nodes[1:])
    url = f"rabbit://guest:guest@127.0.0.1:{proxy.port},{others}/"
    starved = ConsumerUnderTest(url, queue, name="func-starved", consumer_check_interval=2.0,
                                rabbit_qos_prefetch_count=5, heartbeat_timeout_threshold=4)
    held: list[Any] = []
    holder = Connection(from_url(f"rabbit://guest:guest@127.0.0.1:{cluster.nodes[2].port}/"),
                        name="func-holder")
    publisher = Connection(from_url(f"rabbit://guest:guest@127.0.0.1:{cluster.nodes[1].port}/"),
                           name="func-publisher")
    stop = threading.Event()

    def hold() -> None:
        while not stop.is_set():
            holder.drain_events(0.05)

    drainer = threading.Thread(target=hold, daemon=True)
    with closing(starved, holder, publisher, proxy):
        try:
            holder.set_qos(1)
            holder.declare_queue(queue, durable=OWN_QUEUES_DURABLE)
            holder.consume(queue, held.append)  # takes one, never acknowledges it
            drainer.start()
            assert starved.conn.host is not None and starved.conn.host.port == proxy.port
            proxy.swallow()
            swallowed_at = time.monotonic()
            for n in range(MESSAGES):
                publisher.publish(f"m{n}".encode(), "", queue)
            assert wait_for(lambda: len(held) == 1, 10), "the holding consumer got nothing"
            assert wait_for(lambda: len(starved.received) >= MESSAGES - 1, 40), (
                f"received {len(starved.received)} of {MESSAGES - 1}; "
                f"events: {starved.recorder.events[-8:]}")
            took = starved.received[-1][0] - swallowed_at
            final_host = starved.conn.host
        finally:
            stop.set()
            drainer.join(5)
    lost = starved.recorder.of(ev.ConsumerLost)
    print(f"a consumer sent nothing while {MESSAGES - 1} messages were ready: all received "
          f"{took:.2f}s after its deliveries began to be dropped; ConsumerLost x{len(lost)}")
    assert lost and "ready in the queue" in lost[0].why
    assert final_host is not None and final_host.port != proxy.port, (
        "still on the node that drops deliveries")
    assert proxy.dropped_frames >= 1
    assert sorted(body for _, body in starved.received) == sorted(
        f"m{n}".encode() for n in range(MESSAGES) if f"m{n}".encode() != held[0].body)

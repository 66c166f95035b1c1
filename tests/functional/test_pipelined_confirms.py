"""Pipelined publisher confirms on the real cluster.

Messages written one after the other without waiting for each confirm must
each learn their own fate: acked ones report sent, a returned one is told
apart from its acked neighbours by its ``message_id``, a cast to a topic
nobody serves yet is sent again until a server appears, and nothing is
reported sent that the broker did not confirm.
"""

from __future__ import annotations

import threading
from typing import Any

import amqp

from rabbit_ha_driver.connection import Connection, Deadline
from rabbit_ha_driver.connection._confirms import Outcome
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.rpc import RPCClient, RPCServer

from .helpers.faults import OWN_QUEUES_DURABLE
from .helpers.probes import unique, wait_for


def ready_count(cluster: Any, queue: str) -> int:
    """Messages ready in ``queue``, from its ``declare-ok``."""
    with amqp.Connection(cluster.nodes[0].address, connect_timeout=5) as conn:
        conn.connect()
        return int(conn.channel().queue_declare(queue, passive=True).message_count)


class Counting:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[int] = []

    def record(self, ctxt: dict[str, Any], n: int) -> None:
        with self.lock:
            self.seen.append(n)


def test_a_return_among_acked_messages_is_told_apart(cluster: Any) -> None:
    conn = Connection(from_url(cluster.url()), name="pipelined-returns")
    queue = unique("pipelined")
    try:
        conn.declare_queue(queue, auto_delete=True, durable=OWN_QUEUES_DURABLE, deadline=Deadline.after(10))
        props = {"content_type": "text/plain"}
        pendings = []
        for i in range(200):
            # Every 50th message goes to a queue that does not exist.
            key = f"{queue}.missing" if i % 50 == 7 else queue
            pendings.append(conn.publish_nowait(f"m{i}".encode(), "", key, properties=props,
                                                deadline=Deadline.after(10)))
        for pending in pendings:
            conn.wait_confirm(pending, Deadline.after(10))
        outcomes = [p.outcome for p in pendings]
        returned = [i for i, outcome in enumerate(outcomes) if outcome is Outcome.RETURNED]
        assert returned == [7, 57, 107, 157]
        assert outcomes.count(Outcome.ACKED) == 196
        assert all(pendings[i].reply_code == 312 for i in returned)
        # Counted by the queue itself (a passive declare), not by the
        # management statistics, which lag behind under load.
        counts: list[int] = []
        assert wait_for(lambda: counts.append(ready_count(cluster, queue)) or counts[-1] == 196,
                        10, interval=0.2), f"queue {queue} holds {counts[-1:]} messages, not 196"
    finally:
        conn.close()


def test_cast_async_stream_is_confirmed_and_received_once_each(cluster: Any) -> None:
    settings = from_url(cluster.url())
    topic = unique("cast-async")
    endpoint = Counting()
    server = RPCServer(settings, topic, "s", [endpoint])
    server.start()
    client = RPCClient(settings, topic, timeout=30)
    try:
        receipts = [client.cast_async({}, "record", n=n) for n in range(2000)]
        assert all(receipt.result(30) for receipt in receipts)
        assert wait_for(lambda: len(endpoint.seen) >= 2000, 30, interval=0.05)
        assert sorted(endpoint.seen) == list(range(2000))
    finally:
        client.close()
        server.stop()
        server.wait(5)


def test_a_cast_to_a_topic_nobody_serves_yet_is_resent_until_one_does(cluster: Any) -> None:
    settings = from_url(cluster.url())
    topic = unique("cast-later")
    endpoint = Counting()
    client = RPCClient(settings, topic, timeout=20)
    server = RPCServer(settings, topic, "s", [endpoint])
    started = threading.Timer(0.5, server.start)
    try:
        receipt = client.cast_async({}, "record", n=1)
        started.start()
        assert receipt.result(20) is True
        started.join()
        assert wait_for(lambda: endpoint.seen == [1], 10, interval=0.05)
    finally:
        # The server must not start after the stop below, or nobody stops it.
        started.cancel()
        if started.is_alive():
            started.join()
        client.close()
        server.stop()
        server.wait(5)

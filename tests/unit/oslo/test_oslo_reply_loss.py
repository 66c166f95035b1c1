"""The oslo.messaging driver's calls: a reply that reached its queue while the
reply connection was down answers the call once the connection is back, also
for a call past its send budget (``retry=0``), which could not ask again."""

from __future__ import annotations

import threading
import time

import oslo_messaging as om
import pytest

from .test_oslo_driver import (  # noqa: F401 (fixtures)
    FAKE_URL,
    Endpoint,
    broker,
    closing,
    conf,
    serve,
    topic,
    transports,
)


class Slow(Endpoint):
    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.gate = threading.Event()

    def book(self, ctxt, seat):
        self.started.set()
        self.gate.wait(5)
        return f"{seat} booked"


def wait_until(predicate, seconds=3.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.mark.parametrize("retry", [None, 0])
def test_a_call_keeps_a_reply_that_reached_its_queue_during_the_outage(
        transports, serve, topic, broker, retry):  # noqa: F811
    endpoint = serve(transports(), endpoint=Slow())
    client_transport = transports()
    client = om.get_rpc_client(client_transport, om.Target(topic=topic), timeout=4, retry=retry)
    assert client.call({}, "echo", value=0)["value"] == 0  # both ends connected
    outcome = {}

    def call():
        try:
            outcome["r"] = client.call({}, "book", seat="3F")
        except Exception as error:
            outcome["r"] = error

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    assert endpoint.started.wait(3)
    listener = client_transport._driver._transport.reply_listener
    conn = listener._conn
    old = conn._channel
    broker.connect_gate = threading.Event()  # the reconnect waits
    conn._transport._generation = -1  # only the reply connection drops
    old._generation = -1
    broker.lose_consumers_of(old)  # the broker saw it go (a reset, a node restart)
    endpoint.gate.set()  # the reply reaches the queue
    assert wait_until(lambda: broker.queues[listener.queue].qsize() == 1)
    time.sleep(0.5)  # past send_by: retry=0 allows one attempt window (0.3 s here)
    broker.connect_gate.set()
    caller.join(6)
    assert outcome.get("r") == "3F booked", f"the call got {outcome.get('r')!r}"

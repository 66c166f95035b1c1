"""Channels the broker closes while the connection stays up.

RabbitMQ closes a *channel* and keeps the connection for a consumer that held
a delivery past ``consumer_timeout`` (406), for a publish to a missing
exchange (404), for an ack of an unknown delivery tag (406). Each test here
provokes one on the real cluster and checks that the connection ends with a
restored channel (consuming, confirming) on the same socket: never a
connection that looks healthy and no longer consumes or confirms, never a
reopened channel id that makes the broker close the whole connection.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import amqp
import pytest

import rabbit_ha_driver as rha
from rabbit_ha_driver import events as ev
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import Connection
from rabbit_ha_driver.connection._channel import ChannelState

from .helpers.faults import OWN_QUEUES_DURABLE, wait_until

#: The consumer timeout the broker applies during these tests, and how often
#: its channels check it (RabbitMQ checks on the channel tick, 60 s by default).
CONSUMER_TIMEOUT_MS = 1000
TICK_MS = 250


@contextlib.contextmanager
def consumer_timeout(cluster: Any, timeout_ms: int = CONSUMER_TIMEOUT_MS) -> Iterator[None]:
    """A short ``consumer_timeout`` on every node; channels opened inside see it."""
    def setenv(timeout: int, tick: int) -> None:
        for node in cluster.nodes:
            cluster.rabbitmqctl(node, "eval", f"application:set_env(rabbit, consumer_timeout, {timeout}), "
                                              f"application:set_env(rabbit, channel_tick_interval, {tick}).")
    setenv(timeout_ms, TICK_MS)
    try:
        yield
    finally:
        setenv(1_800_000, 60_000)


def _settings(node: Any, **query: Any) -> rha.Settings:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return rha.from_url(f"rabbit://guest:guest@127.0.0.1:{node.port}/?heartbeat_timeout_threshold=4{extra}")


def _publisher(node: Any) -> tuple[amqp.Connection, Any]:
    raw = amqp.Connection(f"127.0.0.1:{node.port}")
    raw.connect()
    return raw, raw.channel()


class _Timed(ev.Recorder):
    """A recorder that notes when each event happened."""

    def __init__(self) -> None:
        super().__init__()
        self.at: dict[int, float] = {}

    def __call__(self, event: ev.Event) -> None:
        self.at[id(event)] = time.monotonic()
        super().__call__(event)

    def when(self, kind: type[ev.Event]) -> float:
        return self.at[id(self.of(kind)[0])]


def _ack_timeout_round(cluster: Any, queue: str) -> dict[str, Any]:
    """Hold one delivery past the consumer timeout; return what the connection did."""
    node = cluster.nodes[0]
    recorder = _Timed()
    bus = ev.EventBus()
    bus.subscribe(recorder)
    conn = Connection(_settings(node), events=bus)
    raw, publisher = _publisher(node)
    got: list[Any] = []
    received_at: list[float] = []

    def on_message(message: Any) -> None:
        got.append(message)
        received_at.append(time.monotonic())

    try:
        with consumer_timeout(cluster):
            conn.declare_queue(queue, durable=OWN_QUEUES_DURABLE)
            conn.consume(queue, on_message)
            port = conn.local_port
            publisher.basic_publish(amqp.Message(b"held"), "", queue)
            wait_until(lambda: got or conn.drain_events(0.1), 10, "first delivery")
            # Drain without acking until the broker closes the channel.
            deadline = time.monotonic() + 15
            while not recorder.of(ev.ChannelClosedByBroker) and time.monotonic() < deadline:
                conn.drain_events(0.1)
            assert recorder.of(ev.ChannelClosedByBroker), "the broker never closed the channel"
            closed_at = recorder.when(ev.ChannelClosedByBroker)
            # The consumer is back: the held message comes again on the new channel.
            while not recorder.of(ev.ChannelRestored) and time.monotonic() < closed_at + 10:
                conn.drain_events(0.1)
            stale_ack = conn.ack(got[0])
            # Ack everything the new channel delivered, before the next timeout.
            redelivered = 0
            wait_until(lambda: len(got) > 1 or conn.drain_events(0.05), 5, "redelivery")
            # From the broker's close (as read) to the held message consumed again.
            restored_after = received_at[1] - closed_at
            for message in got[1:]:
                redelivered += conn.ack(message)
        # Normal timeout again: a new message is received and acked on the same socket.
        publisher.basic_publish(amqp.Message(b"after"), "", queue)
        wait_until(lambda: any(m.body == b"after" for m in got) or conn.drain_events(0.1), 5,
                   "a message published after the restore")
        after = next(m for m in got if m.body == b"after")
        acked_after = conn.ack(after)
        conn.drain_events(0.3)
        info = wait_until(lambda: (i := cluster.queue_info(queue)) and i.get("consumers") == 1
                          and i.get("messages_unacknowledged") == 0 and i, 10, "queue settled")
        return {
            "restored_after": restored_after, "stale_ack": stale_ack, "redelivered_acked": redelivered,
            "acked_after": acked_after, "same_socket": conn.local_port == port,
            "state": conn.state, "channel": conn.channel_state, "consumers": info["consumers"],
            "reconnects": len(recorder.of(ev.ConnectionLost)),
        }
    finally:
        conn.close()
        raw.close()


def test_consumer_ack_timeout_restores_the_channel(cluster: Any) -> None:
    result = _ack_timeout_round(cluster, "rha-ack-timeout")
    assert result["stale_ack"] is False          # never written on the new channel
    assert result["redelivered_acked"] >= 1
    assert result["acked_after"] is True
    assert result["same_socket"] and result["reconnects"] == 0
    assert result["state"] is rha.State.CONNECTED
    assert result["channel"] is ChannelState.OPEN
    assert result["consumers"] == 1
    # Restored at once (the contract allows kombu_reconnect_delay + 1 s).
    assert result["restored_after"] < 2.0


@pytest.mark.slow
def test_consumer_ack_timeout_figures(cluster: Any) -> None:
    """Five rounds; prints seconds from the broker's close to consuming again."""
    times = []
    for i in range(5):
        result = _ack_timeout_round(cluster, f"rha-ack-timeout-{i}")
        assert result["consumers"] == 1 and result["reconnects"] == 0
        times.append(result["restored_after"])
    print(f"\nconsumer ack timeout -> consuming again: min {min(times):.3f}s "
          f"median {statistics.median(times):.3f}s max {max(times):.3f}s over {len(times)} runs")
    assert max(times) < 2.0


def test_publish_to_missing_exchange_keeps_confirm_mode(cluster: Any) -> None:
    node = cluster.nodes[0]
    recorder = ev.Recorder()
    bus = ev.EventBus()
    bus.subscribe(recorder)
    conn = Connection(_settings(node, request_timeout=5), events=bus)
    try:
        conn.declare_queue("rha-live", durable=OWN_QUEUES_DURABLE)
        port = conn.local_port
        with pytest.raises(exc.IrrecoverableError) as refused:
            conn.publish(b"x", "rha-no-such-exchange", "k", deadline=rha.Deadline.after(3))
        assert refused.value.reply_code == 404
        # The next publish is confirmed at once on a restored channel, same socket.
        started = time.monotonic()
        conn.publish(b"y", "", "rha-live", deadline=rha.Deadline.after(3))
        took = time.monotonic() - started
        assert took < 1.0, f"publish after a 404 took {took:.2f}s"
        assert conn.local_port == port and not recorder.of(ev.ConnectionLost)
        assert conn.channel_state is ChannelState.OPEN
        assert len(recorder.of(ev.ChannelRestored)) == 1
        wait_until(lambda: (cluster.queue_info("rha-live") or {}).get("messages") == 1, 10, "message queued")
    finally:
        conn.close()


def test_missing_exchange_is_blamed_on_its_own_publisher_only(cluster: Any) -> None:
    """Two threads share a connection; one publishes to a missing exchange."""
    node = cluster.nodes[0]
    conn = Connection(_settings(node, request_timeout=5))
    errors: dict[str, list[BaseException]] = {"good": [], "bad": []}
    sent = {"good": 0}
    stop = threading.Event()
    try:
        conn.declare_queue("rha-live-2", durable=OWN_QUEUES_DURABLE)

        def good() -> None:
            while not stop.is_set():
                try:
                    conn.publish(b"g", "", "rha-live-2", deadline=rha.Deadline.after(3), retry_uncertain=True)
                    sent["good"] += 1
                except Exception as error:
                    errors["good"].append(error)

        thread = threading.Thread(target=good)
        thread.start()
        for _ in range(5):
            try:
                conn.publish(b"b", "rha-missing", "k", deadline=rha.Deadline.after(3))
            except exc.IrrecoverableError as error:
                errors["bad"].append(error)
            except exc.ConnectionLost as error:  # a pipelined confirm lost with the channel
                errors["bad"].append(error)
            time.sleep(0.2)
        stop.set()
        thread.join(10)
        assert len(errors["bad"]) == 5
        assert errors["good"] == [], errors["good"][:3]
        assert sent["good"] > 10
        assert conn.state is rha.State.CONNECTED and conn.channel_state is ChannelState.OPEN
    finally:
        stop.set()
        conn.close()


class _Slow:
    """An endpoint whose casts keep its only worker busy past the consumer timeout."""

    def __init__(self) -> None:
        self.handled: list[int] = []
        self.lock = threading.Lock()

    def slow(self, ctxt: dict[str, Any], n: int, seconds: float) -> None:
        time.sleep(seconds)
        with self.lock:
            self.handled.append(n)

    def echo(self, ctxt: dict[str, Any], word: str) -> str:
        return word


def test_a_busy_server_keeps_serving_through_consumer_timeouts(cluster: Any) -> None:
    """Every worker busy while prefetched requests wait past ``consumer_timeout``.

    The broker closes the server's channel (406); the server must consume
    again on a restored channel, handle each cast once, and answer calls.
    """
    from rabbit_ha_driver.rpc import RPCClient, RPCServer

    node = cluster.nodes[0]
    url = f"rabbit://guest:guest@127.0.0.1:{node.port}/?heartbeat_timeout_threshold=4"
    endpoint = _Slow()
    recorder = ev.Recorder()
    bus = ev.EventBus()
    bus.subscribe(recorder)
    with consumer_timeout(cluster):
        server = RPCServer(rha.from_url(url), "rha-busy", "busy-1", [endpoint], max_workers=1,
                           events=bus, start_timeout=10.0)
        server.start()
        client = RPCClient(rha.from_url(url), "rha-busy", timeout=30)
        try:
            for n in range(3):
                client.cast({}, "slow", n=n, seconds=1.5)
            wait_until(lambda: recorder.of(ev.ChannelClosedByBroker), 15, "a consumer timeout")
            assert client.call({}, "echo", word="still here") == "still here"
            wait_until(lambda: len(endpoint.handled) >= 3, 20, "every cast handled")
            time.sleep(1.0)
        finally:
            client.close()
            server.stop()
            server.wait(5.0)
    assert sorted(endpoint.handled) == [0, 1, 2], endpoint.handled   # each once
    assert recorder.of(ev.ChannelRestored)
    assert not recorder.of(ev.ConnectionLost)

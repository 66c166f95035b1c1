"""A caller's own deadline is not a broker fault.

A caller whose deadline is shorter than ``request_timeout`` can run out of
time while the broker is merely slow (a node paused for a moment, a busy
node). Two contracts meet there:

* the caller gets its :class:`MessagingTimeout` by its deadline (+ 0.5 s),
  even when recovering the channel would take longer;
* a healthy connection shared with other publishers is not torn down
  because one of them ran out of its own time: that turns every other
  message waiting for a confirm on it into an uncertain one (casts raise
  ConnectionLost although delivered, calls are sent twice).

The node is paused with SIGSTOP, well below the heartbeat timeout.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest

import rabbit_ha_driver as rha
from rabbit_ha_driver import events as ev
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import Connection, State

from .helpers.faults import OWN_QUEUES_DURABLE
from .helpers.probes import unique
from .test_deadlines import frozen


def _connection(node: Any, recorder: ev.Recorder, name: str) -> Connection:
    bus = ev.EventBus()
    bus.subscribe(recorder)
    bus.subscribe(ev.LogSubscriber())
    settings = rha.from_url(f"rabbit://guest:guest@127.0.0.1:{node.port}/",
                            heartbeat_timeout_threshold=30, request_timeout=5)
    return Connection(settings, name=unique(name), events=bus)


def test_a_confirm_slower_than_the_callers_deadline_raises_timeout_and_keeps_the_connection(
        cluster: Any) -> None:
    """Contract: ``publish``/``wait_confirm`` raise MessagingTimeout when the
    caller's deadline passes before the confirm, and a connection that is
    merely slow (silent for less than ``request_timeout``) is not dropped.

    Broken: wait_confirm reads under a request deadline capped at the
    caller's deadline, and takes the RequestTimeout it gets for a broker
    fault: the connection is torn down (ConnectionLost event, new socket)
    and the publish raises ConnectionLost, although the node was paused
    for 1.5 s against a request_timeout of 5 s."""
    node = cluster.nodes[0]
    recorder = ev.Recorder()
    conn = _connection(node, recorder, "slow-confirm")
    queue = unique("slow-confirm")
    try:
        conn.declare_queue(queue, durable=OWN_QUEUES_DURABLE)
        port = conn.local_port
        with frozen(cluster, node):
            with pytest.raises(exc.RabbitHAError) as raised:
                conn.publish(b"x", "", queue, deadline=rha.Deadline.after(0.5))
            time.sleep(1.0)
        conn.publish(b"y", "", queue, deadline=rha.Deadline.after(5.0))
        lost = [e.reason for e in recorder.of(ev.ConnectionLost)]
        assert isinstance(raised.value, exc.MessagingTimeout), repr(raised.value)
        assert not lost, f"a healthy connection was dropped: {lost}"
        assert conn.state is State.CONNECTED and conn.local_port == port
    finally:
        conn.close()


def test_a_channel_close_read_by_a_publish_is_restored_within_its_deadline(
        cluster: Any) -> None:
    """Contract: no public call returns later than its deadline + 0.5 s.

    A publish that reads a channel close after its write (here the broker's
    404 for an earlier publish to a missing exchange) restores the channel
    before it returns. Broken: that restore is bounded by
    ``request_timeout`` (5 s), not by the publish's deadline (1 s), so with
    a node that stops answering right after closing the channel the
    publish returns seconds late."""
    node = cluster.nodes[0]
    recorder = ev.Recorder()
    conn = _connection(node, recorder, "close-then-freeze")
    queue = unique("close-then-freeze")
    try:
        conn.declare_queue(queue, durable=OWN_QUEUES_DURABLE)
        conn.publish_nowait(b"refused", unique("missing-exchange"), "k")
        time.sleep(0.5)  # the broker's channel.close is now waiting in the socket
        with frozen(cluster, node):
            started = time.monotonic()
            with pytest.raises(exc.RabbitHAError):
                conn.publish(b"x", "", queue, deadline=rha.Deadline.after(1.0))
            took = time.monotonic() - started
        assert took <= 1.5, f"publish(deadline=1 s) returned after {took:.2f}s"
    finally:
        conn.close()


def test_a_channel_restored_while_a_consumer_cancel_waits_does_not_reconsume_twice(
        cluster: Any) -> None:
    """Contract: a channel closed by the broker ends restored on the same
    connection, never with the connection lost.

    The broker cancelled a consumer (its queue was deleted); the re-consume
    waits ``kombu_reconnect_delay``. Meanwhile the broker closes the channel
    (here over a publish to a missing exchange) and the restore replays the
    whole topology, that consumer included. Broken: the pending cancel is
    still noted, so when its delay is up the consumer is declared a second
    time with the same tag on the same channel, which RabbitMQ answers by
    closing the whole connection (530 NOT_ALLOWED, reuse of a consumer tag)."""
    node = cluster.nodes[0]
    recorder = ev.Recorder()
    bus = ev.EventBus()
    bus.subscribe(recorder)
    bus.subscribe(ev.LogSubscriber())
    settings = rha.from_url(f"rabbit://guest:guest@127.0.0.1:{node.port}/",
                            heartbeat_timeout_threshold=30, kombu_reconnect_delay=1.0)
    conn = Connection(settings, name=unique("cancel-then-close"), events=bus)
    queue = unique("cancel-then-close")
    got: list[bytes] = []
    try:
        conn.declare_queue(queue, durable=OWN_QUEUES_DURABLE)
        conn.consume(queue, lambda message: got.append(message.body))
        cluster.delete_queue(queue)
        deadline = time.monotonic() + 5
        while not recorder.of(ev.ConsumerCancelled) and time.monotonic() < deadline:
            conn.drain_events(0.1)
        assert recorder.of(ev.ConsumerCancelled), "the broker's basic.cancel was not seen"
        conn.publish_nowait(b"refused", unique("missing-exchange"), "k")
        deadline = time.monotonic() + 5
        while not recorder.of(ev.ChannelRestored) and time.monotonic() < deadline:
            conn.drain_events(0.1)
        assert recorder.of(ev.ChannelRestored), "the channel close was not seen"
        errors = []
        until = time.monotonic() + 2 * settings.kombu_reconnect_delay + 1
        while time.monotonic() < until:
            try:
                conn.drain_events(0.1)
            except exc.RabbitHAError as error:
                errors.append(error)
        conn.publish(b"after", "", queue, deadline=rha.Deadline.after(5.0))
        deadline = time.monotonic() + 5
        while b"after" not in got and time.monotonic() < deadline:
            conn.drain_events(0.1)
        lost = [e.reason for e in recorder.of(ev.ConnectionLost)]
        assert not errors and not lost, f"errors {errors}, connection lost: {lost}"
        assert got == [b"after"]
    finally:
        conn.close()


def test_a_publish_refused_over_an_exchange_the_connection_declared_is_told_apart(
        cluster: Any) -> None:
    """Contract (docs: a close over a publish is attributed precisely): after
    the broker closes a channel over a publish to a missing exchange, the
    oldest message to it is REFUSED and the messages written after it were
    DROPPED unread (safe to send again); none of them is LOST, whose
    meaning is "may have been delivered".

    Broken when the missing exchange is one the connection declared itself
    (the common case: a publisher declares the exchanges it sends to, and
    the issue's own example is a fanout exchange that went away): the
    channel restore replays the topology, which declares the exchange
    again before the passive probe looks for it, so the probe finds it and
    every waiting message is settled LOST: a cast that provably never
    arrived raises ConnectionLost ("may have been delivered"), a durable one
    is sent twice."""
    from rabbit_ha_driver.connection._confirms import Outcome

    node = cluster.nodes[0]
    recorder = ev.Recorder()
    conn = _connection(node, recorder, "refused-declared")
    exchange, queue = unique("gone-fanout"), unique("refused-declared")
    try:
        conn.declare_exchange(exchange, "fanout")
        conn.declare_queue(queue, durable=OWN_QUEUES_DURABLE)
        conn.bind(queue, exchange)
        cluster.api("DELETE", f"/api/exchanges/%2F/{exchange}")
        refused = conn.publish_nowait(b"refused", exchange, "")
        dropped = conn.publish_nowait(b"dropped", "", queue)
        conn.wait_confirm(dropped, rha.Deadline.after(5.0))
        conn.wait_confirm(refused, rha.Deadline.after(5.0))
        # The second one is ACKED when the close was read before it was
        # written (it then went out on the restored channel).
        assert refused.outcome is Outcome.REFUSED, refused
        assert dropped.outcome in (Outcome.DROPPED, Outcome.ACKED), dropped
    finally:
        conn.close()


class _SlowProxy:
    """A loopback proxy that delays every frame from the broker by ``delay``
    seconds (a slow, loaded broker: it answers, late)."""

    def __init__(self, target_port: int, delay: float) -> None:
        import socket
        import threading

        self._socket = socket
        self.delay = delay
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = self._socket.create_connection(self._target, timeout=5)
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.delay),
                             daemon=True).start()

    def _pipe(self, src: Any, dst: Any, delay: float) -> None:
        import contextlib
        import struct

        buffer = b""
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not delay:
                    dst.sendall(data)
                    continue
                buffer += data
                while len(buffer) >= 7:
                    size = struct.unpack(">BHI", buffer[:7])[2]
                    if len(buffer) < 8 + size:
                        break
                    frame, buffer = buffer[:8 + size], buffer[8 + size:]
                    time.sleep(delay)
                    dst.sendall(frame)

    def close(self) -> None:
        import contextlib

        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()


def test_connecting_to_a_slow_broker_keeps_the_callers_deadline(cluster: Any) -> None:
    """Contract: no public call returns later than its deadline + 0.5 s.

    The broker answers every frame 0.4 s late. A connect with a 1 s deadline
    must end (connected or MessagingTimeout) by 1.5 s. Broken: the AMQP
    handshake reads each frame with the whole connect budget (a per-read
    timeout, like py-amqp's, that every answer restarts), and the channel
    open and confirm.select get the budget computed before the connect
    started again, so the connect returns about 2 s after it began."""
    proxy = _SlowProxy(cluster.nodes[0].port, delay=0.4)
    settings = rha.from_url(f"rabbit://guest:guest@127.0.0.1:{proxy.port}/",
                            heartbeat_timeout_threshold=30)
    conn = Connection(settings, name=unique("slow-broker"))
    try:
        started = time.monotonic()
        with contextlib.suppress(exc.MessagingTimeout):
            conn.connect(rha.Deadline.after(1.0))
        took = time.monotonic() - started
        assert took <= 1.5, f"connect(deadline=1 s) returned after {took:.2f}s ({conn.state})"
    finally:
        conn.close()
        proxy.close()

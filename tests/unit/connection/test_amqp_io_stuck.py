"""Connections that are stuck must not cost the others, nor look dead when they are not.

* A busy write guard (its owner is writing) makes the native scheduler move
  on at once: with one thread serving every connection, any wait there would
  delay every other connection's heartbeats.
* A receive buffer that nobody reads shuts the TCP window, so the peer cannot
  send even heartbeats; its TCP acknowledgements of ours then show it lives.

Real loopback sockets; time is a fake clock (a contended timed wait of the
guard's lock costs fake time, as a real one costs real time).
"""

from __future__ import annotations

import select
import socket
import struct
import sys
import types
from typing import Any

import amqp.transport
import pytest

from rabbit_ha_driver.clock import FakeClock
from rabbit_ha_driver.connection import _runners as runners
from rabbit_ha_driver.connection._amqp_link import AmqpLink
from rabbit_ha_driver.connection._frames import HEARTBEAT_FRAME
from rabbit_ha_driver.connection._heartbeat import HeartbeatPolicy
from rabbit_ha_driver.connection._runners import NativeScheduler

from .test_amqp_io import StubConnection, recv_exactly

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux TCP_INFO")


class TimedLock:
    """A native lock whose contended timed wait moves the fake clock by the timeout."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.held = False
        self.waited = 0.0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self.held:
            self.held = True
            return True
        if not blocking:
            return False
        assert timeout is not None and timeout >= 0, "would wait for ever"
        self.clock.advance(timeout)
        self.waited += timeout
        return False

    def release(self) -> None:
        self.held = False

    def locked(self) -> bool:
        return self.held

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def natives_with(clock: FakeClock, locks: list[TimedLock]) -> runners.Natives:
    real = runners.native_modules()

    def make_lock() -> TimedLock:
        locks.append(TimedLock(clock))
        return locks[-1]

    fake_threading = types.SimpleNamespace(Lock=make_lock)
    return runners.Natives(False, fake_threading, real.select, real.os, real.time)  # type: ignore[arg-type]


class Pair:
    """A py-amqp TCP transport and the 'broker' end of its loopback connection."""

    def __init__(self) -> None:
        server = socket.create_server(("127.0.0.1", 0))
        host, port = server.getsockname()
        self.transport = amqp.transport.TCPTransport(f"{host}:{port}", connect_timeout=5)
        self.transport.connect()
        self.peer, _ = server.accept()
        server.close()
        self.peer.settimeout(5)
        assert recv_exactly(self.peer, 8) == b"AMQP\x00\x00\x09\x01"

    def close(self) -> None:
        self.transport.close()
        self.peer.close()


@pytest.fixture
def pairs():
    made: list[Pair] = []

    def make() -> Pair:
        made.append(Pair())
        return made[-1]

    yield make
    for pair in made:
        pair.close()


@pytest.fixture
def clock():
    return FakeClock(0.0)


class Timed:
    """A link as the scheduler sees it, noting when each heartbeat was written."""

    def __init__(self, link: AmqpLink, clock: FakeClock) -> None:
        self.link = link
        self.clock = clock
        self.sent_at: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.link, name)

    def send_heartbeat(self, native: bool) -> bool:
        written = self.link.send_heartbeat(native)
        if written:
            self.sent_at.append(self.clock.now())
        return bool(written)


def test_busy_connections_never_delay_the_heartbeats_of_the_others(pairs, clock):
    locks: list[TimedLock] = []
    natives = natives_with(clock, locks)
    sched = NativeScheduler(clock=clock)
    policy = HeartbeatPolicy(threshold=6, rate=3)  # H = 3 s, a frame every second
    members = []
    for i in range(6):
        pair = pairs()
        link = AmqpLink(StubConnection(pair.transport, heartbeat=3), name=f"c{i}",
                        clock=clock, natives=natives).install()
        members.append((Timed(link, clock), pair))
    for member, _ in members:  # the free one last: served after the busy ones
        sched.watch(member, policy)
    for lock in locks[:5]:
        lock.held = True  # their owners are in the middle of a write
    while (wake := sched.run_pending()) is not None and wake <= 5.0:
        clock.advance(wake - clock.now())
    free, pair = members[-1]
    assert free.sent_at == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert recv_exactly(pair.peer, 40) == HEARTBEAT_FRAME * 5
    assert all(lock.waited == 0 for lock in locks)
    assert all(member.sent_at == [] for member, _ in members[:5])


# -- a receive buffer nobody reads ---------------------------------------------------


def fill(sender: socket.socket) -> int:
    """Send until the kernel takes no more: the receiver's window is shut."""
    sender.setblocking(False)
    sent = 0
    try:
        while True:
            sent += sender.send(b"\x01" * 65536)
    except BlockingIOError:
        pass
    return sent


def unacked(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 24)[0])  # tcpi_unacked


def wait_acked(sock: socket.socket) -> bool:
    """Wait for the peer's kernel to acknowledge what is in flight (an event, on loopback).

    Our heartbeats either went out (the peer's kernel acknowledges them
    promptly) or could not be sent (a full send buffer: nothing in flight).
    """
    for _ in range(500):
        if unacked(sock) == 0:
            return True
        select.select([], [], [], 0.01)
    return False


def run_observing(sched: NativeScheduler, clock: FakeClock, sock: socket.socket, until: float) -> None:
    while (wake := sched.run_pending()) is not None and wake <= until:
        assert wait_acked(sock)
        clock.advance(wake - clock.now())


@linux_only
def test_a_full_receive_buffer_that_nobody_reads_is_not_a_dead_peer(pairs, clock):
    pair = pairs()
    link = AmqpLink(StubConnection(pair.transport, heartbeat=3), name="svc", clock=clock).install()
    assert fill(pair.peer) > 0  # the broker sent more than we read: our window is shut
    assert (link.unread_bytes() or 0) >= link.full_at()
    sched = NativeScheduler(clock=clock)
    watch = sched.watch(link, HeartbeatPolicy(threshold=6, rate=3))
    run_observing(sched, clock, pair.transport.sock, until=20.0)  # > 3 T
    assert not link.dead and not watch.dead, link.dead_reason
    assert link.heartbeats_sent >= 15
    link.detach()


@linux_only
def test_a_full_receive_buffer_of_a_peer_that_stopped_acknowledging_is_dead_at_t(pairs, clock):
    pair = pairs()
    link = AmqpLink(StubConnection(pair.transport, heartbeat=3), name="svc", clock=clock).install()
    fill(pair.peer)
    fill(pair.transport.sock)  # and the peer reads nothing either: our frames go nowhere
    sched = NativeScheduler(clock=clock)
    watch = sched.watch(link, HeartbeatPolicy(threshold=6, rate=3))
    run_observing(sched, clock, pair.transport.sock, until=20.0)
    assert watch.dead and link.dead
    assert link.dead_reason is not None and link.dead_reason.startswith("nothing received for 6.0s")
    assert (link.unread_bytes() or 0) >= link.full_at()


@linux_only
def test_a_few_unread_bytes_are_not_a_full_buffer(pairs, clock):
    # An idle connection nobody reads gathers the broker's heartbeats; those
    # alone must not hide a peer that went silent.
    pair = pairs()
    link = AmqpLink(StubConnection(pair.transport, heartbeat=3), name="svc", clock=clock).install()
    pair.peer.sendall(HEARTBEAT_FRAME * 3)
    select.select([pair.transport.sock], [], [], 5)
    assert link.inbound_marker() == (0, 24)
    sched = NativeScheduler(clock=clock)
    watch = sched.watch(link, HeartbeatPolicy(threshold=6, rate=3))
    run_observing(sched, clock, pair.transport.sock, until=20.0)
    assert watch.dead
    link.detach()

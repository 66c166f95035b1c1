"""The py-amqp link's edges on a loopback socket: detach after a fork or a later
replacement, a socket that is gone, a dead link, a corrupt frame read ahead."""

from __future__ import annotations

import os
import socket
import types
from collections.abc import Iterator

import amqp.transport
import pytest
from amqp.exceptions import UnexpectedFrame

from rabbit_ha_driver import from_url
from rabbit_ha_driver.clock import FakeClock
from rabbit_ha_driver.connection import _runners as runners
from rabbit_ha_driver.connection._amqp_link import AmqpLink
from rabbit_ha_driver.connection._frames import HEARTBEAT_FRAME
from rabbit_ha_driver.connection._liveness import Liveness
from rabbit_ha_driver.connection._native_runner import NativeScheduler
from rabbit_ha_driver.connection._readahead import buffered_frame_reader

from .test_amqp_io import StubConnection, recv_exactly


@pytest.fixture
def tcp() -> Iterator[tuple[amqp.transport.TCPTransport, socket.socket]]:
    """A connected py-amqp TCP transport and the 'broker' end of it."""
    server = socket.create_server(("127.0.0.1", 0))
    host, port = server.getsockname()
    transport = amqp.transport.TCPTransport(f"{host}:{port}", connect_timeout=5)
    transport.connect()
    peer, _ = server.accept()
    server.close()
    peer.settimeout(5)
    assert recv_exactly(peer, 8) == b"AMQP\x00\x00\x09\x01"
    yield transport, peer
    transport.close()
    peer.close()


def test_detach_in_a_forked_child_leaves_the_transport_alone(tcp):
    transport, _ = tcp
    link = AmqpLink(StubConnection(transport), name="svc").install()
    ours = transport._write
    link._pid = os.getpid() + 1  # as if this process were the child of the one that installed it
    link.detach()
    # The guard may be held by a parent's thread that does not exist here: not touched.
    assert transport._write is ours and not link.guard.closed


def test_detach_keeps_what_someone_else_installed_since(tcp):
    transport, _ = tcp
    link = AmqpLink(StubConnection(transport), name="svc").install()

    def theirs(data: bytes) -> None:
        transport.sock.sendall(data)

    recv = transport._quick_recv
    transport._write = theirs
    link.detach()
    assert transport._write is theirs
    assert transport._quick_recv is not recv and transport._quick_recv == transport.sock.recv


def test_a_closed_socket_has_no_unread_bytes_to_report(tcp):
    transport, _ = tcp
    link = AmqpLink(StubConnection(transport), name="svc").install()
    link._raw.close()
    assert link.unread_bytes() is None
    assert link.pending_bytes() is None
    assert link.inbound_marker() == (0, None)
    link.detach()


def test_a_full_receive_buffer_adds_the_peers_acknowledgements_to_the_marker(tcp):
    transport, peer = tcp
    link = AmqpLink(StubConnection(transport), name="svc").install()
    assert link.full_at() >= 1
    peer.sendall(HEARTBEAT_FRAME * (link.full_at() // 8 + 1))
    for _ in range(1000):
        if (link.unread_bytes() or 0) >= link.full_at():
            break
        assert transport.sock.recv(0, socket.MSG_PEEK) == b""  # a system call, not a sleep
    marker = link.inbound_marker()
    assert len(marker) == 3  # frames, pending bytes, bytes the peer acknowledged
    link.detach()


def test_a_dead_or_detached_link_sends_nothing_from_the_owner(tcp):
    transport, _ = tcp
    clock = FakeClock(10.0)
    link = AmqpLink(StubConnection(transport), name="svc", clock=clock).install()
    link.declare_dead(5.0, "test")
    clock.advance(60.0)
    assert link.heartbeat_if_due(1.0) is False
    assert "dead" in repr(link)
    link.detach()
    link.note_blocked()  # after detach: nothing to lift
    assert not link.blocked


def test_a_corrupt_frame_read_ahead_is_refused():
    buffered = types.SimpleNamespace(_read_buffer=HEARTBEAT_FRAME[:-1] + b"\x00" + HEARTBEAT_FRAME)
    read = buffered_frame_reader(buffered, lambda: pytest.fail("the frame was buffered whole"))
    with pytest.raises(UnexpectedFrame, match="frame_end 0x00"):
        read()
    assert read() == (8, 0, b"")  # the stream after it is intact


def test_liveness_reports_why_its_link_died(tcp, monkeypatch):
    transport, _ = tcp
    clock = FakeClock(0.0)
    sched = NativeScheduler(clock=clock)
    monkeypatch.setattr(runners, "native_scheduler", lambda: sched)
    settings = from_url("rabbit://127.0.0.1:5672/", heartbeat_timeout_threshold=6)
    live = Liveness(settings, name="svc", clock=clock)
    link = live.attach(StubConnection(transport, heartbeat=3))
    assert live.dead_reason is None
    link.declare_dead(1.0, "killed by the test")
    assert live.dead_reason == "killed by the test"
    live.detach()
    assert live.dead_reason == "killed by the test"

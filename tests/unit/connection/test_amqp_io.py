"""The py-amqp integration on a real loopback socket: write guard, observation, wake-up."""

from __future__ import annotations

import select
import socket
import struct
import sys
import threading

import amqp.transport
import pytest
from amqp.method_framing import frame_writer

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import from_url
from rabbit_ha_driver.clock import FakeClock
from rabbit_ha_driver.connection import _amqp_io as amqp_io
from rabbit_ha_driver.connection import _runners as runners
from rabbit_ha_driver.connection import _sockets as sockets
from rabbit_ha_driver.connection._amqp_link import AmqpLink
from rabbit_ha_driver.connection._frames import HEARTBEAT_FRAME
from rabbit_ha_driver.connection._liveness import Liveness
from rabbit_ha_driver.connection._runners import NativeScheduler
from rabbit_ha_driver.connection._write_guard import WriteGuard

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux TCP options")


class StubConnection:
    """What AmqpLink uses of an amqp.Connection, with py-amqp's real frame writer."""

    def __init__(self, transport: amqp.transport._AbstractTransport, heartbeat: float = 1.0) -> None:
        self.transport = transport
        self.heartbeat = heartbeat
        self.bytes_recv = 0
        self.bytes_sent = 0
        self.frame_max = 131072
        self.connected = True
        self.frame_writer = frame_writer(self, transport)

    def send_heartbeat(self) -> None:
        self.frame_writer(8, 0, None, None, None)


@pytest.fixture
def broker():
    """A loopback 'broker' socket and a connected py-amqp TCP transport."""
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


@pytest.fixture
def clock():
    return FakeClock(50.0)


@pytest.fixture
def link(broker, clock):
    transport, _ = broker
    lk = AmqpLink(StubConnection(transport), name="svc", clock=clock).install()
    yield lk
    lk.detach()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(data)
        data += chunk
    return data


def wait_readable(sock: socket.socket) -> None:
    """Wait for bytes in flight on loopback (an event, not a span of time)."""
    assert select.select([sock], [], [], 5)[0]


def parse_frames(stream: bytes) -> list[tuple[int, int, int]]:
    frames, i = [], 0
    while i < len(stream):
        ftype, channel, size = struct.unpack(">BHI", stream[i:i + 7])
        assert stream[i + 7 + size] == 0xCE, f"frame at {i} not terminated: stream corrupt"
        frames.append((ftype, channel, size))
        i += 8 + size
    assert i == len(stream)
    return frames


def test_link_describes_the_connection(link, broker):
    transport, _ = broker
    assert link.host == f"127.0.0.1:{transport.port}"
    assert link.heartbeat_interval == 1.0
    assert link.native_heartbeats and not link.tls
    assert "svc" in repr(link) and "live" in repr(link)


def test_native_heartbeat_reaches_the_broker_whole(link, broker):
    _, peer = broker
    assert link.send_heartbeat(native=True)
    assert recv_exactly(peer, 8) == HEARTBEAT_FRAME
    assert link.heartbeats_sent == 1


def test_owner_heartbeat_goes_through_py_amqp_and_the_guard(link, broker, clock):
    _, peer = broker
    clock.advance(2.0)
    assert link.send_heartbeat(native=False)
    assert recv_exactly(peer, 8) == HEARTBEAT_FRAME
    assert link.last_outbound_at() == 52.0
    assert link.connection.bytes_sent == 1


def test_every_owner_write_holds_the_guard(broker):
    transport, _ = broker
    inner = transport._write
    seen: list[bool] = []
    links: list[AmqpLink] = []

    def spy(data):
        seen.append(links[0].guard.busy)
        return inner(data)

    transport._write = spy
    lk = AmqpLink(StubConnection(transport), name="svc").install()
    links.append(lk)
    lk.connection.send_heartbeat()  # py-amqp's frame writer -> transport.write -> _write
    assert seen == [True]
    assert not lk.guard.busy
    lk.detach()
    assert transport._write is spy


def test_native_write_gives_up_at_once_while_the_owner_writes(link, broker):
    _, peer = broker
    with link.guard.hold():
        assert link.guard.write_native(link._raw, HEARTBEAT_FRAME, wait=0) is False
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(1)


def test_native_write_never_blocks_on_a_full_send_buffer(link, broker):
    transport, peer = broker
    sock = transport.sock
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    filler = 0
    while True:  # fill our send queue and the peer's receive queue
        try:
            filler += sock.send(b"x" * 65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
    assert link.send_heartbeat(native=True) is False
    assert link.heartbeats_sent == 0
    # Nothing of a heartbeat went out: the peer finds exactly the filler.
    peer.settimeout(0.5)
    got = 0
    while got < filler:
        chunk = peer.recv(1 << 20)
        assert set(chunk) == {ord("x")}
        got += len(chunk)
    assert got == filler
    assert link.send_heartbeat(native=True)
    assert recv_exactly(peer, 8) == HEARTBEAT_FRAME


def test_concurrent_writers_never_interleave_inside_a_frame(link, broker):
    transport, peer = broker
    received = bytearray()
    done = threading.Event()

    def drain():  # until the writers are done and the stream ends
        peer.settimeout(10)
        while chunk := peer.recv(1 << 20):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    body = b"b" * 60000
    heartbeats = 0

    def beat():
        nonlocal heartbeats
        while not done.is_set():
            if link.send_heartbeat(native=True):
                heartbeats += 1

    beater = threading.Thread(target=beat)
    beater.start()
    try:
        for _ in range(300):
            transport.write(struct.pack(">BHI", 3, 1, len(body)) + body + b"\xce")
    finally:
        done.set()
        beater.join(10)
        transport.sock.shutdown(socket.SHUT_WR)
        reader.join(10)
    frames = parse_frames(bytes(received))
    assert frames.count((3, 1, len(body))) == 300
    assert frames.count((8, 0, 0)) == heartbeats > 0


def test_reads_by_the_owner_are_timed_and_counted(link, broker, clock):
    transport, peer = broker
    assert link.last_inbound_at() is None
    peer.sendall(HEARTBEAT_FRAME)
    clock.advance(3.0)
    assert transport.read_frame() == (8, 0, b"")
    assert link.last_inbound_at() == 53.0
    assert link.bytes_in == 8


def test_unread_bytes_change_the_marker(link, broker):
    transport, peer = broker
    before = link.inbound_marker()
    assert before == (0, 0)
    peer.sendall(HEARTBEAT_FRAME * 2)
    wait_readable(transport.sock)
    assert link.pending_bytes() == 16
    assert link.inbound_marker() != before
    transport.read_frame()
    assert link.pending_bytes() == 8


def test_declare_dead_wakes_a_blocked_reader(link, broker):
    transport, _ = broker
    errors = []
    started = threading.Event()

    def owner():
        started.set()
        try:
            transport.read_frame()
        except OSError as error:
            errors.append(error)

    reader = threading.Thread(target=owner)
    reader.start()
    started.wait(5)
    link.declare_dead(30.0, "nothing received for 30.0s")
    reader.join(10)
    assert not reader.is_alive()
    assert errors and "closed" in str(errors[0])
    assert link.dead and link.dead_reason == "nothing received for 30.0s" and link.silent_for == 30.0
    link.declare_dead(1.0, "again")  # idempotent
    assert link.dead_reason == "nothing received for 30.0s"
    with pytest.raises(OSError):
        link.send_heartbeat(native=True)


def test_detach_restores_py_amqp_and_refuses_native_writes(broker):
    transport, _ = broker
    write, recv = transport._write, transport._quick_recv
    lk = AmqpLink(StubConnection(transport), name="svc").install()
    assert transport._write is not write and transport._quick_recv is not recv
    assert lk.install() is lk  # installing twice is a no-op
    lk.detach()
    lk.detach()
    assert transport._write == write and transport._quick_recv == recv
    assert lk.guard.closed
    with pytest.raises(OSError):
        lk.send_heartbeat(native=True)
    with pytest.raises(OSError, match="detached"):
        lk.guard.write_native(lk._raw, HEARTBEAT_FRAME)
    lk.declare_dead(1.0, "late")  # after detach: recorded, socket untouched
    assert transport.sock.fileno() >= 0
    assert "detached" in repr(lk) or "dead" in repr(lk)


@linux_only
def test_blocked_connection_lifts_the_user_timeout(link, broker):
    transport, _ = broker
    sockets.apply(transport.sock, sockets.derive(4))
    link.note_blocked()
    link.note_blocked()
    assert sockets.user_timeout(transport.sock) == 0.0
    link.note_unblocked()
    link.note_unblocked()
    assert sockets.user_timeout(transport.sock) == 5.0


def test_owner_sends_heartbeats_when_due(link, broker, clock):
    _, peer = broker
    assert not link.heartbeat_if_due(5.0)  # just installed: nothing due yet
    clock.advance(5.0)
    assert link.heartbeat_if_due(5.0)
    assert recv_exactly(peer, 8) == HEARTBEAT_FRAME
    assert not link.heartbeat_if_due(5.0)
    link.connection.connected = False
    clock.advance(10.0)
    with pytest.raises(OSError):
        link.heartbeat_if_due(5.0)


class FakeTLSTransport(amqp.transport.SSLTransport):
    """An SSLTransport in type only, around a plain socket: nothing ``tls_io`` can guard."""

    def __init__(self, sock: socket.socket, port: int) -> None:
        self.sock = sock
        self.host, self.port = "127.0.0.1", port
        self._write = sock.sendall
        self._quick_recv = sock.recv
        self._read_buffer = b""
        self.connected = True


def test_a_tls_socket_it_cannot_guard_is_never_written_by_a_native_thread(broker):
    transport, peer = broker
    tls = FakeTLSTransport(transport.sock, transport.port)
    lk = AmqpLink(StubConnection(tls), name="svc").install()
    assert lk.tls and not lk.native_heartbeats
    assert lk.send_heartbeat(native=True) is False
    assert lk.send_heartbeat(native=False)  # the owner may
    assert recv_exactly(peer, 8) == HEARTBEAT_FRAME
    lk.detach()


def test_raw_socket_of_plain_and_green_sockets(broker):
    transport, _ = broker
    assert amqp_io.raw_socket(transport.sock) is transport.sock
    greenio = pytest.importorskip("eventlet.greenio")
    plain = socket.socket()
    try:
        assert amqp_io.raw_socket(greenio.GreenSocket(plain)) is plain
    finally:
        plain.close()
    with pytest.raises(TypeError):
        amqp_io.raw_socket(object())


def test_cooperative_guard_yields_to_other_green_threads():
    eventlet = pytest.importorskip("eventlet")
    guard = WriteGuard(cooperative=True)
    order = []

    def owner():
        with guard.hold():
            order.append("owner")

    with guard.hold():
        eventlet.spawn(owner)
        for _ in range(5):
            eventlet.sleep(0)
        order.append("native done")
    for _ in range(1000):
        if "owner" in order:
            break
        eventlet.sleep(0.001)
    assert order == ["native done", "owner"]


# -- Liveness: the calls an HA connection makes -----------------------------------


@pytest.fixture
def private_scheduler(monkeypatch, clock):
    sched = NativeScheduler(clock=clock)
    monkeypatch.setattr(runners, "native_scheduler", lambda: sched)
    return sched


@linux_only
def test_liveness_end_to_end_with_a_fake_clock(broker, clock, private_scheduler):
    transport, peer = broker
    bus, rec = ev.EventBus(), ev.Recorder()
    bus.subscribe(rec)
    settings = from_url("rabbit://127.0.0.1:5672/", heartbeat_timeout_threshold=4,
                        heartbeat_rate=3)
    live = Liveness(settings, name="svc", events=bus, clock=clock)
    assert live.heartbeat == 2
    assert live.transport_options()["socket_settings"][socket.TCP_USER_TIMEOUT] == 5000
    link = live.attach(StubConnection(transport, heartbeat=live.heartbeat))
    assert live.in_force == sockets.derive(4)
    assert [type(e) for e in rec.events] == [ev.RunnerSelected]
    assert not live.owner_sends and live.owner_wait() is None and not live.owner_tick()
    # One frame every H/3 while the broker is silent, then dead at T.
    sched = private_scheduler
    while (wake := sched.run_pending()) is not None:
        clock.advance(wake - clock.now())
    assert recv_exactly(peer, 48) == HEARTBEAT_FRAME * 6
    assert link.dead and (live.dead_reason or "").startswith("nothing received for 4.0s")
    assert [type(e) for e in rec.events][-1] is ev.DeclaredDead
    live.blocked()
    live.unblocked()
    live.detach()
    assert live.link is None and (live.dead_reason or "").startswith("nothing received")


def test_liveness_over_an_unguardable_tls_socket_leaves_heartbeats_to_the_owner(broker, clock,
                                                                              private_scheduler):
    transport, peer = broker
    settings = from_url("rabbit://127.0.0.1:5672/", heartbeat_timeout_threshold=6, heartbeat_rate=3)
    live = Liveness(settings, name="svc", clock=clock)
    live.attach(StubConnection(FakeTLSTransport(transport.sock, transport.port), heartbeat=3))
    assert live.owner_sends
    assert live.owner_wait() == pytest.approx(1.0)
    clock.advance(1.0)
    assert live.owner_tick()
    assert recv_exactly(peer, 8) == HEARTBEAT_FRAME
    live.detach()
    assert not live.owner_tick() and live.dead_reason is None


def test_liveness_with_heartbeats_off_only_tunes_the_socket(broker, clock, private_scheduler):
    transport, _ = broker
    live = Liveness(from_url("rabbit://h/", heartbeat_timeout_threshold=0), name="svc", clock=clock)
    assert live.heartbeat == 0
    live.attach(StubConnection(transport, heartbeat=0))
    assert live.watch is None and live.link is not None
    assert live.in_force is not None and live.in_force.keepidle == 60
    assert len(private_scheduler) == 0
    live.detach()

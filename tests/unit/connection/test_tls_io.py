"""Heartbeats from the native thread over a real TLS connection on loopback.

A py-amqp ``SSLTransport`` talks to a TLS 'broker' socket in this process (a
throw-away self-signed certificate made with the ``openssl`` program). The
link guards every use of the SSL object, so the native thread may write
heartbeat records while the owner reads and writes.
"""

from __future__ import annotations

import select
import shutil
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import amqp.transport
import pytest

from rabbit_ha_driver import from_url
from rabbit_ha_driver.clock import FakeClock
from rabbit_ha_driver.connection import _runners as runners
from rabbit_ha_driver.connection import _tls_io as tls_io
from rabbit_ha_driver.connection._amqp_link import AmqpLink
from rabbit_ha_driver.connection._frames import HEARTBEAT_FRAME
from rabbit_ha_driver.connection._liveness import Liveness
from rabbit_ha_driver.connection._runners import NativeScheduler

from .test_amqp_io import StubConnection, parse_frames, recv_exactly


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl program is needed to make a test certificate (apt-get install openssl)")
    where = tmp_path_factory.mktemp("tls")
    cert, key = str(where / "cert.pem"), str(where / "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", key, "-out", cert, "-subj", "/CN=localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
def tls_broker(certificate) -> Iterator[tuple[amqp.transport.SSLTransport, ssl.SSLSocket]]:
    """A connected py-amqp SSLTransport and the TLS 'broker' end of it."""
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = socket.create_server(("127.0.0.1", 0))
    host, port = server.getsockname()
    accepted: list[Any] = []

    def accept() -> None:
        sock, _ = server.accept()
        sock.settimeout(10)
        try:
            accepted.append(context.wrap_socket(sock, server_side=True))
        except Exception as error:  # reported by the assertion below
            accepted.append(error)

    acceptor = threading.Thread(target=accept)
    acceptor.start()
    transport = amqp.transport.SSLTransport(f"{host}:{port}", connect_timeout=5,
                                            ssl={"cert_reqs": ssl.CERT_NONE})
    transport.connect()
    acceptor.join(10)
    server.close()
    peer = accepted[0]
    assert isinstance(peer, ssl.SSLSocket), peer
    assert recv_exactly(peer, 8) == b"AMQP\x00\x00\x09\x01"
    try:
        yield transport, peer
    finally:
        peer.close()
        transport.close()


#: What the owner writes last, so the 'broker' knows the stream ended.
END_FRAME = struct.pack(">BHI", 1, 9, 0) + b"\xce"


def body_frame(size: int, fill: bytes = b"b") -> bytes:
    return struct.pack(">BHI", 3, 1, size) + fill * size + b"\xce"


def send_soon(link: AmqpLink) -> bool:
    for _ in range(1000):
        if link.send_heartbeat(native=True):
            return True
        threading.Event().wait(0.001)
    return False


def test_tls_link_guards_its_socket_and_lets_the_native_thread_write(tls_broker):
    transport, peer = tls_broker
    link = AmqpLink(StubConnection(transport), name="svc").install()
    assert link.tls and link.tls_guarded and link.native_heartbeats
    assert tls_io.supported(transport.sock)
    assert link.send_heartbeat(native=True)
    assert recv_exactly(peer, 8) == HEARTBEAT_FRAME
    assert link.heartbeats_sent == 1
    link.detach()


def test_native_heartbeat_goes_out_while_the_owner_waits_in_a_read(tls_broker):
    transport, peer = tls_broker
    link = AmqpLink(StubConnection(transport), name="svc").install()
    got: list[Any] = []
    waiting = threading.Event()

    def owner() -> None:
        waiting.set()
        with transport.having_timeout(10):
            got.append(transport.read_frame())

    reader = threading.Thread(target=owner)
    reader.start()
    waiting.wait(5)
    # The owner waits for data with the guard free (it holds it only for a
    # moment per read attempt, as the scheduler's retry would find).
    assert send_soon(link)
    assert recv_exactly(peer, 8) == HEARTBEAT_FRAME
    peer.sendall(body_frame(5))
    reader.join(10)
    assert got == [(3, 1, b"bbbbb")]
    link.detach()


def test_a_read_with_no_time_left_times_out_at_once(tls_broker):
    transport, _ = tls_broker
    link = AmqpLink(StubConnection(transport), name="svc").install()
    with pytest.raises(socket.timeout), transport.having_timeout(0.0):
        transport.read_frame()
    link.detach()


def test_native_records_never_corrupt_the_stream_or_the_owners_reads(tls_broker):
    """The owner reads and writes large frames in both directions while the
    native thread writes heartbeats as fast as it can: every byte arrives in
    order on both sides, and many heartbeats went out."""
    transport, peer = tls_broker
    link = AmqpLink(StubConnection(transport), name="svc").install()
    count, size = 200, 30000
    inbound = body_frame(size, b"i")
    outbound = body_frame(size, b"o")
    received = bytearray()
    read_back: list[Any] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def broker() -> None:
        """Sends to us and reads what we send, in one thread: an SSL object
        is used by one thread at a time, on the broker's side too."""
        peer.setblocking(False)
        to_send = count
        try:
            while not received.endswith(END_FRAME):
                want_write = to_send > 0
                select.select([peer], [peer] if want_write else [], [], 10)
                if want_write:
                    try:
                        peer.send(inbound)  # the whole record or an error
                        to_send -= 1
                    except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                        pass  # the same bytes are sent again
                try:
                    chunk = peer.recv(1 << 16)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    continue
                if not chunk:
                    break
                received.extend(chunk)
        except (OSError, ValueError) as error:
            errors.append(error)

    def owner_reads() -> None:
        with transport.having_timeout(10):
            for _ in range(count):
                read_back.append(transport.read_frame())

    heartbeats = 0

    def beat() -> None:
        nonlocal heartbeats
        while not done.is_set() or heartbeats < 20:
            if link.send_heartbeat(native=True):
                heartbeats += 1
            else:
                threading.Event().wait(0.0001)

    threads = [threading.Thread(target=broker), threading.Thread(target=owner_reads)]
    beater = threading.Thread(target=beat)
    for t in threads:
        t.start()
    beater.start()
    try:
        for i in range(count):
            transport.write(outbound)
            if i % 10 == 0:  # room for the other threads now and then
                threading.Event().wait(0.001)
        threads[1].join(30)
    finally:
        done.set()
        beater.join(10)
        transport.write(END_FRAME)
        threads[0].join(30)
        link.detach()
    assert not errors
    assert read_back == [(3, 1, b"i" * size)] * count
    frames = parse_frames(bytes(received))
    assert frames.count((3, 1, size)) == count and frames[-1] == (1, 9, 0)
    assert frames.count((8, 0, 0)) == heartbeats > 0


def test_liveness_over_tls_lets_the_native_scheduler_send(tls_broker, monkeypatch):
    transport, peer = tls_broker
    clock = FakeClock(10.0)
    sched = NativeScheduler(clock=clock)
    monkeypatch.setattr(runners, "native_scheduler", lambda: sched)
    live = Liveness(from_url("amqps://127.0.0.1:5671/", heartbeat_timeout_threshold=6,
                             heartbeat_rate=3),
                    name="svc", clock=clock)
    live.attach(StubConnection(transport, heartbeat=3))
    assert not live.owner_sends and live.owner_wait() is None
    for _ in range(3):  # a frame every H/3 = 1 s, from the scheduler alone
        clock.advance(sched.run_pending() - clock.now())
    sched.run_pending()
    assert recv_exactly(peer, 24) == HEARTBEAT_FRAME * 3
    live.detach()


# -- the edges: the end of the stream, a socket that is gone, a record OpenSSL cannot finish at once --


def test_a_peer_that_hangs_up_reads_as_the_end_of_the_stream(tls_broker):
    transport, peer = tls_broker
    peer.close()  # no close_notify: the TCP connection just ends
    data: bytes | None = None
    for _ in range(100):
        assert select.select([transport.sock], [], [], 5)[0]
        data = tls_io.read_now(transport.sock, 1024)
        if data is not None:
            break
    assert data == b""


class FakeSSLObject:
    """An SSL object whose writes would block ``blocks`` times, then succeed."""

    def __init__(self, *blocks: type[ssl.SSLError], forever: bool = False) -> None:
        self.blocks = list(blocks)
        self.forever = forever
        self.written: list[bytes] = []

    def write(self, data: bytes) -> int:
        if self.forever:
            raise ssl.SSLWantWriteError()
        if self.blocks:
            raise self.blocks.pop(0)()
        self.written.append(data)
        return len(data)


class Unwrapped:
    _sslobj = None


def test_a_socket_without_its_ssl_object_is_refused():
    with pytest.raises(OSError, match="read on a closed"):
        tls_io.read_now(Unwrapped(), 8)
    with pytest.raises(OSError, match="write on a closed"):
        tls_io.write_now(Unwrapped(), HEARTBEAT_FRAME, writable=lambda s, t: True, finish_within=1.0)


def test_no_room_on_the_socket_writes_nothing():
    sock = Unwrapped()
    sock._sslobj = FakeSSLObject()  # type: ignore[assignment]
    assert tls_io.write_now(sock, HEARTBEAT_FRAME, writable=lambda s, t: False, finish_within=1.0) is False
    assert sock._sslobj.written == []  # type: ignore[attr-defined]


def test_a_record_that_would_block_is_retried_with_the_same_bytes():
    sock = Unwrapped()
    sslobj = FakeSSLObject(ssl.SSLWantWriteError, ssl.SSLWantReadError)
    sock._sslobj = sslobj  # type: ignore[assignment]
    waits: list[float] = []

    def writable(_: Any, seconds: float) -> bool:
        waits.append(seconds)
        return True

    assert tls_io.write_now(sock, HEARTBEAT_FRAME, writable=writable, finish_within=30.0)
    assert sslobj.written == [HEARTBEAT_FRAME]
    assert waits[0] == 0.0 and len(waits) == 3 and all(0 < w <= 30.0 for w in waits[1:])


def test_a_record_that_cannot_be_finished_in_time_breaks_the_stream():
    sock = Unwrapped()
    sock._sslobj = FakeSSLObject(forever=True)  # type: ignore[assignment]
    with pytest.raises(OSError, match="half written"):
        tls_io.write_now(sock, HEARTBEAT_FRAME, writable=lambda s, t: True, finish_within=0.0)


class FreeGuard:
    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass


def test_waiting_on_a_closed_socket_is_an_error():
    a, b = socket.socketpair()
    b.close()
    reader = tls_io.GuardedReader(a, FreeGuard())
    assert not reader.green
    a.close()
    with pytest.raises(OSError, match="TLS socket closed"):
        reader._wait_readable(1.0)


def test_a_green_socket_waits_in_the_hub():
    pytest.importorskip("eventlet")
    from eventlet import greenio

    a, b = socket.socketpair()
    try:
        reader = tls_io.GuardedReader(greenio.GreenSocket(a), FreeGuard())
        assert reader.green
        reader._wait_readable(0.001)  # nothing arrives: the next turn reports the timeout
        b.sendall(b"x")
        reader._wait_readable(5.0)  # returns as soon as the byte is there
        assert a.recv(1) == b"x"
    finally:
        a.close()
        b.close()

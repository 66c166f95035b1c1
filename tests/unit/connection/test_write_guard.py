"""The write guard's native writes on a real socket pair: a frame finished, or the stream declared broken."""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
import types
from collections.abc import Iterator

import pytest

from rabbit_ha_driver.connection._natives import Natives
from rabbit_ha_driver.connection._write_guard import WriteGuard


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair whose send buffer is small, so a large write is sent in part."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    yield a, b
    a.close()
    b.close()


def fake_time(step: float) -> types.SimpleNamespace:
    """A ``time`` module whose clock moves ``step`` seconds at every look."""
    now = [0.0]

    def monotonic() -> float:
        now[0] += step
        return now[0]

    return types.SimpleNamespace(monotonic=monotonic)


def test_a_frame_sent_in_part_is_finished_while_the_peer_reads(pair):
    a, b = pair
    data = os.urandom(1 << 20)  # far more than both buffers hold
    received = bytearray()

    def drain() -> None:
        while len(received) < len(data):
            chunk = b.recv(65536)
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        assert WriteGuard(cooperative=False).write_native(a, data, finish_within=30.0)
    finally:
        reader.join(30)
    assert bytes(received) == data


def test_a_frame_that_cannot_be_finished_in_time_breaks_the_stream(pair):
    a, _ = pair
    # The clock jumps a second at each look: the deadline passes without a real wait.
    natives = Natives(False, threading, select, os, fake_time(1.0))
    guard = WriteGuard(natives, cooperative=False)
    with pytest.raises(OSError) as caught:
        guard.write_native(a, b"x" * (1 << 20), finish_within=2.5)
    assert caught.value.errno == errno.ETIMEDOUT
    assert not guard.busy  # released for the owner, who finds the stream broken


def test_nothing_is_written_while_the_send_buffer_is_full(pair):
    a, _ = pair
    a.setblocking(False)
    with pytest.raises(BlockingIOError):
        while True:
            a.send(b"f" * 65536)
    assert WriteGuard(cooperative=False).write_native(a, b"h" * 8) is False


def test_writability_of_a_closed_socket_is_an_error(pair):
    a, _ = pair
    a.close()
    with pytest.raises(OSError) as caught:
        WriteGuard(cooperative=False).write_native(a, b"h" * 8)
    assert caught.value.errno == errno.EBADF


def test_without_poll_it_waits_with_select(pair):
    a, b = pair
    no_poll = types.SimpleNamespace(select=select.select)
    guard = WriteGuard(Natives(False, threading, no_poll, os, time), cooperative=False)  # type: ignore[arg-type]
    assert guard.write_native(a, b"12345678")
    assert b.recv(8) == b"12345678"


def test_a_closed_guard_refuses_native_writes_and_a_busy_one_declines(pair):
    a, _ = pair
    guard = WriteGuard(cooperative=False)
    with guard.hold():
        assert guard.busy
        assert guard.write_native(a, b"h" * 8) is False
        assert guard.write_native(a, b"h" * 8, wait=0.001) is False
    guard.close()
    with pytest.raises(OSError) as caught:
        guard.write_native(a, b"h" * 8)
    assert caught.value.errno == errno.EBADF

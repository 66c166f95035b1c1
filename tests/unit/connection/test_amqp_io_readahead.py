"""Reading ahead: the buffered frame reader and frames parsed from what it buffered.

The reader runs against a transport whose ``_quick_recv`` returns scripted
chunks (or raises scripted errors), so nothing waits on a socket.
"""

from __future__ import annotations

import errno
import struct
import time
from contextlib import contextmanager

import amqp.transport
import pytest

from rabbit_ha_driver.connection._errors import RequestTimeout
from rabbit_ha_driver.connection._frames import HEARTBEAT_FRAME
from rabbit_ha_driver.connection._readahead import READ_CHUNK, buffered_reader
from rabbit_ha_driver.connection._transport import DeadlineConnection, _frame_size


class ScriptedTransport:
    """What the reader uses of a py-amqp transport; ``recv`` plays ``script``."""

    def __init__(self, *script: bytes | BaseException, raise_on_initial_eintr: bool = True) -> None:
        self._read_buffer = b""
        self.raise_on_initial_eintr = raise_on_initial_eintr
        self.script = list(script)
        self.asked: list[int] = []

    def _quick_recv(self, n: int) -> bytes:
        self.asked.append(n)
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        assert len(step) <= n, "the script returns more than was asked for"
        return step


def frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + b"\xce"


BODY_FRAME = frame(3, 1, b"body")


def test_returns_exactly_the_bytes_asked_for_and_keeps_the_rest():
    transport = ScriptedTransport(b"abcdefgh")
    read = buffered_reader(transport)
    assert read(3) == b"abc"
    assert transport._read_buffer == b"defgh"
    assert transport.asked == [READ_CHUNK]  # asks for a whole chunk, not for 3


def test_one_receive_serves_several_reads():
    transport = ScriptedTransport(HEARTBEAT_FRAME * 2)
    read = buffered_reader(transport)
    for _ in range(2):  # header, payload (none), frame end: py-amqp's three reads
        assert read(7, True) == HEARTBEAT_FRAME[:7]
        assert read(0) == b""
        assert read(1) == b"\xce"
    assert transport.asked == [READ_CHUNK]
    assert transport._read_buffer == b""


def test_bytes_already_buffered_are_served_without_receiving():
    transport = ScriptedTransport()
    transport._read_buffer = b"xyz"
    read = buffered_reader(transport)
    assert read(2) == b"xy"
    assert read(1) == b"z"
    assert transport.asked == []


def test_a_read_is_assembled_from_several_receives():
    transport = ScriptedTransport(b"ab", b"cd", b"efg")
    transport._read_buffer = b"_"
    read = buffered_reader(transport)
    assert read(6) == b"_abcde"
    assert transport._read_buffer == b"fg"
    assert len(transport.asked) == 3


def test_a_read_larger_than_a_chunk_asks_for_what_it_needs():
    big = b"x" * (READ_CHUNK + 10)
    transport = ScriptedTransport(big[:100], big[100:])
    read = buffered_reader(transport)
    assert read(len(big)) == big
    assert transport.asked == [len(big), READ_CHUNK]  # at least a chunk each time


def test_the_result_is_bytes_even_from_a_bytearray_buffer():
    transport = ScriptedTransport()
    transport._read_buffer = bytearray(b"abc")
    result = buffered_reader(transport)(2)
    assert result == b"ab" and type(result) is bytes


def test_a_timeout_keeps_what_was_read_and_propagates():
    # socket.timeout is TimeoutError: what a socket with a timeout raises.
    transport = ScriptedTransport(b"abc", TimeoutError("timed out"), b"de")
    transport._read_buffer = b"12"
    read = buffered_reader(transport)
    with pytest.raises(TimeoutError):
        read(7)
    assert transport._read_buffer == b"12abc"  # nothing lost
    assert read(7) == b"12abcde"
    assert transport._read_buffer == b""


def test_end_of_stream_is_an_error_and_keeps_what_was_read():
    transport = ScriptedTransport(b"ab", b"")
    read = buffered_reader(transport)
    with pytest.raises(OSError, match="Server unexpectedly closed connection"):
        read(4)
    assert transport._read_buffer == b"ab"


@pytest.mark.parametrize("code", [errno.EINTR, errno.EAGAIN])
def test_interrupted_receives_are_retried(code):
    transport = ScriptedTransport(OSError(code, "interrupted"), b"ab", OSError(code, "again"), b"cd")
    read = buffered_reader(transport)
    assert read(4) == b"abcd"
    assert len(transport.asked) == 4


def test_an_interrupted_first_read_is_a_timeout_when_py_amqp_asks_so():
    transport = ScriptedTransport(b"a", InterruptedError(errno.EINTR, "interrupted"), b"bc")
    read = buffered_reader(transport)
    with pytest.raises(TimeoutError):
        read(3, True)
    assert transport._read_buffer == b"a"
    assert read(3, True) == b"abc"


def test_an_interrupted_first_read_is_retried_otherwise():
    transport = ScriptedTransport(OSError(errno.EINTR, "interrupted"), b"abc",
                                  raise_on_initial_eintr=False)
    assert buffered_reader(transport)(3, True) == b"abc"


def test_an_interrupted_later_read_is_retried_even_when_py_amqp_asks_for_timeouts():
    transport = ScriptedTransport(OSError(errno.EINTR, "interrupted"), b"abc")
    assert buffered_reader(transport)(3) == b"abc"


def test_other_socket_errors_propagate_and_keep_what_was_read():
    reset = ConnectionResetError(errno.ECONNRESET, "reset by peer")
    transport = ScriptedTransport(b"ab", reset)
    read = buffered_reader(transport)
    with pytest.raises(ConnectionResetError):
        read(4)
    assert transport._read_buffer == b"ab"


# -- with py-amqp's frame parser --------------------------------------------------------


@pytest.fixture
def amqp_transport():
    """A py-amqp TCP transport, never connected, reading through the buffered reader."""
    transport = amqp.transport.TCPTransport("127.0.0.1:1")
    scripted = ScriptedTransport()
    transport._quick_recv = scripted._quick_recv
    transport._read = buffered_reader(transport)
    return transport, scripted


def test_py_amqp_parses_frames_read_ahead_in_one_receive(amqp_transport):
    transport, scripted = amqp_transport
    method = frame(1, 1, b"\x00\x3c\x00\x50payload")
    scripted.script.append(HEARTBEAT_FRAME + method + HEARTBEAT_FRAME)
    assert transport.read_frame() == (8, 0, b"")
    assert transport.read_frame() == (1, 1, b"\x00\x3c\x00\x50payload")
    assert transport.read_frame() == (8, 0, b"")
    assert len(scripted.asked) == 1


def test_a_frame_cut_by_a_timeout_is_parsed_whole_afterwards(amqp_transport):
    transport, scripted = amqp_transport
    whole = frame(3, 1, b"0123456789")
    scripted.script += [whole[:9], TimeoutError("timed out"), whole[9:]]
    with pytest.raises(TimeoutError):
        transport.read_frame()
    assert transport._read_buffer == whole[:9]  # header and payload so far, in order
    assert transport.read_frame() == (3, 1, b"0123456789")
    assert transport._read_buffer == b""


# -- frames parsed from the buffer, without the socket ---------------------------------


class BufferOnlyTransport:
    """A transport whose socket must not be touched: only its buffer is there."""

    def __init__(self, buffered: bytes, *later: bytes) -> None:
        self._read_buffer = buffered
        self.raise_on_initial_eintr = True
        self.later = list(later)
        self.timeouts: list[float | None] = []
        self.read_frame = amqp.transport.TCPTransport.read_frame.__get__(self)
        self._read = buffered_reader(self)

    def _quick_recv(self, n: int) -> bytes:
        return self.later.pop(0)

    @contextmanager
    def having_timeout(self, timeout):
        self.timeouts.append(timeout)
        yield None


def connection_over(transport: BufferOnlyTransport) -> DeadlineConnection:
    """A DeadlineConnection around ``transport``, without connecting anything."""
    conn = object.__new__(DeadlineConnection)
    conn.transport = transport
    conn.frames = []
    conn.on_inbound_frame = conn.frames.append
    return conn


def test_frame_size_is_the_header_length_field():
    assert _frame_size(HEARTBEAT_FRAME) == 0
    assert _frame_size(frame(1, 7, b"x" * 300)) == 300
    assert _frame_size(struct.pack(">BHI", 3, 1, 2**31)) == 2**31


def test_a_whole_buffered_frame_is_parsed_without_the_socket():
    transport = BufferOnlyTransport(frame(3, 1, b"body") + HEARTBEAT_FRAME[:3])
    conn = connection_over(transport)
    conn.blocking_read(timeout=5.0)
    assert conn.frames == [(3, 1, b"body")]
    assert transport.timeouts == []  # having_timeout was never entered
    assert transport._read_buffer == HEARTBEAT_FRAME[:3]


@pytest.mark.parametrize("buffered, rest, parsed", [
    (b"", HEARTBEAT_FRAME, (8, 0, b"")),
    (HEARTBEAT_FRAME[:7], HEARTBEAT_FRAME[7:], (8, 0, b"")),
    (BODY_FRAME[:-1], BODY_FRAME[-1:], (3, 1, b"body")),
])
def test_a_partly_buffered_frame_is_read_through_the_socket_with_its_timeout(buffered, rest,
                                                                             parsed):
    transport = BufferOnlyTransport(buffered, rest)
    conn = connection_over(transport)
    conn.blocking_read(timeout=5.0)
    assert conn.frames == [parsed]
    assert transport.timeouts == [5.0]


def test_a_passed_request_deadline_still_hands_out_a_buffered_frame_then_raises():
    # A frame read ahead whole needs no waiting, so no deadline holds it back;
    # the next read, which would need the socket, raises.
    transport = BufferOnlyTransport(HEARTBEAT_FRAME)
    conn = connection_over(transport)
    conn.request_deadline = time.monotonic() - 1.0
    conn.request_operation, conn.request_budget = "queue.declare", 2.0
    conn.blocking_read(timeout=5.0)
    assert conn.frames == [(8, 0, b"")]
    with pytest.raises(RequestTimeout):
        conn.blocking_read(timeout=5.0)
    assert transport.timeouts == []  # the socket was never waited on


def test_a_passed_drain_deadline_still_hands_out_a_buffered_frame_then_times_out():
    transport = BufferOnlyTransport(HEARTBEAT_FRAME)
    conn = connection_over(transport)
    conn.drain_deadline = time.monotonic() - 1.0
    conn.blocking_read(timeout=5.0)
    assert conn.frames == [(8, 0, b"")]
    with pytest.raises(TimeoutError):
        conn.blocking_read(timeout=5.0)
    assert transport.timeouts == []


def test_frames_buffered_together_are_parsed_one_per_read():
    transport = BufferOnlyTransport(HEARTBEAT_FRAME + BODY_FRAME + HEARTBEAT_FRAME)
    conn = connection_over(transport)
    for _ in range(3):
        conn.blocking_read(timeout=5.0)
    assert conn.frames == [(8, 0, b""), (3, 1, b"body"), (8, 0, b"")]
    assert transport.timeouts == []
    assert transport._read_buffer == b""


# -- taking frames off the front copies only those frames -------------------------------


def _peak_while(fn) -> int:
    """Peak bytes newly allocated while ``fn`` runs (``tracemalloc``)."""
    import tracemalloc

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_frames_taken_from_a_large_buffer_never_copy_what_follows():
    from rabbit_ha_driver.connection._readahead import buffered_frame_reader

    count = 20000
    transport = BufferOnlyTransport(BODY_FRAME * count)  # 260 kB read ahead
    read_frame = buffered_frame_reader(transport, lambda: pytest.fail("the socket was touched"))

    def take_all():
        for _ in range(count):
            assert read_frame() == (3, 1, b"body")

    # Copying the rest of the buffer per frame would allocate ~260 kB at once
    # (and 2.6 GB in all); a view over it allocates a few hundred bytes.
    assert _peak_while(take_all) < 32 * 1024
    assert len(transport._read_buffer) == 0


def test_reads_from_a_large_buffer_never_copy_what_follows():
    transport = ScriptedTransport(HEARTBEAT_FRAME * 8192)  # one 64 kB receive
    read = buffered_reader(transport)

    def take_all():
        for _ in range(8192):
            assert read(7) == HEARTBEAT_FRAME[:7]
            assert read(1) == b"\xce"

    # The receive itself is copied once (64 kB); copying the rest per read
    # would hold a second copy at the same time.
    assert _peak_while(take_all) < 96 * 1024
    assert transport.asked == [READ_CHUNK]

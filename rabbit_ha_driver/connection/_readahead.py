"""Read-ahead for py-amqp: a frame costs one system call, or none.

How this works. py-amqp asks the socket for exactly the bytes it needs next:
three reads per frame (header, payload, end octet), so a message costs nine
system calls. :func:`buffered_reader` replaces the transport's ``_read`` with
one that asks for up to :data:`READ_CHUNK` bytes and keeps the rest in the
transport's ``_read_buffer``, where py-amqp already keeps what a timed-out
read left behind; :func:`buffered_frame_reader` replaces ``read_frame`` with
one that cuts a frame buffered whole straight out of that buffer, without
touching the socket. ``AmqpLink.install`` (:mod:`~._amqp_link`) puts both on
a plain TCP transport (over TLS the reads go through :mod:`~._tls_io`
instead). Nothing else reads the socket or waits for it to become readable,
so bytes held here are never missed; bytes held here still count as pending
for liveness (``AmqpLink.pending_bytes``).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from amqp.exceptions import UnexpectedFrame

#: Bytes asked of the kernel per read when a frame is not yet buffered whole.
READ_CHUNK = 65536


def buffered_reader(transport: Any) -> Callable[..., bytes]:
    """A replacement for py-amqp's ``TCPTransport._read`` that reads ahead.

    py-amqp asks the socket for exactly the bytes it needs next: three reads
    per frame (header, payload, end octet), so a message costs nine system
    calls. This reader asks for up to :data:`READ_CHUNK` bytes and keeps the
    rest in the transport's ``_read_buffer``, where py-amqp already keeps
    what a timed-out read left behind; a frame that is buffered whole is
    parsed without touching the socket. Its contract is py-amqp's: return
    exactly ``n`` bytes, raise ``socket.timeout`` (data kept) or OSError.
    Nothing else reads the socket or waits for it to become readable, so
    bytes held here are never missed.

    The rest is kept as a ``memoryview`` of the chunk received, so taking a
    frame off the front copies only that frame, never what follows it (a
    chunk of many small frames would otherwise be copied once per frame).
    The remainder is copied once, when a read needs more than is buffered.
    """
    retry = (errno.EAGAIN, errno.EINTR)

    def read(n: int, initial: bool = False) -> bytes:
        buf = transport._read_buffer
        if len(buf) >= n:
            view = memoryview(buf)
            transport._read_buffer = view[n:]
            return bytes(view[:n])
        recv = transport._quick_recv
        acc = bytearray(buf)
        try:
            while len(acc) < n:
                try:
                    data = recv(max(n - len(acc), READ_CHUNK))
                except OSError as error:
                    if error.errno in retry:
                        if initial and transport.raise_on_initial_eintr:
                            raise TimeoutError() from None
                        continue
                    raise
                if not data:
                    raise OSError("Server unexpectedly closed connection")
                acc += data
        except BaseException:
            transport._read_buffer = bytes(acc)
            raise
        # ``acc`` is never resized once viewed: the next refill copies into
        # a new bytearray.
        view = memoryview(acc)
        transport._read_buffer = view[n:]
        return bytes(view[:n])

    return read


def buffered_frame_reader(transport: Any, read_frame: Callable[[], Any]) -> Callable[..., Any]:
    """``read_frame`` that takes a frame read ahead whole in one slice.

    A frame is a 7-byte header (type, channel, payload size), the payload
    and the end octet ``0xCE``. When all of it is in the transport's
    buffer it is cut out directly (the rest stays a view, not a copy);
    otherwise py-amqp's ``read_frame`` (reading through
    :func:`buffered_reader`) does the work.
    """

    def read(*args: Any) -> Any:
        buf = transport._read_buffer
        if len(buf) >= 8:
            view = memoryview(buf)
            end = int.from_bytes(view[3:7], "big") + 8
            if len(view) >= end:
                transport._read_buffer = view[end:]
                if view[end - 1] != 0xCE:
                    raise UnexpectedFrame(
                        f"Received frame_end {view[end - 1]:#04x} while expecting 0xce")
                return view[0], int.from_bytes(view[1:3], "big"), bytes(view[7:end - 1])
        return read_frame()

    return read


__all__ = ["READ_CHUNK", "buffered_frame_reader", "buffered_reader"]

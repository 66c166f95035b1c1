"""TLS under one guard: the owner's reads and writes and the native thread's heartbeats.

How this works. An SSL object may not be used from two OS threads at once:
``SSL_read`` and ``SSL_write`` on one ``SSLSocket`` share the record layer's
state (and TLS 1.3 handles session tickets and key updates inside reads), and
Python releases the GIL around both without a lock of its own. Writing raw
bytes next to the TLS stream would corrupt it. So for the native scheduler to
send a heartbeat on a TLS connection from its own thread, every use of the
SSL object must hold the connection's :class:`~._write_guard.WriteGuard`:

* The owner's writes already do (``install`` wraps py-amqp's ``_write``).
* The owner's reads go through :class:`GuardedReader`, which replaces
  py-amqp's ``_quick_recv`` (``sslsock.read``). It holds the guard only
  around one *non-blocking* read of the SSL object, and waits for the socket
  to become readable with the guard released (``poll`` on a native socket,
  the hub's ``trampoline`` on an eventlet green one), up to the socket's
  timeout as py-amqp set it. So a reader waiting for the broker never keeps
  the native thread from writing, and nobody is inside OpenSSL while it does.
  Decrypted bytes of a record read only in part stay in OpenSSL's buffer: the
  next read returns them without waiting, since a read is always tried before
  waiting.
* The native thread (:func:`write_now`) takes the guard without waiting,
  writes only when ``poll`` says the socket takes data, and writes the whole
  frame as one TLS record with ``SSL_write``. If OpenSSL still reports that it
  would block, the record is retried with the same bytes until it is out (as
  OpenSSL demands) before the guard is released, within a bound.

The non-blocking read switches the socket's own timeout to zero and back
while it holds the guard: the native thread never changes the timeout and
never reads, so it sees the owner's settings, and with the guard held nobody
else uses the socket meanwhile.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import ssl
import time
from typing import Any, Protocol

from rabbit_ha_driver.connection._natives import Natives, native_modules


class Guard(Protocol):
    """The owner's side of :class:`~._write_guard.WriteGuard`."""

    def acquire(self) -> None: ...

    def release(self) -> None: ...


def supported(sock: Any) -> bool:
    """Whether ``sock`` is an SSL socket whose SSL object can be guarded here."""
    return isinstance(sock, ssl.SSLSocket) and getattr(sock, "_sslobj", None) is not None


def is_green(sock: Any) -> bool:
    """An eventlet green socket: waits go through the hub."""
    return type(sock).__module__.startswith("eventlet")


def read_now(sock: Any, n: int) -> bytes | None:
    """One non-blocking read of up to ``n`` bytes; None if nothing is ready.

    b"" at the end of the stream. The caller holds the guard.
    """
    sslobj = getattr(sock, "_sslobj", None)
    if sslobj is None:
        raise OSError(errno.EBADF, "read on a closed or unwrapped TLS socket")
    if sslobj.pending():
        # Decrypted bytes wait in OpenSSL (the rest of a record read in
        # part): served without touching the socket or its timeout.
        data: bytes = sslobj.read(n)
        return data
    previous = _socket.socket.gettimeout(sock)
    if previous != 0.0:
        _socket.socket.settimeout(sock, 0.0)
    try:
        data = sslobj.read(n)
        return data
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return None
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
        return b""
    finally:
        if previous != 0.0:
            _socket.socket.settimeout(sock, previous)


class GuardedReader:
    """py-amqp's ``_quick_recv`` for a TLS socket, holding ``guard`` only to read.

    Same contract as ``SSLSocket.read``: up to ``n`` bytes, b"" at the end
    of the stream, ``TimeoutError`` (``socket.timeout``) after the socket's timeout.
    """

    def __init__(self, sock: Any, guard: Guard, natives: Natives | None = None) -> None:
        self.sock = sock
        self.guard = guard
        self.green = is_green(sock)
        self._natives = natives or native_modules()

    def __call__(self, n: int = 1024) -> bytes:
        sock = self.sock
        timeout = sock.gettimeout()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.guard.acquire()
            try:
                data = read_now(sock, n)
            finally:
                self.guard.release()
            if data is not None:
                return data
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("timed out")
            self._wait_readable(left)

    def _wait_readable(self, left: float | None) -> None:
        if self.green:
            from eventlet.hubs import trampoline

            # On a timeout the next turn reads once more, then reports it.
            with contextlib.suppress(TimeoutError):
                trampoline(self.sock, read=True, timeout=left, timeout_exc=TimeoutError)
            return
        fd = self.sock.fileno()
        if fd < 0:
            raise OSError(errno.EBADF, "TLS socket closed")
        poller = self._natives.select.poll()
        poller.register(fd, self._natives.select.POLLIN)
        poller.poll(None if left is None else max(0.0, left) * 1000.0)


def write_now(sock: Any, data: bytes, *, writable: Any, finish_within: float) -> bool:
    """Write ``data`` as one TLS record from a native thread; the caller holds the guard.

    False, having written nothing, when the socket takes no data now.
    ``writable(sock, seconds)`` polls for room. Raises OSError when the
    socket failed or a record OpenSSL started could not be finished within
    ``finish_within`` seconds (the stream is then broken).
    """
    sslobj = getattr(sock, "_sslobj", None)
    if sslobj is None:
        raise OSError(errno.EBADF, "write on a closed or unwrapped TLS socket")
    if not writable(sock, 0.0):
        return False
    deadline = time.monotonic() + finish_within
    while True:
        try:
            sslobj.write(data)  # all of it, or an error: partial writes are off
            return True
        except ssl.SSLWantWriteError:
            pass  # part of the record may be out: the same bytes must follow
        except ssl.SSLWantReadError:
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            raise OSError(errno.ETIMEDOUT, "heartbeat record half written; the TLS stream is broken")
        writable(sock, left)

"""Whole frames on a shared socket: the owner's writes and the native thread's heartbeats.

How this works. py-amqp writes every frame through ``transport.write``, which
calls ``transport._write`` (its frame writer captured the bound ``write`` at
connect time, so replacing ``_write`` on the transport instance catches every
frame). ``AmqpLink.install`` (:mod:`~._amqp_link`) wraps it with
:meth:`WriteGuard.guarded`: a *native* lock (eventlet's original one in a
monkey-patched process, :mod:`~._natives`) that green threads take
cooperatively, so a heartbeat frame written by the native scheduler never
lands inside another writer's frame. The native thread writes its 8-byte
frame straight to the socket (:meth:`WriteGuard.write_native`: a
non-blocking ``send`` on the real socket object, never through the hub): it
gives up at once if the guard is busy or the send buffer is full (nothing
written, nothing lost; the scheduler retries shortly), and a frame it started
it finishes before releasing the guard, within :data:`FINISH_WITHIN`, or else
declares the stream broken.

Over TLS raw bytes on the socket would corrupt the TLS stream, and an SSL
object may not be used from two OS threads at once, so there the guard covers
the owner's *reads* too (:mod:`~._tls_io`), and the native thread writes its
heartbeat as one TLS record through the SSL object, under the guard, on the
same terms as above (guard busy or no room: nothing written, retried
shortly).
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import socket
from collections.abc import Callable, Iterator
from typing import Any

from rabbit_ha_driver.connection import _tls_io as tls_io
from rabbit_ha_driver.connection._natives import Natives, acquire_cooperatively, native_modules

#: Longest the native thread waits for the guard before leaving it for later:
#: not at all. One thread serves every connection of the process, so a wait
#: here for one busy connection would delay the heartbeats of all the others;
#: a busy guard means the owner is writing, and the scheduler retries shortly.
GUARD_WAIT = 0.0
#: Longest the native thread may take to finish a frame it started writing.
FINISH_WITHIN = 1.0

_SEND_FLAGS = getattr(socket, "MSG_DONTWAIT", 0) | getattr(socket, "MSG_NOSIGNAL", 0)


class WriteGuard:
    """Whole-frame mutual exclusion between the owner's writes and the native thread.

    The lock is native. Owner-side callers take it with :meth:`hold` (a green
    thread yields to the hub while it waits); the native thread uses
    :meth:`write_native`. :meth:`close` waits for a write in flight and
    refuses later native writes.
    """

    def __init__(self, natives: Natives | None = None, *, cooperative: bool | None = None) -> None:
        self.natives = natives or native_modules()
        self.cooperative = self.natives.patched if cooperative is None else cooperative
        self._lock = self.natives.threading.Lock()
        self.closed = False
        self._poller: Any = None
        self._polled_fd = -1

    def acquire(self) -> None:
        """Take the guard on the owner's side (cooperatively under eventlet)."""
        if self.cooperative:
            acquire_cooperatively(self._lock)
        else:
            self._lock.acquire()

    def release(self) -> None:
        self._lock.release()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    @property
    def busy(self) -> bool:
        return bool(self._lock.locked())

    def guarded(self, write: Callable[[Any], Any], after: Callable[[], None] | None = None
                ) -> Callable[[Any], Any]:
        """``write`` under the guard; ``after`` runs after each successful write."""

        def guarded_write(data: Any) -> Any:
            self.acquire()
            try:
                result = write(data)
            finally:
                self.release()
            if after is not None:
                after()
            return result

        guarded_write.__wrapped__ = write  # type: ignore[attr-defined]
        return guarded_write

    def close(self) -> None:
        """Wait for a native write in flight, then refuse further ones."""
        with self.hold():
            self.closed = True

    def write_native(self, sock: _socket.socket, data: bytes, *, wait: float = GUARD_WAIT,
                     finish_within: float = FINISH_WITHIN, tls: bool = False) -> bool:
        """Write ``data`` whole from a native thread, without blocking on the peer.

        Returns False, having written nothing, if the guard stayed busy for
        ``wait`` seconds or the send buffer is full. Raises OSError if the
        socket failed, the guard is closed, or a frame it started could not be
        finished within ``finish_within`` seconds (the stream is then broken).
        ``tls``: ``sock`` is an SSL socket whose every user holds this guard
        (:mod:`~._tls_io`); ``data`` goes out as one TLS record.
        """
        if not (self._lock.acquire(False) if wait <= 0 else self._lock.acquire(True, wait)):
            return False
        try:
            if self.closed:
                raise OSError(errno.EBADF, "connection detached from its heartbeat runner")
            if tls:
                return tls_io.write_now(sock, data, writable=self._writable, finish_within=finish_within)
            if not self._writable(sock, 0.0):
                return False
            try:
                sent = _socket.socket.send(sock, data, _SEND_FLAGS)
            except BlockingIOError:
                return False
            if sent < len(data):
                self._finish(sock, memoryview(data)[sent:], finish_within)
            return True
        finally:
            self._lock.release()

    def _finish(self, sock: _socket.socket, rest: memoryview, within: float) -> None:
        clock = self.natives.time.monotonic
        deadline = clock() + within
        while rest:
            left = deadline - clock()
            if left <= 0:
                raise OSError(errno.ETIMEDOUT, "heartbeat frame half written; the stream is broken")
            if not self._writable(sock, left):
                continue
            try:
                rest = rest[_socket.socket.send(sock, rest, _SEND_FLAGS):]
            except BlockingIOError:
                continue

    def _writable(self, sock: _socket.socket, timeout: float) -> bool:
        """Whether ``sock`` has room to send within ``timeout`` (caller holds the guard).

        The poll object is made once per socket and kept (every heartbeat
        looks, so this saves two calls a frame); the guard serialises its use.
        """
        fd = sock.fileno()
        if fd < 0:
            raise OSError(errno.EBADF, "socket closed")
        sel = self.natives.select
        if hasattr(sel, "poll"):
            poller = self._poller
            if poller is None or self._polled_fd != fd:
                poller = sel.poll()
                poller.register(fd, sel.POLLOUT)
                self._poller, self._polled_fd = poller, fd
            return bool(poller.poll(timeout * 1000.0))
        _, writable, _ = sel.select([], [fd], [], timeout)
        return bool(writable)


__all__ = ["FINISH_WITHIN", "GUARD_WAIT", "WriteGuard"]

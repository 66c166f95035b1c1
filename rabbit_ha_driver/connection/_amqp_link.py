"""One py-amqp connection as a heartbeat runner sees it: guarded writes, observed reads.

How this works. :meth:`AmqpLink.install` replaces a few attributes of the
connection's py-amqp transport, and :meth:`AmqpLink.detach` puts them back:
``_write`` under the :class:`~._write_guard.WriteGuard`; ``_quick_recv``
wrapped to note the time and byte count of every read the owner makes (over
a TLS socket it can guard, through :class:`~._tls_io.GuardedReader`); and on
plain TCP ``_read`` and ``read_frame`` with the read-ahead of
:mod:`~._readahead`. A TLS socket it cannot guard (not an ``ssl.SSLSocket``)
falls back to the owner sending heartbeats with
:meth:`AmqpLink.heartbeat_if_due` (through py-amqp's own frame writer)
between reads. A green runner, which runs in the owner's hub, always sends
them itself through py-amqp.

Inbound traffic is observed without reading: the socket has exactly one
reader, py-amqp's frame reader, which is not thread-safe. On top of the
owner's reads, :meth:`AmqpLink.inbound_marker` reports py-amqp's inbound
frame counter and the bytes waiting unread in the kernel (``FIONREAD``), so
data that arrived while the owner could not read (a blocked hub) counts as
life.

Declaring a connection dead shuts the socket down (``shutdown(SHUT_RDWR)`` on
the real socket object, safe from any thread): the owner's blocked read then
returns end-of-file, py-amqp raises, and the connection's ``ensure()`` loop
recovers.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import os
import socket
import sys
from collections.abc import Hashable
from typing import Any

import amqp.transport

from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.connection import _sockets as sockets
from rabbit_ha_driver.connection import _tls_io as tls_io
from rabbit_ha_driver.connection._frames import HEARTBEAT_FRAME
from rabbit_ha_driver.connection._natives import Natives
from rabbit_ha_driver.connection._readahead import buffered_frame_reader, buffered_reader
from rabbit_ha_driver.connection._sockets import raw_socket
from rabbit_ha_driver.connection._write_guard import WriteGuard

try:
    import fcntl
    import termios

    _FIONREAD: int | None = termios.FIONREAD
except ImportError:  # not POSIX
    _FIONREAD = None

#: The C int FIONREAD fills in, as the ioctl's argument and result.
_NO_BYTES = bytes(4)
_BYTE_ORDER = sys.byteorder

#: Unread bytes in the kernel from which a receive buffer counts as full (or a
#: quarter of ``SO_RCVBUF`` if that is less): see :meth:`AmqpLink.inbound_marker`.
#: Far more than the broker's heartbeats pile up on an idle connection whose
#: owner does not read (8 bytes every ``H/2``).
FULL_UNREAD = 16384


class AmqpLink:
    """One py-amqp connection seen by a runner (implements ``watch.Monitored``).

    Create it after the connection is open, :meth:`install` it, and
    :meth:`detach` it before the connection is closed.
    """

    def __init__(self, connection: Any, *, name: str, clock: Clock = REAL_CLOCK,
                 natives: Natives | None = None) -> None:
        self.connection = connection
        self.name = name
        transport = connection.transport
        self._transport = transport
        self._raw = raw_socket(transport.sock)
        self.tls = isinstance(transport, amqp.transport.SSLTransport)
        #: Over TLS: every use of the SSL object holds the guard (see tls_io).
        self.tls_guarded = False
        self.host = _address(str(transport.host), int(transport.port))
        self._clock = clock
        self.guard = WriteGuard(natives)
        self._last_in: float | None = None
        self._last_out: float | None = None
        self.bytes_in = 0
        self.heartbeats_sent = 0
        self.dead = False
        self.dead_reason: str | None = None
        self.silent_for: float | None = None
        self.blocked = False
        self._saved_user_timeout: float | None = None
        self._restore: list[tuple[str, Any, Any]] = []
        self._full_at: int | None = None
        self._detached = False
        self._pid = os.getpid()

    # -- installation -------------------------------------------------------------

    def install(self) -> AmqpLink:
        """Put the write guard and the read observer on the transport."""
        if self._restore:
            return self
        t = self._transport
        clock = self._clock

        def wrote() -> None:
            self._last_out = clock.now()

        self._replace("_write", self.guard.guarded(t._write, wrote))
        recv = getattr(t, "_quick_recv", None)
        if recv is not None and self.tls and tls_io.supported(t.sock):
            recv = tls_io.GuardedReader(t.sock, self.guard, self.guard.natives)
            self.tls_guarded = True
        if recv is not None:
            def observed_recv(*args: Any, **kwargs: Any) -> Any:
                data = recv(*args, **kwargs)
                if data:
                    self.bytes_in += len(data)
                    self._last_in = clock.now()
                return data

            self._replace("_quick_recv", observed_recv)
            if not self.tls and callable(getattr(t, "_read", None)):
                self._replace("_read", buffered_reader(t))
                self._replace("read_frame", buffered_frame_reader(t, t.read_frame))
        self._last_out = clock.now()
        return self

    def _replace(self, attr: str, value: Any) -> None:
        t = self._transport
        own = attr in vars(t)
        self._restore.append((attr, vars(t).get(attr) if own else None, value))
        setattr(t, attr, value)

    def detach(self) -> None:
        """Undo :meth:`install`, after any native write in flight. Call before closing."""
        if self._detached:
            return
        self._detached = True
        if os.getpid() != self._pid:
            return  # a forked child: the guard may be held by a thread that is gone
        self.guard.close()
        t = self._transport
        for attr, previous, ours in reversed(self._restore):
            if vars(t).get(attr) is not ours:
                continue  # replaced by someone else since
            if previous is None:
                delattr(t, attr)
            else:
                setattr(t, attr, previous)
        self._restore.clear()

    # -- watch.Monitored -----------------------------------------------------------

    @property
    def heartbeat_interval(self) -> float:
        """H negotiated with the broker for this connection (0: heartbeats off)."""
        return float(getattr(self.connection, "heartbeat", 0) or 0)

    @property
    def native_heartbeats(self) -> bool:
        """Whether any OS thread may write heartbeats (over TLS: if guarded)."""
        return not self.tls or self.tls_guarded

    def last_inbound_at(self) -> float | None:
        return self._last_in

    def last_outbound_at(self) -> float | None:
        return self._last_out

    def inbound_marker(self) -> Hashable:
        """What changes when the peer shows life without the owner reading.

        py-amqp's inbound frame count and the bytes waiting unread; and,
        while the kernel holds at least :meth:`full_at` bytes unread, the
        peer's TCP acknowledgements of our frames (:func:`sockets.bytes_acked`).
        A receive buffer that nobody reads shuts our TCP window: the peer
        then cannot send anything, heartbeats included, so its silence says
        nothing, while its kernel still acknowledges the heartbeats we send.
        A peer that is gone acknowledges nothing, so it is still found
        within ``T``.
        """
        frames = getattr(self.connection, "bytes_recv", 0)
        fd = self._raw.fileno()  # self.unread_bytes(), inline: once a frame for every connection
        if fd < 0 or _FIONREAD is None:
            return (frames, None)
        try:
            unread = int.from_bytes(fcntl.ioctl(fd, _FIONREAD, _NO_BYTES), _BYTE_ORDER, signed=True)
        except OSError:
            return (frames, None)
        pending = unread + len(getattr(self._transport, "_read_buffer", b""))
        # SO_RCVBUF is read again only when the last value says "full": the
        # kernel only ever grows it (receive autotuning), so a remembered
        # value that says "not full" is still right, and a step saves a
        # system call.
        full = self._full_at
        if full is None or unread >= full:
            full = self._full_at = self.full_at()
        if unread >= full:
            return (frames, pending, sockets.bytes_acked(self._raw))
        return (frames, pending)

    def full_at(self) -> int:
        """Unread bytes from which the receive buffer counts as full."""
        rcvbuf = sockets.receive_buffer(self._raw) or 4 * FULL_UNREAD
        return max(1, min(FULL_UNREAD, rcvbuf // 4))

    def unread_bytes(self) -> int | None:
        """Bytes received by the kernel and not read yet (None if unknown)."""
        fd = self._raw.fileno()
        if fd < 0 or _FIONREAD is None:
            return None
        try:
            raw = fcntl.ioctl(fd, _FIONREAD, _NO_BYTES)
        except OSError:
            return None
        return int.from_bytes(raw, _BYTE_ORDER, signed=True)

    def pending_bytes(self) -> int | None:
        """Bytes received and not parsed yet (None if unknown).

        Those waiting in the kernel plus those read ahead into the
        transport's buffer (:func:`buffered_reader`).
        """
        unread = self.unread_bytes()
        if unread is None:
            return None
        return unread + len(getattr(self._transport, "_read_buffer", b""))

    def send_heartbeat(self, native: bool) -> bool:
        """Write one heartbeat frame.

        ``native=True``: from any OS thread, straight to the socket (over
        TLS: through the SSL object) under the guard; False (nothing written)
        while another user holds the socket, or over a TLS socket that is not
        guarded. ``native=False``: from the owner's context (its thread, or
        a green thread of its hub), through py-amqp's frame writer.
        """
        if self._detached or self.dead:
            raise OSError(errno.ENOTCONN, "connection detached or declared dead")
        if native:
            if self.tls and not self.tls_guarded:
                return False
            if not self.guard.write_native(self._raw, HEARTBEAT_FRAME, tls=self.tls):
                return False
        else:
            self._owner_send()
        self.heartbeats_sent += 1
        return True

    def declare_dead(self, silent_for: float, reason: str) -> None:
        """Mark the connection dead and wake its reader (any thread)."""
        if self.dead:
            return
        self.dead = True
        self.silent_for = silent_for
        self.dead_reason = reason
        if self._detached:
            return
        with contextlib.suppress(OSError):
            _socket.socket.shutdown(self._raw, socket.SHUT_RDWR)

    # -- the owner's side -----------------------------------------------------------

    def heartbeat_if_due(self, send_interval: float, now: float | None = None) -> bool:
        """Owner only: send a heartbeat if nothing was written for ``send_interval``.

        For connections whose runner cannot write (TLS with the native
        scheduler): call it between reads, and read with a timeout no longer
        than ``send_interval``.
        """
        if self._detached or self.dead:
            return False
        now = self._clock.now() if now is None else now
        if self._last_out is not None and now - self._last_out < send_interval:
            return False
        self._owner_send()
        self.heartbeats_sent += 1
        return True

    def _owner_send(self) -> None:
        # py-amqp would silently reconnect a closed connection on first use of
        # its frame writer; refuse instead.
        if not getattr(self.connection, "connected", False):
            raise OSError(errno.ENOTCONN, "connection closed")
        self.connection.send_heartbeat()

    def note_blocked(self) -> None:
        """The broker blocked the connection: lift ``TCP_USER_TIMEOUT`` meanwhile.

        A blocked connection is healthy but its broker stops reading, so the
        kernel's send queue may stall and a user timeout would kill it.
        """
        if self.blocked or self._detached:
            return
        self.blocked = True
        self._saved_user_timeout = sockets.suspend_user_timeout(self._raw)

    def note_unblocked(self) -> None:
        """The broker lifted the block: restore ``TCP_USER_TIMEOUT``."""
        if not self.blocked:
            return
        self.blocked = False
        previous, self._saved_user_timeout = self._saved_user_timeout, None
        if previous and not self._detached:
            sockets.set_user_timeout(self._raw, previous)

    def __repr__(self) -> str:
        status = "dead" if self.dead else "detached" if self._detached else "live"
        return f"<AmqpLink {self.name} {self.host} {'tls ' if self.tls else ''}{status}>"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = ["FULL_UNREAD", "AmqpLink"]

"""The thin py-amqp integration: a write guard, inbound observation, a wake-up.

How this works. py-amqp writes every frame through ``transport.write``, which
calls ``transport._write`` (its frame writer captured the bound ``write`` at
connect time, so replacing ``_write`` on the transport instance catches every
frame). :meth:`AmqpLink.install` wraps it with a :class:`WriteGuard`, a
*native* lock (eventlet's original one in a monkey-patched process) that green
threads take cooperatively, so a heartbeat frame written by the native
scheduler never lands inside another writer's frame. The native thread writes
its 8-byte frame straight to the socket (a non-blocking ``send`` on the real
socket object, never through the hub): it gives up at once if the guard is
busy or the send buffer is full (nothing written, nothing lost; the scheduler
retries shortly), and a frame it started it finishes before releasing the
guard, within :data:`FINISH_WITHIN`, or else declares the stream broken.

Over TLS raw bytes on the socket would corrupt the TLS stream, and an SSL
object may not be used from two OS threads at once, so there the guard covers
the owner's *reads* too: :mod:`~.tls_io` replaces py-amqp's receive function
with one that holds the guard only around a non-blocking read of the SSL
object and waits for data with the guard released. The native thread then
writes its heartbeat as one TLS record through the SSL object, under the
guard, on the same terms as above (guard busy or no room: nothing written,
retried shortly). A TLS socket it cannot guard (not an ``ssl.SSLSocket``)
falls back to the owner sending heartbeats with :meth:`AmqpLink.heartbeat_if_due`
(through py-amqp's own frame writer) between reads. A green runner, which
runs in the owner's hub, always sends them itself through py-amqp.

Inbound traffic is observed without reading: the socket has exactly one
reader, py-amqp's frame reader, which is not thread-safe. ``install`` wraps
the transport's receive function to note the time and byte count of every
read the owner makes; on top, :meth:`AmqpLink.inbound_marker` reports py-amqp's
inbound frame counter and the bytes waiting unread in the kernel (``FIONREAD``),
so data that arrived while the owner could not read (a blocked hub) counts as
life.

Declaring a connection dead shuts the socket down (``shutdown(SHUT_RDWR)`` on
the real socket object, safe from any thread): the owner's blocked read then
returns end-of-file, py-amqp raises, and the connection's ``ensure()`` loop
recovers.

:class:`Liveness` bundles all of it (heartbeat policy, socket options, link,
runner) behind the few calls an HA connection makes.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import os
import socket
import struct
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any

import amqp.transport
from amqp.exceptions import UnexpectedFrame

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.connection import runners, sockets, tls_io
from rabbit_ha_driver.connection.heartbeat import HeartbeatPolicy

if TYPE_CHECKING:
    from rabbit_ha_driver.settings import Settings

try:
    import fcntl
    import termios

    _FIONREAD: int | None = termios.FIONREAD
except ImportError:  # not POSIX
    _FIONREAD = None

#: An AMQP heartbeat frame: type 8, channel 0, size 0, frame-end.
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
#: Longest the native thread waits for the guard before leaving it for later:
#: not at all. One thread serves every connection of the process, so a wait
#: here for one busy connection would delay the heartbeats of all the others;
#: a busy guard means the owner is writing, and the scheduler retries shortly.
GUARD_WAIT = 0.0
#: Unread bytes in the kernel from which a receive buffer counts as full (or a
#: quarter of ``SO_RCVBUF`` if that is less): see :meth:`AmqpLink.inbound_marker`.
#: Far more than the broker's heartbeats pile up on an idle connection whose
#: owner does not read (8 bytes every ``H/2``).
FULL_UNREAD = 16384
#: Longest the native thread may take to finish a frame it started writing.
FINISH_WITHIN = 1.0

_SEND_FLAGS = getattr(socket, "MSG_DONTWAIT", 0) | getattr(socket, "MSG_NOSIGNAL", 0)


def raw_socket(sock: Any) -> _socket.socket:
    """The real socket object behind a plain, TLS or eventlet green socket."""
    if isinstance(sock, _socket.socket):
        return sock
    inner = getattr(sock, "fd", None)  # eventlet's GreenSocket wraps the real one
    if isinstance(inner, _socket.socket):
        return inner
    raise TypeError(f"not a socket: {sock!r}")


class WriteGuard:
    """Whole-frame mutual exclusion between the owner's writes and the native thread.

    The lock is native. Owner-side callers take it with :meth:`hold` (a green
    thread yields to the hub while it waits); the native thread uses
    :meth:`write_native`. :meth:`close` waits for a write in flight and
    refuses later native writes.
    """

    def __init__(self, natives: runners.Natives | None = None, *, cooperative: bool | None = None) -> None:
        self.natives = natives or runners.native_modules()
        self.cooperative = self.natives.patched if cooperative is None else cooperative
        self._lock = self.natives.threading.Lock()
        self.closed = False

    def acquire(self) -> None:
        """Take the guard on the owner's side (cooperatively under eventlet)."""
        if self.cooperative:
            runners.acquire_cooperatively(self._lock)
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
        (:mod:`~.tls_io`); ``data`` goes out as one TLS record.
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
        fd = sock.fileno()
        if fd < 0:
            raise OSError(errno.EBADF, "socket closed")
        sel = self.natives.select
        if hasattr(sel, "poll"):
            poller = sel.poll()
            poller.register(fd, sel.POLLOUT)
            return bool(poller.poll(timeout * 1000.0))
        _, writable, _ = sel.select([], [fd], [], timeout)
        return bool(writable)


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


class AmqpLink:
    """One py-amqp connection seen by a runner (implements ``runners.Monitored``).

    Create it after the connection is open, :meth:`install` it, and
    :meth:`detach` it before the connection is closed.
    """

    def __init__(self, connection: Any, *, name: str, clock: Clock = REAL_CLOCK,
                 natives: runners.Natives | None = None) -> None:
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

    # -- runners.Monitored ---------------------------------------------------------

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
        unread = self.unread_bytes()
        if unread is None:
            return (frames, None)
        pending = unread + len(getattr(self._transport, "_read_buffer", b""))
        if unread >= self.full_at():
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
            raw = fcntl.ioctl(fd, _FIONREAD, b"\0\0\0\0")
        except OSError:
            return None
        return int(struct.unpack("i", raw)[0])

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


class Liveness:
    """The liveness layer for one HA connection, in a few calls.

    * before connecting: :attr:`heartbeat` as kombu's ``heartbeat=`` and
      :meth:`transport_options` merged into kombu's ``transport_options``;
    * after each connect: :meth:`attach` with the py-amqp connection;
    * on ``connection.blocked``/``unblocked``: :meth:`blocked`/:meth:`unblocked`;
    * between reads: :meth:`owner_tick`, reading with a timeout of at most
      :meth:`owner_wait` (only does something over TLS with the native runner);
    * before closing or dropping the connection: :meth:`detach`;
    * when a read fails: :attr:`dead_reason` says whether liveness killed it
      (it survives :meth:`detach` until the next :meth:`attach`).
    """

    def __init__(self, settings: Settings, *, name: str, events: ev.EventBus | None = None,
                 clock: Clock = REAL_CLOCK) -> None:
        self.policy = HeartbeatPolicy.from_settings(settings)
        self.socket_options = sockets.from_settings(settings)
        self.runner = settings.heartbeat_runner
        self.name = name
        self.events = events
        self._clock = clock
        self.link: AmqpLink | None = None
        self.watch: runners.Watch | None = None
        self.in_force: sockets.SocketOptions | None = None
        self._dead_reason: str | None = None

    @property
    def heartbeat(self) -> int:
        """The heartbeat interval H to ask of the broker (kombu's ``heartbeat=``)."""
        return self.policy.negotiated_interval

    def transport_options(self) -> dict[str, Any]:
        """Entries for kombu's ``transport_options`` (py-amqp's ``socket_settings``)."""
        return {"socket_settings": self.socket_options.amqp_socket_settings()}

    def attach(self, connection: Any) -> AmqpLink:
        """Tune the socket, install the link and start serving the connection."""
        self.detach()
        self._dead_reason = None
        self.in_force = sockets.apply(connection.transport.sock, self.socket_options)
        link = AmqpLink(connection, name=self.name, clock=self._clock).install()
        self.link = link
        if self.policy.enabled and link.heartbeat_interval > 0:
            self.watch = runners.watch_connection(link, self.policy, runner=self.runner, events=self.events)
        return link

    def detach(self) -> None:
        """Stop serving the current connection (before it is closed)."""
        watch, link = self.watch, self.link
        self._dead_reason = self.dead_reason
        self.watch = self.link = None
        if watch is not None:
            watch.cancel()
        if link is not None:
            link.detach()

    def blocked(self) -> None:
        if self.link is not None:
            self.link.note_blocked()

    def unblocked(self) -> None:
        if self.link is not None:
            self.link.note_unblocked()

    @property
    def owner_sends(self) -> bool:
        """True when the connection's owner must send heartbeats (:meth:`owner_tick`)."""
        w = self.watch
        return w is not None and w.active and w.native and not w.state.sends

    def owner_wait(self) -> float | None:
        """Longest the owner may block in one read; None: no limit from liveness."""
        if not self.owner_sends or self.link is None:
            return None
        return self.policy.send_interval(self.link.heartbeat_interval)

    def owner_tick(self) -> bool:
        """Send a heartbeat from the owner if one is due; True if one was sent."""
        link = self.link
        if link is None or not self.owner_sends:
            return False
        return link.heartbeat_if_due(self.policy.send_interval(link.heartbeat_interval))

    @property
    def dead_reason(self) -> str | None:
        """Why liveness declared the connection dead, if it did."""
        w = self.watch
        if w is not None and w.dead_reason:
            return w.dead_reason
        if self.link is not None and self.link.dead_reason:
            return self.link.dead_reason
        return self._dead_reason

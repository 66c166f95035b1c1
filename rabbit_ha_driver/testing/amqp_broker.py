"""A scripted AMQP 0-9-1 broker on a loopback socket, for unit tests of the real AMQP path.

How it works. :class:`AmqpServer` listens on ``127.0.0.1`` (an ephemeral
port) and serves each accepted connection in a thread of its own. It speaks
just enough AMQP 0-9-1 for the library's py-amqp transport: the handshake
(protocol header, ``connection.start``/``tune``/``open``), channels, confirm
mode, QoS, exchanges, queues, bindings, consumers, publishes (method, content
header and body frames), deliveries, acknowledgements, RabbitMQ's extensions
(``basic.nack``, ``connection.blocked``, consumer cancel notifications) and
heartbeat frames. Frames are built and parsed with py-amqp's own serializers
(:mod:`amqp.serialization`, :mod:`amqp.basic_message`); the framing itself
(type, channel, size, payload, ``0xCE``) is spelled out here.

By default it behaves like RabbitMQ: a publish is routed (default exchange by
queue name, a fanout exchange to every bound queue, others by routing key or
``#``), confirmed, returned first when mandatory and unroutable, refused with
``channel.close`` 404 when its exchange does not exist, and a passive declare
of something missing closes the channel with 404. A test changes that with a
script: :attr:`AmqpServer.publish_script` answers the next publishes
(:data:`ACK`, :data:`NACK`, :data:`RETURN`, :data:`SILENT`, :data:`HOLD`,
:data:`DROP`, :data:`BLOCK` or ``("close", code, text)``) and
:attr:`AmqpServer.method_script` the next requests of one method
(:data:`SILENT`, :data:`DROP`, ``("close", code, text)``,
``("close_connection", code, text)``). A test acts as the broker with
:meth:`~AmqpServer.deliver`, :meth:`~AmqpServer.cancel_consumers`,
:meth:`~AmqpServer.close_channel`, :meth:`~AmqpServer.close_connection`,
:meth:`~AmqpServer.block`, :meth:`~AmqpServer.unblock`,
:meth:`~AmqpServer.heartbeat` and :meth:`~AmqpServer.drop`, and checks what
the server saw in :attr:`AmqpServer.seen` (every method of every connection,
in order); :meth:`~AmqpServer.wait_for` waits for the server thread, on an
event, never by sleeping.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any

from amqp import spec

from rabbit_ha_driver.testing._amqp_handlers import BrokerState
from rabbit_ha_driver.testing._amqp_session import _ServerConnection
from rabbit_ha_driver.testing._amqp_wire import (
    FRAME_HEARTBEAT,
    Seen,
    _frame,
    _Stored,
)


class AmqpServer(BrokerState):
    """A scripted AMQP 0-9-1 broker on ``127.0.0.1``; use as a context manager."""

    def __init__(self, *, heartbeat: int = 0) -> None:
        super().__init__(heartbeat=heartbeat)
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port = self._listener.getsockname()[1]
        self._stopped = False
        self._start(self._accept_loop, "amqp-server-accept")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def __enter__(self) -> AmqpServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Close the listener and every connection; wait for the server's threads."""
        self._stopped = True
        for sock in (self._listener,):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        with self._lock:
            for conn in self.connections:
                conn.drop()
        for thread in self._threads:
            thread.join(timeout=1.0)

    def _start(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                conn = _ServerConnection(self, sock, len(self.connections) + 1)
                self.connections.append(conn)
            self._start(conn.serve, f"amqp-server-conn-{conn.number}")

    def methods(self, conn: int | None = None, *, skip_handshake: bool = True) -> list[str]:
        """Names of the methods received (of connection number ``conn``), in order."""
        with self._lock:
            return [s.method for s in self.seen if (conn is None or s.conn == conn)
                    and not (skip_handshake and s.channel == 0 and s.method != "connection.close")]

    def of(self, method: str, conn: int | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.method == method and (conn is None or s.conn == conn)]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 0.2) -> Any:
        """Wait (on the server's events) until ``predicate()`` is true; returns its value."""
        with self._changed:
            result = self._changed.wait_for(predicate, timeout)
        assert result, "the server did not see what the test waited for"
        return result

    def _current(self) -> _ServerConnection:
        live = self.live_connections()
        assert live, "no client is connected"
        return live[-1]

    def deliver(self, queue: str, body: bytes, properties: dict[str, Any] | None = None,
                exchange: str = "", routing_key: str | None = None) -> None:
        """Put a message in ``queue`` (delivered at once to a consumer of it)."""
        with self._lock:
            self.queues.setdefault(queue, collections.deque()).append(
                _Stored(body, dict(properties or {}), exchange,
                        queue if routing_key is None else routing_key))
            self._dispatch(queue)

    def forget_queue(self, queue: str) -> None:
        """Delete ``queue`` and its consumers without telling anyone (a lost consumer)."""
        with self._lock:
            self.queues.pop(queue, None)
            self.bindings = {b for b in self.bindings if b[0] != queue}
            for tag in [t for t, c in self.consumers.items() if c.queue == queue]:
                del self.consumers[tag]

    def close_channel(self, code: int = 406, text: str = "PRECONDITION_FAILED",
                      class_id: int = 0, method_id: int = 0, channel: int | None = None) -> int:
        """Close a channel of the newest connection (by default the newest open one)."""
        with self._lock:
            conn = self._current()
            if channel is None:
                channel = [c for c in conn.open_channels if c not in conn.closing_channels][-1]
            conn.close_channel(channel, code, text, class_id, method_id)
            return channel

    def close_connection(self, code: int = 320,
                         text: str = "CONNECTION_FORCED - broker forced connection closure") -> None:
        with self._lock:
            self._current().close_connection(code, text)

    def block(self, reason: str = "low on memory") -> None:
        with self._lock:
            self.blocked = True
            for conn in self.live_connections():
                conn.send_method(0, spec.Connection.Blocked, "s", reason)

    def unblock(self) -> None:
        """Unblock publishing and confirm what was held while blocked."""
        with self._lock:
            self.blocked = False
            for conn in self.live_connections():
                conn.send_method(0, spec.Connection.Unblocked)
                self._release(conn)

    def release_held(self) -> None:
        """Confirm the held publishes, one ``basic.ack`` with ``multiple`` per channel."""
        with self._lock:
            for conn in self.live_connections():
                self._release(conn)

    def stop_reading(self) -> None:
        """The newest connection's thread reads nothing more: the client's
        writes fill the socket buffers and then block."""
        with self._lock:
            conn = self._current()
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            conn.reading.clear()

    def hold_output(self) -> None:
        """Keep what the server sends to the newest connection until :meth:`flush_output`."""
        with self._lock:
            self._current().held_output = []

    def flush_output(self) -> None:
        with self._lock:
            conn = self._current()
            held, conn.held_output = conn.held_output or [], None
            conn.send(b"".join(held))

    def heartbeat(self) -> None:
        with self._lock:
            self._current().send(_frame(FRAME_HEARTBEAT, 0, b""))

    def drop(self) -> None:
        """Close the newest connection's socket without a word."""
        with self._lock:
            self._current().drop()

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
import dataclasses
import itertools
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from amqp import spec
from amqp.basic_message import Message
from amqp.serialization import dumps, loads

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = b"\xce"
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

#: Reactions to a publish (see :attr:`AmqpServer.publish_script`).
ACK, NACK, RETURN, SILENT, HOLD, DROP, BLOCK = "ack", "nack", "return", "silent", "hold", "drop", "block"

#: Methods a client sends: name and argument format (AMQP 0-9-1, section 1.4).
CLIENT_METHODS: dict[tuple[int, int], tuple[str, str, tuple[str, ...]]] = {
    spec.Connection.StartOk: ("connection.start-ok", "FsSs",
                              ("client_properties", "mechanism", "response", "locale")),
    spec.Connection.TuneOk: ("connection.tune-ok", "BlB", ("channel_max", "frame_max", "heartbeat")),
    spec.Connection.Open: ("connection.open", "ssb", ("virtual_host", "capabilities", "insist")),
    spec.Connection.Close: ("connection.close", "BsBB",
                            ("reply_code", "reply_text", "class_id", "method_id")),
    spec.Connection.CloseOk: ("connection.close-ok", "", ()),
    spec.Channel.Open: ("channel.open", "s", ("reserved",)),
    spec.Channel.Close: ("channel.close", "BsBB", ("reply_code", "reply_text", "class_id", "method_id")),
    spec.Channel.CloseOk: ("channel.close-ok", "", ()),
    spec.Channel.Flow: ("channel.flow", "b", ("active",)),
    spec.Channel.FlowOk: ("channel.flow-ok", "b", ("active",)),
    spec.Confirm.Select: ("confirm.select", "b", ("nowait",)),
    spec.Basic.Qos: ("basic.qos", "lBb", ("prefetch_size", "prefetch_count", "global")),
    spec.Exchange.Declare: ("exchange.declare", "BssbbbbbF",
                            ("reserved", "exchange", "type", "passive", "durable", "auto_delete",
                             "internal", "nowait", "arguments")),
    spec.Exchange.Delete: ("exchange.delete", "Bsbb", ("reserved", "exchange", "if_unused", "nowait")),
    spec.Queue.Declare: ("queue.declare", "BsbbbbbF",
                         ("reserved", "queue", "passive", "durable", "exclusive", "auto_delete",
                          "nowait", "arguments")),
    spec.Queue.Bind: ("queue.bind", "BsssbF",
                      ("reserved", "queue", "exchange", "routing_key", "nowait", "arguments")),
    spec.Queue.Delete: ("queue.delete", "Bsbbb", ("reserved", "queue", "if_unused", "if_empty", "nowait")),
    spec.Queue.Purge: ("queue.purge", "Bsb", ("reserved", "queue", "nowait")),
    spec.Basic.Consume: ("basic.consume", "BssbbbbF",
                         ("reserved", "queue", "consumer_tag", "no_local", "no_ack", "exclusive",
                          "nowait", "arguments")),
    spec.Basic.Cancel: ("basic.cancel", "sb", ("consumer_tag", "nowait")),
    spec.Basic.Publish: ("basic.publish", "Bssbb",
                         ("reserved", "exchange", "routing_key", "mandatory", "immediate")),
    spec.Basic.Ack: ("basic.ack", "Lb", ("delivery_tag", "multiple")),
    spec.Basic.Reject: ("basic.reject", "Lb", ("delivery_tag", "requeue")),
    spec.Basic.Nack: ("basic.nack", "Lbb", ("delivery_tag", "multiple", "requeue")),
}
_IDS = {name: sig for sig, (name, _, _) in CLIENT_METHODS.items()}


@dataclasses.dataclass
class Seen:
    """One method the server received, with its content for a publish."""

    conn: int
    channel: int
    method: str
    args: dict[str, Any]
    body: bytes | None = None
    properties: dict[str, Any] | None = None


@dataclasses.dataclass
class _Stored:
    body: bytes
    properties: dict[str, Any]
    exchange: str
    routing_key: str
    redelivered: bool = False


@dataclasses.dataclass
class _Consumer:
    conn: _ServerConnection
    channel: int
    tag: str
    queue: str
    no_ack: bool


class _Dropped(Exception):
    """The server let go of this connection."""


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + FRAME_END


def _method(channel: int, sig: tuple[int, int], fmt: str = "", args: tuple[Any, ...] = ()) -> bytes:
    return _frame(FRAME_METHOD, channel, struct.pack(">HH", *sig) + (dumps(fmt, list(args)) if fmt else b""))


def _content(channel: int, body: bytes, properties: dict[str, Any], frame_max: int) -> bytes:
    header = struct.pack(">HHQ", spec.Basic.CLASS_ID, 0, len(body)) \
        + Message(**properties)._serialize_properties()
    chunk = max(1, frame_max - 8)
    return _frame(FRAME_HEADER, channel, header) + b"".join(
        _frame(FRAME_BODY, channel, body[i:i + chunk]) for i in range(0, len(body), chunk))


class _ServerConnection:
    """One accepted client connection, served by its own thread."""

    def __init__(self, server: AmqpServer, sock: socket.socket, number: int) -> None:
        self.server = server
        self.sock = sock
        self.number = number
        self.frame_max = 131072
        self.open_channels: list[int] = []  # in the order they were opened
        self.closing_channels: set[int] = set()  # the server sent channel.close
        self.confirming: set[int] = set()
        self.publish_seq: dict[int, int] = collections.Counter()
        self.delivery_tags: dict[int, itertools.count[int]] = {}
        self.unacked: dict[tuple[int, int], tuple[str, _Stored]] = {}
        self.held: dict[int, list[int]] = collections.defaultdict(list)
        self.closing = False
        self.alive = True
        self.client_heartbeat: int | None = None
        #: Cleared: the thread reads nothing more (a broker that stopped reading).
        self.reading = threading.Event()
        self.reading.set()
        #: Not None: what the server sends waits here (see AmqpServer.hold_output).
        self.held_output: list[bytes] | None = None

    # -- writing (always under the server's lock) -------------------------

    def send(self, data: bytes) -> None:
        if not self.alive:
            return
        if self.held_output is not None:
            self.held_output.append(data)
            return
        try:
            self.sock.sendall(data)
        except OSError:
            self.alive = False

    def send_method(self, channel: int, sig: tuple[int, int], fmt: str = "", *args: Any) -> None:
        self.send(_method(channel, sig, fmt, args))

    def close_channel(self, channel: int, code: int, text: str,
                      class_id: int = 0, method_id: int = 0) -> None:
        self.send_method(channel, spec.Channel.Close, "BsBB", code, text, class_id, method_id)
        self.closing_channels.add(channel)
        self.server._forget_channel(self, channel)

    def close_connection(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        self.send_method(0, spec.Connection.Close, "BsBB", code, text, class_id, method_id)
        self.closing = True

    def drop(self) -> None:
        self.alive = False
        self.reading.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    # -- reading (the connection's thread) ------------------------------

    def _read(self, size: int) -> bytes:
        data = bytearray(size)
        view, got = memoryview(data), 0
        while got < size:
            n = self.sock.recv_into(view[got:])
            if not n:
                raise _Dropped("peer closed")
            got += n
        return bytes(data)

    def read_frame(self) -> tuple[int, int, bytes]:
        self.reading.wait()
        if not self.alive:
            raise _Dropped("dropped")
        kind, channel, size = struct.unpack(">BHI", self._read(7))
        payload = self._read(size)
        if self._read(1) != FRAME_END:
            raise _Dropped("frame end missing")
        return kind, channel, payload

    def read_method(self) -> tuple[int, str, dict[str, Any], Message | None]:
        """The next method (heartbeats skipped), with its content if it has one."""
        while True:
            kind, channel, payload = self.read_frame()
            if kind == FRAME_HEARTBEAT:
                self.server._note_heartbeat(self)
                continue
            if kind != FRAME_METHOD:
                raise _Dropped(f"unexpected frame type {kind}")
            sig = struct.unpack(">HH", payload[:4])
            name, fmt, names = CLIENT_METHODS[sig]
            values = loads(fmt, payload, 4)[0] if fmt else []
            args = dict(zip(names, values, strict=True))
            content = None
            if sig == spec.Basic.Publish:
                content = Message()
                _, _, header = self.read_frame()
                content.inbound_header(header)
                while not content.ready:
                    _, _, chunk = self.read_frame()
                    content.inbound_body(chunk)
                if not content.body_size:
                    content.body = b""
            return channel, name, args, content

    def serve(self) -> None:
        try:
            self._handshake()
            while True:
                channel, name, args, content = self.read_method()
                with self.server._lock:
                    self.server._received(self, channel, name, args, content)
                    if not self.alive:
                        return
        except (_Dropped, OSError):
            pass
        finally:
            with self.server._lock:
                self.alive = False
                self.server._connection_gone(self)
            with contextlib.suppress(OSError):
                self.sock.close()

    def _handshake(self) -> None:
        server = self.server
        if self._read(8) != PROTOCOL_HEADER:
            raise _Dropped("not AMQP 0-9-1")
        if server.stall_handshake:  # a frozen broker: accepts, then says nothing
            while True:
                self._read(1)
        capabilities = {"publisher_confirms": True, "basic.nack": True, "consumer_cancel_notify": True,
                        "connection.blocked": True, "exchange_exchange_bindings": True,
                        "authentication_failure_close": True, "per_consumer_qos": True}
        with server._lock:
            self.send_method(0, spec.Connection.Start, "ooFSS", 0, 9,
                             {"product": "amqp_server (tests)", "version": "0.0",
                              "capabilities": capabilities}, "AMQPLAIN PLAIN", "en_US")
        _, name, args, _ = self.read_method()
        with server._lock:
            server._record(self, 0, name, args, None)
            if server.refuse_login:
                self.close_connection(403, "ACCESS_REFUSED - Login was refused using authentication "
                                           "mechanism AMQPLAIN")
                raise _Dropped("login refused")
            self.send_method(0, spec.Connection.Tune, "BlB", 2047, self.frame_max, server.heartbeat_interval)
        _, name, args, _ = self.read_method()
        self.client_heartbeat = args.get("heartbeat")
        self.frame_max = args.get("frame_max") or self.frame_max
        with server._lock:
            server._record(self, 0, name, args, None)
        _, name, args, _ = self.read_method()
        with server._lock:
            server._record(self, 0, name, args, None)
            self.send_method(0, spec.Connection.OpenOk, "s", "")
            if server.blocked:  # a resource alarm blocks new connections too
                self.send_method(0, spec.Connection.Blocked, "s", "low on memory")


class AmqpServer:
    """A scripted AMQP 0-9-1 broker on ``127.0.0.1``; use as a context manager."""

    def __init__(self, *, heartbeat: int = 0) -> None:
        #: The heartbeat interval offered in ``connection.tune``.
        self.heartbeat_interval = heartbeat
        #: Answers to the next publishes, oldest first; empty: behave like RabbitMQ.
        self.publish_script: collections.deque[Any] = collections.deque()
        #: Answers to the next requests of a method (by name), oldest first.
        self.method_script: dict[str, collections.deque[Any]] = collections.defaultdict(collections.deque)
        #: Close every connection with 403 ACCESS_REFUSED after start-ok.
        self.refuse_login = False
        #: Accept connections and never answer their protocol header.
        self.stall_handshake = False
        #: Every method received, in order.
        self.seen: list[Seen] = []
        self.heartbeats_received = 0
        self.exchanges: dict[str, str] = {"": "direct", "amq.direct": "direct", "amq.topic": "topic",
                                          "amq.fanout": "fanout"}
        self.queues: dict[str, collections.deque[_Stored]] = {}
        self.bindings: set[tuple[str, str, str]] = set()  # (queue, exchange, routing key)
        self.consumers: dict[str, _Consumer] = {}
        self.connections: list[_ServerConnection] = []
        self.blocked = False
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._names = itertools.count(1)
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

    # -- what the server saw --------------------------------------------

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

    def live_connections(self) -> list[_ServerConnection]:
        with self._lock:
            return [c for c in self.connections if c.alive]

    # -- acting as the broker (from the test's thread) --------------------

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

    def cancel_consumers(self, queue: str) -> list[str]:
        """Cancel the consumers of ``queue`` with ``basic.cancel`` (as when it is deleted)."""
        with self._lock:
            tags = [t for t, c in self.consumers.items() if c.queue == queue]
            for tag in tags:
                consumer = self.consumers.pop(tag)
                consumer.conn.send_method(consumer.channel, spec.Basic.Cancel, "sb", tag, True)
            return tags

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

    def _release(self, conn: _ServerConnection) -> None:
        for channel, tags in conn.held.items():
            if tags:
                conn.send_method(channel, spec.Basic.Ack, "Lb", max(tags), len(tags) > 1)
        conn.held.clear()

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

    # -- the server's side (called under the lock) ----------------------

    def _record(self, conn: _ServerConnection, channel: int, name: str, args: dict[str, Any],
                content: Message | None) -> None:
        self.seen.append(Seen(conn.number, channel, name, args,
                              None if content is None else bytes(content.body),
                              None if content is None else dict(content.properties)))
        self._changed.notify_all()

    def _note_heartbeat(self, conn: _ServerConnection) -> None:
        with self._lock:
            self.heartbeats_received += 1
            self._changed.notify_all()

    def _connection_gone(self, conn: _ServerConnection) -> None:
        for channel in list(conn.open_channels):
            self._forget_channel(conn, channel)
        self._changed.notify_all()

    def _forget_channel(self, conn: _ServerConnection, channel: int) -> None:
        """The channel is closed: its consumers go, its unacknowledged messages return."""
        if channel in conn.open_channels:
            conn.open_channels.remove(channel)
        conn.confirming.discard(channel)
        for tag in [t for t, c in self.consumers.items() if c.conn is conn and c.channel == channel]:
            del self.consumers[tag]
        for key in sorted(k for k in conn.unacked if k[0] == channel):
            queue, stored = conn.unacked.pop(key)
            stored.redelivered = True
            self.queues.setdefault(queue, collections.deque()).appendleft(stored)
        conn.held.pop(channel, None)

    def _scripted(self, name: str) -> Any:
        script = self.method_script.get(name)
        return script.popleft() if script else None

    def _received(self, conn: _ServerConnection, channel: int, name: str, args: dict[str, Any],
                  content: Message | None) -> None:
        self._record(conn, channel, name, args, content)
        if conn.closing:
            if name in ("connection.close-ok", "connection.close"):
                if name == "connection.close":
                    conn.send_method(0, spec.Connection.CloseOk)
                conn.drop()
            return
        if channel in conn.closing_channels:
            # After a channel.close, everything but its answer is dropped.
            if name == "channel.close-ok":
                conn.closing_channels.discard(channel)
            elif name == "channel.close":
                conn.send_method(channel, spec.Channel.CloseOk)
            return
        reaction = self._scripted(name)
        if reaction == SILENT:
            return
        if reaction == DROP:
            conn.drop()
            return
        if isinstance(reaction, tuple) and reaction[0] == "close":
            # ("close", code, text[, (class_id, method_id)]): the method the
            # close names, this one unless given (a close over another method).
            sig = reaction[3] if len(reaction) > 3 else _IDS[name]
            conn.close_channel(channel, reaction[1], reaction[2], *sig)
            return
        if isinstance(reaction, tuple) and reaction[0] == "close_connection":
            sig = _IDS[name]
            conn.close_connection(reaction[1], reaction[2], *sig)
            return
        handler = getattr(self, "_on_" + name.replace(".", "_").replace("-", "_"), None)
        if handler is not None:
            handler(conn, channel, args, content)

    def _on_connection_close(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                             content: Any) -> None:
        conn.send_method(0, spec.Connection.CloseOk)
        conn.drop()

    def _on_channel_open(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                         content: Any) -> None:
        conn.open_channels.append(channel)
        conn.delivery_tags[channel] = itertools.count(1)
        conn.publish_seq[channel] = 0
        conn.send_method(channel, spec.Channel.OpenOk, "S", "")

    def _on_channel_close(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                          content: Any) -> None:
        self._forget_channel(conn, channel)
        conn.send_method(channel, spec.Channel.CloseOk)

    def _on_confirm_select(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                           content: Any) -> None:
        conn.confirming.add(channel)
        if not args["nowait"]:
            conn.send_method(channel, spec.Confirm.SelectOk)

    def _on_basic_qos(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                      content: Any) -> None:
        conn.send_method(channel, spec.Basic.QosOk)

    def _on_exchange_declare(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                             content: Any) -> None:
        name = args["exchange"]
        if args["passive"]:
            if name not in self.exchanges:
                conn.close_channel(channel, 404, f"NOT_FOUND - no exchange '{name}' in vhost '/'",
                                   *spec.Exchange.Declare)
                return
        else:
            self.exchanges[name] = args["type"]
        if not args["nowait"]:
            conn.send_method(channel, spec.Exchange.DeclareOk)

    def _on_queue_declare(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                          content: Any) -> None:
        name = args["queue"] or f"amq.gen-{next(self._names)}"
        if args["passive"] and name not in self.queues:
            conn.close_channel(channel, 404, f"NOT_FOUND - no queue '{name}' in vhost '/'",
                               *spec.Queue.Declare)
            return
        messages = self.queues.setdefault(name, collections.deque())
        count = sum(1 for c in self.consumers.values() if c.queue == name)
        if not args["nowait"]:
            conn.send_method(channel, spec.Queue.DeclareOk, "sll", name, len(messages), count)

    def _on_queue_bind(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                       content: Any) -> None:
        if args["exchange"] not in self.exchanges:
            conn.close_channel(channel, 404, f"NOT_FOUND - no exchange '{args['exchange']}' in vhost '/'",
                               *spec.Queue.Bind)
            return
        self.bindings.add((args["queue"], args["exchange"], args["routing_key"]))
        if not args["nowait"]:
            conn.send_method(channel, spec.Queue.BindOk)

    def _on_queue_delete(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                         content: Any) -> None:
        name = args["queue"]
        messages = self.queues.pop(name, collections.deque())
        self.bindings = {b for b in self.bindings if b[0] != name}
        self.cancel_consumers(name)
        if not args["nowait"]:
            conn.send_method(channel, spec.Queue.DeleteOk, "l", len(messages))

    def _on_basic_consume(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                          content: Any) -> None:
        queue = args["queue"]
        if queue not in self.queues:
            conn.close_channel(channel, 404, f"NOT_FOUND - no queue '{queue}' in vhost '/'",
                               *spec.Basic.Consume)
            return
        tag = args["consumer_tag"] or f"amq.ctag-{next(self._names)}"
        if tag in self.consumers:
            conn.close_connection(530, f"NOT_ALLOWED - attempt to reuse consumer tag '{tag}'",
                                  *spec.Basic.Consume)
            return
        self.consumers[tag] = _Consumer(conn, channel, tag, queue, bool(args["no_ack"]))
        if not args["nowait"]:
            conn.send_method(channel, spec.Basic.ConsumeOk, "s", tag)
        self._dispatch(queue)

    def _on_basic_cancel(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                         content: Any) -> None:
        self.consumers.pop(args["consumer_tag"], None)
        if not args["nowait"]:
            conn.send_method(channel, spec.Basic.CancelOk, "s", args["consumer_tag"])

    def _on_basic_ack(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                      content: Any) -> None:
        tag = args["delivery_tag"]
        keys = [k for k in conn.unacked if k[0] == channel and
                (k[1] == tag or (args["multiple"] and k[1] <= tag))]
        if not keys:
            conn.close_channel(channel, 406, f"PRECONDITION_FAILED - unknown delivery tag {tag}",
                               *spec.Basic.Ack)
            return
        for key in keys:
            del conn.unacked[key]

    def _on_basic_reject(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                         content: Any) -> None:
        entry = conn.unacked.pop((channel, args["delivery_tag"]), None)
        if entry is not None and args["requeue"]:
            queue, stored = entry
            stored.redelivered = True
            self.queues.setdefault(queue, collections.deque()).appendleft(stored)
            self._dispatch(queue)

    def _on_basic_publish(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                          content: Message | None) -> None:
        assert content is not None
        exchange, key = args["exchange"], args["routing_key"]
        seq = 0
        if channel in conn.confirming:
            seq = conn.publish_seq[channel] = conn.publish_seq[channel] + 1
        reaction = self.publish_script.popleft() if self.publish_script else None
        if isinstance(reaction, tuple) and reaction[0] == "close":
            conn.close_channel(channel, reaction[1], reaction[2], *spec.Basic.Publish)
            return
        if reaction == DROP:
            conn.drop()
            return
        if exchange not in self.exchanges:
            conn.close_channel(channel, 404, f"NOT_FOUND - no exchange '{exchange}' in vhost '/'",
                               *spec.Basic.Publish)
            return
        queues = self._route(exchange, key)
        if reaction is None and not queues and args["mandatory"]:
            reaction = RETURN
        if reaction == RETURN:
            conn.send(_method(channel, spec.Basic.Return, "Bsss", (312, "NO_ROUTE", exchange, key))
                      + _content(channel, bytes(content.body), dict(content.properties), conn.frame_max))
        elif reaction not in (NACK, SILENT):
            for queue in queues:
                self.queues[queue].append(_Stored(bytes(content.body), dict(content.properties),
                                                  exchange, key))
                self._dispatch(queue)
        if not seq or reaction == SILENT:
            return
        if reaction == BLOCK and not self.blocked:
            self.blocked = True
            conn.send_method(0, spec.Connection.Blocked, "s", "low on memory")
        if reaction in (HOLD, BLOCK) or self.blocked:
            conn.held[channel].append(seq)
        elif reaction == NACK:
            conn.send_method(channel, spec.Basic.Nack, "Lbb", seq, False, False)
        else:
            conn.send_method(channel, spec.Basic.Ack, "Lb", seq, False)

    def _route(self, exchange: str, key: str) -> list[str]:
        if exchange == "":
            return [key] if key in self.queues else []
        fanout = self.exchanges.get(exchange) == "fanout"
        return sorted({q for q, e, k in self.bindings
                       if e == exchange and q in self.queues and (fanout or k in (key, "#"))})

    def _dispatch(self, queue: str) -> None:
        """Deliver what waits in ``queue`` to its consumers, round robin."""
        consumers = [c for c in self.consumers.values() if c.queue == queue and c.conn.alive]
        messages = self.queues.get(queue)
        turn = 0
        while consumers and messages:
            consumer = consumers[turn % len(consumers)]
            turn += 1
            stored = messages.popleft()
            conn, channel = consumer.conn, consumer.channel
            tag = next(conn.delivery_tags[channel])
            if not consumer.no_ack:
                conn.unacked[(channel, tag)] = (queue, stored)
            conn.send(_method(channel, spec.Basic.Deliver, "sLbss",
                              (consumer.tag, tag, stored.redelivered, stored.exchange, stored.routing_key))
                      + _content(channel, stored.body, stored.properties, conn.frame_max))

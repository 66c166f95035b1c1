"""One client connection of the scripted broker, served by a thread of its own.

It reads frames, answers the handshake, and hands every method to the broker
(:class:`~rabbit_ha_driver.testing._amqp_handlers.BrokerState`).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import socket
import struct
import threading
from typing import TYPE_CHECKING, Any

from amqp import spec
from amqp.basic_message import Message
from amqp.serialization import loads

from rabbit_ha_driver.testing._amqp_wire import (
    CLIENT_METHODS,
    FRAME_END,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    PROTOCOL_HEADER,
    _Dropped,
    _method,
    _Stored,
)

if TYPE_CHECKING:
    from rabbit_ha_driver.testing._amqp_handlers import BrokerState


class _ServerConnection:
    """One accepted client connection, served by its own thread."""

    def __init__(self, server: BrokerState, sock: socket.socket, number: int) -> None:
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

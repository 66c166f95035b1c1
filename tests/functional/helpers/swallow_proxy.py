"""A loopback TCP proxy in front of one broker that can stop answering.

Once :meth:`SwallowProxy.swallow` is called, frames from the broker to the
client are dropped except heartbeats: the connection looks alive (heartbeats
keep flowing) while every request goes unanswered, which is what a broker that
swallows a request during a leader election looks like to a client.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

HEARTBEAT_FRAME = 8
FRAME_END = 0xCE


class SwallowProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._swallowing = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self.dropped_frames = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def swallow(self) -> None:
        self._swallowing.set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target, timeout=5)
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._frames, args=(upstream, client), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)

    def _frames(self, src: socket.socket, dst: socket.socket) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                buffer += data
                while len(buffer) >= 7:
                    kind, channel, size = struct.unpack(">BHI", buffer[:7])
                    if len(buffer) < 8 + size:
                        break
                    frame, buffer = buffer[:8 + size], buffer[8 + size:]
                    if frame[-1] != FRAME_END:
                        raise OSError("frame out of sync")
                    if self._drops(kind, channel, frame):
                        self.dropped_frames += 1
                        continue
                    dst.sendall(frame)

    def _drops(self, kind: int, channel: int, frame: bytes) -> bool:
        """Whether a frame from the broker is dropped: all but heartbeats, once swallowing."""
        return self._swallowing.is_set() and kind != HEARTBEAT_FRAME

    def close(self) -> None:
        self._closed.set()
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()


METHOD_FRAME, HEADER_FRAME, BODY_FRAME = 1, 2, 3
BASIC_DELIVER = (60, 60)


class DeliverySwallowProxy(SwallowProxy):
    """Once swallowing, drops only message deliveries (``basic.deliver`` and
    its content frames): every request is still answered and the broker
    counts the messages delivered, but the consumer never sees them, as with a
    consumer the broker lost without a cancel."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self._in_delivery: set[int] = set()
        super().__init__(target_port, target_host)

    def _drops(self, kind: int, channel: int, frame: bytes) -> bool:
        if not self._swallowing.is_set():
            return False
        if kind == METHOD_FRAME:
            if struct.unpack(">HH", frame[7:11]) == BASIC_DELIVER:
                self._in_delivery.add(channel)
                return True
            self._in_delivery.discard(channel)
            return False
        return kind in (HEADER_FRAME, BODY_FRAME) and channel in self._in_delivery

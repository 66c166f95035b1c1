"""One soak worker process: idle and busy connections at the library's defaults.

Run by :mod:`.run` as ``python -m tests.functional.soak.worker CONFIG_JSON``;
prints ``READY`` once every connection consumes, then, after ``SIGTERM`` or
its duration, one JSON line of figures.

The connections use only the URL: no heartbeat, keepalive or timeout option,
so they run at the defaults being soaked. Each consumes a queue of its own.
Idle ones only drain; busy ones publish to their queue (with a confirm) at
``rate`` messages a second and drain between publishes. With
``"eventlet": true`` the process is monkey-patched first and every connection
is served by a green thread, and every ``block_every`` seconds one green
thread holds the hub with CPU-bound work for ``block_for`` seconds: nothing
else of the process runs then but the library's native heartbeat thread.

Per connection the worker reports the heartbeat frames it sent and the bytes
the kernel counted each way (``TCP_INFO``: bytes acknowledged by the broker,
bytes received), so the heartbeat and probe traffic of an idle connection can
be read off.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import struct
import sys
import time
from typing import Any

#: Offsets in Linux's struct tcp_info of tcpi_bytes_acked and tcpi_bytes_received.
BYTES_ACKED, BYTES_RECEIVED = 120, 128


def tcp_bytes(sock: socket.socket | None) -> tuple[int, int]:
    """(bytes acknowledged by the peer, bytes received) of ``sock``; (0, 0) if unknown."""
    if sock is None:
        return 0, 0
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except OSError:
        return 0, 0
    if len(info) < BYTES_RECEIVED + 8:
        return 0, 0
    return struct.unpack_from("Q", info, BYTES_ACKED)[0], struct.unpack_from("Q", info, BYTES_RECEIVED)[0]


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[0])
    if cfg.get("eventlet"):
        import eventlet

        eventlet.monkey_patch()
    import threading

    from rabbit_ha_driver import events as ev
    from rabbit_ha_driver.connection import Connection, Deadline
    from rabbit_ha_driver.options import from_url

    recorder = ev.Recorder()
    bus = ev.EventBus()
    bus.subscribe(recorder)
    bus.subscribe(ev.LogSubscriber())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    errors: list[str] = []

    class Member:
        def __init__(self, url: str, name: str, busy: bool) -> None:
            self.conn = Connection(from_url(url), name=name, events=bus)
            self.busy = busy
            self.queue = f"rha-soak.{name}.{time.time_ns() % 10**9}"
            self.published = 0
            self.received = 0
            self.conn.set_qos()
            self.conn.declare_queue(self.queue, durable=False, auto_delete=True)
            self.conn.consume(self.queue, self._on_message, no_ack=True)
            self.start_bytes = (0, 0)
            self.start_beats = 0

        def _on_message(self, message: Any) -> None:
            self.received += 1

        def sock(self) -> socket.socket | None:
            return self.conn._socket()

        def beats(self) -> int:
            link = self.conn.liveness.link if self.conn.liveness is not None else None
            return link.heartbeats_sent if link is not None else 0

        def run(self) -> None:
            period = 1.0 / cfg["rate"]
            next_publish = time.monotonic()
            while not stop.is_set():
                try:
                    now = time.monotonic()
                    if self.busy and now >= next_publish:
                        self.conn.publish(b"m", "", self.queue, deadline=Deadline.after(10))
                        self.published += 1
                        next_publish = max(next_publish + period, now)
                    wait = max(0.0, next_publish - time.monotonic()) if self.busy else 0.5
                    self.conn.drain_events(min(wait, 0.5))
                except Exception as error:  # kept for the report, not swallowed
                    errors.append(f"{self.conn.name}: {type(error).__name__}: {error}")
                    stop.wait(0.1)

    nodes = cfg["urls"]
    kinds = ["busy"] * cfg["busy"] + ["idle"] * cfg["idle"]
    members = [Member(nodes[i % len(nodes)], f"soak-{cfg['name']}-{kind}-{i}", busy=kind == "busy")
               for i, kind in enumerate(kinds)]
    threads = [threading.Thread(target=m.run, name=m.conn.name, daemon=True) for m in members]
    for t in threads:
        t.start()
    time.sleep(1.0)
    for m in members:
        m.start_bytes, m.start_beats = tcp_bytes(m.sock()), m.beats()
    started = time.monotonic()
    print("READY", flush=True)
    blocks: list[float] = []
    next_block = started + cfg["block_every"] if cfg.get("eventlet") and cfg["block_every"] else None
    while not stop.is_set() and time.monotonic() - started < cfg["seconds"]:
        if next_block is not None and time.monotonic() >= next_block:
            began = time.monotonic()
            spins = 0
            while time.monotonic() - began < cfg["block_for"]:  # holds the hub: CPU-bound work
                spins += 1
            blocks.append(time.monotonic() - began)
            next_block = time.monotonic() + cfg["block_every"]
        stop.wait(0.5)
    soaked = time.monotonic() - started
    figures = []
    for m in members:
        out_bytes, in_bytes = tcp_bytes(m.sock())
        figures.append({"name": m.conn.name, "busy": m.busy, "beats": m.beats() - m.start_beats,
                        "out": out_bytes - m.start_bytes[0], "in": in_bytes - m.start_bytes[1],
                        "published": m.published, "received": m.received})
    stop.set()
    for t in threads:
        t.join(5)
    report = {
        "name": cfg["name"], "eventlet": bool(cfg.get("eventlet")), "soaked": soaked,
        "blocks": blocks, "members": figures, "errors": errors[:20], "error_count": len(errors),
        "declared_dead": [str(e) for e in recorder.of(ev.DeclaredDead)],
        "lost": [str(e) for e in recorder.of(ev.ConnectionLost)],
        "connected": len(recorder.of(ev.Connected)),
        "heartbeat_missed": len(recorder.of(ev.HeartbeatMissed)),
        "negotiated": sorted({e.heartbeat for e in recorder.of(ev.Connected)}),
    }
    for m in members:
        with contextlib.suppress(Exception):  # the figures are out already
            m.conn.close()
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Measuring helpers for the recovery scenarios: a consuming connection driven
by a thread, and a probe publisher that keeps sending so the moment consuming
resumes can be seen end to end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import Connection, Deadline
from rabbit_ha_driver.options import from_url

from .faults import OWN_QUEUES_DURABLE


def unique(prefix: str) -> str:
    return f"rha-func.{prefix}.{uuid.uuid4().hex[:8]}"


def rotate_url(cluster: Any, first: int) -> str:
    """The cluster URL with node ``first`` first (the node connected to)."""
    order = [cluster.nodes[(first + i) % len(cluster.nodes)] for i in range(len(cluster.nodes))]
    return cluster.url(nodes=order)


class ConsumerUnderTest:
    """A library connection consuming one queue, drained by a background thread."""

    def __init__(self, url: str, queue: str, *, queue_args: dict[str, Any] | None = None,
                 durable: bool = OWN_QUEUES_DURABLE, name: str = "func-consumer", **overrides: Any) -> None:
        self.recorder = ev.Recorder()
        bus = ev.EventBus()
        bus.subscribe(self.recorder)
        bus.subscribe(ev.LogSubscriber())
        self.conn = Connection(from_url(url, **overrides), name=name, events=bus)
        self.queue = queue
        self.received: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        self.conn.set_qos()
        self.conn.declare_queue(queue, durable=durable, arguments=queue_args)
        self.conn.consume(queue, self._on_message)
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"drain-{queue}")
        self._thread.start()

    def _on_message(self, message: Any) -> None:
        self.received.append((time.monotonic(), message.body))
        self.conn.ack(message)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.conn.drain_events(0.05)
            except exc.RabbitHAError as error:  # keep serving; the test judges
                self.recorder(ev.ConnectionLost("test", "-", f"drain raised {error!r}"))
                time.sleep(0.05)

    def first_after(self, t: float, prefix: bytes = b"") -> float | None:
        for when, body in self.received:
            if when >= t and body.startswith(prefix):
                return when
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.conn.close()


class Probe:
    """Publishes a numbered message to a queue every ``interval`` seconds."""

    def __init__(self, url: str, queue: str, interval: float = 0.02, prefix: bytes = b"probe") -> None:
        self.conn = Connection(from_url(url, request_timeout=2.0), name="func-probe")
        self.queue = queue
        self.interval = interval
        self.prefix = prefix
        self.sent: list[tuple[float, bytes]] = []
        self.unroutable = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"probe-{queue}")
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            body = self.prefix + b"-%d" % n
            try:
                self.conn.publish(body, "", self.queue, deadline=Deadline.after(1.0))
                self.sent.append((time.monotonic(), body))
            except exc.Unroutable:
                self.unroutable += 1
            except exc.RabbitHAError:
                self.errors += 1
            time.sleep(self.interval)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.conn.close()


@contextlib.contextmanager
def closing(*things: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for thing in things:
            with contextlib.suppress(Exception):
                thing.close()


def wait_for(predicate: Any, timeout: float, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


class Caller(threading.Thread):
    """Calls ``echo(value=n)`` back to back until stopped, ``pause`` seconds apart.

    Records (start, end, error class name or None) for every call; works with
    any client whose ``call(ctxt, method, **kwargs)`` returns the result
    (this library's and oslo.messaging's).
    """

    def __init__(self, client: Any, pause: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.pause = pause
        self.done: list[tuple[float, float, str | None]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            started = time.monotonic()
            try:
                assert self.client.call({}, "echo", value=n) == n
                outcome = None
            except Exception as error:
                outcome = type(error).__name__
            self.done.append((started, time.monotonic(), outcome))
            self.stopping.wait(self.pause)

    @property
    def answered(self) -> int:
        return sum(1 for d in self.done if d[2] is None)


@dataclasses.dataclass
class CallRecord:
    n: int
    started: float
    took: float
    error: str | None


class PacedCaller:
    """Calls ``echo(n=n)`` every ``interval`` seconds, one call at a time, and
    records each (a call that takes longer delays the next, never overlaps it)."""

    def __init__(self, client: Any, interval: float, stop_within: float, name: str = "caller") -> None:
        self.client = client
        self.interval = interval
        self.stop_within = stop_within
        self.records: list[CallRecord] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            n += 1
            started = time.monotonic()
            error = None
            try:
                if self.client.call({}, "echo", n=n) != n:
                    error = "wrong result"
            except Exception as failure:
                error = f"{type(failure).__name__}: {str(failure)[:300]}"
            self.records.append(CallRecord(n, started, time.monotonic() - started, error))
            next_at = max(next_at + self.interval, time.monotonic())
            self._stop.wait(next_at - time.monotonic())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.stop_within)


def report(title: str, figures: list[float], bound: float) -> str:
    line = (f"{title}: n={len(figures)} min={min(figures):.3f}s median={statistics.median(figures):.3f}s "
            f"max={max(figures):.3f}s (bound {bound:.3f}s) runs={[round(f, 3) for f in figures]}")
    print(line)
    return line

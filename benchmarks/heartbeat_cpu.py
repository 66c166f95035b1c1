"""CPU cost of keeping idle connections alive: the library against bare py-amqp.

Usage::

    python -m benchmarks.heartbeat_cpu --url amqp://guest:guest@127.0.0.1:5672// \\
        [--connections 200] [--threshold 10] [--seconds 60] [--settle SECONDS]

How it works. Two phases run one after the other in this process, against the
same broker:

1. *baseline*: ``N`` bare py-amqp connections with heartbeats off
   (``heartbeat=0``): what N open sockets cost when nothing runs for them;
2. *library*: ``N`` :class:`rabbit_ha_driver.connection.Connection` objects
   with ``heartbeat_timeout_threshold = T`` (so ``H = T // 2`` negotiated and
   ``rate / H`` heartbeat frames a second per connection), served by the one
   native heartbeat scheduler of the process.

A third phase, *classic* (skip it with ``--no-classic``), shows what the
usual design costs for comparison: ``N`` py-amqp connections with the same
``H``, each with its own thread that every ``H / (2 rate)`` seconds reads what
arrived (a 1 ms ``drain_events``) and calls py-amqp's ``heartbeat_tick``.

Nobody reads the first two sets of connections: an idle service connection spends its
time in one blocking read, which costs nothing, so what remains is the
heartbeat machinery itself (the scheduler thread's wake-ups, its frames and
its look at each socket's unread bytes). After opening the connections, each
phase waits ``--settle`` seconds so that connecting and the first deadlines
are not measured, then measures the CPU time of the whole process
(``resource.getrusage``, user + system) over ``--seconds`` of wall time and
prints it as a percentage of one core. The library phase also reports the
heartbeat frames sent and any connection declared dead (there should be
none). The ratios of the percentages are printed last; on a shared machine
the absolute figures move with the load, which is why both phases run in the
same process and the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import resource
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import amqp

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.connection import Connection, Deadline
from rabbit_ha_driver.connection.heartbeat import HeartbeatPolicy
from rabbit_ha_driver.settings import from_url, parse_transport_url

#: Under this share of one core the library's heartbeats count as cheap.
TARGET_PERCENT = 1.0


@dataclasses.dataclass(frozen=True)
class Measurement:
    """CPU time used by this process over a stretch of wall time."""

    wall: float
    user: float
    system: float

    @property
    def percent(self) -> float:
        """CPU time (user + system) as a percentage of one core."""
        return 100.0 * (self.user + self.system) / self.wall if self.wall > 0 else 0.0

    def __str__(self) -> str:
        return (f"{self.percent:.3f}% of one core (user {self.user:.3f}s + system {self.system:.3f}s "
                f"over {self.wall:.1f}s)")


def measure(seconds: float, sleep: Callable[[float], Any] = time.sleep) -> Measurement:
    """The process's CPU use while the calling thread sleeps for ``seconds``."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    sleep(seconds)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    return Measurement(wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime)


def open_bare(url: str, count: int, heartbeat: int = 0, name: str = "bench-bare") -> list[amqp.Connection]:
    """``count`` py-amqp connections to the URL's first host with interval ``heartbeat``."""
    parsed = parse_transport_url(url)
    host = parsed.hosts[0]
    conns = []
    for i in range(count):
        conn = amqp.Connection(host.address, userid=host.username, password=host.password,
                               virtual_host=parsed.virtual_host or "/", heartbeat=heartbeat,
                               connect_timeout=10, client_properties={"connection_name": f"{name}-{i}"})
        conn.connect()
        conns.append(conn)
    return conns


class ClassicHeartbeats:
    """A thread per py-amqp connection: read what arrived, then ``heartbeat_tick``."""

    def __init__(self, conns: Sequence[amqp.Connection], rate: float) -> None:
        self.failures = 0
        self._rate = rate
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve, args=(conn,), daemon=True) for conn in conns]
        for thread in self._threads:
            thread.start()

    def _serve(self, conn: amqp.Connection) -> None:
        period = conn.heartbeat / self._rate / 2.0
        while not self._stop.wait(period):
            try:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.001)
                conn.heartbeat_tick(rate=self._rate)
            except Exception:
                self.failures += 1
                return

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def open_library(url: str, count: int, threshold: int, recorder: ev.Recorder) -> list[Connection]:
    """``count`` library connections with ``T = threshold``, connected."""
    bus = ev.EventBus()
    bus.subscribe(recorder)
    conns = []
    for i in range(count):
        conn = Connection(from_url(url, heartbeat_timeout_threshold=threshold), name=f"bench-rha-{i}",
                          events=bus)
        conn.connect(Deadline.after(30))
        conns.append(conn)
    return conns


def heartbeats_sent(conns: Sequence[Connection]) -> int:
    total = 0
    for conn in conns:
        link = conn.liveness.link if conn.liveness is not None else None
        total += link.heartbeats_sent if link is not None else 0
    return total


def ratio(a: Measurement, b: Measurement) -> str:
    return f"{a.percent / b.percent:.2f}x" if b.percent > 0 else "n/a (nothing measured)"


def run(url: str, connections: int, threshold: int, seconds: float, settle: float,
        classic: bool = True) -> int:
    """Both phases; prints the figures; returns 0 if under :data:`TARGET_PERCENT`."""
    print(f"{connections} idle connections, T={threshold}s, measured for {seconds:g}s after "
          f"{settle:g}s to settle", flush=True)

    bare = open_bare(url, connections)
    time.sleep(settle)
    baseline = measure(seconds)
    for conn in bare:
        conn.close()
    print(f"baseline (bare py-amqp, heartbeats off): {baseline}", flush=True)

    recorder = ev.Recorder()
    library = open_library(url, connections, threshold, recorder)
    time.sleep(settle)
    frames_before = heartbeats_sent(library)
    ours = measure(seconds)
    frames = heartbeats_sent(library) - frames_before
    dead = len(recorder.of(ev.DeclaredDead))
    lost = len(recorder.of(ev.ConnectionLost))
    for lib_conn in library:
        lib_conn.close()
    print(f"library (rabbit_ha_driver Connection, native scheduler): {ours}; "
          f"{frames} heartbeat frames ({frames / ours.wall:.1f}/s), "
          f"{dead} declared dead, {lost} lost", flush=True)

    if classic:
        policy = HeartbeatPolicy(threshold)
        bare = open_bare(url, connections, policy.negotiated_interval, name="bench-classic")
        ticking = ClassicHeartbeats(bare, policy.rate)
        time.sleep(settle)
        theirs = measure(seconds)
        ticking.stop()
        for conn in bare:
            conn.close()
        print(f"classic (py-amqp, a heartbeat_tick thread per connection, H={policy.negotiated_interval}s): "
              f"{theirs}; {ticking.failures} failed", flush=True)

    overhead = ours.percent - baseline.percent
    verdict = "under" if ours.percent < TARGET_PERCENT else "OVER"
    print(f"library / baseline: {ratio(ours, baseline)}; difference {overhead:+.3f} points; "
          f"library {verdict} the {TARGET_PERCENT:g}% target")
    if classic:
        print(f"library / classic: {ratio(ours, theirs)}")
    return 0 if ours.percent < TARGET_PERCENT and dead == 0 and lost == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.heartbeat_cpu", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True,
                        help="broker URL, amqp://user:pass@host:port// (the first host is used)")
    parser.add_argument("--connections", type=int, default=200, help="connections per phase (200)")
    parser.add_argument("--threshold", type=int, default=10, help="heartbeat_timeout_threshold T (10)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds measured per phase (60)")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds to wait after connecting before measuring (default: T)")
    parser.add_argument("--no-classic", dest="classic", action="store_false",
                        help="skip the phase with a heartbeat thread per py-amqp connection")
    args = parser.parse_args(argv)
    settle = float(args.threshold) if args.settle is None else args.settle
    return run(args.url, args.connections, args.threshold, args.seconds, settle, args.classic)


if __name__ == "__main__":
    sys.exit(main())

"""CPU cost of keeping idle connections alive: the library against bare py-amqp.

Usage::

    python -m benchmarks.heartbeat_cpu --url amqp://guest:guest@127.0.0.1:5672// \\
        [--connections 200] [--threshold 10] [--seconds 60] [--settle SECONDS] \\
        [--windows 1] [--no-classic] [--defaults] [--oslo-defaults] \\
        [--broker-pid PID ...] [--json]

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
(``resource.getrusage``, user + system) over ``--windows`` back-to-back
windows of ``--seconds`` of wall time each and prints the median window as a
percentage of one core. The library phase also reports the heartbeat frames
sent and any connection declared dead (there should be none). The ratios of
the percentages are printed last; on a shared machine the absolute figures
move with the load, which is why both phases run in the same process and the
same run.

``--json`` runs the library phase alone and prints one JSON object: the
median (``heartbeat_cpu_percent``), every window's percentage, the heartbeat
frames sent, and the connections declared dead or lost. ``rabbit-ha bench``
runs it that way for its ``heartbeat_cpu_percent`` figure (200 connections,
T = 10 s, one window a run).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import amqp

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.connection import Connection, Deadline
from rabbit_ha_driver.connection._heartbeat import HeartbeatPolicy
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.settings import parse_transport_url

#: Under this share of one core the library's heartbeats count as cheap.
TARGET_PERCENT = 1.0


@dataclasses.dataclass(frozen=True)
class Measurement:
    """CPU time used by this process over a stretch of wall time."""

    wall: float
    user: float
    system: float
    #: CPU seconds the broker processes (``--broker-pid``) used meanwhile; None if not watched.
    broker: float | None = None

    @property
    def percent(self) -> float:
        """CPU time (user + system) as a percentage of one core."""
        return 100.0 * (self.user + self.system) / self.wall if self.wall > 0 else 0.0

    @property
    def broker_percent(self) -> float | None:
        """The broker's CPU time as a percentage of one core, if watched."""
        if self.broker is None or self.wall <= 0:
            return None
        return 100.0 * self.broker / self.wall

    def __str__(self) -> str:
        text = (f"{self.percent:.3f}% of one core (user {self.user:.3f}s + system {self.system:.3f}s "
                f"over {self.wall:.1f}s)")
        if self.broker_percent is not None:
            text += f"; broker {self.broker_percent:.2f}% of one core"
        return text


def process_cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (Linux ``/proc/PID/stat``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def measure(seconds: float, sleep: Callable[[float], Any] = time.sleep,
            broker_pids: Sequence[int] = ()) -> Measurement:
    """The process's CPU use while the calling thread sleeps for ``seconds``
    (and that of ``broker_pids``, if any)."""
    broker_before = process_cpu_seconds(broker_pids) if broker_pids else None
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    sleep(seconds)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    broker = (process_cpu_seconds(broker_pids) - broker_before
              if broker_before is not None else None)
    return Measurement(wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime,
                       broker)


def measure_windows(seconds: float, windows: int,
                    measure_one: Callable[[float], Measurement] = measure) -> list[Measurement]:
    """``windows`` back-to-back measurements of ``seconds`` each."""
    if windows < 1:
        raise ValueError(f"windows must be at least 1, not {windows}")
    return [measure_one(seconds) for _ in range(windows)]


def median_window(windows: Sequence[Measurement]) -> Measurement:
    """The window of median CPU share (the lower middle one of an even count)."""
    if not windows:
        raise ValueError("no windows")
    ordered = sorted(windows, key=lambda m: m.percent)
    return ordered[(len(ordered) - 1) // 2]


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


def open_library(url: str, count: int, threshold: int | None, recorder: ev.Recorder) -> list[Connection]:
    """``count`` library connections with ``T = threshold`` (None: the defaults), connected."""
    bus = ev.EventBus()
    bus.subscribe(recorder)
    overrides = {} if threshold is None else {"heartbeat_timeout_threshold": threshold}
    conns = []
    for i in range(count):
        conn = Connection(from_url(url, **overrides), name=f"bench-rha-{i}", events=bus)
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


@dataclasses.dataclass(frozen=True)
class LibraryPhase:
    """What the library phase measured."""

    windows: list[Measurement]
    frames: int
    declared_dead: int
    lost: int

    @property
    def median(self) -> Measurement:
        return median_window(self.windows)

    def as_json(self) -> dict[str, Any]:
        return {"heartbeat_cpu_percent": statistics.median(m.percent for m in self.windows),
                "windows_percent": [m.percent for m in self.windows],
                "seconds_per_window": statistics.median(m.wall for m in self.windows),
                "heartbeat_frames": self.frames, "declared_dead": self.declared_dead,
                "lost": self.lost}


def library_phase(url: str, connections: int, threshold: int | None, seconds: float, settle: float,
                  windows: int, measure_one: Callable[[float], Measurement] = measure) -> LibraryPhase:
    """Open ``connections`` library connections, settle, measure, close them."""
    recorder = ev.Recorder()
    library = open_library(url, connections, threshold, recorder)
    try:
        time.sleep(settle)
        frames_before = heartbeats_sent(library)
        measured = measure_windows(seconds, windows, measure_one)
        frames = heartbeats_sent(library) - frames_before
    finally:
        for conn in library:
            conn.close()
    return LibraryPhase(measured, frames, len(recorder.of(ev.DeclaredDead)),
                        len(recorder.of(ev.ConnectionLost)))


#: oslo.messaging's rabbit driver at its defaults: T = 60 s asked of the broker
#: as the interval itself, heartbeat_rate 3, a check every T / rate / 2 s.
OSLO_DEFAULT_THRESHOLD, OSLO_DEFAULT_RATE = 60, 3.0


def run(url: str, connections: int, threshold: int | None, seconds: float, settle: float,
        classic: bool = True, windows: int = 1, broker_pids: Sequence[int] = (),
        oslo_defaults: bool = False) -> int:
    """Every phase; prints the figures; returns 0 if under :data:`TARGET_PERCENT`.

    ``threshold`` None: the library's default T and heartbeat_rate.
    ``oslo_defaults``: the classic phase runs as oslo.messaging's driver does
    at its defaults instead of with the library's interval.
    """
    measure_one = functools.partial(measure, broker_pids=broker_pids)
    policy = HeartbeatPolicy.from_settings(from_url(url)) if threshold is None \
        else HeartbeatPolicy(threshold)
    label = f"T={policy.threshold:g}s" + (" (the defaults)" if threshold is None else "")
    print(f"{connections} idle connections, {label}, measured for {windows} x {seconds:g}s "
          f"after {settle:g}s to settle", flush=True)

    bare = open_bare(url, connections)
    time.sleep(settle)
    baseline = median_window(measure_windows(seconds, windows, measure_one))
    for conn in bare:
        conn.close()
    print(f"baseline (bare py-amqp, heartbeats off): {baseline}", flush=True)

    phase = library_phase(url, connections, threshold, seconds, settle, windows, measure_one)
    ours = phase.median
    wall = sum(m.wall for m in phase.windows)
    print(f"library (rabbit_ha_driver Connection, native scheduler, H={policy.negotiated_interval}s, "
          f"rate {policy.rate:g}): {ours}; "
          f"{phase.frames} heartbeat frames ({phase.frames / wall:.1f}/s), "
          f"{phase.declared_dead} declared dead, {phase.lost} lost", flush=True)

    if classic:
        if oslo_defaults:
            interval, rate = OSLO_DEFAULT_THRESHOLD, OSLO_DEFAULT_RATE
            what = f"oslo.messaging's defaults (py-amqp, H={interval}s, a heartbeat_tick thread " \
                   "per connection)"
        else:
            interval, rate = policy.negotiated_interval, policy.rate
            what = f"classic (py-amqp, a heartbeat_tick thread per connection, H={interval}s)"
        bare = open_bare(url, connections, interval, name="bench-classic")
        ticking = ClassicHeartbeats(bare, rate)
        time.sleep(settle)
        theirs = median_window(measure_windows(seconds, windows, measure_one))
        ticking.stop()
        for conn in bare:
            conn.close()
        print(f"{what}: {theirs}; {ticking.failures} failed", flush=True)

    overhead = ours.percent - baseline.percent
    verdict = "under" if ours.percent < TARGET_PERCENT else "OVER"
    print(f"library / baseline: {ratio(ours, baseline)}; difference {overhead:+.3f} points; "
          f"library {verdict} the {TARGET_PERCENT:g}% target")
    if classic:
        print(f"library / {'oslo defaults' if oslo_defaults else 'classic'}: {ratio(ours, theirs)}")
    if broker_pids and baseline.broker_percent is not None:
        def above(m: Measurement) -> str:
            return f"{(m.broker_percent or 0.0) - baseline.broker_percent:+.2f} points"  # type: ignore[operator]
        text = f"broker CPU above the baseline: library {above(ours)}"
        if classic:
            text += f", {'oslo defaults' if oslo_defaults else 'classic'} {above(theirs)}"
        print(text)
    healthy = phase.declared_dead == 0 and phase.lost == 0
    return 0 if ours.percent < TARGET_PERCENT and healthy else 1


def run_json(url: str, connections: int, threshold: int | None, seconds: float, settle: float,
             windows: int, out: TextIO | None = None) -> int:
    """The library phase alone, printed as one JSON line; 0 once measured."""
    phase = library_phase(url, connections, threshold, seconds, settle, windows)
    out = out or sys.stdout
    json.dump(phase.as_json(), out)
    out.write("\n")
    out.flush()
    return 0


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1")
    return number


def main(argv: Sequence[str] | None = None, prog: str = "python -m benchmarks.heartbeat_cpu") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True,
                        help="broker URL, amqp://user:pass@host:port// (the first host is used)")
    parser.add_argument("--connections", type=_positive_int, default=200,
                        help="connections per phase (200)")
    parser.add_argument("--threshold", type=_positive_int, default=10,
                        help="heartbeat_timeout_threshold T (10)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds measured per window (60)")
    parser.add_argument("--windows", type=_positive_int, default=1,
                        help="windows measured per phase; the median one is reported (1)")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds to wait after connecting before measuring (default: T)")
    parser.add_argument("--no-classic", dest="classic", action="store_false",
                        help="skip the phase with a heartbeat thread per py-amqp connection")
    parser.add_argument("--defaults", action="store_true",
                        help="the library's default T and heartbeat_rate instead of --threshold")
    parser.add_argument("--oslo-defaults", action="store_true",
                        help="run the classic phase as oslo.messaging's driver at its defaults "
                             f"(H={OSLO_DEFAULT_THRESHOLD}s, rate {OSLO_DEFAULT_RATE:g})")
    parser.add_argument("--broker-pid", type=_positive_int, action="append", default=[],
                        help="also measure the CPU of this broker process (repeatable)")
    parser.add_argument("--json", action="store_true",
                        help="measure the library phase only and print it as one JSON object")
    args = parser.parse_args(argv)
    threshold = None if args.defaults else args.threshold
    if args.settle is not None:
        settle = args.settle
    else:
        settle = float(args.threshold if threshold is not None
                       else HeartbeatPolicy.from_settings(from_url(args.url)).threshold)
    if args.json:
        return run_json(args.url, args.connections, threshold, args.seconds, settle, args.windows)
    return run(args.url, args.connections, threshold, args.seconds, settle, args.classic,
               args.windows, args.broker_pid, args.oslo_defaults)


if __name__ == "__main__":
    sys.exit(main())

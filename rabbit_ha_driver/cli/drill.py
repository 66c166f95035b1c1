"""``rabbit-ha drill``: keep calling a test server while an operator breaks things.

It calls a test server (its own, on a private topic, or another process's
``drill --serve --topic T``) at a fixed interval, prints one progress line per
second (calls, failures, latency p50 and max in that second) and at the end a
summary of the outages: runs of failed calls, with when each started and how
long it lasted (until a call succeeded again). Its bookkeeping
(:class:`DrillStats`) is a pure value fed with results and times, and its loop
takes a clock, so both are tested without waiting.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.cli._common import load_settings, ms, seconds
from rabbit_ha_driver.cli._server import ping_server, private_topic
from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.settings import Settings


@dataclasses.dataclass(frozen=True)
class Outage:
    """A run of failed calls: from the start of the first to the next success."""

    start: float
    end: float | None  # None: still failing when the drill ended
    failed: int
    first_error: str

    def describe(self) -> str:
        lasted = "still failing at the end" if self.end is None else f"lasted {self.end - self.start:.3f}s"
        return (f"at +{self.start:.3f}s {lasted} ({self.failed} failed call"
                f"{'s' if self.failed != 1 else ''}; first: {self.first_error})")


class DrillStats:
    """Results of a drill's calls; times are seconds since the drill started.

    :meth:`record` takes each call's start, duration and error (None when it
    succeeded); :meth:`progress` gives the line for one elapsed second and
    starts the next; :meth:`summary` the closing lines.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0
        self.latencies: list[float] = []
        self.outages: list[Outage] = []
        self._open: Outage | None = None
        self._second: list[float] = []
        self._second_calls = 0
        self._second_failures = 0

    @property
    def failing(self) -> bool:
        return self._open is not None

    def record(self, started: float, took: float, error: str | None) -> None:
        self.calls += 1
        self._second_calls += 1
        if error is None:
            self.latencies.append(took)
            self._second.append(took)
            if self._open is not None:
                self.outages.append(dataclasses.replace(self._open, end=started + took))
                self._open = None
            return
        self.failures += 1
        self._second_failures += 1
        if self._open is None:
            self._open = Outage(started, None, 1, error)
        else:
            self._open = dataclasses.replace(self._open, failed=self._open.failed + 1)

    def progress(self, second: float) -> str:
        """The line for the second that ended at ``second``; resets the per-second counts."""
        if self._second:
            latency = f"p50 {ms(statistics.median(self._second))} max {ms(max(self._second))}"
        else:
            latency = "p50 - max -"
        line = (f"{second:6.0f}s  calls {self._second_calls:3d}  failures "
                f"{self._second_failures:3d}  {latency}{'  OUTAGE' if self.failing else ''}")
        self._second, self._second_calls, self._second_failures = [], 0, 0
        return line

    def summary(self) -> list[str]:
        outages = [*self.outages, *([self._open] if self._open is not None else [])]
        lines = [f"{self.calls} calls, {self.failures} failed"
                 + (f", latency p50 {ms(statistics.median(self.latencies))} max "
                    f"{ms(max(self.latencies))}" if self.latencies else "")]
        if not outages:
            lines.append("no outage")
        else:
            lines.append(f"{len(outages)} outage{'s' if len(outages) != 1 else ''}:")
            lines.extend(f"  {outage.describe()}" for outage in outages)
        return lines


def run_drill(call: Callable[[int], None], *, interval: float, duration: float | None,
              clock: Clock = REAL_CLOCK, out: TextIO | None = None) -> DrillStats:
    """Call ``call(n)`` every ``interval`` seconds (one at a time) for ``duration``.

    A call that raises a library error counts as failed. Prints a progress
    line per elapsed second and the summary; Ctrl-C ends the drill early.
    """
    out = out or sys.stdout
    stats = DrillStats()
    start = clock.now()
    next_call = start
    next_report = start + 1.0
    n = 0
    try:
        while duration is None or clock.now() - start < duration:
            n += 1
            began = clock.now()
            error = None
            try:
                call(n)
            except exc.RabbitHAError as failure:
                error = f"{type(failure).__name__}: {failure}"
            now = clock.now()
            # A call counts in the second it ended in; a second's line goes
            # out once a call ended after it.
            while now > next_report:
                print(stats.progress(next_report - start), file=out, flush=True)
                next_report += 1.0
            stats.record(began - start, now - began, error)
            next_call = max(next_call + interval, now)
            if duration is not None:
                next_call = min(next_call, start + duration)
            clock.sleep(next_call - now)
    except KeyboardInterrupt:
        print("interrupted", file=out)
    else:
        while clock.now() >= next_report:  # the last whole second
            print(stats.progress(next_report - start), file=out)
            next_report += 1.0
    for line in stats.summary():
        print(line, file=out)
    return stats


def run_drill_command(settings: Settings, *, topic: str | None, serve: bool, interval: float,
                      timeout: float, duration: float | None, clock: Clock = REAL_CLOCK,
                      out: TextIO | None = None) -> int:
    """The ``drill`` command: 0 when no call failed (or after serving)."""
    out = out or sys.stdout
    from rabbit_ha_driver.rpc import RPCClient

    own_server = serve or topic is None
    topic = topic or private_topic("drill")
    print(f"rabbit-ha drill on {settings.transport_url.redacted()}, topic {topic}"
          f"{' (own test server)' if own_server else ''}", file=out)
    try:
        with ping_server(settings, topic, timeout) if own_server else _nothing():
            if serve:
                print("serving ping; Ctrl-C to stop", file=out, flush=True)
                _serve(duration, clock)
                return 0
            with RPCClient(settings, topic, timeout=timeout) as client:
                print(f"calling ping every {interval:g}s with a {timeout:g}s timeout"
                      f"{f' for {duration:g}s' if duration else '; Ctrl-C to stop'}",
                      file=out, flush=True)
                stats = run_drill(lambda n: _expect(client.call({}, "ping", n=n), n),
                                  interval=interval, duration=duration, clock=clock, out=out)
    except exc.RabbitHAError as error:
        print(f"drill failed: {type(error).__name__}: {error}", file=out)
        return 1
    return 1 if stats.failures else 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _serve(duration: float | None, clock: Clock) -> None:
    start = clock.now()
    try:
        while duration is None or clock.now() - start < duration:
            clock.sleep(min(1.0, duration - (clock.now() - start)) if duration else 1.0)
    except KeyboardInterrupt:
        pass


def _expect(result: Any, n: int) -> None:
    if result != n:
        raise exc.InvalidMessage(f"ping({n}) returned {result!r}")


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``drill`` to the subcommands."""
    parser = subparsers.add_parser(
        "drill", parents=[common],
        help="keep calling a test server while you break things; report outages",
        description="Call a test server every --interval seconds, one call at a time, "
        "while an operator kills nodes, deletes queues or cuts the network. Prints "
        "one line per second (calls, failures, latency p50 and max in that second) "
        "and at the end the outages: each run of failed calls, when it started and "
        "how long it lasted until a call succeeded again. Without --topic it starts "
        "its own server on a private topic; with --topic it calls the server another "
        "'rabbit-ha drill --serve --topic T' runs. Exits 1 if any call failed.")
    parser.add_argument("--interval", type=seconds, default=0.1, metavar="SECONDS",
                        help="time between the starts of two calls (default: 0.1)")
    parser.add_argument("--timeout", type=seconds, default=3.0, metavar="SECONDS",
                        help="timeout of each call (default: 3)")
    parser.add_argument("--duration", type=seconds, default=None, metavar="SECONDS",
                        help="stop after this long (default: run until Ctrl-C)")
    parser.add_argument("--topic", metavar="TOPIC",
                        help="call the server of this topic instead of starting one")
    parser.add_argument("--serve", action="store_true",
                        help="only serve ping on --topic (for a drill run elsewhere)")
    parser.set_defaults(run=_drill_from_args)


def _drill_from_args(args: argparse.Namespace) -> int:
    if args.serve and not args.topic:
        raise exc.ConfigurationError("--serve", True, "needs --topic, the topic to serve")
    return run_drill_command(load_settings(args), topic=args.topic, serve=args.serve,
                             interval=args.interval, timeout=args.timeout,
                             duration=args.duration)

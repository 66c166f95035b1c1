"""Heartbeat CPU and memory against the number of idle connections in one process.

Usage::

    python -m benchmarks.scale.idle SUBJECT URL [--counts 10,100,1000,2000] \\
        [--seconds 20] [--threshold 10] [--settle SECONDS] [--in-process]

``SUBJECT`` is one of :data:`SUBJECTS`:

* ``rabbit_ha``: this library's :class:`~rabbit_ha_driver.connection.Connection`
  objects (what a service holds), served by the process's one native
  heartbeat scheduler;
* ``oslo_rabbit``: oslo.messaging's ``impl_rabbit.Connection`` objects as its
  driver makes them for sending, each with its own heartbeat thread;
* ``bare_amqp``: py-amqp connections with heartbeats off (``heartbeat=0``) and
  one channel each: the floor for memory, no CPU of their own.

How it works. For each point N of ``--counts``: raise ``RLIMIT_NOFILE`` to
its hard limit (and fail with a clear message if that cannot hold N sockets),
open N connections of the subject, spread over the URL's hosts (the
library's and py-amqp's start at host ``i mod len(hosts)``; oslo.messaging
shuffles the hosts of each connection itself), all with
``heartbeat_timeout_threshold`` T (``--threshold``, 10 s as in the
``heartbeat_cpu`` figure), wait ``--settle`` seconds (T by default) so that
connecting and the first deadlines are behind, then take the process's CPU
time (user + system, :func:`resource.getrusage`) over ``--seconds`` of wall
time as a percentage of one core (:func:`benchmarks.heartbeat_cpu.measure`)
and its resident memory (``VmRSS``). Nobody reads the connections: an idle
connection's owner spends its time in one blocking read, which costs nothing,
so what is measured is the heartbeat machinery.

Each point runs in a fresh child process (``--in-process`` runs every point in
this one, one after the other), so the memory of one point does not carry
into the next. The last line of standard output is one JSON object::

    {"idle": {"10": {"cpu_percent": f, "rss_kb": f, "rss_kb_per_connection": f,
                     "declared_dead": f}, "100": {...}, ...}}

``rss_kb`` is the process's resident memory with the N connections open;
``rss_kb_per_connection`` what each one added (the difference from before the
first was opened, divided by N; one connection is opened and closed before
that, so imports and one-off structures such as the library's scheduler
thread are not counted); ``declared_dead`` (``rabbit_ha`` only) the
connections the library declared dead from opening to the end of the window:
there should be none. Progress and errors go to standard error; on failure the
exit status is non-zero.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import amqp

from benchmarks.bench import child_env
from benchmarks.heartbeat_cpu import Measurement, heartbeats_sent, measure

#: The part's name: the key of the JSON object printed.
PART = "idle"
#: The default points: idle connections in one process.
COUNTS = (10, 100, 1000, 2000)
SUBJECTS = ("rabbit_ha", "oslo_rabbit", "bare_amqp")
#: Seconds of the measured window (``--seconds``).
DEFAULT_SECONDS = 20.0
#: ``heartbeat_timeout_threshold`` T (``--threshold``), as the heartbeat_cpu figure.
DEFAULT_THRESHOLD = 10
#: File descriptors wanted beyond one per connection (the interpreter, pipes, logs).
FD_MARGIN = 256
#: Seconds a child process may take beyond settling and measuring, plus per connection.
CHILD_MARGIN, CHILD_PER_CONNECTION = 120.0, 0.1


class ScaleError(RuntimeError):
    """A point could not be measured; the message says why."""


# -- the pure parts ---------------------------------------------------------------


def raise_nofile(needed: int, *, getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
                 setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; the limit now in force.

    Raises :class:`ScaleError` when the hard limit is below ``needed``.
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ScaleError(f"the open files limit is {hard} (hard), and {needed} are needed; raise it "
                         f"(ulimit -Hn {needed}, or LimitNOFILE=) or measure fewer connections")
    if soft != resource.RLIM_INFINITY and soft < (hard if hard != resource.RLIM_INFINITY else needed):
        target = hard if hard != resource.RLIM_INFINITY else max(needed, soft)
        setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def rss_kb(status: str = "/proc/self/status") -> float:
    """The resident memory (``VmRSS``) in kB of the process ``status`` describes."""
    with open(status) as lines:
        for line in lines:
            if line.startswith("VmRSS:"):
                return float(line.split()[1])
    raise ScaleError(f"no VmRSS in {status}")


def parse_counts(text: str) -> tuple[int, ...]:
    """``"10,100"`` as ``(10, 100)``: positive, in the order given, no repeats."""
    counts: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            count = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {part!r}") from None
        if count < 1:
            raise argparse.ArgumentTypeError(f"a count must be at least 1, not {count}")
        if count not in counts:
            counts.append(count)
    if not counts:
        raise argparse.ArgumentTypeError("no counts given")
    return tuple(counts)


def rotated(items: Sequence[Any], start: int) -> tuple[Any, ...]:
    """``items`` starting at ``start mod len(items)``: spreads connections over the hosts."""
    if not items:
        return ()
    k = start % len(items)
    return tuple(items[k:]) + tuple(items[:k])


@dataclasses.dataclass(frozen=True)
class Point:
    """What one point measured."""

    count: int
    cpu_percent: float
    rss_kb: float
    rss_kb_per_connection: float
    declared_dead: float | None = None

    def as_json(self) -> dict[str, float]:
        figures = {"cpu_percent": self.cpu_percent, "rss_kb": self.rss_kb,
                   "rss_kb_per_connection": self.rss_kb_per_connection}
        if self.declared_dead is not None:
            figures["declared_dead"] = self.declared_dead
        return figures


def last_json_line(stdout: str) -> dict[str, Any]:
    """The JSON object on the last non-empty line of ``stdout``."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ScaleError("the child printed nothing")
    try:
        value = json.loads(lines[-1])
    except ValueError:
        raise ScaleError(f"the child's last line is not JSON: {lines[-1][:200]!r}") from None
    if not isinstance(value, dict):
        raise ScaleError(f"the child's last line is not a JSON object: {lines[-1][:200]!r}")
    return value


# -- the subjects -------------------------------------------------------------------


class Idle:
    """N idle connections of one subject: :meth:`open` one more, :meth:`close` them all."""

    name = ""

    def __init__(self, url: str, threshold: int) -> None:
        self.url = url
        self.threshold = threshold
        self.handles: list[Any] = []

    def open(self, i: int) -> None:
        raise NotImplementedError

    def warm_up(self) -> None:
        """Open one connection and close it: imports and one-off structures (the
        library's scheduler thread) are then not counted against the N measured."""
        self.open(-1)
        self.close()

    def declared_dead(self) -> int | None:
        """Connections given up on since opening; None where not counted."""
        return None

    def frames(self) -> int | None:
        """Heartbeat frames sent so far; None where not counted (for the progress line)."""
        return None

    def close(self) -> None:
        """Close every connection, newest first; never raises."""
        while self.handles:
            handle = self.handles.pop()
            try:
                handle.close()
            except Exception as error:  # closing as much as possible
                print(f"closing {handle!r} failed: {error}", file=sys.stderr)


class RabbitHAIdle(Idle):
    """The library's Connection objects; one event bus counts deaths."""

    name = "rabbit_ha"

    def __init__(self, url: str, threshold: int) -> None:
        super().__init__(url, threshold)
        from rabbit_ha_driver import events as ev
        from rabbit_ha_driver.options import from_url

        self._ev = ev
        self.settings = from_url(url, heartbeat_timeout_threshold=threshold)
        self.recorder = ev.Recorder()
        self.events = ev.EventBus()  # quiet: no log subscriber
        self.events.subscribe(self.recorder)

    def open(self, i: int) -> None:
        from rabbit_ha_driver.connection import Connection, Deadline

        url = self.settings.transport_url
        settings = self.settings.replace(
            transport_url=dataclasses.replace(url, hosts=rotated(url.hosts, i)))
        conn = Connection(settings, name=f"scale-idle-{i}", events=self.events)
        self.handles.append(conn)
        conn.connect(Deadline.after(30))

    def declared_dead(self) -> int:
        return len(self.recorder.of(self._ev.DeclaredDead))

    def frames(self) -> int:
        return heartbeats_sent(self.handles)

    def lost(self) -> int:
        return len(self.recorder.of(self._ev.ConnectionLost))


class OsloRabbitIdle(Idle):
    """oslo.messaging's impl_rabbit.Connection for sending, a heartbeat thread each."""

    name = "oslo_rabbit"

    def __init__(self, url: str, threshold: int) -> None:
        super().__init__(url, threshold)
        from benchmarks.bench.subjects import OsloRabbit

        self.subject = OsloRabbit(url, topic="scale-idle")
        self.subject.conf.set_override("heartbeat_timeout_threshold", threshold,
                                       group="oslo_messaging_rabbit")

    def open(self, i: int) -> None:
        self.handles.append(self.subject.open_connection())

    def warm_up(self) -> None:
        self.subject.open_connection().close()  # closed again by the subject: harmless

    def close(self) -> None:
        self.handles.clear()  # the subject closes its connections, then its transport
        self.subject.close()


class BareIdle(Idle):
    """py-amqp with heartbeats off and one channel: the floor."""

    name = "bare_amqp"

    def __init__(self, url: str, threshold: int) -> None:
        super().__init__(url, threshold)
        from rabbit_ha_driver.settings import parse_transport_url

        self.parsed = parse_transport_url(url)

    def open(self, i: int) -> None:
        host = rotated(self.parsed.hosts, i)[0]
        conn = amqp.Connection(host.address, userid=host.username, password=host.password,
                               virtual_host=self.parsed.virtual_host or "/", heartbeat=0,
                               connect_timeout=10,
                               client_properties={"connection_name": f"scale-bare-{i}"})
        self.handles.append(conn)
        conn.connect()
        conn.channel()


def make_idle(subject: str, url: str, threshold: int) -> Idle:
    """The :class:`Idle` of ``subject`` (one of :data:`SUBJECTS`)."""
    classes: dict[str, type[Idle]] = {"rabbit_ha": RabbitHAIdle, "oslo_rabbit": OsloRabbitIdle,
                                      "bare_amqp": BareIdle}
    try:
        cls = classes[subject]
    except KeyError:
        raise ScaleError(f"unknown subject {subject!r}; choose from {', '.join(SUBJECTS)}") from None
    return cls(url, threshold)


# -- one point, in this process ---------------------------------------------------------


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def measure_point(subject: str, url: str, count: int, seconds: float, threshold: int, *,
                  settle: float | None = None,
                  make: Callable[[str, str, int], Idle] = make_idle,
                  measure_one: Callable[[float], Measurement] = measure,
                  sleep: Callable[[float], Any] = time.sleep,
                  rss: Callable[[], float] = rss_kb,
                  nofile: Callable[[int], int] = raise_nofile,
                  say: Callable[[str], None] = _say) -> Point:
    """Open ``count`` idle connections of ``subject``, settle, measure, close them all."""
    nofile(count + FD_MARGIN)
    settle = float(threshold) if settle is None else settle
    idle = make(subject, url, threshold)
    try:
        idle.warm_up()
        before = rss()
        started = time.monotonic()
        for i in range(count):
            try:
                idle.open(i)
            except Exception as error:
                raise ScaleError(
                    f"{subject}: opening connection {i + 1} of {count} failed: "
                    f"{type(error).__name__}: {error} (does every broker node allow this many "
                    f"connections? see its file descriptor limit, fd_total)") from error
        say(f"{subject} {count}: opened in {time.monotonic() - started:.1f}s; settling {settle:g}s, "
            f"then measuring {seconds:g}s")
        sleep(settle)
        frames = idle.frames()
        window = measure_one(seconds)
        after = rss()
        frames_after = idle.frames()
        dead = idle.declared_dead()
    finally:
        idle.close()
    point = Point(count, window.percent, after, (after - before) / count,
                  None if dead is None else float(dead))
    rate = ("" if frames is None or frames_after is None or window.wall <= 0
            else f"; {(frames_after - frames) / window.wall:.1f} heartbeat frames/s")
    say(f"{subject} {count}: {window}; RSS {after:.0f} kB, {point.rss_kb_per_connection:.1f} kB "
        f"a connection" + ("" if dead is None else f"; {dead} declared dead") + rate)
    return point


def run_in_process(subject: str, url: str, counts: Sequence[int], seconds: float, threshold: int,
                   settle: float | None = None) -> dict[str, Any]:
    """Every point in this process, one after the other."""
    return {PART: {str(count): measure_point(subject, url, count, seconds, threshold,
                                             settle=settle).as_json()
                   for count in counts}}


# -- one point per child process ----------------------------------------------------------


def spawn_point(subject: str, url: str, count: int, seconds: float, threshold: int,
                settle: float | None = None,
                runner: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> dict[str, float]:
    """One point measured in a fresh ``python -m benchmarks.scale.idle`` child; its figures."""
    argv = [sys.executable, "-m", "benchmarks.scale.idle", subject, url, "--counts", str(count),
            "--seconds", repr(float(seconds)), "--threshold", str(threshold), "--in-process"]
    if settle is not None:
        argv += ["--settle", repr(float(settle))]
    wait = (threshold if settle is None else settle) + seconds
    timeout = CHILD_MARGIN + wait + CHILD_PER_CONNECTION * count
    try:
        done = runner(argv, stdout=subprocess.PIPE, stderr=None, text=True, env=child_env(),
                      timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ScaleError(f"{subject} {count}: the child took more than {timeout:.0f}s") from None
    if done.returncode != 0:
        raise ScaleError(f"{subject} {count}: the child exited with status {done.returncode} "
                         "(its error is above)")
    figures = last_json_line(done.stdout).get(PART, {}).get(str(count))
    if not isinstance(figures, dict):
        raise ScaleError(f"{subject} {count}: the child printed no figures for {count}")
    return figures


def run(subject: str, url: str, counts: Sequence[int] = COUNTS, seconds: float = DEFAULT_SECONDS,
        threshold: int = DEFAULT_THRESHOLD, *, settle: float | None = None,
        spawn: Callable[..., dict[str, float]] = spawn_point) -> dict[str, Any]:
    """Every point of ``counts``, each in a fresh child process: ``{"idle": {"N": figures}}``."""
    if subject not in SUBJECTS:
        raise ScaleError(f"unknown subject {subject!r}; choose from {', '.join(SUBJECTS)}")
    return {PART: {str(count): spawn(subject, url, count, seconds, threshold, settle)
                   for count in counts}}


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0 or math.isinf(number):
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive number of seconds")
    return number


def _threshold(value: str) -> int:
    number = int(value)
    if number < 2:
        raise argparse.ArgumentTypeError(f"{value!r}: the threshold must be at least 2 s")
    return number


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale.idle",
                                     description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("subject", choices=SUBJECTS)
    parser.add_argument("url", help="broker URL, rabbit://user:pass@host1:port,user:pass@host2:port/")
    parser.add_argument("--counts", type=parse_counts, default=COUNTS,
                        help="idle connections per point ({})".format(",".join(map(str, COUNTS))))
    parser.add_argument("--seconds", type=_positive_float, default=DEFAULT_SECONDS,
                        help=f"seconds of the measured window ({DEFAULT_SECONDS:g})")
    parser.add_argument("--threshold", type=_threshold, default=DEFAULT_THRESHOLD,
                        help=f"heartbeat_timeout_threshold T in seconds ({DEFAULT_THRESHOLD})")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds to wait after opening before measuring (default: T)")
    parser.add_argument("--in-process", action="store_true",
                        help="measure every point in this process instead of a child each")
    args = parser.parse_args(argv)
    out = out or sys.stdout
    try:
        if args.in_process:
            result = run_in_process(args.subject, args.url, args.counts, args.seconds, args.threshold,
                                    args.settle)
        else:
            result = run(args.subject, args.url, args.counts, args.seconds, args.threshold,
                         settle=args.settle)
    except (ScaleError, ImportError) as error:
        print(f"benchmarks.scale.idle: {error}", file=sys.stderr)
        return 1
    json.dump(result, out)
    out.write("\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

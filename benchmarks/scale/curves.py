"""Growth curves for ``rabbit-ha bench --scale``: throughput as load grows, for one subject.

One run of one subject, in a process of its own (its servers in another, as
:class:`~benchmarks.bench.worker.RemoteServers` runs them), prints its
figures as one JSON object on its last stdout line::

    python -m benchmarks.scale.curves SUBJECT URL [--curves concurrency,size,fanout] [--seconds S]

The subjects are those of :mod:`benchmarks.bench.subjects` that use a broker
(:data:`SUBJECTS`). Three curves, each point after a short warm-up and timed
for ``S`` seconds (2 by default):

* ``concurrency``: calls of ``ping`` a second against the number of threads
  calling back to back (:data:`CONCURRENCY`), with the 64-byte payload of
  ``rabbit-ha bench``. The threads share one client on one transport, as
  the threads of a service do; ``bare_amqp`` gives each thread a connection
  of its own, because a py-amqp connection must not be used by two threads
  at once (that is how py-amqp is used), and keeps them from one point to
  the next. One server answers.
* ``size``: one thread calling ``ping(payload)`` with a payload of each size
  of :data:`SIZES` bytes (ASCII, so characters are bytes), which the server
  sends back: ``calls_per_s`` and ``bytes_per_s``, the payload bytes of
  request and reply a second (``2 * size * calls_per_s``, whatever the
  framing and encoding each subject adds). Each point's first reply is
  checked to carry the whole payload. Bodies larger than the connection's
  ``frame_max`` (131072 bytes unless the broker tunes it lower) go as
  several body frames with every subject (py-amqp and this library both
  split at ``frame_max - 8``; RabbitMQ closes a connection that sends a
  larger frame, so a point that completes went out framed).
* ``fanout``: fanout casts a second against the number of servers
  (:data:`FANOUT`), counted until every server received every cast
  (:func:`benchmarks.bench.worker.casts`); the servers of each point run in
  a fresh process on a topic of their own.

The figures::

    {"concurrency": {"1": {"calls_per_s": f}, "4": ..., "16": ..., "64": ...},
     "size": {"100": {"calls_per_s": f, "bytes_per_s": f}, "10000": ..., "100000": ..., "1000000": ...},
     "fanout": {"1": {"casts_per_s": f}, "5": ..., "20": ...}}

with only the curves asked for. On failure the process prints why on stderr
and exits non-zero, after stopping its server processes and connections.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from benchmarks.bench import worker
from benchmarks.bench.subjects import Subject, make
from benchmarks.bench.worker import Servers, start_servers

#: Which part of ``rabbit-ha bench --scale`` this module is.
PART = "curves"
#: The subjects with a broker (``oslo_fake`` has none to grow against).
SUBJECTS = ("rabbit_ha", "rabbit_ha_oslo", "oslo_rabbit", "bare_amqp")
CURVES = ("concurrency", "size", "fanout")
#: Threads calling at once.
CONCURRENCY = (1, 4, 16, 64)
#: Payload bytes of each call, sent and returned.
SIZES = (100, 10_000, 100_000, 1_000_000)
#: Servers receiving each fanout cast.
FANOUT = (1, 5, 20)
DEFAULT_SECONDS = 2.0

#: Measures calls a second of one thread per caller (see worker.concurrent_calls).
Measure = Callable[[list[Callable[[], Any]], float], float]


def payload(size: int) -> str:
    """``size`` bytes of ASCII payload."""
    return "x" * size


def size_figures(size: int, calls_per_s: float) -> dict[str, float]:
    """One ``size`` point: payload bytes of request and reply a second."""
    return {"calls_per_s": calls_per_s, "bytes_per_s": 2.0 * size * calls_per_s}


def parse_curves(text: str) -> tuple[str, ...]:
    """``"size,fanout"`` as a tuple of curve names, in :data:`CURVES` order."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = names - set(CURVES)
    if unknown or not names:
        raise ValueError(f"unknown curve(s) {', '.join(sorted(unknown)) or '(none given)'}; "
                         f"choose from {', '.join(CURVES)}")
    return tuple(name for name in CURVES if name in names)


def _say(message: str) -> None:
    print(f"curves: {message}", file=sys.stderr, flush=True)


def concurrency_curve(subject: Subject, seconds: float, points: Sequence[int] = CONCURRENCY,
                      measure: Measure | None = None) -> dict[str, dict[str, float]]:
    """Calls a second against threads calling at once; one shared caller where it is thread-safe."""
    measure = measure or worker.concurrent_calls
    shared = subject.caller() if subject.caller_thread_safe else None
    pool: list[Callable[[], Any]] = []  # bare_amqp: one connection per thread, kept
    curve = {}
    for threads in points:
        if shared is not None:
            callers = [shared] * threads
        else:
            pool.extend(subject.caller() for _ in range(threads - len(pool)))
            callers = pool[:threads]
        rate = measure(callers, seconds)
        curve[str(threads)] = {"calls_per_s": rate}
        _say(f"{subject.name} concurrency {threads}: {rate:.1f} calls/s")
    return curve


def size_curve(subject: Subject, seconds: float, sizes: Sequence[int] = SIZES,
               measure: Measure | None = None) -> dict[str, dict[str, float]]:
    """Calls and payload bytes a second against the payload size, one thread."""
    measure = measure or worker.concurrent_calls
    curve = {}
    for size in sizes:
        call = subject.caller(payload(size))
        reply = call()
        if not isinstance(reply, str) or len(reply) != size:
            got = len(reply) if isinstance(reply, str) else type(reply).__name__
            raise RuntimeError(f"a {size}-byte ping came back as {got}")
        curve[str(size)] = figures = size_figures(size, measure([call], seconds))
        _say(f"{subject.name} size {size}: {figures['calls_per_s']:.1f} calls/s, "
             f"{figures['bytes_per_s'] / 1e6:.2f} MB/s")
    return curve


def fanout_curve(name: str, url: str, topic: str, seconds: float,
                 widths: Sequence[int] = FANOUT) -> dict[str, dict[str, float]]:
    """Fanout casts a second against the number of servers, each point on a topic of its own."""
    curve = {}
    for width in widths:
        subject = make(name, url, f"{topic}-fanout{width}")
        servers: Servers | None = None
        try:
            receivers = [f"f{i}" for i in range(width)]
            servers = start_servers(subject, url, receivers, fanout_only=True)
            rate = worker.casts(subject, servers, subject.caster(fanout=True), receivers, seconds)
        finally:
            if servers is not None:
                servers.close()
            subject.close()
        curve[str(width)] = {"casts_per_s": rate}
        _say(f"{name} fanout {width}: {rate:.1f} casts/s")
    return curve


def run(subject: str, url: str, curves: Iterable[str] = CURVES,
        seconds: float = DEFAULT_SECONDS) -> dict[str, dict[str, dict[str, float]]]:
    """The figures of ``curves`` for ``subject`` (see the module docstring)."""
    if subject not in SUBJECTS:
        raise ValueError(f"unknown subject {subject!r}; choose from {', '.join(SUBJECTS)}")
    wanted = parse_curves(",".join(curves))
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, not {seconds}")
    topic = f"rha-scale-{subject}-{uuid.uuid4().hex[:8]}"
    figures: dict[str, dict[str, dict[str, float]]] = {}
    if "concurrency" in wanted or "size" in wanted:
        calls = make(subject, url, topic)
        servers: Servers | None = None
        try:
            servers = start_servers(calls, url, ["s0"])
            if "concurrency" in wanted:
                figures["concurrency"] = concurrency_curve(calls, seconds)
            if "size" in wanted:
                figures["size"] = size_curve(calls, seconds)
        finally:
            if servers is not None:
                servers.close()
            calls.close()
    if "fanout" in wanted:
        figures["fanout"] = fanout_curve(subject, url, topic, seconds)
    return figures


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through run()'s clean-ups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("subject", choices=SUBJECTS)
    parser.add_argument("url")
    parser.add_argument("--curves", default=",".join(CURVES),
                        help=f"comma-separated, of {', '.join(CURVES)} (default: all)")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                        help="timed seconds per point (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        curves = parse_curves(args.curves)
    except ValueError as error:
        parser.error(str(error))
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        figures = run(args.subject, args.url, curves, args.seconds)
    except Exception as error:
        _say(f"{args.subject} failed: {type(error).__name__}: {error}")
        return 1
    except KeyboardInterrupt:
        _say(f"{args.subject} interrupted")
        return 130
    sys.stdout.write(json.dumps(figures) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

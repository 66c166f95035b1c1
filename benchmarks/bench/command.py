"""``rabbit-ha bench``: check the broker, run the rounds and the heartbeat figure, report.

:func:`run_bench` takes its side effects as arguments (the process runner,
the broker probe, the output streams, the date), so the command is tested
with canned worker output and no broker.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from benchmarks.bench import report, rounds
from benchmarks.bench.subjects import SUBJECTS
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.settings import parse_transport_url

#: The first node of the test cluster ``tools/rabbit_cluster.py start`` runs.
DEFAULT_BASE_PORT = 27672
#: Seconds the broker probe may take before the bench gives up.
PROBE_TIMEOUT = 5.0


def default_url(env: Mapping[str, str] = os.environ) -> str:
    """The test cluster's first node, on ``RHA_TEST_BASE_PORT`` as the cluster tool reads it."""
    raw = env.get("RHA_TEST_BASE_PORT", str(DEFAULT_BASE_PORT))
    try:
        port = int(raw)
    except ValueError:
        raise exc.ConfigurationError("RHA_TEST_BASE_PORT", raw, "not a port number") from None
    return f"rabbit://guest:guest@127.0.0.1:{port}/"


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """What ``rabbit-ha bench`` was asked to do."""

    url: str
    runs: int = 5
    seconds: float = 2.0
    heartbeat_seconds: float = 60.0
    subjects: tuple[str, ...] = SUBJECTS
    json: bool = False
    output: str | None = None


def probe_broker(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when the URL's broker accepts a connection, else why not."""
    from rabbit_ha_driver.connection import Connection, Deadline
    from rabbit_ha_driver.events import EventBus
    from rabbit_ha_driver.options import from_url

    conn = Connection(from_url(url), name="rabbit-ha:bench-probe", events=EventBus())
    try:
        conn.connect(Deadline.after(timeout))
    except exc.RabbitHAError as error:
        return f"{type(error).__name__}: {error}"
    finally:
        conn.close()
    return None


def versions() -> dict[str, str | None]:
    """Versions of what the figures depend on (None: not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("rabbit_ha_driver", "kombu", "amqp", "oslo.messaging"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    return found


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_bench(options: BenchOptions, *, runner: rounds.Runner = rounds.run_process,
              probe: Callable[[str], str | None] = probe_broker,
              find_spec: Callable[[str], Any] | None = None,
              date: Callable[[], str] = _now,
              out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The command: 0 when every run produced its figures, 1 otherwise.

    A missed target does not change the exit status: the figures depend on
    the machine and the broker, and are for people to read.
    """
    out = out or sys.stdout
    err = err or sys.stderr

    def progress(line: str) -> None:
        print(line, file=err, flush=True)

    parsed = parse_transport_url(options.url, option="--url")
    url = parsed.redacted()
    if parsed.is_memory:
        raise exc.ConfigurationError("--url", options.url,
                                     "the bench compares RabbitMQ clients and needs a RabbitMQ broker")
    unavailable = (rounds.unavailable_subjects(options.subjects) if find_spec is None
                   else rounds.unavailable_subjects(options.subjects, find_spec))
    for subject, reason in unavailable.items():
        progress(f"{subject}: unavailable, {reason}")
    subjects = [s for s in options.subjects if s not in unavailable]
    if any(s not in rounds.BROKERLESS for s in subjects):
        problem = probe(options.url)
        if problem is not None:
            progress(f"rabbit-ha bench: cannot reach the broker at {url}: {problem}\n"
                     "Start the test cluster from a checkout of rabbit_ha_driver with "
                     "`python tools/rabbit_cluster.py start` (its first node is the default "
                     f"URL), or give another broker with --url.")
            return 1
    progress(f"rabbit-ha bench on {url}: {options.runs} round(s) of {', '.join(subjects) or 'nothing'}, "
             f"each run in a process of its own")
    results = rounds.run_rounds(subjects, options.url, options.runs, options.seconds, runner, progress)
    heartbeat = None
    if "rabbit_ha" in subjects and options.heartbeat_seconds > 0:
        progress(f"heartbeat: {rounds.HEARTBEAT_CONNECTIONS} idle connections at "
                 f"T={rounds.HEARTBEAT_THRESHOLD}s, {rounds.HEARTBEAT_THRESHOLD}s to settle, then "
                 f"{options.runs} window(s) of {options.heartbeat_seconds:g}s")
        heartbeat = rounds.run_heartbeat(options.url, options.runs, options.heartbeat_seconds, runner)
        progress("heartbeat: ok" if heartbeat.ok else f"heartbeat: FAILED: {heartbeat.error}")
    if options.json:
        json.dump(report.medians(report.aggregate(results, heartbeat)), out, indent=2)
        out.write("\n")
    else:
        for line in report.text_report(url=url, runs=options.runs, seconds=options.seconds,
                                       subjects=options.subjects, results=results,
                                       heartbeat=heartbeat, heartbeat_seconds=options.heartbeat_seconds,
                                       unavailable=unavailable):
            print(line, file=out)
    out.flush()
    failed = any(not r.ok for r in results) or (heartbeat is not None and not heartbeat.ok)
    if options.output is not None:
        document = report.full_json(
            url=url, date=date(), versions=versions(), runs=options.runs, seconds=options.seconds,
            heartbeat_seconds=options.heartbeat_seconds, subjects=options.subjects, results=results,
            heartbeat=heartbeat, unavailable=unavailable)
        try:
            with open(options.output, "w", encoding="utf-8") as file:
                json.dump(document, file, indent=2)
                file.write("\n")
        except OSError as error:
            progress(f"rabbit-ha bench: cannot write {options.output}: {error}")
            return 1
        progress(f"figures of every run written to {options.output}")
    return 1 if failed else 0


def parse_subjects(text: str, known: Sequence[str] = SUBJECTS) -> tuple[str, ...]:
    """``a,b,...`` as subject names, in the order given; ValueError names a bad one."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"no subject given; choose from {', '.join(known)}")
    for name in names:
        if name not in known:
            raise ValueError(f"unknown subject {name!r}; choose from {', '.join(known)}")
    return tuple(dict.fromkeys(names))

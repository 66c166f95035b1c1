"""One run of one subject, in a process of its own; prints its figures as JSON.

Run by :mod:`rabbit_ha_driver.bench` (``rabbit-ha bench``) once per subject
and run, so every run starts from a fresh interpreter and memory figures are
not skewed by what an earlier subject left behind::

    python -m rabbit_ha_driver.bench.worker SUBJECT URL [--seconds S]

Figures (those that do not apply to a subject are left out):

* ``rss_kb_per_connection``: resident memory added by each of 20 more
  connections, opened one after the other and kept open;
* ``rss_kb_per_idle_server``: resident memory added by each of 10 more
  started RPC servers on topics nobody sends to;
* ``calls_per_s``, ``call_p50_ms``, ``call_p99_ms``: one thread calling
  ``ping`` with a 64-byte payload back to back for ``S`` seconds;
* ``concurrent_calls_per_s``: 8 threads calling at once for ``S`` seconds;
* ``casts_per_s``: one thread casting for ``S`` seconds, counted until the
  server received every cast;
* ``fanout_per_s``: fanout casts to 3 servers for ``S`` seconds, counted
  until every server received every one.

Each throughput figure starts after a short warm-up (connections opened,
queues declared, code paths run once).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from rabbit_ha_driver.bench.subjects import SUBJECTS, Subject, make

CONNECTIONS = 20
IDLE_SERVERS = 10
CLIENT_THREADS = 8
FANOUT_SERVERS = 3
WARM_UP = 20
#: How long the runner waits for every cast to arrive before failing the run.
DRAIN_TIMEOUT = 60.0


def rss_kb() -> int:
    """This process's resident set size, in kB (Linux)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def rss_per(count: int, open_one: Callable[[int], Any]) -> float:
    """Resident kB added per object by ``count`` calls of ``open_one``."""
    gc.collect()
    before = rss_kb()
    for i in range(count):
        open_one(i)
    gc.collect()
    return (rss_kb() - before) / count


def percentile(sorted_values: list[float], share: float) -> float:
    """The value below which ``share`` of the sorted values lie (nearest rank)."""
    if not sorted_values:
        raise ValueError("no values")
    index = min(len(sorted_values) - 1, max(0, round(share * len(sorted_values)) - 1))
    return sorted_values[index]


def sequential_calls(call: Callable[[], Any], seconds: float) -> dict[str, float]:
    for _ in range(WARM_UP):
        call()
    latencies = []
    clock = time.perf_counter
    started = clock()
    end = started + seconds
    now = started
    while now < end:
        call()
        after = clock()
        latencies.append(after - now)
        now = after
    latencies.sort()
    return {
        "calls_per_s": len(latencies) / (now - started),
        "call_p50_ms": 1000 * percentile(latencies, 0.50),
        "call_p99_ms": 1000 * percentile(latencies, 0.99),
    }


def concurrent_calls(callers: list[Callable[[], Any]], seconds: float) -> float:
    counts = [0] * len(callers)
    errors: list[BaseException] = []
    start = threading.Barrier(len(callers) + 1)
    stop = threading.Event()

    def run(i: int) -> None:
        call = callers[i]
        for _ in range(WARM_UP // 4):
            call()
        start.wait()
        try:
            while not stop.is_set():
                call()
                counts[i] += 1
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(callers))]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(60)
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"a client thread failed: {errors[0]!r}") from errors[0]
    return sum(counts) / elapsed


def casts(subject: Subject, cast: Callable[[int], None], receivers: list[str],
          seconds: float) -> float:
    """Casts a second, counted until each receiver got every one."""
    for n in range(WARM_UP):
        cast(n)
    subject.settle()
    if not subject.counter.wait({r: WARM_UP for r in receivers}, DRAIN_TIMEOUT):
        raise RuntimeError(f"warm-up casts did not all arrive: {subject.counter.counts}")
    subject.counter.reset()
    clock = time.perf_counter
    started = clock()
    end = started + seconds
    sent = 0
    while clock() < end:
        cast(sent)
        sent += 1
    subject.settle()
    if not subject.counter.wait({r: sent for r in receivers}, DRAIN_TIMEOUT):
        raise RuntimeError(f"{sent} casts sent but only {subject.counter.counts} arrived "
                           f"within {DRAIN_TIMEOUT:.0f}s")
    return sent / (clock() - started)


def run(name: str, url: str, seconds: float, *, memory: bool = True) -> dict[str, float]:
    """Every figure that applies to subject ``name``, measured once."""
    figures: dict[str, float] = {}
    topic = f"rha-bench-{name}-{uuid.uuid4().hex[:8]}"
    subject = make(name, url, topic)
    try:
        subject.start_servers(["s0"])
        call = subject.caller()
        call()  # the reply queue and its thread, before memory is measured
        if memory:
            if subject.has_connections:
                subject.open_connection()  # code paths and imports of the first one
                figures["rss_kb_per_connection"] = rss_per(
                    CONNECTIONS, lambda i: subject.open_connection())
            subject.open_idle_server(f"{topic}-idle-warm")
            figures["rss_kb_per_idle_server"] = rss_per(
                IDLE_SERVERS, lambda i: subject.open_idle_server(f"{topic}-idle-{i}"))
        figures.update(sequential_calls(call, seconds))
        callers = [subject.caller() for _ in range(CLIENT_THREADS)]
        figures["concurrent_calls_per_s"] = concurrent_calls(callers, seconds)
        figures["casts_per_s"] = casts(subject, subject.caster(), ["s0"], seconds)
    finally:
        subject.close()
    fanout_topic = f"{topic}-fanout"
    subject = make(name, url, fanout_topic)
    try:
        receivers = [f"f{i}" for i in range(FANOUT_SERVERS)]
        subject.start_servers(receivers, fanout_only=True)
        figures["fanout_per_s"] = casts(subject, subject.caster(fanout=True), receivers, seconds)
    finally:
        subject.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("subject", choices=SUBJECTS)
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args(argv)
    figures = run(args.subject, args.url, args.seconds, memory=not args.no_memory)
    json.dump(figures, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

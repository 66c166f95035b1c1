"""One run of one subject, in a process of its own; prints its figures as JSON.

Run by :mod:`benchmarks.bench` (``rabbit-ha bench``) once per subject
and run, so every run starts from a fresh interpreter and memory figures are
not skewed by what an earlier subject left behind::

    python -m benchmarks.bench.worker SUBJECT URL [--seconds S]

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

import abc
import argparse
import contextlib
import gc
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks.bench import child_env
from benchmarks.bench.subjects import SUBJECTS, Subject, make

CONNECTIONS = 20
IDLE_SERVERS = 10
CLIENT_THREADS = 8
FANOUT_SERVERS = 3
WARM_UP = 20
#: How long the runner waits for every cast to arrive before failing the run.
DRAIN_TIMEOUT = 60.0
#: Seconds a server process gets to stop before it is killed.
SERVER_EXIT_WAIT = 15.0


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


def concurrent_calls(callers: list[Callable[[], Any]], seconds: float, *,
                     clock: Callable[[], float] = time.perf_counter,
                     sleep: Callable[[float], Any] = time.sleep) -> float:
    """Calls a second of one thread per caller (the same caller may be given more than once)."""
    counts = [0] * len(callers)
    errors: list[BaseException] = []
    start = threading.Barrier(len(callers) + 1)
    stop = threading.Event()

    def run(i: int) -> None:
        call = callers[i]
        try:
            for _ in range(WARM_UP // 4):
                call()
            start.wait()
            while not stop.is_set():
                call()
                counts[i] += 1
        except threading.BrokenBarrierError:
            pass  # another thread failed its warm-up: reported below
        except BaseException as error:  # reported below
            errors.append(error)
            start.abort()  # a failed warm-up must not leave the others waiting

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(callers))]
    for thread in threads:
        thread.start()
    began = clock()
    with contextlib.suppress(threading.BrokenBarrierError):
        start.wait()
        began = clock()
        sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(60)
    elapsed = clock() - began
    if errors:
        raise RuntimeError(f"a client thread failed: {errors[0]!r}") from errors[0]
    return sum(counts) / elapsed


class Servers(abc.ABC):
    """The RPC servers of one measurement and what they received."""

    @abc.abstractmethod
    def wait(self, expected: dict[str, int], timeout: float) -> bool:
        """True once each named server received at least that many casts."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Start counting from zero."""

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """What each server received since the last reset."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the servers."""


class LocalServers(Servers):
    """Servers in this process (``oslo_fake``, whose broker lives in the process)."""

    def __init__(self, subject: Subject, names: list[str], fanout_only: bool) -> None:
        self._subject = subject
        subject.start_servers(names, fanout_only=fanout_only)

    def wait(self, expected: dict[str, int], timeout: float) -> bool:
        return self._subject.counter.wait(expected, timeout)

    def reset(self) -> None:
        self._subject.counter.reset()

    def counts(self) -> dict[str, int]:
        return dict(self._subject.counter.counts)

    def close(self) -> None:
        pass  # closed with the subject


class RemoteServers(Servers):
    """Servers in a process of their own, driven over its stdin and stdout.

    Clients and servers of a real deployment are different processes; in
    one process they would take turns on one interpreter lock and every
    figure would mostly measure that.
    """

    def __init__(self, name: str, url: str, topic: str, names: list[str],
                 fanout_only: bool) -> None:
        command = [sys.executable, "-m", "benchmarks.bench.worker", name, url,
                   "--serve", topic, "--names", ",".join(names)]
        if fanout_only:
            command.append("--fanout")
        self._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, bufsize=1, env=child_env())
        ready = self._read()
        if ready != "ready":
            self.close()
            raise RuntimeError(f"the {name} server process did not start (said {ready!r})")

    @property
    def pid(self) -> int:
        """The server process's id."""
        return self._proc.pid

    def _read(self) -> str:
        assert self._proc.stdout is not None
        return self._proc.stdout.readline().strip()

    def _ask(self, command: str) -> str:
        assert self._proc.stdin is not None
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        return self._read()

    def wait(self, expected: dict[str, int], timeout: float) -> bool:
        return self._ask(f"wait {timeout} {json.dumps(expected)}") == "ok"

    def reset(self) -> None:
        self._ask("reset")

    def counts(self) -> dict[str, int]:
        answer: dict[str, int] = json.loads(self._ask("counts") or "{}")
        return answer

    def close(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self._ask("quit")
            try:
                self._proc.wait(SERVER_EXIT_WAIT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def start_servers(subject: Subject, url: str, names: list[str], *,
                  fanout_only: bool = False) -> Servers:
    """Servers of ``subject``'s topic: in another process unless it is in-process only."""
    if subject.in_process_only:
        return LocalServers(subject, names, fanout_only)
    return RemoteServers(subject.name, url, subject.topic, names, fanout_only)


def serve(name: str, url: str, topic: str, names: list[str], fanout_only: bool) -> int:
    """The server process: start the servers, then answer the runner's commands.

    ``wait SECONDS {"server": count, ...}`` answers ``ok`` or ``timeout``;
    ``reset``, ``counts`` (JSON) and ``quit``.
    """
    subject = make(name, url, topic)
    try:
        subject.start_servers(names, fanout_only=fanout_only)
        print("ready", flush=True)
        for line in sys.stdin:
            command, _, rest = line.strip().partition(" ")
            if command == "wait":
                seconds, _, expected = rest.partition(" ")
                done = subject.counter.wait(json.loads(expected), float(seconds))
                print("ok" if done else "timeout", flush=True)
            elif command == "reset":
                subject.counter.reset()
                print("ok", flush=True)
            elif command == "counts":
                print(json.dumps(subject.counter.counts), flush=True)
            elif command == "quit":
                print("bye", flush=True)
                break
            else:
                print(f"unknown command {command!r}", flush=True)
    finally:
        subject.close()
    return 0


def casts(subject: Subject, servers: Servers, cast: Callable[[int], None],
          receivers: list[str], seconds: float, *,
          clock: Callable[[], float] = time.perf_counter) -> float:
    """Casts a second, counted until each receiver got every one."""
    for n in range(WARM_UP):
        cast(n)
    subject.settle()
    if not servers.wait({r: WARM_UP for r in receivers}, DRAIN_TIMEOUT):
        raise RuntimeError(f"warm-up casts did not all arrive: {servers.counts()}")
    servers.reset()
    started = clock()
    end = started + seconds
    sent = 0
    while clock() < end:
        cast(sent)
        sent += 1
    subject.settle()
    if not servers.wait({r: sent for r in receivers}, DRAIN_TIMEOUT):
        raise RuntimeError(f"{sent} casts sent but only {servers.counts()} arrived "
                           f"within {DRAIN_TIMEOUT:.0f}s")
    return sent / (clock() - started)


def run(name: str, url: str, seconds: float, *, memory: bool = True) -> dict[str, float]:
    """Every figure that applies to subject ``name``, measured once."""
    figures: dict[str, float] = {}
    topic = f"rha-bench-{name}-{uuid.uuid4().hex[:8]}"
    subject = make(name, url, topic)
    servers: Servers | None = None
    try:
        servers = start_servers(subject, url, ["s0"])
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
        figures["casts_per_s"] = casts(subject, servers, subject.caster(), ["s0"], seconds)
    finally:
        if servers is not None:
            servers.close()
        subject.close()
    fanout_topic = f"{topic}-fanout"
    subject = make(name, url, fanout_topic)
    servers = None
    try:
        receivers = [f"f{i}" for i in range(FANOUT_SERVERS)]
        servers = start_servers(subject, url, receivers, fanout_only=True)
        figures["fanout_per_s"] = casts(subject, servers, subject.caster(fanout=True),
                                        receivers, seconds)
    finally:
        if servers is not None:
            servers.close()
        subject.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("subject", choices=SUBJECTS)
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--serve", metavar="TOPIC",
                        help="be the server process of a run (see RemoteServers)")
    parser.add_argument("--names", default="s0", help="with --serve: server names, comma-separated")
    parser.add_argument("--fanout", action="store_true", help="with --serve: fanout queues only")
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.subject, args.url, args.serve, args.names.split(","), args.fanout)
    figures = run(args.subject, args.url, args.seconds, memory=not args.no_memory)
    json.dump(figures, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

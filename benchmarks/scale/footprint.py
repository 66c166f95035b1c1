"""The broker's footprint per service, and a restart storm, for one subject.

Part ``footprint`` of ``rabbit-ha bench --scale``::

    python -m benchmarks.scale.footprint SUBJECT URL [--counts 10,50] [--storm|--no-storm]
        [--management-port P]

prints, as its last line on stdout, one JSON object::

    {"footprint_idle": {"10": {"connections": f, "channels": f, "queues": f,
                               "consumers": f, "erlang_processes": f, "memory_bytes": f},
                        "50": {...}},
     "footprint_load": {same shape},
     "storm": {"50": {"all_answering_s": f, "slowest_answer_after_start_s": f,
                      "peak_memory_bytes": f, "connections_created": f,
                      "connections_closed": f, "queues_left": f, "queue_expiry_s": f,
                      "failed_services": f}}}

Subjects: ``rabbit_ha``, ``rabbit_ha_oslo``, ``oslo_rabbit`` (as in
:mod:`benchmarks.bench.subjects`). ``bare_amqp`` is left out: it has no
notification listener, no notifier and no naming of servers, so "a service"
would be whatever this file chose to hand-write, not a figure of anything
deployed. ``oslo_fake`` has no broker.

The services
------------
Each service is a process of its own (:mod:`benchmarks.scale.service`, started
with :func:`benchmarks.bench.child_env`), as in a deployment: one RPC server
on the topic all services share, named ``svc-<i>``; one notification
listener on the shared notification topic (priority ``info``; all listeners
share its queue); one RPC client and a notifier. At start a service calls
its ring peer's server by name (``svc-<i+1>``, within its batch) until it
answers, then the shared topic once; it says on stdout when it has done so
and when its own server answered its first call. Services connect to the
URL given (by default the test cluster's first node).

What is measured
----------------
The broker's totals over all nodes (:mod:`benchmarks.scale.broker`):
connections, channels, queues, consumers (lists of the management API),
Erlang processes (``proc_used`` of every node, which the nodes refresh every
5 s) and memory: ``memory_bytes`` is what the clients' connection, channel
and queue processes and their statistics hold
(:func:`benchmarks.scale.broker.client_memory`), as the nodes' whole memory
moves by tens of MB with garbage collection, more than ten services add; the
storm's ``peak_memory_bytes`` is of the whole memory (``mem_used``). A *reading* is the median of one sample a
second over :data:`SAMPLE_S` seconds, taken after :data:`SETTLE_S` seconds of
settling, so the 5-second refresh has passed at least once.

1. Baseline: a reading before any service starts.
2. For each N of ``--counts`` (ascending; the services of the smaller N keep
   running and only the difference is started): wait until all N answered,
   settle, a reading -> ``footprint_idle``; then every service calls the
   shared topic :data:`LOAD_CALLS_PER_S` times a second and sends a
   notification every :data:`LOAD_NOTIFY_EVERY_S` seconds for
   :data:`LOAD_S` seconds, with a reading taken during the last
   :data:`SAMPLE_S` of them -> ``footprint_load``. Each figure is
   ``(reading - baseline) / N``.
3. The storm (``--storm``, after the largest N): every service is killed with
   SIGKILL at once, and as many new ones (the same server names, as a
   restarted deployment has) are started at once, each calling its peer:
   ``all_answering_s``: from the kill until the last new service has both
   answered a call to its own server (made by its peer) and had its own
   client's call answered; ``slowest_answer_after_start_s``: the longest time
   from one process's start (its ``Popen``) to its server's first answer;
   ``slowest_answer_after_imports_s``: the longest time from the end of one
   process's imports (where the library's code starts: fifty interpreters
   importing at once on a small machine take most of the time before it, the
   same for every subject) until it answered and was answered;
   ``peak_memory_bytes``: the broker's memory above the baseline, at its
   highest in samples every :data:`STORM_SAMPLE_EVERY_S` s from the kill
   until :data:`SETTLE_S` s after the last answer (the nodes' figures lag by
   up to 5 s, so the first samples still show the killed services' memory);
   ``connections_created`` and
   ``connections_closed``: connections that appeared in, and went from, the
   broker's connection list over the same samples (:class:`ConnectionChurn`;
   the killed services' connections are among the closed; one that came and
   went between two samples is missed); ``failed_services``: new
   services that had not answered within :data:`STORM_TIMEOUT_S` s.
   ``queues_left``: queues the killed services had (present before the kill,
   not at the baseline) that are still there with no consumer;
   ``queue_expiry_s``: the longest ``x-expires`` among them, the time the
   broker takes to delete them (left out when none has one: they stay for
   ever). When it is at most :data:`EXPIRY_WAIT_MAX_S` s the count is taken
   once it has passed since the kill; when it is longer (both drivers default
   to ``rabbit_transient_queues_ttl`` = 1800 s) the count is taken at once,
   and ``queue_expiry_s`` says how long they would stay.

At the end every service is asked to stop (killed if it does not within
:data:`STOP_WAIT_S` s) and the queues the run left (names of its topics, and
``reply_*`` queues that were not there at the baseline and have no consumer)
are deleted through the management API, also when the run failed.

The figures are the broker's totals, so nothing else may use that broker
meanwhile; the reading of the baseline absorbs what was there before.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from benchmarks.bench import child_env
from benchmarks.scale import broker

#: The part's name in ``rabbit-ha bench --scale``.
PART = "footprint"
SUBJECTS = ("rabbit_ha", "rabbit_ha_oslo", "oslo_rabbit")
DEFAULT_COUNTS = (10, 50)
#: Seconds after the services answered before a reading starts.
SETTLE_S = 6.0
#: Seconds a reading samples for (one sample every SAMPLE_EVERY_S).
SAMPLE_S = 6.0
SAMPLE_EVERY_S = 1.0
#: The steady load: calls a second per service, seconds between notifications.
LOAD_CALLS_PER_S = 2.0
LOAD_NOTIFY_EVERY_S = 2.0
LOAD_S = 10.0
#: Seconds the services of one batch get to start and answer.
START_TIMEOUT_S = 150.0
#: Seconds the new services of the storm get to answer (fifty processes
#: importing oslo.messaging at once on two busy cores take over a minute).
STORM_TIMEOUT_S = 180.0
STORM_SAMPLE_EVERY_S = 0.5
#: Queues expiring within this many seconds are waited for; longer ones are not.
EXPIRY_WAIT_MAX_S = 60.0
#: ``rabbit_transient_queues_ttl`` of every service (both drivers' option; their
#: default is 1800 s): the expiry of reply and fanout queues, short enough that
#: the storm can wait for it and count the queues left after it passed.
QUEUE_TTL_S = 20
#: Seconds the services get to stop at the end before they are killed.
STOP_WAIT_S = 10.0

PROTOCOL = "@rha"


class FootprintError(RuntimeError):
    """The run could not measure what it set out to."""


# -- what the services say ---------------------------------------------------------


def parse_line(line: str) -> tuple[str, list[str]] | None:
    """``("answered", ["123.4"])`` from a service's protocol line; None for other output."""
    parts = line.split()
    if len(parts) < 2 or parts[0] != PROTOCOL:
        return None
    return parts[1], parts[2:]


@dataclasses.dataclass
class Record:
    """What the driver knows of one service process."""

    name: str
    spawned: float
    #: When its imports were done (its library code starts here).
    imported: float | None = None
    started: float | None = None
    called: float | None = None
    ready: float | None = None
    answered: float | None = None
    error: str | None = None
    exited: int | None = None
    load: tuple[int, int, int] | None = None
    #: Where its stderr goes.
    log: str = ""

    @property
    def answering(self) -> bool:
        """Its server answered a call and its client's calls were answered."""
        return self.answered is not None and self.ready is not None

    @property
    def answering_at(self) -> float | None:
        if self.answered is None or self.ready is None:
            return None
        return max(self.answered, self.ready)


def apply_event(record: Record, event: str, values: Sequence[str]) -> None:
    """Book one protocol line; unknown events are ignored."""
    if event in ("imported", "started", "called", "ready", "answered") and values:
        setattr(record, event, float(values[0]))
    elif event == "loaded" and len(values) >= 3:
        record.load = (int(values[0]), int(values[1]), int(values[2]))
    elif event == "error":
        record.error = " ".join(values) or "error"


def storm_times(records: Iterable[Record], restart_at: float) -> dict[str, float]:
    """``all_answering_s``, ``slowest_answer_after_start_s``,
    ``slowest_answer_after_imports_s`` and ``failed_services``.

    The first two only over the services that answered; left out when none did.
    """
    records = list(records)
    ok = [r for r in records if r.answering]
    figures: dict[str, float] = {"failed_services": float(len(records) - len(ok))}
    if ok:
        figures["all_answering_s"] = max(r.answering_at or 0.0 for r in ok) - restart_at
        figures["slowest_answer_after_start_s"] = max((r.answered or 0.0) - r.spawned for r in ok)
        imported = [(r.answering_at or 0.0) - r.imported for r in ok if r.imported is not None]
        if imported:
            figures["slowest_answer_after_imports_s"] = max(imported)
    return figures


def phases(records: Iterable[Record]) -> str:
    """Median and highest seconds from spawn to started, started to called,
    called to ready, and spawn to answered, for the log."""
    steps: dict[str, list[float]] = {"start": [], "call_peer": [], "call_topic": [],
                                     "answered": []}
    for r in records:
        if r.started is not None:
            steps["start"].append(r.started - r.spawned)
            if r.called is not None:
                steps["call_peer"].append(r.called - r.started)
                if r.ready is not None:
                    steps["call_topic"].append(r.ready - r.called)
        if r.answered is not None:
            steps["answered"].append(r.answered - r.spawned)
    return ", ".join(f"{step} median {statistics.median(values):.2f}s max {max(values):.2f}s"
                     for step, values in steps.items() if values)


def queues_of_killed(before_kill: Iterable[Mapping[str, Any]],
                     baseline: set[tuple[str, str]]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """The queues present before the kill that were not there at the baseline."""
    return {broker.queue_key(q): q for q in before_kill if broker.queue_key(q) not in baseline}


def left_queues(killed: Mapping[tuple[str, str], Mapping[str, Any]],
                now: Iterable[Mapping[str, Any]],
                consumed: set[tuple[str, str]]) -> tuple[int, float | None]:
    """``(how many, longest x-expires in s)`` of the killed services' queues still there.

    A queue a new service consumes from again (its server queue, the shared
    topic and notification queues) is not left behind. The expiry is over
    every unconsumed queue of the killed services, including those already
    gone; None when none of them has one.
    """
    present = {broker.queue_key(q) for q in now}
    orphans = [key for key in killed if key not in consumed]
    left = sum(1 for key in orphans if key in present)
    expiries = [e for e in (broker.expires_s(killed[key]) for key in orphans) if e is not None]
    return left, (max(expiries) if expiries else None)


class ConnectionChurn:
    """Connections created and closed, from successive lists of their names.

    The broker names a connection by its two TCP endpoints, unique while it
    is open. A connection that opened and closed between two samples is not
    seen (the storm samples twice a second). The broker's own churn counters
    (``/api/overview`` ``churn_rates``) are not used: in RabbitMQ 3.10 they
    count over a sliding window only.
    """

    def __init__(self, before: set[str]) -> None:
        self.before = set(before)
        self.current = set(before)
        self.created: set[str] = set()
        self.closed: set[str] = set()

    def seen(self, names: set[str]) -> None:
        self.created |= names - self.before
        self.closed |= self.current - names
        self.current = set(names)

    def figures(self) -> dict[str, float]:
        return {"connections_created": float(len(self.created)),
                "connections_closed": float(len(self.closed))}


def ring(names: Sequence[str]) -> dict[str, str]:
    """Each name's peer: the next one, the last one's the first."""
    return {name: names[(i + 1) % len(names)] for i, name in enumerate(names)}


def parse_counts(text: str) -> tuple[int, ...]:
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--counts: integers separated by commas, not {text!r}") \
            from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"--counts: positive integers, not {text!r}")
    return tuple(counts)


def cleanup_targets(queues: Iterable[Mapping[str, Any]], baseline: set[tuple[str, str]],
                    consumed: set[tuple[str, str]], prefix: str) -> list[tuple[str, str]]:
    """The queues a run leaves that it deletes: its topics' queues, and new
    ``reply_*`` queues nobody consumes."""
    targets = []
    for queue in queues:
        key = broker.queue_key(queue)
        name = key[1]
        ours = name.startswith(prefix)
        orphan_reply = name.startswith("reply_") and key not in baseline and key not in consumed
        if ours or orphan_reply:
            targets.append(key)
    return targets


# -- the service processes ---------------------------------------------------------


def service_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """:func:`~benchmarks.bench.child_env`, with byte code cached.

    A service imports its framework from byte code, as an installed service
    does. Where ``PYTHONDONTWRITEBYTECODE`` is set (tox sets it) every service
    would compile the checkout's sources again; instead the byte code goes to
    a cache of its own (``PYTHONPYCACHEPREFIX``, in the temporary directory),
    never into the checkout.
    """
    result = child_env(env)
    result.pop("PYTHONDONTWRITEBYTECODE", None)
    result.setdefault("PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / "rha-scale-pycache"))
    return result


def warm_up(subject: str, env: Mapping[str, str], timeout: float = 120.0) -> None:
    """Import the subject's modules once in a child, writing the byte code cache."""
    code = f"from benchmarks.scale.service import warm_imports; warm_imports({subject!r})"
    done = subprocess.run([sys.executable, "-c", code], env=dict(env), capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise FootprintError(f"{subject} cannot be imported: {tail}")


class Services:
    """The service processes of one run and what they said."""

    def __init__(self, subject: str, url: str, topic: str, notify_topic: str,
                 log_dir: Path) -> None:
        self.subject = subject
        self.url = url
        self.topic = topic
        self.notify_topic = notify_topic
        self.log_dir = log_dir
        self._cond = threading.Condition()
        self.records: dict[str, Record] = {}
        self._procs: dict[str, subprocess.Popen[str]] = {}
        self._env = service_env()
        self._generation = 0

    def start(self, names: Sequence[str], peers: Mapping[str, str]) -> None:
        """Start one process per name, each calling its peer."""
        self._generation += 1
        for name in names:
            command = [sys.executable, "-m", "benchmarks.scale.service", self.subject, self.url,
                       "--topic", self.topic, "--server", name, "--peer", peers[name],
                       "--notify-topic", self.notify_topic, "--queue-ttl", str(QUEUE_TTL_S)]
            path = self.log_dir / f"{name}.{self._generation}.err"
            log = open(path, "w")  # noqa: SIM115
            with self._cond:
                record = Record(name, spawned=time.monotonic(), log=str(path))
                self.records[name] = record
            try:
                proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=log, text=True, bufsize=1, env=self._env)
            finally:
                log.close()
            self._procs[name] = proc
            threading.Thread(target=self._read, args=(record, proc), daemon=True,
                             name=f"read-{name}").start()

    def _read(self, record: Record, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            parsed = parse_line(line)
            if parsed is not None:
                with self._cond:
                    apply_event(record, *parsed)
                    self._cond.notify_all()
        code = proc.wait()
        with self._cond:
            record.exited = code
            self._cond.notify_all()

    def wait(self, names: Sequence[str], done: Callable[[Record], bool], timeout: float, *,
             give_up_on_failure: bool = True) -> bool:
        """True once ``done`` holds for every named record; False at the timeout,
        or as soon as one of them exited or failed (with ``give_up_on_failure``;
        otherwise once every one is done or failed)."""
        def failed(r: Record) -> bool:
            return r.error is not None or r.exited is not None

        def finished() -> bool:
            records = [self.records[n] for n in names]
            if give_up_on_failure:
                return all(done(r) for r in records) or any(failed(r) for r in records)
            return all(done(r) or failed(r) for r in records)

        with self._cond:
            self._cond.wait_for(finished, timeout)
            return all(done(self.records[n]) for n in names)

    def problems(self, names: Sequence[str]) -> str:
        """What went wrong with the named services, with a stderr tail of the first."""
        bad = [r for r in (self.records[n] for n in names) if not r.answering]
        if not bad:
            return ""
        first = bad[0]
        tail = self.stderr_tail(first)
        states = ", ".join(
            f"{r.name}: {r.error or ('exited ' + str(r.exited) if r.exited is not None else 'no answer')}"
            for r in bad[:5])
        return f"{len(bad)} of {len(names)} services not answering ({states}); " \
               f"stderr of {first.name}: {tail}"

    @staticmethod
    def stderr_tail(record: Record, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = Path(record.log).read_text(errors="replace")
            return " | ".join(text.strip().splitlines()[-lines:])
        return ""

    def send(self, names: Iterable[str], command: str) -> None:
        for name in names:
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is None and proc.stdin is not None:
                with contextlib.suppress(OSError, ValueError):
                    proc.stdin.write(command + "\n")
                    proc.stdin.flush()

    def kill_all(self) -> list[str]:
        """SIGKILL every process at once, then reap them; the names they had."""
        names = list(self._procs)
        procs = list(self._procs.values())
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.wait()
            _close(proc)
        self._procs.clear()
        return names

    def stop_all(self, timeout: float = STOP_WAIT_S) -> None:
        """Ask every process to quit (closing its input); kill those that do not."""
        procs = list(self._procs.values())
        for proc in procs:
            if proc.stdin is not None:
                with contextlib.suppress(OSError, ValueError):
                    proc.stdin.write("quit\n")
                    proc.stdin.close()
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _close(proc)
        self._procs.clear()


def _close(proc: subprocess.Popen[str]) -> None:
    """Close our end of its input (its output is read to the end by its reader)."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.close()


# -- readings ---------------------------------------------------------------------


def reading(api: broker.Management, seconds: float = SAMPLE_S,
            every: float = SAMPLE_EVERY_S) -> broker.Totals:
    """The median of samples taken every ``every`` s for ``seconds`` s."""
    samples = []
    end = time.monotonic() + seconds
    while True:
        samples.append(api.totals())
        if time.monotonic() + every > end:
            break
        time.sleep(every)
    return broker.median_totals(samples)


class StormWatcher:
    """Samples the broker during the storm in a thread, every ``every`` s: its
    total memory (the highest is kept) and the names of its connections."""

    def __init__(self, api: broker.Management, before: set[str],
                 every: float = STORM_SAMPLE_EVERY_S) -> None:
        self._api = api
        self._every = every
        self._stop = threading.Event()
        self.peak: int | None = None
        self.churn = ConnectionChurn(before)
        self.errors = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="storm-watcher")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._every)

    def sample(self) -> None:
        try:
            memory = self._api.memory_bytes()
            self.peak = memory if self.peak is None else max(self.peak, memory)
            self.churn.seen(broker.connection_names(self._api.connections()))
        except broker.BrokerError:
            self.errors += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)
        self.sample()


# -- the run -----------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"footprint: {message}", file=sys.stderr, flush=True)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def check_reading(measured: broker.Totals, baseline: broker.Totals, count: int) -> None:
    """Every service holds at least one connection: fewer listed means a
    node's management agent is not reporting, and the figures are wrong."""
    if measured.connections - baseline.connections < count:
        raise FootprintError(
            f"the broker lists {measured.connections - baseline.connections:.0f} new connections "
            f"for {count} services: a node's management statistics are missing")


def wait_for_statistics(api: broker.Management, timeout: float = 30.0) -> None:
    """Until every node reports its statistics (a node just started has none yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            api.totals()
            return
        except broker.BrokerError:
            if time.monotonic() > deadline:
                raise
        time.sleep(1.0)


def _terminate(signum: int, frame: Any) -> None:
    raise FootprintError(f"terminated by signal {signum}")


def _names(start: int, stop: int) -> list[str]:
    return [f"svc-{i}" for i in range(start, stop)]


def _start_batch(services: Services, names: list[str], timeout: float) -> None:
    services.start(names, ring(names))
    if not services.wait(names, lambda r: r.answering, timeout):
        raise FootprintError(services.problems(names) or "services did not start in time")


def _load_reading(api: broker.Management, services: Services,
                  names: list[str]) -> broker.Totals:
    services.send(names, f"load {LOAD_CALLS_PER_S} {LOAD_NOTIFY_EVERY_S}")
    time.sleep(max(0.0, LOAD_S - SAMPLE_S))
    measured = reading(api)
    services.send(names, "idle")
    services.wait(names, lambda r: r.load is not None, 60)
    loads = [services.records[n].load for n in names]
    calls = sum(load[0] for load in loads if load)
    errors = sum(load[1] for load in loads if load)
    _log(f"load with {len(names)} services: {calls} calls, {errors} errors")
    if errors:
        raise FootprintError(f"{errors} calls or notifications failed under load")
    for name in names:
        services.records[name].load = None
    return measured


def _storm(api: broker.Management, services: Services, names: list[str],
           baseline: broker.Totals, baseline_queues: set[tuple[str, str]]) -> dict[str, float]:
    time.sleep(SETTLE_S)  # memory back to idle after the load phase
    before_kill = api.queues()
    watcher = StormWatcher(api, broker.connection_names(api.connections()))
    try:
        killed_at = time.monotonic()
        services.kill_all()
        _log(f"storm: killed {len(names)} services in {time.monotonic() - killed_at:.2f}s")
        services.start(names, ring(names))
        services.wait(names, lambda r: r.answering, STORM_TIMEOUT_S, give_up_on_failure=False)
        figures = storm_times((services.records[n] for n in names), killed_at)
        _log(f"storm: {figures}; {phases(services.records[n] for n in names)}")
        time.sleep(SETTLE_S)  # memory figures lag by up to 5 s
    finally:
        watcher.stop()
    if watcher.peak is not None:
        figures["peak_memory_bytes"] = float(watcher.peak - baseline.total_memory_bytes)
    figures.update(watcher.churn.figures())
    if watcher.errors:
        _log(f"storm: {watcher.errors} samples of the broker failed")
    killed = queues_of_killed(before_kill, baseline_queues)
    left, expiry = left_queues(killed, api.queues(), broker.consumed_queues(api.consumers()))
    if expiry is not None:
        figures["queue_expiry_s"] = expiry
        if left and expiry <= EXPIRY_WAIT_MAX_S:
            time.sleep(max(0.0, killed_at + expiry + 2.0 - time.monotonic()))
            left, _ = left_queues(killed, api.queues(), broker.consumed_queues(api.consumers()))
    figures["queues_left"] = float(left)
    return figures


def _cleanup(api: broker.Management, baseline_queues: set[tuple[str, str]],
             prefix: str) -> None:
    try:
        targets = cleanup_targets(api.queues(), baseline_queues,
                                  broker.consumed_queues(api.consumers()), prefix)
        for vhost, name in targets:
            api.delete_queue(vhost, name)
        _log(f"deleted {len(targets)} queues left by the run")
    except broker.BrokerError as error:
        _log(f"could not delete the run's queues: {error}")


def run(subject: str, url: str, counts: Sequence[int] = DEFAULT_COUNTS, storm: bool = True,
        management_port: int | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Every figure of the part for ``subject``; see the module docstring."""
    if subject not in SUBJECTS:
        raise ValueError(f"unknown subject {subject!r}; choose from {', '.join(SUBJECTS)}")
    counts = sorted(set(counts))
    if not counts or counts[0] < 1:
        raise ValueError(f"counts must be positive, not {counts}")
    raise_nofile()
    # A SIGTERM (the command's timeout) stops the services and deletes the queues too.
    previous: Any = None
    with contextlib.suppress(ValueError):  # not in the main thread
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(subject, url, counts, storm, management_port)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(subject: str, url: str, counts: Sequence[int], storm: bool,
         management_port: int | None) -> dict[str, dict[str, dict[str, float]]]:
    api = broker.Management(broker.endpoint(url, management_port))
    run_id = uuid.uuid4().hex[:8]
    prefix = f"rha-scale-{run_id}"
    topic, notify_topic = prefix, f"{prefix}-notifications"
    results: dict[str, dict[str, dict[str, float]]] = {
        "footprint_idle": {}, "footprint_load": {}}
    warm_up(subject, service_env())
    wait_for_statistics(api)
    baseline_queues = {broker.queue_key(q) for q in api.queues()}
    baseline = reading(api)
    _log(f"baseline: {baseline.as_dict()}")
    with tempfile.TemporaryDirectory(prefix="rha-scale-footprint-") as log_dir:
        services = Services(subject, url, topic, notify_topic, Path(log_dir))
        try:
            running = 0
            for count in counts:
                began = time.monotonic()
                _start_batch(services, _names(running, count), START_TIMEOUT_S)
                _log(f"{count} services answering ({time.monotonic() - began:.1f}s to start "
                     f"{count - running} of them: "
                     f"{phases(services.records[n] for n in _names(running, count))})")
                running = count
                names = _names(0, count)
                time.sleep(SETTLE_S)
                idle = reading(api)
                check_reading(idle, baseline, count)
                results["footprint_idle"][str(count)] = broker.per_service(idle, baseline, count)
                load = _load_reading(api, services, names)
                results["footprint_load"][str(count)] = broker.per_service(load, baseline, count)
                _log(f"N={count} idle per service: {results['footprint_idle'][str(count)]}")
            if storm:
                names = _names(0, running)
                results["storm"] = {str(running): _storm(api, services, names, baseline,
                                                         baseline_queues)}
        finally:
            services.stop_all()
            _cleanup(api, baseline_queues, prefix)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("subject", choices=SUBJECTS)
    parser.add_argument("url")
    parser.add_argument("--counts", type=parse_counts, default=DEFAULT_COUNTS,
                        help="numbers of services, comma-separated (default 10,50)")
    parser.add_argument("--storm", action=argparse.BooleanOptionalAction, default=True,
                        help="restart all services of the largest count at once (default: on)")
    parser.add_argument("--management-port", type=int, default=None,
                        help="the management API's port (default: the URL's first AMQP port + 20)")
    args = parser.parse_args(argv)
    began = time.monotonic()
    try:
        figures = run(args.subject, args.url, args.counts, args.storm, args.management_port)
    except (FootprintError, broker.BrokerError, ValueError) as error:
        print(f"footprint {args.subject}: {error}", file=sys.stderr)
        return 1
    _log(f"{args.subject} done in {time.monotonic() - began:.0f}s")
    out: IO[str] = sys.stdout
    json.dump(figures, out)
    out.write("\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

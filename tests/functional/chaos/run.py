"""The chaos run: workers, a seeded fault plan, quiet, end checks, the report.

How a run goes:

1. The cluster is made healthy (started first when the command line runs
   without one) and the broker's consumer acknowledgement timeout is set to
   2 s, checked every 0.5 s, for the whole run (a channel reads it when it
   opens, so it must be set before the workers connect).
2. Server processes start (threading and eventlet executors, a classic
   durable and a quorum topic, some over TLS), then caller processes whose
   threads call, call one server, cast and fanout-cast at random, and the
   orchestrator's own client that casts the slow bursts of ``ack_timeout``.
3. After the warm-up, the baseline: the broker's connections, channels and
   consumers per connection name, each worker's threads and RSS.
4. The chaos phase runs the plan (:mod:`.plan`): each episode on a thread of
   its own, node faults one at a time.
5. With every fault undone and the cluster healthy, 2T of quiet; then each
   caller calls every server with a 1 s timeout, the broker counts and the
   workers' figures are compared with the baseline, and the workers are
   stopped (each must exit within its bound).
6. :mod:`.checker` reads every record and prints the table per fault class
   and every violation; the exit status is 1 on any violation.

Worker records and logs (the library's, at INFO) stay in ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..helpers.faults import rabbit_cluster
from . import checker, records
from .injectors import Injector
from .plan import FAULT_CLASSES, Episode, conflicts, make_plan

LOG = logging.getLogger("chaos")
ROOT = Path(__file__).resolve().parents[3]

TOPICS = {"chaos-classic": {"amqp_durable_queues": True},
          "chaos-quorum": {"rabbit_quorum_queue": True}}
#: name, executor, topic, TLS, first node of its URL.
SERVERS = (("s1", "threading", "chaos-classic", False, 0),
           ("s2", "eventlet", "chaos-classic", True, 1),
           ("s3", "threading", "chaos-quorum", True, 2),
           ("s4", "eventlet", "chaos-quorum", False, 0))
#: name, TLS, first node, threads.
CALLERS = (("c1", False, 1, 3), ("c2", True, 2, 3))
MAX_WORKERS = 4
CALL_TIMEOUT = 5.0
PROBE_TIMEOUT = 1.0
STOP_BOUND = 30.0
TOLERANCE = 0.10
CONSUMER_TIMEOUT_MS, CHANNEL_TICK_MS = 2000, 500
#: glibc malloc arenas of every worker process, unless the environment says.
MALLOC_ARENA_MAX = "2"


class Worker:
    """One worker subprocess, its files and its figures."""

    def __init__(self, role: str, name: str, cfg: dict[str, Any], out: Path) -> None:
        self.role, self.name = role, name
        self.cfg = {**cfg, "name": name, "records": str(out / f"{name}.records"),
                    "log": str(out / f"{name}.log")}
        self.records_path = Path(self.cfg["records"])
        self.out_path = out / f"{name}.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        # The RSS check is about what the library keeps, not about how many
        # malloc arenas glibc gives a threaded process (see the operator
        # guide, "Memory of a threaded service"); an environment that sets it
        # keeps its own value.
        env.setdefault("MALLOC_ARENA_MAX", MALLOC_ARENA_MAX)
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.functional.chaos.worker", self.role,
                 json.dumps(self.cfg)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def thread_names(self) -> list[str]:
        """The names in the worker's latest ``threads`` record."""
        found = [r for r in records.read(self.records_path) if r.get("k") == "threads"]
        return list(found[-1]["names"]) if found else []

    def other_tasks(self) -> list[str]:
        """OS threads that are no Python thread, from the latest ``threads`` record."""
        found = [r for r in records.read(self.records_path) if r.get("k") == "threads"]
        return list(found[-1].get("others", [])) if found else []

    def has(self, kind: str) -> bool:
        return any(r.get("k") == kind for r in records.read(self.records_path))

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, bound: float) -> tuple[float | None, int | None]:
        """SIGTERM; (seconds to exit or None if it had to be killed, exit status)."""
        if self.proc is None:
            return None, None
        began = time.monotonic()
        self.signal(signal.SIGTERM)
        try:
            status = self.proc.wait(bound)
            return time.monotonic() - began, status
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None, self.proc.wait(10)

    def sample(self) -> tuple[int, int]:
        """(threads, RSS in kB) from /proc."""
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.split()[0] if value.split() else "0"
        if "VmRSS" not in fields:  # a zombie: the worker has exited
            raise RuntimeError(f"worker {self.name} exited early (see its .out file)")
        return int(fields["Threads"]), int(fields["VmRSS"])


def on_demand(thread_name: str) -> bool:
    """A thread the library starts when there is work and ends after 1 s
    without (a publisher's confirm keeper): present or not by design, so
    not counted."""
    return thread_name.startswith("confirms-")


def figures(workers: list[Worker], samples: int = 5) -> dict[str, tuple[int, int]]:
    """Each worker's median thread count and RSS over a couple of seconds
    (threads come and go with the work, a reconnecting runner is gone for a
    moment; a leak or a thread that died stays). Each worker also writes the
    names of its threads (SIGUSR2)."""
    for worker in workers:
        worker.signal(signal.SIGUSR2)
    seen: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    for _ in range(samples):
        for worker in workers:
            with contextlib.suppress(OSError):
                seen[worker.name].append(worker.sample())
        time.sleep(0.4)
    return {name: (int(statistics.median(t for t, _ in s)), int(statistics.median(r for _, r in s)))
            for name, s in seen.items()}


def broker_counts(cluster: Any) -> dict[str, tuple[int, int, int]]:
    """connection_name -> (connections, channels, consumers) of the chaos workers."""
    conns = cluster.api("GET", "/api/connections?columns=name,client_properties")
    names = {c["name"]: (c.get("client_properties") or {}).get("connection_name") or ""
             for c in conns}
    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    for name in names.values():
        counts[name][0] += 1
    for channel in cluster.api("GET", "/api/channels?columns=connection_details"):
        counts[names.get((channel.get("connection_details") or {}).get("name"), "?")][1] += 1
    for consumer in cluster.api("GET", "/api/consumers"):
        details = consumer.get("channel_details") or {}
        counts[names.get(details.get("connection_name"), "?")][2] += 1
    # The orchestrator's client publishes only for ack_timeout and connects
    # lazily: it is a tool, not a worker under test.
    return {k: (v[0], v[1], v[2]) for k, v in sorted(counts.items())
            if k.startswith("chaos-") and not k.startswith("chaos-orch-")}


def baseline_counts(cluster: Any, workers: list[str],
                    within: float = 30.0) -> dict[str, tuple[int, int, int]]:
    """:func:`broker_counts` once every worker's connections are listed and
    two reads a second apart agree.

    The management API lists a connection, its channels and consumers only
    after the broker's next statistics emission; on a loaded machine a
    worker's connections were once missing from a baseline taken right after
    the warm-up, and the end check then blamed the worker for connections it
    had had all along.
    """
    deadline = time.monotonic() + within
    last: dict[str, tuple[int, int, int]] | None = None
    while True:
        counts = broker_counts(cluster)
        complete = all(any(key.startswith(f"chaos-{name}-") or key.startswith(f"chaos-{name}:")
                           for key in counts) for name in workers)
        if (complete and counts == last) or time.monotonic() >= deadline:
            return counts
        last = counts if complete else None
        time.sleep(1.0)


class Scheduler:
    """Starts each planned episode at its time, in order, when nothing it
    conflicts with runs; an episode that had to wait delays the rest of the
    plan as much, so faults do not pile up after a long one. Every episode runs (the plan has each class at
    least once), so the phase may last longer than planned; ``limit``
    seconds after the start, episodes not started yet are skipped."""

    def __init__(self, plan: list[Episode], injector: Injector) -> None:
        self.plan = plan
        self.injector = injector
        self.skipped: list[Episode] = []

    def run(self, duration: float, limit: float) -> None:
        start = time.monotonic()
        pending = list(self.plan)
        active: dict[int, tuple[str, threading.Thread]] = {}
        delay = 0.0  # how late the plan runs: later episodes keep their spacing
        while pending and time.monotonic() - start < limit:
            for index in [i for i, (_, t) in active.items() if not t.is_alive()]:
                del active[index]
            episode = pending[0]
            if (time.monotonic() - start < episode.at + delay
                    or conflicts(episode.cls, [c for c, _ in active.values()])):
                time.sleep(0.05)
                continue
            delay = max(delay, time.monotonic() - start - episode.at)
            pending.pop(0)
            thread = threading.Thread(target=self.injector.run, args=(episode,),
                                      name=f"fault-{episode.index}", daemon=True)
            thread.start()
            active[episode.index] = (episode.cls, thread)
        self.skipped = pending
        for _, thread in active.values():
            thread.join(300)
        time.sleep(max(0.0, start + duration - time.monotonic()))


@contextlib.contextmanager
def _stopping(workers: list[Worker]) -> Iterator[None]:
    try:
        yield
    finally:
        for worker in workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait(10)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def sample_rss(workers: list[Worker], out: records.RecordFile, stop: threading.Event,
               every: float = 5.0) -> None:
    """Each worker's threads and RSS every few seconds, to see how they grow."""
    while not stop.wait(every):
        for worker in workers:
            with contextlib.suppress(OSError, AssertionError):
                threads, rss = worker.sample()
                out.write("rss", name=worker.name, t=time.time(), threads=threads, rss=rss)


def rss_timeline(all_records: list[dict[str, Any]], start: float, step: float = 60.0) -> str:
    """A row per worker: RSS (MB) and threads about every ``step`` seconds."""
    rows: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in all_records:
        if r.get("k") == "rss":
            rows[r["name"]].append(r)
    lines = []
    for name, samples in sorted(rows.items()):
        shown, next_at = [], 0.0
        for r in samples:
            if r["t"] - start >= next_at:
                shown.append(f"+{r['t'] - start:.0f}s {r['rss'] / 1024:.1f}MB/{r['threads']}t")
                next_at = r["t"] - start + step
        lines.append(f"  {name}: " + ", ".join(shown))
    return "\n".join(lines)


def run_chaos(cluster: Any, *, seed: int, duration: float, out: Path, tls_all: bool = False,
              heartbeat: int = 3, warmup: float = 15.0, echo: Any = print,
              classes: tuple[str, ...] = FAULT_CLASSES) -> checker.Report:
    """One chaos run against a healthy, locked ``cluster``; returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.records"):
        stale.unlink()
    server_names = [s[0] for s in SERVERS]
    caller_names = [c[0] for c in CALLERS]
    plan = make_plan(seed, duration, server_names, caller_names, heartbeat=heartbeat,
                     classes=classes)
    echo(f"chaos seed {seed}: {duration:.0f}s, T={heartbeat}s, "
         f"{'all' if tls_all else 'some'} workers over TLS, MALLOC_ARENA_MAX="
         f"{os.environ.get('MALLOC_ARENA_MAX', MALLOC_ARENA_MAX)}, records and logs in {out}")
    echo("plan:\n" + "\n".join(f"  {e}" for e in plan))
    common = {"heartbeat_timeout_threshold": heartbeat, "consumer_check_interval": 2.0}

    def url(tls: bool, first: int) -> tuple[str, dict[str, Any]]:
        order = [(first + i) % len(cluster.nodes) for i in range(len(cluster.nodes))]
        if tls or tls_all:
            return cluster.tls_url(nodes=order), {**common, **cluster.tls_options()}
        return cluster.url(nodes=order), dict(common)

    servers = []
    for name, executor, topic, tls, first in SERVERS:
        u, options = url(tls, first)
        servers.append(Worker("server", name, {
            "url": u, "options": {**options, **TOPICS[topic]}, "topic": topic,
            "executor": executor, "max_workers": MAX_WORKERS}, out))
    topic_servers = {t: [s[0] for s in SERVERS if s[2] == t] for t in TOPICS}
    callers = []
    for name, tls, first, threads in CALLERS:
        u, options = url(tls, first)
        callers.append(Worker("caller", name, {
            "url": u, "options": options, "topics": TOPICS, "servers": topic_servers,
            "threads": threads, "seed": seed, "call_timeout": CALL_TIMEOUT}, out))
    workers = servers + callers
    orchestrator = records.RecordFile(out / "orchestrator.records")
    stop_sampling = threading.Event()
    run_start = time.time()
    end_violations: list[checker.Violation] = []

    def violation(invariant: str, detail: str, worker: str = "") -> None:
        end_violations.append(checker.Violation(invariant, ("after",), time.time(), detail, worker))

    cluster.ensure_healthy(clean=True)
    with cluster.consumer_timeout(CONSUMER_TIMEOUT_MS, CHANNEL_TICK_MS), _stopping(workers):
        from .worker import Sender  # the library, in this process only from here on

        for worker in servers:
            worker.start()
        _wait(lambda: all(w.has("ready") for w in servers), 90, "the servers to start")
        for worker in callers:
            worker.start()
        _wait(lambda: all(w.has("ready") for w in callers), 60, "the callers to start")
        u, options = url(False, 0)
        sender = Sender({"url": u, "options": options, "topics": TOPICS,
                         "servers": topic_servers, "call_timeout": CALL_TIMEOUT},
                        "orch", orchestrator)
        # Warm-up: the sender opens its connections, and every server runs
        # as many requests at once as it may, so its executor holds all its
        # workers before the baseline (a pool that grows to its bound is no leak).
        warm = [sender.cast("warm", topic, server=name, method="slow", seconds=1.0)
                for topic, names in topic_servers.items() for name in names
                for _ in range(MAX_WORKERS)]
        for receipt, entry in warm:
            sender.settle(receipt, entry)
        injector = Injector(cluster, orchestrator, pids={w.name: w.pid for w in workers},
                            server_topics={s[0]: s[2] for s in SERVERS},
                            max_workers=MAX_WORKERS, sender=sender)
        try:
            echo(f"warm-up {warmup:.0f}s")
            time.sleep(warmup)
            base_counts = baseline_counts(cluster, [w.name for w in workers])
            base_figures = figures(workers)
            base_names = {w.name: w.thread_names() for w in workers}
            base_others = {w.name: w.other_tasks() for w in workers}
            echo(f"baseline: broker {base_counts}; threads/RSS kB {base_figures}")

            chaos_start = time.time()
            scheduler = Scheduler(plan, injector)
            sampler = threading.Thread(target=sample_rss, args=(workers, orchestrator, stop_sampling),
                                       name="rss-sampler", daemon=True)
            sampler.start()
            scheduler.run(duration, duration * 2 + 120)
            echo(f"chaos phase over after {time.time() - chaos_start:.0f}s; "
                 f"{len(plan) - len(scheduler.skipped)} episodes ran, "
                 f"{len(scheduler.skipped)} skipped")
            orchestrator.write("phase", name="chaos_end", t=time.time(),
                               skipped=[str(e) for e in scheduler.skipped])
        finally:
            injector.close()
            cluster.thaw_all()
            stop_sampling.set()
        if cluster.health_problems():  # a restart that failed in the chaos phase
            cluster.start_all()
        quiet_from = time.time()
        time.sleep(2 * heartbeat)
        echo(f"quiet for {time.time() - quiet_from:.1f}s; probing every server")
        for worker in callers:
            worker.signal(signal.SIGUSR1)
        try:
            _wait(lambda: all(w.has("probe_done") for w in callers), 60, "the probes")
        except RuntimeError as error:
            violation("after: every server answers within 1 s", str(error))

        # Broker figures lag up to a statistics interval (1 s): give them time.
        deadline = time.monotonic() + 15
        while (final_counts := broker_counts(cluster)) != base_counts and time.monotonic() < deadline:
            time.sleep(1)
        if final_counts != base_counts:
            for name in sorted(set(base_counts) | set(final_counts)):
                before, after = base_counts.get(name), final_counts.get(name)
                if before != after:
                    violation("after: broker connections/channels/consumers back to baseline",
                              f"{name}: (connections, channels, consumers) {before} -> {after}",
                              name)
        final_figures = figures(workers)
        for name, (threads, rss) in sorted(final_figures.items()):
            base_threads, base_rss = base_figures.get(name, (threads, rss))
            # Threads are counted by the worker itself, at one instant: the
            # Python threads (every thread the library starts is one), less
            # the on-demand ones. /proc's count (shown) flaps by one when a
            # runner's thread is replaced; OS threads that are no Python
            # thread (eventlet's pool of native threads, which grows on
            # demand up to its size) are shown, not counted.
            worker = next(w for w in workers if w.name == name)
            now = collections.Counter(n for n in worker.thread_names() if not on_demand(n))
            was = collections.Counter(n for n in base_names.get(name, []) if not on_demand(n))
            others_now, others_was = worker.other_tasks(), base_others.get(name, [])
            counted, counted_was = sum(now.values()), sum(was.values())
            if abs(counted - counted_was) > TOLERANCE * counted_was:
                violation("after: threads within 10% of warm-up",
                          f"{name}: {counted_was} -> {counted} threads (/proc: {base_threads} -> "
                          f"{threads}); Python threads new {sorted((now - was).elements())}, gone "
                          f"{sorted((was - now).elements())}; other OS threads {others_was} -> "
                          f"{others_now}", name)
            if abs(rss - base_rss) > TOLERANCE * base_rss:
                violation("after: RSS within 10% of warm-up",
                          f"{name}: {base_rss} -> {rss} kB", name)
        echo(f"final: broker {final_counts}; threads/RSS kB {final_figures}")

        for worker in callers:
            took, status = worker.stop(STOP_BOUND)
            if took is None or status != 0:
                violation("after: worker stops on SIGTERM",
                          f"{worker.name}: {'killed after ' + str(STOP_BOUND) + 's' if took is None else ''}"
                          f" exit status {status}", worker.name)
        sender.close()
        handled = -1
        while (now := sum(1 for w in servers for r in records.read(w.records_path)
                          if r.get("k") == "handled")) != handled:
            handled = now
            time.sleep(2)
        for worker in servers:
            took, status = worker.stop(STOP_BOUND)
            if took is None or status != 0:
                violation("after: worker stops on SIGTERM",
                          f"{worker.name}: {'killed' if took is None else f'{took:.1f}s'}, "
                          f"exit status {status}", worker.name)

    all_records = records.read_all(out)
    for record in all_records:
        if record.get("k") == "probe" and not record["ok"]:
            violation("after: every server answers within 1 s",
                      f"{record['caller']} -> {record['server']} ({record['topic']}): "
                      f"{record['err'] or 'wrong answer'} after {record['t1'] - record['t0']:.2f}s",
                      record["caller"])
        if record.get("k") == "fault" and record.get("err"):
            echo(f"note: fault {record['cls']} #{record['index']} failed to apply/undo: {record['err']}")
    report = checker.check(all_records, start=run_start, grace=2 * heartbeat + 4.0,
                           end_violations=end_violations)
    echo("faults as run:")
    for r in sorted((r for r in all_records if r.get("k") == "fault"), key=lambda r: r["t0"]):
        echo(f"  +{r['t0'] - run_start:7.2f}s..+{r['t1'] - run_start:7.2f}s {r['cls']:<16} "
             f"{r['detail']}{' ERROR ' + r['err'] if r.get('err') else ''}")
    echo("threads and RSS of the workers during the chaos phase:\n"
         + rss_timeline(all_records, run_start))
    echo(report.render())
    excerpts = log_excerpts(report, out)
    if excerpts:
        echo("library log of the worker in each violating call's or cast's window "
             "(nothing listed: it logged nothing then):")
        echo(excerpts)
    echo(f"seed {seed}: {'PASS' if report.ok else 'FAIL'} (replay: python -m tests.functional.chaos "
         f"--seed {seed} --duration {duration:.0f}{' --tls' if tls_all else ''}"
         f"{'' if tuple(classes) == FAULT_CLASSES else ' --classes ' + repr(','.join(classes))})")
    return report


def log_excerpts(report: checker.Report, out: Path, per_violation: int = 12,
                 limit: int = 10) -> str:
    """Lines of the worker's library log (INFO and up) from a second before
    a message violation to a second after it (the logs carry wall-clock
    times of day, like the records)."""
    lines: list[str] = []
    shown = [v for v in report.violations if v.t1 is not None and v.worker][:limit]
    for v in shown:
        assert v.t1 is not None
        low, high = (time.strftime("%H:%M:%S", time.localtime(t)) for t in (v.t - 1, v.t1 + 2))
        try:
            text = (out / f"{v.worker}.log").read_text(errors="replace").splitlines()
        except OSError:
            continue
        window = [line for line in text if low <= line[:8] <= high]
        lines.append(f"-- {v.invariant} [{v.worker}] {low}..{high}: {v.detail[:120]}")
        lines.extend(f"   {line[:300]}" for line in window[:per_violation])
        if len(window) > per_violation:
            lines.append(f"   ... {len(window) - per_violation} more in {v.worker}.log")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.functional.chaos",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="plan seed (default: random)")
    parser.add_argument("--duration", type=float, default=600.0, help="chaos phase, seconds")
    parser.add_argument("--tls", action="store_true", help="every worker over TLS")
    parser.add_argument("--heartbeat", type=int, default=3, help="T, seconds")
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=None,
                        help="records and logs (default: <data dir>/chaos-<seed>)")
    parser.add_argument("--classes", default=",".join(FAULT_CLASSES),
                        help="comma-separated fault classes to mix (default: all; empty: "
                             "no faults, to compare)")
    parser.add_argument("--keep-cluster", action="store_true",
                        help="leave a cluster this run started running")
    args = parser.parse_args(argv)
    unknown = set(filter(None, args.classes.split(","))) - set(FAULT_CLASSES)
    if unknown:
        parser.error(f"unknown fault classes {sorted(unknown)}; known: {', '.join(FAULT_CLASSES)}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    print(f"seed {seed}", flush=True)
    settings = rabbit_cluster.Settings.from_env()
    cluster = rabbit_cluster.Cluster(settings)
    out = args.out or settings.data_dir / f"chaos-{seed}"
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, filename=out / "orchestrator.log",
                        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")
    with rabbit_cluster.ClusterLock(settings.data_dir, settings.lock_timeout):
        reuse = cluster.started_by() == "cli" and cluster.is_healthy()
        with contextlib.ExitStack() as stack:
            if not reuse:
                rabbit_cluster.install()
                if not args.keep_cluster:
                    stack.enter_context(rabbit_cluster.stopped_on_exit(cluster.shutdown))
                cluster.bootstrap(owner="cli" if args.keep_cluster else "chaos")
            report = run_chaos(cluster, seed=seed, duration=args.duration, out=out,
                               tls_all=args.tls, heartbeat=args.heartbeat, warmup=args.warmup,
                               echo=lambda line: print(line, flush=True),
                               classes=tuple(c for c in args.classes.split(",") if c))
    return 0 if report.ok else 1

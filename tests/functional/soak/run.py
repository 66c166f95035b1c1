"""The liveness soak: 50 connections at the library's defaults on a loaded machine.

Usage::

    python -m tests.functional.soak [--minutes 30] [--no-load] [--out DIR]

(``tox -e soak`` runs it for 30 minutes.) It proves the defaults raise no
false alarm where one would happen: healthy connections, idle and busy, in a
threading process and in an eventlet process whose hub is blocked now and
then, while other processes keep both cores busy and write to disk.

How it goes:

1. The three-node test cluster is made healthy (started when none runs).
2. The load starts, unless ``--no-load``: one CPU-bound process per core and
   one process writing and syncing a file in a loop.
3. Two workers (:mod:`.worker`) start with the URL only, so every liveness
   setting is the default: ``threading`` with 15 busy and 10 idle
   connections, and ``eventlet`` with the same, whose hub is blocked by
   CPU-bound work for ``3 T`` every two minutes.
4. After ``--minutes``, each worker reports; the brokers' logs are searched
   for "missed heartbeats from client" closes.

It passes when no connection was declared dead or lost, none reconnected,
no broker closed one for missed heartbeats, no worker saw an error, and the
busy connections received what they published. It prints the counts, the
hub blocks, and per idle connection the heartbeat frames sent and the bytes
each way a second. The exit status is 1 on any failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..helpers.faults import rabbit_cluster

ROOT = Path(__file__).resolve().parents[3]
BUSY, IDLE = 15, 10
RATE = 5.0
BLOCK_EVERY = 120.0
#: The library's default T; the hub is blocked for 3 T.
DEFAULT_T = 4
STOP_BOUND = 60.0

CPU_BURNER = "while True:\n    pass\n"
DISK_WRITER = r"""
import os, sys
path = sys.argv[1]
block = os.urandom(1 << 20)
while True:
    with open(path, "wb") as f:
        for _ in range(64):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    os.unlink(path)
"""


@contextlib.contextmanager
def load(enabled: bool, scratch: Path) -> Iterator[list[str]]:
    """Both cores busy and a disk writer, for as long as the block runs."""
    procs: list[subprocess.Popen[bytes]] = []
    what: list[str] = []
    try:
        if enabled:
            for _ in range(os.cpu_count() or 2):
                procs.append(subprocess.Popen([sys.executable, "-c", CPU_BURNER]))
            procs.append(subprocess.Popen([sys.executable, "-c", DISK_WRITER,
                                           str(scratch / "soak-disk-load")]))
            what = [f"{len(procs) - 1} CPU-bound processes", "1 disk writer (64 MiB + fsync a loop)"]
        yield what
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def start_worker(cfg: dict[str, Any], log: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-W", "ignore", "-m", "tests.functional.soak.worker",
                             json.dumps(cfg)], stdout=subprocess.PIPE, stderr=open(log, "w"),
                            text=True, cwd=ROOT, env=env)


def wait_ready(proc: subprocess.Popen[str], name: str, bound: float = 120.0) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {name} exited before it was ready (rc {proc.wait()})")
        if line.startswith("READY"):
            return
    raise RuntimeError(f"worker {name} not ready within {bound:.0f}s")


def collect(proc: subprocess.Popen[str], name: str, bound: float) -> dict[str, Any]:
    try:
        out, _ = proc.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"worker {name} gave no report within {bound:.0f}s") from None
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"worker {name} printed no report (rc {proc.returncode})")
    return dict(json.loads(lines[-1]))


def per_second(values: list[float]) -> str:
    return (f"min {min(values):.2f} median {statistics.median(values):.2f} "
            f"max {max(values):.2f}")


def report(reports: list[dict[str, Any]], closes: int, load_text: list[str], minutes: float) -> bool:
    ok = True
    print(f"\nsoak at the defaults, {minutes:g} min, load: {', '.join(load_text) or 'none'}")
    for r in reports:
        idle = [m for m in r["members"] if not m["busy"]]
        busy = [m for m in r["members"] if m["busy"]]
        secs = r["soaked"]
        members = len(r["members"])
        reconnects = r["connected"] - members
        published = sum(m["published"] for m in busy)
        received = sum(m["received"] for m in busy)
        blocks = r["blocks"]
        print(f"{r['name']:<10} {members} connections ({len(busy)} busy at {RATE:g} msg/s, "
              f"{len(idle)} idle), negotiated heartbeat {r['negotiated']} s, soaked {secs:.0f}s: "
              f"declared dead {len(r['declared_dead'])}, connections lost {len(r['lost'])}, "
              f"reconnects {reconnects}, errors {r['error_count']}, heartbeat-missed reports "
              f"{r['heartbeat_missed']}, published {published}, received {received}")
        if blocks:
            print(f"{'':<10} hub blocked {len(blocks)} times for {min(blocks):.1f}-{max(blocks):.1f}s")
        print(f"{'':<10} per idle connection a second: heartbeat frames sent "
              f"{per_second([m['beats'] / secs for m in idle])}; bytes out "
              f"{per_second([m['out'] / secs for m in idle])}; bytes in "
              f"{per_second([m['in'] / secs for m in idle])}")
        for item in (r["declared_dead"] + r["lost"] + r["errors"])[:10]:
            print(f"{'':<10} ! {item}")
        ok &= (not r["declared_dead"] and not r["lost"] and reconnects == 0
               and r["error_count"] == 0 and received >= published > 0)
        if r["eventlet"]:
            ok &= len(blocks) >= 1
    print(f"broker 'missed heartbeats from client' closes: {closes}")
    ok &= closes == 0
    print("PASS" if ok else "FAIL")
    return ok


def run_soak(cluster: Any, minutes: float, with_load: bool, out: Path) -> bool:
    cluster.ensure_healthy()
    urls = [cluster.url(nodes=[cluster.nodes[(i + k) % 3] for k in range(3)]) for i in range(3)]
    seconds = minutes * 60.0
    common = {"urls": urls, "busy": BUSY, "idle": IDLE, "rate": RATE, "seconds": seconds,
              "block_every": BLOCK_EVERY, "block_for": 3 * DEFAULT_T}
    closes_before = cluster.missed_heartbeat_closes()
    with load(with_load, out) as load_text:
        procs = {}
        try:
            for name, green in (("threading", False), ("eventlet", True)):
                procs[name] = start_worker({**common, "name": name, "eventlet": green},
                                           out / f"{name}.log")
            for name, proc in procs.items():
                wait_ready(proc, name)
            print(f"soaking for {minutes:g} min", flush=True)
            reports = [collect(proc, name, seconds + STOP_BOUND) for name, proc in procs.items()]
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    time.sleep(2.0)  # a broker's log line may trail its close
    closes = cluster.missed_heartbeat_closes() - closes_before
    return report(reports, closes, load_text, minutes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.functional.soak",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--no-load", dest="load", action="store_false",
                        help="do not load the machine")
    parser.add_argument("--out", type=Path, default=None, help="worker logs (default: a temp dir)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="rha-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"worker logs in {out}", flush=True)
    settings = rabbit_cluster.Settings.from_env()
    cluster = rabbit_cluster.Cluster(settings)
    with rabbit_cluster.ClusterLock(settings.data_dir, settings.lock_timeout):
        reuse = cluster.started_by() == "cli" and cluster.is_healthy()
        with contextlib.ExitStack() as stack:
            if not reuse:
                rabbit_cluster.install()
                stack.enter_context(rabbit_cluster.stopped_on_exit(cluster.shutdown))
                cluster.bootstrap(owner="soak")
            ok = run_soak(cluster, args.minutes, args.load, out)
    return 0 if ok else 1

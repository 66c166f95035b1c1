"""CPU time per call or per cast, in the caller's process and in the servers'.

Usage::

    python -m benchmarks.cpu_per_op SUBJECT [--url URL] [--ops N] [--mode call|cast]

Where ``rabbit-ha bench`` says how fast, this says where the CPU goes: it
runs one subject of the bench (``rabbit_ha``, ``rabbit_ha_oslo``,
``oslo_rabbit``, ``bare_amqp``) with its RPC servers in a process of their
own, makes ``N`` calls or casts after a warm-up, and prints the rate and the
CPU time (user + system) each operation cost the calling process and the
server process, read from ``getrusage`` and ``/proc/PID/stat``. Comparing
subjects in the same minute shows which side limits a figure: a rate the
server's CPU per operation explains is the server's.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.bench.subjects import SUBJECTS, make
from benchmarks.bench.worker import RemoteServers, start_servers

WARM_UP = 300


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(subject_name: str, url: str, ops: int, mode: str) -> str:
    subject = make(subject_name, url, f"rha-cpu-{uuid.uuid4().hex[:8]}")
    servers = start_servers(subject, url, ["s0"])
    try:
        op: Callable[[], Any]
        if mode == "call":
            op = subject.caller()
        else:
            cast, counter = subject.caster(), iter(range(1 << 62))
            op = lambda: cast(next(counter))  # noqa: E731
        for _ in range(WARM_UP):
            op()
        subject.settle()
        if mode == "cast" and not servers.wait({"s0": WARM_UP}, 60):
            raise RuntimeError("warm-up casts did not arrive")
        server_pid = servers.pid if isinstance(servers, RemoteServers) else os.getpid()
        client_before, server_before = own_cpu(), process_cpu(server_pid)
        started = time.perf_counter()
        for _ in range(ops):
            op()
        subject.settle()
        if mode == "cast" and not servers.wait({"s0": WARM_UP + ops}, 60):
            raise RuntimeError("casts did not all arrive")
        elapsed = time.perf_counter() - started
        client = (own_cpu() - client_before) / ops * 1e6
        server = (process_cpu(server_pid) - server_before) / ops * 1e6
    finally:
        servers.close()
        subject.close()
    return (f"{subject_name} {mode}: {ops / elapsed:.0f}/s  client cpu/op {client:.0f}us  "
            f"server cpu/op {server:.0f}us")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_per_op",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("subjects", nargs="+", choices=[s for s in SUBJECTS if s != "oslo_fake"])
    parser.add_argument("--url", default="rabbit://guest:guest@127.0.0.1:27672/",
                        help="broker URL (default: the test cluster's first node)")
    parser.add_argument("--ops", type=int, default=3000, help="operations measured (3000)")
    parser.add_argument("--mode", choices=["call", "cast"], default="call")
    args = parser.parse_args(argv)
    for name in args.subjects:
        print(measure(name, args.url, args.ops, args.mode), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Canned output of the scale bench's part programs, and a runner that answers with it."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.bench import rounds


def footprint(subject: str, round_: int) -> dict[str, Any]:
    """What ``benchmarks.scale.footprint`` prints; oslo_rabbit costs about three times as much."""
    cost = {"rabbit_ha": 1.0, "rabbit_ha_oslo": 1.2, "oslo_rabbit": 3.0}[subject]
    idle = {str(n): {"connections": 1.0 * cost, "channels": 2.0 * cost, "queues": 3.0,
                     "consumers": 3.0, "erlang_processes": 20.0 * cost,
                     "memory_bytes": 100_000.0 * cost + 1000 * round_} for n in (10, 50)}
    storm = {"all_answering_s": 4.0 * cost, "slowest_answer_after_start_s": 3.0 * cost + 0.1 * round_,
             "slowest_answer_after_imports_s": 2.0 * cost + 0.1 * round_,
             "peak_memory_bytes": 2e8 * cost, "connections_created": 100 * cost,
             "connections_closed": 100 * cost, "queues_left": 0 if cost < 2 else 50,
             "queue_expiry_s": 0.0 if cost < 2 else 1800.0, "failed_services": 0}
    return {"footprint_idle": idle, "footprint_load": idle, "storm": {"50": storm}}


def curves(subject: str, round_: int) -> dict[str, Any]:
    """What ``benchmarks.scale.curves`` prints: rabbit_ha at 0.9x of bare_amqp, round 3 slower."""
    speed = {"rabbit_ha": 0.9, "rabbit_ha_oslo": 0.6, "oslo_rabbit": 0.3, "bare_amqp": 1.0}[subject]
    speed *= 0.5 if round_ == 3 and subject == "rabbit_ha" else 1.0
    return {
        "concurrency": {str(n): {"calls_per_s": 1000.0 * speed * n ** 0.5} for n in (1, 4, 16, 64)},
        "size": {str(n): {"calls_per_s": 1e6 / n * speed, "bytes_per_s": 2e6 * speed}
                 for n in (100, 10000, 100000, 1000000)},
        "fanout": {str(n): {"casts_per_s": 2000.0 * speed / n} for n in (1, 5, 20)},
    }


def idle(subject: str, round_: int) -> dict[str, Any]:
    """What ``benchmarks.scale.idle`` prints: CPU linear in the connections."""
    per = {"rabbit_ha": 0.0005, "oslo_rabbit": 0.004, "bare_amqp": 0.0}[subject]
    return {"idle": {str(n): {"cpu_percent": per * n, "rss_kb": 30000 + 100.0 * n,
                              "rss_kb_per_connection": 100.0, "declared_dead": 0}
                     for n in (10, 100, 1000, 2000)}}


CANNED = {"footprint": footprint, "curves": curves, "idle": idle}


class FakeRunner:
    """Answers part command lines with canned output; records them; fails the runs it is told to."""

    def __init__(self, fail: Mapping[tuple[str, str, int], rounds.Completed] | None = None) -> None:
        self.calls: list[tuple[list[str], float]] = []
        self.fail = dict(fail or {})
        self._runs: dict[tuple[str, str], int] = {}

    def __call__(self, argv: Sequence[str], timeout: float) -> rounds.Completed:
        argv = list(argv)
        self.calls.append((argv, timeout))
        assert argv[0] == sys.executable and argv[1] == "-m"
        module, subject = argv[2], argv[3]
        assert module.startswith("benchmarks.scale.")
        part = module.rsplit(".", 1)[1]
        count = self._runs[part, subject] = self._runs.get((part, subject), 0) + 1
        failure = self.fail.get((part, subject, count))
        if failure is not None:
            return failure
        figures = CANNED[part](subject, count)
        return rounds.Completed(0, "a log line\n" + json.dumps(figures) + "\n", "a warning\n", 3.0)

    def runs(self) -> list[tuple[str, str]]:
        return [(argv[2].rsplit(".", 1)[1], argv[3]) for argv, _ in self.calls]


def crashed(*stderr_lines: str) -> rounds.Completed:
    return rounds.Completed(1, "", "\n".join(stderr_lines) + "\n", 2.5)

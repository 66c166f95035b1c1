"""A two-minute chaos run with a fixed seed: every fault class, every invariant.

The run itself is :mod:`tests.functional.chaos` (``tox -e chaos`` runs the
long version). This test fails on any violated invariant and prints the
table per fault class and each violation; the records and the workers'
library logs stay in ``<RHA_TEST_DATA_DIR>/chaos-ci-<seed>``.

CI runs it in the RabbitMQ 3.10 pass (``tox -e functional``); the marker
``chaos`` lets ``tox -e chaos-short`` run it alone and keeps it out of the
RabbitMQ 4.0 pass, which would not fit CI's time otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .chaos.run import run_chaos

SEED = int(os.environ.get("RHA_CHAOS_SEED", "20261203"))
DURATION = float(os.environ.get("RHA_CHAOS_DURATION", "120"))


@pytest.mark.chaos
def test_chaos_run_keeps_every_invariant(cluster: Any) -> None:
    out = Path(cluster.data_dir) / f"chaos-ci-{SEED}"
    lines: list[str] = []

    def echo(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    report = run_chaos(cluster, seed=SEED, duration=DURATION, out=out, echo=echo)
    classes = {name for name, figures in report.classes.items() if figures.episodes}
    assert classes >= {"drop_server", "drop_caller", "kill_node", "freeze_node", "delete_queue",
                       "ack_timeout", "missing_exchange", "memory_alarm", "full_restart"}, \
        f"not every fault class ran: {sorted(classes)}"
    assert report.ok, (f"{len(report.violations)} invariant violation(s) in the chaos run "
                       f"(seed {SEED}; logs in {out}):\n{report.render()}")

"""A silent drop at the default settings: no liveness option anywhere.

Through oslo.messaging's public API, as :mod:`.test_oslo_liveness` does, but
with neither the URL nor ``[oslo_messaging_rabbit]`` naming a heartbeat, a
keepalive or a socket timeout: what nearly every deployment runs. A caller
calls an RPC server back to back (call timeout :data:`CALL_TIMEOUT`), and
either the server's connections (``server``) or the caller's (``caller``) are
silently dropped with iptables. The outage is the longest gap between two
answered calls around the drop; failed calls are counted.

The CI test runs ``rabbit-ha://`` once per side and asserts the bound of
docs/liveness.rst, "The defaults". ``-m slow`` runs :data:`REPEAT` rounds of
both sides for ``rabbit-ha://`` and for oslo.messaging's ``rabbit://`` at its
own defaults (T = 60 s, about 90 s of outage, hence the long observation) and
prints min/median/max of each, the figures docs/liveness.rst quotes.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytest

from .test_oslo_liveness import DropFigures, through_silent_drop

#: The calls' own deadline (a client's choice, not a liveness option).
CALL_TIMEOUT = 10.0
#: Observation after the drop: rabbit-ha:// is back within seconds.
OBSERVE_OURS = 20.0
#: oslo.messaging's rabbit driver at its defaults needs about 90 s.
OBSERVE_OSLO = 130.0
#: The outage bound at the defaults (docs/liveness.rst), plus a margin for CI.
BOUND = 8.0
CI_MARGIN = 3.0
REPEAT = 5
SIDES = ("server", "caller")


def run(cluster: Any, silent_drop: Any, scheme: str, side: str) -> DropFigures:
    cluster.ensure_healthy()
    observe = OBSERVE_OURS if scheme == "rabbit-ha" else OBSERVE_OSLO
    return through_silent_drop(cluster, silent_drop, scheme, threshold=None, side=side,
                               observe=observe, call_timeout=CALL_TIMEOUT)


@pytest.mark.parametrize("side", SIDES)
def test_a_silent_drop_at_the_defaults_costs_seconds(cluster: Any, silent_drop: Any,
                                                      side: str) -> None:
    result = run(cluster, silent_drop, "rabbit-ha", side)
    print(f"\nsilent drop of the {side}'s connections, defaults, rabbit-ha://: {result.cells()}")
    assert result.dropped >= 1, result.cells()
    assert result.outage <= BOUND + CI_MARGIN, result.cells()
    assert result.calls - result.failed >= 20, result.cells()
    assert result.unclosed_sockets == 0, result.cells()


def spread(values: list[float]) -> str:
    finite = [v for v in values if v != math.inf]
    if len(finite) < len(values):
        return f"{len(values) - len(finite)} of {len(values)} never answered again"
    return (f"min {min(values):5.1f}s  median {statistics.median(values):5.1f}s  "
            f"max {max(values):5.1f}s")


@pytest.mark.slow
def test_silent_drops_at_the_defaults_rabbit_ha_next_to_rabbit(cluster: Any,
                                                               silent_drop: Any) -> None:
    rows: dict[tuple[str, str], list[DropFigures]] = {}
    for n in range(REPEAT):
        for side in SIDES:
            for scheme in ("rabbit-ha", "rabbit"):
                result = run(cluster, silent_drop, scheme, side)
                rows.setdefault((side, scheme), []).append(result)
                print(f"round {n + 1} {side:<6} {scheme + '://':<12} {result.cells()}", flush=True)
    print(f"\nsilent drop at the defaults, {REPEAT} runs each, call timeout {CALL_TIMEOUT:.0f}s")
    for (side, scheme), results in rows.items():
        failed = [r.failed for r in results]
        print(f"{side:<6} {scheme + '://':<12} outage {spread([r.outage for r in results])}  "
              f"failed calls {sum(failed)} (per run {failed})")
    for side in SIDES:
        ours = rows[(side, "rabbit-ha")]
        assert max(r.outage for r in ours) <= BOUND + CI_MARGIN, [r.cells() for r in ours]


@pytest.mark.slow
@pytest.mark.parametrize("threshold", [3, 4, 6, 10, 30])
@pytest.mark.parametrize("side", SIDES)
def test_silent_drop_outage_against_t(cluster: Any, silent_drop: Any, side: str,
                                      threshold: int) -> None:
    """One run per T and side: how the outage grows with T (docs/liveness.rst)."""
    cluster.ensure_healthy()
    result = through_silent_drop(cluster, silent_drop, "rabbit-ha", threshold=threshold,
                                 side=side, observe=2.0 * threshold + 10.0,
                                 call_timeout=max(CALL_TIMEOUT, 3.0 * threshold))
    print(f"\nT={threshold:<3} {side:<6} rabbit-ha:// {result.cells()}")
    assert result.outage <= 1.5 * threshold + 2 + CI_MARGIN, result.cells()

"""The seeded schedule of a chaos run: which fault, when, on what. Pure.

The same seed, duration and worker names always give the same plan, so a
failing run is replayed with its seed. Every fault class appears at least
once (in a seeded order) before the rest of the run is filled with classes
drawn at random; the full cluster restart, which costs about half a minute,
comes once per ten minutes of run at most. When an episode actually starts
depends on the cluster (node faults wait for each other; see
:func:`conflicts`), so a replay repeats the plan, not every millisecond.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

#: Every fault class the harness has; a new class joins the mix here.
FAULT_CLASSES = (
    "drop_server",       # silent drop (iptables) of a server process's connections
    "drop_caller",       # silent drop of a caller process's connections
    "kill_node",         # SIGKILL of a node, restarted after a few seconds
    "freeze_node",       # SIGSTOP of a node for a few seconds
    "delete_queue",      # a server's queue deleted: the broker cancels its consumer
    "ack_timeout",       # a server holds deliveries past consumer_timeout: 406 closes the channel
    "missing_exchange",  # the topic exchange deleted: publishing closes the channel with 404
    "memory_alarm",      # publishers blocked (connection.blocked)
    "full_restart",      # every node killed, then started again
)
#: Faults that take a node away; at most one at a time keeps a quorum.
NODE_FAULTS = frozenset({"kill_node", "freeze_node", "full_restart"})
#: Faults driven through the management API or rabbitmqctl, which hang while
#: a node is frozen (they wait for every member).
API_FAULTS = frozenset({"delete_queue", "missing_exchange", "memory_alarm"})
FULL_RESTART_EVERY = 600.0


@dataclasses.dataclass(frozen=True)
class Episode:
    """One planned fault: ``at`` seconds after the chaos phase starts."""

    index: int
    at: float
    cls: str
    params: tuple[tuple[str, Any], ...]

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.params)

    def __str__(self) -> str:
        args = " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in self.params)
        return f"#{self.index:02d} +{self.at:6.1f}s {self.cls:<16} {args}"


def conflicts(cls: str, active: Sequence[str]) -> bool:
    """Whether an episode of ``cls`` must wait while ``active`` ones run."""
    if not active:
        return False
    if cls in active:  # two of a kind would undo each other's fault
        return True
    if cls == "full_restart" or "full_restart" in active:
        return True
    if cls in NODE_FAULTS and any(a in NODE_FAULTS for a in active):
        return True
    if cls == "freeze_node" and any(a in API_FAULTS for a in active):
        return True
    return cls in API_FAULTS and "freeze_node" in active


def _params(rng: random.Random, cls: str, servers: Sequence[str], callers: Sequence[str],
            nodes: int, heartbeat: float) -> dict[str, Any]:
    hold = 2 * heartbeat + 3  # the library detects by T + 1, the broker by about 2T
    if cls == "drop_server":
        return {"target": rng.choice(servers), "all": rng.random() < 0.5, "pick": rng.randrange(8),
                "hold": hold}
    if cls == "drop_caller":
        return {"target": rng.choice(callers), "all": rng.random() < 0.5, "pick": rng.randrange(8),
                "hold": hold}
    if cls == "kill_node":
        return {"node": rng.randrange(nodes), "down": rng.uniform(2, 6)}
    if cls == "freeze_node":
        return {"node": rng.randrange(nodes), "seconds": rng.uniform(2, 5)}
    if cls == "delete_queue":
        return {"target": rng.choice(servers), "queue": rng.choice(["topic", "server", "fanout"])}
    if cls == "ack_timeout":
        return {"target": rng.choice(servers), "seconds": 3.0}
    if cls == "missing_exchange":
        return {"seconds": rng.uniform(1, 3)}
    if cls == "memory_alarm":
        return {"node": rng.randrange(nodes), "seconds": rng.uniform(3, 8)}
    if cls == "full_restart":
        return {"down": rng.uniform(1, 3)}
    raise ValueError(f"unknown fault class {cls!r}")


def make_plan(seed: int, duration: float, servers: Sequence[str], callers: Sequence[str],
              nodes: int = 3, heartbeat: float = 3.0,
              classes: Sequence[str] = FAULT_CLASSES) -> list[Episode]:
    """Episodes for ``duration`` seconds: each class once first, then at random.

    No classes, no episodes: a run without faults, to tell what the faults
    cause from what plain traffic does."""
    if not classes:
        return []
    rng = random.Random(seed)
    first = list(classes)
    rng.shuffle(first)
    restarts_allowed = max(1, int(duration // FULL_RESTART_EVERY))
    episodes: list[Episode] = []
    at = rng.uniform(1.0, 3.0)
    while at < duration or first:
        if first:
            cls = first.pop(0)
        else:
            choices = [c for c in classes if c != "full_restart"
                       or sum(e.cls == "full_restart" for e in episodes) < restarts_allowed]
            cls = rng.choice(choices)
        params = _params(rng, cls, servers, callers, nodes, heartbeat)
        episodes.append(Episode(len(episodes), round(at, 2), cls, tuple(params.items())))
        at += rng.uniform(2.0, 8.0)
    return episodes

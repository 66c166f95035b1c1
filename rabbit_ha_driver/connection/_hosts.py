"""Failover order over the configured hosts.

``round-robin`` walks the hosts in the order given, starting after the host
that failed; ``shuffle`` shuffles them once per process (so a fleet spreads over
the cluster) and then walks that order. A *pass* is one visit of every host;
the backoff applies only between passes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from rabbit_ha_driver.settings import Host


class HostRing:
    """Yields hosts in failover order and counts complete passes."""

    def __init__(self, hosts: Sequence[Host], strategy: str = "round-robin",
                 rng: random.Random | None = None) -> None:
        if not hosts:
            raise ValueError("HostRing needs at least one host")
        order = list(hosts)
        if strategy == "shuffle":
            (rng or random.Random()).shuffle(order)
        elif strategy != "round-robin":
            raise ValueError(f"unknown failover strategy {strategy!r}")
        self._hosts = order
        self._index = 0
        self._tried_in_pass = 0

    @property
    def hosts(self) -> list[Host]:
        return list(self._hosts)

    @property
    def current(self) -> Host:
        return self._hosts[self._index]

    def advance(self) -> Host:
        """Move to the next host after a failure; returns it."""
        self._index = (self._index + 1) % len(self._hosts)
        self._tried_in_pass += 1
        return self.current

    def pass_complete(self) -> bool:
        """True when every host has failed since the last :meth:`reset_pass`."""
        return self._tried_in_pass >= len(self._hosts)

    def reset_pass(self) -> None:
        """Start counting a new pass (after a success or after a backoff)."""
        self._tried_in_pass = 0

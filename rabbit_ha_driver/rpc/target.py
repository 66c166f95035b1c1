"""Where a message goes: a topic, one server of it, or all of them (fanout)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a message goes: a topic, optionally one server of it, or all (fanout)."""

    topic: str
    server: str | None = None
    fanout: bool = False
    exchange: str | None = None
    namespace: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        if not self.topic or not isinstance(self.topic, str):
            raise ValueError(f"a target needs a topic, not {self.topic!r}")

    def __str__(self) -> str:
        if self.fanout:
            return f"fanout {self.topic}"
        return f"{self.topic}.{self.server}" if self.server else self.topic


def as_target(target: Target | str | Any, server: str | None = None) -> Target:
    """A Target from a topic, a Target, or anything shaped like oslo's Target."""
    if isinstance(target, Target):
        return dataclasses.replace(target, server=server) if server else target
    if isinstance(target, str):
        return Target(target, server=server)
    return Target(
        topic=target.topic,
        server=server or getattr(target, "server", None),
        fanout=bool(getattr(target, "fanout", False)),
        exchange=getattr(target, "exchange", None),
        namespace=getattr(target, "namespace", None),
        version=getattr(target, "version", None),
    )

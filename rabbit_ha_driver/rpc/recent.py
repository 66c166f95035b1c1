"""A bounded map of recent keys: the one helper behind every "seen lately" set.

How this works. :class:`Recent` keeps at most ``size`` keys, oldest first, each
with the time it was (last) added and an optional value; adding a key beyond
the size forgets the oldest, and a key older than ``ttl`` seconds counts as
absent (it is dropped when looked at, or when later additions push it out).
So memory stays bounded however many keys pass, and "recent" means both "one
of the last ``size``" and "younger than ``ttl``". Used for the ``_unique_id``
values of replies and requests seen, calls that finished, reply queues found
gone, and the replies a server keeps to answer repeated requests.

Times come from the caller (its clock), so tests drive expiry with a fake
clock. Thread-safe, and fork-safe: a child gets a fresh lock (see
:mod:`rabbit_ha_driver.forks`).
"""

from __future__ import annotations

import collections
import math
import threading
from typing import Generic, TypeVar

from rabbit_ha_driver import forks

V = TypeVar("V")

_MISSING = object()


class Recent(Generic[V]):
    """At most ``size`` recent keys, each younger than ``ttl`` seconds, with values."""

    def __init__(self, size: int, ttl: float = math.inf) -> None:
        if size < 0:
            raise ValueError(f"size must not be negative, not {size}")
        self.size = size
        self.ttl = ttl
        self._items: collections.OrderedDict[str, tuple[float, V | None]] = (
            collections.OrderedDict())
        self._lock = threading.Lock()
        forks.at_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """In a forked child: a thread of the parent may have held the lock."""
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Recent {len(self._items)}/{self.size} ttl={self.ttl:g}>"

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def add(self, key: str, value: V | None = None, *, now: float = 0.0) -> None:
        """Remember ``key`` (with ``value``) as added at ``now``; forget the oldest beyond size."""
        with self._lock:
            items = self._items
            items[key] = (now, value)
            items.move_to_end(key)
            while len(items) > self.size:
                items.popitem(last=False)

    def get(self, key: str, *, now: float = 0.0, default: V | None = None) -> V | None:
        """The value of ``key`` if it is recent, else ``default``."""
        found = self._lookup(key, now)
        return default if found is _MISSING else found  # type: ignore[return-value]

    def contains(self, key: str, *, now: float = 0.0) -> bool:
        return self._lookup(key, now) is not _MISSING

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.contains(key)

    def discard(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def _lookup(self, key: str, now: float) -> object:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                return _MISSING
            added, value = entry
            if now - added > self.ttl:
                del self._items[key]
                return _MISSING
            return value

"""The driver's start-up lines about its options, at INFO once per process.

A service often makes several transports (an RPC one, a notification one, one
per worker library) from the same configuration, and each driver would repeat
the same lines: where each option came from, which are not needed, the
transport and its heartbeat. The first driver to log a given set of lines
logs them at INFO; a later driver whose lines are the same, word for word,
logs them at DEBUG. Different settings give different lines, so they are
still told at INFO.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable

from rabbit_ha_driver import forks

#: Distinct sets of lines remembered; beyond it the memory starts over (a
#: process making transports from ever new settings logs them at INFO again).
_REMEMBERED = 256


class _Told:
    """The sets of start-up lines this process has logged at INFO."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: set[Hashable] = set()
        forks.at_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # another thread of the parent may have held it

    def level(self, key: Hashable) -> int:
        """INFO the first time ``key`` is seen in this process, DEBUG after."""
        with self._lock:
            if key in self._keys:
                return logging.DEBUG
            if len(self._keys) >= _REMEMBERED:
                self._keys.clear()
            self._keys.add(key)
            return logging.INFO


_TOLD = _Told()


def level_for(lines: tuple[str, ...]) -> int:
    """The level to log these start-up ``lines`` at: INFO once per process, then DEBUG."""
    return _TOLD.level(lines)

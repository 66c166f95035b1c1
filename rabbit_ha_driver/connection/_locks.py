"""The connection's lock, which knows when its outermost holder lets go.

:meth:`Connection.close <rabbit_ha_driver.connection._ha_connection.Connection.close>`
waits only briefly for the lock. When another thread holds it longer (a
long read, a reconnect), close cuts the socket and leaves the rest to that
thread. That thread may never come back to the connection (a consumer loop
told to stop exits after its read fails), so the end of the connection is
tied to the lock itself: the outermost release runs a hook that tears down
what close could not. The hook runs with the lock still held, so nothing
else touches the connection meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class HandoverLock:
    """A re-entrant lock that calls ``on_last_release`` before its outermost release."""

    def __init__(self, on_last_release: Callable[[], None]) -> None:
        self._lock = threading.RLock()
        self._depth = 0  # only changed by the thread holding the lock
        self._on_last_release = on_last_release

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._lock.acquire(blocking, timeout):
            return False
        self._depth += 1
        return True

    def release(self) -> None:
        if self._depth == 1:
            try:
                self._on_last_release()
            finally:
                self._depth = 0
                self._lock.release()
            return
        self._depth -= 1
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

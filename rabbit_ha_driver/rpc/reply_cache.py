"""A server's recent replies, by the request's message id: answer a repeated call once.

How this works. A caller whose request's fate was uncertain (its connection
died between the write and the broker's confirm) sends the same request
again, with the same ``_msg_id`` (see :mod:`rabbit_ha_driver.rpc.calls`), and
a broker may deliver a request twice (an acknowledgement lost with a
connection). The listener asks :meth:`ReplyCache.seen` before it runs a call:

* never seen: :meth:`ReplyCache.running` marks it, and it runs;
* seen and still running: the copy is dropped; the first copy's reply answers
  the caller;
* seen and answered: the copy is answered with the reply that was sent,
  without running the method again.

The cache is two :class:`~rabbit_ha_driver.rpc.recent.Recent` maps, each of
at most ``rpc_reply_cache_size`` entries kept ``rpc_reply_cache_ttl`` seconds:
the replies, and apart from them the marks of requests still running, so
that calls finishing meanwhile never push out the mark of a slow one (its
copy would then run a second time).
It lives in one listener of one process: a copy that reaches another server of
a shared topic, or a server that restarted, runs the method again.
"""

from __future__ import annotations

import enum

from rabbit_ha_driver.clock import Clock
from rabbit_ha_driver.rpc.recent import Recent


class Running(enum.Enum):
    """The mark of a request whose method runs and has not replied yet."""

    RUNNING = "running"


RUNNING = Running.RUNNING


class ReplyCache:
    """Replies (encoded bodies) by request message id; ``size`` 0 keeps nothing."""

    def __init__(self, size: int, ttl: float, clock: Clock) -> None:
        self._recent: Recent[bytes] = Recent(size, ttl)
        self._running: Recent[None] = Recent(size, ttl)
        self._clock = clock

    def __repr__(self) -> str:
        return f"<ReplyCache {self._recent!r} running {self._running!r}>"

    @property
    def enabled(self) -> bool:
        return self._recent.size > 0

    def __len__(self) -> int:
        return len(self._recent) + len(self._running)

    def seen(self, msg_id: str) -> bytes | Running | None:
        """The reply sent for ``msg_id``, :data:`RUNNING`, or None if not seen lately."""
        now = self._clock.now()
        reply = self._recent.get(msg_id, now=now)
        if reply is not None:
            return reply
        return RUNNING if self._running.contains(msg_id, now=now) else None

    def running(self, msg_id: str) -> None:
        """``msg_id`` is about to run."""
        self._running.add(msg_id, now=self._clock.now())

    def replied(self, msg_id: str, body: bytes) -> None:
        """``body`` is the reply sent for ``msg_id``."""
        self._recent.add(msg_id, body, now=self._clock.now())
        self._running.discard(msg_id)

"""What a forked child resets, in one registry.

How this works. A child process starts with a copy of its parent's memory and
only the thread that called ``fork()``. Whatever other threads held is held
for ever in the child: a lock taken by the heartbeat thread, a flag saying
"a thread is reading the reply queue", a keeper thread that settles confirms
and is gone. And every socket is shared with the parent: a byte the child
writes on it (a close frame, a TLS ``close_notify``) or a ``shutdown()`` it
calls breaks the parent's connection.

An object that holds such state registers a method with :func:`at_fork_in_child`;
one ``os.register_at_fork`` hook calls the method of every live registered
object in the child, right after the fork, before the child runs anything
else. Objects are held weakly: registering does not keep one alive. A reset
method runs while the child has a single thread: it replaces locks and
conditions, clears flags and thread handles, and closes inherited file
descriptors without sending anything on them. It must not take a lock that
another thread of the parent may have held, emit events, or do I/O on a
shared socket; the work that needs any of that (reconnecting, logging the
reason) happens on the child's first use of the object.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

_resets: list[weakref.WeakMethod[Callable[[], Any]]] = []
_lock = threading.Lock()
#: Registrations between two sweeps of the references to objects gone.
_SWEEP_EVERY = 256
_since_sweep = 0


def at_fork_in_child(method: Callable[[], Any]) -> None:
    """Call the bound ``method`` in every child forked while its object lives."""
    global _resets, _since_sweep
    ref = weakref.WeakMethod(method)
    with _lock:
        _since_sweep += 1
        if _since_sweep >= _SWEEP_EVERY:
            _since_sweep = 0
            _resets = [r for r in _resets if r() is not None]
        _resets.append(ref)


def registered() -> int:
    """How many live objects reset themselves at a fork (for tests)."""
    return sum(1 for ref in _resets if ref() is not None)


def _reset_in_child() -> None:
    global _resets, _lock
    _lock = threading.Lock()  # another thread of the parent may have held it
    live = [ref for ref in _resets if ref() is not None]
    _resets = live
    for ref in live:
        method = ref()
        if method is not None:
            # One object's failure must not leave the others in the parent's
            # state; there is no safe way to log here (see the module docs).
            with contextlib.suppress(Exception):
                method()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)

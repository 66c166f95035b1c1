"""Eventlet awareness: the modules that really block an OS thread.

How this works. Under eventlet monkey-patching, ``threading``, ``select``,
``os`` and ``time`` are green: a lock taken there yields to the hub, and a
wait there is a wait of the hub. The native heartbeat scheduler must keep
running while a CPU-bound request blocks the hub, so it is built from the
*original* modules (:func:`native_modules`, through eventlet's
``patcher.original``), and green threads that share a native lock with it
take that lock without blocking the hub (:func:`acquire_cooperatively`).

Monkey-patching is detected only if eventlet is already imported, through
``eventlet.patcher.is_monkey_patched`` (a mere import of eventlet, as
oslo.messaging does, is not patching); this module never imports eventlet
unless the process is patched or a green thread asks for a lock.
"""

from __future__ import annotations

import dataclasses
import os
import select
import sys
import threading
import time
from types import ModuleType
from typing import Any

#: Longest pause of a green thread waiting for a native lock.
COOPERATIVE_MAX_PAUSE = 0.005


def eventlet_patched() -> bool:
    """True if eventlet has monkey-patched sockets or threads in this process.

    Never imports eventlet: if it is not imported yet, nothing is patched.
    """
    if "eventlet" not in sys.modules:
        return False
    from eventlet import patcher

    return bool(patcher.is_monkey_patched("socket") or patcher.is_monkey_patched("thread"))


@dataclasses.dataclass(frozen=True)
class Natives:
    """Modules that really block an OS thread, whatever eventlet patched."""

    patched: bool
    threading: ModuleType
    select: ModuleType
    os: ModuleType
    time: ModuleType


def native_modules() -> Natives:
    """The standard modules, or eventlet's originals in a monkey-patched process."""
    if not eventlet_patched():
        return Natives(False, threading, select, os, time)
    from eventlet import patcher

    return Natives(
        True,
        patcher.original("threading"),
        patcher.original("select"),
        patcher.original("os"),
        patcher.original("time"),
    )


def acquire_cooperatively(lock: Any) -> None:
    """Take a native lock from a green thread without blocking the hub.

    Tries without blocking and yields to the hub between attempts, pausing a
    little longer each time (up to a few milliseconds).
    """
    if lock.acquire(False):
        return
    from eventlet import sleep as green_sleep

    pause = 0.0
    while not lock.acquire(False):
        green_sleep(pause)
        pause = min(COOPERATIVE_MAX_PAUSE, pause * 2 or 0.0001)


__all__ = ["COOPERATIVE_MAX_PAUSE", "Natives", "acquire_cooperatively", "eventlet_patched", "native_modules"]

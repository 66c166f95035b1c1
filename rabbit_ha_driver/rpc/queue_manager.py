"""Stable reply and fanout queue names (``use_queue_manager``), as oslo.messaging builds them.

How it works. A service with random queue names leaves its reply and fanout
queues behind when it dies (until ``x-expires`` removes them) and declares
new ones when it restarts; at scale that churn costs the broker. With the
queue manager, names are ``<hostname>:<processname>:<N>``, where N counts the
names taken by one *run* of the service (its process group: a master and its
forked workers share one count) and starts again at 1 when the service
restarts, so a restarted service declares the very queues it had.

The count lives where oslo.messaging keeps it, in
``/dev/shm/<hostname>_<processname>_qmanager``, as ``<pgid>:<N>:<start
time>``: the process group id and the start time of its leader (clock ticks
since boot, from ``/proc``) tell a new run from the old one, even when a pid
is reused. An ``flock`` on the file serialises the processes of the group
that use this library. oslo.messaging serialises with its own lock
(oslo.concurrency's external lock), not this one: give an oslo.messaging
process and a ``rabbit-ha://`` one different ``processname`` values, as
every process of a host needs anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

SHM_DIR = Path("/dev/shm")


def _run_identity() -> tuple[int, int]:
    """(process group id, start time of its leader): one run of the service."""
    group = os.getpgrp()
    leader = group or os.getpid()
    start = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{leader}/stat").read_text()
        # Fields after "(comm)": state is field 3, starttime field 22.
        start = int(stat.rpartition(")")[2].split()[19])
    return group, start


class QueueManager:
    """Hands out ``<hostname>:<processname>:<N>``; see the module docstring."""

    def __init__(self, hostname: str, processname: str, directory: Path = SHM_DIR) -> None:
        self.hostname = hostname
        self.processname = processname
        self.path = directory / f"{hostname}_{processname}_qmanager"

    def get(self) -> str:
        return f"{self.hostname}:{self.processname}:{self._next_count()}"

    def _next_count(self) -> int:
        group, start = _run_identity()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
            count = 0
            with contextlib.suppress(ValueError):
                saved_group, saved_count, saved_start = (
                    int(x) for x in handle.readline().strip().split(":"))
                if (saved_group, saved_start) == (group, start):
                    count = saved_count
            count += 1
            handle.seek(0)
            handle.truncate()
            handle.write(f"{group}:{count}:{start}")
            handle.flush()
        return count

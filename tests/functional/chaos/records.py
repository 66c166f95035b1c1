"""What the chaos workers write: one JSON object per line, appended to a file.

Every line is written with a single ``os.write`` on an ``O_APPEND`` descriptor,
so threads, green threads and processes can share a file without a lock and a
crash loses at most the line being written. Times are ``time.time()`` (wall
clock, comparable across processes and with the library's log lines).

Kinds of record (``k``):

- ``call``: ``id``, ``topic``, ``server`` (or null), ``t0``, ``t1``,
  ``timeout``, ``ok`` (the right answer came back), ``wrong`` (an answer
  came back, not the right one), ``err`` (what was raised, or null).
- ``cast``: ``id``, ``topic``, ``fanout``, ``server``, ``t0`` (written),
  ``t1`` (settled), ``timeout``, ``sent`` (the receipt reported it sent),
  ``err``.
- ``handled``: ``id``, ``server``, ``t`` (written by servers).
- ``probe``: ``server``, ``t0``, ``t1``, ``ok``, ``err`` (the final check
  that every server answers within 1 s); ``probe_done`` when finished.
- ``fault``: ``cls``, ``detail``, ``t0`` (applied), ``t1`` (undone), ``err``
  (written by the orchestrator).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class RecordFile:
    """Appends records to ``path``; safe from any thread or green thread."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"k": kind, **fields}, separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read(path: Path | str) -> Iterator[dict[str, Any]]:
    """Records of one file; a torn last line (a killed writer) is skipped."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return
    for line in text.splitlines():
        try:
            yield json.loads(line)
        except ValueError:
            continue


def read_all(directory: Path | str, pattern: str = "*.records") -> list[dict[str, Any]]:
    """Records of every matching file of ``directory``, each with its ``file``."""
    found = []
    for path in sorted(Path(directory).glob(pattern)):
        for record in read(path):
            record.setdefault("file", path.name)
            found.append(record)
    return found

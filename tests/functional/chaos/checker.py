"""The invariants of a chaos run, checked from the workers' records. Pure.

Each call and cast is attributed to the fault classes whose episodes were
active in the window before it: an episode ``[t0, t1]`` (applied, undone)
covers a message ``[m0, m1]`` when ``t0 <= m1`` and ``t1 + grace >= m0``
(``grace`` is the recovery allowance after a fault ends, 2T + 4 s by
default). A message no episode covers is attributed to ``none``.

Invariants (each failure is a violation; the run fails on any):

- ``call``: every call returned the right answer, or raised, within its
  timeout + 0.5 s (the worst overrun per class is reported either way);
- ``cast``: every cast whose receipt said sent was handled at least once.
  Not counted as lost, but listed: a cast to a queue that a ``delete_queue``
  episode deleted in its window (deleting a queue deletes its messages), and
  a fanout cast lost while a node of the cluster died in its window (fanout
  queues are transient by design);
- end checks, given by the orchestrator: every server answers a call within
  1 s after 2T without faults; the broker's connections, channels and
  consumers per worker are back to their baseline; each worker's thread count
  and RSS are within 10 % of their value after warm-up; each worker stops
  within its bound on SIGTERM.

Duplicates (a cast handled more than once by one server, or a topic cast by
more than one) are counted per class, not failed.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

OVERRUN_ALLOWED = 0.5


@dataclasses.dataclass(frozen=True)
class Episode:
    """A fault as it happened: class, detail, applied ``t0``, undone ``t1``."""

    cls: str
    detail: str
    t0: float
    t1: float


@dataclasses.dataclass(frozen=True)
class Violation:
    invariant: str
    classes: tuple[str, ...]
    t: float
    detail: str
    worker: str = ""
    #: End of the violating message's window (for log excerpts).
    t1: float | None = None


@dataclasses.dataclass
class ClassFigures:
    episodes: int = 0
    calls: int = 0
    answered: int = 0
    raised: int = 0
    wrong: int = 0
    overruns: int = 0
    worst_overrun: float | None = None
    casts_sent: int = 0
    casts_failed: int = 0
    lost: int = 0
    lost_explained: int = 0
    duplicates: int = 0

    def add_overrun(self, seconds: float) -> None:
        if self.worst_overrun is None or seconds > self.worst_overrun:
            self.worst_overrun = seconds


@dataclasses.dataclass
class Report:
    start: float
    classes: dict[str, ClassFigures]
    violations: list[Violation]
    explained: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations

    def failing(self) -> dict[str, list[str]]:
        """Invariant -> the fault classes its violations are attributed to."""
        found: dict[str, set[str]] = collections.defaultdict(set)
        for v in self.violations:
            found[v.invariant].update(v.classes or ("-",))
        return {k: sorted(v) for k, v in sorted(found.items())}

    def table(self) -> str:
        head = (f"{'fault class':<17}{'episodes':>9}{'calls':>7}{'answered':>9}{'raised':>7}"
                f"{'wrong':>6}{'overrun':>8}{'worst':>8}{'casts':>7}{'failed':>7}{'lost':>5}"
                f"{'expl.':>6}{'dups':>5}")
        lines = [head, "-" * len(head)]
        for name, f in self.classes.items():
            worst = "-" if f.worst_overrun is None else f"{f.worst_overrun:+.2f}"
            lines.append(f"{name:<17}{f.episodes:>9}{f.calls:>7}{f.answered:>9}{f.raised:>7}"
                         f"{f.wrong:>6}{f.overruns:>8}{worst:>8}{f.casts_sent:>7}"
                         f"{f.casts_failed:>7}{f.lost:>5}{f.lost_explained:>6}{f.duplicates:>5}")
        lines.append("(worst: the longest call minus its timeout, s; a violation above +0.50;"
                     " casts: receipts that said sent; expl.: lost with a deleted queue or a"
                     " transient fanout queue on a dead node)")
        return "\n".join(lines)

    def render(self, limit: int = 60) -> str:
        out = [self.table(), ""]
        if not self.violations:
            out.append("no invariant violated")
        else:
            out.append(f"{len(self.violations)} violation(s):")
            for invariant, classes in self.failing().items():
                count = sum(v.invariant == invariant for v in self.violations)
                out.append(f"  {invariant}: {count}, fault classes {', '.join(classes)}")
            out.append("")
            for v in self.violations[:limit]:
                where = f" [{v.worker}]" if v.worker else ""
                out.append(f"  +{v.t - self.start:7.2f}s {v.invariant}{where} "
                           f"({', '.join(v.classes) or '-'}): {v.detail}")
            if len(self.violations) > limit:
                out.append(f"  ... and {len(self.violations) - limit} more")
        if self.explained:
            out.append(f"{len(self.explained)} lost cast(s) explained by the fault itself "
                       "(not violations):")
            out.extend(f"  {line}" for line in self.explained[:20])
        return "\n".join(out)


def attribute(m0: float, m1: float, episodes: Iterable[Episode], grace: float) -> tuple[str, ...]:
    """Fault classes active in the window of a message ``[m0, m1]``, or ``("none",)``."""
    found = sorted({e.cls for e in episodes if e.t0 <= m1 and e.t1 + grace >= m0})
    return tuple(found) or ("none",)


def episodes_of(records: Iterable[dict[str, Any]]) -> list[Episode]:
    return [Episode(r["cls"], r.get("detail", ""), r["t0"], r["t1"])
            for r in records if r.get("k") == "fault"]


def _lost_explained(cast: dict[str, Any], episodes: Sequence[Episode], grace: float,
                    start: float) -> str | None:
    """Why a lost cast is no fault of the library, or None."""
    topic, server = cast["topic"], cast.get("server")
    kind = "fanout" if cast.get("fanout") else "server" if server else "topic"
    for e in episodes:
        # Only a fault in the window of the cast explains it: a working
        # server takes a message within the grace of its confirm.
        if e.t1 + grace < cast["t0"] or e.t0 > cast["t1"] + grace:
            continue
        if e.cls == "delete_queue" and f"queue={kind}" in e.detail and f"topic={topic}" in e.detail \
                and (kind != "server" or f"server={server}" in e.detail):
            return f"its {kind} queue was deleted at +{e.t0 - start:.2f}s ({e.detail})"
        if kind == "fanout" and e.cls in ("kill_node", "full_restart"):
            return f"a fanout queue is transient and {e.cls} ran ({e.detail})"
    return None


def check(records: Sequence[dict[str, Any]], *, start: float, grace: float,
          end_violations: Sequence[Violation] = ()) -> Report:
    episodes = episodes_of(records)
    classes: dict[str, ClassFigures] = {c: ClassFigures() for c in
                                        sorted({e.cls for e in episodes})}
    classes["none"] = ClassFigures()
    for e in episodes:
        classes[e.cls].episodes += 1
    violations: list[Violation] = []
    explained: list[str] = []

    stalls: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in records:
        if r.get("k") == "stall":
            stalls[r.get("caller", "")].append(r)
    handled: collections.Counter[tuple[str, str]] = collections.Counter()
    for r in records:
        if r.get("k") == "handled":
            handled[(r["id"], r["server"])] += 1
    by_id: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for (cast_id, server), count in handled.items():
        by_id[cast_id][server] = count

    for r in records:
        kind = r.get("k")
        if kind not in ("call", "cast"):
            continue
        blamed = attribute(r["t0"], r["t1"], episodes, grace)
        figures = [classes.setdefault(c, ClassFigures()) for c in blamed]
        worker = r.get("caller", "")
        if kind == "call":
            took, timeout = r["t1"] - r["t0"], r["timeout"]
            for f in figures:
                f.calls += 1
                f.answered += bool(r["ok"])
                f.raised += r["err"] is not None
                f.wrong += bool(r["wrong"])
                f.add_overrun(took - timeout)
                f.overruns += took > timeout + OVERRUN_ALLOWED
            target = f"{r['topic']}" + (f" server={r['server']}" if r.get("server") else "")
            if r["wrong"]:
                violations.append(Violation("call: wrong answer", blamed, r["t0"],
                                            f"call {r['id']} to {target}", worker, r["t1"]))
            if took > timeout + OVERRUN_ALLOWED:
                stalled = sum(s["seconds"] for s in stalls.get(worker, ())
                              if s["t1"] > r["t0"] and s["t0"] < r["t1"])
                violations.append(Violation(
                    "call: not done within timeout + 0.5 s", blamed, r["t0"],
                    f"call {r['id']} to {target} took {took:.2f}s (timeout {timeout:.1f}s), "
                    f"{'answered' if r['ok'] else 'raised ' + str(r['err'])}"
                    + (f"; the caller process got no CPU for {stalled:.2f}s meanwhile"
                       if stalled else ""), worker, r["t1"]))
            continue
        if not r["sent"]:
            for f in figures:
                f.casts_failed += 1
            continue
        seen = by_id.get(r["id"], {})
        for f in figures:
            f.casts_sent += 1
            f.duplicates += sum(n - 1 for n in seen.values()) + (
                0 if r.get("fanout") else max(0, len(seen) - 1))
        if seen:
            continue
        reason = _lost_explained(r, episodes, grace, start)
        target = (f"{r['topic']} fanout" if r.get("fanout") else r["topic"]) + (
            f" server={r['server']}" if r.get("server") else "")
        if reason:
            for f in figures:
                f.lost_explained += 1
            explained.append(f"+{r['t0'] - start:7.2f}s cast {r['id']} to {target}: {reason}")
            continue
        for f in figures:
            f.lost += 1
        violations.append(Violation(
            "cast: sent but never handled", blamed, r["t0"],
            f"cast {r['id']} to {target}, written +{r['t0'] - start:.2f}s, receipt said sent at "
            f"+{r['t1'] - start:.2f}s", worker, r["t1"]))

    violations.sort(key=lambda v: v.t)
    violations.extend(end_violations)
    return Report(start, classes, violations, explained)

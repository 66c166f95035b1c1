"""The bench's figures: medians of the runs, the targets, and how they are shown.

Everything here is a pure function of the runs' results, so it is tested
with made-up figures. :func:`aggregate` takes the median of each figure over
the runs that produced it (a failed run, or a run without that figure,
counts for nothing) and keeps its spread. :data:`TARGETS` are the ratios the
library aims at, each judged PASS or MISS on the medians, or ``n/a`` when a
figure is missing; :data:`INFORMATIONAL` ratios are shown without a verdict.
"""

from __future__ import annotations

import dataclasses
import operator
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from benchmarks.bench.rounds import (
    HEARTBEAT_CONNECTIONS,
    HEARTBEAT_THRESHOLD,
    HeartbeatResult,
    RunResult,
)
from benchmarks.bench.subjects import SUBJECTS

#: The figures reported, in table order, with their unit and decimals.
FIGURES: dict[str, tuple[str, int]] = {
    "rss_kb_per_connection": ("kB", 1),
    "rss_kb_per_idle_server": ("kB", 1),
    "calls_per_s": ("calls/s", 0),
    "call_p50_ms": ("ms", 3),
    "call_p99_ms": ("ms", 3),
    "concurrent_calls_per_s": ("calls/s", 0),
    "casts_per_s": ("casts/s", 0),
    "fanout_per_s": ("casts/s", 0),
    "heartbeat_cpu_percent": ("% core", 3),
}

#: Below this many runs the targets are not judged reliably.
RUNS_FOR_TARGETS = 5

#: A figure's median per subject: ``{subject: {figure: value}}``.
Medians = Mapping[str, Mapping[str, float]]


@dataclasses.dataclass(frozen=True)
class FigureStats:
    """One figure of one subject over the runs that produced it."""

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> FigureStats:
        if not values:
            raise ValueError("no values")
        return cls(statistics.median(values), min(values), max(values), len(values))


def aggregate(results: Iterable[RunResult],
              heartbeat: HeartbeatResult | None = None) -> dict[str, dict[str, FigureStats]]:
    """Per subject and figure, the statistics of the values the runs produced."""
    values: dict[str, dict[str, list[float]]] = {}
    for result in results:
        for name, value in (result.figures or {}).items():
            values.setdefault(result.subject, {}).setdefault(name, []).append(value)
    if heartbeat is not None and heartbeat.windows_percent:
        values.setdefault("rabbit_ha", {})["heartbeat_cpu_percent"] = list(heartbeat.windows_percent)
    return {subject: {name: FigureStats.of(vals) for name, vals in figures.items()}
            for subject, figures in values.items()}


def medians(stats: Mapping[str, Mapping[str, FigureStats]]) -> dict[str, dict[str, float]]:
    """The ``--json`` object: exactly one key per subject, each figure's median."""
    return {subject: {name: s.median for name, s in _ordered(stats.get(subject, {}))}
            for subject in SUBJECTS}


def _ordered(figures: Mapping[str, FigureStats]) -> list[tuple[str, FigureStats]]:
    known = [(name, figures[name]) for name in FIGURES if name in figures]
    return known + sorted((n, s) for n, s in figures.items() if n not in FIGURES)


# -- targets -----------------------------------------------------------------------

_RELATIONS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "<": operator.lt,
}


@dataclasses.dataclass(frozen=True)
class Target:
    """``subject``'s ``figure`` over ``versus``'s (or alone), against a bound.

    Without ``versus`` the figure itself is judged (heartbeat CPU); without
    ``relation`` the ratio is informational.
    """

    subject: str
    figure: str
    versus: str | None = None
    relation: str | None = None
    bound: float | None = None

    def value(self, figures: Medians) -> float | None:
        """The ratio (or the figure alone); None when a figure is missing or the ratio is meaningless."""
        mine = figures.get(self.subject, {}).get(self.figure)
        if mine is None:
            return None
        if self.versus is None:
            return mine
        theirs = figures.get(self.versus, {}).get(self.figure)
        if theirs is None or theirs <= 0:
            return None
        return mine / theirs

    def verdict(self, figures: Medians) -> str:
        """PASS or MISS against the bound; n/a without the figures; "" for information."""
        value = self.value(figures)
        if value is None:
            return "n/a"
        if self.relation is None or self.bound is None:
            return ""
        return "PASS" if _RELATIONS[self.relation](value, self.bound) else "MISS"

    @property
    def what(self) -> str:
        return f"{self.subject} {self.figure}" + (f" / {self.versus}" if self.versus else "")

    @property
    def goal(self) -> str:
        if self.relation is None or self.bound is None:
            return "(no target)"
        unit = "x" if self.versus else (" %" if self.figure.endswith("percent") else "")
        return f"target {self.relation} {self.bound:g}{unit}"

    def shown(self, figures: Medians) -> str:
        value = self.value(figures)
        if value is None:
            return "-"
        if self.versus is None:
            unit, digits = FIGURES.get(self.figure, ("", 3))
            return f"{value:.{digits}f} {unit}".rstrip()
        return f"{value:.2f}x"

    def as_json(self, figures: Medians) -> dict[str, Any]:
        return {"subject": self.subject, "figure": self.figure, "versus": self.versus,
                "value": self.value(figures), "relation": self.relation, "bound": self.bound,
                "verdict": self.verdict(figures) or "info"}


#: What the library aims at, judged on the medians.
TARGETS: tuple[Target, ...] = (
    Target("rabbit_ha", "calls_per_s", "oslo_rabbit", ">=", 2.0),
    Target("rabbit_ha", "calls_per_s", "bare_amqp", ">=", 0.6),
    Target("rabbit_ha", "casts_per_s", "oslo_rabbit", ">=", 3.0),
    Target("rabbit_ha", "call_p50_ms", "oslo_rabbit", "<=", 0.5),
    Target("rabbit_ha", "call_p99_ms", "oslo_rabbit", "<=", 1.0),
    Target("rabbit_ha_oslo", "calls_per_s", "oslo_rabbit", ">=", 1.5),
    Target("rabbit_ha_oslo", "casts_per_s", "oslo_rabbit", ">=", 2.0),
    Target("rabbit_ha", "heartbeat_cpu_percent", None, "<", 1.0),
)

#: Ratios shown for information, without a target.
INFORMATIONAL: tuple[Target, ...] = (
    Target("rabbit_ha_oslo", "casts_per_s", "oslo_fake"),
    *(Target(subject, figure, "oslo_rabbit")
      for figure in ("concurrent_calls_per_s", "fanout_per_s", "rss_kb_per_connection",
                     "rss_kb_per_idle_server")
      for subject in ("rabbit_ha", "rabbit_ha_oslo")),
)


def tally(figures: Medians, targets: Sequence[Target] = TARGETS) -> dict[str, int]:
    """How many targets passed, missed, or could not be judged."""
    counts = {"PASS": 0, "MISS": 0, "n/a": 0}
    for target in targets:
        counts[target.verdict(figures)] += 1
    return counts


# -- the text report ------------------------------------------------------------------


def format_value(figure: str, value: float) -> str:
    _, digits = FIGURES.get(figure, ("", 3))
    return f"{value:.{digits}f}"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines


def figure_table(stats: Mapping[str, Mapping[str, FigureStats]], subjects: Sequence[str],
                 cell: Callable[[str, FigureStats], str]) -> list[str]:
    """One row per figure any subject has, one column per subject."""
    names = [name for name in FIGURES if any(name in stats.get(s, {}) for s in subjects)]
    names += sorted({n for s in subjects for n in stats.get(s, {})} - set(names))
    rows = [["figure", "unit", *subjects]]
    for name in names:
        rows.append([name, FIGURES.get(name, ("", 3))[0],
                     *(cell(name, stats[s][name]) if name in stats.get(s, {}) else "-"
                       for s in subjects)])
    return _table(rows)


def runs_counted(results: Sequence[RunResult], subject: str) -> tuple[int, int]:
    """(runs with figures, runs tried) of one subject."""
    mine = [r for r in results if r.subject == subject]
    return sum(r.ok for r in mine), len(mine)


def text_report(*, url: str, runs: int, seconds: float, subjects: Sequence[str],
                results: Sequence[RunResult], heartbeat: HeartbeatResult | None,
                heartbeat_seconds: float, unavailable: Mapping[str, str]) -> list[str]:
    """The lines ``rabbit-ha bench`` prints."""
    stats = aggregate(results, heartbeat)
    figures = medians(stats)
    shown = [s for s in subjects if s not in unavailable]
    lines = [f"rabbit-ha bench on {url}: {runs} round{'s' if runs != 1 else ''}, "
             f"{seconds:g}s per timed phase"]
    counted = []
    for subject in subjects:
        if subject in unavailable:
            counted.append(f"{subject} unavailable ({unavailable[subject]})")
        else:
            ok, tried = runs_counted(results, subject)
            counted.append(f"{subject} {ok}/{tried}")
    lines.append("runs counted: " + ", ".join(counted))
    if heartbeat is not None:
        lines.append(f"heartbeat: {describe_heartbeat(heartbeat, heartbeat_seconds)}")
    elif "rabbit_ha" in shown:
        lines.append("heartbeat: not measured (--heartbeat-seconds 0)")
    if runs < RUNS_FOR_TARGETS:
        lines.append(f"note: fewer than {RUNS_FOR_TARGETS} runs; the figures are indicative and "
                     f"the targets need --runs {RUNS_FOR_TARGETS} or more")
    if shown:
        lines += ["", "medians"]
        lines += figure_table(stats, shown, lambda name, s: format_value(name, s.median))
        lines += ["", "spread: min..max (values counted)"]
        lines += figure_table(stats, shown, lambda name, s: (
            f"{format_value(name, s.low)}..{format_value(name, s.high)} ({s.count})"))
    lines += ["", "ratios of the medians (n/a: a figure is missing)"]
    rows = [[t.what, t.shown(figures), t.goal, t.verdict(figures)] for t in TARGETS]
    rows += [[t.what, t.shown(figures), t.goal, t.verdict(figures)] for t in INFORMATIONAL]
    width = [max(len(row[i]) for row in rows) for i in range(3)]
    lines += [f"  {w.ljust(width[0])}  {v.rjust(width[1])}  {g.ljust(width[2])}  {verdict}".rstrip()
              for w, v, g, verdict in rows]
    count = tally(figures)
    lines.append(f"targets: {count['PASS']} pass, {count['MISS']} miss, {count['n/a']} n/a")
    failed = [r for r in results if not r.ok]
    if failed or (heartbeat is not None and not heartbeat.ok):
        lines += ["", "failed runs (their figures are left out)"]
        lines += [f"  round {r.round}, {r.subject}: {r.error}" for r in failed]
        if heartbeat is not None and not heartbeat.ok:
            lines.append(f"  heartbeat: {heartbeat.error}")
    return lines


def describe_heartbeat(heartbeat: HeartbeatResult, seconds: float) -> str:
    """The heartbeat run in one line."""
    if not heartbeat.ok:
        return "failed (see below)"
    windows = len(heartbeat.windows_percent)
    text = (f"{HEARTBEAT_CONNECTIONS} idle connections at T={HEARTBEAT_THRESHOLD}s sent "
            f"{heartbeat.details.get('heartbeat_frames', '?')} heartbeat frames over {windows} "
            f"window{'s' if windows != 1 else ''} of {seconds:g}s")
    if heartbeat.unhealthy:
        text += (f"; WARNING: {heartbeat.details.get('declared_dead', 0)} declared dead, "
                 f"{heartbeat.details.get('lost', 0)} lost while idle")
    return text


# -- the --output file ----------------------------------------------------------------


def full_json(*, url: str, date: str, versions: Mapping[str, str | None], runs: int, seconds: float,
              heartbeat_seconds: float, subjects: Sequence[str], results: Sequence[RunResult],
              heartbeat: HeartbeatResult | None, unavailable: Mapping[str, str]) -> dict[str, Any]:
    """Everything a run of the bench found, for ``--output``."""
    stats = aggregate(results, heartbeat)
    figures = medians(stats)
    return {
        "medians": figures,
        "spread": {subject: {name: dataclasses.asdict(s) for name, s in _ordered(stats[subject])}
                   for subject in SUBJECTS if subject in stats},
        "runs": [{"subject": r.subject, "round": r.round,
                  "figures": None if r.figures is None else dict(r.figures),
                  "error": r.error or None, "seconds": r.seconds} for r in results],
        "heartbeat": None if heartbeat is None else {
            "windows_percent": list(heartbeat.windows_percent), "details": dict(heartbeat.details),
            "error": heartbeat.error or None},
        "targets": [t.as_json(figures) for t in TARGETS],
        "informational": [t.as_json(figures) for t in INFORMATIONAL],
        "unavailable": dict(unavailable),
        "settings": {"url": url, "runs": runs, "seconds": seconds,
                     "heartbeat_seconds": heartbeat_seconds, "subjects": list(subjects)},
        "date": date,
        "versions": dict(versions),
    }

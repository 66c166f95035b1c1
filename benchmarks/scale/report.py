"""The scale bench's figures: parsing a run's output, medians, targets, the text report.

Everything here is a pure function of the runs' results, so it is tested with
made-up figures. A run's figures are ``{curve: {x: {figure: value}}}``
(:func:`parse_curves`); :func:`aggregate` turns the runs into
``{curve: {x: {subject: {figure: FigureStats}}}}``, the median of each figure
over the runs that produced it with its minimum, maximum and count.
:func:`by_round` keeps each round's own values, so a target's ratio can also be
taken round by round, pairing the runs of the same round.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from benchmarks.bench import rounds
from benchmarks.bench.report import FigureStats

#: The parts, in their default order, and the subjects each one measures.
PARTS = ("footprint", "curves", "idle")
PART_SUBJECTS: dict[str, tuple[str, ...]] = {
    "footprint": ("rabbit_ha", "rabbit_ha_oslo", "oslo_rabbit"),
    "curves": ("rabbit_ha", "rabbit_ha_oslo", "oslo_rabbit", "bare_amqp"),
    "idle": ("rabbit_ha", "oslo_rabbit", "bare_amqp"),
}
#: Every subject of some part, in the bench's order.
SCALE_SUBJECTS = ("rabbit_ha", "rabbit_ha_oslo", "oslo_rabbit", "bare_amqp")

#: The curves, in report order: the part that measures each, its title and what x counts.
CURVES: dict[str, tuple[str, str, str]] = {
    "footprint_idle": ("footprint", "broker footprint per idle service", "services"),
    "footprint_load": ("footprint", "broker footprint per service under load", "services"),
    "storm": ("footprint", "restart storm", "services"),
    "concurrency": ("curves", "calls as client threads grow", "client threads"),
    "size": ("curves", "calls as the payload grows", "payload bytes"),
    "fanout": ("curves", "fanout casts as servers grow", "servers"),
    "idle": ("idle", "idle connections in one process", "connections"),
}

#: How a figure is shown: (unit, divisor, decimals). Raw values stay in the JSON.
FIGURES: dict[str, tuple[str, float, int]] = {
    "connections": ("per service", 1, 2),
    "channels": ("per service", 1, 2),
    "queues": ("per service", 1, 2),
    "consumers": ("per service", 1, 2),
    "erlang_processes": ("per service", 1, 1),
    "memory_bytes": ("KiB per service", 1024, 1),
    "all_answering_s": ("s", 1, 2),
    "slowest_answer_after_start_s": ("s", 1, 2),
    "slowest_answer_after_imports_s": ("s", 1, 2),
    "peak_memory_bytes": ("MiB", 1024 * 1024, 1),
    "connections_created": ("", 1, 0),
    "connections_closed": ("", 1, 0),
    "queues_left": ("", 1, 0),
    "queue_expiry_s": ("s", 1, 1),
    "failed_services": ("", 1, 0),
    "calls_per_s": ("calls/s", 1, 0),
    "bytes_per_s": ("MB/s", 1e6, 2),
    "casts_per_s": ("casts/s", 1, 0),
    "cpu_percent": ("% of a core", 1, 2),
    "rss_kb": ("kB", 1, 0),
    "rss_kb_per_connection": ("kB", 1, 1),
    "declared_dead": ("", 1, 0),
}

#: Below this many runs the targets are not judged reliably.
RUNS_FOR_TARGETS = 5

#: A run's figures: ``{curve: {x: {figure: value}}}``.
Curves = Mapping[str, Mapping[str, Mapping[str, float]]]
#: Values of many subjects: ``{curve: {x: {subject: {figure: value}}}}``.
Table = Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]
#: Statistics of many subjects, shaped like :data:`Table`.
Stats = dict[str, dict[str, dict[str, dict[str, FigureStats]]]]


@dataclasses.dataclass(frozen=True)
class ScaleRun:
    """One run of one part for one subject: its figures, or why there are none."""

    part: str
    subject: str
    round: int  # 1-based
    figures: Curves | None
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.figures is not None

    def as_json(self) -> dict[str, Any]:
        return {"part": self.part, "subject": self.subject, "round": self.round,
                "figures": None if self.figures is None else plain(self.figures),
                "error": self.error or None, "seconds": self.seconds}


def plain(curves: Curves) -> dict[str, dict[str, dict[str, float]]]:
    return {curve: {x: dict(figures) for x, figures in xs.items()} for curve, xs in curves.items()}


def _number(value: Any, where: str) -> float | None:
    """A figure's value; None for null or a non-finite number (not measured)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"figure {where} is not a number: {value!r}")
    return float(value) if math.isfinite(value) else None


def parse_curves(stdout: str) -> dict[str, dict[str, dict[str, float]]]:
    """The ``{curve: {x: {figure: number}}}`` on the last non-empty line of a child's stdout.

    A null or non-finite figure is left out, as a figure that was not
    measured. Raises ValueError when the line is not such an object, or
    holds no figure at all.
    """
    data = rounds.last_json_object(stdout)
    curves: dict[str, dict[str, dict[str, float]]] = {}
    for curve, xs in data.items():
        if not isinstance(xs, dict):
            raise ValueError(f"curve {curve!r} is not an object of x -> figures: {xs!r:.100}")
        for x, figures in xs.items():
            if not isinstance(figures, dict):
                raise ValueError(f"{curve}[{x}] is not an object of figures: {figures!r:.100}")
            for name, raw in figures.items():
                value = _number(raw, f"{curve}[{x}].{name}")
                if value is not None:
                    curves.setdefault(curve, {}).setdefault(x, {})[name] = value
    if not curves:
        raise ValueError("no figure in the JSON object")
    return curves


# -- medians ---------------------------------------------------------------------------


def x_order(xs: Iterable[str]) -> list[str]:
    """x values in numeric order where they are numbers, the others after in text order."""
    def key(x: str) -> tuple[int, float, str]:
        try:
            return (0, float(x), x)
        except ValueError:
            return (1, 0.0, x)

    return sorted(xs, key=key)


def curve_order(curves: Iterable[str]) -> list[str]:
    found = list(dict.fromkeys(curves))
    return [c for c in CURVES if c in found] + sorted(c for c in found if c not in CURVES)


def subject_order(subjects: Iterable[str]) -> list[str]:
    found = set(subjects)
    return [s for s in SCALE_SUBJECTS if s in found] + sorted(found - set(SCALE_SUBJECTS))


def figure_order(figures: Iterable[str]) -> list[str]:
    found = set(figures)
    return [f for f in FIGURES if f in found] + sorted(found - set(FIGURES))


def _collect(runs: Iterable[ScaleRun]) -> dict[str, dict[str, dict[str, dict[str, list[float]]]]]:
    values: dict[str, dict[str, dict[str, dict[str, list[float]]]]] = {}
    for run in runs:
        for curve, xs in (run.figures or {}).items():
            for x, figures in xs.items():
                for name, value in figures.items():
                    (values.setdefault(curve, {}).setdefault(x, {}).setdefault(run.subject, {})
                     .setdefault(name, []).append(value))
    return values


def aggregate(runs: Iterable[ScaleRun]) -> Stats:
    """Per curve, x, subject and figure, the statistics of the values the runs produced."""
    return {curve: {x: {subject: {name: FigureStats.of(vals) for name, vals in figures.items()}
                        for subject, figures in subjects.items()}
                    for x, subjects in xs.items()}
            for curve, xs in _collect(runs).items()}


def medians(stats: Stats) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """The medians alone, curves, x values, subjects and figures in report order."""
    return {curve: {x: {subject: {name: stats[curve][x][subject][name].median
                                  for name in figure_order(stats[curve][x][subject])}
                        for subject in subject_order(stats[curve][x])}
                    for x in x_order(stats[curve])}
            for curve in curve_order(stats)}


def spread(stats: Stats) -> dict[str, dict[str, dict[str, dict[str, dict[str, float]]]]]:
    """Every statistic, as JSON: ``{curve: {x: {subject: {figure: {median, low, high, count}}}}}``."""
    return {curve: {x: {subject: {name: dataclasses.asdict(stats[curve][x][subject][name])
                                  for name in figure_order(stats[curve][x][subject])}
                        for subject in subject_order(stats[curve][x])}
                    for x in x_order(stats[curve])}
            for curve in curve_order(stats)}


def by_round(runs: Iterable[ScaleRun]) -> dict[int, dict[str, dict[str, dict[str, dict[str, float]]]]]:
    """Each round's own values, shaped like the medians: ``{round: {curve: {x: {subject: ...}}}}``."""
    rounds: dict[int, dict[str, dict[str, dict[str, dict[str, float]]]]] = {}
    for run in runs:
        for curve, xs in (run.figures or {}).items():
            for x, figures in xs.items():
                (rounds.setdefault(run.round, {}).setdefault(curve, {}).setdefault(x, {})
                 .setdefault(run.subject, {}).update(figures))
    return dict(sorted(rounds.items()))


def runs_counted(runs: Sequence[ScaleRun], part: str, subject: str) -> tuple[int, int]:
    """(runs with figures, runs tried) of one subject in one part."""
    mine = [r for r in runs if r.part == part and r.subject == subject]
    return sum(r.ok for r in mine), len(mine)


# -- targets ---------------------------------------------------------------------------

_RELATIONS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "<": operator.lt, "==": operator.eq,
}


@dataclasses.dataclass(frozen=True)
class Point:
    """One figure of one subject at one x of one curve."""

    curve: str
    x: str
    subject: str
    figure: str

    def of(self, table: Table) -> float | None:
        return table.get(self.curve, {}).get(self.x, {}).get(self.subject, {}).get(self.figure)


@dataclasses.dataclass(frozen=True)
class ScaleTarget:
    """``mine`` over ``theirs`` (times ``scale``), or ``mine`` alone, against a bound.

    Without ``relation`` the value is shown for information. ``scale`` turns
    a ratio of two x values of one subject into a ratio per x (the growth
    target).
    """

    label: str
    mine: Point
    theirs: Point | None = None
    relation: str | None = None
    bound: float | None = None
    scale: float = 1.0

    def value(self, table: Table) -> float | None:
        """The ratio (or the figure alone); None when a figure is missing or the ratio is meaningless."""
        mine = self.mine.of(table)
        if mine is None:
            return None
        if self.theirs is None:
            return mine
        theirs = self.theirs.of(table)
        if theirs is None or theirs <= 0:
            return None
        return mine / theirs * self.scale

    def judge(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        if self.relation is None or self.bound is None:
            return ""
        return "PASS" if _RELATIONS[self.relation](value, self.bound) else "MISS"

    def verdict(self, table: Table) -> str:
        """PASS or MISS against the bound; n/a without the figures; "" for information."""
        return self.judge(self.value(table))

    def round_values(self, rounds: Mapping[int, Table]) -> dict[int, float]:
        """The value in each round that has every figure it needs (runs of the same round paired)."""
        values = {r: self.value(table) for r, table in rounds.items()}
        return {r: v for r, v in values.items() if v is not None}

    def rounds_held(self, rounds: Mapping[int, Table]) -> tuple[int, int] | None:
        """(rounds in which the target held, rounds judged); None for information."""
        if self.relation is None:
            return None
        values = self.round_values(rounds)
        return sum(self.judge(v) == "PASS" for v in values.values()), len(values)

    @property
    def is_ratio(self) -> bool:
        return self.theirs is not None

    def format(self, value: float) -> str:
        if self.is_ratio:
            return f"{value:.2f}x"
        unit, divisor, digits = FIGURES.get(self.mine.figure, ("", 1, 3))
        return f"{value / divisor:.{digits}f} {unit}".rstrip()

    def shown(self, table: Table) -> str:
        value = self.value(table)
        return "-" if value is None else self.format(value)

    def shown_rounds(self, rounds: Mapping[int, Table]) -> str:
        values = list(self.round_values(rounds).values())
        if not values:
            return "-"
        low, high = self.format(min(values)), self.format(max(values))
        text = f"{low.split()[0].rstrip('x')}..{high} ({len(values)})"
        held = self.rounds_held(rounds)
        if held is not None:
            text += f", held in {held[0]}/{held[1]}"
        return text

    @property
    def goal(self) -> str:
        if self.relation is None or self.bound is None:
            return "(no target)"
        if self.is_ratio:
            return f"target {self.relation} {self.bound:g}x"
        unit, divisor, _ = FIGURES.get(self.mine.figure, ("", 1, 3))
        return f"target {self.relation} {self.bound / divisor:g} {unit}".rstrip()

    def as_json(self, table: Table, rounds: Mapping[int, Table]) -> dict[str, Any]:
        held = self.rounds_held(rounds)
        return {"label": self.label, "mine": dataclasses.asdict(self.mine),
                "theirs": None if self.theirs is None else dataclasses.asdict(self.theirs),
                "scale": self.scale, "relation": self.relation, "bound": self.bound,
                "value": self.value(table), "verdict": self.verdict(table) or "info",
                "rounds": {str(r): v for r, v in self.round_values(rounds).items()},
                "rounds_held": None if held is None else list(held)}


def _ratio(label: str, curve: str, x: str, figure: str, subject: str, versus: str,
           relation: str | None = None, bound: float | None = None) -> ScaleTarget:
    return ScaleTarget(label, Point(curve, x, subject, figure), Point(curve, x, versus, figure),
                       relation, bound)


def _alone(label: str, curve: str, x: str, figure: str, subject: str,
           relation: str | None = None, bound: float | None = None) -> ScaleTarget:
    return ScaleTarget(label, Point(curve, x, subject, figure), None, relation, bound)


def growth(label: str, curve: str, low: str, high: str, figure: str, subject: str,
           relation: str | None = None, bound: float | None = None) -> ScaleTarget:
    """``figure`` per x at ``high`` over the same per x at ``low``: 1.0 is linear growth."""
    return ScaleTarget(label, Point(curve, high, subject, figure), Point(curve, low, subject, figure),
                       relation, bound, scale=float(low) / float(high))


_FOOTPRINT = {"memory_bytes": "broker memory", "connections": "connections",
              "channels": "channels"}

#: What the library aims at, judged on the medians.
TARGETS: tuple[ScaleTarget, ...] = (
    *(_ratio(f"{what} per idle service, N={n}: rabbit_ha / oslo_rabbit", "footprint_idle", n,
             figure, "rabbit_ha", "oslo_rabbit", "<=", 0.5)
      for figure, what in _FOOTPRINT.items() for n in ("10", "50")),
    *(_alone(f"storm of 50, slowest answer after its imports: {subject}", "storm", "50",
             "slowest_answer_after_imports_s", subject, "<=", 10.0)
      for subject in ("rabbit_ha", "rabbit_ha_oslo")),
    *(_alone(f"storm of 50, queues left: {subject}", "storm", "50", "queues_left", subject, "==", 0.0)
      for subject in ("rabbit_ha", "rabbit_ha_oslo")),
    _ratio("calls/s, 64 client threads: rabbit_ha / bare_amqp", "concurrency", "64", "calls_per_s",
           "rabbit_ha", "bare_amqp", ">=", 0.8),
    _ratio("bytes/s, 1000000-byte payload: rabbit_ha / bare_amqp", "size", "1000000", "bytes_per_s",
           "rabbit_ha", "bare_amqp", ">=", 0.8),
    _alone("CPU of 2000 idle connections: rabbit_ha", "idle", "2000", "cpu_percent", "rabbit_ha",
           "<", 2.0),
    growth("CPU per idle connection, 2000 over 100: rabbit_ha", "idle", "100", "2000", "cpu_percent",
           "rabbit_ha", "<=", 1.25),
)

#: Shown beside the targets, without a verdict.
INFORMATIONAL: tuple[ScaleTarget, ...] = (
    *(_ratio(f"{what} per idle service, N={n}: rabbit_ha_oslo / oslo_rabbit", "footprint_idle", n,
             figure, "rabbit_ha_oslo", "oslo_rabbit")
      for figure, what in _FOOTPRINT.items() for n in ("10", "50")),
    _alone("storm of 50, slowest answer after its imports: oslo_rabbit", "storm", "50",
           "slowest_answer_after_imports_s", "oslo_rabbit"),
    *(_alone(f"storm of 50, slowest answer after its process started: {subject}", "storm", "50",
             "slowest_answer_after_start_s", subject)
      for subject in ("rabbit_ha", "rabbit_ha_oslo", "oslo_rabbit")),
    _alone("storm of 50, queues left: oslo_rabbit", "storm", "50", "queues_left", "oslo_rabbit"),
    *(_alone(f"storm of 50, every service answering: {subject}", "storm", "50", "all_answering_s",
             subject) for subject in ("rabbit_ha", "rabbit_ha_oslo", "oslo_rabbit")),
    _ratio("calls/s, 64 client threads: rabbit_ha / oslo_rabbit", "concurrency", "64", "calls_per_s",
           "rabbit_ha", "oslo_rabbit"),
    _ratio("calls/s, 64 client threads: rabbit_ha_oslo / oslo_rabbit", "concurrency", "64",
           "calls_per_s", "rabbit_ha_oslo", "oslo_rabbit"),
    _ratio("bytes/s, 1000000-byte payload: rabbit_ha / oslo_rabbit", "size", "1000000", "bytes_per_s",
           "rabbit_ha", "oslo_rabbit"),
    _ratio("fanout casts/s, 20 servers: rabbit_ha / oslo_rabbit", "fanout", "20", "casts_per_s",
           "rabbit_ha", "oslo_rabbit"),
    _alone("CPU of 2000 idle connections: oslo_rabbit", "idle", "2000", "cpu_percent", "oslo_rabbit"),
    growth("CPU per idle connection, 2000 over 100: oslo_rabbit", "idle", "100", "2000",
           "cpu_percent", "oslo_rabbit"),
    _alone("declared dead of 2000 idle connections: rabbit_ha", "idle", "2000", "declared_dead",
           "rabbit_ha"),
)


def tally(table: Table, targets: Sequence[ScaleTarget] = TARGETS) -> dict[str, int]:
    """How many targets passed, missed, or could not be judged."""
    counts = {"PASS": 0, "MISS": 0, "n/a": 0}
    for target in targets:
        counts[target.verdict(table)] += 1
    return counts


# -- the text report --------------------------------------------------------------------


def format_value(figure: str, value: float) -> str:
    """A figure in its display unit; a rate under 100 a second gets decimals."""
    _, divisor, digits = FIGURES.get(figure, ("", 1, 3))
    shown = value / divisor
    if figure.endswith("_per_s") and digits == 0 and abs(shown) < 100:
        digits = 1 if abs(shown) >= 10 else 2
    return f"{shown:,.{digits}f}"


def cell(figure: str, stats: FigureStats, expected: int) -> str:
    """``median [min..max]``, with the count when fewer runs than ``expected`` produced it."""
    text = f"{format_value(figure, stats.median)} [{format_value(figure, stats.low)}.." \
           f"{format_value(figure, stats.high)}]"
    return text + (f" n={stats.count}" if stats.count < expected else "")


def _columns(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                             enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]


def curve_tables(stats: Stats, subjects: Sequence[str], runs_of: Mapping[str, int]) -> list[str]:
    """Per curve and figure: x down, subjects across, ``median [min..max]``."""
    lines: list[str] = []
    for curve in curve_order(stats):
        xs = x_order(stats[curve])
        part, title, x_name = CURVES.get(curve, ("", curve, "x"))
        shown = [s for s in subject_order(subjects) if any(s in stats[curve][x] for x in xs)]
        figures = figure_order({name for x in xs for s in stats[curve][x].values() for name in s})
        expected = runs_of.get(part, 0)
        for name in figures:
            unit = FIGURES.get(name, ("",))[0]
            lines += ["", f"{curve}: {title}; {name}" + (f" ({unit})" if unit else "")]
            rows = [[x_name, *shown]]
            for x in xs:
                row = [x]
                for subject in shown:
                    one = stats[curve][x].get(subject, {}).get(name)
                    row.append("-" if one is None else cell(name, one, expected))
                rows.append(row)
            lines += _columns(rows)
    return lines


def part_of(target: ScaleTarget) -> str:
    return CURVES.get(target.mine.curve, ("",))[0]


def target_lines(table: Table, rounds: Mapping[int, Table], parts: Iterable[str] = PARTS) -> list[str]:
    """The targets (and the ratios shown beside them) of the curves of ``parts``."""
    parts = set(parts)
    targets = [t for t in TARGETS if part_of(t) in parts]
    rows = [["target", "median", "per round: min..max (rounds)", "goal", "verdict"]]
    for target in (*targets, *(t for t in INFORMATIONAL if part_of(t) in parts)):
        rows.append([target.label, target.shown(table), target.shown_rounds(rounds), target.goal,
                     target.verdict(table)])
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"  {a.ljust(widths[0])}  {b.rjust(widths[1])}  {c.ljust(widths[2])}  "
             f"{d.ljust(widths[3])}  {e}".rstrip() for a, b, c, d, e in rows]
    count = tally(table, targets)
    lines.append(f"targets: {count['PASS']} pass, {count['MISS']} miss, {count['n/a']} n/a"
                 + ("" if len(targets) == len(TARGETS) else
                    f" ({len(TARGETS) - len(targets)} more of parts not run)"))
    return lines


def text_report(*, url: str, runs_of: Mapping[str, int], subjects: Sequence[str],
                results: Sequence[ScaleRun], unavailable: Mapping[str, str]) -> list[str]:
    """The lines ``rabbit-ha bench --scale`` prints."""
    stats = aggregate(results)
    table = medians(stats)
    rounds = by_round(results)
    parts = ", ".join(f"{part} ({n} round{'s' if n != 1 else ''})" for part, n in runs_of.items())
    lines = [f"rabbit-ha bench --scale on {url}: {parts or 'no part'}"]
    for part in runs_of:
        counted = []
        for subject in subject_order(set(subjects) | set(unavailable)):
            if subject not in PART_SUBJECTS.get(part, ()):
                continue
            if subject in unavailable:
                counted.append(f"{subject} unavailable ({unavailable[subject]})")
            elif subject in subjects:
                ok, tried = runs_counted(results, part, subject)
                counted.append(f"{subject} {ok}/{tried}")
        lines.append(f"runs counted, {part}: " + (", ".join(counted) or "no subject"))
    if any(n < RUNS_FOR_TARGETS for n in runs_of.values()):
        lines.append(f"note: fewer than {RUNS_FOR_TARGETS} rounds; the figures are indicative and "
                     f"the targets need --runs {RUNS_FOR_TARGETS} or more")
    lines.append("each cell: median [min..max] of the runs (n=: fewer runs counted)")
    lines += curve_tables(stats, subjects, runs_of)
    lines += ["", "targets: ratio (or value) of the medians; per round: the same from the runs of "
              "one round, and in how many rounds the target held"]
    lines += target_lines(table, rounds, runs_of)
    failed = [r for r in results if not r.ok]
    if failed:
        lines += ["", "failed runs (their figures are left out)"]
        lines += [f"  round {r.round}, {r.part}, {r.subject}: {r.error}" for r in failed]
    return lines


# -- the --output file ----------------------------------------------------------------


def full_json(*, url: str, date: str, versions: Mapping[str, str | None],
              settings: Mapping[str, Any], results: Sequence[ScaleRun],
              unavailable: Mapping[str, str]) -> dict[str, Any]:
    """Everything a run of the scale bench found, for ``--output`` and the plots."""
    stats = aggregate(results)
    table = medians(stats)
    rounds = by_round(results)
    return {
        "kind": "rabbit-ha bench --scale",
        "medians": table,
        "spread": spread(stats),
        "runs": [r.as_json() for r in results],
        "targets": [t.as_json(table, rounds) for t in TARGETS],
        "informational": [t.as_json(table, rounds) for t in INFORMATIONAL],
        "tally": tally(table),
        "unavailable": dict(unavailable),
        "settings": {"url": url, **settings},
        "date": date,
        "versions": dict(versions),
    }

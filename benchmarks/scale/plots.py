"""The scale bench's figures as PNGs: one per curve and figure.

Usage::

    python -m benchmarks.scale.plots --input scale.json --output-dir docs/_static/scale

reads the file ``rabbit-ha bench --scale --output`` writes (its ``spread``:
each figure's median, minimum and maximum; or, lacking it, its ``medians``)
and writes ``CURVE_FIGURE.png`` for every figure of every curve, e.g.
``concurrency_calls_per_s.png``. The throughput and idle curves are lines:
x against the median, with the minimum..maximum of the runs as error bars,
one line per subject; x is on a log scale where the points span a decade or
more, y where they span two decades, all above zero. The footprint and storm
curves are grouped bars per N with the same error bars. Subjects have the
labels and colours of :mod:`benchmarks.plot_results`. ``--note TEXT`` writes
TEXT across every figure (how the docs' placeholders say they are
placeholders).

The data shaping (:func:`charts`) is plain Python; matplotlib (Agg backend)
is imported only to draw.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.plot_results import SUBJECT_COLOURS, SUBJECT_LABELS, PlotError, load, pyplot
from benchmarks.scale.report import CURVES, FIGURES, curve_order, figure_order, subject_order, x_order

#: Curves drawn as grouped bars per x; the others as lines.
BAR_CURVES = frozenset({"footprint_idle", "footprint_load", "storm"})
#: x values spanning this factor or more get a log axis (1, 4, 16, 64 does) ...
LOG_SPAN = 10.0
#: ... and y values this factor (two decades: a ratio of 0.8 stays easy to read on a linear axis).
LOG_SPAN_Y = 100.0

#: (median, low, high) in the figure's display unit.
Point = tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class Chart:
    """One PNG: one curve's figure for every subject that has it."""

    curve: str
    figure: str
    kind: str  # "line" or "bars"
    xs: list[str]
    subjects: list[str]
    #: subject -> one point per x; None where the subject lacks it.
    values: dict[str, list[Point | None]]
    title: str
    x_label: str
    y_label: str
    log_x: bool
    log_y: bool

    @property
    def filename(self) -> str:
        return f"{self.curve}_{self.figure}.png"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _point(value: Any) -> Point | None:
    """A ``{median, low, high}`` statistic, or a bare median (no spread)."""
    if isinstance(value, Mapping):
        median, low, high = (_number(value.get(k)) for k in ("median", "low", "high"))
        if median is None:
            return None
        return (median, median if low is None else low, median if high is None else high)
    median = _number(value)
    return None if median is None else (median, median, median)


def _table(document: Any) -> Mapping[str, Any]:
    if not isinstance(document, Mapping):
        raise PlotError("scale input: expected the JSON object rabbit-ha bench --scale --output writes")
    for key in ("spread", "medians"):
        if isinstance(document.get(key), Mapping) and document[key]:
            table: Mapping[str, Any] = document[key]
            return table
    raise PlotError("scale input: no 'spread' or 'medians' with figures (keys: "
                    f"{', '.join(map(str, document)) or 'none'})")


def _spans(values: Sequence[float], span: float = LOG_SPAN) -> bool:
    """Whether the values are all positive and span ``span`` or more."""
    return bool(values) and min(values) > 0 and max(values) / min(values) >= span


def _numeric(xs: Sequence[str]) -> list[float] | None:
    try:
        return [float(x) for x in xs]
    except ValueError:
        return None


def charts(document: Any) -> list[Chart]:
    """Every curve's every figure that some subject has, in report order."""
    table = _table(document)
    found: list[Chart] = []
    for curve in curve_order(k for k, v in table.items() if isinstance(v, Mapping)):
        xs_table = {x: v for x, v in table[curve].items() if isinstance(v, Mapping)}
        xs = x_order(xs_table)
        subjects = subject_order(s for x in xs for s, v in xs_table[x].items() if isinstance(v, Mapping))
        names = figure_order({n for x in xs for s in subjects for n in xs_table[x].get(s, {})})
        _, title, x_name = CURVES.get(curve, ("", curve, "x"))
        kind = "bars" if curve in BAR_CURVES else "line"
        for name in names:
            unit, divisor, _ = FIGURES.get(name, ("", 1, 3))
            values: dict[str, list[Point | None]] = {}
            for subject in subjects:
                points = []
                for x in xs:
                    point = _point(xs_table[x].get(subject, {}).get(name))
                    points.append(None if point is None else
                                  (point[0] / divisor, point[1] / divisor, point[2] / divisor))
                if any(p is not None for p in points):
                    values[subject] = points
            if not values:
                continue
            keep = [i for i in range(len(xs)) if any(v[i] is not None for v in values.values())]
            kept_xs = [xs[i] for i in keep]
            values = {s: [v[i] for i in keep] for s, v in values.items()}
            numeric = _numeric(kept_xs)
            ys = [p[0] for v in values.values() for p in v if p is not None]
            found.append(Chart(
                curve=curve, figure=name, kind=kind, xs=kept_xs, subjects=list(values), values=values,
                title=f"{title}: {name}", x_label=x_name, y_label=unit or name,
                log_x=kind == "line" and numeric is not None and _spans(numeric),
                log_y=_spans(ys, LOG_SPAN_Y)))
    if not found:
        raise PlotError("scale input: no figure to draw")
    return found


# -- drawing --------------------------------------------------------------------------------


def _errors(points: Sequence[Point]) -> list[list[float]]:
    return [[max(0.0, m - lo) for m, lo, _ in points], [max(0.0, hi - m) for m, _, hi in points]]


def draw(chart: Chart, output: str, note: str | None = None) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    if chart.kind == "line":
        numeric = _numeric(chart.xs)
        positions = numeric if numeric is not None else [float(i) for i in range(len(chart.xs))]
        for subject in chart.subjects:
            pairs = [(x, p) for x, p in zip(positions, chart.values[subject], strict=True) if p is not None]
            ax.errorbar([x for x, _ in pairs], [p[0] for _, p in pairs], yerr=_errors([p for _, p in pairs]),
                        marker="o", capsize=3, label=SUBJECT_LABELS.get(subject, subject),
                        color=SUBJECT_COLOURS.get(subject))
        if chart.log_x:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(positions, chart.xs)
    else:
        count = len(chart.subjects)
        width = min(0.8 / count, 0.3)
        for index, subject in enumerate(chart.subjects):
            offset = width * (index - (count - 1) / 2)
            pairs = [(i + offset, p) for i, p in enumerate(chart.values[subject]) if p is not None]
            ax.bar([x for x, _ in pairs], [p[0] for _, p in pairs], width,
                   yerr=_errors([p for _, p in pairs]), capsize=3,
                   label=SUBJECT_LABELS.get(subject, subject), color=SUBJECT_COLOURS.get(subject))
        ax.set_xticks(range(len(chart.xs)), chart.xs)
        ax.set_xlim(-0.5, len(chart.xs) - 0.5)
    if chart.log_y:
        ax.set_yscale("log")
    ax.set_title(chart.title, fontsize=10)
    ax.set_xlabel(chart.x_label)
    ax.set_ylabel(chart.y_label)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, frameon=False)
    if note:
        fig.text(0.5, 0.5, note, ha="center", va="center", fontsize=15, color="#d62728", alpha=0.4,
                 rotation=15, wrap=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)


def write_plots(document: Any, directory: str, note: str | None = None) -> list[str]:
    """Draw every chart of ``document`` into ``directory`` (made if missing); the paths written."""
    found = charts(document)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for chart in found:
        path = str(folder / chart.filename)
        draw(chart, path, note)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale.plots",
                                     description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="the JSON file rabbit-ha bench --scale --output wrote")
    parser.add_argument("--output-dir", required=True, help="folder the PNGs are written to")
    parser.add_argument("--note", help="text written across every figure (e.g. PLACEHOLDER)")
    args = parser.parse_args(argv)
    try:
        written = write_plots(load(args.input), args.output_dir, args.note)
    except PlotError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

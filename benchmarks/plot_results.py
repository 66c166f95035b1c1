"""Figures for the docs: benchmark bars and the silent-drop timeline.

Usage::

    python -m benchmarks.plot_results bench --input bench.json --output docs/_static/bench_results.png
    python -m benchmarks.plot_results drill --input drill.json --output docs/_static/drill_timeline.png

``bench`` reads what ``rabbit-ha bench --json`` prints: one object whose keys
are the subjects (``rabbit_ha``, ``rabbit_ha_oslo``, ``oslo_rabbit``,
``bare_amqp``, ``oslo_fake``), each a dict of figure name to median. It draws
grouped bars, one bar per subject, in one panel per kind of figure
(throughput, latency, memory, heartbeat CPU), every bar labelled with its
value. A figure a subject lacks is left out of its group. The file
``rabbit-ha bench --output`` writes is read too (its ``medians``).

``drill`` reads the JSON of ``python -m benchmarks.drill_timeline`` and draws
the answered calls per 100 ms against the time from the drop, one panel per
driver: the drop is shaded, failed calls are marked and the outage (the
longest stretch without an answered call) is annotated.

The data shaping (:func:`bench_panels`, :func:`drill_series`) is plain
Python; matplotlib (Agg backend) is imported only to draw.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

#: Subjects in the order ``rabbit-ha bench`` runs them, with their legend labels.
SUBJECT_LABELS = {
    "rabbit_ha": "rabbit_ha_driver API",
    "rabbit_ha_oslo": "oslo.messaging, rabbit-ha://",
    "oslo_rabbit": "oslo.messaging, rabbit://",
    "bare_amqp": "bare py-amqp",
    "oslo_fake": "oslo.messaging, fake://",
}
SUBJECT_COLOURS = {
    "rabbit_ha": "#1f77b4",
    "rabbit_ha_oslo": "#6baed6",
    "oslo_rabbit": "#ff7f0e",
    "bare_amqp": "#7f7f7f",
    "oslo_fake": "#bcbd22",
}
DRIVER_LABELS = {
    "rabbit-ha": "rabbit-ha:// (this library)",
    "rabbit": "rabbit:// (oslo.messaging's driver)",
}
DRIVER_COLOURS = {"rabbit-ha": "#1f77b4", "rabbit": "#ff7f0e"}


@dataclasses.dataclass(frozen=True)
class PanelSpec:
    title: str
    unit: str
    figures: tuple[tuple[str, str], ...]  # (figure name, group label)


PANELS = (
    PanelSpec("Throughput", "per second", (
        ("calls_per_s", "calls\n(1 caller)"),
        ("concurrent_calls_per_s", "calls\n(8 callers)"),
        ("casts_per_s", "casts"),
        ("fanout_per_s", "fanout casts\n(3 servers)"),
    )),
    PanelSpec("Call latency", "ms", (
        ("call_p50_ms", "median"),
        ("call_p99_ms", "99th percentile"),
    )),
    PanelSpec("Memory", "kB resident", (
        ("rss_kb_per_connection", "per connection"),
        ("rss_kb_per_idle_server", "per idle\nRPC server"),
    )),
    PanelSpec("Heartbeats", "% of one core", (
        ("heartbeat_cpu_percent", "idle connections"),
    )),
)


class PlotError(Exception):
    """The input cannot be drawn, or matplotlib is missing."""


# -- data shaping (no matplotlib) -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Panel:
    """One chart: groups of bars, one group per figure, one bar per subject."""

    title: str
    unit: str
    groups: list[str]
    subjects: list[str]
    #: subject -> one value per group; None where the subject lacks the figure.
    values: dict[str, list[float | None]]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def bench_medians(data: Any) -> Mapping[str, Any]:
    """The subject -> figures object of ``--json``, or the ``medians`` of an ``--output`` file."""
    if not isinstance(data, Mapping):
        raise PlotError("bench input: expected one JSON object of subject -> figures")
    medians = data.get("medians")
    return medians if isinstance(medians, Mapping) else data


def bench_subjects(data: Mapping[str, Any]) -> list[str]:
    """The subjects of a bench result, known ones first in their usual order."""
    found = [k for k, v in data.items() if isinstance(v, Mapping)]
    ordered = [s for s in SUBJECT_LABELS if s in found] + [s for s in found if s not in SUBJECT_LABELS]
    if not ordered:
        raise PlotError("bench input: no subject with figures (keys: "
                        f"{', '.join(map(str, data)) or 'none'})")
    return ordered


def bench_panels(data: Any, specs: Sequence[PanelSpec] = PANELS) -> list[Panel]:
    """The panels worth drawing: figures nobody has and subjects without a value are left out."""
    data = bench_medians(data)
    subjects = bench_subjects(data)
    panels = []
    for spec in specs:
        table = {s: [_number(data[s].get(name)) for name, _ in spec.figures] for s in subjects}
        keep = [i for i in range(len(spec.figures)) if any(table[s][i] is not None for s in subjects)]
        if not keep:
            continue
        values = {s: [table[s][i] for i in keep] for s in subjects
                  if any(table[s][i] is not None for i in keep)}
        panels.append(Panel(spec.title, spec.unit, [spec.figures[i][1] for i in keep],
                            list(values), values))
    if not panels:
        raise PlotError("bench input: none of the known figures "
                        f"({', '.join(n for s in specs for n, _ in s.figures)})")
    return panels


def format_value(value: float) -> str:
    """A bar label: whole numbers from 100 up, three significant digits below."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


@dataclasses.dataclass(frozen=True)
class DrillSeries:
    """One driver's timeline, times in seconds from the drop."""

    driver: str
    label: str
    bucket_s: float
    starts: list[float]
    completed: list[int]
    failed: list[int]
    restored_at: float
    outage: float
    outage_from: float
    outage_to: float
    recovered: bool
    #: When answers flowed again for good (None: never, or not in the input).
    steady_again: float | None = None

    @property
    def failed_total(self) -> int:
        return sum(self.failed)

    @property
    def stop_and_go(self) -> bool:
        """Whether answers stalled again after the longest gap ended."""
        return self.steady_again is not None and self.steady_again - self.outage_to > self.bucket_s

    def annotation(self) -> str:
        outage = f"{self.outage:.1f} s" if self.recovered else f"> {self.outage:.1f} s"
        calls = "call" if self.failed_total == 1 else "calls"
        text = f"outage {outage}, {self.failed_total} failed {calls}"
        if self.stop_and_go:
            text += f"\nsteady again after {self.steady_again:.1f} s"
        return text


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def drill_series(data: Mapping[str, Any]) -> list[DrillSeries]:
    """The drivers of a drill timeline, in the order they ran."""
    drivers = data.get("drivers") if isinstance(data, Mapping) else None
    if not isinstance(drivers, Mapping) or not drivers:
        raise PlotError("drill input: expected an object with a non-empty 'drivers' object")
    series = []
    for driver, timeline in drivers.items():
        try:
            starts = [float(t) for t in timeline["bucket_starts_s"]]
            completed = [int(n) for n in timeline["completed"]]
            failed = [int(n) for n in timeline.get("failed_per_bucket", [0] * len(completed))]
            if not len(starts) == len(completed) == len(failed):
                raise ValueError("bucket lists of different lengths")
            series.append(DrillSeries(
                driver=driver, label=DRIVER_LABELS.get(driver, f"{driver}://"),
                bucket_s=float(timeline["bucket_s"]), starts=starts, completed=completed,
                failed=failed, restored_at=float(timeline["restored_at_s"]),
                outage=float(timeline["outage_s"]), outage_from=float(timeline["outage_from_s"]),
                outage_to=float(timeline["outage_to_s"]), recovered=bool(timeline["recovered"]),
                steady_again=_optional_float(timeline.get("steady_again_s"))))
        except (KeyError, TypeError, ValueError) as exc:
            raise PlotError(f"drill input: driver {driver!r}: {exc!r}") from exc
    return series


def drill_title(data: Mapping[str, Any]) -> str:
    settings = data.get("settings", {})
    parts = ["Silent drop of the RPC server's connections"]
    if "heartbeat_timeout_threshold" in settings:
        parts.append(f"T = {settings['heartbeat_timeout_threshold']} s")
    if "call_timeout_s" in settings:
        parts.append(f"call timeout {settings['call_timeout_s']:g} s")
    return ", ".join(parts)


# -- drawing --------------------------------------------------------------------------------


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend; PlotError if matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as exc:
        raise PlotError("drawing needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def rows_of(panels: Sequence[Panel], max_groups: int = 5) -> list[list[Panel]]:
    """Panels packed in order into rows of at most ``max_groups`` bar groups (one panel at least)."""
    rows: list[list[Panel]] = []
    for panel in panels:
        if rows and sum(len(p.groups) for p in rows[-1]) + len(panel.groups) <= max_groups:
            rows[-1].append(panel)
        else:
            rows.append([panel])
    return rows


def draw_bench(panels: Sequence[Panel], output: str) -> None:
    plt = pyplot()
    rows = rows_of(panels)
    fig = plt.figure(figsize=(11, 3.6 * len(rows) + 0.5), layout="constrained")
    row_figs = fig.subfigures(len(rows), 1, squeeze=False)[:, 0]
    handles: dict[str, Any] = {}
    for row_fig, row in zip(row_figs, rows, strict=True):
        axes = row_fig.subplots(1, len(row), squeeze=False,
                                width_ratios=[len(p.groups) + 0.5 for p in row])[0]
        for ax, panel in zip(axes, row, strict=True):
            draw_panel(ax, panel)
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=len(handles),
               fontsize=9, frameon=False)
    fig.savefig(output, dpi=110)
    plt.close(fig)


def draw_panel(ax: Any, panel: Panel) -> None:
    count = len(panel.subjects)
    width = min(0.8 / count, 0.35)
    for index, subject in enumerate(panel.subjects):
        xs, heights = [], []
        for group, value in enumerate(panel.values[subject]):
            if value is not None:
                xs.append(group + width * (index - (count - 1) / 2))
                heights.append(value)
        bars = ax.bar(xs, heights, width, label=SUBJECT_LABELS.get(subject, subject),
                      color=SUBJECT_COLOURS.get(subject))
        ax.bar_label(bars, labels=[format_value(h) for h in heights], rotation=90, padding=2,
                     fontsize=7)
    ax.set_title(panel.title)
    ax.set_ylabel(panel.unit)
    ax.set_xticks(range(len(panel.groups)), panel.groups, fontsize=8)
    ax.set_xlim(-0.5, len(panel.groups) - 0.5)
    ax.margins(y=0.2)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def draw_drill(series: Sequence[DrillSeries], title: str, output: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(len(series), 1, figsize=(10, 2.9 * len(series) + 0.6), sharex=True,
                             sharey=True, squeeze=False)
    top = max((max(s.completed, default=0) for s in series), default=0) or 1
    for ax, one in zip(axes[:, 0], series, strict=True):
        ax.bar(one.starts, one.completed, width=one.bucket_s, align="edge", linewidth=0,
               color=DRIVER_COLOURS.get(one.driver, "#1f77b4"), label="answered calls per 100 ms")
        ax.axvspan(0, one.restored_at, color="#d62728", alpha=0.08, label="connections dropped")
        ax.axvline(0, color="#d62728", linewidth=1)
        failed_at = [t + one.bucket_s / 2 for t, n in zip(one.starts, one.failed, strict=True) if n]
        if failed_at:
            ax.plot(failed_at, [top * 0.05] * len(failed_at), "x", color="#d62728", markersize=8,
                    markeredgewidth=2, label="failed call")
        y = top * 1.12
        ax.annotate("", xy=(one.outage_to, y), xytext=(one.outage_from, y),
                    arrowprops={"arrowstyle": "<->", "color": "black", "linewidth": 1})
        ax.text(one.outage_from, y * 1.04, one.annotation(), ha="left", va="bottom", fontsize=9)
        if one.stop_and_go:
            ax.axvline(one.steady_again, color="black", linestyle=":", linewidth=1,
                       label="steady again")
        ax.set_title(one.label, loc="left", fontsize=10)
        ax.set_ylabel("answered / 100 ms")
        ax.set_ylim(0, top * 1.5)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    axes[-1, 0].set_xlabel("seconds from the silent drop")
    axes[-1, 0].set_xlim(min(s.starts[0] for s in series if s.starts),
                         max(s.starts[-1] + s.bucket_s for s in series if s.starts))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)


def load(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as source:
            return json.load(source)
    except (OSError, json.JSONDecodeError) as exc:
        raise PlotError(f"cannot read {path}: {exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plot_results",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["bench", "drill"], help="what the input holds")
    parser.add_argument("--input", required=True, help="JSON file")
    parser.add_argument("--output", required=True, help="PNG file written")
    args = parser.parse_args(argv)
    try:
        data = load(args.input)
        if args.kind == "bench":
            draw_bench(bench_panels(data), args.output)
        else:
            draw_drill(drill_series(data), drill_title(data), args.output)
    except PlotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

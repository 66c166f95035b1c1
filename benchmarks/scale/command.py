"""``rabbit-ha bench --scale``: rounds of every part for every subject, medians, targets, plots.

:func:`run_scale` takes its side effects as arguments (the process runner,
the broker probe, the output streams, the date, the plotter), so the command
is tested with canned child output and no broker. Each run is a child process
(``python -m benchmarks.scale.PART SUBJECT URL ...``) started by a
:data:`~benchmarks.bench.rounds.Runner`; the real one,
:func:`~benchmarks.bench.rounds.run_process`, kills a child (and everything it
started) that outlives its timeout.

Round ``r`` runs the parts in the order :func:`round_plan` gives: the parts
rotated by one each round, and within each part its subjects rotated by one
each round (:func:`~benchmarks.bench.rounds.round_orders`). A part with fewer
rounds (``--footprint-runs`` and the like) sits out the later rounds.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from benchmarks.bench import rounds
from benchmarks.bench.command import probe_broker, versions
from benchmarks.scale import report
from benchmarks.scale.report import PART_SUBJECTS, PARTS, SCALE_SUBJECTS, ScaleRun
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.settings import parse_transport_url

#: Seconds a run of each part may take before it is killed: (fixed, per second of ``--*-seconds``).
#: footprint starts up to 50 services more than once and waits for queues to expire.
PART_TIMEOUTS: dict[str, tuple[float, float]] = {
    "footprint": (1800.0, 0.0),
    "curves": (600.0, 30.0),  # up to 11 points of --seconds each, with warm-ups
    "idle": (1200.0, 8.0),  # up to 2000 connections opened per point, 4 points of --seconds
}
#: The ``--seconds`` a part's program takes when it is not given one.
DEFAULT_PART_SECONDS = {"curves": 2.0, "idle": 20.0}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class ScaleOptions:
    """What ``rabbit-ha bench --scale`` was asked to do; None: the part program's default."""

    url: str
    runs: int = 5
    #: Rounds of one part instead of ``runs``.
    part_runs: Mapping[str, int] = dataclasses.field(default_factory=dict)
    parts: tuple[str, ...] = PARTS
    subjects: tuple[str, ...] = SCALE_SUBJECTS
    footprint_counts: tuple[int, ...] | None = None
    storm: bool | None = None
    curves: tuple[str, ...] | None = None
    curves_seconds: float | None = None
    idle_counts: tuple[int, ...] | None = None
    idle_seconds: float | None = None
    #: Seconds any run may take (default: :data:`PART_TIMEOUTS`).
    run_timeout: float | None = None
    json: bool = False
    output: str | None = None
    plots: str | None = None

    def runs_of(self, part: str) -> int:
        return self.part_runs.get(part, self.runs)


def part_argv(part: str, subject: str, url: str, options: ScaleOptions,
              python: str = sys.executable) -> list[str]:
    """The command line of one run of ``part`` for ``subject``."""
    argv = [python, "-m", f"benchmarks.scale.{part}", subject, url]
    if part == "footprint":
        if options.footprint_counts:
            argv += ["--counts", ",".join(map(str, options.footprint_counts))]
        if options.storm is not None:
            argv.append("--storm" if options.storm else "--no-storm")
    elif part == "curves":
        if options.curves:
            argv += ["--curves", ",".join(options.curves)]
        if options.curves_seconds is not None:
            argv += ["--seconds", f"{options.curves_seconds:g}"]
    elif part == "idle":
        if options.idle_counts:
            argv += ["--counts", ",".join(map(str, options.idle_counts))]
        if options.idle_seconds is not None:
            argv += ["--seconds", f"{options.idle_seconds:g}"]
    return argv


def part_timeout(part: str, options: ScaleOptions) -> float:
    if options.run_timeout is not None:
        return options.run_timeout
    fixed, per_second = PART_TIMEOUTS[part]
    seconds = {"curves": options.curves_seconds, "idle": options.idle_seconds}.get(part)
    if seconds is None:
        seconds = DEFAULT_PART_SECONDS.get(part, 0.0)
    return fixed + per_second * seconds


def round_plan(part_subjects: Mapping[str, Sequence[str]],
               part_runs: Mapping[str, int]) -> list[list[tuple[str, str]]]:
    """The (part, subject) runs of each round, in order.

    The parts turn by one each round, and so do the subjects within each
    part, each part counting its own rounds; a part runs in its first
    ``part_runs[part]`` rounds only.
    """
    parts = [p for p in part_subjects if part_subjects[p] and part_runs.get(p, 0) > 0]
    total = max((part_runs[p] for p in parts), default=0)
    subject_orders = {p: rounds.round_orders(part_subjects[p], part_runs[p]) for p in parts}
    plan = []
    for index, order in enumerate(rounds.round_orders(parts, total)):
        plan.append([(part, subject) for part in order if index < part_runs[part]
                     for subject in subject_orders[part][index]])
    return plan


def run_one(part: str, subject: str, round_: int, url: str, options: ScaleOptions,
            runner: rounds.Runner) -> ScaleRun:
    """One run; a failure becomes a run without figures whose error has the stderr tail."""
    timeout = part_timeout(part, options)
    completed = runner(part_argv(part, subject, url, options), timeout)
    problem = ""
    if completed.returncode == 0:
        try:
            figures = report.parse_curves(completed.stdout)
        except ValueError as error:
            problem = str(error)
        else:
            return ScaleRun(part, subject, round_, figures, seconds=completed.seconds)
    return ScaleRun(part, subject, round_, None, rounds.describe_failure(completed, timeout, problem),
                    completed.seconds)


def run_rounds(options: ScaleOptions, part_subjects: Mapping[str, Sequence[str]],
               runner: rounds.Runner, progress: Callable[[str], None]) -> list[ScaleRun]:
    runs_of = {part: options.runs_of(part) for part in part_subjects}
    plan = round_plan(part_subjects, runs_of)
    results = []
    for index, order in enumerate(plan):
        round_ = index + 1
        for part, subject in order:
            result = run_one(part, subject, round_, options.url, options, runner)
            results.append(result)
            where = f"round {round_}/{len(plan)}: {part} {subject}"
            if result.ok:
                progress(f"{where} ok in {result.seconds:.1f}s")
            else:
                progress(f"{where} FAILED after {result.seconds:.1f}s: {result.error}")
    return results


def _settings(options: ScaleOptions, runs_of: Mapping[str, int]) -> dict[str, Any]:
    return {"runs": dict(runs_of), "parts": list(runs_of), "subjects": list(options.subjects),
            "footprint_counts": None if options.footprint_counts is None else list(options.footprint_counts),
            "storm": options.storm, "curves": None if options.curves is None else list(options.curves),
            "curves_seconds": options.curves_seconds,
            "idle_counts": None if options.idle_counts is None else list(options.idle_counts),
            "idle_seconds": options.idle_seconds,
            "timeouts": {part: part_timeout(part, options) for part in runs_of}}


def _draw(document: Mapping[str, Any], directory: str) -> list[str]:
    from benchmarks.scale import plots

    return plots.write_plots(document, directory)


def run_scale(options: ScaleOptions, *, runner: rounds.Runner = rounds.run_process,
              probe: Callable[[str], str | None] = probe_broker,
              find_spec: Callable[[str], Any] = importlib.util.find_spec,
              date: Callable[[], str] = _now,
              plot: Callable[[Mapping[str, Any], str], list[str]] = _draw,
              out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The command: 0 when every run produced its figures (and the plots were drawn), 1 otherwise.

    A missed target does not change the exit status: the figures depend on
    the machine and the broker, and are for people to read.
    """
    out = out or sys.stdout
    err = err or sys.stderr

    def progress(line: str) -> None:
        print(line, file=err, flush=True)

    parsed = parse_transport_url(options.url, option="--url")
    url = parsed.redacted()
    if parsed.is_memory:
        raise exc.ConfigurationError("--url", options.url,
                                     "the scale bench measures RabbitMQ clients and needs a RabbitMQ broker")
    unavailable = rounds.unavailable_subjects(options.subjects, find_spec)
    for subject, reason in unavailable.items():
        progress(f"{subject}: unavailable, {reason}")
    subjects = [s for s in options.subjects if s not in unavailable]
    part_subjects = {part: [s for s in subjects if s in PART_SUBJECTS[part]] for part in options.parts}
    unmeasured = [s for s in subjects if not any(s in mine for mine in part_subjects.values())]
    if unmeasured:
        progress(f"not measured by {', '.join(options.parts)}: {', '.join(unmeasured)}")
    for part, mine in part_subjects.items():
        if not mine:
            progress(f"{part}: none of the selected subjects ({', '.join(PART_SUBJECTS[part])}) "
                     "can run; skipped")
    part_subjects = {part: mine for part, mine in part_subjects.items() if mine}
    runs_of = {part: options.runs_of(part) for part in part_subjects}
    if part_subjects:
        problem = probe(options.url)
        if problem is not None:
            progress(f"rabbit-ha bench --scale: cannot reach the broker at {url}: {problem}\n"
                     "Start the test cluster from a checkout of rabbit_ha_driver with "
                     "`python tools/rabbit_cluster.py start` (its first node is the default "
                     "URL), or give another broker with --url.")
            return 1
    described = "; ".join(f"{part} x {runs_of[part]}: {', '.join(mine)}"
                          for part, mine in part_subjects.items())
    progress(f"rabbit-ha bench --scale on {url}: {described or 'nothing to run'}; "
             "each run in a process of its own")
    results = run_rounds(options, part_subjects, runner, progress)
    failed = any(not r.ok for r in results)
    document = report.full_json(url=url, date=date(), versions=versions(),
                                settings=_settings(options, runs_of), results=results,
                                unavailable=unavailable)
    if options.json:
        json.dump(document["medians"], out, indent=2)
        out.write("\n")
    else:
        for line in report.text_report(url=url, runs_of=runs_of, subjects=subjects, results=results,
                                       unavailable=unavailable):
            print(line, file=out)
    out.flush()
    if options.output is not None:
        try:
            with open(options.output, "w", encoding="utf-8") as file:
                json.dump(document, file, indent=2)
                file.write("\n")
        except OSError as error:
            progress(f"rabbit-ha bench --scale: cannot write {options.output}: {error}")
            return 1
        progress(f"figures of every run written to {options.output}")
    if options.plots is not None:
        try:
            written = plot(document, options.plots)
        except Exception as error:  # a plot is a bonus: say why, keep the figures
            progress(f"rabbit-ha bench --scale: no plots in {options.plots}: "
                     f"{type(error).__name__}: {error}")
            return 1
        progress(f"{len(written)} plot(s) written to {options.plots}")
    return 1 if failed else 0


# -- parsing the command line's lists ------------------------------------------------------


def parse_names(text: str, known: Sequence[str], what: str) -> tuple[str, ...]:
    """``a,b,...`` as names from ``known``, in the order given; ValueError names a bad one."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"no {what} given; choose from {', '.join(known)}")
    for name in names:
        if name not in known:
            raise ValueError(f"unknown {what} {name!r}; choose from {', '.join(known)}")
    return tuple(dict.fromkeys(names))


def parse_parts(text: str) -> tuple[str, ...]:
    return parse_names(text, PARTS, "part")


def parse_curve_names(text: str) -> tuple[str, ...]:
    return parse_names(text, [c for c, (part, _, _) in report.CURVES.items() if part == "curves"],
                       "curve")


def parse_counts(text: str) -> tuple[int, ...]:
    """``10,50`` as counts of at least 1, in increasing order; ValueError names a bad one."""
    counts = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        try:
            count = int(item)
        except ValueError:
            raise ValueError(f"{item!r} is not a whole number") from None
        if count < 1:
            raise ValueError(f"{item!r}: a count is at least 1")
        counts.append(count)
    if not counts:
        raise ValueError("no count given")
    return tuple(sorted(set(counts)))

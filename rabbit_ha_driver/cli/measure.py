"""``rabbit-ha bench``: the command line of the benchmark in the source checkout.

The benchmark compares this library with oslo.messaging's rabbit driver, its
fake driver and bare py-amqp on one broker (by default the first node of the
test cluster ``tools/rabbit_cluster.py`` starts); the docstring of the
checkout's ``benchmarks/bench/__init__.py`` explains how. It takes ``--url``
but no configuration file: every subject runs with its defaults, so they are
compared on equal terms.

The benchmark is not in the installed package (it reaches into
oslo.messaging's driver internals and is a development tool): it lives
beside the package, in the checkout's ``benchmarks/`` folder.
:func:`add_parser` imports it from the checkout that holds this package (an
editable install, or a run from the checkout). Where there is none, as in an
installed wheel, ``bench`` is a stand-in that takes any arguments and exits 1
with one line saying where the benchmarks are and how to run them.

``bench --scale`` runs the cost-at-scale bench instead (the checkout's
``benchmarks/scale/``): the broker's footprint per idle service and a restart
storm, throughput as concurrency, payload size and fanout grow, and the cost
of many idle connections in one process (``--parts``). Its own options
(``--parts``, ``--footprint-runs``, ``--idle-counts``, ``--plots`` and the
others of :data:`SCALE_OPTIONS`) are refused without ``--scale``;
``--heartbeat-seconds`` is ignored with it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.cli._common import PROG, seconds

#: The benchmark's command, in the checkout's ``benchmarks`` folder.
BENCH_MODULE = "benchmarks.bench.command"

HELP = "compare calls, casts, memory and heartbeat cost with oslo.messaging and py-amqp"

UNAVAILABLE = (f"{PROG} bench: the benchmarks live in the source checkout of rabbit_ha_driver "
               "(benchmarks/), not in the installed package; run them from a checkout: "
               "`pip install -e '.[oslo]'` then `rabbit-ha bench`, or `tox -e bench`")


def _import_benchmarks() -> bool:
    """Import :data:`BENCH_MODULE` from the checkout; False when it is not there."""
    checkout = Path(__file__).resolve().parents[2]  # <checkout>/rabbit_ha_driver/cli/measure.py
    # Appended, not prepended: the checkout's other folders must not shadow anything.
    if (checkout / "benchmarks" / "bench").is_dir() and str(checkout) not in sys.path:
        sys.path.append(str(checkout))
    try:
        importlib.import_module(BENCH_MODULE)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if not (missing == BENCH_MODULE or BENCH_MODULE.startswith(f"{missing}.")):
            raise  # the benchmark is here but lacks a dependency: its own error says which
        return False
    return True


def _add_stand_in(subparsers: Any) -> None:
    # No option prefix and no --help: whatever follows "bench" is taken as
    # is, so every invocation ends with the one line of _unavailable.
    parser = subparsers.add_parser("bench", help=HELP, add_help=False, prefix_chars="\0")
    parser.add_argument("ignored", nargs="*", help=argparse.SUPPRESS)
    parser.set_defaults(run=_unavailable, verbose=0)


def _unavailable(args: argparse.Namespace) -> int:
    print(UNAVAILABLE, file=sys.stderr)
    return 1


def _subjects(value: str) -> tuple[str, ...]:
    """argparse type: comma-separated subject names."""
    from benchmarks.bench.command import parse_subjects

    try:
        return parse_subjects(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _runs(value: str) -> int:
    """argparse type: a number of runs, at least 1."""
    try:
        runs = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if runs < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: at least 1 run")
    return runs


def _seconds_or_zero(value: str) -> float:
    """argparse type: 0 (skip) or a positive number of seconds."""
    try:
        if float(value) == 0:
            return 0.0
    except ValueError:
        pass  # seconds() names the problem
    return seconds(value)


def _list_of(parse_name: str) -> Any:
    """argparse type: a comma-separated list parsed by ``benchmarks.scale.command.<parse_name>``."""

    def parse(value: str) -> tuple[Any, ...]:
        from benchmarks.scale import command

        try:
            parsed: tuple[Any, ...] = getattr(command, parse_name)(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return parsed

    parse.__name__ = parse_name  # argparse names the type in its messages
    return parse


#: Options of ``--scale`` alone (argparse destinations), refused without it.
SCALE_OPTIONS = ("parts", "footprint_runs", "curves_runs", "idle_runs", "footprint_counts", "no_storm",
                 "curves", "curves_seconds", "idle_counts", "idle_seconds", "run_timeout", "plots")


def _add_scale_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "cost at scale (--scale)",
        "With --scale the bench measures the cost of many services instead: the broker's "
        "footprint per idle service and a restart storm of 50 (part footprint; it reads the "
        "broker's totals, so nothing else may run on that broker), throughput as client "
        "threads, payload size and fanout servers grow (part curves), and the CPU and memory "
        "of up to 2000 idle connections in one process (part idle). --runs rounds of every "
        "part and subject, each run a process of its own, rotated each round; a table per "
        "curve (median [min..max]) and the targets (PASS/MISS/n/a, with the per-round ratios). "
        "--url, --runs, --subjects, --json and --output apply; --seconds and "
        "--heartbeat-seconds do not.")
    group.add_argument("--scale", action="store_true", help="run the cost-at-scale bench")
    group.add_argument("--parts", type=_list_of("parse_parts"), metavar="A,B,...",
                       help="the parts to run (default: all: footprint,curves,idle)")
    for part in ("footprint", "curves", "idle"):
        group.add_argument(f"--{part}-runs", type=_runs, metavar="N",
                           help=f"rounds of the {part} part (default: --runs)")
    group.add_argument("--footprint-counts", type=_list_of("parse_counts"), metavar="N,N",
                       help="services of each footprint point (default: the part's own, 10,50)")
    group.add_argument("--no-storm", action="store_true",
                       help="leave the restart storm out of the footprint part")
    group.add_argument("--curves", type=_list_of("parse_curve_names"), metavar="A,B,...",
                       help="the curves of the curves part (default: concurrency,size,fanout)")
    group.add_argument("--curves-seconds", type=seconds, metavar="SECONDS",
                       help="timed phase of each point of the curves part (default: the part's own)")
    group.add_argument("--idle-counts", type=_list_of("parse_counts"), metavar="N,N",
                       help="idle connections of each idle point (default: the part's own, "
                       "10,100,1000,2000)")
    group.add_argument("--idle-seconds", type=seconds, metavar="SECONDS",
                       help="CPU window of each point of the idle part (default: the part's own)")
    group.add_argument("--run-timeout", type=seconds, metavar="SECONDS",
                       help="kill a run of any part after SECONDS (default: per part, from 10 "
                       "to 30 minutes)")
    group.add_argument("--plots", metavar="DIR",
                       help="after the run, draw one PNG per curve and figure into DIR "
                       "(needs matplotlib)")


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``bench``; where the benchmark is not here, a stand-in that says where it is."""
    if not _import_benchmarks():
        _add_stand_in(subparsers)
        return
    from benchmarks.bench.command import DEFAULT_BASE_PORT, SUBJECTS

    parser = subparsers.add_parser(
        "bench",
        help=HELP,
        description="Benchmark this library (rabbit_ha), its oslo.messaging driver "
        "(rabbit_ha_oslo), oslo.messaging's rabbit driver (oslo_rabbit), bare py-amqp "
        "(bare_amqp) and oslo.messaging's in-process fake driver (oslo_fake) on one "
        "broker. Every run of a subject is a process of its own; --runs rounds run "
        "every subject once, in an order rotated each round, and each figure is the "
        "median of the runs. Then the heartbeat CPU of 200 idle connections of this "
        "library. Prints a table of the medians and the ratios against the targets "
        "(PASS/MISS). Progress goes to stderr. Exits 1 if a run failed; a missed "
        "target does not change the exit status. With --scale it measures the cost at "
        "scale instead (see its options below).")
    parser.add_argument(
        "--url", metavar="URL",
        help="the broker, e.g. rabbit://user:pass@host:5672/ (only its first host is "
        "used by bare_amqp and the heartbeat figure; default: the first node of the test "
        f"cluster, rabbit://guest:guest@127.0.0.1:{DEFAULT_BASE_PORT}/, or the port in "
        "RHA_TEST_BASE_PORT)")
    parser.add_argument("--runs", type=_runs, default=5, metavar="N",
                        help="rounds, and heartbeat windows (default: 5; the targets need 5 or more)")
    parser.add_argument("--seconds", type=seconds, default=2.0, metavar="SECONDS",
                        help="length of each timed phase of a run (default: 2)")
    parser.add_argument("--heartbeat-seconds", type=_seconds_or_zero, default=60.0, metavar="SECONDS",
                        help="length of each heartbeat window (default: 60; 0 skips the "
                        "heartbeat figure)")
    parser.add_argument("--subjects", type=_subjects, default=SUBJECTS, metavar="A,B,...",
                        help=f"the subjects to run (default: all: {','.join(SUBJECTS)})")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of the table: each subject's "
                        "figure medians under the subject's name")
    parser.add_argument("--output", metavar="FILE",
                        help="also write every run's figures, the spread, the ratios, the "
                        "date and the versions of the clients to FILE as JSON")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log this process's activity to stderr (-vv: debug)")
    _add_scale_options(parser)
    parser.set_defaults(run=_bench_from_args)


def _bench_from_args(args: argparse.Namespace) -> int:
    from benchmarks.bench.command import BenchOptions, default_url, run_bench

    if args.scale:
        return _scale_from_args(args)
    for name in SCALE_OPTIONS:
        if getattr(args, name) not in (None, False):
            value = getattr(args, name)
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            raise exc.ConfigurationError("--" + name.replace("_", "-"), shown,
                                         "this option of the scale bench needs --scale")

    options = BenchOptions(url=args.url or default_url(), runs=args.runs, seconds=args.seconds,
                           heartbeat_seconds=args.heartbeat_seconds, subjects=tuple(args.subjects),
                           json=args.json, output=args.output)
    return run_bench(options)


def _scale_from_args(args: argparse.Namespace) -> int:
    from benchmarks.bench.command import SUBJECTS, default_url
    from benchmarks.scale.command import ScaleOptions, run_scale
    from benchmarks.scale.report import PARTS, SCALE_SUBJECTS

    # The default of --subjects is the bench's five; the scale bench's are its four.
    subjects = SCALE_SUBJECTS if tuple(args.subjects) == tuple(SUBJECTS) else tuple(args.subjects)
    part_runs = {part: getattr(args, f"{part}_runs") for part in PARTS
                 if getattr(args, f"{part}_runs") is not None}
    options = ScaleOptions(
        url=args.url or default_url(), runs=args.runs, part_runs=part_runs,
        parts=tuple(args.parts or PARTS), subjects=subjects,
        footprint_counts=args.footprint_counts, storm=False if args.no_storm else None,
        curves=args.curves, curves_seconds=args.curves_seconds, idle_counts=args.idle_counts,
        idle_seconds=args.idle_seconds, run_timeout=args.run_timeout, json=args.json,
        output=args.output, plots=args.plots)
    return run_scale(options)

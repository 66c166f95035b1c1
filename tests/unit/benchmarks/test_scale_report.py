"""The scale bench's pure parts: parsing a part's output, medians, per-round ratios, targets."""

from __future__ import annotations

import json

import pytest

from benchmarks.bench.report import FigureStats
from benchmarks.scale import report
from benchmarks.scale.report import Point, ScaleRun, ScaleTarget
from tests.unit.benchmarks.scale_canned import curves, footprint, idle


def run(part: str, subject: str, round_: int, figures: dict | None = None) -> ScaleRun:
    canned = {"footprint": footprint, "curves": curves, "idle": idle}[part]
    return ScaleRun(part, subject, round_, canned(subject, round_) if figures is None else figures)


# -- parsing ------------------------------------------------------------------------------------


def test_figures_come_from_the_last_line_of_stdout() -> None:
    stdout = 'progress\n{"concurrency": {"1": {"calls_per_s": 10}, "4": {"calls_per_s": 30.5}}}\n\n'
    assert report.parse_curves(stdout) == {"concurrency": {"1": {"calls_per_s": 10.0},
                                                           "4": {"calls_per_s": 30.5}}}


def test_null_and_non_finite_figures_are_left_out() -> None:
    stdout = '{"idle": {"10": {"cpu_percent": null, "rss_kb": NaN, "declared_dead": 0}, "100": {}}}'
    assert report.parse_curves(stdout) == {"idle": {"10": {"declared_dead": 0.0}}}


@pytest.mark.parametrize(("stdout", "problem"), [
    ("", "nothing on stdout"),
    ("Traceback\n", "not JSON"),
    ("[1]\n", "not a JSON object"),
    ('{"size": [1, 2]}', "curve 'size' is not an object"),
    ('{"size": {"100": 5}}', r"size\[100\] is not an object of figures"),
    ('{"size": {"100": {"calls_per_s": "fast"}}}', r"size\[100\]\.calls_per_s is not a number"),
    ('{"size": {"100": {"calls_per_s": true}}}', "is not a number"),
    ('{"size": {"100": {"calls_per_s": null}}}', "no figure"),
    ("{}", "no figure"),
])
def test_output_that_is_not_curves_of_figures_is_refused(stdout: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        report.parse_curves(stdout)


# -- medians ------------------------------------------------------------------------------------


def test_medians_min_max_and_count_leave_out_failed_runs_and_missing_figures() -> None:
    results = [
        run("curves", "rabbit_ha", 1, {"concurrency": {"64": {"calls_per_s": 100.0}}}),
        run("curves", "rabbit_ha", 2, {"concurrency": {"64": {"calls_per_s": 300.0},
                                                       "1": {"calls_per_s": 5.0}}}),
        ScaleRun("curves", "rabbit_ha", 3, None, "exit status 1"),
        run("curves", "rabbit_ha", 4, {"concurrency": {"64": {"calls_per_s": 250.0}}}),
        run("curves", "bare_amqp", 1, {"concurrency": {"64": {"calls_per_s": 400.0}}}),
    ]
    stats = report.aggregate(results)
    assert stats["concurrency"]["64"]["rabbit_ha"]["calls_per_s"] == FigureStats(250.0, 100.0, 300.0, 3)
    assert stats["concurrency"]["1"] == {"rabbit_ha": {"calls_per_s": FigureStats(5.0, 5.0, 5.0, 1)}}
    assert stats["concurrency"]["64"]["bare_amqp"]["calls_per_s"].count == 1
    assert report.runs_counted(results, "curves", "rabbit_ha") == (3, 4)
    assert report.runs_counted(results, "idle", "rabbit_ha") == (0, 0)


def test_medians_are_in_report_order() -> None:
    results = [run("idle", "oslo_rabbit", 1), run("curves", "bare_amqp", 1), run("curves", "rabbit_ha", 1),
               run("footprint", "rabbit_ha", 1)]
    table = report.medians(report.aggregate(results))
    assert list(table) == ["footprint_idle", "footprint_load", "storm", "concurrency", "size", "fanout",
                           "idle"]
    assert list(table["size"]) == ["100", "10000", "100000", "1000000"]  # numbers, not text order
    assert list(table["concurrency"]["64"]) == ["rabbit_ha", "bare_amqp"]
    assert list(table["footprint_idle"]["10"]["rabbit_ha"])[:2] == ["connections", "channels"]
    assert report.x_order(["b", "20", "3", "a"]) == ["3", "20", "a", "b"]


def test_by_round_keeps_each_rounds_values() -> None:
    results = [run("curves", "rabbit_ha", r) for r in (1, 2, 3)] + [run("curves", "bare_amqp", 2)]
    rounds = report.by_round(results)
    assert list(rounds) == [1, 2, 3]
    assert rounds[3]["concurrency"]["1"]["rabbit_ha"]["calls_per_s"] == pytest.approx(450.0)
    assert "bare_amqp" not in rounds[1]["concurrency"]["1"]


# -- targets ------------------------------------------------------------------------------------

TABLE = {"concurrency": {"64": {"rabbit_ha": {"calls_per_s": 900.0}, "bare_amqp": {"calls_per_s": 1000.0},
                                "oslo_rabbit": {"calls_per_s": 0.0}}},
         "idle": {"100": {"rabbit_ha": {"cpu_percent": 0.1}},
                  "2000": {"rabbit_ha": {"cpu_percent": 3.0}}},
         "storm": {"50": {"rabbit_ha": {"queues_left": 0.0, "slowest_answer_after_start_s": 12.5}}}}


def test_targets_pass_miss_or_cannot_be_judged() -> None:
    ratio = ScaleTarget("r", Point("concurrency", "64", "rabbit_ha", "calls_per_s"),
                        Point("concurrency", "64", "bare_amqp", "calls_per_s"), ">=", 0.8)
    assert ratio.value(TABLE) == pytest.approx(0.9)
    assert ratio.verdict(TABLE) == "PASS" and ratio.shown(TABLE) == "0.90x"
    assert ratio.goal == "target >= 0.8x"
    assert dataclass_replace(ratio, bound=0.95).verdict(TABLE) == "MISS"
    # a missing figure, and a zero denominator, cannot be judged
    assert dataclass_replace(ratio, theirs=Point("concurrency", "64", "rabbit_ha_oslo",
                                                 "calls_per_s")).verdict(TABLE) == "n/a"
    assert dataclass_replace(ratio, theirs=Point("concurrency", "64", "oslo_rabbit",
                                                 "calls_per_s")).shown(TABLE) == "-"
    alone = ScaleTarget("a", Point("idle", "2000", "rabbit_ha", "cpu_percent"), None, "<", 2.0)
    assert alone.verdict(TABLE) == "MISS" and alone.shown(TABLE) == "3.00 % of a core"
    assert alone.goal == "target < 2 % of a core"
    info = ScaleTarget("i", Point("storm", "50", "rabbit_ha", "slowest_answer_after_start_s"))
    assert info.verdict(TABLE) == "" and info.goal == "(no target)" and info.shown(TABLE) == "12.50 s"
    zero = ScaleTarget("z", Point("storm", "50", "rabbit_ha", "queues_left"), None, "==", 0.0)
    assert zero.verdict(TABLE) == "PASS" and zero.goal == "target == 0"


def dataclass_replace(target: ScaleTarget, **changes: object) -> ScaleTarget:
    import dataclasses

    return dataclasses.replace(target, **changes)  # type: ignore[arg-type]


def test_growth_is_the_figure_per_x_at_the_high_x_over_the_low() -> None:
    target = report.growth("g", "idle", "100", "2000", "cpu_percent", "rabbit_ha", "<=", 1.25)
    # (3.0 / 2000) / (0.1 / 100) = 1.5: faster than linear
    assert target.value(TABLE) == pytest.approx(1.5)
    assert target.verdict(TABLE) == "MISS"
    linear = {"idle": {"100": {"rabbit_ha": {"cpu_percent": 0.1}},
                       "2000": {"rabbit_ha": {"cpu_percent": 2.0}}}}
    assert target.value(linear) == pytest.approx(1.0) and target.verdict(linear) == "PASS"


def test_per_round_ratios_pair_the_runs_of_the_same_round() -> None:
    results = [run("curves", s, r) for r in (1, 2, 3, 4, 5) for s in ("rabbit_ha", "bare_amqp")]
    results.append(ScaleRun("curves", "bare_amqp", 6, None, "exit status 1"))
    results.append(run("curves", "rabbit_ha", 6))  # no bare_amqp in round 6: no ratio
    rounds = report.by_round(results)
    target = next(t for t in report.TARGETS if t.mine.curve == "concurrency")
    assert target.round_values(rounds) == pytest.approx({1: 0.9, 2: 0.9, 3: 0.45, 4: 0.9, 5: 0.9})
    assert target.rounds_held(rounds) == (4, 5)
    assert target.shown_rounds(rounds) == "0.45..0.90x (5), held in 4/5"
    table = report.medians(report.aggregate(results))
    assert target.shown(table) == "0.90x" and target.verdict(table) == "PASS"
    assert target.shown_rounds({}) == "-"


def test_the_targets_are_the_documented_ones() -> None:
    goals = {(t.mine.curve, t.mine.x, t.mine.subject, t.mine.figure,
              None if t.theirs is None else (t.theirs.x, t.theirs.subject), t.relation, t.bound)
             for t in report.TARGETS}
    assert goals == {
        *(("footprint_idle", n, "rabbit_ha", f, (n, "oslo_rabbit"), "<=", 0.5)
          for f in ("memory_bytes", "connections", "channels") for n in ("10", "50")),
        ("storm", "50", "rabbit_ha", "slowest_answer_after_imports_s", None, "<=", 10.0),
        ("storm", "50", "rabbit_ha_oslo", "slowest_answer_after_imports_s", None, "<=", 10.0),
        ("storm", "50", "rabbit_ha", "queues_left", None, "==", 0.0),
        ("storm", "50", "rabbit_ha_oslo", "queues_left", None, "==", 0.0),
        ("concurrency", "64", "rabbit_ha", "calls_per_s", ("64", "bare_amqp"), ">=", 0.8),
        ("size", "1000000", "rabbit_ha", "bytes_per_s", ("1000000", "bare_amqp"), ">=", 0.8),
        ("idle", "2000", "rabbit_ha", "cpu_percent", None, "<", 2.0),
        ("idle", "2000", "rabbit_ha", "cpu_percent", ("100", "rabbit_ha"), "<=", 1.25),
    }
    assert all(t.relation is None for t in report.INFORMATIONAL)
    shown_beside = {(t.mine.subject, t.mine.figure, t.mine.x) for t in report.INFORMATIONAL}
    assert ("rabbit_ha_oslo", "memory_bytes", "10") in shown_beside
    assert ("oslo_rabbit", "slowest_answer_after_start_s", "50") in shown_beside


def test_every_target_passes_on_the_canned_figures() -> None:
    results = [run(part, s, r) for r in (1, 2, 3, 4, 5)
               for part, subjects in report.PART_SUBJECTS.items() for s in subjects]
    table = report.medians(report.aggregate(results))
    assert report.tally(table) == {"PASS": len(report.TARGETS), "MISS": 0, "n/a": 0}
    assert report.tally({}) == {"PASS": 0, "MISS": 0, "n/a": len(report.TARGETS)}


# -- the text and the JSON ---------------------------------------------------------------------


def test_curve_tables_show_median_min_max_and_short_counts() -> None:
    results = [run("curves", s, r) for r in (1, 2, 3) for s in ("rabbit_ha", "bare_amqp")]
    results[-1] = ScaleRun("curves", "bare_amqp", 3, None, "killed")
    lines = report.curve_tables(report.aggregate(results), ["rabbit_ha", "bare_amqp"], {"curves": 3})
    start = lines.index("concurrency: calls as client threads grow; calls_per_s (calls/s)")
    header, one = lines[start + 1].split(), lines[start + 2]
    assert header == ["client", "threads", "rabbit_ha", "bare_amqp"]
    assert one.split()[0] == "1"
    assert "900 [450..900]" in one and "1,000 [1,000..1,000] n=2" in one
    assert "size: calls as the payload grows; bytes_per_s (MB/s)" in lines


def test_text_report_counts_runs_notes_few_rounds_and_lists_failures() -> None:
    results = [run("curves", "rabbit_ha", 1), ScaleRun("curves", "bare_amqp", 1, None, "exit status 1; boom")]
    lines = report.text_report(url="rabbit://u:***@h:1//", runs_of={"curves": 1},
                               subjects=["rabbit_ha", "bare_amqp"], results=results,
                               unavailable={"oslo_rabbit": "no oslo"})
    text = "\n".join(lines)
    assert lines[0] == "rabbit-ha bench --scale on rabbit://u:***@h:1//: curves (1 round)"
    assert "runs counted, curves: rabbit_ha 1/1, oslo_rabbit unavailable (no oslo), bare_amqp 0/1" in text
    assert "fewer than 5 rounds" in text
    assert "round 1, curves, bare_amqp: exit status 1; boom" in text
    verdicts = [line for line in lines if "64 client threads: rabbit_ha / bare_amqp" in line]
    assert len(verdicts) == 1 and verdicts[0].rstrip().endswith("n/a")


def test_full_json_has_every_run_medians_spread_targets_and_rounds() -> None:
    results = [run("idle", s, r) for r in (1, 2) for s in ("rabbit_ha", "oslo_rabbit")]
    doc = report.full_json(url="u", date="d", versions={"python": "3"}, settings={"runs": {"idle": 2}},
                           results=results, unavailable={})
    doc = json.loads(json.dumps(doc))  # plain JSON
    assert doc["settings"] == {"url": "u", "runs": {"idle": 2}}
    assert len(doc["runs"]) == 4 and doc["runs"][0]["figures"]["idle"]["10"]["rss_kb"] == 31000
    assert doc["medians"]["idle"]["2000"]["rabbit_ha"]["cpu_percent"] == pytest.approx(1.0)
    assert doc["spread"]["idle"]["2000"]["oslo_rabbit"]["cpu_percent"]["count"] == 2
    cpu = next(t for t in doc["targets"] if t["label"] == "CPU of 2000 idle connections: rabbit_ha")
    assert cpu["verdict"] == "PASS" and cpu["rounds"] == {"1": 1.0, "2": 1.0}
    assert cpu["rounds_held"] == [2, 2]
    assert {t["verdict"] for t in doc["informational"]} <= {"info", "n/a"}
    assert doc["tally"]["n/a"] == len(report.TARGETS) - 2


@pytest.mark.parametrize(("figure", "value", "text"), [
    ("calls_per_s", 3390.2, "3,390"), ("calls_per_s", 45.67, "45.7"), ("calls_per_s", 0.456, "0.46"),
    ("bytes_per_s", 2_500_000.0, "2.50"), ("memory_bytes", 102400.0, "100.0"),
    ("queues_left", 3.0, "3"), ("unknown", 1.23456, "1.235")])
def test_format_value_in_the_display_unit(figure: str, value: float, text: str) -> None:
    assert report.format_value(figure, value) == text


def test_the_targets_of_parts_not_run_are_left_out_of_the_text() -> None:
    results = [run("idle", s, 1) for s in ("rabbit_ha", "oslo_rabbit")]
    table = report.medians(report.aggregate(results))
    lines = report.target_lines(table, report.by_round(results), ["idle"])
    assert len(lines) == 1 + 2 + 3 + 1  # header, 2 targets, 3 shown beside, the count
    assert lines[-1] == f"targets: 2 pass, 0 miss, 0 n/a ({len(report.TARGETS) - 2} more of parts not run)"
    assert report.target_lines(table, {}, report.PARTS)[-1] == (
        f"targets: 2 pass, 0 miss, {len(report.TARGETS) - 2} n/a")

"""The scale bench's plots: charts shaped from canned JSON, and PNGs drawn where matplotlib is installed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.plot_results import SUBJECT_COLOURS, SUBJECT_LABELS, PlotError
from benchmarks.scale import plots, report
from benchmarks.scale.report import PART_SUBJECTS, ScaleRun
from tests.unit.benchmarks.scale_canned import CANNED

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def document(rounds: int = 3) -> dict[str, Any]:
    results = [ScaleRun(part, subject, r, CANNED[part](subject, r)) for r in range(1, rounds + 1)
               for part, subjects in PART_SUBJECTS.items() for subject in subjects]
    written: dict[str, Any] = json.loads(json.dumps(report.full_json(
        url="u", date="d", versions={}, settings={}, results=results, unavailable={})))
    return written


def chart(found: list[plots.Chart], name: str) -> plots.Chart:
    return next(c for c in found if c.filename == name)


def test_one_chart_per_curve_and_figure_with_the_spread() -> None:
    found = plots.charts(document())
    names = [c.filename for c in found]
    assert len(names) == len(set(names))
    assert names[:2] == ["footprint_idle_connections.png", "footprint_idle_channels.png"]
    assert {"concurrency_calls_per_s.png", "size_calls_per_s.png", "size_bytes_per_s.png",
            "fanout_casts_per_s.png", "idle_cpu_percent.png", "idle_rss_kb_per_connection.png",
            "storm_slowest_answer_after_start_s.png"} <= set(names)
    concurrency = chart(found, "concurrency_calls_per_s.png")
    assert concurrency.kind == "line" and concurrency.xs == ["1", "4", "16", "64"]
    assert concurrency.subjects == ["rabbit_ha", "rabbit_ha_oslo", "oslo_rabbit", "bare_amqp"]
    assert concurrency.values["rabbit_ha"][0] == pytest.approx((900.0, 450.0, 900.0))  # median, min, max
    assert concurrency.log_x and not concurrency.log_y  # 1..64 spans a decade; 300..8000 not two
    assert concurrency.y_label == "calls/s" and concurrency.x_label == "client threads"
    size = chart(found, "size_calls_per_s.png")
    assert size.log_x and size.log_y
    # bytes are drawn in the unit of the report (MB/s), idle services in KiB
    assert chart(found, "size_bytes_per_s.png").values["bare_amqp"][0] == pytest.approx((2.0, 2.0, 2.0))
    memory = chart(found, "footprint_idle_memory_bytes.png")
    assert memory.kind == "bars" and memory.xs == ["10", "50"] and not memory.log_x
    assert memory.y_label == "KiB per service"
    assert memory.values["oslo_rabbit"][0] == pytest.approx((302000 / 1024, 301000 / 1024, 303000 / 1024))
    idle = chart(found, "idle_cpu_percent.png")
    assert idle.subjects == ["rabbit_ha", "oslo_rabbit", "bare_amqp"] and idle.log_x
    assert not idle.log_y  # bare_amqp's 0 has no place on a log axis


def test_medians_alone_draw_without_error_bars() -> None:
    medians = {"medians": {"fanout": {"20": {"rabbit_ha": {"casts_per_s": 50.0}},
                                      "1": {"rabbit_ha": {"casts_per_s": 900, "other": "x"}}}}}
    (only,) = plots.charts(medians)
    assert only.xs == ["1", "20"] and only.values == {"rabbit_ha": [(900.0, 900.0, 900.0),
                                                                    (50.0, 50.0, 50.0)]}


def test_points_a_subject_lacks_are_left_out() -> None:
    data = {"spread": {"idle": {"10": {"rabbit_ha": {"rss_kb": {"median": 1.0, "low": 1.0, "high": 1.0}}},
                                "100": {"oslo_rabbit": {"rss_kb": {"median": 5.0}}},
                                "1000": {"oslo_rabbit": {}}}}}
    (only,) = plots.charts(data)
    assert only.xs == ["10", "100"]
    assert only.values == {"rabbit_ha": [(1.0, 1.0, 1.0), None], "oslo_rabbit": [None, (5.0, 5.0, 5.0)]}


@pytest.mark.parametrize("data", [[], {}, {"medians": {}}, {"spread": {"idle": {"10": {"rabbit_ha": {}}}}}])
def test_input_without_figures_is_refused(data: Any) -> None:
    with pytest.raises(PlotError, match="scale input"):
        plots.charts(data)


def test_the_subjects_look_as_in_the_bench_plots() -> None:
    assert set(report.SCALE_SUBJECTS) <= set(SUBJECT_LABELS) & set(SUBJECT_COLOURS)


def test_missing_matplotlib_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlotError, match="pip install matplotlib"):
        plots.write_plots(document(1), str(tmp_path))


def test_main_reports_unreadable_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert plots.main(["--input", str(tmp_path / "missing.json"), "--output-dir", str(tmp_path)]) == 2
    assert "error: cannot read" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="drawing needs matplotlib (pip install matplotlib)")
def test_main_writes_one_png_per_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "scale.json"
    doc = document()
    # keep the drawing short: one line chart, one bar chart
    doc["spread"] = {"concurrency": doc["spread"]["concurrency"], "storm": doc["spread"]["storm"]}
    source.write_text(json.dumps(doc), encoding="utf-8")
    out = tmp_path / "made" / "here"
    assert plots.main(["--input", str(source), "--output-dir", str(out), "--note", "PLACEHOLDER"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert "concurrency_calls_per_s.png" in written and "storm_queues_left.png" in written
    assert len(written) == 1 + 9  # one concurrency chart, one per storm figure
    assert all((out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in written)
    assert capsys.readouterr().out.count("wrote ") == len(written)

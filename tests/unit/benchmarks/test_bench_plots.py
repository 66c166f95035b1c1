"""The pure parts of the drill timeline and of the plots: no broker, no drawing, no waiting."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import drill_timeline as dt
from benchmarks import plot_results as pr

# -- drill_timeline: URLs ----------------------------------------------------------------------

CLUSTER = "rabbit://guest:guest@127.0.0.1:29672,guest:secret@127.0.0.1:29673/"


def test_broker_addresses_of_every_host_with_the_default_port() -> None:
    assert dt.broker_addresses(CLUSTER) == [("127.0.0.1", 29672), ("127.0.0.1", 29673)]
    assert dt.broker_addresses("rabbit://u:p@127.0.0.2/vhost?x=1") == [("127.0.0.2", 5672)]
    with pytest.raises(ValueError):
        dt.broker_addresses("127.0.0.1:5672")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.5.6.7"])
def test_loopback_hosts_are_accepted(host: str) -> None:
    dt.check_loopback([(host, 5672)])


@pytest.mark.parametrize("host", ["10.0.0.1", "localhost", "::1", "rabbit.example"])
def test_other_hosts_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
        dt.check_loopback([("127.0.0.1", 5672), (host, 5672)])


def test_scheme_url_sets_the_scheme_and_the_threshold() -> None:
    assert (dt.scheme_url("rabbit://u:p@127.0.0.1:1", "rabbit-ha", 3)
            == "rabbit-ha://u:p@127.0.0.1:1/?heartbeat_timeout_threshold=3")
    assert (dt.scheme_url("rabbit-ha://u:p@127.0.0.1:1/v?a=1&heartbeat_timeout_threshold=60",
                          "rabbit", 3)
            == "rabbit://u:p@127.0.0.1:1/v?a=1&heartbeat_timeout_threshold=3")


def test_passwords_are_masked() -> None:
    assert (dt.mask_url(CLUSTER)
            == "rabbit://guest:***@127.0.0.1:29672,guest:***@127.0.0.1:29673/")
    assert dt.mask_url("rabbit://127.0.0.1:5672/") == "rabbit://127.0.0.1:5672/"


# -- drill_timeline: figures ------------------------------------------------------------------


def test_bucketize_counts_per_bucket_and_ignores_the_outside() -> None:
    assert dt.bucketize([0.0, 0.05, 0.1, 0.25, 0.3, -0.01, 0.31], 0.0, 0.3, 0.1) == [2, 1, 1]
    assert dt.bucketize([], 0.0, 1.0, 0.1) == [0] * 10
    assert dt.bucketize([1.0], 1.0, 1.0, 0.1) == []


def test_longest_gap_runs_to_the_end_when_nothing_answers() -> None:
    assert dt.longest_gap([1.0, 2.0, 5.0, 5.5], 0.0, 6.0) == (3.0, 2.0, 5.0)
    assert dt.longest_gap([1.0, 2.0], 0.0, 9.0) == (7.0, 2.0, 9.0)
    assert dt.longest_gap([], 0.0, 4.0) == (4.0, 0.0, 4.0)


def test_steady_again_sees_through_a_stray_answer() -> None:
    answers = [9.9, 9.95, 14.4, 18.3, 18.31, 18.32]
    assert dt.steady_again(answers, 10.0, 30.0) == 18.3
    # Without a stall the first answer after the drop is it.
    assert dt.steady_again([9.9, 10.1, 10.2], 10.0, 30.0) == 10.1
    assert dt.steady_again([9.9], 10.0, 30.0) is None


def calls_around_a_drop() -> list[dt.Call]:
    """Answers every 50 ms, none from 100.0 to 103.03 but a timeout ending at 102.0."""
    calls = [dt.Call(t / 100, t / 100 + 0.01) for t in range(9500, 10000, 5)]
    calls.append(dt.Call(97.0, 102.0, "MessagingTimeout"))
    calls += [dt.Call(t / 100, t / 100 + 0.01) for t in range(10302, 10600, 5)]
    return calls


def test_summarize_times_everything_from_the_drop() -> None:
    timeline = dt.summarize(calls_around_a_drop(), dropped_at=100.0, restored_at=102.5,
                            start=99.0, end=105.0)
    assert timeline["bucket_starts_s"][:2] == [-1.0, -0.9]
    assert len(timeline["bucket_starts_s"]) == len(timeline["completed"]) == 60
    assert timeline["completed"][0] == 2  # answers ending at 99.00 and 99.05
    assert sum(timeline["failed_per_bucket"]) == 1
    assert timeline["failed_per_bucket"][30] == 1  # 102.0 is 3 s into the window
    assert timeline["failures"] == [{"start_s": -3.0, "end_s": 2.0, "error": "MessagingTimeout"}]
    assert timeline["errors"] == {"MessagingTimeout": 1}
    assert timeline["failed"] == 1
    assert timeline["calls"] == timeline["answered"] + 1
    assert timeline["outage_s"] == pytest.approx(3.07)
    assert timeline["outage_from_s"] == pytest.approx(-0.04)
    assert timeline["outage_to_s"] == pytest.approx(3.03)
    assert timeline["steady_again_s"] == pytest.approx(3.03)
    assert timeline["restored_at_s"] == 2.5
    assert timeline["recovered"] is True


def test_summarize_without_answers_after_the_drop() -> None:
    calls = [c for c in calls_around_a_drop() if c.end < 100.0]
    timeline = dt.summarize(calls, dropped_at=100.0, restored_at=102.5, start=99.0, end=105.0)
    assert timeline["recovered"] is False
    assert timeline["steady_again_s"] is None
    assert timeline["outage_to_s"] == 5.0
    line = dt.summary_line("rabbit", timeline)
    assert "never answered again" in line
    assert "steady again after never" in line


def test_summary_line_names_the_figures() -> None:
    timeline = dt.summarize(calls_around_a_drop(), 100.0, 102.5, 99.0, 105.0)
    timeline["dropped_connections"] = [[1, 2], [3, 4]]
    line = dt.summary_line("rabbit-ha", timeline)
    assert line.startswith("rabbit-ha://")
    for part in ("outage   3.1s", "steady again after 3.0s", "failed calls 1 (MessagingTimeout 1)",
                 "connections dropped 2"):
        assert part in line


def test_to_json_round_trips_with_lists_on_one_line() -> None:
    value = {"a": {"b": [1, 2.5, None], "c": {}}, "d": [{"x": "y"}], "e": math.pi}
    text = dt.to_json(value)
    assert json.loads(text) == value
    assert '"b": [1, 2.5, null]' in text.splitlines()[2]


# -- plot_results: bench ----------------------------------------------------------------------

BENCH: dict[str, Any] = {
    "rabbit_ha": {"calls_per_s": 500.0, "call_p50_ms": 1.5, "rss_kb_per_connection": 140,
                  "heartbeat_cpu_percent": 0.4},
    "oslo_fake": {"calls_per_s": 20.0, "casts_per_s": 9000.0, "call_p50_ms": "n/a"},
    "oslo_rabbit": {"calls_per_s": 380.0, "call_p50_ms": float("nan")},
    "bare_amqp": {},
    "later_subject": {"calls_per_s": 1.0, "flag": True},
}


def panel(panels: list[pr.Panel], title: str) -> pr.Panel:
    return next(p for p in panels if p.title == title)


def test_bench_panels_keep_what_somebody_measured() -> None:
    panels = pr.bench_panels(BENCH)
    assert [p.title for p in panels] == ["Throughput", "Call latency", "Memory", "Heartbeats"]
    throughput = panel(panels, "Throughput")
    # Known subjects in the bench's order, others after; empty ones left out.
    assert throughput.subjects == ["rabbit_ha", "oslo_rabbit", "oslo_fake", "later_subject"]
    assert throughput.groups == ["calls\n(1 caller)", "casts"]
    assert throughput.values["oslo_fake"] == [20.0, 9000.0]
    assert throughput.values["rabbit_ha"] == [500.0, None]
    # Text, NaN and booleans are not figures.
    latency = panel(panels, "Call latency")
    assert latency.subjects == ["rabbit_ha"]
    assert latency.groups == ["median"]
    assert panel(panels, "Heartbeats").values == {"rabbit_ha": [0.4]}


def test_bench_panels_read_the_medians_of_the_output_file() -> None:
    panels = pr.bench_panels({"medians": BENCH, "runs": [], "settings": {"url": "x"}})
    assert panel(panels, "Memory").values == {"rabbit_ha": [140.0]}


@pytest.mark.parametrize("data", [[], {}, {"rabbit_ha": 3}, {"rabbit_ha": {"other": 1.0}}])
def test_bench_input_without_figures_is_refused(data: Any) -> None:
    with pytest.raises(pr.PlotError, match="bench input"):
        pr.bench_panels(data)


def test_rows_of_packs_panels_in_order() -> None:
    rows = pr.rows_of(pr.bench_panels({"rabbit_ha": {
        **dict.fromkeys(("calls_per_s", "concurrent_calls_per_s", "casts_per_s", "fanout_per_s",
                         "call_p50_ms", "call_p99_ms", "rss_kb_per_connection",
                         "rss_kb_per_idle_server"), 1.0),
        "heartbeat_cpu_percent": 0.5}}))
    assert [[p.title for p in row] for row in rows] == [
        ["Throughput"], ["Call latency", "Memory", "Heartbeats"]]


@pytest.mark.parametrize(("value", "text"), [
    (3390.2, "3,390"), (100.0, "100"), (50.64, "50.6"), (2.146, "2.15"), (0.234, "0.23")])
def test_format_value(value: float, text: str) -> None:
    assert pr.format_value(value) == text


# -- plot_results: drill ----------------------------------------------------------------------


def drill_document() -> dict[str, Any]:
    ours = dt.summarize(calls_around_a_drop(), 100.0, 102.5, 99.0, 105.0)
    stray = [c for c in calls_around_a_drop() if c.end < 100.0 or c.end > 104.0]
    stray.append(dt.Call(102.0, 102.5))
    theirs = dt.summarize(stray, 100.0, 102.5, 99.0, 105.0)
    document = {"settings": {"heartbeat_timeout_threshold": 3, "call_timeout_s": 5.0},
                "drivers": {"rabbit-ha": ours, "rabbit": theirs}}
    written: dict[str, Any] = json.loads(dt.to_json(document))
    return written


def test_drill_series_from_what_the_drill_writes() -> None:
    ours, theirs = pr.drill_series(drill_document())
    assert (ours.driver, theirs.driver) == ("rabbit-ha", "rabbit")
    assert ours.label == "rabbit-ha:// (this library)"
    assert ours.starts[0] == -1.0 and ours.bucket_s == 0.1
    assert ours.failed_total == 1
    assert not ours.stop_and_go
    assert ours.annotation() == "outage 3.1 s, 1 failed call"
    # One stray answer splits the outage: the longest gap is shorter than it.
    assert theirs.outage == pytest.approx(2.54)
    assert theirs.stop_and_go
    assert theirs.annotation() == "outage 2.5 s, 0 failed calls\nsteady again after 4.0 s"


def test_drill_series_of_a_driver_that_never_answered_again() -> None:
    document = drill_document()
    timeline = document["drivers"]["rabbit"]
    timeline.update(recovered=False, outage_s=5.0, steady_again_s=None)
    series = pr.drill_series(document)[1]
    assert series.annotation() == "outage > 5.0 s, 0 failed calls"


def test_drill_title() -> None:
    assert (pr.drill_title(drill_document())
            == "Silent drop of the RPC server's connections, T = 3 s, call timeout 5 s")
    assert pr.drill_title({}) == "Silent drop of the RPC server's connections"


@pytest.mark.parametrize("data", [{}, {"drivers": {}}, {"drivers": {"rabbit": {"completed": [1]}}},
                                  {"drivers": {"rabbit": {**drill_document()["drivers"]["rabbit"],
                                                          "completed": [1, 2]}}}])
def test_drill_input_that_cannot_be_drawn(data: Any) -> None:
    with pytest.raises(pr.PlotError, match="drill input"):
        pr.drill_series(data)


# -- plot_results: the command ----------------------------------------------------------------


def test_missing_matplotlib_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(pr.PlotError, match="pip install matplotlib"):
        pr.pyplot()


def test_main_reports_unreadable_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    output = tmp_path / "out.png"
    assert pr.main(["drill", "--input", str(bad), "--output", str(output)]) == 2
    assert pr.main(["bench", "--input", str(tmp_path / "missing.json"), "--output", str(output)]) == 2
    assert capsys.readouterr().err.count("error: cannot read") == 2
    assert not output.exists()

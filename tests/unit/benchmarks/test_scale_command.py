"""rabbit-ha bench --scale: rounds, failures, output and the command line; canned output, no broker."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from benchmarks.bench import rounds
from benchmarks.scale import command
from benchmarks.scale.command import ScaleOptions
from rabbit_ha_driver import cli
from rabbit_ha_driver import exceptions as exc
from tests.unit.benchmarks.scale_canned import FakeRunner, crashed

URL = "rabbit://bench:s3cret@broker.example:5672/"


def scale(options: ScaleOptions, runner: FakeRunner, *, oslo: bool = True,
          probe_answer: str | None = None,
          plot: Any = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = command.run_scale(
        options, runner=runner, probe=lambda url: probe_answer,
        find_spec=lambda name: object() if oslo else None,
        date=lambda: "2030-01-02T03:04:05+00:00", out=out, err=err,
        plot=plot or (lambda document, directory: []))
    return status, out.getvalue(), err.getvalue()


# -- rounds ---------------------------------------------------------------------------------


def test_each_round_turns_the_parts_and_the_subjects_within_each_part() -> None:
    plan = command.round_plan({"footprint": ["a", "b"], "curves": ["a", "b", "c"], "idle": ["c"]},
                              {"footprint": 2, "curves": 3, "idle": 3})
    assert plan[0] == [("footprint", "a"), ("footprint", "b"), ("curves", "a"), ("curves", "b"),
                       ("curves", "c"), ("idle", "c")]
    assert plan[1] == [("curves", "b"), ("curves", "c"), ("curves", "a"), ("idle", "c"),
                       ("footprint", "b"), ("footprint", "a")]
    # footprint had its two rounds: it sits out the third
    assert plan[2] == [("idle", "c"), ("curves", "c"), ("curves", "a"), ("curves", "b")]
    assert len(plan) == 3
    assert command.round_plan({"idle": []}, {"idle": 3}) == []


def test_the_runs_follow_the_plan_with_each_parts_options() -> None:
    runner = FakeRunner()
    options = ScaleOptions(URL, runs=2, subjects=("rabbit_ha", "bare_amqp"), parts=("curves", "idle"),
                           curves=("concurrency",), curves_seconds=1.5, idle_counts=(10, 100),
                           idle_seconds=3.0)
    status, _, err = scale(options, runner)
    assert status == 0
    assert runner.runs() == [("curves", "rabbit_ha"), ("curves", "bare_amqp"), ("idle", "rabbit_ha"),
                             ("idle", "bare_amqp"), ("idle", "bare_amqp"), ("idle", "rabbit_ha"),
                             ("curves", "bare_amqp"), ("curves", "rabbit_ha")]
    argv, timeout = runner.calls[0]
    assert argv == [sys.executable, "-m", "benchmarks.scale.curves", "rabbit_ha", URL,
                    "--curves", "concurrency", "--seconds", "1.5"]
    assert timeout == 600 + 30 * 1.5
    argv, timeout = runner.calls[2]
    assert argv[2:] == ["benchmarks.scale.idle", "rabbit_ha", URL, "--counts", "10,100", "--seconds", "3"]
    assert "round 2/2: curves rabbit_ha ok" in err


def test_part_programs_keep_their_own_defaults_unless_told() -> None:
    options = ScaleOptions(URL)
    for part in ("footprint", "curves", "idle"):
        assert command.part_argv(part, "rabbit_ha", URL, options)[2:] == [
            f"benchmarks.scale.{part}", "rabbit_ha", URL]
    told = ScaleOptions(URL, footprint_counts=(10, 50), storm=False, run_timeout=42.0)
    assert command.part_argv("footprint", "oslo_rabbit", URL, told)[5:] == [
        "--counts", "10,50", "--no-storm"]
    assert command.part_timeout("idle", told) == 42.0
    assert command.part_timeout("footprint", options) == 1800.0
    assert command.part_timeout("idle", options) == 1200.0 + 8 * 20


def test_each_part_runs_only_its_subjects_and_may_have_rounds_of_its_own() -> None:
    runner = FakeRunner()
    options = ScaleOptions(URL, runs=3, part_runs={"footprint": 1})
    status, out, _ = scale(options, runner)
    assert status == 0
    runs = runner.runs()
    assert sorted({s for p, s in runs if p == "footprint"}) == ["oslo_rabbit", "rabbit_ha", "rabbit_ha_oslo"]
    assert sorted({s for p, s in runs if p == "idle"}) == ["bare_amqp", "oslo_rabbit", "rabbit_ha"]
    assert len(runs) == 3 * 1 + 4 * 3 + 3 * 3
    assert "footprint (1 round), curves (3 rounds), idle (3 rounds)" in out.splitlines()[0]
    assert "targets: 14 pass, 0 miss, 0 n/a" in out


def test_a_failed_run_is_reported_with_its_stderr_and_the_others_go_on() -> None:
    lines = [f"line {i}" for i in range(8)] + ["RuntimeError: 64 threads but 3 answered"]
    runner = FakeRunner(fail={
        ("curves", "bare_amqp", 2): crashed(*lines),
        ("curves", "rabbit_ha", 1): rounds.Completed(None, "", "stuck\n", 700.0),
        ("idle", "rabbit_ha", 1): rounds.Completed(0, "no json\n", "", 1.0)})
    options = ScaleOptions(URL, runs=3, parts=("curves", "idle"), subjects=("rabbit_ha", "bare_amqp"))
    status, out, err = scale(options, runner)
    assert status == 1
    assert len(runner.calls) == 12
    assert "round 2/3: curves bare_amqp FAILED after 2.5s: exit status 1; last lines of stderr:" in err
    assert "RuntimeError: 64 threads but 3 answered" in err and "line 3" not in err
    assert "round 1, curves, rabbit_ha: killed after its 660s timeout" in out
    assert ("round 1, idle, rabbit_ha: exit status 0 but no figures (the last line of stdout is not JSON"
            in out)
    assert "runs counted, curves: rabbit_ha 2/3, bare_amqp 2/3" in out
    # medians of the two runs left: 0.9x in round 2, 0.45x in round 3 (its canned slow round)
    one = next(line for line in out.splitlines() if line.strip().startswith("1 ")
               and "[" in line)
    assert "675 [450..900] n=2" in one


def test_without_oslo_messaging_the_other_subjects_still_run() -> None:
    runner = FakeRunner()
    status, out, err = scale(ScaleOptions(URL, runs=1), runner, oslo=False)
    assert status == 0
    assert {s for _, s in runner.runs()} == {"rabbit_ha", "bare_amqp"}
    assert "oslo_rabbit: unavailable, oslo.messaging is not installed" in err
    assert "runs counted, footprint: rabbit_ha 1/1, rabbit_ha_oslo unavailable" in out
    memory = next(line for line in out.splitlines()
                  if "broker memory per idle service, N=10: rabbit_ha / oslo_rabbit" in line)
    assert memory.rstrip().endswith("n/a")


def test_subjects_no_part_measures_and_parts_without_subjects_are_named() -> None:
    runner = FakeRunner()
    status, _, err = scale(ScaleOptions(URL, runs=1, subjects=("bare_amqp", "oslo_fake"),
                                        parts=("footprint", "curves")), runner)
    assert status == 0
    assert runner.runs() == [("curves", "bare_amqp")]
    assert "not measured by footprint, curves: oslo_fake" in err
    assert "footprint: none of the selected subjects" in err


def test_an_unreachable_broker_stops_before_any_run_and_hides_the_password() -> None:
    runner = FakeRunner()
    status, out, err = scale(ScaleOptions(URL), runner, probe_answer="ConnectionRefusedError")
    assert status == 1 and out == "" and runner.calls == []
    assert "cannot reach the broker at rabbit://bench:***@broker.example:5672//" in err
    assert "s3cret" not in err


def test_memory_url_is_refused() -> None:
    with pytest.raises(exc.ConfigurationError, match="needs a RabbitMQ broker"):
        scale(ScaleOptions("memory://"), FakeRunner())


def test_json_prints_the_medians() -> None:
    status, out, _ = scale(ScaleOptions(URL, runs=2, parts=("idle",), json=True), FakeRunner())
    assert status == 0
    data = json.loads(out)
    assert list(data) == ["idle"]
    assert data["idle"]["2000"]["oslo_rabbit"]["cpu_percent"] == pytest.approx(8.0)


def test_output_file_has_every_run_the_medians_targets_and_versions(tmp_path: Path) -> None:
    path = tmp_path / "scale.json"
    runner = FakeRunner(fail={("curves", "bare_amqp", 1): crashed("boom")})
    options = ScaleOptions(URL, runs=2, parts=("curves",), output=str(path))
    status, _, err = scale(options, runner)
    assert status == 1 and f"written to {path}" in err
    text = path.read_text()
    assert "s3cret" not in text
    doc = json.loads(text)
    assert doc["date"] == "2030-01-02T03:04:05+00:00"
    assert {"python", "kombu", "amqp", "oslo.messaging"} <= set(doc["versions"])
    assert doc["settings"]["url"] == "rabbit://bench:***@broker.example:5672//"
    assert doc["settings"]["runs"] == {"curves": 2} and doc["settings"]["timeouts"] == {"curves": 660.0}
    assert len(doc["runs"]) == 8
    failed = [r for r in doc["runs"] if r["figures"] is None]
    assert [(r["part"], r["subject"], r["round"]) for r in failed] == [("curves", "bare_amqp", 1)]
    assert "boom" in failed[0]["error"]
    assert doc["spread"]["size"]["1000000"]["bare_amqp"]["bytes_per_s"]["count"] == 1
    verdicts = {t["label"]: t for t in doc["targets"]}
    concurrency = verdicts["calls/s, 64 client threads: rabbit_ha / bare_amqp"]
    assert concurrency["verdict"] == "PASS" and concurrency["rounds"] == {"2": pytest.approx(0.9)}


def test_an_unwritable_output_file_fails_the_command(tmp_path: Path) -> None:
    options = ScaleOptions(URL, runs=1, parts=("idle",), output=str(tmp_path / "no" / "such" / "x.json"))
    status, _, err = scale(options, FakeRunner())
    assert status == 1 and "cannot write" in err


def test_plots_are_drawn_from_the_document_after_the_run(tmp_path: Path) -> None:
    drawn: list[tuple[Mapping[str, Any], str]] = []

    def plot(document: Mapping[str, Any], directory: str) -> list[str]:
        drawn.append((document, directory))
        return ["a.png", "b.png"]

    options = ScaleOptions(URL, runs=1, parts=("idle",), plots=str(tmp_path))
    status, _, err = scale(options, FakeRunner(), plot=plot)
    assert status == 0 and "2 plot(s) written to" in err
    assert drawn[0][1] == str(tmp_path) and "idle" in drawn[0][0]["spread"]

    def broken(document: Mapping[str, Any], directory: str) -> list[str]:
        raise RuntimeError("no matplotlib here")

    status, _, err = scale(options, FakeRunner(), plot=broken)
    assert status == 1 and "no plots in" in err and "no matplotlib here" in err


# -- the command line -----------------------------------------------------------------------


def recorder(seen: list[ScaleOptions]) -> Any:
    def run_scale(options: ScaleOptions) -> int:
        seen.append(options)
        return 0

    return run_scale


def test_cli_parses_the_scale_options(monkeypatch: pytest.MonkeyPatch) -> None:
    args = cli.build_parser().parse_args(
        ["bench", "--scale", "--url", URL, "--runs", "3", "--parts", "idle, curves,idle",
         "--footprint-runs", "1", "--idle-counts", "100,10,100", "--idle-seconds", "5", "--no-storm",
         "--curves", "size", "--curves-seconds", "0.5", "--run-timeout", "60", "--plots", "d",
         "--subjects", "rabbit_ha,bare_amqp", "--output", "x.json"])
    assert args.scale and args.parts == ("idle", "curves") and args.idle_counts == (10, 100)
    seen: list[ScaleOptions] = []
    monkeypatch.setattr(command, "run_scale", recorder(seen))
    assert args.run(args) == 0
    assert seen == [ScaleOptions(
        url=URL, runs=3, part_runs={"footprint": 1}, parts=("idle", "curves"),
        subjects=("rabbit_ha", "bare_amqp"), footprint_counts=None, storm=False, curves=("size",),
        curves_seconds=0.5, idle_counts=(10, 100), idle_seconds=5.0, run_timeout=60.0, json=False,
        output="x.json", plots="d")]


def test_cli_scale_defaults_are_every_part_and_the_four_scale_subjects(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ScaleOptions] = []
    monkeypatch.setattr(command, "run_scale", recorder(seen))
    monkeypatch.delenv("RHA_TEST_BASE_PORT", raising=False)
    assert cli.main(["bench", "--scale"]) == 0
    assert seen == [ScaleOptions(url="rabbit://guest:guest@127.0.0.1:27672/")]
    assert seen[0].subjects == ("rabbit_ha", "rabbit_ha_oslo", "oslo_rabbit", "bare_amqp")


@pytest.mark.parametrize(("argv", "message"), [
    (["--parts", "idle,nope"], "unknown part 'nope'; choose from footprint, curves, idle"),
    (["--parts", ","], "no part given"),
    (["--curves", "fanout,storm"], "unknown curve 'storm'; choose from concurrency, size, fanout"),
    (["--idle-counts", "10,ten"], "'ten' is not a whole number"),
    (["--footprint-counts", "0"], "'0': a count is at least 1"),
    (["--footprint-runs", "0"], "at least 1 run"),
    (["--idle-seconds", "-2"], "must be a positive number of seconds"),
])
def test_cli_refuses_bad_scale_values_naming_the_option(capsys: pytest.CaptureFixture[str],
                                                        argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--scale", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and f"argument {argv[0]}" in err


def test_cli_refuses_scale_options_without_scale(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--parts", "idle"]) == 2
    err = capsys.readouterr().err
    assert "--parts" in err and "needs --scale" in err
    assert cli.main(["bench", "--no-storm"]) == 2
    assert "--no-storm" in capsys.readouterr().err


def test_cli_refuses_a_memory_url_with_scale(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--scale", "--url", "memory://"]) == 2
    assert "needs a RabbitMQ broker" in capsys.readouterr().err


def test_without_the_checkout_scale_says_where_the_benchmarks_are(capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.measure, "BENCH_MODULE", "benchmarks.no_such_bench.command")
    assert cli.main(["bench", "--scale", "--parts", "idle"]) == 1
    assert capsys.readouterr().err.splitlines() == [cli.measure.UNAVAILABLE]

"""rabbit-ha bench: rounds, medians, targets and output, with canned worker output and no broker."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Sequence

import pytest

from benchmarks import heartbeat_cpu as heartbeat
from benchmarks.bench import command, report, rounds, worker
from benchmarks.bench.subjects import SUBJECTS
from rabbit_ha_driver import cli
from rabbit_ha_driver import exceptions as exc

URL = "rabbit://bench:s3cret@broker.example:5672/"

#: What a worker prints for each subject (oslo_fake has no connection figure).
FIGURES = {
    "rabbit_ha": {"rss_kb_per_connection": 100.0, "rss_kb_per_idle_server": 150.0,
                  "calls_per_s": 2000.0, "call_p50_ms": 0.4, "call_p99_ms": 1.5,
                  "concurrent_calls_per_s": 6000.0, "casts_per_s": 9000.0, "fanout_per_s": 4000.0},
    "rabbit_ha_oslo": {"rss_kb_per_connection": 110.0, "rss_kb_per_idle_server": 200.0,
                       "calls_per_s": 1200.0, "call_p50_ms": 0.8, "call_p99_ms": 2.0,
                       "concurrent_calls_per_s": 3000.0, "casts_per_s": 5000.0, "fanout_per_s": 2000.0},
    "oslo_rabbit": {"rss_kb_per_connection": 300.0, "rss_kb_per_idle_server": 400.0,
                    "calls_per_s": 700.0, "call_p50_ms": 1.0, "call_p99_ms": 2.0,
                    "concurrent_calls_per_s": 1500.0, "casts_per_s": 2000.0, "fanout_per_s": 1000.0},
    "bare_amqp": {"rss_kb_per_connection": 50.0, "rss_kb_per_idle_server": 60.0,
                  "calls_per_s": 3000.0, "call_p50_ms": 0.3, "call_p99_ms": 0.9,
                  "concurrent_calls_per_s": 8000.0, "casts_per_s": 12000.0, "fanout_per_s": 6000.0},
    "oslo_fake": {"rss_kb_per_idle_server": 30.0, "calls_per_s": 20.0, "call_p50_ms": 50.0,
                  "call_p99_ms": 51.0, "concurrent_calls_per_s": 170.0, "casts_per_s": 10000.0,
                  "fanout_per_s": 3000.0},
}


class FakeRunner:
    """Answers worker and heartbeat command lines with canned output; records them."""

    def __init__(self, fail: dict[tuple[str, int], rounds.Completed] | None = None,
                 heartbeat_windows: Sequence[float] = (0.4, 0.5, 0.3)) -> None:
        self.calls: list[tuple[list[str], float]] = []
        self.fail = fail or {}
        self.heartbeat_windows = list(heartbeat_windows)
        self._runs: dict[str, int] = {}

    def __call__(self, argv: Sequence[str], timeout: float) -> rounds.Completed:
        argv = list(argv)
        self.calls.append((argv, timeout))
        assert argv[0] == sys.executable and argv[1] == "-m"
        if argv[2] == "benchmarks.heartbeat_cpu":
            details = {"heartbeat_cpu_percent": 0.4, "windows_percent": self.heartbeat_windows,
                       "heartbeat_frames": 1234, "declared_dead": 0, "lost": 0}
            return rounds.Completed(0, "noise\n" + json.dumps(details) + "\n", "", 12.0)
        assert argv[2] == "benchmarks.bench.worker"
        subject = argv[3]
        self._runs[subject] = self._runs.get(subject, 0) + 1
        failure = self.fail.get((subject, self._runs[subject]))
        if failure is not None:
            return failure
        return rounds.Completed(0, json.dumps(FIGURES[subject]) + "\n", "a warning\n", 3.0)

    def subjects_run(self) -> list[str]:
        return [argv[3] for argv, _ in self.calls if argv[2].endswith("worker")]


def crashed(*stderr_lines: str) -> rounds.Completed:
    return rounds.Completed(1, "", "\n".join(stderr_lines) + "\n", 2.5)


def bench(options: command.BenchOptions, runner: FakeRunner, *, oslo: bool = True,
          probe_answer: str | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = command.run_bench(
        options, runner=runner, probe=lambda url: probe_answer,
        find_spec=lambda name: object() if oslo else None,
        date=lambda: "2030-01-02T03:04:05+00:00", out=out, err=err)
    return status, out.getvalue(), err.getvalue()


# -- rounds ------------------------------------------------------------------------


def test_each_round_rotates_the_order_of_the_subjects():
    orders = rounds.round_orders(SUBJECTS, 7)
    assert orders[0] == list(SUBJECTS)
    assert orders[1] == [*SUBJECTS[1:], SUBJECTS[0]]
    assert orders[5] == orders[0]
    assert all(sorted(order) == sorted(SUBJECTS) for order in orders)
    # over five rounds every subject goes first once and last once
    assert sorted(order[0] for order in orders[:5]) == sorted(SUBJECTS)
    assert sorted(order[-1] for order in orders[:5]) == sorted(SUBJECTS)
    assert rounds.round_orders(["a"], 3) == [["a"], ["a"], ["a"]]


def test_figures_come_from_the_last_line_of_stdout():
    assert rounds.parse_figures('log line\n{"calls_per_s": 10, "call_p50_ms": 0.5}\n\n') == {
        "calls_per_s": 10.0, "call_p50_ms": 0.5}
    for stdout, problem in [("", "nothing on stdout"), ("Traceback\n", "not JSON"),
                            ("[1, 2]\n", "not a JSON object"), ('{"a": "fast"}', "'a' is not a number"),
                            ('{"a": true}', "not a number"), ('{"a": NaN}', "not a number")]:
        with pytest.raises(ValueError, match=problem):
            rounds.parse_figures(stdout)


def test_a_failed_run_names_its_exit_status_and_the_last_lines_of_stderr():
    lines = [f"line {i}" for i in range(10)] + ["RuntimeError: 3 casts sent but only 2 arrived"]
    runner = FakeRunner(fail={("oslo_rabbit", 1): crashed(*lines)})
    result = rounds.run_one("oslo_rabbit", 4, URL, 2.0, runner)
    assert not result.ok and result.figures is None and result.round == 4
    assert result.error.startswith("exit status 1; last lines of stderr:")
    assert "RuntimeError: 3 casts sent but only 2 arrived" in result.error
    assert "line 6" in result.error and "line 5" not in result.error  # the last five lines only
    argv, timeout = runner.calls[0]
    assert argv[3:] == ["oslo_rabbit", URL, "--seconds", "2"]
    assert timeout == rounds.run_timeout(2.0) >= rounds.RUN_TIMEOUT


def test_a_killed_run_and_a_run_without_figures_are_failures():
    killed = FakeRunner(fail={("rabbit_ha", 1): rounds.Completed(None, "", "stuck\n", 308.0)})
    result = rounds.run_one("rabbit_ha", 1, URL, 2.0, killed)
    assert not result.ok and f"killed after its {rounds.run_timeout(2.0):g}s timeout" in result.error
    assert "stuck" in result.error
    silent = FakeRunner(fail={("rabbit_ha", 1): rounds.Completed(0, "hello\n", "", 1.0)})
    result = rounds.run_one("rabbit_ha", 1, URL, 2.0, silent)
    assert not result.ok
    assert result.error.startswith("exit status 0 but no figures (the last line of stdout is not JSON")
    assert result.error.endswith("nothing on stderr")


def test_rounds_carry_on_after_a_failed_run_and_report_it():
    runner = FakeRunner(fail={("bare_amqp", 2): crashed("Traceback", "OSError: boom")})
    progress: list[str] = []
    results = rounds.run_rounds(["rabbit_ha", "bare_amqp"], URL, 3, 1.0, runner, progress.append)
    assert runner.subjects_run() == ["rabbit_ha", "bare_amqp", "bare_amqp", "rabbit_ha",
                                     "rabbit_ha", "bare_amqp"]
    assert [(r.subject, r.round, r.ok) for r in results if not r.ok] == [("bare_amqp", 2, False)]
    assert len(results) == 6
    failed = [line for line in progress if "FAILED" in line]
    assert len(failed) == 1 and failed[0].startswith("round 2/3: bare_amqp FAILED")
    assert "OSError: boom" in failed[0]


def test_oslo_subjects_are_unavailable_without_oslo_messaging():
    assert rounds.unavailable_subjects(SUBJECTS, lambda name: object()) == {}
    missing = rounds.unavailable_subjects(SUBJECTS, lambda name: None)
    assert sorted(missing) == ["oslo_fake", "oslo_rabbit", "rabbit_ha_oslo"]
    assert "rabbit_ha_driver[oslo]" in missing["oslo_rabbit"]


def test_run_process_captures_output_and_kills_a_child_past_its_timeout():
    done = rounds.run_process([sys.executable, "-c", "import sys; print('out'); "
                               "print('err', file=sys.stderr); sys.exit(3)"], 30)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    stuck = rounds.run_process([sys.executable, "-c", "import time; print('x', flush=True); "
                                "time.sleep(60)"], 0.5)
    assert stuck.returncode is None and stuck.seconds < 30


# -- medians and targets --------------------------------------------------------------


def test_medians_leave_out_failed_runs_and_missing_figures():
    results = [
        rounds.RunResult("rabbit_ha", 1, {"calls_per_s": 100.0, "call_p50_ms": 1.0}),
        rounds.RunResult("rabbit_ha", 2, None, "exit status 1"),
        rounds.RunResult("rabbit_ha", 3, {"calls_per_s": 300.0}),
        rounds.RunResult("rabbit_ha", 4, {"calls_per_s": 250.0, "call_p50_ms": 3.0}),
        rounds.RunResult("oslo_fake", 1, {"casts_per_s": 5.0}),
    ]
    stats = report.aggregate(results)
    assert stats["rabbit_ha"]["calls_per_s"] == report.FigureStats(250.0, 100.0, 300.0, 3)
    assert stats["rabbit_ha"]["call_p50_ms"] == report.FigureStats(2.0, 1.0, 3.0, 2)  # even: the mean of two
    assert stats["oslo_fake"] == {"casts_per_s": report.FigureStats(5.0, 5.0, 5.0, 1)}
    assert "bare_amqp" not in stats
    assert report.runs_counted(results, "rabbit_ha") == (3, 4)


def test_the_heartbeat_windows_become_a_figure_of_rabbit_ha():
    beat = rounds.HeartbeatResult((0.5, 0.2, 0.9), {"declared_dead": 0})
    stats = report.aggregate([rounds.RunResult("rabbit_ha", 1, {"calls_per_s": 1.0})], beat)
    assert stats["rabbit_ha"]["heartbeat_cpu_percent"] == report.FigureStats(0.5, 0.2, 0.9, 3)
    failed = rounds.HeartbeatResult((), {}, "exit status 1")
    assert "heartbeat_cpu_percent" not in report.aggregate([], failed).get("rabbit_ha", {})


def test_the_json_object_has_exactly_the_five_subjects():
    empty = report.medians({})
    assert list(empty) == ["rabbit_ha", "rabbit_ha_oslo", "oslo_rabbit", "bare_amqp", "oslo_fake"]
    assert all(value == {} for value in empty.values())
    stats = report.aggregate([rounds.RunResult("bare_amqp", 1, FIGURES["bare_amqp"])])
    assert report.medians(stats)["bare_amqp"] == FIGURES["bare_amqp"]


def test_targets_pass_miss_or_cannot_be_judged():
    figures = {"rabbit_ha": {"calls_per_s": 1500.0, "call_p50_ms": 0.4, "heartbeat_cpu_percent": 0.46},
               "oslo_rabbit": {"calls_per_s": 700.0, "call_p50_ms": 1.0},
               "bare_amqp": {"calls_per_s": 3000.0}}
    faster = report.Target("rabbit_ha", "calls_per_s", "oslo_rabbit", ">=", 2.0)
    assert faster.value(figures) == pytest.approx(1500 / 700)
    assert faster.verdict(figures) == "PASS" and faster.shown(figures) == "2.14x"
    assert report.Target("rabbit_ha", "calls_per_s", "bare_amqp", ">=", 0.6).verdict(figures) == "MISS"
    assert report.Target("rabbit_ha", "call_p50_ms", "oslo_rabbit", "<=", 0.5).verdict(figures) == "PASS"
    assert report.Target("rabbit_ha", "call_p50_ms", "oslo_rabbit", "<=", 0.3).verdict(figures) == "MISS"
    beat = report.Target("rabbit_ha", "heartbeat_cpu_percent", None, "<", 1.0)
    assert beat.verdict(figures) == "PASS" and beat.shown(figures) == "0.460 % core"
    assert beat.verdict({"rabbit_ha": {"heartbeat_cpu_percent": 1.0}}) == "MISS"
    missing = report.Target("rabbit_ha", "casts_per_s", "oslo_rabbit", ">=", 3.0)
    assert missing.verdict(figures) == "n/a" and missing.shown(figures) == "-"
    zero = {"rabbit_ha": {"rss_kb_per_connection": 10.0}, "oslo_rabbit": {"rss_kb_per_connection": 0.0}}
    assert report.Target("rabbit_ha", "rss_kb_per_connection", "oslo_rabbit").verdict(zero) == "n/a"
    info = report.Target("rabbit_ha", "calls_per_s", "oslo_rabbit")
    assert info.verdict(figures) == "" and info.goal == "(no target)"
    assert report.tally(figures) == {"PASS": 3, "MISS": 1, "n/a": 4}


def test_the_targets_are_the_documented_ones():
    goals = {(t.subject, t.figure, t.versus): (t.relation, t.bound) for t in report.TARGETS}
    assert goals == {
        ("rabbit_ha", "calls_per_s", "oslo_rabbit"): (">=", 2.0),
        ("rabbit_ha", "calls_per_s", "bare_amqp"): (">=", 0.6),
        ("rabbit_ha", "casts_per_s", "oslo_rabbit"): (">=", 3.0),
        ("rabbit_ha", "call_p50_ms", "oslo_rabbit"): ("<=", 0.5),
        ("rabbit_ha", "call_p99_ms", "oslo_rabbit"): ("<=", 1.0),
        ("rabbit_ha_oslo", "calls_per_s", "oslo_rabbit"): (">=", 1.5),
        ("rabbit_ha_oslo", "casts_per_s", "oslo_rabbit"): (">=", 2.0),
        ("rabbit_ha", "heartbeat_cpu_percent", None): ("<", 1.0),
    }
    assert all(t.relation is None for t in report.INFORMATIONAL)
    assert ("rabbit_ha_oslo", "casts_per_s", "oslo_fake") in {
        (t.subject, t.figure, t.versus) for t in report.INFORMATIONAL}


# -- the command ------------------------------------------------------------------------


def test_json_output_is_one_object_of_medians_and_progress_goes_to_stderr():
    runner = FakeRunner()
    status, out, err = bench(command.BenchOptions(URL, runs=3, seconds=1.5, json=True), runner)
    assert status == 0
    data = json.loads(out)
    assert list(data) == list(SUBJECTS)
    for subject in SUBJECTS:
        expected = dict(FIGURES[subject])
        if subject == "rabbit_ha":
            expected["heartbeat_cpu_percent"] = 0.4  # the median of 0.4, 0.5, 0.3
        assert data[subject] == pytest.approx(expected)
    assert "round 3/3: oslo_fake ok" in err and "heartbeat: ok" in err
    assert len(runner.subjects_run()) == 15
    heartbeat_argv, timeout = runner.calls[-1]
    assert heartbeat_argv[2:] == ["benchmarks.heartbeat_cpu", "--url", URL, "--json",
                                  "--connections", "200", "--threshold", "10", "--windows", "3",
                                  "--seconds", "60"]
    assert timeout > 3 * 60 + 10


def test_the_table_shows_medians_spread_and_verdicts():
    runner = FakeRunner(fail={("oslo_rabbit", 2): crashed("Traceback", "KeyError: 'x'")})
    status, out, err = bench(command.BenchOptions(URL, runs=3), runner)
    assert status == 1  # a run failed
    assert "s3cret" not in out + err
    assert out.startswith("rabbit-ha bench on rabbit://bench:***@broker.example:5672//")
    assert "runs counted: rabbit_ha 3/3, rabbit_ha_oslo 3/3, oslo_rabbit 2/3" in out
    assert "fewer than 5 runs" in out
    medians, spread = [line.split() for line in out.splitlines() if line.startswith("calls_per_s ")]
    assert medians[1:] == ["calls/s", "2000", "1200", "700", "3000", "20"]
    assert spread[1:] == ["calls/s", "2000..2000", "(3)", "1200..1200", "(3)", "700..700", "(2)",
                          "3000..3000", "(3)", "20..20", "(3)"]
    assert "targets: " in out
    assert "round 2, oslo_rabbit: exit status 1" in out and "KeyError: 'x'" in out


def test_verdict_lines_match_the_figures():
    status, out, _ = bench(command.BenchOptions(URL, runs=5), FakeRunner())
    assert status == 0 and "fewer than 5 runs" not in out
    lines = {line.split("  ")[1].strip(): line for line in out.splitlines() if line.startswith("  ")}
    expected = {
        "rabbit_ha calls_per_s / oslo_rabbit": ("2.86x", "PASS"),
        "rabbit_ha calls_per_s / bare_amqp": ("0.67x", "PASS"),
        "rabbit_ha casts_per_s / oslo_rabbit": ("4.50x", "PASS"),
        "rabbit_ha call_p50_ms / oslo_rabbit": ("0.40x", "PASS"),
        "rabbit_ha call_p99_ms / oslo_rabbit": ("0.75x", "PASS"),
        "rabbit_ha_oslo calls_per_s / oslo_rabbit": ("1.71x", "PASS"),
        "rabbit_ha_oslo casts_per_s / oslo_rabbit": ("2.50x", "PASS"),
        "rabbit_ha heartbeat_cpu_percent": ("0.400 % core", "PASS"),
        "rabbit_ha_oslo casts_per_s / oslo_fake": ("0.50x", "(no target)"),
        "rabbit_ha rss_kb_per_connection / oslo_rabbit": ("0.33x", "(no target)"),
        "rabbit_ha_oslo fanout_per_s / oslo_rabbit": ("2.00x", "(no target)"),
    }
    for what, (value, verdict) in expected.items():
        assert value in lines[what] and lines[what].rstrip().endswith(verdict), lines[what]
    assert "targets: 8 pass, 0 miss, 0 n/a" in out


def test_without_oslo_messaging_the_other_subjects_still_run():
    runner = FakeRunner()
    status, out, err = bench(command.BenchOptions(URL, runs=2, json=True), runner, oslo=False)
    assert status == 0
    assert sorted(set(runner.subjects_run())) == ["bare_amqp", "rabbit_ha"]
    data = json.loads(out)
    assert list(data) == list(SUBJECTS)
    assert data["oslo_rabbit"] == {} and data["oslo_fake"] == {} and data["rabbit_ha_oslo"] == {}
    assert data["bare_amqp"]["calls_per_s"] == 3000.0
    assert "oslo_rabbit: unavailable, oslo.messaging is not installed" in err
    status, out, _ = bench(command.BenchOptions(URL, runs=1), FakeRunner(), oslo=False)
    assert "oslo_fake unavailable (oslo.messaging is not installed" in out
    assert "rabbit_ha calls_per_s / oslo_rabbit" in out and "n/a" in out


def test_an_unreachable_broker_stops_the_bench_before_any_run():
    runner = FakeRunner()
    status, out, err = bench(command.BenchOptions(URL), runner,
                             probe_answer="MessagingTimeout: connection refused")
    assert status == 1 and out == "" and runner.calls == []
    assert "cannot reach the broker at rabbit://bench:***@broker.example:5672//" in err
    assert "python tools/rabbit_cluster.py start" in err and "s3cret" not in err
    # the fake driver needs no broker
    status, _, _ = bench(command.BenchOptions(URL, subjects=("oslo_fake",), runs=1), FakeRunner(),
                         probe_answer="refused")
    assert status == 0


def test_heartbeat_seconds_zero_skips_the_heartbeat_figure():
    runner = FakeRunner()
    status, out, _ = bench(command.BenchOptions(URL, runs=1, heartbeat_seconds=0,
                                                subjects=("rabbit_ha",)), runner)
    assert status == 0
    assert all(argv[2].endswith("worker") for argv, _ in runner.calls)
    assert "heartbeat: not measured" in out
    assert [line.split()[-1] for line in out.splitlines()
            if line.strip().startswith("rabbit_ha heartbeat_cpu_percent")] == ["n/a"]


def test_a_failed_heartbeat_run_fails_the_command_but_keeps_the_rest():
    class BrokenHeartbeat(FakeRunner):
        def __call__(self, argv: Sequence[str], timeout: float) -> rounds.Completed:
            if argv[2].endswith("heartbeat_cpu"):
                return crashed("ConnectionRefusedError: nope")
            return super().__call__(argv, timeout)

    status, out, err = bench(command.BenchOptions(URL, runs=1, subjects=("rabbit_ha",), json=True),
                             BrokenHeartbeat())
    assert status == 1
    assert "heartbeat: FAILED: exit status 1" in err and "ConnectionRefusedError: nope" in err
    data = json.loads(out)
    assert "heartbeat_cpu_percent" not in data["rabbit_ha"] and data["rabbit_ha"]["calls_per_s"] == 2000


def test_output_file_has_every_run_the_spread_and_the_versions(tmp_path):
    path = tmp_path / "bench.json"
    runner = FakeRunner(fail={("bare_amqp", 1): crashed("boom")})
    status, _, err = bench(command.BenchOptions(URL, runs=2, output=str(path)), runner)
    assert status == 1 and f"written to {path}" in err
    doc = json.loads(path.read_text())
    assert list(doc["medians"]) == list(SUBJECTS)
    assert doc["settings"] == {"url": "rabbit://bench:***@broker.example:5672//", "runs": 2,
                               "seconds": 2.0, "heartbeat_seconds": 60.0, "subjects": list(SUBJECTS)}
    assert doc["date"] == "2030-01-02T03:04:05+00:00"
    assert {"python", "kombu", "amqp", "oslo.messaging"} <= set(doc["versions"])
    assert len(doc["runs"]) == 10
    failed = [run for run in doc["runs"] if run["figures"] is None]
    assert [(r["subject"], r["round"]) for r in failed] == [("bare_amqp", 1)]
    assert "boom" in failed[0]["error"]
    assert doc["spread"]["bare_amqp"]["calls_per_s"]["count"] == 1
    assert doc["spread"]["rabbit_ha"]["heartbeat_cpu_percent"] == {
        "median": 0.4, "low": 0.3, "high": 0.5, "count": 3}
    assert doc["heartbeat"]["details"]["heartbeat_frames"] == 1234
    verdicts = {(t["subject"], t["figure"], t["versus"]): t["verdict"] for t in doc["targets"]}
    assert verdicts[("rabbit_ha", "calls_per_s", "oslo_rabbit")] == "PASS"
    assert {t["verdict"] for t in doc["informational"]} == {"info"}
    assert "s3cret" not in path.read_text()


def test_memory_url_is_refused():
    with pytest.raises(exc.ConfigurationError, match="needs a RabbitMQ broker"):
        bench(command.BenchOptions("memory://"), FakeRunner())


def test_the_default_url_is_the_test_clusters_first_node():
    assert command.default_url({}) == "rabbit://guest:guest@127.0.0.1:27672/"
    assert command.default_url({"RHA_TEST_BASE_PORT": "30000"}) == "rabbit://guest:guest@127.0.0.1:30000/"
    with pytest.raises(exc.ConfigurationError, match="RHA_TEST_BASE_PORT"):
        command.default_url({"RHA_TEST_BASE_PORT": "high"})


# -- the command line ---------------------------------------------------------------------


def test_cli_parses_the_bench_options():
    args = cli.build_parser().parse_args(
        ["bench", "--url", URL, "--runs", "7", "--seconds", "0.5", "--heartbeat-seconds", "0",
         "--subjects", "bare_amqp, rabbit_ha,bare_amqp", "--json", "--output", "x.json"])
    assert (args.url, args.runs, args.seconds, args.heartbeat_seconds) == (URL, 7, 0.5, 0.0)
    assert args.subjects == ("bare_amqp", "rabbit_ha") and args.json and args.output == "x.json"
    defaults = cli.build_parser().parse_args(["bench"])
    assert (defaults.url, defaults.runs, defaults.seconds, defaults.heartbeat_seconds) == (None, 5, 2.0, 60.0)
    assert defaults.subjects == SUBJECTS and not defaults.json


@pytest.mark.parametrize(("argv", "message"), [
    (["--subjects", "rabbit_ha,nope"], "unknown subject 'nope'; choose from rabbit_ha, rabbit_ha_oslo, "
     "oslo_rabbit, bare_amqp, oslo_fake"),
    (["--subjects", ","], "no subject given"),
    (["--runs", "0"], "at least 1 run"),
    (["--runs", "two"], "not a whole number"),
    (["--seconds", "0"], "must be a positive number of seconds"),
    (["--heartbeat-seconds", "-1"], "must be a positive number of seconds"),
])
def test_cli_refuses_bad_arguments_with_exit_status_2(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_a_memory_url_with_exit_status_2(capsys):
    assert cli.main(["bench", "--url", "memory://"]) == 2
    assert "needs a RabbitMQ broker" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["--url", URL, "--runs", "3"], ["--help"], ["-v", "x"]])
def test_without_the_checkout_bench_says_where_the_benchmarks_are(capsys, monkeypatch, argv):
    # As in an installed wheel: the benchmark's module cannot be imported.
    monkeypatch.setattr(cli.measure, "BENCH_MODULE", "benchmarks.no_such_bench.command")
    assert cli.main(["bench", *argv]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [cli.measure.UNAVAILABLE]
    assert "source checkout" in captured.err and "tox -e bench" in captured.err
    assert "bench" in cli.build_parser().format_help()  # still listed, and the rest still parses


def test_children_find_the_benchmarks_from_any_directory():
    from benchmarks import bench

    env = bench.child_env({"PYTHONPATH": f"/elsewhere{os.pathsep}{bench.CHECKOUT}", "HOME": "/h"})
    assert env["PYTHONPATH"] == os.pathsep.join([str(bench.CHECKOUT), "/elsewhere"])
    assert env["HOME"] == "/h"
    assert bench.child_env({})["PYTHONPATH"] == str(bench.CHECKOUT)
    assert (bench.CHECKOUT / "benchmarks" / "bench" / "worker.py").is_file()


# -- the worker's and the heartbeat benchmark's pure parts ----------------------------------


def test_percentile_is_the_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert worker.percentile(values, 0.50) == 50.0
    assert worker.percentile(values, 0.99) == 99.0
    assert worker.percentile(values, 1.0) == 100.0
    assert worker.percentile([7.0], 0.99) == 7.0
    assert worker.percentile([1.0, 2.0, 3.0], 0.0) == 1.0
    with pytest.raises(ValueError):
        worker.percentile([], 0.5)


def test_rss_per_counts_the_memory_each_object_adds():
    kept: list[bytearray] = []
    per = worker.rss_per(4, lambda i: kept.append(bytearray(b"x" * (2 << 20))))  # 2 MiB, touched
    assert len(kept) == 4
    assert 1500 < per < 3000


def test_heartbeat_windows_and_their_median():
    def window(percent: float) -> heartbeat.Measurement:
        return heartbeat.Measurement(wall=10.0, user=percent / 10, system=0.0)

    assert window(0.5).percent == pytest.approx(0.5)
    assert heartbeat.Measurement(0.0, 1.0, 1.0).percent == 0.0
    fed = iter([window(0.9), window(0.2), window(0.5)])
    windows = heartbeat.measure_windows(10.0, 3, lambda seconds: next(fed))
    assert heartbeat.median_window(windows).percent == pytest.approx(0.5)
    with pytest.raises(ValueError):
        heartbeat.measure_windows(10.0, 0)
    phase = heartbeat.LibraryPhase([window(0.2), window(0.4)], frames=800, declared_dead=0, lost=0)
    data = phase.as_json()
    assert data["heartbeat_cpu_percent"] == pytest.approx(0.3)  # the median of two: their mean
    assert data["windows_percent"] == pytest.approx([0.2, 0.4]) and data["heartbeat_frames"] == 800


def test_measure_takes_the_sleep_it_is_given():
    slept: list[float] = []
    measured = heartbeat.measure(60.0, slept.append)
    assert slept == [60.0] and measured.wall < 5

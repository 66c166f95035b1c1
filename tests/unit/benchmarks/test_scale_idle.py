"""benchmarks.scale.idle: the pure parts, with fake subjects, no broker and no waiting."""

from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
from typing import Any

import pytest

from benchmarks.bench import CHECKOUT
from benchmarks.heartbeat_cpu import Measurement
from benchmarks.scale import idle

URL = "rabbit://u:p@h1:5672,u:p@h2:5672,u:p@h3:5672/"


def test_the_contract_constants():
    assert idle.PART == "idle"
    assert idle.COUNTS == (10, 100, 1000, 2000)
    assert idle.SUBJECTS == ("rabbit_ha", "oslo_rabbit", "bare_amqp")
    assert idle.DEFAULT_THRESHOLD == 10 and idle.DEFAULT_SECONDS == 20.0


# -- limits, memory, arguments --------------------------------------------------------


def _limits(soft: int, hard: int) -> tuple[Any, list[tuple[int, tuple[int, int]]]]:
    calls: list[tuple[int, tuple[int, int]]] = []
    return (lambda which: (soft, hard)), calls


def test_raise_nofile_raises_the_soft_limit_to_the_hard_one():
    getrlimit, calls = _limits(1024, 20000)
    assert idle.raise_nofile(2256, getrlimit=getrlimit,
                             setrlimit=lambda which, value: calls.append((which, value))) == 20000
    assert calls == [(resource.RLIMIT_NOFILE, (20000, 20000))]


def test_raise_nofile_leaves_a_soft_limit_already_at_the_hard_one():
    getrlimit, calls = _limits(20000, 20000)
    assert idle.raise_nofile(2256, getrlimit=getrlimit,
                             setrlimit=lambda which, value: calls.append((which, value))) == 20000
    assert calls == []


def test_raise_nofile_with_an_unlimited_hard_limit():
    getrlimit, calls = _limits(1024, resource.RLIM_INFINITY)
    assert idle.raise_nofile(2256, getrlimit=getrlimit,
                             setrlimit=lambda which, value: calls.append((which, value))) == 2256
    assert calls == [(resource.RLIMIT_NOFILE, (2256, resource.RLIM_INFINITY))]


def test_raise_nofile_fails_clearly_below_what_is_needed():
    getrlimit, calls = _limits(1024, 1024)
    with pytest.raises(idle.ScaleError, match=r"open files limit is 1024 \(hard\), and 2256 are needed"):
        idle.raise_nofile(2256, getrlimit=getrlimit,
                          setrlimit=lambda which, value: calls.append((which, value)))
    assert calls == []


def test_rss_kb_reads_vmrss(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t  999 kB\nVmRSS:\t  12345 kB\nThreads:\t2\n")
    assert idle.rss_kb(str(status)) == 12345.0


def test_rss_kb_without_vmrss(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\n")
    with pytest.raises(idle.ScaleError, match="no VmRSS"):
        idle.rss_kb(str(status))


def test_rss_kb_of_this_process():
    assert idle.rss_kb() > 0


def test_parse_counts():
    assert idle.parse_counts("10,100,1000,2000") == (10, 100, 1000, 2000)
    assert idle.parse_counts(" 5, 5 ,1,") == (5, 1)
    for bad in ("", "0", "x", "10,-1"):
        with pytest.raises(Exception):  # noqa: B017 - argparse's type error
            idle.parse_counts(bad)


def test_rotated_spreads_over_the_hosts():
    assert [idle.rotated("abc", i)[0] for i in range(5)] == ["a", "b", "c", "a", "b"]
    assert idle.rotated("abc", 1) == ("b", "c", "a")
    assert idle.rotated("abc", -1) == ("c", "a", "b")
    assert idle.rotated((), 3) == ()


def test_point_leaves_out_what_does_not_apply():
    assert idle.Point(10, 1.5, 2000.0, 100.0).as_json() == {
        "cpu_percent": 1.5, "rss_kb": 2000.0, "rss_kb_per_connection": 100.0}
    assert idle.Point(10, 1.5, 2000.0, 100.0, 0.0).as_json()["declared_dead"] == 0.0


def test_last_json_line():
    assert idle.last_json_line('progress\n{"idle": {}}\n\n') == {"idle": {}}
    with pytest.raises(idle.ScaleError, match="printed nothing"):
        idle.last_json_line("\n")
    with pytest.raises(idle.ScaleError, match="not JSON"):
        idle.last_json_line('{"idle": {}}\ndone\n')
    with pytest.raises(idle.ScaleError, match="not a JSON object"):
        idle.last_json_line("[1]\n")


# -- one point, with a fake subject ----------------------------------------------------------


class FakeIdle(idle.Idle):
    name = "fake"

    def __init__(self, url: str, threshold: int, *, fail_at: int | None = None,
                 dead: int | None = 0, rss: list[float] | None = None) -> None:
        super().__init__(url, threshold)
        self.fail_at = fail_at
        self.dead = dead
        self.opened: list[int] = []
        self.closed = 0
        self.rss = rss

    def open(self, i: int) -> None:
        if i == self.fail_at:
            raise ConnectionRefusedError("refused")
        self.opened.append(i)
        if self.rss is not None and i >= 0:
            self.rss[0] += 150.0
        self.handles.append(self)

    def declared_dead(self) -> int | None:
        return self.dead

    def close(self) -> None:
        self.closed += 1
        self.handles.clear()


def _point(fake: FakeIdle, count: int = 4, **kwargs: Any) -> tuple[idle.Point, dict[str, Any]]:
    seen: dict[str, Any] = {"slept": [], "measured": [], "nofile": [], "said": []}
    memory = fake.rss if fake.rss is not None else [1000.0]

    def make(subject: str, url: str, threshold: int) -> FakeIdle:
        seen["made"] = (subject, url, threshold)
        return fake

    def measure_one(seconds: float) -> Measurement:
        seen["measured"].append(seconds)
        return Measurement(wall=seconds, user=0.2, system=0.1)

    point = idle.measure_point(
        "rabbit_ha", URL, count, 20.0, 10, make=make, measure_one=measure_one,
        sleep=seen["slept"].append, rss=lambda: memory[0], nofile=seen["nofile"].append,
        say=seen["said"].append, **kwargs)
    return point, seen


def test_measure_point_opens_settles_measures_and_closes():
    fake = FakeIdle(URL, 10, rss=[1000.0])
    point, seen = _point(fake)
    assert seen["made"] == ("rabbit_ha", URL, 10)
    assert seen["nofile"] == [4 + idle.FD_MARGIN]
    assert fake.opened == [-1, 0, 1, 2, 3]  # a warm-up connection first, closed again
    assert seen["slept"] == [10.0]  # settles T by default
    assert seen["measured"] == [20.0]
    assert fake.closed == 2  # after the warm-up, and at the end
    assert point == idle.Point(4, pytest.approx(1.5), 1600.0, 150.0, 0.0)
    assert point.as_json()["rss_kb_per_connection"] == 150.0
    assert any("4: opened" in line for line in seen["said"])


def test_measure_point_settles_as_told_and_reports_no_deaths_where_not_counted():
    fake = FakeIdle(URL, 10, dead=None)
    point, seen = _point(fake, settle=2.5)
    assert seen["slept"] == [2.5]
    assert "declared_dead" not in point.as_json()


def test_a_connection_that_cannot_be_opened_fails_the_point_clearly_and_closes_the_others():
    fake = FakeIdle(URL, 10, fail_at=2)
    with pytest.raises(idle.ScaleError, match=r"opening connection 3 of 4 failed: "
                                              r"ConnectionRefusedError: refused .*fd_total"):
        _point(fake)
    assert fake.closed == 2 and fake.handles == []


def test_a_failed_measurement_still_closes_everything():
    fake = FakeIdle(URL, 10)

    def measure_one(seconds: float) -> Measurement:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        idle.measure_point("bare_amqp", URL, 3, 1.0, 10, make=lambda *a: fake, measure_one=measure_one,
                           sleep=lambda s: None, rss=lambda: 1.0, nofile=lambda n: n, say=lambda s: None)
    assert fake.closed == 2


def test_make_idle_refuses_an_unknown_subject():
    with pytest.raises(idle.ScaleError, match="unknown subject 'oslo_fake'"):
        idle.make_idle("oslo_fake", URL, 10)


# -- every point, each in a child ------------------------------------------------------------


def test_run_measures_every_count_in_a_child_each():
    calls = []

    def spawn(subject: str, url: str, count: int, seconds: float, threshold: int,
              settle: float | None) -> dict[str, float]:
        calls.append((subject, url, count, seconds, threshold, settle))
        return {"cpu_percent": count / 1000, "rss_kb": 1.0, "rss_kb_per_connection": 2.0}

    result = idle.run("oslo_rabbit", URL, (10, 100), 5.0, 4, spawn=spawn)
    assert result == {"idle": {"10": {"cpu_percent": 0.01, "rss_kb": 1.0, "rss_kb_per_connection": 2.0},
                               "100": {"cpu_percent": 0.1, "rss_kb": 1.0, "rss_kb_per_connection": 2.0}}}
    assert calls == [("oslo_rabbit", URL, 10, 5.0, 4, None), ("oslo_rabbit", URL, 100, 5.0, 4, None)]
    with pytest.raises(idle.ScaleError, match="unknown subject"):
        idle.run("nope", URL, spawn=spawn)


def _runner(returncode: int = 0, stdout: str = "", seen: list[Any] | None = None) -> Any:
    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if seen is not None:
            seen.append((argv, kwargs))
        return subprocess.CompletedProcess(argv, returncode, stdout=stdout)

    return run


def test_spawn_point_runs_one_point_in_process_in_a_child():
    seen: list[Any] = []
    figures = {"cpu_percent": 1.0, "rss_kb": 3.0, "rss_kb_per_connection": 0.5, "declared_dead": 0.0}
    stdout = "progress\n" + json.dumps({"idle": {"2000": figures}}) + "\n"
    assert idle.spawn_point("rabbit_ha", URL, 2000, 20.0, 10, runner=_runner(stdout=stdout, seen=seen)) \
        == figures
    (argv, kwargs), = seen
    assert argv[:3] == [sys.executable, "-m", "benchmarks.scale.idle"]
    assert argv[3:] == ["rabbit_ha", URL, "--counts", "2000", "--seconds", "20.0", "--threshold", "10",
                        "--in-process"]
    assert kwargs["timeout"] == pytest.approx(idle.CHILD_MARGIN + 30.0 + 2000 * idle.CHILD_PER_CONNECTION)
    assert str(CHECKOUT) in kwargs["env"]["PYTHONPATH"]


def test_spawn_point_passes_the_settle_time():
    seen: list[Any] = []
    stdout = json.dumps({"idle": {"10": {"cpu_percent": 0.0}}})
    idle.spawn_point("bare_amqp", URL, 10, 1.0, 4, 0.5, runner=_runner(stdout=stdout, seen=seen))
    assert seen[0][0][-2:] == ["--settle", "0.5"]


def test_spawn_point_failures():
    with pytest.raises(idle.ScaleError, match="exited with status 1"):
        idle.spawn_point("rabbit_ha", URL, 10, 1.0, 10, runner=_runner(returncode=1))
    with pytest.raises(idle.ScaleError, match="no figures for 10"):
        idle.spawn_point("rabbit_ha", URL, 10, 1.0, 10, runner=_runner(stdout='{"idle": {"100": {}}}'))

    def late(argv: list[str], **kwargs: Any) -> Any:
        raise subprocess.TimeoutExpired(argv, kwargs["timeout"])

    with pytest.raises(idle.ScaleError, match="took more than"):
        idle.spawn_point("rabbit_ha", URL, 10, 1.0, 10, runner=late)


# -- the command line -------------------------------------------------------------------


def test_main_in_process_prints_one_json_object_last(monkeypatch):
    def fake_point(subject: str, url: str, count: int, seconds: float, threshold: int,
                   settle: float | None = None) -> idle.Point:
        assert (subject, url, seconds, threshold, settle) == ("bare_amqp", URL, 3.0, 4, None)
        return idle.Point(count, 0.0, 100.0 * count, 100.0)

    monkeypatch.setattr(idle, "measure_point", fake_point)
    out = io.StringIO()
    assert idle.main(["bare_amqp", URL, "--counts", "10,20", "--seconds", "3", "--threshold", "4",
                      "--in-process"], out=out) == 0
    assert json.loads(out.getvalue().splitlines()[-1]) == {"idle": {
        "10": {"cpu_percent": 0.0, "rss_kb": 1000.0, "rss_kb_per_connection": 100.0},
        "20": {"cpu_percent": 0.0, "rss_kb": 2000.0, "rss_kb_per_connection": 100.0}}}


def test_main_spawns_a_child_per_point_by_default(monkeypatch):
    seen = []

    def fake_run(subject: str, url: str, counts: Any, seconds: float, threshold: int,
                 settle: float | None = None) -> dict[str, Any]:
        seen.append((subject, counts, seconds, threshold))
        return {"idle": {}}

    monkeypatch.setattr(idle, "run", fake_run)
    out = io.StringIO()
    assert idle.main(["rabbit_ha", URL], out=out) == 0
    assert seen == [("rabbit_ha", idle.COUNTS, idle.DEFAULT_SECONDS, idle.DEFAULT_THRESHOLD)]
    assert out.getvalue() == '{"idle": {}}\n'


def test_main_fails_with_a_clear_message(monkeypatch, capsys):
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise idle.ScaleError("the open files limit is 1024 (hard), and 2256 are needed")

    monkeypatch.setattr(idle, "run", fail)
    out = io.StringIO()
    assert idle.main(["rabbit_ha", URL], out=out) == 1
    assert out.getvalue() == ""
    assert "benchmarks.scale.idle: the open files limit is 1024" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["nope", URL], ["rabbit_ha", URL, "--counts", "0"],
                                  ["rabbit_ha", URL, "--seconds", "0"],
                                  ["rabbit_ha", URL, "--threshold", "1"]])
def test_main_refuses_bad_arguments(argv):
    with pytest.raises(SystemExit) as exit_:
        idle.main(argv, out=io.StringIO())
    assert exit_.value.code == 2

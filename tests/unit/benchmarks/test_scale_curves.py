"""rabbit-ha bench --scale, growth curves: points, figures, clean-up and output, with fakes (no broker)."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.bench import worker
from benchmarks.bench.subjects import PAYLOAD
from benchmarks.scale import curves

URL = "rabbit://bench:s3cret@broker.example:5672/"


class FakeSubject:
    """Echoes pings, counts what it made; casts go to the FakeServers of the same topic."""

    def __init__(self, name: str, url: str, topic: str, *, thread_safe: bool = True,
                 reply: Callable[[str], Any] | None = None) -> None:
        self.name = name
        self.url = url
        self.topic = topic
        self.caller_thread_safe = thread_safe
        self.payloads: list[str] = []
        self.casters: list[bool] = []
        self.closed = False
        self.settled = 0
        self.servers: FakeServers | None = None
        self._reply = reply or (lambda p: p)

    def caller(self, payload: str = PAYLOAD) -> Callable[[], Any]:
        self.payloads.append(payload)
        return lambda: self._reply(payload)

    def caster(self, fanout: bool = False) -> Callable[[int], None]:
        self.casters.append(fanout)

        def cast(n: int) -> None:
            assert self.servers is not None
            self.servers.receive()

        return cast

    def settle(self) -> None:
        self.settled += 1

    def close(self) -> None:
        self.closed = True


class FakeServers(worker.Servers):
    def __init__(self, names: list[str], fanout_only: bool) -> None:
        self.names = names
        self.fanout_only = fanout_only
        self.received: dict[str, int] = {}
        self.closed = False

    def receive(self) -> None:
        for name in self.names:
            self.received[name] = self.received.get(name, 0) + 1

    def wait(self, expected: dict[str, int], timeout: float) -> bool:
        return all(self.received.get(k, 0) >= v for k, v in expected.items())

    def reset(self) -> None:
        self.received.clear()

    def counts(self) -> dict[str, int]:
        return dict(self.received)

    def close(self) -> None:
        self.closed = True


class Fakes:
    """Stands in for make(), start_servers() and the timed measurement; records them."""

    def __init__(self, *, thread_safe: bool = True, rate: float = 100.0) -> None:
        self.subjects: list[FakeSubject] = []
        self.servers: list[FakeServers] = []
        self.measured: list[list[Callable[[], Any]]] = []
        self.thread_safe = thread_safe
        self.rate = rate

    def make(self, name: str, url: str, topic: str) -> FakeSubject:
        subject = FakeSubject(name, url, topic, thread_safe=self.thread_safe)
        self.subjects.append(subject)
        return subject

    def start_servers(self, subject: FakeSubject, url: str, names: list[str], *,
                      fanout_only: bool = False) -> FakeServers:
        servers = FakeServers(names, fanout_only)
        subject.servers = servers
        self.servers.append(servers)
        return servers

    def measure(self, callers: list[Callable[[], Any]], seconds: float) -> float:
        for call in callers:
            call()
        self.measured.append(callers)
        return self.rate * len(callers)


def ticking_clock(step: float = 0.25) -> Callable[[], float]:
    ticks = itertools.count()
    return lambda: next(ticks) * step


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    fakes = Fakes()
    monkeypatch.setattr(curves, "make", fakes.make)
    monkeypatch.setattr(curves, "start_servers", fakes.start_servers)
    monkeypatch.setattr(worker, "concurrent_calls", fakes.measure)
    real_casts = worker.casts
    monkeypatch.setattr(worker, "casts", lambda *a, **k: real_casts(*a, clock=ticking_clock(), **k))
    return fakes


def test_points_are_those_of_the_contract() -> None:
    assert curves.PART == "curves"
    assert curves.CURVES == ("concurrency", "size", "fanout")
    assert curves.CONCURRENCY == (1, 4, 16, 64)
    assert curves.SIZES == (100, 10_000, 100_000, 1_000_000)
    assert curves.FANOUT == (1, 5, 20)
    assert curves.SUBJECTS == ("rabbit_ha", "rabbit_ha_oslo", "oslo_rabbit", "bare_amqp")


def test_bytes_per_s_counts_the_payload_both_ways() -> None:
    assert curves.size_figures(1_000_000, 25.0) == {"calls_per_s": 25.0, "bytes_per_s": 50_000_000.0}
    assert len(curves.payload(10_000).encode()) == 10_000


@pytest.mark.parametrize(("text", "expected"), [
    ("fanout,size", ("size", "fanout")),
    (" concurrency ", ("concurrency",)),
    ("size,size", ("size",)),
])
def test_parse_curves_keeps_the_contract_order(text: str, expected: tuple[str, ...]) -> None:
    assert curves.parse_curves(text) == expected


@pytest.mark.parametrize("text", ["", "latency", "size,latency"])
def test_parse_curves_refuses_unknown_names(text: str) -> None:
    with pytest.raises(ValueError, match="choose from concurrency, size, fanout"):
        curves.parse_curves(text)


def test_threads_share_one_caller_when_it_is_thread_safe(fakes: Fakes) -> None:
    subject = fakes.make("rabbit_ha", URL, "t")
    curve = curves.concurrency_curve(subject, 1.0, measure=fakes.measure)  # type: ignore[arg-type]
    assert curve == {"1": {"calls_per_s": 100.0}, "4": {"calls_per_s": 400.0},
                     "16": {"calls_per_s": 1600.0}, "64": {"calls_per_s": 6400.0}}
    assert subject.payloads == [PAYLOAD]
    assert [len(callers) for callers in fakes.measured] == [1, 4, 16, 64]
    assert all(len(set(map(id, callers))) == 1 for callers in fakes.measured)


def test_bare_amqp_threads_get_a_caller_each_kept_between_points() -> None:
    fakes = Fakes(thread_safe=False)
    subject = fakes.make("bare_amqp", URL, "t")
    curves.concurrency_curve(subject, 1.0, measure=fakes.measure)  # type: ignore[arg-type]
    assert len(subject.payloads) == 64  # not 1 + 4 + 16 + 64
    assert [len(set(map(id, callers))) for callers in fakes.measured] == [1, 4, 16, 64]
    assert fakes.measured[1][0] is fakes.measured[0][0]


def test_size_points_send_each_payload_and_check_the_echo(fakes: Fakes) -> None:
    subject = fakes.make("rabbit_ha", URL, "t")
    curve = curves.size_curve(subject, 1.0, measure=fakes.measure)  # type: ignore[arg-type]
    assert [len(p) for p in subject.payloads] == list(curves.SIZES)
    assert curve["1000000"] == {"calls_per_s": 100.0, "bytes_per_s": 200_000_000.0}
    assert list(curve) == ["100", "10000", "100000", "1000000"]


def test_a_truncated_echo_fails_the_size_curve(fakes: Fakes) -> None:
    subject = FakeSubject("rabbit_ha", URL, "t", reply=lambda p: p[:10])
    with pytest.raises(RuntimeError, match="a 100-byte ping came back as 10"):
        curves.size_curve(subject, 1.0, measure=fakes.measure)  # type: ignore[arg-type]


def test_fanout_points_start_width_servers_on_topics_of_their_own(fakes: Fakes) -> None:
    curve = curves.fanout_curve("rabbit_ha", URL, "topic", 1.0)
    assert [s.names for s in fakes.servers] == [["f0"], [f"f{i}" for i in range(5)],
                                                [f"f{i}" for i in range(20)]]
    assert all(s.fanout_only and s.closed for s in fakes.servers)
    assert [s.topic for s in fakes.subjects] == ["topic-fanout1", "topic-fanout5", "topic-fanout20"]
    assert all(s.closed and s.casters == [True] for s in fakes.subjects)
    # The ticking clock: 0.25 s a reading; started at 0, casts at 0.25, 0.5 and
    # 0.75, the loop ends at 1.0 and the figure's clock stops at 1.25.
    assert curve == {w: {"casts_per_s": 3 / 1.25} for w in ("1", "5", "20")}


def test_run_gives_the_contract_shape_and_closes_everything(fakes: Fakes) -> None:
    figures = curves.run("rabbit_ha", URL, curves.CURVES, 2.0)
    assert list(figures) == ["concurrency", "size", "fanout"]
    assert list(figures["concurrency"]) == ["1", "4", "16", "64"]
    assert set(figures["concurrency"]["64"]) == {"calls_per_s"}
    assert list(figures["size"]) == ["100", "10000", "100000", "1000000"]
    assert set(figures["size"]["100"]) == {"calls_per_s", "bytes_per_s"}
    assert list(figures["fanout"]) == ["1", "5", "20"]
    assert set(figures["fanout"]["20"]) == {"casts_per_s"}
    assert fakes.servers[0].names == ["s0"] and not fakes.servers[0].fanout_only
    assert all(s.closed for s in fakes.servers) and all(s.closed for s in fakes.subjects)
    assert len(fakes.subjects) == 4  # calls, then one per fanout width


def test_run_measures_only_the_curves_asked_for(fakes: Fakes) -> None:
    assert list(curves.run("bare_amqp", URL, ["size"], 1.0)) == ["size"]
    assert len(fakes.subjects) == 1
    assert list(curves.run("bare_amqp", URL, ["fanout"], 1.0)) == ["fanout"]


def test_run_closes_servers_and_subject_when_a_point_fails(fakes: Fakes,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(callers: list[Callable[[], Any]], seconds: float) -> float:
        raise RuntimeError("a client thread failed")

    monkeypatch.setattr(worker, "concurrent_calls", broken)
    with pytest.raises(RuntimeError, match="client thread"):
        curves.run("rabbit_ha", URL, curves.CURVES, 1.0)
    assert fakes.servers[0].closed and fakes.subjects[0].closed
    assert len(fakes.subjects) == 1  # fanout never started


@pytest.mark.parametrize(("subject", "seconds", "message"), [
    ("oslo_fake", 1.0, "unknown subject"), ("rabbit_ha", 0.0, "seconds must be positive"),
])
def test_run_refuses_bad_arguments(fakes: Fakes, subject: str, seconds: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        curves.run(subject, URL, curves.CURVES, seconds)
    assert not fakes.subjects


def test_main_prints_the_figures_as_its_last_line(fakes: Fakes,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert curves.main(["oslo_rabbit", URL, "--curves", "fanout,concurrency", "--seconds", "0.5"]) == 0
    out, err = capsys.readouterr()
    figures = json.loads(out.splitlines()[-1])
    assert list(figures) == ["concurrency", "fanout"]
    assert "oslo_rabbit concurrency 64:" in err


def test_main_fails_with_a_message_on_stderr(fakes: Fakes, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    def no_broker(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    monkeypatch.setattr(curves, "make", no_broker)
    assert curves.main(["rabbit_ha", URL]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "curves: rabbit_ha failed: ConnectionRefusedError: [Errno 111] Connection refused" in err


@pytest.mark.parametrize("argv", [["rabbit_ha", URL, "--curves", "latency"],
                                  ["rabbit_ha", URL, "--seconds", "-1"],
                                  ["oslo_fake", URL]])
def test_main_refuses_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        curves.main(argv)
    assert exit_info.value.code == 2


def test_a_failed_warm_up_fails_the_measurement_without_hanging() -> None:
    calls = threading.Semaphore(0)

    def fine() -> None:
        calls.release()

    def broken() -> None:
        raise ConnectionResetError("gone")

    with pytest.raises(RuntimeError, match="gone"):
        worker.concurrent_calls([fine, broken, fine], 1.0, clock=ticking_clock(),
                                sleep=lambda s: None)


def test_concurrent_calls_counts_every_thread_with_the_given_clock() -> None:
    reached = threading.Event()
    made = itertools.count(1)

    def call() -> None:
        if next(made) >= 200:
            reached.set()

    rate = worker.concurrent_calls([call] * 4, 1.0, clock=ticking_clock(1.0),
                                   sleep=lambda s: reached.wait(10))
    assert rate >= (200 - 4 * (worker.WARM_UP // 4)) / 1.0

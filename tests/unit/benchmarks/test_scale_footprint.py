"""rabbit-ha bench --scale, part footprint: its pure parts, with canned API answers and no broker."""

from __future__ import annotations

import argparse
import io
import json
import sys
from typing import Any

import pytest

from benchmarks.scale import broker, footprint, service

NODES = [
    {"name": "n1@h", "running": True, "mem_used": 100_000_000, "proc_used": 400},
    {"name": "n2@h", "running": True, "mem_used": 120_000_000, "proc_used": 410},
    {"name": "n3@h", "running": True, "mem_used": 110_000_000, "proc_used": 390},
]


def totals(connections: float = 0, channels: float = 0, queues: float = 0, consumers: float = 0,
           processes: float = 1200, memory: float = 330_000_000) -> broker.Totals:
    return broker.Totals(connections=connections, channels=channels, queues=queues,
                         consumers=consumers, erlang_processes=processes, memory_bytes=memory,
                         total_memory_bytes=memory)


# -- the management API ------------------------------------------------------------


def test_endpoint_is_the_first_host_plus_20() -> None:
    where = broker.endpoint("rabbit://u%40x:p%3Aw@h1:29672,u:p@h2:29673/vh%2F1?heartbeat=4")
    assert (where.host, where.port, where.user, where.password, where.vhost) == \
        ("h1", 29692, "u@x", "p:w", "vh/1")
    assert where.base == "http://h1:29692"


def test_endpoint_defaults_and_explicit_port() -> None:
    where = broker.endpoint("rabbit://h/", management_port=15672)
    assert (where.port, where.user, where.password, where.vhost) == (15672, "guest", "guest", "/")
    assert broker.endpoint("rabbit://u:p@[::1]:5672/").base == "http://[::1]:5692"
    with pytest.raises(broker.BrokerError):
        broker.endpoint("not a url")


def test_totals_sum_every_node() -> None:
    got = broker.totals_from(NODES, [{"name": "c"}] * 7, [{}] * 9, [{}] * 4, [{}] * 3)
    assert got == totals(7, 9, 4, 3, 1200, 330_000_000)
    assert got.as_dict()["memory_bytes"] == 330_000_000.0


BREAKDOWN = {"connection_readers": 100, "connection_writers": 20, "connection_channels": 300,
             "connection_other": 400, "queue_procs": 1000, "quorum_queue_procs": 5,
             "other_proc": 10**9, "binary": 10**9, "metrics": 50, "mgmt_db": 70,
             "strategy": "rss", "total": {"erlang": 1, "rss": 2}}


def test_client_memory_counts_what_clients_objects_hold() -> None:
    assert broker.client_memory(BREAKDOWN) == 100 + 20 + 300 + 400 + 1000 + 5 + 50 + 70
    got = broker.totals_from(NODES, [], [], [], [], [BREAKDOWN, BREAKDOWN])
    assert got.memory_bytes == 2 * 1945 and got.total_memory_bytes == 330_000_000


def test_a_node_without_statistics_is_an_error_not_a_low_sum() -> None:
    with pytest.raises(broker.BrokerError, match="n2@h"):
        broker.node_sums([NODES[0], {"name": "n2@h", "running": True}])
    with pytest.raises(broker.BrokerError, match="not running"):
        broker.node_sums([{**NODES[0], "running": False}])
    with pytest.raises(broker.BrokerError):
        broker.node_sums([])


def test_per_service_is_the_difference_over_n() -> None:
    base = totals(2, 2, 4, 0, 1000, 300_000_000)
    measured = totals(52, 102, 154, 250, 4050, 310_000_000)
    assert broker.per_service(measured, base, 50) == {
        "connections": 1.0, "channels": 2.0, "queues": 3.0, "consumers": 5.0,
        "erlang_processes": 61.0, "memory_bytes": 200_000.0}
    with pytest.raises(ValueError):
        broker.per_service(measured, base, 0)


def test_median_totals_figure_by_figure() -> None:
    samples = [totals(1, memory=10), totals(3, memory=30), totals(2, memory=1000)]
    got = broker.median_totals(samples)
    assert (got.connections, got.memory_bytes) == (2.0, 30.0)
    with pytest.raises(broker.BrokerError):
        broker.median_totals([])


def test_consumed_queues_and_expiry_from_api_items() -> None:
    consumers: list[dict[str, Any]] = [{"queue": {"name": "t.svc-1", "vhost": "/"}, "consumer_tag": "a"},
                 {"queue": {"name": "t", "vhost": "/"}}, {"queue": "odd"}, {}]
    assert broker.consumed_queues(consumers) == {("/", "t.svc-1"), ("/", "t")}
    assert broker.expires_s({"name": "q", "arguments": {"x-expires": 1_800_000}}) == 1800.0
    assert broker.expires_s({"name": "q", "arguments": {}}) is None
    assert broker.expires_s({"name": "q"}) is None
    assert broker.expires_s({"name": "q", "arguments": {"x-expires": True}}) is None
    assert broker.connection_names([{"name": "a -> b"}, {"x": 1}]) == {"a -> b"}


class FakeApi(broker.Management):
    """Canned answers by path; records deletions."""

    def __init__(self, answers: dict[str, Any]) -> None:
        super().__init__(broker.endpoint("rabbit://g:g@h:5672/"))
        self.answers = answers
        self.deleted: list[str] = []

    def request(self, method: str, path: str) -> Any:
        if method == "DELETE":
            self.deleted.append(path)
            if "gone" in path:
                raise broker.BrokerError(f"DELETE {path} -> HTTP 404: not found")
            return None
        if path.startswith("/api/nodes/"):
            return {"memory": BREAKDOWN}
        return self.answers[path.split("?", 1)[0]]


def test_management_totals_and_delete() -> None:
    api = FakeApi({"/api/nodes": NODES, "/api/connections": [{"name": "c1"}, {"name": "c2"}],
                   "/api/channels": [{"name": "ch"}], "/api/queues": [{"name": "q"}],
                   "/api/consumers": []})
    assert api.totals() == broker.Totals(2, 1, 1, 0, 1200, 3 * 1945, 330_000_000)
    assert api.memory_bytes() == 330_000_000
    api.delete_queue("/", "reply_ab/c")
    api.delete_queue("/", "gone")  # already gone: not an error
    assert api.deleted == ["/api/queues/%2F/reply_ab%2Fc", "/api/queues/%2F/gone"]


def test_reading_takes_medians_of_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(footprint.time, "sleep", lambda s: None)
    values = iter([totals(5, memory=10), totals(6, memory=500), totals(7, memory=20)])

    class Api:
        def totals(self) -> broker.Totals:
            return next(values)

    clock = iter([0.0, 0.5, 1.5, 2.5, 3.5])
    monkeypatch.setattr(footprint.time, "monotonic", lambda: next(clock))
    got = footprint.reading(Api(), seconds=3.0, every=1.0)  # type: ignore[arg-type]
    assert (got.connections, got.memory_bytes) == (6.0, 20.0)


# -- what the services say and the storm's bookkeeping -------------------------------


def test_parse_line_ignores_other_output() -> None:
    assert footprint.parse_line("@rha answered 12.5\n") == ("answered", ["12.5"])
    assert footprint.parse_line("WARNING something") is None
    assert footprint.parse_line("@rha") is None


def record(name: str, spawned: float, answered: float | None, ready: float | None) -> footprint.Record:
    r = footprint.Record(name, spawned=spawned)
    r.answered, r.ready = answered, ready
    return r


def test_apply_event_books_every_kind() -> None:
    r = footprint.Record("svc-0", spawned=1.0)
    for line in ("@rha started 2.0", "@rha called 2.5", "@rha ready 2.6", "@rha answered 2.4",
                 "@rha loaded 20 1 5", "@rha error RuntimeError('x')", "@rha nonsense 1"):
        parsed = footprint.parse_line(line)
        assert parsed is not None
        footprint.apply_event(r, *parsed)
    assert (r.started, r.called, r.ready, r.answered) == (2.0, 2.5, 2.6, 2.4)
    assert r.load == (20, 1, 5)
    assert r.error == "RuntimeError('x')"
    assert r.answering and r.answering_at == 2.6


def test_storm_times() -> None:
    records = [record("a", spawned=100.5, answered=104.0, ready=103.0),
               record("b", spawned=100.6, answered=102.0, ready=106.0),
               record("c", spawned=100.7, answered=None, ready=101.0)]
    got = footprint.storm_times(records, restart_at=100.0)
    assert got["failed_services"] == 1.0
    assert got["all_answering_s"] == pytest.approx(6.0)  # b's client, at 106
    assert got["slowest_answer_after_start_s"] == pytest.approx(3.5)  # a: 104 - 100.5
    assert "slowest_answer_after_imports_s" not in got  # nobody said "imported"
    assert footprint.storm_times([records[2]], 100.0) == {"failed_services": 1.0}


def test_storm_times_from_the_end_of_the_imports() -> None:
    a = record("a", spawned=100.0, answered=104.0, ready=103.0)
    b = record("b", spawned=100.0, answered=109.0, ready=110.0)
    for r, line in ((a, "@rha imported 102.5"), (b, "@rha imported 108.0")):
        parsed = footprint.parse_line(line)
        assert parsed is not None
        footprint.apply_event(r, *parsed)
    got = footprint.storm_times([a, b], restart_at=99.0)
    # a: answering at 104 (its server), 1.5 s after its imports; b: at 110, 2.0 s after
    assert got["slowest_answer_after_imports_s"] == pytest.approx(2.0)
    assert got["slowest_answer_after_start_s"] == pytest.approx(9.0)


def test_a_service_is_told_the_queue_expiry_of_the_run(tmp_path, monkeypatch) -> None:
    started: list[list[str]] = []

    def popen(command: list[str], **kwargs: object) -> None:
        started.append(command)
        raise OSError("not started in a unit test")

    monkeypatch.setattr(footprint.subprocess, "Popen", popen)
    services = footprint.Services("rabbit_ha", "rabbit://h/", "t", "n", tmp_path)
    with pytest.raises(OSError):
        services.start(["svc-0"], {"svc-0": "svc-0"})
    command = started[0]
    assert command[command.index("--queue-ttl") + 1] == str(footprint.QUEUE_TTL_S)


def test_phases_for_the_log() -> None:
    r = record("a", spawned=1.0, answered=3.0, ready=3.5)
    r.started, r.called = 2.0, 3.2
    text = footprint.phases([r])
    assert "start median 1.00s" in text and "answered median 2.00s" in text


def test_queues_left_by_killed_services() -> None:
    baseline = {("/", "old")}
    before_kill: list[dict[str, Any]] = [
        {"name": "old", "vhost": "/"},
        {"name": "t", "vhost": "/"},                       # shared topic, consumed again
        {"name": "t.svc-0", "vhost": "/"},                 # server queue, taken up again
        {"name": "reply_1", "vhost": "/", "arguments": {"x-expires": 1_800_000}},
        {"name": "t_fanout_1", "vhost": "/", "arguments": {"x-expires": 30_000}},
        {"name": "reply_2", "vhost": "/", "arguments": {"x-expires": 1_800_000}},  # deleted
    ]
    killed = footprint.queues_of_killed(before_kill, baseline)
    assert ("/", "old") not in killed and len(killed) == 5
    now = [{"name": n, "vhost": "/"} for n in ("old", "t", "t.svc-0", "reply_1", "t_fanout_1")]
    consumed = {("/", "t"), ("/", "t.svc-0")}
    assert footprint.left_queues(killed, now, consumed) == (2, 1800.0)
    assert footprint.left_queues(killed, now[:3], consumed) == (0, 1800.0)
    no_expiry = footprint.queues_of_killed([{"name": "reply_9", "vhost": "/"}], set())
    assert footprint.left_queues(no_expiry, [{"name": "reply_9", "vhost": "/"}], set()) == (1, None)


def test_connection_churn_from_successive_lists() -> None:
    churn = footprint.ConnectionChurn({"a", "b", "keep"})
    churn.seen({"keep", "c"})          # a, b killed; c new
    churn.seen({"keep", "c", "d"})
    churn.seen({"keep", "d"})          # c closed again
    assert churn.figures() == {"connections_created": 2.0, "connections_closed": 3.0}


def test_cleanup_targets_only_the_runs_queues() -> None:
    queues = [{"name": n, "vhost": "/"} for n in
              ("rha-scale-ab12", "rha-scale-ab12.svc-1", "rha-scale-ab12-notifications.info",
               "reply_new", "reply_consumed", "reply_old", "someone-elses")]
    got = footprint.cleanup_targets(queues, baseline={("/", "reply_old")},
                                    consumed={("/", "reply_consumed")}, prefix="rha-scale-ab12")
    assert [name for _, name in got] == ["rha-scale-ab12", "rha-scale-ab12.svc-1",
                                         "rha-scale-ab12-notifications.info", "reply_new"]


def test_ring_and_counts() -> None:
    assert footprint.ring(["a", "b", "c"]) == {"a": "b", "b": "c", "c": "a"}
    assert footprint.ring(["a"]) == {"a": "a"}
    assert footprint.parse_counts("50, 10,10") == (10, 50)
    for bad in ("", "x", "0,5"):
        with pytest.raises(argparse.ArgumentTypeError):
            footprint.parse_counts(bad)


def test_check_reading_catches_missing_statistics() -> None:
    footprint.check_reading(totals(connections=12), totals(connections=2), 10)
    with pytest.raises(footprint.FootprintError, match="statistics"):
        footprint.check_reading(totals(connections=5), totals(connections=2), 10)


def test_service_env_caches_byte_code_outside_the_checkout() -> None:
    env = footprint.service_env({"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/bin"})
    assert "PYTHONDONTWRITEBYTECODE" not in env
    assert env["PYTHONPYCACHEPREFIX"].endswith("rha-scale-pycache")
    assert env["PYTHONPATH"].split(":")[0] == str(footprint.child_env({})["PYTHONPATH"])
    assert footprint.service_env({"PYTHONPYCACHEPREFIX": "/c"})["PYTHONPYCACHEPREFIX"] == "/c"


# -- the command line ------------------------------------------------------------------


def test_main_prints_the_figures_as_the_last_line(monkeypatch: pytest.MonkeyPatch) -> None:
    figures = {"footprint_idle": {"10": {"connections": 1.0}}, "footprint_load": {},
               "storm": {"10": {"failed_services": 0.0}}}
    seen: dict[str, Any] = {}

    def fake_run(subject: str, url: str, counts: Any, storm: bool, port: Any) -> Any:
        seen.update(subject=subject, counts=counts, storm=storm, port=port)
        return figures

    monkeypatch.setattr(footprint, "run", fake_run)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    assert footprint.main(["oslo_rabbit", "rabbit://h/", "--counts", "5,2", "--no-storm",
                           "--management-port", "15672"]) == 0
    assert json.loads(out.getvalue().strip().splitlines()[-1]) == figures
    assert seen == {"subject": "oslo_rabbit", "counts": (2, 5), "storm": False, "port": 15672}
    assert footprint.PART == "footprint"


def test_main_fails_with_a_message(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    def failing(*args: Any) -> Any:
        raise footprint.FootprintError("3 of 10 services not answering")

    monkeypatch.setattr(footprint, "run", failing)
    assert footprint.main(["rabbit_ha", "rabbit://h/"]) == 1
    assert "rabbit_ha: 3 of 10 services not answering" in capsys.readouterr().err


def test_run_refuses_unknown_subjects() -> None:
    with pytest.raises(ValueError, match="bare_amqp"):
        footprint.run("bare_amqp", "rabbit://h/")


# -- the service's own logic -----------------------------------------------------------


class FakeService(service.Service):
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[tuple[str | None, float]] = []
        self.notes = 0

    def call(self, server: str | None, timeout: float) -> Any:
        self.calls.append((server, timeout))
        if self.failures:
            self.failures -= 1
            raise TimeoutError("no answer")
        return "x"

    def notify(self) -> None:
        self.notes += 1


def test_call_peer_retries_with_growing_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service.time, "monotonic", lambda: 0.0)
    fake = FakeService(failures=3)
    service.call_peer(fake, "svc-1", deadline=100.0)
    assert fake.calls == [("svc-1", 2.0), ("svc-1", 2.0), ("svc-1", 3.0), ("svc-1", 5.0)]
    with pytest.raises(RuntimeError, match="svc-1 did not answer"):
        service.call_peer(FakeService(failures=99), "svc-1", deadline=1.0)


def test_serve_loads_and_reports(monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeService()
    service.serve(fake, iter(["\n", "load 1000 0.001\n", "idle\n", "quit\n", "load 1 1\n"]))
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("@rha loaded ")
    calls, errors, notes = (int(v) for v in out[0].split()[2:])
    assert errors == 0 and calls == len(fake.calls) and notes == fake.notes


def test_ping_endpoint_says_answered_once(capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = service.PingEndpoint()
    assert endpoint.ping({}, "a") == "a"
    assert endpoint.ping({}, "b") == "b"
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("@rha answered ")
    with pytest.raises(ValueError):
        service.make("bare_amqp", "rabbit://h/", "t", "s", "n")


def test_wait_for_statistics_of_just_started_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(footprint.time, "sleep", lambda s: None)
    answers = [broker.BrokerError("n2 reports no mem_used"), broker.BrokerError("again"), None]

    class Api:
        def totals(self) -> None:
            answer = answers.pop(0)
            if answer is not None:
                raise answer

    footprint.wait_for_statistics(Api(), timeout=30.0)  # type: ignore[arg-type]
    assert answers == []
    answers[:] = [broker.BrokerError("never")] * 3
    with pytest.raises(broker.BrokerError, match="never"):
        footprint.wait_for_statistics(Api(), timeout=-1.0)  # type: ignore[arg-type]

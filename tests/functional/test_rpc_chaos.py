"""RPC through real faults on the three-node cluster: what a caller sees.

Each scenario is a function that returns the figures it measures. The CI tests
run each once and assert with a margin for a noisy machine; the ``slow`` tests
(``tox -e figures``) repeat each five times and print min/median/max.

How the scenarios are built. The RPC server connects to node 0 (its queues
and, for quorum queues, their leader live there) and the client to node 1, so
the fault hits the server's side while the client's own connections stay up:

* *calls through a fault*: a caller thread calls ``echo`` every 100 ms with a
  3 s timeout, one call at a time; after a warm-up the server's topic queue is
  deleted (the broker cancels the consumer; the server re-declares after the
  CCN delay) or node 0 is killed (the server fails over and re-declares). A
  request published while no queue is bound comes back unroutable and the
  client re-sends it, so such a call is late, not failed.
* *casts while the leader dies*: a client on node 0 casts 1,000 numbered
  messages to a quorum queue whose leader is on node 0, while a server on
  node 1 consumes them; node 0 is killed part-way. A cast whose confirm was
  lost with the connection is sent again (at-least-once), and the server drops
  a re-sent copy by its ``_unique_id``; the figures are arrivals, duplicates
  that reached the endpoint, and casts that raised.
* *every broker down*: ``call(timeout=2)`` must raise MessagingTimeout within
  2.5 s, with warm connections that all died and with a fresh client.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import Connection
from rabbit_ha_driver.rpc import RPCClient, RPCServer, envelope
from rabbit_ha_driver.settings import from_url

from .probes import rotate_url, unique, wait_for

REPEAT = 5
CALL_INTERVAL = 0.1
CALL_TIMEOUT = 3.0
CASTS = 1000


class _Endpoint:
    """Answers calls and counts casts by sequence number."""

    def __init__(self) -> None:
        self.casts: collections.Counter[int] = collections.Counter()
        self._lock = threading.Lock()

    def echo(self, ctxt: dict[str, Any], n: int) -> int:
        return n

    def record(self, ctxt: dict[str, Any], n: int) -> None:
        with self._lock:
            self.casts[n] += 1


@contextlib.contextmanager
def _serving(url: str, topic: str, endpoint: object, recorder: ev.Recorder,
             **overrides: Any) -> Iterator[RPCServer]:
    bus = ev.EventBus()
    bus.subscribe(recorder)
    bus.subscribe(ev.LogSubscriber())
    server = RPCServer(from_url(url, connection_name="chaos-server", **overrides), topic,
                       "chaos-server", [endpoint], events=bus, start_timeout=10.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.wait(5.0)


@dataclasses.dataclass
class CallRecord:
    started: float
    took: float
    error: str | None


class Caller:
    """Calls ``echo`` every :data:`CALL_INTERVAL` seconds, one call at a time."""

    def __init__(self, client: RPCClient) -> None:
        self.client = client
        self.records: list[CallRecord] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-caller")
        self._thread.start()

    def _run(self) -> None:
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            n += 1
            started = time.monotonic()
            error = None
            try:
                if self.client.call({}, "echo", n=n) != n:
                    error = "wrong result"
            except exc.RabbitHAError as failure:
                error = f"{type(failure).__name__}: {failure}"
            self.records.append(CallRecord(started, time.monotonic() - started, error))
            next_at = max(next_at + CALL_INTERVAL, time.monotonic())
            self._stop.wait(next_at - time.monotonic())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=CALL_TIMEOUT + 5)


@dataclasses.dataclass
class CallFigures:
    calls: int
    failed: int
    longest: float
    failures: list[str]

    def line(self) -> str:
        return f"{self.calls} calls, {self.failed} failed, longest {self.longest:.3f}s"


def calls_through_fault(cluster: Any, fault: str, quorum: bool) -> CallFigures:
    """Failed calls and the longest call of a 100 ms caller through ``fault``.

    ``fault`` is ``"delete"`` (the server's topic queue is deleted) or
    ``"kill"`` (SIGKILL of the server's node).
    """
    topic = unique(f"chaos-{fault}")
    overrides: dict[str, Any] = {"rabbit_quorum_queue": quorum, "kombu_reconnect_delay": 1.0}
    recorder = ev.Recorder()
    endpoint = _Endpoint()
    with _serving(rotate_url(cluster, 0), topic, endpoint, recorder, **overrides) as server:
        listener = server.listener
        assert listener is not None and listener.subscribed
        info = wait_for(lambda: cluster.queue_info(topic), 10, interval=0.2)
        home = info.get("leader") if quorum else info.get("node")
        assert home == cluster.nodes[0].name, f"queue {topic} lives on {home}"
        client = RPCClient(from_url(rotate_url(cluster, 1), connection_name="chaos-client",
                                    **overrides), topic, timeout=CALL_TIMEOUT)
        try:
            assert client.call({}, "echo", n=0) == 0
            caller = Caller(client)
            try:
                time.sleep(1.0)
                fault_at = time.monotonic()
                if fault == "delete":
                    cluster.delete_queue(topic)
                else:
                    cluster.kill(0)
                # Long enough for recovery plus a run of calls on the far side.
                time.sleep(8.0)
            finally:
                caller.stop()
        finally:
            client.close()
    records = caller.records
    after = [r for r in records if r.started >= fault_at]
    failures = [f"t={r.started - fault_at:+.2f}s took {r.took:.2f}s: {r.error}"
                for r in records if r.error]
    assert after and all(r.error is None for r in after[-10:]), (
        f"not serving again: {failures[-3:]}; server events: {recorder.events[-10:]}")
    return CallFigures(len(records), len(failures), max(r.took for r in records), failures)


FAULTS = [("delete", False), ("delete", True), ("kill", False), ("kill", True)]
FAULT_IDS = ["delete-classic", "delete-quorum", "kill-classic", "kill-quorum"]


@pytest.mark.parametrize(("fault", "quorum"), FAULTS, ids=FAULT_IDS)
def test_calls_every_100ms_through_a_fault_do_not_fail(cluster, fault, quorum):
    figures = calls_through_fault(cluster, fault, quorum)
    print(f"{fault} ({'quorum' if quorum else 'classic'}): {figures.line()}")
    for failure in figures.failures:
        print("  failed:", failure)
    assert figures.failed == 0, figures.failures
    # The caller's 3 s timeout bounds every call; the recovery must fit well
    # inside it (CCN delay 1 s, failover a fraction of that).
    assert figures.longest < CALL_TIMEOUT


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "quorum"), FAULTS, ids=FAULT_IDS)
def test_figures_calls_through_a_fault(cluster, fault, quorum):
    runs = []
    for _ in range(REPEAT):
        cluster.ensure_healthy()
        runs.append(calls_through_fault(cluster, fault, quorum))
    failed = [r.failed for r in runs]
    longest = [r.longest for r in runs]
    print(f"calls every 100 ms through {fault} ({'quorum' if quorum else 'classic'}): "
          f"failed calls min={min(failed)} median={statistics.median(failed)} max={max(failed)}; "
          f"longest call min={min(longest):.3f}s median={statistics.median(longest):.3f}s "
          f"max={max(longest):.3f}s; runs={[(r.failed, round(r.longest, 3)) for r in runs]}")
    for run in runs:
        for failure in run.failures:
            print("  failed:", failure)
    assert max(failed) == 0


# -- casts to a quorum queue while its leader's node dies ----------------------------


@dataclasses.dataclass
class CastFigures:
    sent: int
    raised: int
    arrived: int
    duplicates: int
    missing: list[int]

    def line(self) -> str:
        return (f"{self.sent} casts confirmed, {self.raised} raised, {self.arrived} arrived, "
                f"{self.duplicates} duplicates, {len(self.missing)} missing")


def casts_while_leader_dies(cluster: Any, kill_after: int = 200) -> CastFigures:
    """1,000 casts to a quorum queue; its leader's node (the caster's) is killed."""
    topic = unique("chaos-casts")
    settings = from_url(rotate_url(cluster, 0), rabbit_quorum_queue=True,
                        connection_name="chaos-caster")
    spec = envelope.topic_queue(settings, envelope.DEFAULT_EXCHANGE, topic)
    # Declared through node 0, so the quorum queue's leader is there.
    declarer = Connection(settings, name="chaos-declarer")
    try:
        declarer.declare_exchange(envelope.DEFAULT_EXCHANGE, "topic", durable=True)
        declarer.declare_queue(spec.name, durable=True, arguments=dict(spec.arguments))
        declarer.bind(spec.name, spec.exchange, spec.routing_key)
    finally:
        declarer.close()
    leader = wait_for(lambda: (cluster.queue_info(topic) or {}).get("leader"), 10, interval=0.2)
    assert leader == cluster.nodes[0].name, f"leader on {leader}"
    endpoint = _Endpoint()
    recorder = ev.Recorder()
    client = RPCClient(settings, topic, timeout=30.0)
    sent = raised = 0
    with _serving(rotate_url(cluster, 1), topic, endpoint, recorder, rabbit_quorum_queue=True):
        try:
            for n in range(CASTS):
                if n == kill_after:
                    cluster.kill(0)
                try:
                    client.cast({}, "record", n=n)
                    sent += 1
                except exc.RabbitHAError as error:
                    raised += 1
                    print(f"  cast {n} raised {type(error).__name__}: {error}")
        finally:
            client.close()
        wait_for(lambda: len(endpoint.casts) >= CASTS, 20, interval=0.1)
        time.sleep(0.5)  # late duplicates, if any, arrive now
    casts = endpoint.casts
    missing = [n for n in range(CASTS) if n not in casts]
    duplicates = sum(count - 1 for count in casts.values())
    return CastFigures(sent, raised, len(casts), duplicates, missing)


def test_casts_to_a_quorum_queue_all_arrive_when_its_leader_dies(cluster):
    figures = casts_while_leader_dies(cluster)
    print(f"casts to a quorum queue, leader's node killed after 200: {figures.line()}")
    assert figures.raised == 0
    assert figures.missing == []
    assert figures.arrived == CASTS


@pytest.mark.slow
def test_figures_casts_while_leader_dies(cluster):
    runs = []
    for _ in range(REPEAT):
        cluster.ensure_healthy()
        runs.append(casts_while_leader_dies(cluster))
    arrived = [r.arrived for r in runs]
    duplicates = [r.duplicates for r in runs]
    print(f"1000 casts to a quorum queue through a leader kill: arrived min={min(arrived)} "
          f"median={statistics.median(arrived)} max={max(arrived)}; duplicates "
          f"min={min(duplicates)} median={statistics.median(duplicates)} max={max(duplicates)}; "
          f"runs={[r.line() for r in runs]}")
    assert min(arrived) == CASTS


# -- every broker down -----------------------------------------------------------------


@pytest.fixture
def all_down(cluster: Any) -> Iterator[Any]:
    try:
        yield cluster
    finally:
        cluster.start_all()


def call_with_every_broker_down(cluster: Any) -> tuple[float, float]:
    """Seconds until call(timeout=2) raised: on warm (now dead) connections, fresh."""
    topic = unique("chaos-down")
    url = rotate_url(cluster, 0)
    endpoint = _Endpoint()
    recorder = ev.Recorder()
    with _serving(url, topic, endpoint, recorder):
        warm = RPCClient(from_url(url, connection_name="chaos-warm"), topic, timeout=2.0)
        try:
            assert warm.call({}, "echo", n=1) == 1
            cluster.kill_all()
            took = []
            for client in (warm, RPCClient(from_url(url, connection_name="chaos-fresh"), topic,
                                           timeout=2.0)):
                started = time.monotonic()
                with pytest.raises(exc.MessagingTimeout) as info:
                    client.call({}, "echo", n=2)
                took.append(time.monotonic() - started)
                print(f"  {client.transport.settings.connection_name}: raised after "
                      f"{took[-1]:.3f}s: {info.value}")
                client.close()
        finally:
            warm.close()
    return took[0], took[1]


def test_a_call_with_every_broker_down_raises_within_its_timeout(all_down):
    warm, fresh = call_with_every_broker_down(all_down)
    print(f"every broker down: call(timeout=2) raised after {warm:.3f}s (warm client), "
          f"{fresh:.3f}s (fresh client)")
    assert 2.0 <= warm <= 2.5
    assert 2.0 <= fresh <= 2.5


@pytest.mark.slow
def test_figures_call_with_every_broker_down(cluster):
    warm, fresh = [], []
    for _ in range(REPEAT):
        cluster.ensure_healthy()
        try:
            w, f = call_with_every_broker_down(cluster)
        finally:
            cluster.start_all()
        warm.append(w)
        fresh.append(f)
    for name, figures in (("warm", warm), ("fresh", fresh)):
        print(f"every broker down, call(timeout=2), {name} client: min={min(figures):.3f}s "
              f"median={statistics.median(figures):.3f}s max={max(figures):.3f}s "
              f"runs={[round(x, 3) for x in figures]}")
    assert max(warm + fresh) <= 2.5


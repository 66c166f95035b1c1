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
import logging
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import Connection
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.rpc import RPCClient, RPCServer, envelope

from .helpers.faults import OWN_QUEUES_DURABLE
from .helpers.probes import PacedCaller, rotate_url, unique, wait_for

REPEAT = 5
CALL_INTERVAL = 0.1
CALL_TIMEOUT = 3.0
CASTS = 1000


class _Endpoint:
    """Answers calls and counts casts by sequence number."""

    def __init__(self) -> None:
        self.casts: collections.Counter[int] = collections.Counter()
        self.calls: set[int] = set()
        self._lock = threading.Lock()

    def echo(self, ctxt: dict[str, Any], n: int) -> int:
        self.calls.add(n)
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
    # RabbitMQ 3.10 has been seen not to send basic.cancel when a quorum queue
    # is deleted under traffic; a short check interval bounds that deafness
    # to about a second here (the default, 10 s, suits production).
    overrides.setdefault("consumer_check_interval", 1.0)
    server = RPCServer(from_url(url, connection_name="chaos-server", **overrides), topic,
                       "chaos-server", [endpoint], events=bus, start_timeout=10.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.wait(5.0)


@dataclasses.dataclass
class CallFigures:
    calls: int
    failed: int
    longest: float
    failures: list[str]
    #: Failed calls whose request the server ran: their reply was lost.
    replies_lost: int
    #: The longest call that succeeded: how late a call made during the fault was.
    longest_ok: float

    def line(self) -> str:
        return (f"{self.calls} calls, {self.failed} failed, longest {self.longest:.3f}s "
                f"(longest that succeeded {self.longest_ok:.3f}s)")


def calls_through_fault(cluster: Any, fault: str, quorum: bool) -> CallFigures:
    """Failed calls and the longest call of a 100 ms caller through ``fault``.

    ``fault`` is ``"delete"`` (the server's topic queue is deleted) or
    ``"kill"`` (SIGKILL of the server's node).
    """
    topic = unique(f"chaos-{fault}")
    # "classic" on RabbitMQ 4, which denies transient queues: durable classic.
    overrides: dict[str, Any] = {"rabbit_quorum_queue": quorum, "kombu_reconnect_delay": 1.0,
                                 "amqp_durable_queues": OWN_QUEUES_DURABLE}
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
            caller = PacedCaller(client, CALL_INTERVAL, CALL_TIMEOUT + 5, name="chaos-caller")
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
    failed = [r for r in records if r.error]
    failures = [f"t={r.started - fault_at:+.2f}s took {r.took:.2f}s, "
                f"{'run by the server' if r.n in endpoint.calls else 'never reached the server'}: "
                f"{r.error}" for r in failed]
    assert after and all(r.error is None for r in after[-10:]), (
        f"not serving again: {failures[-3:]}; server events: {recorder.events[-10:]}")
    return CallFigures(len(records), len(failed), max(r.took for r in records), failures,
                       sum(1 for r in failed if r.n in endpoint.calls),
                       max(r.took for r in records if not r.error))


FAULTS = [("delete", False), ("delete", True), ("kill", False), ("kill", True)]
FAULT_IDS = ["delete-classic", "delete-quorum", "kill-classic", "kill-quorum"]


def allowed_failures(fault: str, quorum: bool) -> int:
    """Calls that may fail, by what the broker does with a request in the queue.

    Deleting a queue drops the messages in it, and a classic queue's messages
    die with its node; the broker had confirmed them, so nothing can tell the
    client to send again (calls are at most once). So the one request that
    sits in the queue at that instant (with one call at a time, at most one)
    may be lost and its call time out. A quorum queue keeps its messages
    through the loss of a node: there nothing may fail. A lost *reply* is
    never allowed (replies whose confirm is lost are sent again).

    Deleting a quorum queue under traffic is rougher on RabbitMQ 3.10: it has
    been seen to hold a publisher confirm back for seconds, answer another
    node's publish with INTERNAL_ERROR, and skip the consumer cancel (the
    consumer check then finds the queue gone). The request in flight then
    times out too, so CI allows two failures there; ``tox -e figures`` reports
    the real distribution.
    """
    if (fault, quorum) == ("kill", True):
        return 0
    return 2 if (fault, quorum) == ("delete", True) else 1


@pytest.mark.parametrize(("fault", "quorum"), FAULTS, ids=FAULT_IDS)
def test_calls_every_100ms_through_a_fault_do_not_fail(cluster, fault, quorum):
    figures = calls_through_fault(cluster, fault, quorum)
    print(f"{fault} ({'quorum' if quorum else 'classic'}): {figures.line()}")
    for failure in figures.failures:
        print("  failed:", failure)
    assert figures.replies_lost == 0, figures.failures
    assert figures.failed <= allowed_failures(fault, quorum), figures.failures
    # A call made during the fault succeeds late: after the CCN delay (1 s)
    # and a re-declare, or a failover; with a margin for a noisy machine.
    # When 3.10 answers a publish to the quorum queue being deleted with
    # INTERNAL_ERROR, the caller's publishing connection is closed too: its
    # request is sent again after the uncertain-request grace on a new
    # connection (seen once at 2.87 s); it must still beat its 3 s timeout.
    assert figures.longest_ok < (2.95 if (fault, quorum) == ("delete", True) else 2.5)


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
    assert sum(r.replies_lost for r in runs) == 0
    assert max(failed) <= allowed_failures(fault, quorum)


# -- casts to a quorum queue while its leader's node dies ----------------------------


@dataclasses.dataclass
class CastFigures:
    sent: int
    raised: int
    arrived: int
    duplicates: int
    missing: list[int]
    #: Copies the server received and dropped by ``_unique_id`` (re-sent casts).
    dropped_copies: int

    def line(self) -> str:
        return (f"{self.sent} casts confirmed, {self.raised} raised, {self.arrived} arrived, "
                f"{self.duplicates} duplicates run, {self.dropped_copies} copies dropped, "
                f"{len(self.missing)} missing")


class _CountLines(logging.Handler):
    """Counts log records whose message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.count += 1


def casts_while_leader_dies(cluster: Any, kill_after: int = 200) -> CastFigures:
    """1,000 casts to a quorum queue; its leader's node (the caster's) is killed.

    The kill comes from another thread once ``kill_after`` casts were
    confirmed, so it lands while casts are being written and confirmed.
    """
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
    reached = threading.Event()
    killer = threading.Thread(target=lambda: reached.wait(60) and cluster.kill(0), daemon=True)
    dropped = _CountLines("dropping duplicate")
    listener_log = logging.getLogger("rabbit_ha_driver.rpc.listener")
    listener_log.addHandler(dropped)
    level = listener_log.level
    listener_log.setLevel(logging.INFO)
    try:
        with _serving(rotate_url(cluster, 1), topic, endpoint, recorder, rabbit_quorum_queue=True):
            killer.start()
            try:
                for n in range(CASTS):
                    if n == kill_after:
                        reached.set()
                    try:
                        client.cast({}, "record", n=n)
                        sent += 1
                    except exc.RabbitHAError as error:
                        raised += 1
                        print(f"  cast {n} raised {type(error).__name__}: {error}")
            finally:
                client.close()
                killer.join(30)
            wait_for(lambda: len(endpoint.casts) >= CASTS, 20, interval=0.1)
            time.sleep(0.5)  # late copies, if any, arrive now
    finally:
        listener_log.removeHandler(dropped)
        listener_log.setLevel(level)
    assert not killer.is_alive()
    casts = endpoint.casts
    missing = [n for n in range(CASTS) if n not in casts]
    duplicates = sum(count - 1 for count in casts.values())
    return CastFigures(sent, raised, len(casts), duplicates, missing, dropped.count)


def test_casts_to_a_quorum_queue_all_arrive_when_its_leader_dies(cluster):
    figures = casts_while_leader_dies(cluster)
    print(f"casts to a quorum queue, leader's node killed after 200: {figures.line()}")
    assert figures.raised == 0
    assert figures.missing == []
    assert figures.arrived == CASTS
    assert figures.duplicates == 0


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


"""The rabbit-ha oslo.messaging driver on the real cluster, next to oslo.messaging's rabbit.

* oslo.messaging's own functional tests run on ``rabbit-ha://`` and on
  ``rabbit://`` (``tools/run_oslo_functional.py``); no test that passes on
  ``rabbit://`` may fail on ``rabbit-ha://``.
* The two tests of that suite that skip themselves on any scheme but
  ``rabbit://`` (mandatory flag, call monitoring) run here on ``rabbit-ha://``.
* A service on ``rabbit://`` and one on ``rabbit-ha://`` call, cast, fan out
  and notify each other, in one process (both drivers loaded at once).
* Faults through oslo.messaging's public API, ``rabbit-ha://`` next to
  ``rabbit://`` with the same heartbeat T in both URLs: a caller calls back to
  back while the server's queue is deleted, or the node holding it is killed;
  the figures are printed side by side and asserted for ``rabbit-ha://``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import queue
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import oslo_messaging as om
import pytest
from oslo_config import cfg
from oslo_messaging import conffixture

from rabbit_ha_driver.oslo import RabbitHADriver

from .helpers.faults import library_defaults
from .helpers.probes import Caller


def _load_runner() -> ModuleType:
    name = "run_oslo_functional"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[2] / "tools" / "run_oslo_functional.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


runner = _load_runner()


def on_scheme(cluster: Any, scheme: str, query: str = "") -> str:
    url = runner.scheme_url(cluster.url(), scheme)
    return f"{url}?{query}" if query else url


def new_conf() -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    conffixture.ConfFixture(conf)  # registers oslo.messaging's options on this conf
    return conf


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Stack:
    """Servers and transports to stop at the end, pass or fail."""

    def __init__(self) -> None:
        self._items: list[Any] = []

    def add(self, item: Any) -> Any:
        self._items.append(item)
        return item

    def close(self) -> None:
        for item in reversed(self._items):
            if isinstance(item, om.Transport):
                item.cleanup()
            else:
                item.stop()
                item.wait()


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack()
    try:
        yield s
    finally:
        s.close()


# -- 1. oslo.messaging's own functional tests ---------------------------------------


def test_oslo_messaging_functional_tests_pass_on_rabbit_ha_as_on_rabbit(cluster, tmp_path):
    results: dict[str, list[Any]] = {}
    seconds: dict[str, float] = {}
    crashes: dict[str, str | None] = {}
    for scheme in runner.SCHEMES:
        results[scheme], seconds[scheme], crashes[scheme] = runner.run_scheme(
            cluster.url(), scheme, only=None, timeout=900, workers=6, log_dir=str(tmp_path),
            option_defaults=library_defaults())
    print()
    print(runner.report(results, seconds, crashes))
    assert not any(crashes.values()), crashes
    ha = {o.test: o for o in results["rabbit-ha"]}
    plain = {o.test: o for o in results["rabbit"]}
    assert len(ha) >= 30 and set(ha) == set(plain), "both runs must see the same tests"
    assert not runner.regressions(results)
    assert sum(o.passed for o in plain.values()) >= 28, "the reference run itself is broken"
    # Whatever does not pass on rabbit-ha:// is excluded up front or skips
    # itself on any scheme but rabbit://; both are covered elsewhere.
    not_passed = {t: o.outcome for t, o in ha.items() if not o.passed}
    assert not_passed == {
        **{t: runner.SKIPPED for t in runner.SCHEME_GATED},
        **{t: runner.EXCLUDED_OUTCOME for t in ha if t.startswith(tuple(runner.EXCLUDED))},
    }


# -- 2. the two tests that skip themselves on rabbit-ha:// ----------------------------


class Delay:
    def delay(self, ctxt: Any, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


def test_at_least_once_call_to_nowhere(cluster, stack):
    """oslo.messaging's test_mandatory_call, on rabbit-ha://."""
    transport = stack.add(om.get_rpc_transport(new_conf(), on_scheme(cluster, "rabbit-ha")))
    target = om.Target(topic=unique("topic"), server=unique("server"))
    plain = om.get_rpc_client(transport, target, timeout=1,
                              transport_options=om.TransportOptions(at_least_once=False))
    started = time.monotonic()
    with pytest.raises(om.MessagingTimeout):
        plain.call({}, "delay", seconds=0)
    assert 0.9 < time.monotonic() - started < 3
    mandatory = om.get_rpc_client(transport, target, timeout=60,
                                  transport_options=om.TransportOptions(at_least_once=True))
    started = time.monotonic()
    with pytest.raises(om.MessageUndeliverable):
        mandatory.call({}, "delay", seconds=0)
    assert time.monotonic() - started < 3


def test_call_monitor_keeps_a_long_call_alive(cluster, stack):
    """oslo.messaging's test_monitor_long_call, on rabbit-ha://."""
    url = on_scheme(cluster, "rabbit-ha")
    transport = stack.add(om.get_rpc_transport(new_conf(), url))
    server_transport = stack.add(om.get_rpc_transport(new_conf(), url))
    target = om.Target(topic=unique("topic"), server=unique("server"))
    server = om.get_rpc_server(server_transport, target, [Delay()], executor="threading")
    server.start()
    stack.add(server)
    with pytest.raises(om.MessagingTimeout):
        om.get_rpc_client(transport, target, timeout=1).call({}, "delay", seconds=4)
    monitored = om.get_rpc_client(transport, target, timeout=3600, call_monitor_timeout=2)
    started = time.monotonic()
    assert monitored.call({}, "delay", seconds=4) == 4
    assert time.monotonic() - started < 8
    silent = om.get_rpc_client(transport, target, timeout=3600, call_monitor_timeout=2)
    server.stop()  # nobody answers, nobody sends heartbeats: the monitor ends the call
    server.wait()
    started = time.monotonic()
    with pytest.raises(om.MessagingTimeout):
        silent.call({}, "delay", seconds=0)
    assert time.monotonic() - started < 5


# -- 3. a rabbit:// service and a rabbit-ha:// service talk to each other ----------------


class Service:
    """One oslo.messaging service: an RPC server and a notification listener."""

    def __init__(self, name: str, url: str, topic: str, notify_topic: str, stack: Stack) -> None:
        self.name = name
        self.conf = new_conf()
        self.rpc = stack.add(om.get_rpc_transport(self.conf, url))
        self.notify = stack.add(om.get_notification_transport(self.conf, url))
        self.casts: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.notifications: queue.Queue[tuple[str, str, Any]] = queue.Queue()
        service = self

        class Endpoint:
            def whoami(self, ctxt: Any, caller: str) -> dict[str, Any]:
                return {"me": service.name, "caller": caller, "user": ctxt.get("user")}

            def fail(self, ctxt: Any) -> None:
                raise ValueError(f"{service.name} refuses")

            def record(self, ctxt: Any, tag: str) -> None:
                service.casts.put(("record", tag))

            def slow(self, ctxt: Any, seconds: float) -> str:
                time.sleep(seconds)
                return f"{service.name} done"

        class Notifications:
            def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any,
                     metadata: Any) -> None:
                service.notifications.put((publisher_id, event_type, payload))

        server = om.get_rpc_server(self.rpc, om.Target(topic=topic, server=name), [Endpoint()],
                                   executor="threading")
        server.start()
        stack.add(server)
        listener = om.get_notification_listener(
            self.notify, [om.Target(topic=notify_topic)], [Notifications()],
            executor="threading", pool=name)
        listener.start()
        stack.add(listener)

    def client(self, topic: str, **kwargs: Any) -> Any:
        return om.get_rpc_client(self.rpc, om.Target(topic=topic, **kwargs), timeout=10)

    def notifier(self, topic: str) -> om.Notifier:
        return om.Notifier(self.notify, f"{self.name}.host", driver="messagingv2", topics=[topic])


def test_services_on_rabbit_and_rabbit_ha_call_cast_and_notify_each_other(cluster, stack):
    topic, notify_topic = unique("interop"), unique("interop-notify")
    plain = Service("plain", on_scheme(cluster, "rabbit"), topic, notify_topic, stack)
    ha = Service("ha", on_scheme(cluster, "rabbit-ha"), topic, notify_topic, stack)
    assert isinstance(ha.rpc._driver, RabbitHADriver)
    assert type(plain.rpc._driver).__name__ == "RabbitDriver"
    for me, other in ((plain, ha), (ha, plain)):
        to_other = me.client(topic, server=other.name)
        answer = to_other.call({"user": me.name}, "whoami", caller=me.name)
        assert answer == {"me": other.name, "caller": me.name, "user": me.name}
        with pytest.raises(ValueError, match=f"{other.name} refuses"):
            to_other.call({}, "fail")
        monitored = me.client(topic, server=other.name).prepare(timeout=60,
                                                                call_monitor_timeout=2)
        assert monitored.call({}, "slow", seconds=3) == f"{other.name} done"
        to_other.cast({}, "record", tag=f"from {me.name}")
        assert other.casts.get(timeout=10) == ("record", f"from {me.name}")
        me.notifier(notify_topic).info({}, "thing.happened", {"by": me.name})
        for service in (plain, ha):  # one pool each: both see every notification
            assert service.notifications.get(timeout=10) == (
                f"{me.name}.host", "thing.happened", {"by": me.name})
    for me in (plain, ha):
        me.client(topic, fanout=True).cast({}, "record", tag=f"fanout from {me.name}")
        for service in (plain, ha):
            assert service.casts.get(timeout=10) == ("record", f"fanout from {me.name}")
    # The shared topic queue is served by both: calls to the topic reach either.
    seen = {plain.client(topic).call({}, "whoami", caller="x")["me"] for _ in range(20)}
    assert seen <= {"plain", "ha"} and seen


def test_one_process_rpc_on_rabbit_ha_notifications_on_rabbit(cluster, stack):
    conf = new_conf()
    rpc = stack.add(om.get_rpc_transport(conf, on_scheme(cluster, "rabbit-ha")))
    notify = stack.add(om.get_notification_transport(conf, on_scheme(cluster, "rabbit")))
    topic = unique("mixed")
    got: queue.Queue[Any] = queue.Queue()

    class Endpoint:
        def ping(self, ctxt: Any) -> str:
            om.Notifier(notify, "mixed.host", driver="messagingv2",
                        topics=[topic]).info({}, "pinged", {"thread": threading.get_ident()})
            return "pong"

    class Notifications:
        def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any,
                 metadata: Any) -> None:
            got.put(event_type)

    server = om.get_rpc_server(rpc, om.Target(topic=topic, server="s"), [Endpoint()],
                               executor="threading")
    server.start()
    stack.add(server)
    listener = om.get_notification_listener(notify, [om.Target(topic=topic)], [Notifications()],
                                            executor="threading")
    listener.start()
    stack.add(listener)
    assert om.get_rpc_client(rpc, om.Target(topic=topic), timeout=10).call({}, "ping") == "pong"
    assert got.get(timeout=10) == "pinged"


# -- 4. faults through oslo.messaging's API, rabbit-ha:// next to rabbit:// ----------------

#: The same heartbeat T in both URLs, so neither driver has an edge from it.
CHAOS_T = 10
CHAOS_CALL_TIMEOUT = 5.0
CHAOS_AFTER = 15.0


@dataclasses.dataclass
class Figures:
    """What the callers saw through one fault.

    ``failed`` counts calls that ended after the fault began and failed; of
    them ``failed_later`` were started once the fault was complete (the queue
    deleted, the node's port refusing), so nothing of theirs was in flight to
    be lost. ``answered_after``: from the start of the fault to the first
    answer to a call started after the fault was complete.
    """

    scheme: str
    fault: str
    calls: int = 0
    failed: int = 0
    failed_later: int = 0
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    answered_after: float = math.inf

    def line(self) -> str:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "-"
        answered = (f"{self.answered_after:4.1f}s" if self.answered_after != math.inf
                    else f">{CHAOS_AFTER:.0f}s")
        return (f"{self.fault:<12} {self.scheme + '://':<12} calls {self.calls:3d}  "
                f"failed {self.failed:2d} (started after the fault: {self.failed_later:2d})  "
                f"answered again after {answered}  errors: {errors}")


def figures(callers: list[Caller], scheme: str, fault: str, began: float,
            complete: float) -> Figures:
    result = Figures(scheme, fault)
    for start, end, error in (d for c in callers for d in c.done if d[1] > began):
        result.calls += 1
        if error is None:
            if start > complete:
                result.answered_after = min(result.answered_after, end - began)
            continue
        result.failed += 1
        result.failed_later += start > complete
        result.errors[error] = result.errors.get(error, 0) + 1
    return result


class Echo:
    def echo(self, ctxt: Any, value: Any) -> Any:
        return value


def through_fault(cluster: Any, scheme: str, fault: str, callers: int = 3) -> Figures:
    """Calls through ``fault`` ("queue delete" or "node kill") on ``scheme``."""
    url = on_scheme(cluster, scheme, f"heartbeat_timeout_threshold={CHAOS_T}")
    topic = unique(f"chaos-{scheme}")
    stack = Stack()
    killed = None
    threads: list[Caller] = []
    try:
        server_transport = stack.add(om.get_rpc_transport(new_conf(), url))
        server = om.get_rpc_server(server_transport, om.Target(topic=topic, server="s1"),
                                   [Echo()], executor="threading")
        server.start()
        stack.add(server)
        client_transport = stack.add(om.get_rpc_transport(new_conf(), url))
        client = om.get_rpc_client(client_transport, om.Target(topic=topic),
                                   timeout=CHAOS_CALL_TIMEOUT)
        for _ in range(callers):
            threads.append(Caller(client))
            threads[-1].start()
            time.sleep(0.02)
        deadline = time.monotonic() + 10
        while min(c.answered for c in threads) < 5:
            assert time.monotonic() < deadline, "calls not answered before the fault"
            time.sleep(0.05)
        info = cluster.queue_info(topic)
        assert info is not None, f"queue {topic} not found"
        began = time.monotonic()
        if fault == "queue delete":
            cluster.delete_queue(topic)
        else:
            killed = info["node"]
            cluster.kill(killed)
        complete = time.monotonic()
        time.sleep(CHAOS_AFTER)
        for c in threads:
            c.stopping.set()
        for c in threads:
            c.join(CHAOS_CALL_TIMEOUT + 5)
        return figures(threads, scheme, fault, began, complete)
    finally:
        for c in threads:
            c.stopping.set()
        if killed is not None:
            cluster.start(killed)
        stack.close()


@pytest.mark.parametrize("fault", ["queue delete", "node kill"])
def test_calls_through_faults_rabbit_ha_next_to_rabbit(cluster, fault):
    results = {}
    for scheme in ("rabbit-ha", "rabbit"):
        cluster.ensure_healthy()
        results[scheme] = through_fault(cluster, scheme, fault)
    print()
    for scheme in ("rabbit-ha", "rabbit"):
        print(results[scheme].line())
    ours = results["rabbit-ha"]
    # A request the broker cannot route while the server re-declares its
    # queue is sent again until the call's deadline, so no call started after
    # the fault fails. A call in flight may be lost with the queue or node
    # that held its request or reply, or with the confirm of its publish
    # (calls are at most once): at most one per caller.
    assert ours.failed_later == 0, ours.line()
    assert ours.failed <= 3, ours.line()
    assert ours.answered_after < 5.0, ours.line()

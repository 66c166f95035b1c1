"""The oslo.messaging driver through oslo.messaging's public API, on fakes.

Pure parts (URL mapping, send budgets, encoding, remote exceptions) are
checked as functions; the driver end to end runs oslo.messaging's own RPC
server, client, notifier and listeners on the library's fake broker (which
returns unroutable mandatory messages and refuses connections on demand) or
on kombu's memory transport. Timeouts are short and real.
"""

from __future__ import annotations

import datetime
import json
import math
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import oslo_messaging as om
import pytest
import stevedore
from oslo_config import cfg
from oslo_messaging import conffixture
from oslo_messaging import transport as om_transport

from rabbit_ha_driver import events, options
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import Connection
from rabbit_ha_driver.connection import _confirms as confirms
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.oslo import RabbitHADriver, library_url, send_budget
from rabbit_ha_driver.oslo.incoming import OsloRpcIncoming
from rabbit_ha_driver.oslo.policy import attempt_window
from rabbit_ha_driver.oslo.wire import encode, remote_exception, with_context
from rabbit_ha_driver.rpc import envelope
from rabbit_ha_driver.rpc.transport import ConnectionFactory
from rabbit_ha_driver.settings import Settings
from rabbit_ha_driver.testing import FakeBroker, FakeTransport

FAST = ("kombu_reconnect_delay=0&rabbit_retry_interval=0&rabbit_retry_backoff=0"
        "&rabbit_interval_max=0&connect_timeout=0.1&request_timeout=0.2")
FAKE_URL = f"rabbit-ha://u:p@h1:1/?{FAST}"


class AllowedError(Exception):
    """An exception of a module a client allows to be re-created."""


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
def conf() -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    conffixture.ConfFixture(conf)  # registers oslo.messaging's options on this conf
    return conf


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def topic() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def closing():
    """Stops servers and cleans transports up at the end, pass or fail."""
    items: list = []
    yield items.append
    for item in reversed(items):
        if isinstance(item, om_transport.Transport):
            item.cleanup()
        else:
            item.stop()
            item.wait()


def fake_connections(broker: FakeBroker) -> Callable[[Settings], ConnectionFactory]:
    def for_settings(settings: Settings) -> ConnectionFactory:
        def make(purpose: str) -> Connection:
            return Connection(settings, name=f"test:{purpose}", transport=FakeTransport,
                              transport_options={"fake_broker": broker})
        return make
    return for_settings


@pytest.fixture
def transports(conf, broker, closing):
    """``make(kind="rpc", url=FAKE_URL, allowed=())``: an oslo transport on the fake broker."""

    def make(kind: str = "rpc", url: str = FAKE_URL,
             allowed: tuple[str, ...] = ()) -> om_transport.Transport:
        driver = RabbitHADriver(conf, om.TransportURL.parse(conf, url), "openstack",
                                list(allowed), connections=fake_connections(broker))
        cls = om_transport.RPCTransport if kind == "rpc" else om_transport.NotificationTransport
        transport = cls(driver)
        closing(transport)
        return transport

    return make


class Endpoint:
    def __init__(self) -> None:
        self.casts: list = []
        self.event = threading.Event()

    def echo(self, ctxt, value):
        return {"value": value, "user": ctxt.get("user")}

    def boom(self, ctxt):
        raise ValueError("no such thing")

    def allowed(self, ctxt):
        raise AllowedError("allowed to travel")

    def record(self, ctxt, tag):
        self.casts.append(tag)
        self.event.set()


@pytest.fixture
def serve(closing, topic):
    def start(transport, endpoint=None, server="s1", target_topic=None):
        endpoint = endpoint or Endpoint()
        target = om.Target(topic=target_topic or topic, server=server)
        srv = om.get_rpc_server(transport, target, [endpoint], executor="threading")
        srv.start()
        closing(srv)
        return endpoint

    return start


def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    give_up = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < give_up, "condition not met in time"
        time.sleep(0.01)


# -- packaging -------------------------------------------------------------------


def test_importing_the_library_does_not_import_oslo_messaging():
    code = ("import sys, rabbit_ha_driver, rabbit_ha_driver.rpc; "
            "print('oslo_messaging' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_the_entry_point_names_the_driver():
    manager: Any = stevedore.DriverManager("oslo.messaging.drivers", "rabbit-ha")
    assert manager.driver is RabbitHADriver


def test_get_transport_loads_the_driver_without_connecting(conf):
    transport = om.get_rpc_transport(
        conf, "rabbit-ha://alice:s%40cret@127.0.0.1:1,bob:pw@[::1]:2/vh?heartbeat_timeout_threshold=10")
    try:
        driver = transport._driver
        assert isinstance(driver, RabbitHADriver)
        hosts = driver.settings.hosts
        assert [(h.hostname, h.port, h.username, h.password) for h in hosts] == [
            ("127.0.0.1", 1, "alice", "s@cret"), ("::1", 2, "bob", "pw")]
        assert driver.settings.virtual_host == "vh"
        assert driver.settings.heartbeat_timeout_threshold == 10
        assert "s@cret" not in repr(driver)
    finally:
        transport.cleanup()


# -- configuration ----------------------------------------------------------------


def parse(conf, url):
    return om.TransportURL.parse(conf, url)


@pytest.mark.parametrize(("url", "expected"), [
    ("rabbit-ha://u:p@h1:5672,u:p@h2:5673/", "rabbit-ha://u:p@h1:5672,u:p@h2:5673/"),
    ("rabbit-ha://u:p%2Fx@h1/v%2Fh", "rabbit-ha://u:p%2Fx@h1/v%2Fh"),
    ("rabbit-ha://h1:5672", "rabbit-ha://h1:5672/"),
    ("rabbit-ha://u:p@[fe80::1]:5672/", "rabbit-ha://u:p@[fe80::1]:5672/"),
    ("rabbit-ha://u:p@h1/?ssl=true&connect_timeout=2", "rabbit-ha://u:p@h1/?ssl=true&connect_timeout=2"),
])
def test_library_url_keeps_hosts_credentials_vhost_and_query(conf, url, expected):
    assert library_url(parse(conf, url), conf) == expected


def test_the_query_string_overrides_the_options(conf, transports):
    from rabbit_ha_driver import options
    options.register_opts(conf)
    conf.set_override("heartbeat_timeout_threshold", 40, group="rabbit_ha")
    conf.set_override("rabbit_qos_prefetch_count", 7, group="rabbit_ha")
    transport = transports(url=f"{FAKE_URL}&heartbeat_timeout_threshold=12&rabbit_quorum_queue=true")
    settings = transport._driver.settings
    assert settings.heartbeat_timeout_threshold == 12
    assert settings.rabbit_quorum_queue is True
    assert settings.connect_timeout == 0.1
    assert settings.rabbit_qos_prefetch_count == 7


def test_rabbit_ha_wins_over_oslo_messaging_rabbit(conf, transports):
    from rabbit_ha_driver import options
    options.register_opts(conf)
    conf.set_override("rabbit_qos_prefetch_count", 7, group="rabbit_ha")
    conf.set_override("rabbit_qos_prefetch_count", 3, group="oslo_messaging_rabbit")
    conf.set_override("heartbeat_timeout_threshold", 0, group="oslo_messaging_rabbit")
    settings = transports()._driver.settings
    assert settings.rabbit_qos_prefetch_count == 7
    assert settings.heartbeat_timeout_threshold == 0  # only [oslo_messaging_rabbit] set it
    assert settings.origins["heartbeat_timeout_threshold"] == "[oslo_messaging_rabbit]"


def test_an_unknown_query_option_is_reported_naming_it(conf, caplog):
    transport = om.get_rpc_transport(conf, "rabbit-ha://u:p@h1/?heartbeat_timout_threshold=1")
    try:
        assert transport._driver.settings.heartbeat_timeout_threshold == \
            options.opt_by_name("heartbeat_timeout_threshold").default  # the default
    finally:
        transport.cleanup()
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "'heartbeat_timout_threshold'" in warning
    assert "did you mean 'heartbeat_timeout_threshold'" in warning


def test_a_url_without_hosts_needs_the_option(conf):
    with pytest.raises(exc.ConfigurationError, match=r"\[rabbit_ha\] transport_url"):
        library_url(parse(conf, "rabbit-ha://"), conf)
    conf.set_override("transport_url", "rabbit://u:p@h9:9/", group="rabbit_ha")
    assert library_url(parse(conf, "rabbit-ha://"), conf) == "rabbit://u:p@h9:9/"
    assert library_url(parse(conf, "rabbit-ha:///?connect_timeout=3"), conf) == \
        "rabbit://u:p@h9:9/?connect_timeout=3"


# -- send budgets ------------------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    return from_url("rabbit://u:p@h1:1,u:p@h2:2/", connect_timeout=2.0, request_timeout=3.0,
                    rpc_response_timeout=60, publish_timeout=30.0, kombu_reconnect_delay=1.0)


def test_an_attempt_is_a_pass_over_the_hosts_and_a_request(settings):
    assert attempt_window(settings) == 2.0 * 2 + 3.0


@pytest.mark.parametrize(("retry", "window"), [(None, math.inf), (-1, math.inf), (0, 7.0), (2, 21.0)])
def test_retry_of_a_cast_counts_attempt_windows(settings, retry, window):
    budget = send_budget(settings, 100.0, call=False, retry=retry)
    assert budget.send_by == 100.0 + window
    assert budget.reply_by is None


@pytest.mark.parametrize("retry", [None, -1, 0, 5])
def test_a_call_is_bounded_by_its_timeout_whatever_retry_says(settings, retry):
    budget = send_budget(settings, 100.0, call=True, timeout=4, retry=retry)
    assert budget.reply_by == 104.0
    assert budget.send_by <= 104.0
    assert send_budget(settings, 100.0, call=True, retry=retry).reply_by == 160.0


def test_unroutable_messages_are_sent_again_by_kind(settings):
    def unroutable(**kwargs):
        return send_budget(settings, 0.0, **kwargs).unroutable_for

    assert unroutable(call=True) is None  # until the call's deadline
    assert unroutable(call=False) == 30.0  # publish_timeout
    assert unroutable(call=False, retry=0) == 0.0
    assert unroutable(call=False, fanout=True) == 2.0  # kombu_reconnect_delay + 1
    assert unroutable(call=False, notification=True) is None
    at_least_once = send_budget(settings, 0.0, call=True, at_least_once=True)
    assert at_least_once.unroutable_for == 0.0 and at_least_once.undeliverable


# -- the wire ---------------------------------------------------------------------------


def test_encode_wraps_in_the_envelope_and_converts_like_oslo():
    when = datetime.datetime(2024, 1, 2, 3, 4, 5, 6)
    body = encode({"args": {"when": when, "tags": {"a"}}}, 10_000)
    outer = json.loads(body)
    assert outer["oslo.version"] == "2.0"
    assert json.loads(outer["oslo.message"]) == {
        "args": {"when": "2024-01-02T03:04:05.000006", "tags": ["a"]}}
    assert json.loads(encode({"a": 1}, 100, wrap=False)) == {"a": 1}


def test_encode_refuses_what_is_too_large():
    with pytest.raises(exc.InvalidMessage, match="rpc_max_message_size"):
        encode({"x": "y" * 2000}, 1024)


def test_with_context_adds_unique_id_and_context_members():
    inner = with_context({"method": "m", "args": {}}, {"user": "u", "roles": ["r"]}, _msg_id="1")
    assert inner["_context_user"] == "u" and inner["_context_roles"] == ["r"]
    assert inner["_msg_id"] == "1" and len(inner["_unique_id"]) == 32


def test_remote_builtin_exceptions_are_recreated():
    error = remote_exception(exc.RemoteError("ValueError", "bad value", "Traceback: here\n"), [])
    assert type(error) is ValueError
    assert "bad value" in str(error) and "Traceback: here" in str(error)


def test_remote_exceptions_of_other_modules_need_to_be_allowed():
    remote = exc.RemoteError(f"{__name__}.AllowedError", "allowed to travel")
    error = remote_exception(remote, [])
    assert isinstance(error, om.RemoteError) and error.exc_type == "AllowedError"
    error = remote_exception(remote, [__name__])
    assert isinstance(error, AllowedError) and "allowed to travel" in str(error)


# -- RPC end to end --------------------------------------------------------------------


def test_call_cast_and_fanout(transports, serve, topic):
    transport = transports()
    endpoints = [serve(transport, server=s) for s in ("s1", "s2")]
    client = om.get_rpc_client(transport, om.Target(topic=topic), timeout=5)
    assert client.call({"user": "alice"}, "echo", value=[1, 2]) == {"value": [1, 2], "user": "alice"}
    client.prepare(server="s2").cast({}, "record", tag="direct")
    wait_for(lambda: endpoints[1].casts == ["direct"])
    client.prepare(fanout=True).cast({}, "record", tag="all")
    wait_for(lambda: all("all" in e.casts for e in endpoints))
    assert endpoints[0].casts == ["all"]


class LosesTheFirstRequest(Connection):
    """A publishing connection that dies after the first request to ``key`` is written.

    The request is not really written, so it never arrives: its confirm is
    lost with the connection (Outcome.LOST), the case a SIGKILL of the node
    makes.
    """

    key = ""
    lost: list[bytes] = []
    sent: list[bytes] = []

    def publish_nowait(self, body, exchange, routing_key, **kwargs):
        if routing_key == self.key:
            (self.sent if self.lost else self.lost).append(body)
            if len(self.lost) == 1 and not self.sent:
                return confirms.settled(confirms.Outcome.LOST)
        return super().publish_nowait(body, exchange, routing_key, **kwargs)


@pytest.mark.parametrize("resend_after", [0.2, 0.0])
def test_a_call_whose_request_was_lost_with_its_connection_is_sent_again(
        conf, broker, transports, serve, topic, closing, resend_after):
    endpoint = serve(transports())
    LosesTheFirstRequest.key, LosesTheFirstRequest.lost, LosesTheFirstRequest.sent = topic, [], []

    def connections(settings):
        def make(purpose):
            return LosesTheFirstRequest(settings, name=f"test:{purpose}", transport=FakeTransport,
                                        transport_options={"fake_broker": broker})
        return make

    url = f"{FAKE_URL}&rpc_resend_uncertain_after={resend_after}"
    driver = RabbitHADriver(conf, om.TransportURL.parse(conf, url), "openstack", [],
                            connections=connections)
    transport = om_transport.RPCTransport(driver)
    closing(transport)
    resent = []
    driver.events.subscribe(lambda e: resent.append(e) if isinstance(e, events.RequestResent)
                            else None)
    client = om.get_rpc_client(transport, om.Target(topic=topic), timeout=1.5)
    if resend_after:
        assert client.call({}, "echo", value=1) == {"value": 1, "user": None}
        assert LosesTheFirstRequest.sent == LosesTheFirstRequest.lost  # the same request
        assert [e.resend for e in resent] == [1]
    else:
        with pytest.raises(om.MessagingTimeout):
            client.call({}, "echo", value=1)
        assert LosesTheFirstRequest.sent == [] and resent == []
    assert endpoint.casts == []


def test_calls_are_reported_on_the_event_bus_as_the_librarys_own(transports, broker, serve,
                                                                 topic):
    transport = transports()
    serve(transport)
    seen: list = []
    transport._driver.events.subscribe(lambda e: seen.append(e) if isinstance(
        e, (events.CallCompleted, events.CallTimedOut)) else None)
    client = om.get_rpc_client(transport, om.Target(topic=topic), timeout=5)
    assert client.call({}, "echo", value=1)["value"] == 1
    with pytest.raises(ValueError):
        client.call({}, "boom")
    with pytest.raises(om.MessagingTimeout):
        client.prepare(topic=f"{topic}-nobody", timeout=0.3).call({}, "echo", value=1)
    with pytest.raises(om.MessageUndeliverable):
        client.prepare(topic=f"{topic}-nobody", transport_options=om.TransportOptions(
            at_least_once=True)).call({}, "echo", value=1)
    completed, failed, timed_out, undeliverable = seen
    assert isinstance(completed, events.CallCompleted) and completed.ok
    assert isinstance(failed, events.CallCompleted) and not failed.ok
    assert isinstance(timed_out, events.CallTimedOut)
    assert timed_out.timeout == pytest.approx(0.3, abs=0.05)
    assert isinstance(undeliverable, events.CallCompleted) and not undeliverable.ok


def test_a_call_whose_retries_run_out_first_fails_and_is_no_timeout(transports, broker, topic):
    seen: list = []
    transport = transports()
    transport._driver.events.subscribe(lambda e: seen.append(e) if isinstance(
        e, (events.CallCompleted, events.CallTimedOut)) else None)
    broker.down_hosts.add("h1:1")
    client = om.get_rpc_client(transport, om.Target(topic=topic), timeout=5, retry=0)
    started = time.monotonic()
    with pytest.raises(om.MessageDeliveryFailure, match="could not"):
        client.call({}, "echo", value=1)
    assert time.monotonic() - started < 2.0  # one attempt window, not the timeout
    [failed] = seen
    assert isinstance(failed, events.CallCompleted) and not failed.ok


def test_a_remote_exception_is_raised_as_oslo_messaging_raises_it(transports, serve, topic):
    transport = transports(allowed=(__name__,))
    serve(transport)
    client = om.get_rpc_client(transport, om.Target(topic=topic), timeout=5)
    with pytest.raises(ValueError, match="no such thing"):
        client.call({}, "boom")
    with pytest.raises(AllowedError, match="allowed to travel"):
        client.call({}, "allowed")
    with pytest.raises(om.RemoteError) as info:
        client.call({}, "no_such_method")
    assert info.value.exc_type == "NoSuchMethod"


def test_a_call_nobody_serves_times_out(transports, topic):
    client = om.get_rpc_client(transports(), om.Target(topic=topic), timeout=0.3)
    started = time.monotonic()
    with pytest.raises(om.MessagingTimeout):
        client.call({}, "echo", value=1)
    assert time.monotonic() - started < 2.0


def test_at_least_once_raises_undeliverable_at_once(transports, topic):
    options = om.TransportOptions(at_least_once=True)
    client = om.get_rpc_client(transports(), om.Target(topic=topic), timeout=30,
                               transport_options=options)
    started = time.monotonic()
    with pytest.raises(om.MessageUndeliverable):
        client.call({}, "echo", value=1)
    assert time.monotonic() - started < 2.0


def test_a_cast_without_retry_to_no_queue_fails(transports, topic):
    client = om.get_rpc_client(transports(), om.Target(topic=topic), retry=0)
    with pytest.raises(om.MessageDeliveryFailure, match="no queue"):
        client.cast({}, "record", tag="x")


def test_a_fanout_to_nobody_is_dropped_quietly(transports, topic):
    client = om.get_rpc_client(transports(), om.Target(topic=topic, fanout=True))
    started = time.monotonic()
    client.cast({}, "record", tag="x")  # no error, a warning in the log
    # sent again for kombu_reconnect_delay (0 here) + 1 s: a listener may be re-declaring
    assert 0.9 < time.monotonic() - started < 2.0


def test_brokers_down_a_call_ends_at_its_timeout_whatever_retry(transports, broker, topic):
    broker.down_hosts.add("h1:1")
    client = om.get_rpc_client(transports(), om.Target(topic=topic), timeout=0.5, retry=None)
    started = time.monotonic()
    with pytest.raises(om.MessagingTimeout):
        client.call({}, "echo", value=1)
    assert time.monotonic() - started < 2.0


def test_brokers_down_a_cast_fails_after_its_retries(transports, broker, topic):
    broker.down_hosts.add("h1:1")
    client = om.get_rpc_client(transports(), om.Target(topic=topic), retry=1)
    started = time.monotonic()
    with pytest.raises(om.MessageDeliveryFailure, match="could not connect"):
        client.cast({}, "record", tag="x")
    # two attempt windows of connect_timeout (0.1 s, one host) + request_timeout (0.2 s)
    assert 0.5 <= time.monotonic() - started < 2.0


def test_a_fanout_call_is_refused(transports, topic):
    driver = transports()._driver
    with pytest.raises(om.InvalidTarget):
        driver.send(om.Target(topic=topic, fanout=True), {}, {"method": "m", "args": {}},
                    wait_for_reply=True, timeout=1)


def test_heartbeat_failures_are_delivery_failures():
    class Inner:
        ctxt: dict = {}
        message = {"method": "m", "args": {}}
        msg_id = "1"
        unique_id = "u"
        client_timeout = 2.0

        def heartbeat(self):
            raise exc.Unroutable("reply queue reply_x is gone")

    with pytest.raises(om.MessageDeliveryFailure, match="reply_x"):
        OsloRpcIncoming(Inner()).heartbeat()  # type: ignore[arg-type]


# -- notifications end to end -------------------------------------------------------------


class Listener:
    def __init__(self, requeue_first: bool = False) -> None:
        self.got: list = []
        self.requeue_first = requeue_first

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self.got.append((publisher_id, event_type, payload, ctxt))
        if self.requeue_first and len(self.got) == 1:
            return om.NotificationResult.REQUEUE
        return om.NotificationResult.HANDLED

    def error(self, ctxt, publisher_id, event_type, payload, metadata):
        self.got.append(("error", event_type))


@pytest.mark.parametrize("driver", ["messagingv2", "messaging"])
def test_notifications_reach_a_listener(transports, closing, topic, driver):
    transport = transports("notify")
    endpoint = Listener()
    listener = om.get_notification_listener(transport, [om.Target(topic=topic)], [endpoint],
                                            executor="threading")
    listener.start()
    closing(listener)
    notifier = om.Notifier(transport, "svc.host", driver=driver, topics=[topic])
    notifier.info({"user": "u"}, "thing.created", {"id": 1})
    notifier.error({}, "thing.failed", {})
    wait_for(lambda: len(endpoint.got) == 2)  # two queues: in either order
    assert ("error", "thing.failed") in endpoint.got
    assert ("svc.host", "thing.created", {"id": 1}) in [g[:3] for g in endpoint.got]


def test_notifications_wait_in_their_queue_and_may_be_requeued(transports, closing, topic):
    transport = transports("notify")
    om.Notifier(transport, None, driver="messagingv2", topics=[topic]).info({}, "early", 1)
    endpoint = Listener(requeue_first=True)
    listener = om.get_notification_listener(transport, [om.Target(topic=topic)], [endpoint],
                                            executor="threading", allow_requeue=True)
    listener.start()
    closing(listener)
    wait_for(lambda: len(endpoint.got) == 2)
    assert [g[:3] for g in endpoint.got] == [(None, "early", 1)] * 2


def test_pools_share_the_work_and_each_pool_sees_everything(transports, closing, topic):
    transport = transports("notify")
    pools: dict[str, list[Listener]] = {}
    for pool in ("a", "a", "b"):
        endpoint = Listener()
        listener = om.get_notification_listener(transport, [om.Target(topic=topic)], [endpoint],
                                                executor="threading", pool=pool)
        listener.start()
        closing(listener)
        pools.setdefault(pool, []).append(endpoint)
    notifier = om.Notifier(transport, "p", driver="messagingv2", topics=[topic])
    for i in range(6):
        notifier.info({}, "e", i)
    wait_for(lambda: sum(len(e.got) for e in pools["a"]) == 6)
    wait_for(lambda: len(pools["b"][0].got) == 6)


def test_batches_fill_up_to_their_size(transports, closing, topic):
    transport = transports("notify")
    notifier = om.Notifier(transport, "p", driver="messagingv2", topics=[topic])
    for i in range(7):
        notifier.info({}, "e", i)
    batches: list = []

    class Batch:
        def info(self, messages):
            batches.append([m["payload"] for m in messages])

    listener = om.get_batch_notification_listener(
        transport, [om.Target(topic=topic)], [Batch()], executor="threading",
        batch_size=5, batch_timeout=0.3)
    listener.start()
    closing(listener)
    wait_for(lambda: sum(map(len, batches)) == 7)
    assert batches == [[0, 1, 2, 3, 4], [5, 6]]


# -- both drivers in one process ---------------------------------------------------------


def test_rpc_on_rabbit_ha_and_notifications_on_oslo_messagings_rabbit(conf, closing, topic):
    from rabbit_ha_driver import options
    options.register_opts(conf)
    conf.set_override("transport_url", "memory://", group="rabbit_ha")
    rpc = om.get_rpc_transport(conf, "rabbit-ha://")
    closing(rpc)
    notify = om.get_notification_transport(conf, "kombu+memory:////")
    closing(notify)
    assert isinstance(rpc._driver, RabbitHADriver)
    assert type(notify._driver).__name__ == "RabbitDriver"
    endpoint = Endpoint()
    srv = om.get_rpc_server(rpc, om.Target(topic=topic, server="s1"), [endpoint],
                            executor="threading")
    srv.start()
    closing(srv)
    listened = Listener()
    listener = om.get_notification_listener(notify, [om.Target(topic=topic)], [listened],
                                            executor="threading")
    listener.start()
    closing(listener)
    client = om.get_rpc_client(rpc, om.Target(topic=topic), timeout=5)
    assert client.call({}, "echo", value="x")["value"] == "x"
    om.Notifier(notify, "p", driver="messagingv2", topics=[topic]).info({}, "e", "y")
    wait_for(lambda: listened.got)
    assert listened.got[0][1:3] == ("e", "y")


def test_cleanup_fails_waiting_calls_and_never_hangs(transports, topic):
    transport = transports()
    client = om.get_rpc_client(transport, om.Target(topic=topic), timeout=30)
    errors: list = []

    def call():
        try:
            client.call({}, "echo", value=1)
        except Exception as error:
            errors.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    transport.cleanup()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - started < 5
    assert errors and isinstance(errors[0], om.MessagingException)


def test_requests_carry_what_oslo_messagings_rabbit_driver_puts_in_them(transports, broker, topic):
    transport = transports()
    driver = transport._driver
    seen: list = []
    broker_queue = topic
    conn = driver._factory("inspect")
    conn.declare_exchange("openstack", "topic")
    conn.declare_queue(broker_queue)
    conn.bind(broker_queue, "openstack", topic)
    conn.consume(broker_queue, seen.append, no_ack=True)
    client = om.get_rpc_client(transport, om.Target(topic=topic, namespace="ns", version="1.2"))
    client.cast({"user": "u"}, "m", a=1)
    wait_for(lambda: (conn.drain_events(0.05), seen)[1])
    conn.close()
    inner = json.loads(json.loads(seen[0].body)["oslo.message"])
    assert inner["method"] == "m" and inner["args"] == {"a": 1}
    assert inner["namespace"] == "ns" and inner["version"] == "1.2"
    assert inner["_context_user"] == "u" and "_unique_id" in inner
    assert envelope.MSG_ID not in inner


def delete_queue(broker: FakeBroker, name: str) -> None:
    """Delete a queue with its routes (the fake's own delete leaves them in exchanges)."""
    broker.cancel_consumers(name, delete=True)
    for exchange in (broker.state.exchanges or {}).values():
        exchange["table"] = [route for route in exchange["table"] if route[-1] != name]


def test_a_notification_declares_its_queue_again_after_it_was_deleted(transports, broker, topic):
    transport = transports("notify")
    notifier = om.Notifier(transport, "p", driver="messagingv2", topics=[topic], retry=None)
    notifier.info({}, "first", 1)
    delete_queue(broker, f"{topic}.info")  # as an operator would
    sent = threading.Event()

    def send() -> None:
        notifier.info({}, "second", 2)
        sent.set()

    threading.Thread(target=send, daemon=True).start()
    assert sent.wait(5), "the notification was retried without declaring its queue again"
    assert f"{topic}.info" in broker.queues

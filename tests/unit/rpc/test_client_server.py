"""Client and server end to end on the fake broker, with short real timeouts."""

from __future__ import annotations

import json
import logging
import pickle
import threading
import time

import pytest

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.clock import FakeClock
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.rpc import RPCClient, RPCServer, RPCTransport, Target, envelope
from rabbit_ha_driver.rpc.executors import ThreadingExecutor

from .conftest import FAKE_URL, fake_factory


class Endpoint:
    def __init__(self, name="s1"):
        self.name = name
        self.seen = []
        self.event = threading.Event()
        self.gate = threading.Event()

    def echo(self, ctxt, value):
        return {"server": self.name, "value": value, "user": ctxt.get("user")}

    def boom(self, ctxt):
        raise ValueError(f"{self.name} says no")

    def record(self, ctxt, tag):
        self.seen.append(tag)
        self.event.set()

    def slow(self, ctxt, seconds):
        time.sleep(seconds)
        return "slow done"

    def blocked(self, ctxt):
        self.event.set()
        self.gate.wait(5)
        return "unblocked"

    def huge(self, ctxt, size):
        return "x" * size

    def opaque(self, ctxt):
        return object()

    def _secret(self, ctxt):
        return "secret"


@pytest.fixture
def serve(settings, factory, topic, cleanup):
    def start(endpoint=None, server="s1", settings=settings, **kwargs):
        endpoint = endpoint or Endpoint(server)
        srv = RPCServer(settings, topic, server, [endpoint], connection_factory=factory, **kwargs)
        srv.start()
        cleanup(srv)
        return endpoint, srv

    return start


@pytest.fixture
def client(settings, factory, topic, cleanup):
    c = RPCClient(settings, topic, timeout=2, connection_factory=factory)
    cleanup(c)
    return c


def publish_raw(settings, broker, body, key, content_type="application/json"):
    conn = fake_factory(settings, broker)("raw")
    conn.publish(body if isinstance(body, bytes) else json.dumps(body).encode(), "openstack", key,
                 properties={"content_type": content_type, "content_encoding": "utf-8"})
    conn.close()


def test_call_returns_the_result_and_passes_the_context(serve, client):
    serve()
    assert client.call({"user": "alice"}, "echo", value=[1, "x"]) == {
        "server": "s1", "value": [1, "x"], "user": "alice"}


def test_call_to_one_server_of_a_topic(serve, client):
    serve(server="s1")
    serve(server="s2")
    for _ in range(3):
        assert client.prepare(server="s2").call({}, "echo", value=1)["server"] == "s2"


def test_remote_errors_carry_type_and_message(serve, client):
    serve()
    with pytest.raises(exc.RemoteError) as info:
        client.call({}, "boom")
    assert info.value.exc_type == "ValueError"
    assert info.value.value == "s1 says no"
    assert "raise ValueError" in info.value.traceback


@pytest.mark.parametrize("method, args, kind", [
    ("missing", {}, "NoSuchMethod"),
    ("_secret", {}, "NoSuchMethod"),
    ("__init__", {}, "NoSuchMethod"),
    ("echo", {"wrong": 1}, "InvalidArguments"),
])
def test_dispatch_errors_reach_the_caller_typed(serve, client, method, args, kind):
    serve()
    with pytest.raises(exc.RemoteError) as info:
        client.call({}, method, **args)
    assert info.value.exc_type == f"rabbit_ha_driver.rpc.server.{kind}"


def test_cast_fanout_and_cast_to_a_server(serve, client):
    a, _ = serve(server="s1")
    b, _ = serve(server="s2")
    client.prepare(fanout=True).cast({}, "record", tag="all")
    client.prepare(server="s2").cast({}, "record", tag="only-b")
    client.cast({}, "record", tag="one")
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and len(a.seen) + len(b.seen) < 4:
        time.sleep(0.01)
    assert sorted(a.seen + b.seen) == ["all", "all", "one", "only-b"]
    assert "only-b" in b.seen and "all" in a.seen


def test_a_call_to_a_topic_nobody_serves_times_out_saying_why(settings, factory):
    with RPCClient(settings, "nobody-here", timeout=0.15, connection_factory=factory) as c:
        start = time.monotonic()
        with pytest.raises(exc.MessagingTimeout, match=r"not sent within.*no queue took it"):
            c.call({}, "echo", value=1)
        assert time.monotonic() - start < 0.4


def test_a_call_sent_while_the_queue_is_missing_is_retried_until_it_arrives(
        settings, factory, topic, cleanup):
    endpoint = Endpoint()
    server = RPCServer(settings, topic, "s1", [endpoint], connection_factory=factory)
    cleanup(server)
    threading.Timer(0.1, server.start).start()
    with RPCClient(settings, topic, timeout=3, connection_factory=factory) as c:
        assert c.call({}, "echo", value="late")["value"] == "late"


def test_every_broker_down_times_out_at_the_deadline(broker):
    settings = from_url(FAKE_URL, rabbit_retry_interval=0.2)
    clock = FakeClock()
    broker.down_hosts = {"h1:1"}
    with RPCClient(settings, "t", timeout=5, clock=clock,
                   connection_factory=fake_factory(settings, broker, clock)) as c:
        start = clock.now()
        with pytest.raises(exc.MessagingTimeout, match=r"could not set up reply queue.*could not "
                                                       r"connect to any of h1:1"):
            c.call({}, "echo", value=1)
        assert clock.now() - start == pytest.approx(5)
        with pytest.raises(exc.MessagingTimeout, match="cast 'echo' to t: not sent"):
            c.prepare(timeout=2).cast({}, "echo", value=1)


def test_one_client_shared_by_many_threads(serve, client):
    serve(server="s1")
    serve(server="s2")
    results, errors = [], []

    def worker(n):
        try:
            for i in range(5):
                results.append((n, i, client.call({}, "echo", value=[n, i])["value"]))
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert sorted(results) == sorted((n, i, [n, i]) for n in range(8) for i in range(5))


def test_clients_on_one_transport_share_its_connections(settings, factory, serve, topic, cleanup):
    serve()
    transport = RPCTransport(settings, connection_factory=factory)
    cleanup(transport)
    first = RPCClient(transport, topic, timeout=2)
    second = RPCClient(transport, Target(topic, server="s1"), timeout=2)
    assert first.call({}, "echo", value=1)["value"] == 1
    assert second.call({}, "echo", value=2)["value"] == 2
    first.close()  # does not close the shared transport
    assert second.call({}, "echo", value=3)["value"] == 3
    assert first.transport.reply_listener is second.transport.reply_listener


def test_call_monitor_heartbeats_keep_a_long_call_alive(serve, client):
    serve()
    monitored = client.prepare(call_monitor_timeout=0.1, timeout=2)
    assert monitored.call({}, "slow", seconds=0.3) == "slow done"


def test_without_heartbeats_a_monitored_call_fails_early(serve, client, settings, broker, topic):
    serve()
    # A request the server never sees: its queue gets it, but nobody answers.
    monitored = client.prepare(call_monitor_timeout=0.2, timeout=5, server="nobody")
    conn = fake_factory(settings, broker)("extra")
    conn.declare_queue(f"{topic}.nobody")
    conn.bind(f"{topic}.nobody", "openstack", f"{topic}.nobody")
    start = time.monotonic()
    with pytest.raises(exc.MessagingTimeout, match=r"no call-monitor heartbeat within 0\.2s"):
        monitored.call({}, "echo", value=1)
    assert time.monotonic() - start < 1
    conn.close()


def test_results_that_cannot_be_sent_become_errors(serve, client, settings):
    serve(settings=settings.replace(rpc_max_message_size=2048))
    with pytest.raises(exc.RemoteError, match=r"result was not sent.*over the limit"):
        client.call({}, "huge", size=4000)
    with pytest.raises(exc.RemoteError, match="not JSON serializable"):
        client.call({}, "opaque")


def test_requests_too_large_are_refused_on_both_sides(serve, client, settings, factory, topic):
    serve(settings=settings.replace(rpc_max_message_size=2048))
    with pytest.raises(exc.InvalidMessage, match="over the limit of 16777216"):
        client.call({}, "echo", value="x" * (16 * 1024 * 1024))
    start = time.monotonic()
    with pytest.raises(exc.RemoteError, match="over the limit of 2048 bytes") as info:
        client.call({}, "echo", value="y" * 4000)
    assert info.value.exc_type == "rabbit_ha_driver.exceptions.InvalidMessage"
    assert time.monotonic() - start < 1  # told at once, not by a timeout


def test_a_compression_bomb_in_a_call_gets_an_error_naming_the_limit_at_once(
        serve, settings, factory, topic, cleanup, caplog):
    # A request compressed to a few hundred bytes that expands far beyond
    # the server's rpc_max_message_size: the server refuses it without
    # expanding it, and the caller hears why at once instead of timing out.
    endpoint, _ = serve(settings=settings.replace(rpc_max_message_size=2048))
    sender = RPCClient(settings.replace(kombu_compression="gzip"), topic, timeout=5,
                       connection_factory=factory)
    cleanup(sender)
    start = time.monotonic()
    with pytest.raises(exc.RemoteError, match="expands beyond the limit of 2048 bytes") as info:
        sender.call({}, "echo", value="y" * 200_000)
    assert info.value.exc_type == "rabbit_ha_driver.exceptions.InvalidMessage"
    assert time.monotonic() - start < 2  # told at once, not by the 5 s timeout
    # A cast is rejected and logged; the server keeps serving.
    with caplog.at_level(logging.WARNING, logger="rabbit_ha_driver.rpc.listener"):
        sender.cast({}, "record", tag="z" * 200_000)
        assert sender.call({}, "echo", value="small")["value"] == "small"
    assert caplog.text.count("expands beyond the limit of 2048 bytes") == 2
    assert endpoint.seen == []


def test_junk_is_rejected_and_the_server_keeps_serving(serve, client, settings, broker, topic,
                                                       caplog):
    serve()
    publish_raw(settings, broker, pickle.dumps({"method": "echo"}), topic,
                content_type="application/x-python-serialize")
    publish_raw(settings, broker, b"method: echo", topic, content_type="application/x-yaml")
    publish_raw(settings, broker, b"{not json", topic)
    publish_raw(settings, broker, {"oslo.version": "9.0", "oslo.message": "{}"}, topic)
    assert client.call({}, "echo", value="still here")["value"] == "still here"
    assert caplog.text.count("rejecting message") == 4
    assert "x-python-serialize" in caplog.text
    assert not broker.queues[topic].qsize()  # nothing requeued


def test_a_malformed_request_with_a_caller_gets_an_error_at_once(serve, client, settings, broker,
                                                                 topic):
    serve()
    transport = client.transport
    replies = transport.reply_listener
    replies.ensure_started(time.monotonic() + 2, "test")
    pending = transport.waiters.register("m-bad", 2)
    bad = envelope.build_request({}, "echo", {}, msg_id="m-bad", reply_q=replies.queue)
    bad["args"] = ["not", "an", "object"]
    publish_raw(settings, broker, json.loads(envelope.encode(bad, 1 << 20)), topic)
    with pytest.raises(exc.RemoteError, match="not an object with string keys") as info:
        transport.waiters.wait(pending)
    assert info.value.exc_type == "rabbit_ha_driver.rpc.envelope.BadRequest"


def test_duplicate_requests_run_once(serve, client, settings, broker, topic):
    endpoint, _ = serve()
    request = envelope.build_request({}, "record", {"tag": "once"}, unique_id="dup-1")
    body = json.loads(envelope.encode(request, 1 << 20))
    publish_raw(settings, broker, body, topic)
    publish_raw(settings, broker, body, topic)
    assert client.call({}, "echo", value=1)  # both are handled before this
    assert endpoint.seen == ["once"]


def test_stop_finishes_in_flight_requests_and_takes_no_new_ones(serve, client):
    endpoint, server = serve()
    outcome = {}
    caller = threading.Thread(target=lambda: outcome.update(r=client.call({}, "blocked")))
    caller.start()
    assert endpoint.event.wait(2)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    stopper.join(2)
    assert not stopper.is_alive()  # stop() does not wait for handlers
    assert not server.running
    endpoint.gate.set()
    assert server.wait(2)
    caller.join(2)
    assert outcome == {"r": "unblocked"}
    with pytest.raises(exc.MessagingTimeout):
        client.prepare(timeout=0.15).call({}, "echo", value=1)


def test_a_closed_client_fails_waiting_calls(serve, settings, factory, topic):
    endpoint, _ = serve()
    c = RPCClient(settings, topic, timeout=5, connection_factory=factory)
    outcome = {}

    def call():
        try:
            c.call({}, "blocked")
        except Exception as error:
            outcome["error"] = error

    caller = threading.Thread(target=call)
    caller.start()
    assert endpoint.event.wait(2)
    c.close()
    caller.join(2)
    assert "closed" in str(outcome["error"])
    endpoint.gate.set()


def test_a_server_is_started_once(serve):
    _, server = serve()
    server.start()  # no effect
    server.stop()
    server.wait(1)
    with pytest.raises(RuntimeError):
        server.start()


def test_bad_usage_is_refused(settings, client):
    with pytest.raises(ValueError):
        client.prepare(fanout=True).call({}, "echo", value=1)
    with pytest.raises(ValueError):
        RPCServer(settings, "", "s", [Endpoint()])
    with pytest.raises(TypeError):
        RPCClient("memory://", "t")  # type: ignore[arg-type]


class RefusingExecutor(ThreadingExecutor):
    """Threads as the system gives them: it may refuse one (a pids limit)."""

    def __init__(self, max_workers):
        super().__init__(max_workers)
        self.refused = threading.Event()

    def _start(self, fn):
        try:
            super()._start(fn)
        except RuntimeError:
            self.refused.set()
            raise


def test_a_worker_the_system_refused_does_not_stop_the_polling_being_handed_on(serve, client):
    """While the leader handles a long request, the watcher hands the polling
    to a new worker. One the system refused once must be tried again later,
    or nobody polls until that request ends."""
    executor = RefusingExecutor(4)
    endpoint, _ = serve(executor=executor)
    # No thread can get a stack this large: starting one fails for real.
    previous = threading.stack_size(2 ** 44)
    try:
        client.cast({}, "blocked")
        assert endpoint.event.wait(5)
        assert executor.refused.wait(5), "the polling was never handed on"
    finally:
        threading.stack_size(previous)
    try:
        client.cast({}, "record", tag="next")
        deadline = time.monotonic() + 3  # the long request ends after 5 s
        while not endpoint.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert endpoint.seen == ["next"], "nobody polled while the long request ran"
    finally:
        endpoint.gate.set()

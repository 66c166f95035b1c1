"""This library's RPC API and oslo.messaging's rabbit driver on one cluster.

A service using :mod:`rabbit_ha_driver.rpc` and one using oslo.messaging with
its own ``rabbit://`` driver talk to each other in both directions: calls
(also to one named server, and one that raises), casts, fanout casts and
notifications. Both sides run in this process on the same cluster, with the
same control exchange (``openstack``), so this checks the wire format, the
exchange, queue and routing-key names, the queue arguments (a mismatch would
be a 406 on declare) and the reply protocol, with classic and with quorum
queues.

How it works: every test starts the receiving side first (its queues and
bindings then exist), sends from the other side, and waits on a
:class:`Seen` record that the receivers' endpoints fill.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import oslo_messaging as om
import pytest
from oslo_config import cfg
from oslo_messaging import conffixture

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.rpc import NotificationServer, Notifier, RPCClient, RPCServer
from rabbit_ha_driver.settings import Settings

from .helpers.faults import OWN_QUEUES_DURABLE

WAIT = 10.0


class Seen:
    """What the endpoints received, by tag; waits for asynchronous deliveries."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._by_tag: dict[str, list[Any]] = {}

    def add(self, tag: str, value: Any) -> None:
        with self._cond:
            self._by_tag.setdefault(tag, []).append(value)
            self._cond.notify_all()

    def wait(self, tag: str, count: int = 1, timeout: float = WAIT) -> list[Any]:
        with self._cond:
            self._cond.wait_for(lambda: len(self._by_tag.get(tag, [])) >= count, timeout)
            return list(self._by_tag.get(tag, []))


class Endpoint:
    """The same endpoint serves both libraries: ``(ctxt, **kwargs)`` methods."""

    def __init__(self, name: str, seen: Seen) -> None:
        self.name = name
        self.seen = seen

    def echo(self, ctxt: Any, text: str) -> dict[str, Any]:
        return {"server": self.name, "echo": text, "user": _context(ctxt).get("user")}

    def fail(self, ctxt: Any, why: str) -> None:
        raise ValueError(f"{self.name}: {why}")

    def record(self, ctxt: Any, tag: str) -> None:
        self.seen.add(tag, self.name)


class NotificationEndpoint:
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any,
             metadata: Any) -> None:
        self.seen.add(event_type, (publisher_id, payload))

    def error(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any,
              metadata: Any) -> None:
        self.seen.add(event_type, (publisher_id, payload, "error"))


def _context(ctxt: Any) -> dict[str, Any]:
    if isinstance(ctxt, dict):
        return ctxt
    to_dict = getattr(ctxt, "to_dict", None)
    return to_dict() if callable(to_dict) else {}


def unique(prefix: str) -> str:
    return f"rha-interop.{prefix}.{uuid.uuid4().hex[:8]}"


class Sides:
    """Both libraries configured for the cluster; closes what it started."""

    def __init__(self, cluster: Any, quorum: bool) -> None:
        url = cluster.url()
        # "classic" on RabbitMQ 4, which denies transient queues: durable classic.
        self.settings: Settings = from_url(url, rabbit_quorum_queue=quorum,
                                           amqp_durable_queues=OWN_QUEUES_DURABLE,
                                           connection_name="interop-rha")
        self.conf = cfg.ConfigOpts()
        conffixture.ConfFixture(self.conf)  # registers oslo.messaging's options here
        self.conf.set_override("rabbit_quorum_queue", quorum, group="oslo_messaging_rabbit")
        self.conf.set_override("amqp_durable_queues", OWN_QUEUES_DURABLE,
                               group="oslo_messaging_rabbit")
        self.conf.set_override("heartbeat_timeout_threshold", 10, group="oslo_messaging_rabbit")
        self.oslo_rpc = om.get_rpc_transport(self.conf, url=url)
        self.oslo_notify = om.get_notification_transport(self.conf, url=url)
        self._stack = contextlib.ExitStack()

    # -- this library ------------------------------------------------------------

    def rha_server(self, topic: str, name: str, seen: Seen) -> RPCServer:
        server = RPCServer(self.settings, topic, name, [Endpoint(name, seen)], start_timeout=WAIT)
        server.start()
        self._stack.callback(server.wait, 5.0)
        self._stack.callback(server.stop)
        return server

    def rha_client(self, topic: str) -> RPCClient:
        client = RPCClient(self.settings, topic, timeout=WAIT)
        self._stack.callback(client.close)
        return client

    def rha_listener(self, topic: str, seen: Seen) -> NotificationServer:
        server = NotificationServer(self.settings, [topic], [NotificationEndpoint(seen)],
                                    start_timeout=WAIT)
        server.start()
        self._stack.callback(server.wait, 5.0)
        self._stack.callback(server.stop)
        return server

    def rha_notifier(self, topic: str) -> Notifier:
        notifier = Notifier(self.settings, "rha.publisher", topics=[topic], timeout=WAIT)
        self._stack.callback(notifier.close)
        return notifier

    # -- oslo.messaging ------------------------------------------------------------

    def oslo_server(self, topic: str, name: str, seen: Seen) -> Any:
        server = om.get_rpc_server(self.oslo_rpc, om.Target(topic=topic, server=name),
                                   [Endpoint(name, seen)], executor="threading")
        server.start()
        self._stack.callback(server.wait)
        self._stack.callback(server.stop)
        return server

    def oslo_client(self, topic: str) -> Any:
        return om.get_rpc_client(self.oslo_rpc, om.Target(topic=topic), timeout=WAIT)

    def oslo_listener(self, topic: str, seen: Seen) -> Any:
        listener = om.get_notification_listener(
            self.oslo_notify, [om.Target(topic=topic)], [NotificationEndpoint(seen)],
            executor="threading")
        listener.start()
        self._stack.callback(listener.wait)
        self._stack.callback(listener.stop)
        return listener

    def oslo_notifier(self, topic: str) -> Any:
        return om.Notifier(self.oslo_notify, publisher_id="oslo.publisher",
                           driver="messaging", topics=[topic])

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self.oslo_rpc.cleanup()
            self.oslo_notify.cleanup()


@pytest.fixture(params=[False, True], ids=["classic", "quorum"])
def sides(request: Any, cluster: Any) -> Iterator[Sides]:
    both = Sides(cluster, quorum=request.param)
    try:
        yield both
    finally:
        both.close()


# -- this library calls oslo.messaging ------------------------------------------------


def test_rha_client_calls_casts_and_fans_out_to_oslo_servers(sides):
    topic, seen = unique("to-oslo"), Seen()
    sides.oslo_server(topic, "oslo-a", seen)
    sides.oslo_server(topic, "oslo-b", seen)
    client = sides.rha_client(topic)

    result = client.call({"user": "alice"}, "echo", text="hello")
    assert result["echo"] == "hello" and result["server"] in ("oslo-a", "oslo-b")
    assert result["user"] == "alice"
    assert client.prepare(server="oslo-b").call({}, "echo", text="b")["server"] == "oslo-b"

    with pytest.raises(exc.RemoteError) as info:
        client.call({}, "fail", why="on purpose")
    assert info.value.exc_type == "ValueError"
    assert "on purpose" in info.value.value

    client.cast({}, "record", tag="cast")
    assert len(seen.wait("cast")) == 1
    client.prepare(fanout=True).cast({}, "record", tag="fanout")
    assert sorted(seen.wait("fanout", 2)) == ["oslo-a", "oslo-b"]
    client.prepare(server="oslo-a").cast({}, "record", tag="direct")
    assert seen.wait("direct") == ["oslo-a"]


def test_rha_notifier_reaches_an_oslo_listener(sides):
    topic, seen = unique("notify-oslo"), Seen()
    sides.oslo_listener(topic, seen)
    notifier = sides.rha_notifier(topic)
    assert notifier.info({"user": "bob"}, "interop.info", {"n": 1})
    assert notifier.error({}, "interop.error", {"n": 2})
    assert seen.wait("interop.info") == [("rha.publisher", {"n": 1})]
    assert seen.wait("interop.error") == [("rha.publisher", {"n": 2}, "error")]


# -- oslo.messaging calls this library ------------------------------------------------


def test_oslo_client_calls_casts_and_fans_out_to_rha_servers(sides):
    topic, seen = unique("from-oslo"), Seen()
    sides.rha_server(topic, "rha-a", seen)
    sides.rha_server(topic, "rha-b", seen)
    client = sides.oslo_client(topic)

    result = client.call({"user": "carol"}, "echo", text="hello")
    assert result["echo"] == "hello" and result["server"] in ("rha-a", "rha-b")
    assert result["user"] == "carol"
    assert client.prepare(server="rha-b").call({}, "echo", text="b")["server"] == "rha-b"

    # oslo.messaging rebuilds a builtin exception from the failure it got.
    with pytest.raises(Exception) as info:
        client.call({}, "fail", why="on purpose")
    assert "ValueError" in type(info.value).__name__ or "ValueError" in str(info.value)
    assert "on purpose" in str(info.value)

    with pytest.raises(Exception) as info:
        client.call({}, "no_such_method")
    assert "no_such_method" in str(info.value)

    client.cast({}, "record", tag="cast")
    assert len(seen.wait("cast")) == 1
    client.prepare(fanout=True).cast({}, "record", tag="fanout")
    assert sorted(seen.wait("fanout", 2)) == ["rha-a", "rha-b"]
    client.prepare(server="rha-a").cast({}, "record", tag="direct")
    assert seen.wait("direct") == ["rha-a"]


def test_oslo_notifier_reaches_an_rha_listener(sides):
    topic, seen = unique("notify-rha"), Seen()
    sides.rha_listener(topic, seen)
    notifier = sides.oslo_notifier(topic)
    notifier.info({"user": "dan"}, "interop.info", {"n": 1})
    notifier.error({}, "interop.error", {"n": 2})
    assert seen.wait("interop.info") == [("oslo.publisher", {"n": 1})]
    assert seen.wait("interop.error") == [("oslo.publisher", {"n": 2}, "error")]

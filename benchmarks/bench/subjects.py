"""The five things the benchmark compares, behind one small interface.

Each subject runs RPC servers of one topic and a client in this process:

* ``rabbit_ha``: this library's own API (:class:`~rabbit_ha_driver.rpc.RPCClient`,
  :class:`~rabbit_ha_driver.rpc.RPCServer`); casts with
  :meth:`~rabbit_ha_driver.rpc.RPCClient.cast_async`, each one confirmed
  before the figure's clock stops;
* ``rabbit_ha_oslo``: oslo.messaging's API on this library (``rabbit-ha://``);
* ``oslo_rabbit``: oslo.messaging's API on its own rabbit driver (``rabbit://``),
  whose casts wait for the broker's confirm of each message (its kombu
  transport sets ``confirm_publish``);
* ``oslo_fake``: oslo.messaging's API on its in-process ``fake://`` driver, the
  ceiling of oslo.messaging's own layers (no broker at all);
* ``bare_amqp``: py-amqp with no framework: JSON bodies, a reply queue and a
  correlation id per call, publisher confirms for casts only. The floor.

Every server answers ``ping(payload)`` with the payload and counts
``record(n)`` casts, so the runner can wait until every cast arrived.
"""

from __future__ import annotations

import abc
import contextlib
import itertools
import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

#: The payload of every call and cast: small, like most RPC arguments.
PAYLOAD = "x" * 64

SUBJECTS = ("rabbit_ha", "rabbit_ha_oslo", "oslo_rabbit", "bare_amqp", "oslo_fake")


class Counter:
    """Messages received by servers, waited on by the runner."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.counts: dict[str, int] = {}

    def add(self, who: str) -> None:
        with self._cond:
            self.counts[who] = self.counts.get(who, 0) + 1
            self._cond.notify_all()

    def reset(self) -> None:
        with self._cond:
            self.counts.clear()

    def wait(self, expected: dict[str, int], timeout: float) -> bool:
        """True once every name in ``expected`` received at least that many."""
        def done() -> bool:
            return all(self.counts.get(k, 0) >= v for k, v in expected.items())

        with self._cond:
            return self._cond.wait_for(done, timeout)


class Endpoint:
    """What every subject's servers serve."""

    def __init__(self, name: str, counter: Counter) -> None:
        self.name = name
        self.counter = counter

    def ping(self, ctxt: Any, payload: str) -> str:
        return payload

    def record(self, ctxt: Any, n: int) -> None:
        self.counter.add(self.name)


class Subject(abc.ABC):
    """One implementation under test; see the module docstring."""

    name = ""
    #: Whether a figure applies (``oslo_fake`` has no connections).
    has_connections = True
    #: Servers must run in the client's process (the fake driver's broker is
    #: a Python object); others run them in a process of their own.
    in_process_only = False
    #: Whether one :meth:`caller` may be used by many threads at once (one
    #: client on one transport, as a service shares it). py-amqp's
    #: connections are not thread-safe: ``bare_amqp`` needs one per thread.
    caller_thread_safe = True

    def __init__(self, url: str, topic: str) -> None:
        self.url = url
        self.topic = topic
        self.counter = Counter()
        self._cleanups: list[Callable[[], Any]] = []

    def defer(self, cleanup: Callable[[], Any]) -> None:
        self._cleanups.append(cleanup)

    def close(self) -> None:
        """Undo everything, newest first; never raises."""
        while self._cleanups:
            with contextlib.suppress(Exception):
                self._cleanups.pop()()

    @abc.abstractmethod
    def start_servers(self, names: list[str], *, fanout_only: bool = False) -> None:
        """Run one server per name on the topic."""

    @abc.abstractmethod
    def caller(self, payload: str = PAYLOAD) -> Callable[[], Any]:
        """A function making one call of ``ping(payload)``; one per client thread."""

    @abc.abstractmethod
    def caster(self, fanout: bool = False) -> Callable[[int], None]:
        """A function casting ``record(n)`` (to all servers if ``fanout``)."""

    def settle(self) -> None:  # noqa: B027 - optional hook
        """Wait until every cast made so far is confirmed, where casts are pipelined."""

    @abc.abstractmethod
    def open_connection(self) -> Any:
        """One more connection as the framework makes them (kept until close)."""

    @abc.abstractmethod
    def open_idle_server(self, topic: str) -> Any:
        """One more started server on ``topic`` that receives nothing."""


# -- this library --------------------------------------------------------------


class RabbitHA(Subject):
    name = "rabbit_ha"

    def __init__(self, url: str, topic: str) -> None:
        super().__init__(url, topic)
        from rabbit_ha_driver.events import EventBus
        from rabbit_ha_driver.options import from_url
        from rabbit_ha_driver.rpc import RPCTransport

        self.settings = from_url(url)
        self.events = EventBus()  # quiet: no log subscriber
        self.transport = RPCTransport(self.settings, events=self.events)
        self.defer(self.transport.close)
        self._receipts: list[Any] = []

    def start_servers(self, names: list[str], *, fanout_only: bool = False) -> None:
        from rabbit_ha_driver.rpc import RPCServer

        for name in names:
            server = RPCServer(self.settings, self.topic, name, [Endpoint(name, self.counter)],
                               events=self.events)
            server.start()
            self.defer(_stopper(server))

    def caller(self, payload: str = PAYLOAD) -> Callable[[], Any]:
        from rabbit_ha_driver.rpc import RPCClient

        client = RPCClient(self.transport, self.topic, timeout=30)

        def call() -> Any:
            return client.call({}, "ping", payload=payload)

        return call

    def caster(self, fanout: bool = False) -> Callable[[int], None]:
        from rabbit_ha_driver.rpc import RPCClient

        client = RPCClient(self.transport, self.topic, timeout=30).prepare(fanout=fanout)
        receipts = self._receipts

        def cast(n: int) -> None:
            receipts.append(client.cast_async({}, "record", n=n))

        return cast

    def settle(self) -> None:
        """Every cast confirmed by the broker (receipts raise if one failed)."""
        receipts, self._receipts[:] = list(self._receipts), []
        for receipt in receipts:
            if not receipt.result():
                raise RuntimeError(f"{receipt.what} reached no queue")

    def open_connection(self) -> Any:
        from rabbit_ha_driver.connection import Connection

        conn = Connection(self.settings, events=self.events)
        conn.connect()
        self.defer(conn.close)
        return conn

    def open_idle_server(self, topic: str) -> Any:
        from rabbit_ha_driver.rpc import RPCServer

        server = RPCServer(self.settings, topic, "idle", [Endpoint("idle", self.counter)],
                           events=self.events)
        server.start()
        self.defer(_stopper(server))
        return server


def _stopper(server: Any) -> Callable[[], None]:
    def stop() -> None:
        server.stop()
        server.wait(5)

    return stop


# -- oslo.messaging's API ------------------------------------------------------


class OsloSubject(Subject):
    """oslo.messaging's API on the driver its URL names."""

    scheme = ""

    def __init__(self, url: str, topic: str) -> None:
        super().__init__(url, topic)
        import oslo_messaging
        from oslo_config import cfg

        self.om = oslo_messaging
        # The global object: oslo.messaging registers some of its options
        # (tracing) only there. Each run has a process of its own.
        self.conf = cfg.CONF
        self.conf([], project="rabbit-ha-bench")
        self.transport_url = self.scheme + url.split("://", 1)[1] if self.scheme != "fake://" else "fake://"
        self.transport = oslo_messaging.get_rpc_transport(self.conf, url=self.transport_url)
        self.defer(self.transport.cleanup)

    def _server(self, topic: str, name: str, endpoint: Endpoint) -> Any:
        target = self.om.Target(topic=topic, server=name)
        server = self.om.get_rpc_server(self.transport, target, [endpoint], executor="threading")
        server.start()
        self.defer(_stopper(server))
        return server

    def _client(self, **kwargs: Any) -> Any:
        target = self.om.Target(topic=self.topic, **kwargs)
        getter = getattr(self.om, "get_rpc_client", None)
        if getter is not None:
            return getter(self.transport, target, timeout=30)
        return self.om.RPCClient(self.transport, target, timeout=30)

    def start_servers(self, names: list[str], *, fanout_only: bool = False) -> None:
        for name in names:
            self._server(self.topic, name, Endpoint(name, self.counter))

    def caller(self, payload: str = PAYLOAD) -> Callable[[], Any]:
        client = self._client()
        return lambda: client.call({}, "ping", payload=payload)

    def caster(self, fanout: bool = False) -> Callable[[int], None]:
        client = self._client(fanout=fanout) if fanout else self._client()
        return lambda n: client.cast({}, "record", n=n)

    def open_idle_server(self, topic: str) -> Any:
        return self._server(topic, "idle", Endpoint("idle", self.counter))


class RabbitHAOslo(OsloSubject):
    name = "rabbit_ha_oslo"
    scheme = "rabbit-ha://"

    def open_connection(self) -> Any:
        from rabbit_ha_driver.connection import Connection

        driver = self.transport._driver
        conn = Connection(driver.settings)
        conn.connect()
        self.defer(conn.close)
        return conn


class OsloRabbit(OsloSubject):
    name = "oslo_rabbit"
    scheme = "rabbit://"

    def open_connection(self) -> Any:
        from oslo_messaging._drivers import impl_rabbit

        driver = self.transport._driver
        conn = impl_rabbit.Connection(driver.conf, driver._url, "send")
        self.defer(conn.close)
        return conn


class OsloFake(OsloSubject):
    name = "oslo_fake"
    scheme = "fake://"
    has_connections = False
    in_process_only = True

    def open_connection(self) -> Any:
        raise NotImplementedError("the fake driver has no connections")


# -- py-amqp, no framework -----------------------------------------------------


class BareAMQP(Subject):
    """What a hand-written client and server on py-amqp cost: the floor."""

    name = "bare_amqp"
    caller_thread_safe = False

    def __init__(self, url: str, topic: str) -> None:
        super().__init__(url, topic)
        from rabbit_ha_driver.settings import parse_transport_url

        parsed = parse_transport_url(url)
        host = parsed.hosts[0]
        self._params = {"host": host.address, "userid": host.username,
                        "password": host.password, "virtual_host": parsed.virtual_host or "/"}
        self._stop = threading.Event()
        self.defer(self._stop.set)

    def _connect(self, *, confirm: bool = False) -> Any:
        import amqp

        conn = amqp.Connection(heartbeat=0, confirm_publish=confirm, **self._params)
        conn.connect()
        self.defer(conn.close)
        return conn

    def _serve(self, conn: Any, queue: str, name: str, exchange: str = "") -> Any:
        channel = conn.channel()
        if exchange:
            channel.exchange_declare(exchange, "fanout", auto_delete=True)
            queue, _, _ = channel.queue_declare("", exclusive=True)
            channel.queue_bind(queue, exchange)
        else:
            channel.queue_declare(queue, auto_delete=True)
        import amqp

        def on_message(message: Any) -> None:
            request = json.loads(message.body)
            if request["method"] == "record":
                self.counter.add(name)
            reply_to = message.properties.get("reply_to")
            if reply_to:
                body = json.dumps({"result": request["args"]["payload"]})
                channel.basic_publish(
                    amqp.Message(body, content_type="application/json",
                                 correlation_id=message.properties["correlation_id"]),
                    exchange="", routing_key=reply_to)
            channel.basic_ack(message.delivery_tag)

        channel.basic_consume(queue, callback=on_message)

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    conn.drain_events(timeout=0.1)
                except TimeoutError:
                    pass
                except Exception:
                    return

        thread = threading.Thread(target=loop, daemon=True, name=f"bare-server-{name}")
        thread.start()
        self.defer(lambda: thread.join(1))
        return thread

    def start_servers(self, names: list[str], *, fanout_only: bool = False) -> None:
        for name in names:
            self._serve(self._connect(), self.topic, name,
                        exchange=f"{self.topic}_fanout" if fanout_only else "")

    def caller(self, payload: str = PAYLOAD) -> Callable[[], Any]:
        import amqp

        conn = self._connect()
        channel = conn.channel()
        reply_queue, _, _ = channel.queue_declare("", exclusive=True)
        replies: dict[str, Any] = {}

        def on_reply(message: Any) -> None:
            replies[message.properties["correlation_id"]] = json.loads(message.body)["result"]

        channel.basic_consume(reply_queue, callback=on_reply, no_ack=True)
        ids = itertools.count()
        prefix = uuid.uuid4().hex

        def call() -> Any:
            corr = f"{prefix}{next(ids)}"
            body = json.dumps({"method": "ping", "args": {"payload": payload}})
            channel.basic_publish(
                amqp.Message(body, content_type="application/json", reply_to=reply_queue,
                             correlation_id=corr),
                exchange="", routing_key=self.topic)
            while corr not in replies:
                conn.drain_events(timeout=30)
            return replies.pop(corr)

        return call

    def caster(self, fanout: bool = False) -> Callable[[int], None]:
        import amqp

        conn = self._connect(confirm=True)
        channel = conn.channel()
        exchange = f"{self.topic}_fanout" if fanout else ""
        key = "" if fanout else self.topic

        def cast(n: int) -> None:
            body = json.dumps({"method": "record", "args": {"n": n}})
            channel.basic_publish(amqp.Message(body, content_type="application/json"),
                                  exchange=exchange, routing_key=key)

        return cast

    def open_connection(self) -> Any:
        conn = self._connect()
        conn.channel()
        return conn

    def open_idle_server(self, topic: str) -> Any:
        return self._serve(self._connect(), topic, "idle")


def make(name: str, url: str, topic: str) -> Subject:
    """The subject called ``name`` (one of :data:`SUBJECTS`)."""
    classes: dict[str, type[Subject]] = {
        "rabbit_ha": RabbitHA, "rabbit_ha_oslo": RabbitHAOslo, "oslo_rabbit": OsloRabbit,
        "oslo_fake": OsloFake, "bare_amqp": BareAMQP,
    }
    try:
        cls = classes[name]
    except KeyError:
        raise ValueError(f"unknown subject {name!r}; choose from {', '.join(SUBJECTS)}") from None
    return cls(url, topic)

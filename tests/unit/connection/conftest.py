"""What the connection tests share: the fake broker, a fake clock, an event
recorder, and a connection wired to all three."""

from __future__ import annotations

from typing import Any

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.clock import FakeClock
from rabbit_ha_driver.connection import Backoff, Connection
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.testing import FakeBroker, FakeTransport

#: Three hosts, a password that must never reach a log.
URL = "rabbit://u:s3cret@h1:1,u:s3cret@h2:2,u:s3cret@h3:3/"


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def recorder() -> ev.Recorder:
    return ev.Recorder()


def make_connection(broker: FakeBroker, clock: FakeClock, recorder: ev.Recorder,
                    url: str = URL, **overrides: Any) -> Connection:
    """A connection to the fake broker whose events go to ``recorder`` and the log;
    backoff 0.2 s, +1 s a pass, capped at 3 s, no jitter."""
    bus = ev.EventBus()
    bus.subscribe(recorder)
    bus.subscribe(ev.LogSubscriber())
    return Connection(from_url(url, **overrides), name="test", events=bus, clock=clock,
                      transport=FakeTransport, transport_options={"fake_broker": broker},
                      backoff=Backoff(0.2, 1.0, 3.0, jitter=0.0))


#: Settings for connections to the scripted AMQP server (see amqp_server.py):
#: no heartbeats (liveness stays out of the way), no periodic queue checks,
#: and every wait short enough for a test to finish in well under a second.
AMQP_SETTINGS: dict[str, Any] = {
    "heartbeat_timeout_threshold": 0,
    "consumer_check_interval": 0,
    "connect_timeout": 0.2,
    "request_timeout": 0.2,
    "publish_timeout": 0.2,
    "kombu_reconnect_delay": 0.05,
}


@pytest.fixture
def amqp_server() -> Any:
    """A scripted AMQP 0-9-1 broker on a loopback port (see amqp_server.py)."""
    from rabbit_ha_driver.testing import AmqpServer

    server = AmqpServer()
    yield server
    server.stop()


@pytest.fixture
def amqp_connect(amqp_server: Any, recorder: ev.Recorder) -> Any:
    """``amqp_connect(url=None, **overrides)``: a connection over the real AMQP
    path to ``amqp_server`` (or ``url``), its events to ``recorder``; closed
    after the test."""
    made: list[Connection] = []

    def connect(url: str | None = None, **overrides: Any) -> Connection:
        bus = ev.EventBus()
        bus.subscribe(recorder)
        bus.subscribe(ev.LogSubscriber())
        settings = from_url(url or amqp_server.url, **{**AMQP_SETTINGS, **overrides})
        conn = Connection(settings, name="amqp-test", events=bus,
                          backoff=Backoff(0.01, 0.0, 0.02, jitter=0.0))
        made.append(conn)
        return conn

    yield connect
    for conn in made:
        conn.close()

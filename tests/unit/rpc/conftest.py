"""Fixtures for the RPC layer: settings, a fake broker per test, unique topics."""

from __future__ import annotations

import uuid

import pytest

from rabbit_ha_driver.clock import FakeClock
from rabbit_ha_driver.connection import Connection
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.settings import Settings
from rabbit_ha_driver.testing import FakeBroker, FakeTransport

FAKE_URL = "rabbit://u:p@h1:1/"


def fake_factory(settings: Settings, broker: FakeBroker, clock=None):
    """Connections of the RPC layer, all to ``broker``."""

    def make(purpose: str) -> Connection:
        return Connection(settings, name=f"test:{purpose}", clock=clock, transport=FakeTransport,
                          transport_options={"fake_broker": broker})

    return make


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def settings() -> Settings:
    return from_url(FAKE_URL, kombu_reconnect_delay=0.0, rabbit_retry_interval=0.0,
                    rabbit_retry_backoff=0.0, rabbit_interval_max=0.0)


@pytest.fixture
def factory(settings, broker):
    return fake_factory(settings, broker)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def topic() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cleanup():
    """Collects servers and clients; stops and closes them after the test."""
    from rabbit_ha_driver.rpc import RPCServer

    stack = []
    yield stack.append
    for item in reversed(stack):
        if isinstance(item, RPCServer):
            item.stop()
            item.wait(2)
        else:
            item.close()

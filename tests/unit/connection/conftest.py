"""What the connection tests share: the fake broker, a fake clock, an event
recorder, and a connection wired to all three."""

from __future__ import annotations

from typing import Any

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.clock import FakeClock
from rabbit_ha_driver.connection import Backoff, Connection
from rabbit_ha_driver.settings import from_url
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

"""The publisher's retry loop: its pauses as a pure function, and what its errors carry."""

from __future__ import annotations

import pytest

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.rpc.envelope import ExchangeSpec
from rabbit_ha_driver.rpc.publisher import Publisher, retry_pause

from .conftest import fake_factory

EXCHANGE = ExchangeSpec("openstack", "topic")


def test_the_pause_after_each_failed_attempt_doubles_up_to_half_a_second():
    assert [retry_pause(n) for n in range(1, 8)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
    assert retry_pause(10_000) == 0.5


def test_a_timeout_carries_the_real_attempts_and_seconds_waited(settings, broker, clock):
    publisher = Publisher(settings, fake_factory(settings, broker, clock), clock=clock)
    start = clock.now()
    with pytest.raises(exc.MessagingTimeout) as info:
        publisher.publish(b"{}", EXCHANGE, "k", deadline=start + 3, what="call 'm' to t")
    error = info.value
    assert error.waited == pytest.approx(3.0) == pytest.approx(sum(clock.sleeps))
    attempts = broker.calls.count("basic.publish")
    assert isinstance(error.last_error, exc.Unroutable)
    assert error.last_error.attempts == attempts == len(clock.sleeps)
    assert f"not sent within 3.0s ({attempts} attempts)" in str(error)
    publisher.close()


def test_a_nacked_message_names_its_attempt(settings, broker, clock):
    broker.fail_next("basic.publish", exc.PublishNacked("nack"), times=1000)
    publisher = Publisher(settings, fake_factory(settings, broker, clock), clock=clock)
    with pytest.raises(exc.MessagingTimeout, match="the broker refused it") as info:
        publisher.publish(b"{}", EXCHANGE, "k", deadline=clock.now() + 1, what="t")
    assert isinstance(info.value.last_error, exc.PublishNacked)
    assert info.value.last_error.attempts == broker.calls.count("basic.publish")
    publisher.close()


def test_the_unroutable_grace_bounds_the_pauses(settings, broker, clock):
    publisher = Publisher(settings, fake_factory(settings, broker, clock), clock=clock)
    assert publisher.publish(b"{}", EXCHANGE, "", deadline=clock.now() + 30, what="fanout",
                             retry_unroutable=0.3) is False
    assert clock.sleeps == pytest.approx([0.05, 0.1, 0.15])  # the last one cut to the grace
    publisher.close()

"""A call as a whole (OutgoingCall): forgotten once over, reported on the event bus.

``RPCClient.call`` and the oslo.messaging driver's call both run through it;
here through the client, on the fake broker with short real timeouts.
"""

from __future__ import annotations

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.rpc import RPCClient, RPCServer, RPCTransport
from rabbit_ha_driver.rpc.calls import OutgoingCall


class Endpoint:
    def echo(self, ctxt, value):
        return value

    def boom(self, ctxt):
        raise ValueError("no")


@pytest.fixture
def transport(settings, factory):
    made = RPCTransport(settings, connection_factory=factory)
    yield made
    made.close()


@pytest.fixture
def seen(transport) -> list[ev.Event]:
    """The call events of ``transport``, in order."""
    events: list[ev.Event] = []
    transport.events.subscribe(lambda e: events.append(e) if isinstance(
        e, (ev.CallCompleted, ev.CallTimedOut)) else None)
    return events


def test_calls_are_reported_completed_failed_or_timed_out(
        settings, factory, transport, seen, topic, cleanup):
    server = RPCServer(settings, topic, "s1", [Endpoint()], connection_factory=factory)
    server.start()
    cleanup(server)
    client = RPCClient(transport, topic, timeout=2)
    assert client.call({}, "echo", value=1) == 1
    with pytest.raises(exc.RemoteError):
        client.call({}, "boom")
    with pytest.raises(exc.MessagingTimeout):
        client.prepare(topic="nobody-here", timeout=0.15).call({}, "echo", value=1)
    completed, failed, timed_out = seen
    assert isinstance(completed, ev.CallCompleted) and completed.ok
    assert isinstance(failed, ev.CallCompleted) and not failed.ok
    assert isinstance(timed_out, ev.CallTimedOut) and timed_out.timeout == 0.15
    assert transport.waiters._calls == {}  # every call forgotten


def test_the_caller_says_which_of_its_errors_are_timeouts(transport, seen):
    class CallerTimeout(Exception):
        pass

    with pytest.raises(CallerTimeout), OutgoingCall(transport, "call 'm' to t", 5.0,
                                                    timeouts=(CallerTimeout,)):
        raise CallerTimeout
    with pytest.raises(exc.MessagingTimeout), OutgoingCall(transport, "call 'm' to t", 5.0,
                                                           timeouts=(CallerTimeout,)):
        raise exc.MessagingTimeout("not one of the caller's", waited=0.0)
    timed_out, failed = seen
    assert isinstance(timed_out, ev.CallTimedOut) and timed_out.timeout == 5.0
    assert isinstance(failed, ev.CallCompleted) and not failed.ok


def test_wait_before_send_is_a_bug(transport):
    with OutgoingCall(transport, "call 'm' to t", 5.0) as call, \
            pytest.raises(RuntimeError, match="before send"):
        call.wait()

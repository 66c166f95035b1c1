"""An AttributeError means a lost connection only when py-amqp or kombu raised it.

py-amqp and kombu set a dropped connection's ``sock``, ``transport`` or
``connection`` to None, and the next operation on it fails with an
AttributeError from inside them: ensure() reconnects. The same error from the
library's own code, or from the function a caller passed to ensure(), is a
bug: it is raised at once, not retried until the deadline.
"""

from __future__ import annotations

import amqp.exceptions
import amqp.transport
import pytest
from kombu.transport import pyamqp as kombu_pyamqp

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import Deadline, State
from rabbit_ha_driver.connection import _errors as errors
from rabbit_ha_driver.connection._errors import Action, classify, raised_in_io_layer

from .conftest import make_connection


def py_amqp_on_a_dropped_socket() -> AttributeError:
    """What py-amqp raises when it reads a connection whose socket it dropped."""
    transport = amqp.transport.TCPTransport("localhost:5672")
    assert transport.sock is None  # as after transport.close()
    with pytest.raises(AttributeError) as info, transport.having_timeout(1.0):
        pass
    return info.value


def kombu_on_a_dropped_connection() -> AttributeError:
    """What kombu raises when it drains a connection that is gone."""
    with pytest.raises(AttributeError) as info:
        kombu_pyamqp.Transport.drain_events(None, None, timeout=1.0)  # type: ignore[arg-type]
    return info.value


class Endpoint:
    value = 1


def our_bug() -> AttributeError:
    with pytest.raises(AttributeError) as info:
        Endpoint().valeu  # noqa: B018  # a typo: a bug, not a lost connection
    return info.value


def our_none() -> AttributeError:
    """Reading an attribute of None outside the I/O layer is a bug too."""
    channel = None
    with pytest.raises(AttributeError) as info:
        channel.basic_publish  # type: ignore[attr-defined]  # noqa: B018
    return info.value


@pytest.mark.parametrize("make", [py_amqp_on_a_dropped_socket, kombu_on_a_dropped_connection])
def test_raised_inside_py_amqp_or_kombu_is_a_lost_connection(make):
    error = make()
    assert raised_in_io_layer(error)
    assert classify(error, "basic.publish") is Action.RECONNECT
    assert classify(error, "queue.declare", recovering=True) is Action.RECONNECT


@pytest.mark.parametrize("make", [our_bug, our_none])
def test_raised_by_other_code_is_raised(make):
    error = make()
    assert not raised_in_io_layer(error)
    assert classify(error, "basic.publish") is Action.RAISE


def test_an_error_never_raised_keeps_the_old_verdict():
    # No traceback: nothing says where it came from.
    assert classify(AttributeError("sendall"), "basic.publish") is Action.RECONNECT


def test_ensure_reconnects_after_py_amqp_fails_on_a_dropped_socket(broker, clock, recorder):
    conn = make_connection(broker, clock, recorder)
    conn.connect()
    calls = []

    def declare(channel):
        calls.append(channel)
        if len(calls) == 1:
            raise py_amqp_on_a_dropped_socket()
        return "ok"

    assert conn.ensure(declare, operation="queue.declare", deadline=Deadline.after(60, clock)) == "ok"
    assert len(calls) == 2 and len(broker.connects) == 2


def test_ensure_raises_a_bug_at_once_instead_of_reconnecting(broker, clock, recorder):
    conn = make_connection(broker, clock, recorder)
    conn.connect()
    calls = []

    def declare(channel):
        calls.append(channel)
        return channel.no_such_method_of_the_channel()

    # The bug reaches the caller as itself, at once: not as a lost connection.
    with pytest.raises(AttributeError, match="no_such_method_of_the_channel"):
        conn.ensure(declare, operation="queue.declare", deadline=Deadline.after(60, clock))
    assert len(calls) == 1 and len(broker.connects) == 1 and clock.sleeps == []
    assert conn.state is State.CONNECTED


def test_ensure_raises_bad_input_as_itself_and_keeps_the_connection(broker, clock, recorder):
    conn = make_connection(broker, clock, recorder)
    conn.connect()

    def declare(channel):
        return {}["a key the caller forgot"]

    with pytest.raises(KeyError):
        conn.ensure(declare, operation="queue.declare", deadline=Deadline.after(60, clock))
    assert conn.state is State.CONNECTED and len(broker.connects) == 1


def test_refusal_maps_io_layer_and_broker_errors_once_and_leaves_bugs_alone():
    broker_refusal = amqp.exceptions.AccessRefused("ACCESS_REFUSED - no", reply_code=403)
    mapped = errors.refusal(broker_refusal, "queue.declare", "h:1")
    assert isinstance(mapped, exc.IrrecoverableError) and mapped.reply_code == 403
    bug = TypeError("our own mistake")
    try:
        raise bug
    except TypeError as raised:
        assert errors.refusal(raised, "queue.declare", "h:1") is raised
    assert errors.refusal(ConnectionResetError(), "queue.declare", "h:1") is None

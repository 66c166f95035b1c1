"""Pure policies: the error table, backoff, deadlines, failover order."""

from __future__ import annotations

import random

import amqp.exceptions
import pytest

from rabbit_ha_driver.clock import FakeClock
from rabbit_ha_driver.connection._errors import Action, RequestTimeout, classify, lookup, translate
from rabbit_ha_driver.connection._hosts import HostRing
from rabbit_ha_driver.connection._retry import Backoff, Deadline
from rabbit_ha_driver.exceptions import AuthenticationError, ChannelDead, IrrecoverableError
from rabbit_ha_driver.settings import Host


@pytest.mark.parametrize(
    ("code", "operation", "recovering", "expected"),
    [
        (404, "queue.declare", True, Action.REOPEN_CHANNEL),   # home node down
        (404, "basic.consume", True, Action.REOPEN_CHANNEL),
        (405, "queue.declare", True, Action.REOPEN_CHANNEL),   # exclusive queue of a dead connection
        (405, "basic.consume", True, Action.REOPEN_CHANNEL),
        (405, "queue.declare", False, Action.RAISE),
        (404, "exchange.declare", False, Action.RAISE),
        (404, "exchange.declare", True, Action.REOPEN_CHANNEL),
        (403, "queue.declare", True, Action.RAISE),            # access refused
        (406, "queue.declare", True, Action.RAISE),            # inequivalent arguments
        (406, "queue.declare", False, Action.RAISE),
        (530, "queue.declare", True, Action.RAISE),            # not allowed
        (320, "basic.consume", False, Action.RECONNECT),       # connection forced
        (541, "basic.publish", False, Action.RECONNECT),       # internal error
        (406, "basic.ack", False, Action.REOPEN_CHANNEL),      # stale delivery tag
        (999, "queue.declare", False, Action.RECONNECT),       # unknown: reconnect
    ],
)
def test_error_table(code, operation, recovering, expected):
    assert lookup(code, operation, recovering) is expected


@pytest.mark.parametrize(
    "error",
    [TimeoutError(), ConnectionResetError(), BrokenPipeError(), OSError("x"), EOFError(),
     RequestTimeout("queue.declare", 3.0),
     amqp.exceptions.ConnectionForced("CONNECTION_FORCED - shutdown", reply_code=320),
     amqp.exceptions.RecoverableConnectionError("Socket closed")],
)
def test_transport_failures_reconnect(error):
    assert classify(error, "basic.publish") is Action.RECONNECT


def test_channel_error_from_table():
    err = amqp.exceptions.NotFound("NOT_FOUND - home node down", reply_code=404)
    assert classify(err, "queue.declare", recovering=True) is Action.REOPEN_CHANNEL
    err = amqp.exceptions.PreconditionFailed("PRECONDITION_FAILED - inequivalent arg", reply_code=406)
    assert classify(err, "queue.declare") is Action.RAISE
    assert isinstance(translate(err, "queue.declare", "h:1"), IrrecoverableError)


def test_login_refused_is_authentication_error():
    err = amqp.exceptions.AccessRefused("ACCESS_REFUSED - Login was refused", reply_code=403)
    assert classify(err, "connection.open") is Action.RAISE
    translated = translate(err, "connection.open", "h:1")
    assert isinstance(translated, AuthenticationError)
    assert translated.host == "h:1" and translated.reply_code == 403


def test_request_timeout_translates_to_dead_channel():
    assert isinstance(translate(RequestTimeout("queue.bind", 2), "queue.bind", "h:1"), ChannelDead)


def test_backoff_grows_by_step_and_caps_with_jitter():
    b = Backoff(interval=0.2, step=1.0, cap=3.0, jitter=0.2, random=lambda: 0.0)
    assert [b.delay(n) for n in range(0, 6)] == [0.0, 0.2, 1.2, 2.2, 3.0, 3.0]
    top = Backoff(interval=0.2, step=1.0, cap=3.0, jitter=0.2, random=lambda: 1.0)
    assert top.delay(10) == pytest.approx(3.6)


def test_deadline_is_absolute():
    clock = FakeClock()
    d = Deadline.after(5, clock)
    clock.advance(2)
    assert d.remaining() == pytest.approx(3)
    assert d.cap(10) == pytest.approx(3) and d.cap(1) == 1
    clock.advance(3)
    assert d.expired() and d.remaining() == 0
    assert Deadline.never(clock).remaining() == float("inf")
    assert Deadline.after(5, clock).sooner(1).remaining() == pytest.approx(1)


def test_host_ring_round_robin_passes():
    hosts = [Host("a"), Host("b"), Host("c")]
    ring = HostRing(hosts)
    assert ring.current.hostname == "a"
    assert ring.advance().hostname == "b"
    assert not ring.pass_complete()
    ring.advance()
    ring.advance()
    assert ring.pass_complete() and ring.current.hostname == "a"
    ring.reset_pass()
    assert not ring.pass_complete()


def test_host_ring_shuffle_keeps_every_host():
    hosts = [Host(str(i)) for i in range(8)]
    ring = HostRing(hosts, "shuffle", rng=random.Random(4))
    assert sorted(h.hostname for h in ring.hosts) == sorted(h.hostname for h in hosts)
    assert [h.hostname for h in ring.hosts] != [h.hostname for h in hosts]


def _ssl_error(reason: str) -> Exception:
    import ssl

    error = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    error.reason = reason
    error.library = "SSL"
    return error


@pytest.mark.parametrize("reason", ["TLSV1_ALERT_PROTOCOL_VERSION", "WRONG_VERSION_NUMBER",
                                    "TLSV13_ALERT_CERTIFICATE_REQUIRED"])
def test_a_tls_disagreement_is_raised_at_once(reason):
    assert classify(_ssl_error(reason), "connection.open", recovering=True) is Action.RAISE


def test_other_tls_failures_are_retried():
    assert classify(_ssl_error("UNEXPECTED_EOF_WHILE_READING"), "connection.open",
                    recovering=True) is Action.RECONNECT

"""A publish that waits out a blocked broker, and messages AMQP cannot encode.

On the scripted broker: a block must outlast the request deadline to matter,
so these wait a little real time (request_timeout 0.1 s, blocks of 0.2 s):
the py-amqp path times requests on the monotonic clock.
"""

from __future__ import annotations

import decimal
import threading
import time

import pytest

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import Deadline

BLOCK = 0.2  # longer than the request_timeout below


def publish_in_thread(conn, body, deadline):
    result: list[object] = []

    def publish():
        try:
            conn.publish(body, "", "q", deadline=deadline)
            result.append("ok")
        except Exception as error:  # the assertion shows it
            result.append(error)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    return thread, result


def blocked(amqp_server, amqp_connect, **settings):
    conn = amqp_connect(**settings)
    conn.declare_queue("q")
    amqp_server.block("low on memory")
    conn.drain_events(0.05)
    assert conn.state.value == "blocked"
    return conn


@pytest.mark.parametrize("size", [5, 4 << 20], ids=["small", "4MB"])
def test_a_publish_after_a_block_longer_than_the_request_deadline_keeps_the_connection(
        amqp_server, amqp_connect, size):
    conn = blocked(amqp_server, amqp_connect, request_timeout=0.1)
    thread, result = publish_in_thread(conn, b"x" * size, Deadline.after(5.0))
    time.sleep(BLOCK)
    amqp_server.unblock()
    for _ in range(5):  # frames keep arriving meanwhile (heartbeats)
        amqp_server.heartbeat()
    thread.join(5)
    assert result == ["ok"]
    assert len(amqp_server.connections) == 1, "the blocked, healthy connection was replaced"
    assert len(amqp_server.of("basic.publish")[-1].body) == size


def test_a_channel_closed_while_a_publish_without_deadline_waits_for_unblock(
        amqp_server, amqp_connect):
    conn = blocked(amqp_server, amqp_connect)
    thread, result = publish_in_thread(conn, b"small", Deadline.never())
    time.sleep(BLOCK / 2)
    amqp_server.close_channel()  # a consumer timeout, say: the connection stays
    time.sleep(BLOCK / 2)
    amqp_server.unblock()
    thread.join(5)
    assert result == ["ok"]
    assert len(amqp_server.connections) == 1, "the healthy connection was replaced"


@pytest.mark.parametrize("headers", [
    {"bad": object()},
    {"bad": {1, 2}},
    {"bad": decimal.Decimal("1e-300")},
    {"bad": 2 ** 70},
], ids=["object", "set", "decimal-exponent", "int-70-bits"])
def test_a_header_amqp_cannot_encode_is_invalid_at_once(amqp_server, amqp_connect, headers):
    conn = amqp_connect()
    conn.declare_queue("q")
    with pytest.raises(exc.InvalidMessage):
        conn.publish(b"b", "", "q", headers=headers, deadline=Deadline.after(0.5))
    assert len(amqp_server.connections) == 1, "reconnected over bad input"
    assert amqp_server.of("basic.publish") == []
    conn.publish(b"fine", "", "q")  # the connection serves on

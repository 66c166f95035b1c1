"""The backend seam: which link a transport gets, and what each link does."""

from __future__ import annotations

import kombu
import pytest
from kombu.transport import memory as kombu_memory
from kombu.transport import pyamqp as kombu_pyamqp

from rabbit_ha_driver.connection._backend import AMQPLink, MemoryLink, link_class, open_link
from rabbit_ha_driver.connection._transport import AMQPTransport, MemoryTransport
from rabbit_ha_driver.testing import FakeBroker, FakeLink, FakeTransport


@pytest.mark.parametrize(("transport", "link"), [
    (AMQPTransport, AMQPLink),
    (MemoryTransport, MemoryLink),
    (FakeTransport, FakeLink),
    (kombu_pyamqp.Transport, AMQPLink),    # names no link: judged by its kind
    (kombu_memory.Transport, MemoryLink),
])
def test_a_transport_gets_the_link_it_names_or_its_kind(transport, link):
    assert link_class(transport) is link


def test_what_each_link_says_its_transport_can_do():
    assert (AMQPLink.confirms, AMQPLink.notifies_cancel, AMQPLink.consumer_arguments,
            AMQPLink.counts_consumers, AMQPLink.heartbeats) == (True,) * 5
    assert (MemoryLink.confirms, MemoryLink.notifies_cancel, MemoryLink.counts_consumers,
            MemoryLink.heartbeats) == (False,) * 4
    assert (FakeLink.confirms, FakeLink.notifies_cancel, FakeLink.counts_consumers) == (
        False, True, True)


def test_a_memory_link_has_no_socket_no_deadlines_and_closes():
    link = open_link(kombu.Connection("memory://", transport=MemoryTransport))
    assert isinstance(link, MemoryLink) and link.socket() is None
    assert link.heartbeat == 0.0 and not link.frame_buffered()
    with link.request_deadline("queue.declare", 0.001):
        channel = link.channel()
    channel.queue_declare(queue="q")
    assert link.message_converter(channel) is None
    link.close()


def test_the_fake_brokers_link_counts_connects():
    broker = FakeBroker()
    link = open_link(kombu.Connection("memory://", transport=FakeTransport,
                                      transport_options={"fake_broker": broker}))
    assert isinstance(link, FakeLink) and broker.open_connections == 1
    link.discard()


def test_an_amqp_link_times_requests_and_reads_with_the_deadline_connection(amqp_server):
    link = open_link(kombu.Connection(amqp_server.url, transport=AMQPTransport,
                                      connect_timeout=1), frame_write_timeout=3.0)
    assert isinstance(link, AMQPLink)
    assert link.raw.frame_write_timeout == 3.0
    with link.request_deadline("queue.declare", 0.5):
        assert link.raw.request_operation == "queue.declare"
    assert link.raw.request_deadline is None
    with pytest.raises(TimeoutError):
        link.drain(0.01)  # nothing arrives
    assert not link.frame_buffered() and link.socket() is not None
    link.discard()
    assert amqp_server.of("connection.close") == []  # discarded: no goodbye


def test_an_amqp_link_over_plain_py_amqp_uses_its_own_timeouts(amqp_server):
    link = open_link(kombu.Connection(amqp_server.url, transport=kombu_pyamqp.Transport,
                                      connect_timeout=1))
    assert isinstance(link, AMQPLink) and not hasattr(link.raw, "drain_for")
    with link.request_deadline("queue.declare", 0.001):  # no deadline to apply
        link.channel().queue_declare(queue="q")
    assert not link.frame_buffered()
    with pytest.raises(TimeoutError):
        link.drain(0.01)
    link.discard()
    assert link.raw._transport is None  # collected, without a close on the wire
    assert amqp_server.of("connection.close") == []


def test_an_amqp_link_forgets_its_socket_after_fork_without_a_byte(amqp_server):
    link = open_link(kombu.Connection(amqp_server.url, transport=AMQPTransport,
                                      connect_timeout=1))
    transport = link.raw._transport
    link.forget_after_fork()
    assert transport.sock is None and link.socket() is None
    link.forget_after_fork()  # nothing left to forget
    assert amqp_server.of("connection.close") == []

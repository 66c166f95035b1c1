"""A connection lost to a fault is freed at once, not left to the cycle collector.

py-amqp's connection objects hold themselves in reference cycles (frame
reader and writer with their buffers, method callbacks, a fulfilled open
promise), and the library's bounded write ties the transport to the
connection. Left alone, every connection lost to a fault waits for Python's
cyclic garbage collector, which runs rarely for old objects: a service whose
connections are cut again and again grows. Here the collector is off while
the socket is cut several times, plain and over TLS, and no lost connection
may remain.
"""

from __future__ import annotations

import gc
import socket
from typing import Any

import pytest

import rabbit_ha_driver as rha
from rabbit_ha_driver.connection import Connection
from rabbit_ha_driver.connection._sockets import raw_socket
from rabbit_ha_driver.connection._transport import DeadlineConnection

CUTS = 5


def _live_connections() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, DeadlineConnection))


@pytest.mark.parametrize("scheme", ["amqp", "tls"])
def test_connections_lost_to_faults_are_freed_at_once(cluster: Any, tls: Any, scheme: str) -> None:
    nodes = cluster.nodes[:2]
    if scheme == "tls":
        hosts = ",".join(f"guest:guest@127.0.0.1:{n.tls_port}" for n in nodes)
        settings = rha.from_url(f"rabbit://{hosts}/", heartbeat_timeout_threshold=4, ssl=True,
                                ssl_ca_file=tls.ca_file)
    else:
        hosts = ",".join(f"guest:guest@127.0.0.1:{n.port}" for n in nodes)
        settings = rha.from_url(f"rabbit://{hosts}/", heartbeat_timeout_threshold=4)
    gc.collect()
    before = _live_connections()
    conn = Connection(settings, name=f"rha-test-memory-{scheme}")
    gc.disable()
    try:
        conn.connect()
        for _ in range(CUTS):
            lost = conn._raw
            socket.socket.shutdown(raw_socket(lost.transport.sock), socket.SHUT_RDWR)
            for _ in range(100):  # read the cut, reconnect (within 20 s)
                if conn._raw is not lost and conn._raw is not None:
                    break
                conn.drain_events(0.2)
            assert conn._raw is not lost, "no reconnect after the cut"
            del lost
        alive = _live_connections() - before
    finally:
        gc.enable()
        conn.close()
    assert alive == 1, f"{alive - 1} of {CUTS} lost connections still in memory"

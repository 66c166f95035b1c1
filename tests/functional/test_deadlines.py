"""No call returns later than its deadline plus 0.5 s, whatever the broker does.

* *frozen reply node*: the node holding the caller's connections is stopped
  (SIGSTOP: its kernel still accepts TCP, the broker answers nothing) for
  10 s while a caller makes ``call(timeout=1)`` one after the other; every
  call must end within 1.5 s, and calls succeed again at the latest soon
  after the node wakes up (the reply queue lives there).
* *a write the broker does not read*: a publish of a message larger than the
  socket buffers to a frozen node must give up at its deadline instead of
  blocking in ``sendall`` until the node wakes up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import rabbit_ha_driver as rha
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import Connection
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.rpc import RPCClient, RPCServer

from .helpers.faults import OWN_QUEUES_DURABLE
from .helpers.probes import rotate_url, unique

CALL_TIMEOUT = 1.0
FROZEN_FOR = 10.0


@contextlib.contextmanager
def frozen(cluster: Any, node: Any) -> Iterator[None]:
    """SIGSTOP the node's broker; SIGCONT on the way out, whatever happened."""
    pid = cluster.node(node).pid
    assert pid, f"{node} is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


class Echo:
    def echo(self, ctxt: dict[str, Any], n: int) -> int:
        return n


def _frozen_reply_node_round(cluster: Any) -> dict[str, float]:
    topic = unique("frozen")
    # The server lives on node 1 (and 2); the caller's connections on node 0.
    server = RPCServer(from_url(cluster.url(nodes=[cluster.nodes[1], cluster.nodes[2]]),
                                heartbeat_timeout_threshold=3),
                       topic, "frozen-server", [Echo()], start_timeout=10.0)
    server.start()
    client = RPCClient(from_url(rotate_url(cluster, 0), heartbeat_timeout_threshold=3,
                                connect_timeout=2), topic, timeout=CALL_TIMEOUT)
    durations: list[tuple[float, float, bool]] = []
    try:
        assert client.call({}, "echo", n=0) == 0
        stop = threading.Event()

        def caller() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                started = time.monotonic()
                try:
                    ok = client.call({}, "echo", n=n) == n
                except exc.RabbitHAError:
                    ok = False
                durations.append((started, time.monotonic() - started, ok))

        thread = threading.Thread(target=caller, daemon=True)
        with frozen(cluster, 0):
            froze_at = time.monotonic()
            thread.start()
            time.sleep(FROZEN_FOR)
        thawed_at = time.monotonic()
        time.sleep(2.0)
        stop.set()
        thread.join(CALL_TIMEOUT + 5)
        assert not thread.is_alive(), "a call never returned"
    finally:
        client.close()
        server.stop()
        server.wait(5.0)
    during = [d for d in durations if d[0] < thawed_at]
    first_ok = next((s for s, _, ok in durations if ok and s > froze_at), None)
    return {
        "calls": len(during),
        "worst": max(took for _, took, _ in during),
        "failed": sum(1 for *_, ok in during if not ok),
        "answering_again_after": (first_ok - froze_at) if first_ok is not None else float("inf"),
    }


def test_frozen_reply_node_never_overruns_a_call(cluster: Any) -> None:
    result = _frozen_reply_node_round(cluster)
    print(f"\nfrozen reply node: {result}")
    assert result["calls"] >= 5
    assert result["worst"] <= CALL_TIMEOUT + 0.5, result
    # The reply queue lives on node 0: the other nodes cannot declare it
    # until node 0 answers again (or they time it out), so calls answer
    # again once it is thawed.
    assert result["answering_again_after"] < FROZEN_FOR + 3.0, result


@pytest.mark.slow
def test_frozen_reply_node_figures(cluster: Any) -> None:
    """Five rounds of 10 s freezes; prints the worst call and when calls succeed again."""
    worst, again = [], []
    for _ in range(5):
        result = _frozen_reply_node_round(cluster)
        worst.append(result["worst"])
        again.append(result["answering_again_after"])
        print(f"\nround: {result}")
    print(f"\nworst call(timeout=1): max {max(worst):.3f}s; answering again after "
          f"min {min(again):.2f}s median {statistics.median(again):.2f}s max {max(again):.2f}s")
    assert max(worst) <= CALL_TIMEOUT + 0.5


def test_a_write_the_broker_does_not_read_gives_up_at_its_deadline(cluster: Any) -> None:
    node = cluster.nodes[0]
    conn = Connection(rha.from_url(f"rabbit://guest:guest@127.0.0.1:{node.port}/"
                                   "?heartbeat_timeout_threshold=30&connect_timeout=1"))
    try:
        conn.declare_queue("rha-big-write", durable=OWN_QUEUES_DURABLE)
        body = b"x" * (64 * 1024 * 1024)   # far more than the socket buffers hold
        with frozen(cluster, node):
            started = time.monotonic()
            with pytest.raises((exc.MessagingTimeout, exc.ConnectionLost)):
                conn.publish(body, "", "rha-big-write", deadline=rha.Deadline.after(2.0))
            took = time.monotonic() - started
        assert took < 2.5, f"the publish took {took:.2f}s against a 2 s deadline"
    finally:
        conn.close()


@pytest.mark.parametrize("scheme", ["amqp", "tls"])
def test_closing_a_connection_to_a_frozen_node_returns_within_its_bound(cluster: Any, tls: Any,
                                                                       scheme: str) -> None:
    """close() says goodbye within 2 s and then lets go: over TLS that means no
    TLS close handshake with a broker that will not answer it (py-amqp waits
    for the broker's close_notify when it unwraps the socket)."""
    node = cluster.nodes[0]
    if scheme == "tls":
        settings = from_url(f"rabbit://guest:guest@127.0.0.1:{node.tls_port}/",
                            heartbeat_timeout_threshold=30, ssl=True, ssl_ca_file=tls.ca_file)
    else:
        settings = from_url(f"rabbit://guest:guest@127.0.0.1:{node.port}/",
                            heartbeat_timeout_threshold=30)
    conn = Connection(settings, name=unique(f"close-frozen-{scheme}"))
    conn.connect()
    with frozen(cluster, node):
        started = time.monotonic()
        conn.close()
        took = time.monotonic() - started
    print(f"close() of a {scheme} connection to a frozen node took {took:.2f}s")
    assert took < 3.0, f"close() took {took:.2f}s"

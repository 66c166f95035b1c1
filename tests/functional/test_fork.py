"""A process forks after creating an RPC client and server on the real cluster.

The parent runs an RPC server and a client (a call and an asynchronous cast
made, so the publishing connection, the reply queue's connection and thread
and the confirm keeper all exist), then forks. In the child, right after the
fork, not one of the parent's broker sockets is open any more (closed without
sending anything on them). The child calls through the client it inherited
(the parent's server answers) at once, casts, and tells the parent; the
parent calls; the child closes its client and exits; the parent calls again.
Throughout, the parent's broker connections stay the same, the child's are
new ones of its own and are gone once it closed, and the broker's list of
connections agrees. Over plain AMQP and over TLS (where a ``close_notify``
from the child would end the parent's session).
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
import traceback
from typing import Any

import pytest

from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.rpc import RPCClient, RPCServer, RPCTransport

from .helpers.faults import broker_connections, wait_until
from .helpers.probes import unique

#: A call from the child must be answered within this.
ANSWER_WITHIN = 2.0
CHILD_DEADLINE = 60.0


class Echo:
    def echo(self, ctxt: Any, value: Any) -> Any:
        return value


def settings_for(cluster: Any, scheme: str, name: str) -> Any:
    node = cluster.nodes[0]
    if scheme == "tls":
        return from_url(f"amqps://guest:guest@localhost:{node.tls_port}/", ssl_ca_file=cluster.tls.ca_file,
                        heartbeat_timeout_threshold=4, connection_name=name)
    return from_url(node.url, heartbeat_timeout_threshold=4, connection_name=name)


def timed(fn: Any) -> tuple[Any, float]:
    began = time.monotonic()
    try:
        value = fn()
    except Exception as error:
        value = f"{type(error).__name__}: {error}"
    return value, time.monotonic() - began


def read_line(fd: int, pid: int, timeout: float = CHILD_DEADLINE) -> dict[str, Any]:
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"the child said nothing for {timeout}s (so far {data!r})")
        chunk = os.read(fd, 65536)
        if not chunk:
            pytest.fail(f"the child ended early (it wrote {data!r})")
        data += chunk
    line: dict[str, Any] = json.loads(data)
    assert "error" not in line, line["error"]
    return line


def write_line(fd: int, payload: dict[str, Any]) -> None:
    os.write(fd, json.dumps(payload).encode() + b"\n")


def child_part(client: RPCClient, ports: set[int], to_parent: int, from_parent: int) -> None:
    me = os.getpid()
    inherited = sorted(broker_connections(me, ports))
    answer, took = timed(lambda: client.call({}, "echo", value="from the child"))
    receipt = client.cast_async({}, "echo", value="cast from the child")
    cast_ok = receipt.result(10.0)
    own = sorted(broker_connections(me, ports))
    write_line(to_parent, {"inherited": inherited, "answer": answer, "took": took,
                           "cast": cast_ok, "own": own})
    os.read(from_parent, 1)  # the parent has called meanwhile
    client.transport.close()
    write_line(to_parent, {"after_close": sorted(broker_connections(me, ports))})


@pytest.mark.parametrize("scheme", ["amqp", "tls"])
def test_a_forked_child_uses_the_client_at_once_and_leaves_the_parent_alone(cluster, scheme):
    name = unique(f"fork-{scheme}")
    topic = unique("fork")
    settings = settings_for(cluster, scheme, name)
    ports = {n.port for n in cluster.nodes} | {n.tls_port for n in cluster.nodes}
    server = RPCServer(settings, topic, "s1", [Echo()], start_timeout=10.0)
    server.start()
    transport = RPCTransport(settings)
    client = RPCClient(transport, topic, timeout=10.0)
    try:
        assert client.call({}, "echo", value=1) == 1
        assert client.cast_async({}, "echo", value="cast").result(10.0)
        parent = os.getpid()
        parent_conns = broker_connections(parent, ports)
        assert len(parent_conns) >= 3, parent_conns  # server, publisher, reply queue
        broker_side = wait_until(lambda: [c for c in cluster.connections()
                                          if c.get("client_properties", {}).get("connection_name", "")
                                          .startswith(name)], 10, "the broker lists our connections")
        count_before = len(broker_side)

        to_parent_r, to_parent_w = os.pipe()
        from_parent_r, from_parent_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 0
            try:
                os.close(to_parent_r)
                os.close(from_parent_w)
                try:
                    child_part(client, ports, to_parent_w, from_parent_r)
                except BaseException:
                    write_line(to_parent_w, {"error": traceback.format_exc()})
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(to_parent_w)
        os.close(from_parent_r)
        try:
            first = read_line(to_parent_r, pid)
            # The child's own connections exist now: the parent calls meanwhile.
            during, during_took = timed(lambda: client.call({}, "echo", value=2))
            write_line(from_parent_w, {})
            second = read_line(to_parent_r, pid)
        finally:
            os.close(to_parent_r)
            os.close(from_parent_w)
            _, status = os.waitpid(pid, 0)
        assert status == 0

        assert first["inherited"] == [], "the child kept the parent's sockets open"
        assert first["answer"] == "from the child" and first["took"] < ANSWER_WITHIN, first
        assert first["cast"] is True
        child_conns = {tuple(c) for c in first["own"]}
        assert child_conns and not child_conns & parent_conns, (child_conns, parent_conns)
        assert during == 2 and during_took < ANSWER_WITHIN
        assert second["after_close"] == [], "the child's connections outlived its close()"

        # The parent: the same connections, still serving.
        assert broker_connections(parent, ports) == parent_conns
        after, after_took = timed(lambda: client.call({}, "echo", value=3))
        assert after == 3 and after_took < ANSWER_WITHIN
        assert broker_connections(parent, ports) == parent_conns

        def broker_count() -> int | None:
            listed = [c for c in cluster.connections()
                      if c.get("client_properties", {}).get("connection_name", "").startswith(name)]
            return len(listed) if len(listed) == count_before else None

        assert wait_until(broker_count, 10, "the broker lists the parent's connections only") == count_before
    finally:
        transport.close()
        server.stop()
        server.wait(5.0)

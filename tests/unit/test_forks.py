"""A process that forks after creating clients, servers and connections (memory://).

Each test forks with ``os.fork()``; the child does its part, writes a JSON
result to a pipe and leaves with ``os._exit`` (never through pytest). The
child is watched with a deadline: a child that hangs is killed and fails the
test. Broker state on memory:// is per process (the child has a copy), so a
child that calls also runs a server of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import forks
from rabbit_ha_driver.clock import FakeClock
from rabbit_ha_driver.connection import Connection, Deadline, State
from rabbit_ha_driver.metrics import Metrics
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.rpc import RPCClient, RPCServer, RPCTransport

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

#: Seconds a child may take before it is killed and the test fails.
CHILD_DEADLINE = 20.0


def in_child(body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Fork; run ``body`` in the child; return what it returned (or raise)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(r)
            try:
                result = body()
            except BaseException:
                result = {"error": traceback.format_exc()}
            os.write(w, json.dumps(result).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    deadline = time.monotonic() + CHILD_DEADLINE
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"the child hung for {CHILD_DEADLINE}s; it wrote {data!r}")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(data or b'{"error": "the child wrote nothing"}')
    assert "error" not in result, result["error"]
    return result


class Echo:
    def __init__(self) -> None:
        self.release = threading.Event()

    def echo(self, ctxt: Any, value: Any) -> Any:
        return value

    def held(self, ctxt: Any) -> str:
        self.release.wait(10)
        return "released"


@pytest.fixture
def settings():
    return from_url("memory://", kombu_reconnect_delay=0.0)


@pytest.fixture
def topic():
    return f"fork-{uuid.uuid4().hex[:8]}"


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    began = time.monotonic()
    try:
        value = fn()
    except Exception as error:
        value = f"{type(error).__name__}: {error}"
    return value, time.monotonic() - began


def test_a_client_whose_reply_queue_was_being_read_calls_at_once_in_the_child(settings, topic):
    """A thread of the parent was reading replies when the process forked:
    the child's calls must not wait for that reader, which does not exist there.
    The child's server was made before the fork too, and starts in the child."""
    endpoint = Echo()
    server = RPCServer(settings, topic, "parent", [endpoint], start_timeout=5.0)
    server.start()
    # Made before the fork, started in the child (memory:// brokers are per process).
    child_server = RPCServer(settings, topic, "child", [Echo()], start_timeout=5.0)
    transport = RPCTransport(settings)
    client = RPCClient(transport, topic, timeout=10.0)
    try:
        assert client.call({}, "echo", value=1) == 1
        waiting: list[Any] = []
        caller = threading.Thread(target=lambda: waiting.append(client.call({}, "held")))
        caller.start()
        # Fork while that caller is the one reading the reply queue.
        for _ in range(5000):
            if transport.waiters._draining:
                break
            time.sleep(0.001)
        assert transport.waiters._draining

        def child() -> dict[str, Any]:
            child_server.start()
            answer, took = timed(lambda: RPCClient(transport, topic, timeout=3.0).call(
                {}, "echo", value=2))
            transport.close()
            child_server.stop()
            return {"answer": answer, "took": took}

        result = in_child(child)
        assert result["answer"] == 2 and result["took"] < 2.0, result
        endpoint.release.set()
        caller.join(10)
        assert waiting == ["released"]
        assert client.call({}, "echo", value=3) == 3  # the parent is untouched
    finally:
        endpoint.release.set()
        transport.close()
        server.stop()


def test_locks_a_parent_thread_held_at_the_fork_are_free_in_the_child(settings, topic):
    """A thread of the parent held the publisher's and the reply waiters'
    locks at the moment of the fork; in the child nobody ever releases them."""
    server = RPCServer(settings, topic, "parent", [Echo()], start_timeout=5.0)
    server.start()
    transport = RPCTransport(settings)
    client = RPCClient(transport, topic, timeout=10.0)
    holding, release = threading.Event(), threading.Event()
    locks = [transport.publisher._lock, transport.publisher._outstanding_lock,
             transport.waiters._cond, transport._lock]

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        holding.set()
        release.wait(10)
        for lock in reversed(locks):
            lock.release()

    try:
        assert client.call({}, "echo", value=1) == 1
        holder = threading.Thread(target=hold)
        holder.start()
        assert holding.wait(5)

        def child() -> dict[str, Any]:
            own = RPCServer(settings, topic, "child", [Echo()], start_timeout=5.0)
            own.start()
            answer, took = timed(lambda: client.call({}, "echo", value=2))
            cast, _ = timed(lambda: client.cast({}, "echo", value=3))
            transport.close()
            own.stop()
            return {"answer": answer, "took": took, "cast": cast}

        result = in_child(child)
        release.set()
        holder.join(5)
        assert result["answer"] == 2 and result["took"] < 2.0, result
        assert result["cast"] is None, result
        assert client.call({}, "echo", value=4) == 4
    finally:
        release.set()
        transport.close()
        server.stop()


def test_a_connection_created_before_the_fork_works_in_the_child(settings):
    conn = Connection(settings, name="forked")
    queue = f"q-{uuid.uuid4().hex[:8]}"
    got: list[bytes] = []
    conn.declare_queue(queue)
    conn.consume(queue, lambda message: got.append(message.body))
    conn.publish(b"before", "", queue)
    while not got:
        conn.drain_events(0.1)
    assert conn.state is State.CONNECTED

    def child() -> dict[str, Any]:
        conn.publish(b"in the child", "", queue, deadline=Deadline.after(5.0))
        deadline = time.monotonic() + 5.0
        while b"in the child" not in got and time.monotonic() < deadline:
            conn.drain_events(0.1)
        state = conn.state.value
        conn.close()
        return {"got": [b.decode() for b in got], "state": state}

    try:
        result = in_child(child)
        assert result == {"got": ["before", "in the child"], "state": "connected"}
        conn.publish(b"after", "", queue)
        while len(got) < 2:
            conn.drain_events(0.1)
        assert got == [b"before", b"after"]  # the child's message stayed in the child
        assert conn.state is State.CONNECTED
    finally:
        conn.close()


def test_the_registry_holds_objects_weakly_and_resets_them_in_the_child():
    class Holder:
        def __init__(self) -> None:
            self.resets = 0
            forks.at_fork_in_child(self.reset)

        def reset(self) -> None:
            self.resets += 1

    kept, dropped = Holder(), Holder()
    before = forks.registered()
    del dropped
    assert forks.registered() == before - 1

    def child() -> dict[str, Any]:
        return {"resets": kept.resets}

    assert in_child(child) == {"resets": 1}
    assert kept.resets == 0  # the parent is not reset


def test_the_reply_waiters_duplicate_filters_are_free_in_the_child(settings, topic):
    """Contract: a child forked while a parent thread was inside the reply
    waiters (a reader delivering a reply holds the ``_unique_id`` filter's
    lock, a finishing call the finished-calls filter's) calls at once.

    The filters are :class:`~rabbit_ha_driver.rpc.recent.Recent` maps whose
    lock is not reset at the fork: the child's first reply delivery waits
    for ever on a lock nobody will release, inside the waiters' condition,
    so the call never returns, not even at its timeout."""
    server = RPCServer(settings, topic, "parent", [Echo()], start_timeout=5.0)
    server.start()
    transport = RPCTransport(settings)
    client = RPCClient(transport, topic, timeout=10.0)
    holding, release = threading.Event(), threading.Event()
    locks = [transport.waiters._seen._lock, transport.waiters._finished._lock]

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        holding.set()
        release.wait(30)
        for lock in reversed(locks):
            lock.release()

    try:
        assert client.call({}, "echo", value=1) == 1
        holder = threading.Thread(target=hold)
        holder.start()
        assert holding.wait(5)

        def child() -> dict[str, Any]:
            own = RPCServer(settings, topic, "child", [Echo()], start_timeout=5.0)
            own.start()
            answer, took = timed(lambda: RPCClient(transport, topic, timeout=3.0).call(
                {}, "echo", value=2))
            transport.close()
            own.stop()
            return {"answer": answer, "took": took}

        result = in_child(child)
        release.set()
        holder.join(5)
        assert result["answer"] == 2 and result["took"] < 2.0, result
    finally:
        release.set()
        transport.close()
        server.stop()


def _socket_fds_bound_to(port: int) -> list[int]:
    """This process's descriptors of TCP sockets whose local port is ``port``."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            probe = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue  # not a socket (or already gone)
        try:
            if probe.family in (socket.AF_INET, socket.AF_INET6) and \
                    probe.getsockname()[1] == port:
                found.append(fd)
        except OSError:
            pass
        finally:
            probe.close()
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_connection_being_opened_in_another_thread_leaves_no_socket_in_the_child():
    """A thread was opening a connection (its socket made, the broker's
    handshake not yet answered) when the process forked: the child must not
    keep that socket, which the parent's thread goes on using."""
    # A "broker" on loopback that accepts and never answers: the opening
    # thread stays in the handshake for as long as the test needs.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    settings = from_url(f"amqp://u:p@127.0.0.1:{port}/", connect_timeout=15.0,
                        kombu_reconnect_delay=0.0, heartbeat_timeout_threshold=0)
    # The fake clock ends the opener's retries at once once the "broker" is
    # gone; the handshake itself waits on the socket, bounded by connect_timeout.
    clock = FakeClock()
    conn = Connection(settings, name="opening", clock=clock)
    outcome: list[Any] = []
    opener = threading.Thread(
        target=lambda: outcome.append(timed(lambda: conn.connect(Deadline.after(15.0, clock)))),
        daemon=True)
    opener.start()
    accepted = None
    try:
        listener.settimeout(10)
        accepted, peer = listener.accept()  # the opening thread's socket exists now
        client_port = peer[1]
        accepted.settimeout(10)
        assert accepted.recv(8, socket.MSG_WAITALL).startswith(b"AMQP")  # the handshake began
        assert _socket_fds_bound_to(client_port), "the test cannot find the opening socket"

        def child() -> dict[str, Any]:
            return {"left_open": _socket_fds_bound_to(client_port)}

        assert in_child(child) == {"left_open": []}
        # The parent's socket is untouched: the broker sees it open, and no
        # byte from the child (a close frame) on it.
        accepted.setblocking(False)
        with pytest.raises(BlockingIOError):
            accepted.recv(1)
    finally:
        listener.close()
        if accepted is not None:
            accepted.close()  # the handshake fails; retries are refused
        opener.join(20)
        assert not opener.is_alive()
        conn.close()


@contextlib.contextmanager
def held_by_another_thread(lock: Any) -> Iterator[None]:
    """``lock`` held by another thread of this process for the block's length."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert holding.wait(5)
    try:
        yield
    finally:
        release.set()
        holder.join(5)


def test_metrics_whose_lock_a_parent_thread_held_at_the_fork_count_in_the_child():
    """Another thread of the parent was counting an event (holding the
    metrics' lock) when the process forked: the child's first event and
    snapshot must not wait for that thread, which does not exist there."""
    metrics = Metrics()
    metrics(ev.Connected("c1", "h1:5672", 40001, 20.0))

    def child() -> dict[str, Any]:
        done: list[Any] = []

        def use() -> None:
            metrics(ev.ConnectFailed("c1", "h1:5672", "refused"))
            done.append(metrics.snapshot()["connections"]["c1"]["connect_failures"])

        worker = threading.Thread(target=use, daemon=True)
        worker.start()
        worker.join(5)  # a guard: the metrics' lock is free, or never
        return {"deadlocked": worker.is_alive(), "connect_failures": done}

    with held_by_another_thread(metrics._lock):
        assert in_child(child) == {"deadlocked": False, "connect_failures": [1]}
    assert metrics.snapshot()["connections"]["c1"]["connect_failures"] == 0  # the parent's own


def test_an_event_bus_whose_lock_a_parent_thread_held_at_the_fork_subscribes_in_the_child():
    """Another thread was subscribing to a bus (holding its lock) when the
    process forked: the child's first subscription must not wait for it."""
    bus = ev.EventBus()

    def child() -> dict[str, Any]:
        recorder = ev.Recorder()

        def use() -> None:
            bus.subscribe(recorder)
            bus.emit(ev.ConnectFailed("c1", "h1:5672", "refused"))

        worker = threading.Thread(target=use, daemon=True)
        worker.start()
        worker.join(5)  # a guard: the bus's lock is free, or never
        return {"deadlocked": worker.is_alive(), "events": len(recorder.events)}

    with held_by_another_thread(bus._lock):
        assert in_child(child) == {"deadlocked": False, "events": 1}


def test_a_server_started_before_the_fork_is_the_parents_and_stops_at_once_in_the_child(
        settings, topic):
    """The child has none of the server's threads: stop() and wait() there
    return at once without touching the parent's connections, start() says
    whose server it is, and the parent's server goes on answering."""
    server = RPCServer(settings, topic, "s1", [Echo()])
    server.start()
    transport = RPCTransport(settings)
    client = RPCClient(transport, topic, timeout=5)
    try:
        assert client.call({}, "echo", value=1) == 1

        def child() -> dict[str, Any]:
            stopped, stop_s = timed(lambda: (server.stop(), server.wait(2))[1])
            started, _ = timed(server.start)
            return {"stopped": stopped, "stop_s": stop_s, "started": started,
                    "state": server._life.state.value}

        result = in_child(child)
        assert result["stopped"] is True
        assert result["stop_s"] < 1.0, result  # not the stop timeout waiting for a loop
        assert result["state"] == "stopped"
        assert "started by the parent process" in result["started"]
        assert client.call({}, "echo", value=2) == 2
    finally:
        server.stop()
        server.wait(2)
        transport.close()

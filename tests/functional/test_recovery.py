"""Recovery of the HA connection under real faults on the three-node cluster.

Each scenario is a function that returns the figure it measures. The CI tests
run each once and assert with a margin for a noisy machine; the ``slow`` tests
(``tox -e figures``) repeat each five times and assert the tight bound.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import pytest

from rabbit_ha_driver import events as ev
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import Connection, Deadline
from rabbit_ha_driver.options import from_url

from .helpers.faults import OWN_QUEUES_DURABLE
from .helpers.probes import ConsumerUnderTest, Probe, closing, report, rotate_url, unique, wait_for
from .helpers.swallow_proxy import SwallowProxy

REPEAT = 5


# -- scenario 1: SIGKILL of the consumer's node -------------------------------------

def kill_consumer_node(cluster: Any, quorum: bool) -> float:
    """Seconds from SIGKILL of the consumer's node to a probe consumed on another node."""
    queue = unique("kill-quorum" if quorum else "kill-classic")
    args = {"x-queue-type": "quorum"} if quorum else None
    consumer = ConsumerUnderTest(rotate_url(cluster, 0), queue, queue_args=args, durable=quorum)
    probe = Probe(rotate_url(cluster, 2), queue)
    with closing(probe, consumer):
        assert wait_for(lambda: consumer.first_after(0.0), 10), "no probe consumed before the fault"
        assert consumer.conn.host.port == cluster.nodes[0].port
        killed_at = time.monotonic()
        cluster.kill(0)
        resumed = wait_for(lambda: consumer.first_after(killed_at + 0.001), 30)
        assert resumed, f"not consuming again 30 s after the kill; events: {consumer.recorder.events[-8:]}"
        assert consumer.conn.host.port != cluster.nodes[0].port
        return float(resumed - killed_at)


@pytest.mark.parametrize("quorum", [False, True], ids=["classic", "quorum"])
def test_kill_consumer_node_consumes_again_on_another_node(cluster, quorum):
    took = kill_consumer_node(cluster, quorum)
    print(f"consuming again {took:.3f}s after SIGKILL ({'quorum' if quorum else 'classic'})")
    assert took < 5.0


@pytest.mark.slow
@pytest.mark.parametrize("quorum", [False, True], ids=["classic", "quorum"])
def test_figures_kill_consumer_node(cluster, quorum):
    figures = []
    for _ in range(REPEAT):
        cluster.ensure_healthy()
        figures.append(kill_consumer_node(cluster, quorum))
    report(f"SIGKILL consumer node, {'quorum' if quorum else 'non-durable classic'} queue", figures, 1.0)
    assert max(figures) <= 1.0


# -- scenario 2: queue deleted under a consumer -------------------------------------

def delete_consumed_queue(cluster: Any, delay: float) -> tuple[float, bool]:
    """Seconds from the deletion to consuming again, and whether on the same TCP connection."""
    queue = unique("ccn")
    consumer = ConsumerUnderTest(rotate_url(cluster, 0), queue, kombu_reconnect_delay=delay)
    probe = Probe(rotate_url(cluster, 1), queue)
    with closing(probe, consumer):
        assert wait_for(lambda: consumer.first_after(0.0), 10)
        port_before = consumer.conn.local_port
        deleted_at = time.monotonic()
        cluster.delete_queue(queue)
        resumed = wait_for(lambda: consumer.first_after(deleted_at + 0.001), delay + 10)
        assert resumed, f"not consuming again; events: {consumer.recorder.events[-8:]}"
        restored = consumer.recorder.of(ev.ConsumerRestored)
        assert restored and restored[-1].same_connection
        return float(resumed - deleted_at), consumer.conn.local_port == port_before


def test_queue_deleted_consumes_again_after_delay_on_same_connection(cluster):
    took, same = delete_consumed_queue(cluster, 1.0)
    print(f"consuming again {took:.3f}s after the deletion (delay 1.0s), same connection: {same}")
    assert same
    assert 1.0 <= took <= 2.0


@pytest.mark.slow
def test_figures_queue_deleted(cluster):
    figures = []
    for _ in range(REPEAT):
        took, same = delete_consumed_queue(cluster, 1.0)
        assert same
        figures.append(took)
    report("queue deleted under consumer (classic, delay 1.0 s)", figures, 1.3)
    assert all(1.0 <= f <= 1.3 for f in figures)


# -- scenario 3: mirrored queue master killed ------------------------------------------

def kill_mirrored_master(cluster: Any) -> tuple[float, bool]:
    """Classic mirrored queue, consumer on a non-master node, master killed."""
    queue = unique("mirrored")
    policy = {"ha-mode": "all", "ha-sync-mode": "automatic"}
    cluster.set_policy("rha-ha-all", "^rha-func\\.mirrored\\.", policy)
    # Declared through node 0: its master lives there.
    declarer = Connection(from_url(rotate_url(cluster, 0)), name="func-declarer")
    with closing(declarer):
        declarer.declare_queue(queue)
    consumer = ConsumerUnderTest(rotate_url(cluster, 1), queue, enable_cancel_on_failover=True,
                                 kombu_reconnect_delay=1.0)
    probe = Probe(rotate_url(cluster, 2), queue)
    with closing(probe, consumer):
        assert wait_for(lambda: consumer.first_after(0.0), 10)
        info = wait_for(lambda: (cluster.queue_info(queue) or {}).get("node"), 10)
        assert info == cluster.nodes[0].name, f"master is on {info}"
        port_before = consumer.conn.local_port
        connects_before = len(consumer.recorder.of(ev.Connected))
        killed_at = time.monotonic()
        cluster.kill(0)
        resumed = wait_for(lambda: consumer.first_after(killed_at + 0.5), 20)
        assert resumed, f"not consuming again; events: {consumer.recorder.events[-8:]}"
        assert consumer.recorder.of(ev.ConsumerCancelled), "no consumer cancel notification"
        no_reconnect = (len(consumer.recorder.of(ev.Connected)) == connects_before
                        and consumer.conn.local_port == port_before)
        return float(resumed - killed_at), no_reconnect


def test_mirrored_master_killed_consumes_again_after_ccn_without_reconnect(cluster):
    took, no_reconnect = kill_mirrored_master(cluster)
    print(f"mirrored queue: consuming again {took:.3f}s after the master died, no reconnect: {no_reconnect}")
    assert no_reconnect
    assert took <= 6.0


@pytest.mark.slow
def test_figures_mirrored_master_killed(cluster):
    figures = []
    for _ in range(REPEAT):
        cluster.ensure_healthy()
        took, no_reconnect = kill_mirrored_master(cluster)
        assert no_reconnect
        figures.append(took)
    report("classic mirrored queue (ha-mode all), master killed", figures, 2.0)


# -- scenario 4: irrecoverable errors are typed and immediate --------------------------

def wrong_password(cluster: Any) -> tuple[float, BaseException]:
    url = rotate_url(cluster, 0).replace("guest:guest@", "guest:wrong@")
    conn = Connection(from_url(url), name="func-badpass")
    started = time.monotonic()
    with pytest.raises(exc.AuthenticationError) as err:
        conn.connect(Deadline.after(30))
    return time.monotonic() - started, err.value


def inequivalent_arguments(cluster: Any) -> tuple[float, exc.IrrecoverableError]:
    queue = unique("ineq")
    conn = Connection(from_url(rotate_url(cluster, 0)), name="func-ineq")
    with closing(conn):
        conn.declare_queue(queue, durable=OWN_QUEUES_DURABLE, arguments={"x-max-length": 10})
        started = time.monotonic()
        with pytest.raises(exc.IrrecoverableError) as err:
            conn.declare_queue(queue, durable=OWN_QUEUES_DURABLE, arguments={"x-max-length": 20},
                               deadline=Deadline.after(30))
        return time.monotonic() - started, err.value


def test_wrong_password_is_a_typed_error_within_a_second(cluster):
    took, error = wrong_password(cluster)
    print(f"wrong password: {type(error).__name__} after {took:.3f}s: {error}")
    assert took < 1.0
    assert "wrong" not in str(error)


def test_inequivalent_arguments_are_a_typed_error_within_a_second(cluster):
    took, error = inequivalent_arguments(cluster)
    print(f"inequivalent arguments: reply code {error.reply_code} after {took:.3f}s")
    assert error.reply_code == 406
    assert took < 1.0


@pytest.mark.slow
def test_figures_typed_errors(cluster):
    auth = [wrong_password(cluster)[0] for _ in range(REPEAT)]
    report("wrong password -> AuthenticationError", auth, 1.0)
    ineq = [inequivalent_arguments(cluster)[0] for _ in range(REPEAT)]
    report("inequivalent queue arguments -> IrrecoverableError 406", ineq, 1.0)
    assert max(auth + ineq) < 1.0


# -- scenario 5: a request that never gets its reply -----------------------------------

def request_never_answered(cluster: Any) -> tuple[float, float]:
    """A broker that keeps sending heartbeats but never answers a declare.

    The first host is a proxy in front of node 0 that, once told to, drops
    every frame towards the client except heartbeats (T = 3 s, so heartbeats
    arrive every 1.5 s and would restart a per-read timeout). Returns the time
    until the request deadline fired and until the declare succeeded on the
    next host.
    """
    proxy = SwallowProxy(cluster.nodes[0].port)
    others = ",".join(f"guest:guest@127.0.0.1:{n.port}" for n in cluster.nodes[1:])
    url = f"rabbit://guest:guest@127.0.0.1:{proxy.port},{others}/"
    conn = Connection(from_url(url, heartbeat_timeout_threshold=3, request_timeout=4.0), name="func-swallow")
    recorder = ev.Recorder()
    conn.events.subscribe(recorder)
    with closing(conn, proxy):
        conn.connect()
        assert conn.host.port == proxy.port
        proxy.swallow()
        started = time.monotonic()
        conn.declare_queue(unique("swallowed"), durable=OWN_QUEUES_DURABLE, deadline=Deadline.after(20))
        recovered = time.monotonic() - started
        missed = recorder.of(ev.RequestDeadlineMissed)
        assert missed and missed[0].operation == "queue.declare", recorder.events
        fired = next(e for e in recorder.events if isinstance(e, ev.ConnectionLost))
        assert conn.host.port == cluster.nodes[1].port
        assert proxy.dropped_frames >= 1
        del fired
        return missed[0].timeout, recovered


def test_request_without_reply_misses_its_deadline_and_recovers(cluster):
    budget, recovered = request_never_answered(cluster)
    print(f"declare unanswered: deadline {budget:g}s fired despite heartbeats; declared on the next "
          f"node {recovered:.3f}s after the request")
    assert 4.0 <= recovered <= 8.0


@pytest.mark.slow
def test_figures_request_without_reply(cluster):
    figures = [request_never_answered(cluster)[1] for _ in range(REPEAT)]
    report("declare swallowed (heartbeats still flowing), request_timeout 4s: declared on the next node",
           figures, 4.5)
    assert all(4.0 <= f <= 4.5 for f in figures)


# -- scenario 6: TLS ------------------------------------------------------------------

def tls_url(cluster: Any, host: str = "localhost") -> str:
    node = cluster.nodes[0]
    return f"amqps://guest:guest@{host}:{node.tls_port}/"


def test_tls_with_the_harness_ca_verifies_the_hostname(cluster):
    conn = Connection(from_url(tls_url(cluster), ssl_ca_file=cluster.tls.ca_file), name="func-tls")
    with closing(conn):
        conn.connect(Deadline.after(10))
        sock = conn._socket()
        assert sock.getpeercert()["subject"]
        assert conn.declare_queue(unique("tls"), durable=OWN_QUEUES_DURABLE)


def test_tls_with_a_wrong_ca_is_a_clear_error(cluster):
    conn = Connection(from_url(tls_url(cluster), ssl_ca_file=cluster.tls.wrong_ca_file), name="func-tls-bad")
    started = time.monotonic()
    with pytest.raises(exc.TLSError) as err:
        conn.connect(Deadline.after(10))
    print(f"wrong CA: {err.value}")
    assert time.monotonic() - started < 2.0
    assert "certificate verify failed" in str(err.value)


def test_tls_hostname_mismatch_is_refused(cluster):
    # The certificate names localhost and 127.0.0.1; the machine's own host
    # name reaches the same listener on loopback but is not in it.
    name = socket.gethostname()
    assert socket.gethostbyname(name) == "127.0.0.1", f"host name {name} must resolve to 127.0.0.1 here"
    assert name != "localhost"
    conn = Connection(from_url(tls_url(cluster, name), ssl_ca_file=cluster.tls.ca_file), name="func-tls-name")
    with pytest.raises(exc.TLSError) as err:
        conn.connect(Deadline.after(10))
    assert "hostname" in str(err.value).lower() or "match" in str(err.value).lower()


# -- scenario 7: fork ---------------------------------------------------------------

def test_fork_after_connecting_parent_and_child_keep_working(cluster):
    queue = unique("fork")
    conn = Connection(from_url(rotate_url(cluster, 0)), name="func-fork")
    got: list[bytes] = []
    with closing(conn):
        conn.declare_queue(queue, durable=OWN_QUEUES_DURABLE)
        conn.consume(queue, lambda m: (got.append(m.body), conn.ack(m)))
        port = conn.local_port
        pid = os.fork()
        if pid == 0:  # child: same object, must open its own connection
            code = 1
            try:
                conn.publish(b"from-child", "", queue, deadline=Deadline.after(10))
                code = 0 if conn.local_port != port else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        conn.publish(b"from-parent", "", queue, deadline=Deadline.after(10))
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            conn.drain_events(0.2)
        assert sorted(got) == [b"from-child", b"from-parent"]
        assert conn.local_port == port


# -- connection name -----------------------------------------------------------------

def test_connection_name_shows_in_the_broker(cluster):
    conn = Connection(from_url(rotate_url(cluster, 0)), name="svc-under-test:42")
    with closing(conn):
        conn.connect()
        names = wait_for(lambda: [c.get("client_properties", {}).get("connection_name")
                                  for c in cluster.connections()
                                  if c.get("client_properties", {}).get("connection_name")
                                  == "svc-under-test:42"], 10, interval=0.2)
        assert names == ["svc-under-test:42"]


# -- blocked connections -------------------------------------------------------------

def test_blocked_connection_waits_and_is_not_torn_down(cluster):
    """A memory alarm blocks publishers: the publish waits, the connection stays."""
    queue = unique("blocked")
    conn = Connection(from_url(rotate_url(cluster, 0), request_timeout=1.0, heartbeat_timeout_threshold=3),
                      name="func-blocked")
    recorder = ev.Recorder()
    conn.events.subscribe(recorder)
    done: list[float] = []
    with closing(conn):
        conn.declare_queue(queue, durable=OWN_QUEUES_DURABLE)
        conn.publish(b"before", "", queue)
        port = conn.local_port
        cluster.rabbitmqctl(0, "set_vm_memory_high_watermark", "0.000001")
        try:
            started = time.monotonic()
            worker = threading.Thread(target=lambda: (
                conn.publish(b"during", "", queue, deadline=Deadline.after(60)),
                done.append(time.monotonic())), daemon=True)
            worker.start()
            assert wait_for(lambda: recorder.of(ev.Blocked), 15), "no connection.blocked from the broker"
            time.sleep(3.5)  # several request timeouts: a blocked broker is not a dead one
            assert not done, "publish completed while the broker was blocking"
            assert conn.state.value == "blocked"
        finally:
            cluster.rabbitmqctl(0, "set_vm_memory_high_watermark", "0.4")
        worker.join(30)
        assert done, "publish did not complete after the alarm cleared"
        print(f"blocked publish completed {done[0] - started:.3f}s after it started, once unblocked")
        assert recorder.of(ev.Unblocked)
        assert not recorder.of(ev.ConnectionLost), recorder.events
        assert conn.local_port == port

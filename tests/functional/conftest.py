"""Fixtures for functional tests against a real three-node RabbitMQ cluster.

The session starts a fresh cluster on loopback (``tools/rabbit_cluster.py``;
installing RabbitMQ, iptables and openssl with apt-get first when root and
they are missing) and stops it at the end, also after a failure, Ctrl-C,
SIGTERM or SIGHUP. Nothing is skipped: if the broker cannot be installed or
started, every test using it errors with the reason. Needs root (iptables).

``RHA_TEST_RABBITMQ=4`` runs the session against RabbitMQ 4.0 (Debian
trixie's, from a cached chroot; see docs/testing.rst) with the deprecated
features ``transient_nonexcl_queues`` and ``global_qos`` denied. The library's
defaults are then ``rabbit_quorum_queue = true`` and
``rabbit_transient_quorum_queue = true`` (``faults.library_defaults()``, set with
oslo.config's ``set_defaults``), the configuration the docs advise for such a
broker; ``RHA_TEST_STREAM_FANOUT=1`` adds ``rabbit_stream_fanout = true``.
Tests that need a 3.10-only feature are skipped there, each named with its
reason in ``SKIPPED_ON_RABBITMQ_4``; every other test runs on both.

With ``RHA_TEST_REUSE_CLUSTER=1`` a healthy cluster started earlier by
``python tools/rabbit_cluster.py start`` is used and left running. A lock on
the data directory keeps two runs from sharing one cluster: a second run
errors at once naming the holder (``RHA_TEST_LOCK_TIMEOUT=SECONDS`` makes it
wait instead). Other settings: ``RHA_TEST_BASE_PORT`` (27672),
``RHA_TEST_NODE_PREFIX`` (rhatest), ``RHA_TEST_DATA_DIR``
(/tmp/rha-test-cluster).

Fixtures
--------
``cluster`` (session) -- a ``rabbit_cluster.Cluster``:

- ``nodes``: three ``Node`` objects with ``name`` ("rhatest1@localhost"),
  ``host`` ("127.0.0.1"), ``port``, ``tls_port``, ``mgmt_port``,
  ``address`` ("127.0.0.1:PORT", py-amqp's ``host``), ``url``
  ("amqp://guest:guest@127.0.0.1:PORT//") and ``pid`` (live beam.smp pid or
  None). ``node(ref)`` maps an index, a name or a Node to the Node; every
  method taking ``node`` accepts any of those.
- ``url(nodes=None)``: oslo.messaging transport URL with every node,
  "rabbit://guest:guest@127.0.0.1:P1,guest:guest@127.0.0.1:P2,...:P3/".
- ``amqp_url(node)``: the node's ``url``.
- ``kill(node)``: SIGKILL its beam.smp; returns once the AMQP port refuses.
  ``start(node)``: restart it, rejoin if needed, wait until all are healthy.
  ``kill_all()``, ``start_all()``: the same for the whole cluster (data kept).
- ``delete_queue(name, vhost="/", missing_ok=False)``: management API; the
  broker sends ``basic.cancel`` to the queue's consumers.
- ``queue_info(name, vhost="/")``: management API dict (``node``, ``type``,
  ``consumers``, ``policy``, ``slave_nodes``, ``leader``, ``members``...) or
  None. Statistics lag up to 1 s: poll with ``faults.wait_until``.
- ``connections()``: management API list (``name``, ``node``, ``peer_port``,
  ``client_properties`` incl. ``connection_name``...); lags up to 1 s.
- ``set_policy(name, pattern, definition, apply_to="queues", priority=0,
  vhost="/")``, ``clear_policy(name, vhost="/")``.
- ``missed_heartbeat_closes(node=None)``: number of "missed heartbeats from
  client" lines in the node's log (all nodes if None); compare before/after.
- ``rabbitmqctl(node, *args, timeout=60)`` -> stdout;
  ``cluster_status(node)`` -> dict; ``api(method, path, body=None)`` -> JSON.
- ``ensure_healthy(clean=True)``, ``health_problems()``, ``is_healthy()``.
- ``tls``: ``ca_file``, ``client_cert``, ``client_key``, ``wrong_ca_file``
  (server certificate: CN=localhost, SAN DNS:localhost and IP:127.0.0.1;
  the TLS listeners verify a client certificate if one is sent).

``sockets_left_unclosed`` (autouse) -- after every test, a garbage
collection finalizes the sockets it left unclosed, and they are logged with
the test's name instead of failing a later test.

``healthy_cluster`` (autouse) -- before every test: restart and rejoin what
is down (or rebuild the cluster), then delete all queues, policies,
non-default exchanges and leftover firewall rules. Returns ``cluster``.

``silent_drop`` -- ``silent_drop(local_port, remote_port)`` silently drops
that one loopback connection (iptables, see ``faults``) and returns a handle
with ``remove()``; whatever is left is removed at teardown, pass or fail.
``faults.local_port(conn)`` gives a py-amqp connection's local port.

``broker_faults`` -- ``faults.BrokerFaults``: ``freeze(node)`` (SIGSTOP of the
node's beam.smp), ``consumer_timeout(ms=2000, tick_ms=500)`` (the broker closes
a channel holding an unacked delivery that long with 406), ``memory_alarm(node)``
(publishers get ``connection.blocked``), ``missing_exchange(name)`` (deleted,
restored with its bindings); each returns an ``Undo`` to end it early, and
whatever is active is undone at teardown, pass or fail.

``tls`` -- ``cluster.tls``. ``cluster.tls_url(nodes=None)`` is the transport
URL of the TLS listeners and ``cluster.tls_options()`` the library's
``ssl_ca_file``/``ssl_cert_file``/``ssl_key_file`` for it.
``with cluster.external_login() as user:`` offers EXTERNAL login (client
certificate, CN ``rha-test-client``) on every node during the block.
"""

from __future__ import annotations

import gc
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from oslo_config import cfg
from oslo_messaging._drivers import impl_rabbit

from rabbit_ha_driver import options

from .helpers.faults import BrokerFaults, SilentDropper, library_defaults, rabbit_cluster

LOG = logging.getLogger(__name__)


#: The only tests not run on RabbitMQ 4, by node id, with the reason. Every
#: other test runs on both brokers.
SKIPPED_ON_RABBITMQ_4 = {
    "test_recovery.py::test_mirrored_master_killed_consumes_again_after_ccn_without_reconnect":
        "classic mirrored queues (ha-mode policies) were removed in RabbitMQ 4.0",
    "test_harness_faults.py::test_ha_policy_mirrors_and_quorum_queue_reports_its_leader":
        "classic mirrored queues (ha-mode policies) were removed in RabbitMQ 4.0",
    "test_call_resend.py::test_a_node_kill_loses_no_call[client-mirrored]":
        "classic mirrored queues (ha-mode policies) were removed in RabbitMQ 4.0",
    "test_call_resend.py::test_a_node_kill_loses_no_call[server-mirrored]":
        "classic mirrored queues (ha-mode policies) were removed in RabbitMQ 4.0",
    # The quorum case of each of these runs on RabbitMQ 4.
    "test_recovery.py::test_kill_consumer_node_consumes_again_on_another_node[classic]":
        "needs a transient classic queue, which dies with its node and is declared again "
        "on another; the RabbitMQ 4 cluster denies transient non-exclusive queues, and a "
        "durable classic queue stays down with its node",
    "test_rpc_chaos.py::test_calls_every_100ms_through_a_fault_do_not_fail[kill-classic]":
        "needs a transient classic queue, which dies with its node and is declared again "
        "on another; the RabbitMQ 4 cluster denies transient non-exclusive queues, and a "
        "durable classic queue stays down with its node",
}


#: Tests whose subject is the client alone, by file or node id prefix: the
#: same library code meets the same broker behaviour on both versions, so
#: they run in the 3.10 pass only, which keeps both passes within CI's 40
#: minutes (in one CI run the 3.10 pass took 20.6 minutes with the chaos run,
#: and the 4.0 pass 14.5 minutes with the first four of these left out).
CLIENT_SIDE_ON_3_10_ONLY = {
    "test_liveness_blocked_hub.py::":
        "the client's heartbeat runners while its own eventlet hub is blocked",
    "test_oslo_liveness.py::test_blocked_eventlet_hub_rabbit_ha_next_to_rabbit":
        "the client's heartbeat runners while its own eventlet hub is blocked",
    "test_memory.py::": "the client process's memory after lost connections",
    "test_fork.py::": "the client's state in a forked child process",
    "test_tls_idle.py::": "the client's heartbeats on idle TLS connections",
    "test_oslo_liveness.py::test_silent_drop_of_the_servers_connections":
        "the client noticing a silent drop, beside oslo.messaging's driver",
    "test_oslo_driver.py::test_calls_through_faults_rabbit_ha_next_to_rabbit":
        "a side-by-side with oslo.messaging's rabbit driver; the library's own calls "
        "through the same faults on 4.0 are test_rpc_chaos.py's",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not rabbit_cluster.Settings.from_env().in_chroot:
        return
    for item in items:
        nodeid = item.nodeid.split("tests/functional/", 1)[-1]
        reason = SKIPPED_ON_RABBITMQ_4.get(nodeid)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"RabbitMQ 4: {reason}"))
            continue
        for prefix, subject in CLIENT_SIDE_ON_3_10_ONLY.items():
            if nodeid.startswith(prefix):
                item.add_marker(pytest.mark.skip(
                    reason=f"client-side only, run in the RabbitMQ 3.10 pass: {subject}"))
                break


def pytest_configure(config: pytest.Config) -> None:
    defaults = library_defaults()
    if defaults:
        # oslo.config's own way to change option defaults; from_url() and
        # from_conf() read them, so every test's settings get them. The same
        # for oslo.messaging's rabbit driver, which runs next to ours.
        cfg.set_defaults(options.ALL_OPTS, **defaults)
        cfg.set_defaults(impl_rabbit.rabbit_opts, **defaults)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Any]:
    settings = rabbit_cluster.Settings.from_env()
    rabbit_cluster.install(settings)
    the_cluster = rabbit_cluster.Cluster(settings)
    with rabbit_cluster.ClusterLock(settings.data_dir, settings.lock_timeout):
        reuse = (os.environ.get("RHA_TEST_REUSE_CLUSTER") == "1"
                 and the_cluster.started_by() == "cli"
                 and the_cluster.running_version() == settings.rabbitmq
                 and the_cluster.is_healthy())
        if reuse:
            LOG.info("reusing the running cluster in %s", settings.data_dir)
            rabbit_cluster.remove_tagged_rules(the_cluster.client_ports())
            try:
                yield the_cluster
            finally:
                rabbit_cluster.remove_tagged_rules(the_cluster.client_ports())
            return
        with rabbit_cluster.stopped_on_exit(the_cluster.shutdown):
            the_cluster.bootstrap(owner="pytest")
            yield the_cluster


@pytest.fixture(autouse=True)
def healthy_cluster(cluster: Any) -> Any:
    cluster.ensure_healthy()
    return cluster


@pytest.fixture(autouse=True)
def sockets_left_unclosed(request: pytest.FixtureRequest) -> Iterator[None]:
    """Finalize, after each test, the sockets it dropped without closing.

    A socket a test (or a connection lost to its fault) left for the garbage
    collector would otherwise be finalized during some later test, whose
    ResourceWarning pytest then turns into that innocent test's failure. They
    are logged here, with the test that left them.
    """
    yield
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    if unclosed:
        LOG.warning("%s left %d socket(s) to the garbage collector: %s",
                    request.node.nodeid, len(unclosed), "; ".join(unclosed[:5]))


@pytest.fixture
def silent_drop(cluster: Any) -> Iterator[SilentDropper]:
    dropper = SilentDropper(cluster.client_ports())
    try:
        yield dropper
    finally:
        dropper.remove_all()


@pytest.fixture
def broker_faults(cluster: Any) -> Iterator[BrokerFaults]:
    faults = BrokerFaults(cluster)
    try:
        yield faults
    finally:
        faults.undo_all()


@pytest.fixture
def tls(cluster: Any) -> Any:
    return cluster.tls

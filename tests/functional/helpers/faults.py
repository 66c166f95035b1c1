"""Fault injection and waiting helpers for the functional tests.

The cluster lifecycle (start, kill, restart, management API) lives in
``tools/rabbit_cluster.py``, which must stay importable without the test
dependencies; it is loaded here by path and re-exported as ``rabbit_cluster``
so the tests need no ``sys.path`` changes.

Silent drop: :class:`SilentDropper` inserts two ``iptables`` rules on the
loopback interface, one per direction of a single TCP connection, matched by
its two ports::

    iptables -I INPUT -i lo -p tcp --sport A --dport B -m comment --comment rha-test -j DROP
    iptables -I INPUT -i lo -p tcp --sport B --dport A -m comment --comment rha-test -j DROP

Nothing is sent back (no RST, no ICMP), so neither end learns of it: like a
stateful firewall that forgot the connection. Retransmissions and keepalive
probes are dropped too. Other connections, new ones included, pass. Every rule
is tagged with the comment, so whatever a crashed run leaves behind is removed
by the next cluster start or health check.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

LOG = logging.getLogger(__name__)

T = TypeVar("T")


def _load_cluster_module() -> ModuleType:
    name = "rabbit_cluster"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[3] / "tools" / "rabbit_cluster.py"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it loads
        spec.loader.exec_module(module)
    return sys.modules[name]


rabbit_cluster = _load_cluster_module()

#: A RabbitMQ 4 test cluster (RHA_TEST_RABBITMQ=4) denies transient (non-durable)
#: non-exclusive queues, so the queues a test declares for itself are durable
#: there; they are deleted between tests all the same. On 3.10 they stay as the
#: test was written (a transient classic queue dies with its node).
OWN_QUEUES_DURABLE = rabbit_cluster.Settings.from_env().in_chroot


def library_defaults() -> dict[str, Any]:
    """Option defaults of the library for this session's broker (none on 3.10).

    RabbitMQ 4 denies transient non-exclusive queues: the library runs with
    quorum queues there, the configuration the docs advise for such a broker
    (``RHA_TEST_STREAM_FANOUT=1``: stream fanout too)."""
    if not rabbit_cluster.Settings.from_env().in_chroot:
        return {}
    defaults: dict[str, Any] = {"rabbit_quorum_queue": True, "rabbit_transient_quorum_queue": True}
    if os.environ.get("RHA_TEST_STREAM_FANOUT") == "1":
        # oslo.messaging refuses stream fanout without a prefetch limit (its default is 0).
        defaults.update(rabbit_stream_fanout=True, rabbit_qos_prefetch_count=64)
    return defaults


def config_file_args() -> list[str]:
    """``--config-file PATH`` giving a ``rabbit-ha`` subprocess :func:`library_defaults`."""
    defaults = library_defaults()
    if not defaults:
        return []
    path = Path(tempfile.gettempdir()) / f"rha-func-defaults-{os.getpid()}.conf"
    path.write_text("[rabbit_ha]\n" + "".join(
        f"{name} = {str(value).lower()}\n" for name, value in defaults.items()))
    return ["--config-file", str(path)]


def _ports(spec: list[str]) -> tuple[str, str]:
    """(source port, destination port) of a rule spec."""
    return spec[spec.index("--sport") + 1], spec[spec.index("--dport") + 1]


class SilentDrop:
    """The rules dropping one loopback connection; ``remove()`` lets it through again."""

    def __init__(self, local_port: int, remote_port: int) -> None:
        self.local_port = local_port
        self.remote_port = remote_port
        self._specs = rabbit_cluster.drop_rule_specs(local_port, remote_port)
        self.active = False

    def apply(self) -> SilentDrop:
        for index, spec in enumerate(self._specs):
            try:
                rabbit_cluster.add_rule(spec)
            except Exception:
                for done in self._specs[:index]:
                    rabbit_cluster.delete_rule(done)
                raise
        self.active = True
        LOG.info("silently dropping 127.0.0.1:%d <-> 127.0.0.1:%d",
                 self.local_port, self.remote_port)
        return self

    def remove(self) -> None:
        """Delete both rules (idempotent)."""
        if not self.active:
            return
        for spec in self._specs:
            try:
                rabbit_cluster.delete_rule(spec)
            except rabbit_cluster.ClusterError:
                # Gone already (a cleanup of all tagged rules ran meanwhile)?
                # Then there is nothing to undo; otherwise it is an error.
                if _ports(spec) in map(_ports, rabbit_cluster.tagged_rules()):
                    raise
                LOG.warning("rule %s was already removed", " ".join(spec))
        self.active = False
        LOG.info("no longer dropping 127.0.0.1:%d <-> 127.0.0.1:%d",
                 self.local_port, self.remote_port)

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"SilentDrop({self.local_port} <-> {self.remote_port}, {state})"


class SilentDropper:
    """Callable behind the ``silent_drop`` fixture; remembers what to undo.

    ``remote_port`` must be one of the cluster's client ports (AMQP, TLS or
    management), so a test can only cut connections to our own brokers.
    """

    def __init__(self, broker_ports: Collection[int]) -> None:
        self._broker_ports = frozenset(broker_ports)
        self._drops: list[SilentDrop] = []

    def __call__(self, local_port: int, remote_port: int) -> SilentDrop:
        if remote_port not in self._broker_ports:
            raise ValueError(f"port {remote_port} is not a port of the test cluster "
                             f"({sorted(self._broker_ports)})")
        if not 0 < local_port < 65536 or local_port == remote_port:
            raise ValueError(f"bad local port {local_port}")
        drop = SilentDrop(local_port, remote_port).apply()
        self._drops.append(drop)
        return drop

    def remove_all(self) -> None:
        errors = []
        for drop in self._drops:
            try:
                drop.remove()
            except Exception as exc:  # remove the rest; report after
                errors.append(exc)
        self._drops.clear()
        if errors:
            raise errors[0]


def local_port(connection: Any) -> int:
    """Local TCP port of a py-amqp ``Connection`` (or any object with ``.sock``)."""
    sock: socket.socket = connection.sock
    port: int = sock.getsockname()[1]
    return port


def refuses_connections(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """True if a TCP connect to host:port is actively refused."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], T | None], timeout: float, message: str = "",
               interval: float = 0.1) -> T:
    """Poll ``predicate`` until truthy and return its value; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout}s: {message or predicate}")
        time.sleep(interval)


def broker_connections(pid: int, ports: Collection[int]) -> set[tuple[int, int]]:
    """(local port, broker port) of the established TCP connections of ``pid`` to ``ports``."""
    out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True,
                         text=True, check=True, timeout=10).stdout
    found = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 5 or f"pid={pid}," not in fields[4]:
            continue
        local, remote = (int(f.rsplit(":", 1)[1]) for f in fields[2:4])
        if remote in ports:
            found.add((local, remote))
    return found


class Undo:
    """Ends one active fault; idempotent, so teardown may call it again."""

    def __init__(self, what: str, exit_stack: contextlib.ExitStack) -> None:
        self.what = what
        self._stack = exit_stack
        self.active = True

    def __call__(self) -> None:
        if self.active:
            self.active = False
            self._stack.close()

    def __repr__(self) -> str:
        return f"Undo({self.what}, {'active' if self.active else 'undone'})"


class BrokerFaults:
    """Broker-side faults behind the ``broker_faults`` fixture.

    Each method starts a fault and returns an :class:`Undo`; whatever is still
    active when the test ends is undone then, pass or fail (and a frozen node
    is thawed at interpreter exit in any case).

    - ``freeze(node)``: SIGSTOP the node's beam.smp (it accepts TCP into the
      kernel backlog and answers nothing) until undone.
    - ``consumer_timeout(ms=2000, tick_ms=500)``: channels opened from now on
      are closed by the broker with 406 PRECONDITION_FAILED "delivery
      acknowledgement on channel N timed out" once a delivery stays unacked
      ``ms`` (checked every ``tick_ms``); seen on 3.10 after about
      ms + tick.
    - ``memory_alarm(node=0)``: memory watermark 0.0000001 on the node; every
      publishing connection of the cluster gets ``connection.blocked``.
    - ``missing_exchange(name)``: the exchange is deleted (a publish to it
      closes the channel with 404) and re-declared with its bindings on undo.
    """

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self._undos: list[Undo] = []

    def _start(self, what: str, manager: contextlib.AbstractContextManager[Any]) -> Undo:
        stack = contextlib.ExitStack()
        stack.enter_context(manager)
        undo = Undo(what, stack)
        self._undos.append(undo)
        return undo

    def freeze(self, node: Any) -> Undo:
        return self._start(f"freeze {self.cluster.node(node).name}", self.cluster.frozen(node))

    def consumer_timeout(self, ms: int = 2000, tick_ms: int = 500) -> Undo:
        return self._start(f"consumer_timeout {ms} ms", self.cluster.consumer_timeout(ms, tick_ms))

    def memory_alarm(self, node: Any = 0) -> Undo:
        return self._start(f"memory alarm on {self.cluster.node(node).name}",
                           self.cluster.memory_alarm(node))

    def missing_exchange(self, name: str) -> Undo:
        return self._start(f"exchange {name!r} missing", self.cluster.exchange_missing(name))

    def undo_all(self) -> None:
        errors = []
        for undo in reversed(self._undos):
            try:
                undo()
            except Exception as exc:  # undo the rest; report after
                errors.append(exc)
        self._undos.clear()
        if errors:
            raise errors[0]

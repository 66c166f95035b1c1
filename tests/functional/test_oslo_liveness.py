"""Liveness through oslo.messaging's public API: ``rabbit-ha://`` next to ``rabbit://``.

How this works. Each test runs one scenario twice, once per scheme, with the
same heartbeat ``T = 3`` s for both: in the URL query
(``?heartbeat_timeout_threshold=3``) and in ``[oslo_messaging_rabbit]`` of the
``ConfigOpts`` (where oslo.messaging's rabbit driver reads it). Everything goes
through ``oslo_messaging.get_rpc_transport`` / ``get_rpc_client`` /
``get_rpc_server``; the figures of both schemes are printed side by side and
asserted for ``rabbit-ha://`` only.

* Silent drop. A client transport calls an RPC server on its own transport
  back to back (one caller, call timeout 5 s). The client's connections are
  opened first (a call to a topic nobody serves), so the connections that
  appear once the server runs and answers are the server's: its listener and
  its reply publisher. They are found with ``ss`` (this process, established,
  to a broker AMQP port) and silently dropped with iptables (the
  ``silent_drop`` fixture). The outage is the longest gap between two answered
  calls around the drop; failed calls are counted, and so are the sockets the
  transports left unclosed (found by a garbage collection after cleanup, so
  their ResourceWarnings do not surface in a later test). ``rabbit-ha://`` must be
  answering again within about ``T + 2`` s (plus a margin for CI).
* Blocked eventlet hub. A subprocess per scheme (so this pytest process stays
  unpatched) calls ``eventlet.monkey_patch()``, starts an RPC server with the
  eventlet executor, checks it answers, then blocks the hub with a CPU-bound
  loop for ``3 T`` and afterwards tries a call again. The broker's
  "missed heartbeats from client" closes are counted in the node logs before
  and after. ``rabbit-ha://`` (its default heartbeat runner writes heartbeats
  from an OS thread) must see none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from typing import Any

import oslo_messaging as om
from oslo_config import cfg
from oslo_messaging import conffixture

from .helpers import faults
from .helpers.faults import library_defaults, wait_until
from .helpers.probes import Caller

T = 3
SCHEMES = ("rabbit-ha", "rabbit")
CALL_TIMEOUT = 5.0
#: How long the caller keeps calling after the drop.
OBSERVE_AFTER_DROP = 15.0
#: Allowance for a loaded CI machine on top of ``T + 2``.
CI_MARGIN = 2.0
BLOCK_FOR = 3 * T
#: A hub scenario takes about 15 s; a child still running after this is killed.
CHILD_TIMEOUT = 90.0

#: What each scenario printed, for the table at the end of each test.
TABLE: dict[str, dict[str, str]] = {}


def scheme_url(cluster: Any, scheme: str, threshold: int | None = T) -> str:
    """The cluster's URL; ``threshold`` None leaves the driver's default T."""
    _, _, rest = cluster.url().partition("://")
    query = "" if threshold is None else f"?heartbeat_timeout_threshold={threshold}"
    return f"{scheme}://{rest}{query}"


def new_conf(threshold: int | None = T) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    conffixture.ConfFixture(conf)  # registers oslo.messaging's options, the rabbit group's too
    if threshold is not None:
        conf.set_override("heartbeat_timeout_threshold", threshold, group="oslo_messaging_rabbit")
    return conf


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def broker_connections(cluster: Any, pid: int) -> set[tuple[int, int]]:
    """(local port, broker port) of the established connections of ``pid`` to an AMQP port."""
    return faults.broker_connections(pid, {n.port for n in cluster.nodes})


def close_transports(*items: Any) -> None:
    for item in items:
        if item is None:
            continue
        if isinstance(item, om.Transport):
            item.cleanup()
        else:
            item.stop()
            item.wait()


def unclosed_sockets() -> int:
    """Sockets the transports dropped without closing, found by a garbage collection.

    Their ResourceWarnings are counted here rather than left to surface in a
    later test.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    return sum(1 for w in caught if "unclosed <socket" in str(w.message))


class Echo:
    def echo(self, ctxt: Any, value: Any) -> Any:
        return value


# -- 1. silent drop of the server's connections ------------------------------------------


@dataclasses.dataclass
class DropFigures:
    scheme: str
    dropped: int = 0
    calls: int = 0
    failed: int = 0
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    outage: float = math.inf
    unclosed_sockets: int = 0

    def cells(self) -> str:
        outage = f"{self.outage:5.1f}s" if self.outage != math.inf else f">{OBSERVE_AFTER_DROP:.0f}s"
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "-"
        return (f"outage {outage}  calls {self.calls:3d}  failed {self.failed:2d}  "
                f"connections dropped {self.dropped}  sockets left unclosed "
                f"{self.unclosed_sockets}  errors: {errors}")


def drop_figures(caller: Caller, scheme: str, dropped_at: float, until: float,
                 observe: float = OBSERVE_AFTER_DROP) -> DropFigures:
    result = DropFigures(scheme)
    answers = [end for _, end, error in caller.done if error is None]
    before = [a for a in answers if a <= dropped_at]
    after = [a for a in answers if a > dropped_at]
    if after:
        points = before[-1:] + after
        result.outage = max(b - a for a, b in itertools.pairwise(points))
    elif before:
        result.outage = math.inf if until - before[-1] > observe else until - before[-1]
    for _, end, error in caller.done:
        if end > dropped_at:
            result.calls += 1
            if error is not None:
                result.failed += 1
                result.errors[error] = result.errors.get(error, 0) + 1
    return result


def through_silent_drop(cluster: Any, silent_drop: Any, scheme: str, *,
                        threshold: int | None = T, side: str = "server",
                        observe: float = OBSERVE_AFTER_DROP,
                        call_timeout: float = CALL_TIMEOUT) -> DropFigures:
    """Silently drop the ``side`` ("server" or "caller") connections under a caller.

    ``threshold`` None runs both transports on the drivers' default liveness
    settings (no option given anywhere).
    """
    assert side in ("server", "caller"), side
    url = scheme_url(cluster, scheme, threshold)
    topic = unique(f"drop-{scheme}")
    me = os.getpid()
    client_transport = server_transport = server = None
    caller: Caller | None = None
    try:
        ours_before = broker_connections(cluster, me)
        client_transport = om.get_rpc_transport(new_conf(threshold), url)
        # The client's connections (publisher and reply queue) open now.
        nowhere = om.get_rpc_client(client_transport, om.Target(topic=unique("nowhere")),
                                    timeout=1)
        with contextlib.suppress(om.MessagingTimeout):
            nowhere.call({}, "echo", value=0)
        client_connections = broker_connections(cluster, me) - ours_before
        assert client_connections, "the client opened no connection"
        server_transport = om.get_rpc_transport(new_conf(threshold), url)
        server = om.get_rpc_server(server_transport, om.Target(topic=topic, server="s1"),
                                   [Echo()], executor="threading")
        server.start()
        client = om.get_rpc_client(client_transport, om.Target(topic=topic),
                                   timeout=call_timeout)
        caller = Caller(client, pause=0.02)
        caller.start()
        wait_until(lambda: caller is not None and caller.answered >= 20, 15,
                   "calls answered before the drop")
        time.sleep(0.5)
        server_connections = broker_connections(cluster, me) - client_connections - ours_before
        assert server_connections, "no connection of the server found"
        victims = server_connections if side == "server" else client_connections
        dropped_at = time.monotonic()
        for local, remote in sorted(victims):
            silent_drop(local, remote)
        time.sleep(observe)
        caller.stopping.set()
        caller.join(call_timeout + 5)
        result = drop_figures(caller, scheme, dropped_at, time.monotonic(), observe)
        result.dropped = len(victims)
    finally:
        if caller is not None:
            caller.stopping.set()
        silent_drop.remove_all()
        close_transports(server, server_transport, client_transport)
        leaked = unclosed_sockets()
    result.unclosed_sockets = leaked
    return result


def test_silent_drop_of_the_servers_connections_rabbit_ha_next_to_rabbit(cluster: Any,
                                                                        silent_drop: Any) -> None:
    results: dict[str, DropFigures] = {}
    for scheme in SCHEMES:
        cluster.ensure_healthy()
        results[scheme] = through_silent_drop(cluster, silent_drop, scheme)
    results[SCHEMES[-1]].unclosed_sockets += unclosed_sockets()  # any found late
    TABLE["silent drop"] = {s: r.cells() for s, r in results.items()}
    print_table()
    ours = results["rabbit-ha"]
    assert ours.outage <= T + 2 + CI_MARGIN, ours.cells()
    # Calls answered again: the caller is not stuck after the outage.
    assert ours.calls - ours.failed >= 20, ours.cells()
    # The dead connections were closed, not abandoned.
    assert ours.unclosed_sockets == 0, ours.cells()


# -- 2. a blocked eventlet hub ------------------------------------------------------------

BLOCKED_HUB = r"""
import eventlet
eventlet.monkey_patch()

import json
import sys
import time
import uuid

import oslo_messaging as om
from oslo_config import cfg
from oslo_messaging import conffixture

url, threshold, block_for = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
defaults = json.loads(sys.argv[4])  # the session's option defaults (RabbitMQ 4)
if defaults:
    from oslo_messaging._drivers import impl_rabbit
    from rabbit_ha_driver import options
    cfg.set_defaults(impl_rabbit.rabbit_opts, **defaults)
    cfg.set_defaults(options.ALL_OPTS, **defaults)
conf = cfg.ConfigOpts()
conffixture.ConfFixture(conf)
conf.set_override("heartbeat_timeout_threshold", threshold, group="oslo_messaging_rabbit")


class Echo:
    def echo(self, ctxt, value):
        return value


topic = f"blocked-hub-{uuid.uuid4().hex[:8]}"
server_transport = om.get_rpc_transport(conf, url)
server = om.get_rpc_server(server_transport, om.Target(topic=topic, server="s1"), [Echo()],
                           executor="eventlet")
server.start()
client_transport = om.get_rpc_transport(conf, url)
client = om.get_rpc_client(client_transport, om.Target(topic=topic), timeout=5)


def answers(n):
    try:
        return client.call({}, "echo", value=n) == n
    except Exception as error:
        return f"{type(error).__name__}: {error}"


outcome = {"before": [answers(n) for n in range(3)]}
eventlet.sleep(1.0)  # an idle stretch: only heartbeats flow
print("BLOCKING", flush=True)
started = time.monotonic()
spins = 0
while time.monotonic() - started < block_for:  # a CPU-bound request holds the hub
    spins += 1
outcome["blocked_for"] = time.monotonic() - started
print("UNBLOCKED", flush=True)
eventlet.sleep(threshold)  # the hub serves again: whatever must recover, recovers
began = time.monotonic()
outcome["after"] = answers(100)
outcome["after_took"] = time.monotonic() - began
server.stop()
server.wait()
server_transport.cleanup()
client_transport.cleanup()
print(json.dumps(outcome), flush=True)
"""


@dataclasses.dataclass
class HubFigures:
    scheme: str
    closes: int
    ports: int
    blocked_for: float
    answered_before: bool
    answered_after: Any
    after_took: float

    def cells(self) -> str:
        after = "yes" if self.answered_after is True else f"no ({self.answered_after})"
        return (f"missed-heartbeat closes {self.closes}  (connections {self.ports})  "
                f"hub blocked {self.blocked_for:4.1f}s  call after: {after} "
                f"in {self.after_took:.1f}s")


def through_blocked_hub(cluster: Any, scheme: str) -> HubFigures:
    before = cluster.missed_heartbeat_closes()
    ports: set[tuple[int, int]] = set()
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen(
            [sys.executable, "-W", "ignore", "-c", BLOCKED_HUB, scheme_url(cluster, scheme),
             str(T), str(BLOCK_FOR), json.dumps(library_defaults())],
            stdout=subprocess.PIPE, stderr=errors, text=True)
        watchdog = threading.Timer(CHILD_TIMEOUT, child.kill)
        watchdog.start()
        try:
            assert child.stdout is not None
            lines = []
            for line in child.stdout:
                lines.append(line)
                if line.startswith("BLOCKING"):
                    ports = broker_connections(cluster, child.pid)
            child.wait()
        finally:
            watchdog.cancel()
            if child.poll() is None:
                child.kill()
                child.wait()
            if child.stdout is not None:
                child.stdout.close()
        errors.seek(0)
        stderr = errors.read()
    stdout = "".join(lines)
    assert child.returncode == 0, f"scenario failed:\n{stdout}\n{stderr[-4000:]}"
    outcome = json.loads([x for x in stdout.splitlines() if x.startswith("{")][-1])
    time.sleep(1.0)  # the broker's log line may trail the close
    return HubFigures(scheme, cluster.missed_heartbeat_closes() - before, len(ports),
                      outcome["blocked_for"], all(x is True for x in outcome["before"]),
                      outcome["after"], outcome["after_took"])


def test_blocked_eventlet_hub_rabbit_ha_next_to_rabbit(cluster: Any) -> None:
    results: dict[str, HubFigures] = {}
    for scheme in SCHEMES:
        cluster.ensure_healthy()
        results[scheme] = through_blocked_hub(cluster, scheme)
    TABLE["blocked hub"] = {s: r.cells() for s, r in results.items()}
    print_table()
    ours = results["rabbit-ha"]
    assert ours.answered_before, ours.cells()
    assert ours.blocked_for >= BLOCK_FOR, ours.cells()
    assert ours.ports >= 1, ours.cells()
    assert ours.closes == 0, ours.cells()
    assert ours.answered_after is True, ours.cells()


def print_table() -> None:
    print()
    print(f"T={T}s, call timeout {CALL_TIMEOUT:.0f}s, hub blocked for {BLOCK_FOR}s")
    for scenario, row in TABLE.items():
        for scheme in SCHEMES:
            if scheme in row:
                print(f"{scenario:<12} {scheme + '://':<12} {row[scheme]}")


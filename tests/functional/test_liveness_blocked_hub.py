"""A blocked eventlet hub must not cost a connection its heartbeats.

How this works. Each scenario runs in a subprocess (so this pytest process
stays unpatched) that calls ``eventlet.monkey_patch()``, opens a bare py-amqp
connection to one node with the heartbeat interval of our policy for
``T = 3`` (``H = 1`` s), hands it to a heartbeat runner through
``amqp_io.AmqpLink``, serves it normally for a moment, and then blocks the
hub with a CPU-bound loop for ``3 T``, the way a long request in a service
does. Afterwards it tries to use the connection and reports what happened.

* ``auto`` (the native scheduler, using eventlet's original primitives) keeps
  writing heartbeat frames from its OS thread while the hub is blocked: the
  broker logs no "missed heartbeats from client" close for the connection, it
  is still usable, and the unread broker heartbeats piling up in the kernel
  keep it from being declared dead.
* ``green`` (a green thread per connection, the classic design) stalls with
  the hub: the broker, hearing nothing for two to three intervals, closes the
  connection for missed heartbeats. That is why ``auto`` is the default.

The same scenario with the library's own :class:`Connection` (``SCENARIO_HA``
below): it consumes a named queue from a green thread that drains it, the
main green thread publishes to it, and then blocks the hub for ``3 T``. After
the block the hub serves for ``T`` (the drain loop reads whatever arrived and
the connection recovers if it must) before a message is published and must
be consumed.

* ``native`` and ``auto``: no broker close, no reconnect; the message after
  the block is consumed on the very connection (same local port).
* ``green``: the broker closes the connection for missed heartbeats, the
  Connection notices on its own (no call of ours asks it to), reconnects
  (to the next node of the URL) with its consumer, and the message after the
  block is consumed there.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from typing import Any

import pytest

from rabbit_ha_driver.connection._heartbeat import HeartbeatPolicy
from rabbit_ha_driver.options import from_url

from .helpers.faults import OWN_QUEUES_DURABLE, wait_until
from .helpers.probes import rotate_url

LOG = logging.getLogger(__name__)

THRESHOLD = 3
BLOCK_FOR = 3 * THRESHOLD

SCENARIO = r"""
import eventlet
eventlet.monkey_patch()

import json
import socket
import sys
import time

import amqp

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.connection import _amqp_io as amqp_io, _runners as runners, _sockets as sockets
from rabbit_ha_driver.connection._heartbeat import HeartbeatPolicy

host, runner, threshold, block_for = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
bus, recorder = ev.EventBus(), ev.Recorder()
bus.subscribe(recorder)
policy = HeartbeatPolicy(threshold)
conn = amqp.Connection(
    host, heartbeat=policy.negotiated_interval, connect_timeout=5,
    socket_settings=sockets.derive(threshold).amqp_socket_settings(),
    client_properties={"connection_name": f"blocked-hub-{runner}"})
conn.connect()
local_port = conn.sock.getsockname()[1]
link = amqp_io.AmqpLink(conn, name=f"blocked-hub-{runner}").install()
watch = runners.watch_connection(link, policy, runner=runner, events=bus)

def serve(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            conn.drain_events(timeout=0.2)
        except socket.timeout:
            pass

serve(1.5)
sent_before = link.heartbeats_sent
started = time.monotonic()
spins = 0
while time.monotonic() - started < block_for:  # a CPU-bound request holds the hub
    spins += 1
blocked_for = time.monotonic() - started
sent_during = link.heartbeats_sent - sent_before

outcome = {"local_port": local_port, "negotiated": conn.heartbeat, "runner": watch.runner,
           "blocked_for": blocked_for, "heartbeats_during_block": sent_during}
try:
    channel = conn.channel()
    queue = channel.queue_declare("", exclusive=True).queue
    channel.basic_publish(amqp.Message("ping"), routing_key=queue)
    message = None
    for _ in range(50):
        message = channel.basic_get(queue, no_ack=True)
        if message is not None:
            break
        serve(0.1)
    outcome["alive"] = message is not None and message.body in ("ping", b"ping")
except Exception as error:
    outcome["alive"] = False
    outcome["error"] = f"{type(error).__name__}: {error}"
outcome["declared_dead"] = link.dead
outcome["dead_reason"] = link.dead_reason
outcome["events"] = [(type(e).__name__, getattr(e, "reason", "")) for e in recorder.events]
watch.cancel()
link.detach()
try:
    conn.close()
except Exception:
    conn.collect()
print(json.dumps(outcome))
"""


def run_blocked_hub(address: str, runner: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", SCENARIO, address, runner, str(THRESHOLD), str(BLOCK_FOR)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"scenario failed:\n{done.stdout}\n{done.stderr}"
    outcome: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    LOG.info("blocked hub, runner %s: %s", runner, outcome)
    return outcome


def closes_of(node: Any, local_port: int) -> int:
    """"missed heartbeats from client" closes the node logged for one client port."""
    with open(node.log_file, errors="replace") as log:
        lines = log.read().splitlines()
    needle = f":{local_port} -> "
    return sum(
        1 for i, line in enumerate(lines)
        if "missed heartbeats from client" in line and any(needle in x for x in lines[max(0, i - 3):i + 1])
    )


def test_native_runner_keeps_the_connection_while_the_hub_is_blocked(cluster: Any) -> None:
    node = cluster.nodes[0]
    before = cluster.missed_heartbeat_closes(node)
    outcome = run_blocked_hub(node.address, "auto")
    assert outcome["negotiated"] == 1
    assert outcome["runner"] == "native"
    [(_, reason)] = [e for e in outcome["events"] if e[0] == "RunnerSelected"]
    assert "monkey-patching detected" in reason
    assert outcome["blocked_for"] >= BLOCK_FOR
    # A frame every H / rate from the native thread, hub or no hub (the
    # scenario's policy is HeartbeatPolicy(THRESHOLD): the library's default rate).
    policy = HeartbeatPolicy(THRESHOLD)
    per_second = policy.rate / policy.negotiated_interval
    assert outcome["heartbeats_during_block"] >= 0.7 * BLOCK_FOR * per_second
    assert outcome["alive"], outcome.get("error")
    assert not outcome["declared_dead"], outcome["dead_reason"]
    assert closes_of(node, outcome["local_port"]) == 0
    assert cluster.missed_heartbeat_closes(node) == before


def test_green_runner_loses_the_connection_while_the_hub_is_blocked(cluster: Any) -> None:
    node = cluster.nodes[0]
    before = cluster.missed_heartbeat_closes(node)
    outcome = run_blocked_hub(node.address, "green")
    finished = time.monotonic()
    assert outcome["runner"] == "green"
    assert outcome["heartbeats_during_block"] == 0
    assert not outcome["alive"]
    wait_until(lambda: closes_of(node, outcome["local_port"]) == 1, timeout=10,
               message="the broker logs a missed-heartbeats close for the connection")
    LOG.info("close found in the log %.1fs after the scenario ended", time.monotonic() - finished)
    assert cluster.missed_heartbeat_closes(node) >= before + 1


SCENARIO_HA = r"""
import eventlet
eventlet.monkey_patch()

import json
import sys
import time
import uuid

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.connection import Connection, Deadline
from rabbit_ha_driver.options import from_url

url, runner, threshold, block_for = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
bus, recorder = ev.EventBus(), ev.Recorder()
bus.subscribe(recorder)
bus.subscribe(ev.LogSubscriber())
conn = Connection(from_url(url, heartbeat_timeout_threshold=threshold, heartbeat_runner=runner),
                  name=f"blocked-hub-ha-{runner}", events=bus)
received = []

def on_message(message):
    received.append(bytes(message.body if isinstance(message.body, bytes) else message.body.encode()))
    conn.ack(message)

queue = conn.declare_queue(f"rha-func.blocked-hub-ha.{uuid.uuid4().hex[:8]}",
                           durable=sys.argv[5] == "durable")
conn.consume(queue, on_message)
draining = True

def drain():
    while draining:
        conn.drain_events(0.2)

drainer = eventlet.spawn(drain)

def consumed(body, within):
    end = time.monotonic() + within
    while time.monotonic() < end:
        if body in received:
            return True
        eventlet.sleep(0.05)
    return False

def names(kind):
    return [e for e in recorder.events if isinstance(e, kind)]

conn.publish(b"before", "", queue, deadline=Deadline.after(10))
outcome = {"consumed_before": consumed(b"before", 10)}
eventlet.sleep(1.0)  # an idle stretch: only heartbeats flow
outcome["local_port"] = conn.local_port
outcome["connected_before"] = len(names(ev.Connected))
link = conn.liveness.link
sent_before = link.heartbeats_sent
started = time.monotonic()
spins = 0
while time.monotonic() - started < block_for:  # a CPU-bound request holds the hub
    spins += 1
outcome["blocked_for"] = time.monotonic() - started
outcome["heartbeats_during_block"] = link.heartbeats_sent - sent_before
unblocked = time.monotonic()
eventlet.sleep(threshold)  # the hub serves: the drain loop reads and recovers by itself
reconnected = [e for e in names(ev.Connected)][outcome["connected_before"]:]
outcome["reconnected_by_itself"] = [e.host for e in reconnected]
outcome["local_port_after_block"] = conn.local_port
conn.publish(b"after", "", queue, deadline=Deadline.after(20), retry_uncertain=True)
outcome["consumed_after"] = consumed(b"after", 20)
outcome["local_port_at_end"] = conn.local_port
outcome["runner"] = [e.runner for e in names(ev.RunnerSelected)]
outcome["connected"] = len(names(ev.Connected))
outcome["lost"] = [e.reason for e in names(ev.ConnectionLost)]
outcome["declared_dead"] = [e.silent_for for e in names(ev.DeclaredDead)]
draining = False
drainer.wait()
conn.delete_queue(queue, deadline=Deadline.after(5))
conn.close()
print(json.dumps(outcome))
"""


def run_blocked_hub_ha(url: str, runner: str) -> dict[str, Any]:
    """SCENARIO_HA in a monkey-patched subprocess; its outcome as a dict."""
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", SCENARIO_HA, url, runner, str(THRESHOLD), str(BLOCK_FOR),
         "durable" if OWN_QUEUES_DURABLE else "transient"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"scenario failed:\n{done.stdout}\n{done.stderr}"
    outcome: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    LOG.info("blocked hub, HA connection, runner %s: %s", runner, outcome)
    return outcome


@pytest.mark.parametrize("runner", ["auto", "native"])
def test_ha_connection_keeps_consuming_through_a_blocked_hub(cluster: Any, runner: str) -> None:
    node = cluster.nodes[0]
    before = cluster.missed_heartbeat_closes(node)
    outcome = run_blocked_hub_ha(rotate_url(cluster, 0), runner)
    print(f"blocked hub, HA connection, runner {runner}: {outcome}")
    assert outcome["runner"] == ["native"]
    assert outcome["consumed_before"]
    assert outcome["blocked_for"] >= BLOCK_FOR
    # Heartbeats every H / rate from the native thread while the hub was blocked.
    policy = HeartbeatPolicy.from_settings(from_url(rotate_url(cluster, 0),
                                                    heartbeat_timeout_threshold=THRESHOLD))
    per_second = policy.rate / policy.negotiated_interval
    assert outcome["heartbeats_during_block"] >= 0.7 * BLOCK_FOR * per_second
    assert outcome["consumed_after"]
    # The very same connection: never lost, never declared dead, never reopened.
    assert outcome["connected"] == 1
    assert outcome["lost"] == []
    assert outcome["declared_dead"] == []
    assert outcome["local_port"] == outcome["local_port_after_block"] == outcome["local_port_at_end"]
    assert closes_of(node, outcome["local_port"]) == 0
    assert cluster.missed_heartbeat_closes(node) == before


def test_ha_connection_green_runner_is_closed_by_the_broker_and_recovers(cluster: Any) -> None:
    node = cluster.nodes[0]
    before = cluster.missed_heartbeat_closes(node)
    outcome = run_blocked_hub_ha(rotate_url(cluster, 0), "green")
    print(f"blocked hub, HA connection, runner green: {outcome}")
    assert set(outcome["runner"]) == {"green"}  # selected again for the new connection
    assert outcome["consumed_before"]
    assert outcome["heartbeats_during_block"] == 0
    wait_until(lambda: closes_of(node, outcome["local_port"]) == 1, timeout=10,
               message="the broker logs a missed-heartbeats close for the connection")
    assert cluster.missed_heartbeat_closes(node) >= before + 1
    # Recovered by itself while the hub served, before anything was published...
    assert outcome["connected"] == 2
    assert outcome["reconnected_by_itself"] == [cluster.nodes[1].address]
    assert len(outcome["lost"]) == 1
    assert outcome["local_port_after_block"] not in (None, outcome["local_port"])
    # ...and consuming on the new connection.
    assert outcome["consumed_after"]

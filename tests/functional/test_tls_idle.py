"""Idle TLS connections keep sending heartbeats, with every runner.

The scenario runs in a subprocess (eventlet must patch a process of its own):
an RPC server and an RPC client over TLS to one node, ``T = 4`` s (the broker
is told ``H = 2`` s and closes a connection that stays silent for two to
three of those). A call, ``3 T`` of idleness, another call. While idle the
client's publishing connection has no reader at all, so only a heartbeat
runner that can write TLS records keeps it open. Runners:

* ``native``: the native scheduler's OS thread in a plain process; it writes
  heartbeat records through the SSL object under the connection's guard;
* ``native-patched``: the same thread in an eventlet-patched process (the
  ``auto`` choice there), with eventlet's green SSL sockets;
* ``green``: a green thread per connection in the patched process.

Each must answer the second call within 1 s, with no "missed heartbeats from
client" close in the broker's log and no connection lost in the client.
``-m slow`` repeats each five times and prints the figures.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from .helpers.faults import library_defaults

T = 4
IDLE = 3 * T
#: A second call must be answered within this.
ANSWER_WITHIN = 1.0
CHILD_TIMEOUT = 90.0
RUNS = 5

SCENARIO = r"""
import sys
patched = sys.argv[3] == "patched"
if patched:
    import eventlet
    eventlet.monkey_patch()

import json
import time
import uuid

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.rpc import RPCClient, RPCServer, RPCTransport
from rabbit_ha_driver.options import from_url

url, ca_file, _, runner, threshold, idle = sys.argv[1:7]
threshold, idle = int(threshold), float(idle)
settings = from_url(url, ssl_ca_file=ca_file, heartbeat_timeout_threshold=threshold,
                    heartbeat_runner=runner, connection_name=f"tls-idle-{runner}",
                    **json.loads(sys.argv[7]))  # the session's option defaults (RabbitMQ 4)


class Echo:
    def echo(self, ctxt, value):
        return value


bus, recorder = ev.EventBus(), ev.Recorder()
bus.subscribe(recorder)
bus.subscribe(ev.LogSubscriber())
topic = f"tls-idle-{uuid.uuid4().hex[:8]}"
server = RPCServer(settings, topic, "s1", [Echo()], start_timeout=10.0)
server.start()
client = RPCClient(RPCTransport(settings, events=bus), topic, timeout=10.0)


def timed_call(value):
    began = time.monotonic()
    try:
        ok = client.call({}, "echo", value=value) == value
    except Exception as error:
        ok = f"{type(error).__name__}: {error}"
    return ok, time.monotonic() - began


first, first_took = timed_call(1)
print("IDLE", flush=True)
time.sleep(idle)  # nothing but heartbeats flows (green sleep when patched)
second, second_took = timed_call(2)
lost = [str(e) for e in recorder.events if isinstance(e, ev.ConnectionLost)]
runners_used = sorted({e.runner for e in recorder.events if isinstance(e, ev.RunnerSelected)})
client.close()
server.stop()
server.wait(5)
print(json.dumps({"first": first, "first_took": first_took, "second": second,
                  "second_took": second_took, "lost": lost, "runners": runners_used}), flush=True)
"""

VARIANTS = {
    "native": ("native", "plain"),
    "native-patched": ("auto", "patched"),
    "green": ("green", "patched"),
}


@dataclasses.dataclass
class Run:
    variant: str
    second_took: float
    closes: int
    outcome: dict[str, Any]

    def line(self) -> str:
        o = self.outcome
        return (f"{self.variant:15s} first call {o['first_took']:5.2f}s  after {IDLE}s idle: "
                f"{'answered' if o['second'] is True else o['second']} in {self.second_took:5.2f}s  "
                f"missed-heartbeat closes {self.closes}  connections lost {len(o['lost'])}  "
                f"runners {o['runners']}")


def tls_url(cluster: Any) -> str:
    return f"amqps://guest:guest@localhost:{cluster.nodes[0].tls_port}/"


def idle_over_tls(cluster: Any, variant: str) -> Run:
    runner, patched = VARIANTS[variant]
    before = cluster.missed_heartbeat_closes()
    child = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c", SCENARIO, tls_url(cluster), cluster.tls.ca_file,
         patched, runner, str(T), str(IDLE), json.dumps(library_defaults())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(CHILD_TIMEOUT, child.kill)
    watchdog.start()
    try:
        stdout, stderr = child.communicate()
    finally:
        watchdog.cancel()
    assert child.returncode == 0, f"scenario failed:\n{stdout}\n{stderr[-4000:]}"
    outcome = json.loads([x for x in stdout.splitlines() if x.startswith("{")][-1])
    time.sleep(1.0)  # the broker's log line may trail the close
    closes = cluster.missed_heartbeat_closes() - before
    return Run(variant, outcome["second_took"], closes, outcome)


def check(run: Run) -> None:
    o = run.outcome
    assert o["first"] is True, run.line()
    assert o["second"] is True, run.line()
    assert run.second_took <= ANSWER_WITHIN, run.line()
    assert run.closes == 0, run.line()
    assert o["lost"] == [], run.line()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_idle_tls_connections_keep_their_heartbeats(cluster, variant):
    run = idle_over_tls(cluster, variant)
    print(run.line())
    check(run)


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_figures_idle_tls_connections(cluster, variant):
    runs = []
    for i in range(RUNS):
        run = idle_over_tls(cluster, variant)
        runs.append(run)
        print(f"run {i + 1}: {run.line()}", flush=True)
    took = sorted(r.second_took for r in runs)
    print(f"{variant}: TLS, T={T}s, {IDLE}s idle, {RUNS} runs: second call "
          f"median {took[len(took) // 2]:.3f}s max {took[-1]:.3f}s (bound {ANSWER_WITHIN}s); "
          f"missed-heartbeat closes {sum(r.closes for r in runs)}; "
          f"connections lost {sum(len(r.outcome['lost']) for r in runs)}")
    for run in runs:
        check(run)

"""The ``rabbit-ha`` command against the real cluster, run as an operator would.

Each test runs ``python -m rabbit_ha_driver.cli`` in a subprocess and judges
its exit status and output: ``check`` on a healthy cluster, with one node
down and with a wrong password; ``drill`` for a few seconds.
"""

from __future__ import annotations

import re
import subprocess
import sys

from rabbit_ha_driver.options import from_url

from .helpers.faults import config_file_args
from .helpers.probes import wait_for


def rabbit_ha(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    # The command, then the session's option defaults (RabbitMQ 4), then the rest.
    args = (*args[:1], *config_file_args(), *args[1:])
    result = subprocess.run([sys.executable, "-m", "rabbit_ha_driver.cli", *args],
                            capture_output=True, text=True, timeout=timeout, check=False)
    print(result.stdout, result.stderr, sep="\n")
    return result


def test_check_reports_every_host_and_a_round_trip(cluster):
    result = rabbit_ha("check", "--url", cluster.url())
    assert result.returncode == 0
    out = result.stdout
    settings = from_url(cluster.url())
    for node in cluster.nodes:
        assert re.search(rf"ok   {node.address}: connected in [\d.]+ ms to RabbitMQ [34]\.", out), node
    # The library asks for H = T // 2 with the default T = 30.
    expected = max(1, settings.heartbeat_timeout_threshold // 2)
    assert out.count(f"heartbeat: negotiated {expected}s (asked {expected}s") == 3
    assert out.count("heartbeat runner: native") == 3
    assert out.count("SO_KEEPALIVE=on TCP_KEEPIDLE=") == 3 and "TCP_USER_TIMEOUT=" in out
    assert re.search(r"ok   round trip of a call on private topic rabbit-ha-check-\w+: "
                     r"first [\d.]+ ms .* median [\d.]+ ms", out)
    assert out.rstrip().endswith("check passed")
    # Its private queues are gone.
    def leftovers() -> list[str]:
        return [q["name"] for q in cluster.api("GET", "/api/queues")
                if q["name"].startswith("rabbit-ha-check-")]

    assert wait_for(lambda: not leftovers(), 3, interval=0.2), leftovers()


def test_check_names_a_node_that_is_down_and_fails(cluster):
    down = cluster.nodes[2]
    cluster.kill(2)
    result = rabbit_ha("check", "--url", cluster.url(), "--timeout", "2")
    assert result.returncode == 1
    out = result.stdout
    assert f"FAIL {down.address}: cannot connect" in out
    assert f"ok   {cluster.nodes[0].address}" in out
    assert "ok   round trip" in out  # the other nodes still serve
    assert out.rstrip().endswith(f"check failed: {down.address}")


def test_check_with_a_wrong_password_says_so(cluster):
    url = cluster.url(nodes=[cluster.nodes[0]]).replace("guest:guest@", "guest:wrong-secret@")
    result = rabbit_ha("check", "--url", url)
    assert result.returncode == 1
    assert f"FAIL {cluster.nodes[0].address}: authentication refused for user 'guest'" in result.stdout
    assert "wrong-secret" not in result.stdout + result.stderr


def test_drill_on_the_cluster_reports_no_outage(cluster):
    result = rabbit_ha("drill", "--url", cluster.url(), "--duration", "3", "--interval", "0.1")
    assert result.returncode == 0
    progress = [line for line in result.stdout.splitlines() if re.match(r"\s+\ds  calls", line)]
    assert len(progress) == 3
    assert re.search(r"^\d+ calls, 0 failed, latency p50 [\d.]+ ms", result.stdout, re.M)
    assert "no outage" in result.stdout

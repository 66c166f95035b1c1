"""Reading the broker for ``rabbit-ha bench --scale``: the management HTTP API.

What the footprint figures (:mod:`benchmarks.scale.footprint`) need, summed
over every node of the cluster:

* connections, channels, consumers: the lengths of ``/api/connections``,
  ``/api/channels`` and ``/api/consumers`` (the management plugin lists the
  whole cluster's objects there, from the moment they are made);
* queues: the length of ``/api/queues`` (every vhost);
* Erlang processes: ``proc_used`` of every node in ``/api/nodes``, refreshed
  by each node every 5 s (the management plugin's node statistics), so a
  reading taken right after a change may be up to 5 s old: the footprint
  samples for longer than that and takes medians (:func:`median_totals`);
* memory: what clients' objects hold (:func:`client_memory`: the
  connection, channel and queue processes and the statistics on them, from
  each node's memory breakdown, ``/api/nodes/NODE?memory=true``, computed
  when asked). The nodes' whole memory (``mem_used``, RSS) moves by tens of
  MB with garbage collection and with what an earlier run left to free,
  more than ten services add, so it is kept only as
  ``total_memory_bytes`` for the storm's peak.
* connection churn: successive lists of ``/api/connections`` (their names);
  the churn counters of ``/api/overview`` count over a sliding window only
  in RabbitMQ 3.10 and are not used.

A node whose management agent does not report (``mem_used`` missing from
``/api/nodes``; RabbitMQ 3.10's ``rabbit_mgmt_external_stats`` was seen to
crash under load) makes a reading fail rather than come out too low.

The management port is the AMQP port + 20 in ``tools/rabbit_cluster.py``'s
layout; :func:`endpoint` reads host, credentials and vhost from the transport
URL's first host. Standard library only.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import statistics
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: The management port is the AMQP port plus this (tools/rabbit_cluster.py).
MANAGEMENT_OFFSET = 20
#: The figures of :class:`Totals`, in the order the output lists them.
FIGURES = ("connections", "channels", "queues", "consumers", "erlang_processes", "memory_bytes")


class BrokerError(RuntimeError):
    """The management API could not be read, or answered something unexpected."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where the management API of a cluster answers, and as whom."""

    host: str
    port: int
    user: str
    password: str
    vhost: str

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def endpoint(url: str, management_port: int | None = None) -> Endpoint:
    """The management API of ``url``'s first host (AMQP port + 20 unless given).

    ``rabbit://u:p@h1:5672,u:p@h2:5673/vhost`` -> h1, 5692, u, p, ``vhost``
    (``/`` when the URL names none).
    """
    if "://" not in url:
        raise BrokerError(f"not a transport URL: {url!r}")
    rest = url.split("://", 1)[1]
    netloc, _, path = rest.partition("/")
    path = path.split("?", 1)[0]
    first = netloc.split(",", 1)[0]
    credentials, _, hostport = first.rpartition("@")
    user, _, password = credentials.partition(":")
    if hostport.startswith("["):
        host, _, after = hostport[1:].partition("]")
        port_text = after.lstrip(":")
    else:
        host, _, port_text = hostport.partition(":")
    if not host:
        raise BrokerError(f"no host in transport URL {url!r}")
    try:
        amqp_port = int(port_text) if port_text else 5672
    except ValueError:
        raise BrokerError(f"bad port {port_text!r} in transport URL {url!r}") from None
    return Endpoint(
        host=host,
        port=management_port if management_port is not None else amqp_port + MANAGEMENT_OFFSET,
        user=urllib.parse.unquote(user) or "guest",
        password=urllib.parse.unquote(password) or "guest",
        vhost=urllib.parse.unquote(path) or "/",
    )


@dataclasses.dataclass(frozen=True)
class Totals:
    """The broker's totals over all nodes at one moment."""

    connections: float
    channels: float
    queues: float
    consumers: float
    erlang_processes: float
    memory_bytes: float
    #: ``mem_used`` summed (the nodes' whole memory; not a per-service figure).
    total_memory_bytes: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in FIGURES}


def node_sums(nodes: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """``(memory bytes, Erlang processes)`` summed over ``/api/nodes``.

    A node that is not running (or whose statistics are not there yet) has no
    ``mem_used``: that is an error, as a sum without it would be too low.
    """
    if not nodes:
        raise BrokerError("the management API lists no nodes")
    memory = processes = 0
    for node in nodes:
        name = node.get("name", "?")
        if node.get("running") is False:
            raise BrokerError(f"node {name} is not running")
        try:
            memory += int(node["mem_used"])
            processes += int(node["proc_used"])
        except (KeyError, TypeError, ValueError):
            raise BrokerError(
                f"node {name} reports no mem_used/proc_used: {dict(node)} (just started, or its "
                "management agent stopped reporting: RabbitMQ 3.10's rabbit_mgmt_external_stats "
                "was seen to crash under load; restart the node)") from None
    return memory, processes


def client_memory(breakdown: Mapping[str, Any]) -> int:
    """Bytes of one node's memory breakdown (``/api/nodes/NODE?memory=true``)
    that clients' objects hold: every ``connection_*`` category (readers,
    writers, channels, other), every queue process category (``*_procs`` but
    ``other_proc``), and the statistics kept on them (``metrics``, ``mgmt_db``)."""
    total = 0
    for key, value in breakdown.items():
        wanted = (key.startswith("connection_") or key in ("metrics", "mgmt_db")
                  or (key.endswith("_procs") and key != "other_proc"))
        if wanted and isinstance(value, int) and not isinstance(value, bool):
            total += value
    return total


def totals_from(nodes: Sequence[Mapping[str, Any]], connections: Sequence[Any],
                channels: Sequence[Any], queues: Sequence[Any],
                consumers: Sequence[Any],
                breakdowns: Sequence[Mapping[str, Any]] = ()) -> Totals:
    """:class:`Totals` from the answers of the five list endpoints and the
    nodes' memory breakdowns (``memory_bytes``: :func:`client_memory` summed;
    without breakdowns, ``mem_used`` summed)."""
    memory, processes = node_sums(nodes)
    client = sum(client_memory(b) for b in breakdowns) if breakdowns else memory
    return Totals(connections=len(connections), channels=len(channels), queues=len(queues),
                  consumers=len(consumers), erlang_processes=processes, memory_bytes=client,
                  total_memory_bytes=memory)


def median_totals(samples: Sequence[Totals]) -> Totals:
    """Figure by figure, the median of ``samples``."""
    if not samples:
        raise BrokerError("no samples of the broker's totals")
    return Totals(**{name: float(statistics.median(getattr(s, name) for s in samples))
                     for name in (*FIGURES, "total_memory_bytes")})


def per_service(measured: Totals, baseline: Totals, count: int) -> dict[str, float]:
    """``(measured - baseline) / count`` for every figure."""
    if count <= 0:
        raise ValueError(f"a footprint needs at least one service, not {count}")
    return {name: (getattr(measured, name) - getattr(baseline, name)) / count for name in FIGURES}


def connection_names(connections: Iterable[Mapping[str, Any]]) -> set[str]:
    """The names of ``/api/connections`` items (the broker's, unique while open)."""
    return {str(c["name"]) for c in connections if "name" in c}


def queue_key(queue: Mapping[str, Any]) -> tuple[str, str]:
    """``(vhost, name)`` of an item of ``/api/queues`` or of a consumer's ``queue``."""
    return str(queue.get("vhost", "/")), str(queue["name"])


def consumed_queues(consumers: Iterable[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """The queues that have at least one consumer, from ``/api/consumers``."""
    found = set()
    for consumer in consumers:
        queue = consumer.get("queue")
        if isinstance(queue, Mapping) and "name" in queue:
            found.add(queue_key(queue))
    return found


def expires_s(queue: Mapping[str, Any]) -> float | None:
    """A queue's ``x-expires`` in seconds, or None when the broker never deletes it."""
    arguments = queue.get("arguments") or {}
    value = arguments.get("x-expires") if isinstance(arguments, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value / 1000.0


class Management:
    """A client of one cluster's management HTTP API."""

    def __init__(self, where: Endpoint, timeout: float = 10.0) -> None:
        self.where = where
        self.timeout = timeout
        token = base64.b64encode(f"{where.user}:{where.password}".encode()).decode("ascii")
        self._auth = f"Basic {token}"

    def request(self, method: str, path: str) -> Any:
        request = urllib.request.Request(self.where.base + path, method=method,
                                         headers={"Authorization": self._auth})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", "replace")
            raise BrokerError(f"{method} {path} -> HTTP {error.code}: {detail}") from None
        except (OSError, urllib.error.URLError) as error:
            raise BrokerError(f"{method} {self.where.base}{path}: {error}") from None
        return json.loads(body) if body else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def nodes(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self.get("/api/nodes?columns=name,running,mem_used,proc_used")
        return answer

    def connections(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self.get("/api/connections?columns=name")
        return answer

    def channels(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self.get("/api/channels?columns=name")
        return answer

    def queues(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self.get("/api/queues?columns=name,vhost,arguments")
        return answer

    def consumers(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self.get("/api/consumers")
        return answer

    def memory_breakdown(self, node: str) -> dict[str, Any]:
        """One node's memory by category, computed when asked (not lagging)."""
        path = f"/api/nodes/{urllib.parse.quote(node, safe='')}?memory=true&columns=memory"
        answer = self.get(path)
        memory = answer.get("memory") if isinstance(answer, dict) else None
        if not isinstance(memory, dict):
            raise BrokerError(f"no memory breakdown for node {node}")
        return memory

    def totals(self) -> Totals:
        """The broker's totals now (processes and ``mem_used`` up to 5 s old)."""
        nodes = self.nodes()
        breakdowns = [self.memory_breakdown(str(n["name"])) for n in nodes]
        return totals_from(nodes, self.connections(), self.channels(), self.queues(),
                           self.consumers(), breakdowns)

    def memory_bytes(self) -> int:
        return node_sums(self.nodes())[0]

    def delete_queue(self, vhost: str, name: str) -> None:
        """Delete a queue; one already gone is not an error."""
        path = f"/api/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(name, safe='')}"
        try:
            self.request("DELETE", path)
        except BrokerError as error:
            if "HTTP 404" not in str(error):
                raise

"""Fault episodes on the test cluster: apply, hold, undo; each records itself.

An :class:`Injector` runs one planned :class:`~.plan.Episode` on the calling
thread and writes a ``fault`` record (class, detail, applied ``t0``, undone
``t1``, error) whatever happens. Every fault is undone in a ``finally``: the
iptables rules are removed, a frozen node thawed, the memory watermark and the
exchange restored, a killed node started again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from ..helpers.faults import SilentDropper, broker_connections
from .plan import Episode
from .records import RecordFile

LOG = logging.getLogger("chaos.injectors")

#: The topic exchange of every chaos call and cast (oslo.messaging's default
#: control_exchange, which the library uses too).
TOPIC_EXCHANGE = "openstack"
ACK_TIMEOUT_TEXT = "delivery acknowledgement on channel"


class Injector:
    """Runs episodes against ``cluster``; ``workers`` maps names to pids and
    their topics, ``sender`` casts the slow bursts of ``ack_timeout``."""

    def __init__(self, cluster: Any, records: RecordFile, *, pids: dict[str, int],
                 server_topics: dict[str, str], max_workers: int, sender: Any) -> None:
        self.cluster = cluster
        self.records = records
        self.pids = pids
        self.server_topics = server_topics
        self.max_workers = max_workers
        self.sender = sender
        self.dropper = SilentDropper(cluster.client_ports())
        self._handlers: dict[str, Callable[[dict[str, Any]], str]] = {
            "drop_server": self._drop, "drop_caller": self._drop,
            "kill_node": self._kill_node, "freeze_node": self._freeze_node,
            "delete_queue": self._delete_queue, "ack_timeout": self._ack_timeout,
            "missing_exchange": self._missing_exchange, "memory_alarm": self._memory_alarm,
            "full_restart": self._full_restart,
        }

    def run(self, episode: Episode) -> None:
        t0 = time.time()
        detail, err = "", None
        LOG.info("fault %s", episode)
        try:
            detail = self._handlers[episode.cls](episode.args)
        except Exception as error:
            err = f"{type(error).__name__}: {error}"[:500]
            LOG.exception("fault %s failed", episode)
        finally:
            self.records.write("fault", cls=episode.cls, index=episode.index, detail=detail,
                               t0=t0, t1=time.time(), err=err)
            LOG.info("fault %s over after %.1fs: %s%s", episode.cls, time.time() - t0, detail,
                     f" (error: {err})" if err else "")

    def close(self) -> None:
        self.dropper.remove_all()

    # -- the fault classes ------------------------------------------------------

    def _drop(self, args: dict[str, Any]) -> str:
        target = args["target"]
        found = sorted(broker_connections(self.pids[target], self.cluster.client_ports()))
        if not found:
            return f"target={target}: no connection to drop"
        chosen = found if args["all"] else [found[args["pick"] % len(found)]]
        drops = []
        try:
            for local, remote in chosen:
                drops.append(self.dropper(local, remote))
            time.sleep(args["hold"])
        finally:
            for drop in drops:
                drop.remove()
        return (f"target={target} dropped {len(chosen)} of {len(found)} connections "
                f"{[f'{a}->{b}' for a, b in chosen]} for {args['hold']:.0f}s")

    def _kill_node(self, args: dict[str, Any]) -> str:
        node = self.cluster.nodes[args["node"]]
        self.cluster.kill(node)
        try:
            time.sleep(args["down"])
        finally:
            began = time.monotonic()
            self.cluster.start(node)
        return f"node={node.name} down {args['down']:.1f}s, restart took {time.monotonic() - began:.1f}s"

    def _freeze_node(self, args: dict[str, Any]) -> str:
        node = self.cluster.nodes[args["node"]]
        with self.cluster.frozen(node, args["seconds"]):
            pass
        return f"node={node.name} frozen {args['seconds']:.1f}s"

    def _delete_queue(self, args: dict[str, Any]) -> str:
        server, kind = args["target"], args["queue"]
        topic = self.server_topics[server]
        if kind == "topic":
            name = topic
        elif kind == "server":
            name = f"{topic}.{server}"
        else:
            queues = sorted(q["name"] for q in self.cluster.api("GET", "/api/queues?columns=name")
                            if q["name"].startswith(f"{topic}_fanout_"))
            if not queues:
                return f"queue={kind} topic={topic}: no fanout queue found"
            name = queues[sum(map(ord, server)) % len(queues)]
        self.cluster.delete_queue(name, missing_ok=True)
        return f"queue={kind} topic={topic} server={server} name={name}"

    def _ack_timeout(self, args: dict[str, Any]) -> str:
        server = args["target"]
        topic = self.server_topics[server]
        before = self._log_count(ACK_TIMEOUT_TEXT)
        burst = self.max_workers * 2 + 2
        pending = [self.sender.cast("ack", topic, server=server, method="slow",
                                    seconds=args["seconds"]) for _ in range(burst)]
        for receipt, entry in pending:
            self.sender.settle(receipt, entry)
        # The last of the burst runs after the others: wait until it could have.
        time.sleep(math.ceil(burst / self.max_workers) * args["seconds"] + 1.0)
        closes = self._log_count(ACK_TIMEOUT_TEXT) - before
        return (f"topic={topic} server={server}: {burst} casts of {args['seconds']:.0f}s to "
                f"{self.max_workers} workers; broker logged {closes} acknowledgement timeout(s)")

    def _missing_exchange(self, args: dict[str, Any]) -> str:
        with self.cluster.exchange_missing(TOPIC_EXCHANGE) as saved:
            time.sleep(args["seconds"])
        bindings = len(saved["bindings"]) if saved else 0
        return f"exchange {TOPIC_EXCHANGE!r} missing {args['seconds']:.1f}s ({bindings} bindings restored)"

    def _memory_alarm(self, args: dict[str, Any]) -> str:
        nodes = self.cluster.nodes
        node = next(n for i in range(len(nodes))
                    if (n := nodes[(args["node"] + i) % len(nodes)]).pid is not None
                    and not self.cluster.is_frozen(n))
        with self.cluster.memory_alarm(node):
            time.sleep(args["seconds"])
        return f"node={node.name} alarm {args['seconds']:.1f}s"

    def _full_restart(self, args: dict[str, Any]) -> str:
        self.cluster.kill_all()
        try:
            time.sleep(args["down"])
        finally:
            began = time.monotonic()
            self.cluster.start_all()
        return f"all nodes down {args['down']:.1f}s, start took {time.monotonic() - began:.1f}s"

    def _log_count(self, text: str) -> int:
        total = 0
        for node in self.cluster.nodes:
            with contextlib.suppress(FileNotFoundError), open(node.log_file, errors="replace") as log:
                total += sum(text in line for line in log)
        return total

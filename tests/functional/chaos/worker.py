"""The chaos run's worker processes: RPC servers and callers.

``python -m tests.functional.chaos.worker server|caller CONFIG_JSON``. Each
worker writes its records (:mod:`.records`) and its library log to files
named in the config, and stops cleanly on SIGTERM. A caller runs its final
probe (a call with a 1 s timeout to every server) on SIGUSR1; every worker
writes the names of its threads on SIGUSR2.

An eventlet server monkey-patches itself before importing anything else:
that is why servers run in processes of their own.

Only the library's public API is used: ``RPCServer``, ``RPCTransport``,
``RPCClient.call`` / ``cast_async`` / ``prepare`` and ``Receipt.result``.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import sys
import threading
import time
import traceback
from typing import Any

from .records import RecordFile

LOG = logging.getLogger("chaos.worker")

#: Seconds a cast's receipt may take to settle (sending and the confirm).
CAST_TIMEOUT = 10.0


class _Flags:
    """Set from signal handlers; polled (a plain attribute works under eventlet too)."""

    stop = False
    probe = False
    threads = False


def _on_signals() -> None:
    def stop(signum: int, frame: Any) -> None:
        _Flags.stop = True

    def probe(signum: int, frame: Any) -> None:
        _Flags.probe = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    def threads(signum: int, frame: Any) -> None:
        _Flags.threads = True

    signal.signal(signal.SIGUSR1, probe)
    signal.signal(signal.SIGUSR2, threads)


class _Memory:
    """With ``CHAOS_TRACEMALLOC=1``: where memory grew since the first report.

    Off by default (tracing slows every allocation); turned on to find what
    an RSS violation is made of.
    """

    first: Any = None

    @classmethod
    def start(cls) -> None:
        import os
        import tracemalloc

        if os.environ.get("CHAOS_TRACEMALLOC") == "1":
            tracemalloc.start(12)

    @classmethod
    def report(cls) -> None:
        import tracemalloc

        if not tracemalloc.is_tracing():
            return
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)])
        if cls.first is None:
            cls.first = snapshot
            return
        top = snapshot.compare_to(cls.first, "traceback")[:8]
        LOG.warning("memory grown since the first report (%.1f MB traced):\n%s",
                    sum(s.size for s in snapshot.statistics("filename")) / 1e6,
                    "\n".join(f"{stat.size_diff / 1024:+.0f} kB {stat.count_diff:+d} blocks\n  "
                              + "\n  ".join(stat.traceback.format()[-12:]) for stat in top))


def _other_tasks() -> list[str]:
    """The OS threads of this process that are no Python thread, described by
    the kernel (name, state, where it waits): a C library's or a leak's."""
    import os

    python = {getattr(t, "native_id", None) for t in threading.enumerate()}  # green: none
    found = []
    for tid in sorted(int(t) for t in os.listdir("/proc/self/task")):
        if tid in python:
            continue
        base = f"/proc/self/task/{tid}"
        try:
            with open(f"{base}/stat") as stat, open(f"{base}/wchan") as wchan:
                fields = stat.read().rsplit(")", 1)[1].split()
                found.append(f"{tid} state {fields[0]} wchan {wchan.read().strip() or '-'}")
        except OSError:
            continue
    return found


def _report_threads(records: RecordFile) -> None:
    """On SIGUSR2: the names of this process's threads, to tell which one leaked."""
    if _Flags.threads:
        _Flags.threads = False
        records.write("threads", t=time.time(),
                      names=sorted(t.name for t in threading.enumerate()),
                      others=_other_tasks())
        _Memory.report()


def _setup_logging(path: str) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s.%(msecs)03d %(process)d %(threadName)s %(levelname)s %(name)s: %(message)s",
        "%H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _settings(cfg: dict[str, Any], options: dict[str, Any]) -> Any:
    from rabbit_ha_driver.options import from_url

    return from_url(cfg["url"], **{**cfg.get("options", {}), **options})


def _error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:400]


# -- servers -------------------------------------------------------------------


class Endpoint:
    """``echo`` answers calls; ``record`` and ``slow`` write down each cast handled."""

    def __init__(self, name: str, records: RecordFile) -> None:
        self.name = name
        self.records = records

    def echo(self, ctxt: Any, token: str) -> str:
        return token

    def record(self, ctxt: Any, id: str) -> None:
        self.records.write("handled", id=id, server=self.name, t=time.time())

    def slow(self, ctxt: Any, id: str, seconds: float) -> None:
        time.sleep(seconds)  # green under eventlet
        self.records.write("handled", id=id, server=self.name, t=time.time())


def serve(cfg: dict[str, Any]) -> int:
    from rabbit_ha_driver.rpc import RPCServer

    records = RecordFile(cfg["records"])
    settings = _settings(cfg, {"connection_name": f"chaos-{cfg['name']}"})
    server = RPCServer(settings, cfg["topic"], cfg["name"], [Endpoint(cfg["name"], records)],
                       executor=cfg["executor"], max_workers=cfg["max_workers"],
                       start_timeout=30.0)
    server.start()
    records.write("ready", name=cfg["name"], t=time.time())
    while not _Flags.stop:
        _report_threads(records)
        time.sleep(0.2)
    began = time.time()
    server.stop()
    server.wait(10.0)
    records.write("exit", name=cfg["name"], t=time.time(), took=time.time() - began)
    return 0


# -- callers -------------------------------------------------------------------


class StallWatch:
    """Records when this process got no CPU for a while (a loaded machine).

    A thread sleeps ``tick`` seconds over and over; waking more than
    ``threshold`` late means no thread of the process could have run either.
    An overrun during such a stall says the machine was starved, which the
    checker prints beside the violation (it stays a violation).
    """

    def __init__(self, records: RecordFile, name: str, tick: float = 0.05,
                 threshold: float = 0.25) -> None:
        self.records = records
        self.name = name
        self.tick = tick
        self.threshold = threshold
        threading.Thread(target=self._watch, name="stall-watch", daemon=True).start()

    def _watch(self) -> None:
        while not _Flags.stop:
            before = time.monotonic()
            time.sleep(self.tick)
            late = time.monotonic() - before - self.tick
            if late > self.threshold:
                now = time.time()
                self.records.write("stall", t0=now - late, t1=now, seconds=late,
                                   caller=self.name)


class OverrunWatch:
    """Logs the stack of a call still running past its timeout plus ``grace``.

    An overrun names the invariant broken; the stack names the wait that
    broke it (once per call, at most ``limit`` per process).
    """

    def __init__(self, grace: float = 0.3, limit: int = 20) -> None:
        self.grace = grace
        self.limit = limit
        self._calls: dict[int, tuple[str, float]] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, name="overrun-watch", daemon=True).start()

    def begin(self, token: str, timeout: float) -> None:
        with self._lock:
            self._calls[threading.get_ident()] = (token, time.monotonic() + timeout)

    def end(self) -> None:
        with self._lock:
            self._calls.pop(threading.get_ident(), None)

    def _watch(self) -> None:
        seen: set[str] = set()
        while not _Flags.stop and len(seen) < self.limit:
            time.sleep(0.1)
            now = time.monotonic()
            with self._lock:
                late = [(ident, token) for ident, (token, deadline) in self._calls.items()
                        if now > deadline + self.grace and token not in seen]
            frames = sys._current_frames() if late else {}
            for ident, token in late:
                seen.add(token)
                if ident in frames:
                    LOG.warning("call %s overruns its timeout; its thread is at:\n%s", token,
                                "".join(traceback.format_stack(frames[ident])))


class Sender:
    """Calls and casts to the chaos topics on this process's transports."""

    def __init__(self, cfg: dict[str, Any], name: str, records: RecordFile) -> None:
        from rabbit_ha_driver.rpc import RPCClient, RPCTransport

        self.name = name
        self.records = records
        self.call_timeout = float(cfg["call_timeout"])
        self.servers: dict[str, list[str]] = cfg["servers"]
        self.transports = {}
        self.clients = {}
        for topic, options in cfg["topics"].items():
            transport = RPCTransport(_settings(cfg, {**options,
                                                     "connection_name": f"chaos-{name}-{topic}"}))
            self.transports[topic] = transport
            self.clients[topic] = RPCClient(transport, topic, timeout=self.call_timeout)
        self._count = 0
        self._lock = threading.Lock()
        self.watch = OverrunWatch()
        self.stalls = StallWatch(records, name)

    def new_id(self, thread: str) -> str:
        with self._lock:
            self._count += 1
            return f"{self.name}.{thread}.{self._count}"

    def call(self, thread: str, topic: str, server: str | None = None,
             timeout: float | None = None, kind: str = "call") -> bool:
        client = self.clients[topic].prepare(server=server, timeout=timeout or self.call_timeout)
        token = self.new_id(thread)
        t0 = time.time()
        answer: Any = None
        err = None
        self.watch.begin(token, client.timeout)
        try:
            answer = client.call({}, "echo", token=token)
        except Exception as error:
            err = _error(error)
        finally:
            self.watch.end()
        ok = err is None and answer == token
        self.records.write(kind, id=token, topic=topic, server=server, t0=t0, t1=time.time(),
                           timeout=client.timeout, ok=ok, wrong=err is None and not ok, err=err,
                           caller=self.name)
        return ok

    def cast(self, thread: str, topic: str, *, fanout: bool = False, server: str | None = None,
             method: str = "record", **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        client = self.clients[topic].prepare(fanout=fanout, server=server, timeout=CAST_TIMEOUT)
        cast_id = self.new_id(thread)
        entry = {"id": cast_id, "topic": topic, "fanout": fanout, "server": server,
                 "t0": time.time(), "timeout": CAST_TIMEOUT, "caller": self.name}
        try:
            receipt = client.cast_async({}, method, id=cast_id, **kwargs)
        except Exception as error:
            self.records.write("cast", **entry, t1=time.time(), sent=False, err=_error(error))
            return None, entry
        return receipt, entry

    def settle(self, receipt: Any, entry: dict[str, Any]) -> None:
        if receipt is None:
            return
        sent, err = False, None
        try:
            sent = bool(receipt.result())
        except Exception as error:
            err = _error(error)
        self.records.write("cast", **entry, t1=time.time(), sent=sent, err=err)

    def close(self) -> None:
        for transport in self.transports.values():
            transport.close()


class CallerThread(threading.Thread):
    """Calls, directed calls, casts and fanout casts at random, a little apart."""

    def __init__(self, sender: Sender, index: int, seed: int) -> None:
        super().__init__(name=f"caller-{index}", daemon=True)
        self.sender = sender
        self.tag = f"t{index}"
        self.rng = random.Random(f"{seed}-{sender.name}-{index}")
        self.pending: list[tuple[Any, dict[str, Any]]] = []

    def run(self) -> None:
        topics = sorted(self.sender.clients)
        while not _Flags.stop:
            topic = self.rng.choice(topics)
            roll = self.rng.random()
            try:
                if roll < 0.45:
                    self.sender.call(self.tag, topic)
                elif roll < 0.55:
                    self.sender.call(self.tag, topic, self.rng.choice(self.sender.servers[topic]))
                else:
                    self.pending.append(self.sender.cast(self.tag, topic, fanout=roll >= 0.85))
                    if len(self.pending) >= 4:
                        self.settle()
            except Exception:  # a bug of this harness must not end the thread quietly
                LOG.exception("caller thread %s", self.tag)
            time.sleep(self.rng.uniform(0.05, 0.25))
        self.settle()

    def settle(self) -> None:
        pending, self.pending = self.pending, []
        for receipt, entry in pending:
            self.sender.settle(receipt, entry)


def call_loop(cfg: dict[str, Any]) -> int:
    records = RecordFile(cfg["records"])
    sender = Sender(cfg, cfg["name"], records)
    threads = [CallerThread(sender, i, cfg["seed"]) for i in range(cfg["threads"])]
    for thread in threads:
        thread.start()
    records.write("ready", name=cfg["name"], t=time.time())
    while not _Flags.stop:
        if _Flags.probe:
            _Flags.probe = False
            for topic, servers in sorted(sender.servers.items()):
                for server in servers:
                    sender.call("probe", topic, server, timeout=1.0, kind="probe")
            records.write("probe_done", name=cfg["name"], t=time.time())
        _report_threads(records)
        time.sleep(0.1)
    began = time.time()
    for thread in threads:
        thread.join(sender.call_timeout + CAST_TIMEOUT + 5)
    sender.close()
    records.write("exit", name=cfg["name"], t=time.time(), took=time.time() - began)
    return 0


def main(argv: list[str]) -> int:
    role, cfg = argv[0], json.loads(argv[1])
    if role == "server" and cfg["executor"] == "eventlet":
        import eventlet

        eventlet.monkey_patch()
    _setup_logging(cfg["log"])
    _Memory.start()
    _on_signals()
    return serve(cfg) if role == "server" else call_loop(cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

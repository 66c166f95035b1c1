"""``rabbit-ha demo``: call, cast, fanout and notify working in one process.

It starts two RPC servers and a notification listener in this process, then
shows a call, a call to one server, a remote error, a cast, a fanout cast and
a notification, printing each step; it exits 0 when every step did what it
should. Without ``--url`` or a configured URL it runs on kombu's in-process
``memory://`` transport, so it needs no broker.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
import uuid
from typing import Any, TextIO

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.cli._common import load_settings
from rabbit_ha_driver.cli._server import remove_queues
from rabbit_ha_driver.settings import Settings


class _DemoEndpoint:
    """What the demo servers expose."""

    def __init__(self, name: str, seen: _Seen) -> None:
        self.name = name
        self.seen = seen

    def echo(self, ctxt: dict[str, Any], text: str) -> dict[str, str]:
        return {"server": self.name, "echo": text}

    def fail(self, ctxt: dict[str, Any]) -> None:
        raise ValueError(f"{self.name} refuses on purpose")

    def record(self, ctxt: dict[str, Any], tag: str) -> None:
        self.seen.add(tag, self.name)


class _NotificationEndpoint:
    def __init__(self, seen: _Seen) -> None:
        self.seen = seen

    def info(self, ctxt: dict[str, Any], publisher_id: str, event_type: str,
             payload: Any, metadata: dict[str, str]) -> None:
        self.seen.add(event_type, f"{publisher_id}:{payload}")


class _Seen:
    """Who handled what; lets the demo wait for asynchronous deliveries."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._by_tag: dict[str, list[str]] = {}

    def add(self, tag: str, who: str) -> None:
        with self._cond:
            self._by_tag.setdefault(tag, []).append(who)
            self._cond.notify_all()

    def wait(self, tag: str, count: int, timeout: float) -> list[str]:
        with self._cond:
            self._cond.wait_for(lambda: len(self._by_tag.get(tag, [])) >= count, timeout)
            return sorted(self._by_tag.get(tag, []))


@dataclasses.dataclass
class _Report:
    out: TextIO
    failures: int = 0

    def step(self, kind: str, what: str, outcome: str, ok: bool, started: float) -> None:
        ms = (time.monotonic() - started) * 1000
        mark = "ok  " if ok else "FAIL"
        print(f"  {mark} {kind:<7}{what:<34}-> {outcome}  ({ms:.0f} ms)", file=self.out)
        if not ok:
            self.failures += 1


def run_demo(settings: Settings, *, timeout: float = 10.0, out: TextIO | None = None) -> int:
    """Servers and a client in this process; 0 when every step worked."""
    out = out or sys.stdout
    from rabbit_ha_driver.rpc import NotificationServer, Notifier, RPCClient, RPCServer

    topic = f"rabbit-ha-demo-{uuid.uuid4().hex[:8]}"
    report = _Report(out)
    seen = _Seen()
    print(f"rabbit-ha demo on {settings.transport_url.redacted()}, topic {topic}", file=out)
    servers = [RPCServer(settings, topic, name, [_DemoEndpoint(name, seen)], start_timeout=timeout)
               for name in ("demo-a", "demo-b")]
    listener = NotificationServer(settings, [f"{topic}-notifications"],
                                  [_NotificationEndpoint(seen)], start_timeout=timeout)
    client = RPCClient(settings, topic, timeout=timeout)
    notifier = Notifier(client.transport, "rabbit-ha-demo", topics=[f"{topic}-notifications"],
                        timeout=timeout)
    started_servers: list[Any] = []
    try:
        for server in [*servers, listener]:
            server.start()
            started_servers.append(server)
        print("  started RPC servers demo-a and demo-b and a notification listener", file=out)
        _demo_steps(client, notifier, seen, report, timeout)
    except exc.RabbitHAError as error:
        print(f"  FAIL   {type(error).__name__}: {error}", file=out)
        report.failures += 1
    finally:
        stoppers = [threading.Thread(target=server.stop) for server in started_servers]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        for server in started_servers:
            server.wait(timeout)
        remove_queues(settings, (topic, f"{topic}.demo-a", f"{topic}.demo-b",
                                  f"{topic}-notifications.info"), timeout)
        notifier.close()
        client.close()
    if report.failures:
        print(f"demo failed: {report.failures} step(s) did not work", file=out)
        return 1
    print("demo finished: call, cast, fanout and notify all work", file=out)
    return 0


def _demo_steps(client: Any, notifier: Any, seen: _Seen, report: _Report, timeout: float) -> None:
    t = time.monotonic()
    result = client.call({"user": "demo"}, "echo", text="hello")
    report.step("call", "echo(text='hello')", repr(result),
                isinstance(result, dict) and result.get("echo") == "hello", t)

    t = time.monotonic()
    result = client.prepare(server="demo-b").call({}, "echo", text="just b")
    report.step("call", "echo(...) on server demo-b only", repr(result),
                isinstance(result, dict) and result.get("server") == "demo-b", t)

    t = time.monotonic()
    try:
        client.call({}, "fail")
        report.step("call", "fail()", "returned instead of raising", False, t)
    except exc.RemoteError as error:
        report.step("call", "fail()", f"RemoteError {error.exc_type}: {error.value}",
                    error.exc_type == "ValueError", t)

    t = time.monotonic()
    client.cast({}, "record", tag="cast")
    who = seen.wait("cast", 1, timeout)
    report.step("cast", "record(tag='cast')", f"handled by {', '.join(who) or 'nobody'}",
                len(who) == 1, t)

    t = time.monotonic()
    client.prepare(fanout=True).cast({}, "record", tag="fanout")
    who = seen.wait("fanout", 2, timeout)
    report.step("fanout", "record(tag='fanout')", f"handled by {', '.join(who) or 'nobody'}",
                who == ["demo-a", "demo-b"], t)

    t = time.monotonic()
    sent = notifier.info({}, "demo.happened", {"n": 1})
    who = seen.wait("demo.happened", 1, timeout) if sent else []
    report.step("notify", "info demo.happened {'n': 1}",
                f"received as {', '.join(who)}" if who else "not received", bool(who), t)


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``demo`` to the subcommands."""
    parser = subparsers.add_parser(
        "demo", parents=[common],
        help="show call, cast, fanout and notify working in one process",
        description="Start two RPC servers and a notification listener in this "
        "process and show a call, a call to one server, a remote error, a cast, "
        "a fanout cast and a notification. With no URL it runs on memory://, "
        "kombu's in-process transport; with --url (or a configured "
        "transport_url) against a real broker, leaving no queue behind.")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="bound on each step (default: 10)")
    parser.set_defaults(run=lambda args: run_demo(load_settings(args), timeout=args.timeout))

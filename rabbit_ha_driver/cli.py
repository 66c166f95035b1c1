"""The ``rabbit-ha`` command.

How this works: :func:`main` builds one argparse parser with a subcommand per
entry of :data:`COMMANDS`. Every subcommand shares the oslo.config-style
options (``--config-file``, ``--config-dir``) and ``--url``: the files are
read by oslo.config, the ``[rabbit_ha]`` group becomes frozen
:class:`~rabbit_ha_driver.settings.Settings`, and ``--url`` (when given)
replaces ``[rabbit_ha] transport_url``. A bad option stops the command with
exit status 2 and a message naming the option.

``demo`` starts two RPC servers and a notification listener in this process,
then shows a call, a call to one server, a remote error, a cast, a fanout cast
and a notification, printing each step; it exits 0 when every step did what
it should. Without ``--url`` or a configured URL it runs on kombu's in-process
``memory://`` transport, so it needs no broker.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from oslo_config import cfg

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver import settings as settings_mod
from rabbit_ha_driver.settings import Settings

LOG = logging.getLogger(__name__)

PROG = "rabbit-ha"


# -- shared options ----------------------------------------------------------------


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("configuration (as in other oslo.config programs)")
    group.add_argument(
        "--config-file", action="append", default=[], metavar="PATH",
        help="an oslo.config file whose [rabbit_ha] section configures the "
        "library (transport_url, heartbeat_timeout_threshold, ...). May be "
        "repeated; later files override earlier ones.")
    group.add_argument(
        "--config-dir", action="append", default=[], metavar="DIR",
        help="a directory of *.conf files, read in alphabetical order after "
        "the --config-file files. May be repeated.")
    group.add_argument(
        "--url", metavar="URL",
        help="transport URL, e.g. rabbit://user:pass@host1:5672,user:pass@host2:5672/ "
        "(overrides [rabbit_ha] transport_url; default memory://, kombu's "
        "in-process transport)")
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="log the library's activity to stderr (-vv: debug)")
    return common


def load_settings(args: argparse.Namespace) -> Settings:
    """Settings from the configuration files and ``--url``."""
    conf = cfg.ConfigOpts()
    cli: list[str] = []
    for path in args.config_file:
        cli += ["--config-file", path]
    for path in args.config_dir:
        cli += ["--config-dir", path]
    try:
        conf(args=cli, project="rabbit_ha_driver", prog=PROG, default_config_files=[],
             default_config_dirs=[], use_env=False)
    except cfg.Error as error:
        raise exc.ConfigurationError("--config-file", " ".join(cli), str(error)) from error
    return settings_mod.from_conf(conf, url=args.url)


# -- demo --------------------------------------------------------------------------


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
        _remove_demo_queues(settings, topic, timeout)
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


def _remove_demo_queues(settings: Settings, topic: str, timeout: float) -> None:
    """Delete the demo's shared queues so a real broker is left as it was."""
    from rabbit_ha_driver.connection import Connection, Deadline

    conn = Connection(settings, name=f"{PROG}:demo-cleanup")
    deadline = Deadline.after(min(2.0, timeout))
    try:
        for name in (topic, f"{topic}.demo-a", f"{topic}.demo-b", f"{topic}-notifications.info"):
            conn.delete_queue(name, deadline=deadline)
    except exc.RabbitHAError as error:
        LOG.info("demo queues not removed: %s", error)
    finally:
        conn.close()


def _add_demo(subparsers: Any, common: argparse.ArgumentParser) -> None:
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


#: Subcommands: each adds its parser (with the shared options as a parent)
#: and sets ``run(args) -> exit status``.
COMMANDS: list[Callable[[Any, argparse.ArgumentParser], None]] = [_add_demo]


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Tools for rabbit_ha_driver, a RabbitMQ RPC transport. Every "
        "command reads its configuration like other oslo.config programs: "
        "--config-file/--config-dir files with a [rabbit_ha] section, and --url "
        "for the transport URL.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(subparsers, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rabbit-ha``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            stream=sys.stderr)
    else:
        logging.basicConfig(level=logging.CRITICAL, stream=sys.stderr)
    try:
        status: int = args.run(args)
    except exc.ConfigurationError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())

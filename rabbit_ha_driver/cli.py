"""The ``rabbit-ha`` command.

How this works: :func:`main` builds one argparse parser with a subcommand per
entry of :data:`COMMANDS`. ``demo``, ``check`` and ``drill`` share the oslo.config-style
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

``check`` connects to each host of the URL on its own and prints what the
connection got (broker version, negotiated heartbeat, the heartbeat runner,
the TCP options in force on the socket), then starts a temporary RPC server on
a private topic and times calls to it. It exits 1 naming each host that was
down or refused us, and the step that failed.

``drill`` keeps calling a test server (its own, on a private topic, or
another process's ``drill --serve --topic T``) at a fixed interval while an
operator breaks things, prints one progress line per second (calls, failures,
latency p50 and max in that second) and at the end a summary of the outages:
runs of failed calls, with when each started and how long it lasted (until a
call succeeded again). Its bookkeeping (:class:`DrillStats`) is a pure value
fed with results and times, and its loop takes a clock, so both are tested
without waiting.

``bench`` compares this library with oslo.messaging's rabbit driver, its fake
driver and bare py-amqp on one broker (by default the first node of the test
cluster ``tools/rabbit_cluster.py`` starts); :mod:`rabbit_ha_driver.bench`
explains how. It takes ``--url`` but no configuration file: every subject
runs with its defaults, so they are compared on equal terms.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from oslo_config import cfg

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver import settings as settings_mod
from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.settings import Host, Settings

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
        _remove_queues(settings, (topic, f"{topic}.demo-a", f"{topic}.demo-b",
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


def _remove_queues(settings: Settings, names: Sequence[str], timeout: float) -> None:
    """Delete a command's shared queues so a real broker is left as it was."""
    from rabbit_ha_driver.connection import Connection, Deadline

    conn = Connection(settings, name=f"{PROG}:cleanup")
    deadline = Deadline.after(min(2.0, timeout))
    try:
        for name in names:
            conn.delete_queue(name, deadline=deadline)
    except exc.RabbitHAError as error:
        LOG.info("queues %s not removed: %s", ", ".join(names), error)
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


# -- a private test server ----------------------------------------------------------


class _PingEndpoint:
    """What ``check`` and ``drill`` call."""

    def ping(self, ctxt: dict[str, Any], n: int = 0) -> int:
        return n


def _private_topic(command: str) -> str:
    return f"{PROG}-{command}-{uuid.uuid4().hex[:8]}"


@contextmanager
def _test_server(settings: Settings, topic: str, timeout: float) -> Iterator[None]:
    """An RPC server serving ``ping`` on ``topic`` as server ``drill``; queues removed after."""
    from rabbit_ha_driver.rpc import RPCServer

    server = RPCServer(settings, topic, "drill", [_PingEndpoint()], start_timeout=timeout)
    server.start()
    try:
        yield
    finally:
        server.stop()
        server.wait(timeout)
        _remove_queues(settings, (topic, f"{topic}.drill"), timeout)


def _seconds(value: str) -> float:
    """argparse type: a positive number of seconds."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive number of seconds")
    return seconds


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# -- check ---------------------------------------------------------------------------


def _one_host(settings: Settings, host: Host) -> Settings:
    return settings.replace(transport_url=dataclasses.replace(settings.transport_url, hosts=(host,)))


def describe_socket_options(options: Any) -> str:
    """``SocketOptions`` in force, as one line (``n/a``: the platform lacks it)."""
    if options is None:
        return "not tuned (no TCP socket)"

    def show(value: Any, unit: str = "s") -> str:
        return "n/a" if value is None else f"{value:g}{unit}"

    user_timeout = options.user_timeout
    return (f"SO_KEEPALIVE={'on' if options.keepalive else 'off'} "
            f"TCP_KEEPIDLE={show(options.keepidle)} TCP_KEEPINTVL={show(options.keepintvl)} "
            f"TCP_KEEPCNT={show(options.keepcnt, '')} "
            f"TCP_USER_TIMEOUT={'kernel default' if user_timeout == 0 else show(user_timeout)}")


def check_host(settings: Settings, host: Host, timeout: float, out: TextIO) -> bool:
    """Connect to ``host`` alone and print what the connection got; False if it failed."""
    from rabbit_ha_driver.connection import Connection, Deadline

    conn = Connection(_one_host(settings, host), name=f"{PROG}:check")
    started = time.monotonic()
    try:
        conn.connect(Deadline.after(timeout))
    except exc.AuthenticationError as error:
        print(f"  FAIL {host.address}: authentication refused for user {host.username!r}: {error}",
              file=out)
        return False
    except exc.RabbitHAError as error:
        print(f"  FAIL {host.address}: cannot connect: {type(error).__name__}: {error}", file=out)
        return False
    try:
        took = time.monotonic() - started
        raw, liveness = conn.raw, conn.liveness
        props = getattr(raw, "server_properties", None) or {}
        product = f"{_text(props.get('product', 'broker'))} {_text(props.get('version', '?'))}"
        print(f"  ok   {host.address}: connected in {_ms(took)} to {product}", file=out)
        if liveness is None:
            print("       heartbeats: none on this transport", file=out)
            return True
        print(f"       heartbeat: negotiated {_num(getattr(raw, 'heartbeat', None))}s (asked "
              f"{_num(liveness.heartbeat)}s, broker proposed "
              f"{_num(getattr(raw, 'server_heartbeat', None))}s); dead peer declared after "
              f"{settings.heartbeat_timeout_threshold}s of silence", file=out)
        watch = liveness.watch
        if watch is None:
            runner = "none (heartbeats are off)"
        else:
            writer = "it writes the heartbeats" if watch.state.sends else "the reader writes them"
            runner = f"{watch.runner} ({writer})"
        print(f"       heartbeat runner: {runner}", file=out)
        print(f"       socket: {describe_socket_options(liveness.in_force)}", file=out)
        _warn_if_transient_queues_denied(conn, settings, timeout, out)
        return True
    finally:
        conn.close()


def declares_transient_queues(settings: Settings) -> bool:
    """Whether these settings make the library declare non-durable non-exclusive queues."""
    topic_transient = not (settings.amqp_durable_queues or settings.rabbit_quorum_queue)
    return topic_transient or not settings.rabbit_transient_quorum_queue


def _warn_if_transient_queues_denied(conn: Any, settings: Settings, timeout: float,
                                     out: TextIO) -> None:
    """RabbitMQ 4 may deny the transient queues these settings declare: say so now.

    Declares one such queue (it expires in a second, and is deleted at once);
    a broker that denies the feature closes the connection, the last use of it."""
    from rabbit_ha_driver.connection import Deadline

    if not declares_transient_queues(settings):
        return
    probe = _private_topic("probe")
    try:
        conn.declare_queue(probe, durable=False, arguments={"x-expires": 1000},
                           deadline=Deadline.after(timeout))
    except exc.FeatureDenied as error:
        print(f"  WARN the broker denies transient non-exclusive queues ({error.feature}), which "
              "these settings declare: set rabbit_quorum_queue = true and "
              "rabbit_transient_quorum_queue = true", file=out)
        return
    except exc.RabbitHAError as error:
        print(f"       (could not tell whether the broker denies transient queues: {error})",
              file=out)
        return
    with contextlib.suppress(exc.RabbitHAError):
        conn.delete_queue(probe, deadline=Deadline.after(timeout))


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else "?"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def run_check(settings: Settings, *, timeout: float = 5.0, calls: int = 5,
              out: TextIO | None = None) -> int:
    """Check every host, then time calls to a temporary server; 0 when all worked."""
    out = out or sys.stdout
    from rabbit_ha_driver.rpc import RPCClient

    print(f"rabbit-ha check of {settings.transport_url.redacted()}", file=out)
    problems: list[str] = []
    hosts = settings.hosts
    if not hosts:
        print("  (memory:// runs in this process: no host to connect to)", file=out)
    for host in hosts:
        if not check_host(settings, host, timeout, out):
            problems.append(host.address)
    if hosts and len(problems) == len(hosts):
        print(f"check failed: no host reachable ({', '.join(problems)}); no call tried", file=out)
        return 1
    topic = _private_topic("check")
    from rabbit_ha_driver.metrics import Metrics
    from rabbit_ha_driver.rpc import RPCTransport

    metrics = Metrics()
    transport = RPCTransport(settings)
    metrics.attach(transport)
    try:
        with _test_server(settings, topic, timeout), \
                RPCClient(transport, topic, timeout=timeout) as client:
            started = time.monotonic()
            client.call({}, "ping", n=0)
            first = time.monotonic() - started
            times = []
            for n in range(1, calls + 1):
                started = time.monotonic()
                client.call({}, "ping", n=n)
                times.append(time.monotonic() - started)
        print(f"  ok   round trip of a call on private topic {topic}: first {_ms(first)} "
              f"(sets up the reply queue), then median {_ms(statistics.median(times))}, "
              f"max {_ms(max(times))} of {calls}", file=out)
    except exc.RabbitHAError as error:
        print(f"  FAIL round trip of a call on private topic {topic}: "
              f"{type(error).__name__}: {error}", file=out)
        problems.append("round trip")
    finally:
        transport.close()
    print("  metrics of the client's connections:", file=out)
    for line in metrics.summary_lines():
        print(f"       {line}", file=out)
    if problems:
        print(f"check failed: {', '.join(problems)}", file=out)
        return 1
    print("check passed", file=out)
    return 0


def _add_check(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "check", parents=[common],
        help="connect to each host and time a call; exit 1 if anything is wrong",
        description="Connect to each host of the transport URL on its own and print "
        "the broker's version, the negotiated heartbeat, the heartbeat runner and the "
        "TCP keepalive / user-timeout options in force on the socket; then start a "
        "temporary RPC server on a private topic and time calls to it (its queues are "
        "removed afterwards). Exits 1 naming every host that was down or refused the "
        "credentials, or the call that failed.")
    parser.add_argument("--timeout", type=_seconds, default=5.0, metavar="SECONDS",
                        help="bound on connecting to each host and on each call (default: 5)")
    parser.set_defaults(run=lambda args: run_check(load_settings(args), timeout=args.timeout))


# -- drill ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outage:
    """A run of failed calls: from the start of the first to the next success."""

    start: float
    end: float | None  # None: still failing when the drill ended
    failed: int
    first_error: str

    def describe(self) -> str:
        lasted = "still failing at the end" if self.end is None else f"lasted {self.end - self.start:.3f}s"
        return (f"at +{self.start:.3f}s {lasted} ({self.failed} failed call"
                f"{'s' if self.failed != 1 else ''}; first: {self.first_error})")


class DrillStats:
    """Results of a drill's calls; times are seconds since the drill started.

    :meth:`record` takes each call's start, duration and error (None when it
    succeeded); :meth:`progress` gives the line for one elapsed second and
    starts the next; :meth:`summary` the closing lines.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0
        self.latencies: list[float] = []
        self.outages: list[Outage] = []
        self._open: Outage | None = None
        self._second: list[float] = []
        self._second_calls = 0
        self._second_failures = 0

    @property
    def failing(self) -> bool:
        return self._open is not None

    def record(self, started: float, took: float, error: str | None) -> None:
        self.calls += 1
        self._second_calls += 1
        if error is None:
            self.latencies.append(took)
            self._second.append(took)
            if self._open is not None:
                self.outages.append(dataclasses.replace(self._open, end=started + took))
                self._open = None
            return
        self.failures += 1
        self._second_failures += 1
        if self._open is None:
            self._open = Outage(started, None, 1, error)
        else:
            self._open = dataclasses.replace(self._open, failed=self._open.failed + 1)

    def progress(self, second: float) -> str:
        """The line for the second that ended at ``second``; resets the per-second counts."""
        if self._second:
            latency = f"p50 {_ms(statistics.median(self._second))} max {_ms(max(self._second))}"
        else:
            latency = "p50 - max -"
        line = (f"{second:6.0f}s  calls {self._second_calls:3d}  failures "
                f"{self._second_failures:3d}  {latency}{'  OUTAGE' if self.failing else ''}")
        self._second, self._second_calls, self._second_failures = [], 0, 0
        return line

    def summary(self) -> list[str]:
        outages = [*self.outages, *([self._open] if self._open is not None else [])]
        lines = [f"{self.calls} calls, {self.failures} failed"
                 + (f", latency p50 {_ms(statistics.median(self.latencies))} max "
                    f"{_ms(max(self.latencies))}" if self.latencies else "")]
        if not outages:
            lines.append("no outage")
        else:
            lines.append(f"{len(outages)} outage{'s' if len(outages) != 1 else ''}:")
            lines.extend(f"  {outage.describe()}" for outage in outages)
        return lines


def run_drill(call: Callable[[int], None], *, interval: float, duration: float | None,
              clock: Clock = REAL_CLOCK, out: TextIO | None = None) -> DrillStats:
    """Call ``call(n)`` every ``interval`` seconds (one at a time) for ``duration``.

    A call that raises a library error counts as failed. Prints a progress
    line per elapsed second and the summary; Ctrl-C ends the drill early.
    """
    out = out or sys.stdout
    stats = DrillStats()
    start = clock.now()
    next_call = start
    next_report = start + 1.0
    n = 0
    try:
        while duration is None or clock.now() - start < duration:
            n += 1
            began = clock.now()
            error = None
            try:
                call(n)
            except exc.RabbitHAError as failure:
                error = f"{type(failure).__name__}: {failure}"
            now = clock.now()
            # A call counts in the second it ended in; a second's line goes
            # out once a call ended after it.
            while now > next_report:
                print(stats.progress(next_report - start), file=out, flush=True)
                next_report += 1.0
            stats.record(began - start, now - began, error)
            next_call = max(next_call + interval, now)
            if duration is not None:
                next_call = min(next_call, start + duration)
            clock.sleep(next_call - now)
    except KeyboardInterrupt:
        print("interrupted", file=out)
    else:
        while clock.now() >= next_report:  # the last whole second
            print(stats.progress(next_report - start), file=out)
            next_report += 1.0
    for line in stats.summary():
        print(line, file=out)
    return stats


def run_drill_command(settings: Settings, *, topic: str | None, serve: bool, interval: float,
                      timeout: float, duration: float | None, clock: Clock = REAL_CLOCK,
                      out: TextIO | None = None) -> int:
    """The ``drill`` command: 0 when no call failed (or after serving)."""
    out = out or sys.stdout
    from rabbit_ha_driver.rpc import RPCClient

    own_server = serve or topic is None
    topic = topic or _private_topic("drill")
    print(f"rabbit-ha drill on {settings.transport_url.redacted()}, topic {topic}"
          f"{' (own test server)' if own_server else ''}", file=out)
    try:
        with _test_server(settings, topic, timeout) if own_server else _nothing():
            if serve:
                print("serving ping; Ctrl-C to stop", file=out, flush=True)
                _serve(duration, clock)
                return 0
            with RPCClient(settings, topic, timeout=timeout) as client:
                print(f"calling ping every {interval:g}s with a {timeout:g}s timeout"
                      f"{f' for {duration:g}s' if duration else '; Ctrl-C to stop'}",
                      file=out, flush=True)
                stats = run_drill(lambda n: _expect(client.call({}, "ping", n=n), n),
                                  interval=interval, duration=duration, clock=clock, out=out)
    except exc.RabbitHAError as error:
        print(f"drill failed: {type(error).__name__}: {error}", file=out)
        return 1
    return 1 if stats.failures else 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _serve(duration: float | None, clock: Clock) -> None:
    start = clock.now()
    try:
        while duration is None or clock.now() - start < duration:
            clock.sleep(min(1.0, duration - (clock.now() - start)) if duration else 1.0)
    except KeyboardInterrupt:
        pass


def _expect(result: Any, n: int) -> None:
    if result != n:
        raise exc.InvalidMessage(f"ping({n}) returned {result!r}")


def _add_drill(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "drill", parents=[common],
        help="keep calling a test server while you break things; report outages",
        description="Call a test server every --interval seconds, one call at a time, "
        "while an operator kills nodes, deletes queues or cuts the network. Prints "
        "one line per second (calls, failures, latency p50 and max in that second) "
        "and at the end the outages: each run of failed calls, when it started and "
        "how long it lasted until a call succeeded again. Without --topic it starts "
        "its own server on a private topic; with --topic it calls the server another "
        "'rabbit-ha drill --serve --topic T' runs. Exits 1 if any call failed.")
    parser.add_argument("--interval", type=_seconds, default=0.1, metavar="SECONDS",
                        help="time between the starts of two calls (default: 0.1)")
    parser.add_argument("--timeout", type=_seconds, default=3.0, metavar="SECONDS",
                        help="timeout of each call (default: 3)")
    parser.add_argument("--duration", type=_seconds, default=None, metavar="SECONDS",
                        help="stop after this long (default: run until Ctrl-C)")
    parser.add_argument("--topic", metavar="TOPIC",
                        help="call the server of this topic instead of starting one")
    parser.add_argument("--serve", action="store_true",
                        help="only serve ping on --topic (for a drill run elsewhere)")
    parser.set_defaults(run=_drill_from_args)


def _drill_from_args(args: argparse.Namespace) -> int:
    if args.serve and not args.topic:
        raise exc.ConfigurationError("--serve", True, "needs --topic, the topic to serve")
    return run_drill_command(load_settings(args), topic=args.topic, serve=args.serve,
                             interval=args.interval, timeout=args.timeout,
                             duration=args.duration)


# -- bench ----------------------------------------------------------------------------


def _subjects(value: str) -> tuple[str, ...]:
    """argparse type: comma-separated subject names."""
    from rabbit_ha_driver.bench.command import parse_subjects

    try:
        return parse_subjects(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _runs(value: str) -> int:
    """argparse type: a number of runs, at least 1."""
    try:
        runs = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if runs < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: at least 1 run")
    return runs


def _seconds_or_zero(value: str) -> float:
    """argparse type: 0 (skip) or a positive number of seconds."""
    try:
        if float(value) == 0:
            return 0.0
    except ValueError:
        pass  # _seconds names the problem
    return _seconds(value)


def _add_bench(subparsers: Any, common: argparse.ArgumentParser) -> None:
    from rabbit_ha_driver.bench.command import DEFAULT_BASE_PORT
    from rabbit_ha_driver.bench.subjects import SUBJECTS

    parser = subparsers.add_parser(
        "bench",
        help="compare calls, casts, memory and heartbeat cost with oslo.messaging and py-amqp",
        description="Benchmark this library (rabbit_ha), its oslo.messaging driver "
        "(rabbit_ha_oslo), oslo.messaging's rabbit driver (oslo_rabbit), bare py-amqp "
        "(bare_amqp) and oslo.messaging's in-process fake driver (oslo_fake) on one "
        "broker. Every run of a subject is a process of its own; --runs rounds run "
        "every subject once, in an order rotated each round, and each figure is the "
        "median of the runs. Then the heartbeat CPU of 200 idle connections of this "
        "library. Prints a table of the medians and the ratios against the targets "
        "(PASS/MISS). Progress goes to stderr. Exits 1 if a run failed; a missed "
        "target does not change the exit status.")
    parser.add_argument(
        "--url", metavar="URL",
        help="the broker, e.g. rabbit://user:pass@host:5672/ (only its first host is "
        "used by bare_amqp and the heartbeat figure; default: the first node of the test "
        f"cluster, rabbit://guest:guest@127.0.0.1:{DEFAULT_BASE_PORT}/, or the port in "
        "RHA_TEST_BASE_PORT)")
    parser.add_argument("--runs", type=_runs, default=5, metavar="N",
                        help="rounds, and heartbeat windows (default: 5; the targets need 5 or more)")
    parser.add_argument("--seconds", type=_seconds, default=2.0, metavar="SECONDS",
                        help="length of each timed phase of a run (default: 2)")
    parser.add_argument("--heartbeat-seconds", type=_seconds_or_zero, default=60.0, metavar="SECONDS",
                        help="length of each heartbeat window (default: 60; 0 skips the "
                        "heartbeat figure)")
    parser.add_argument("--subjects", type=_subjects, default=SUBJECTS, metavar="A,B,...",
                        help=f"the subjects to run (default: all: {','.join(SUBJECTS)})")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of the table: each subject's "
                        "figure medians under the subject's name")
    parser.add_argument("--output", metavar="FILE",
                        help="also write every run's figures, the spread, the ratios, the "
                        "date and the versions of the clients to FILE as JSON")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log this process's activity to stderr (-vv: debug)")
    parser.set_defaults(run=_bench_from_args)


def _bench_from_args(args: argparse.Namespace) -> int:
    from rabbit_ha_driver.bench.command import BenchOptions, default_url, run_bench

    options = BenchOptions(url=args.url or default_url(), runs=args.runs, seconds=args.seconds,
                           heartbeat_seconds=args.heartbeat_seconds, subjects=tuple(args.subjects),
                           json=args.json, output=args.output)
    return run_bench(options)


#: Subcommands: each adds its parser (demo, check and drill with the shared
#: options as a parent) and sets ``run(args) -> exit status``.
COMMANDS: list[Callable[[Any, argparse.ArgumentParser], None]] = [
    _add_demo, _add_check, _add_drill, _add_bench]


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Tools for rabbit_ha_driver, a RabbitMQ RPC transport. demo, "
        "check and drill read their configuration like other oslo.config programs: "
        "--config-file/--config-dir files with a [rabbit_ha] section, and --url "
        "for the transport URL. bench takes --url only.")
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

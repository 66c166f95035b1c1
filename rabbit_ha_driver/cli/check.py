"""``rabbit-ha check``: connect to each host on its own, then time a call.

It prints what each connection got (broker version, negotiated heartbeat, the
heartbeat runner, the TCP options in force on the socket), then starts a
temporary RPC server on a private topic and times calls to it. It exits 1
naming each host that was down or refused us, and the step that failed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import time
from typing import Any, TextIO

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.cli._common import PROG, load_settings, ms, seconds
from rabbit_ha_driver.cli._server import ping_server, private_topic
from rabbit_ha_driver.settings import Host, Settings


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
        print(f"  ok   {host.address}: connected in {ms(took)} to {product}", file=out)
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
    probe = private_topic("probe")
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
    topic = private_topic("check")
    from rabbit_ha_driver.metrics import Metrics
    from rabbit_ha_driver.rpc import RPCTransport

    metrics = Metrics()
    transport = RPCTransport(settings)
    metrics.attach(transport)
    try:
        with ping_server(settings, topic, timeout), \
                RPCClient(transport, topic, timeout=timeout) as client:
            started = time.monotonic()
            client.call({}, "ping", n=0)
            first = time.monotonic() - started
            times = []
            for n in range(1, calls + 1):
                started = time.monotonic()
                client.call({}, "ping", n=n)
                times.append(time.monotonic() - started)
        print(f"  ok   round trip of a call on private topic {topic}: first {ms(first)} "
              f"(sets up the reply queue), then median {ms(statistics.median(times))}, "
              f"max {ms(max(times))} of {calls}", file=out)
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


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``check`` to the subcommands."""
    parser = subparsers.add_parser(
        "check", parents=[common],
        help="connect to each host and time a call; exit 1 if anything is wrong",
        description="Connect to each host of the transport URL on its own and print "
        "the broker's version, the negotiated heartbeat, the heartbeat runner and the "
        "TCP keepalive / user-timeout options in force on the socket; then start a "
        "temporary RPC server on a private topic and time calls to it (its queues are "
        "removed afterwards). Exits 1 naming every host that was down or refused the "
        "credentials, or the call that failed.")
    parser.add_argument("--timeout", type=seconds, default=5.0, metavar="SECONDS",
                        help="bound on connecting to each host and on each call (default: 5)")
    parser.set_defaults(run=lambda args: run_check(load_settings(args), timeout=args.timeout))

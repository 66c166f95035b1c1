"""Calls per 100 ms through a silent drop, ``rabbit-ha://`` next to ``rabbit://``.

Usage (root: iptables)::

    python -m benchmarks.drill_timeline [--url rabbit://guest:guest@127.0.0.1:5672/] \\
        [--output drill_timeline.json] [--threshold 3] [--before 10] [--drop-for 20] \\
        [--after 10] [--call-timeout 5] [--pause 0] [--drivers rabbit-ha,rabbit]

``--url`` defaults to the first node of the test cluster
(``tools/rabbit_cluster.py``, port ``RHA_TEST_BASE_PORT``). Only loopback
brokers (127.0.0.0/8) are accepted.

How it works. Each driver runs the same scenario in turn, through
oslo.messaging's public API (``get_rpc_transport``, ``get_rpc_client``,
``get_rpc_server``) with the same heartbeat threshold ``T`` in the URL query
and in ``[oslo_messaging_rabbit]``:

1. a client transport opens its connections (one call to a topic nobody
   serves), then an RPC server starts on a transport of its own and a thread
   calls ``ping`` on it back to back (``--pause`` seconds apart), each call
   with ``--call-timeout``;
2. after ``--before`` seconds of steady calls, the *server's* connections (the
   ones this process opened after the client's: its listener and its reply
   publisher, found with ``ss``) are silently dropped with iptables, both
   directions, as in ``tests/functional/test_oslo_liveness.py``. The server
   side is where a dead connection goes unnoticed longest: the client's
   requests still reach the broker, so only the heartbeat tells the server
   that nobody delivers to it any more. Nothing is sent back, so neither end
   learns of it;
3. the drop is held for ``--drop-for`` seconds, then the rules are removed and
   calls go on for ``--after`` seconds.

Every call's completion time and outcome is recorded; answered and failed
calls are counted per 100 ms bucket, timed from the drop. The outage is the
longest stretch without an answered call; "steady again" is when the last
stall of a second or more after the drop ended (a stray answer in the middle
of an outage splits it in two, the longest gap then understates it). The JSON
file holds, per driver, the buckets, the failed calls, the outage and when
answers were steady again; ``python -m benchmarks.plot_results drill`` draws
it.

The firewall rules are removed whatever happens: in a ``finally`` block, at
exit, and on SIGTERM or SIGHUP (turned into an exit so the ``finally`` runs).
They carry the comment the test cluster's start and health check clean up
too.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import datetime
import ipaddress
import itertools
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from tests.functional.helpers import faults
from tests.functional.helpers.faults import SilentDropper, rabbit_cluster, wait_until

LOG = logging.getLogger(__name__)

DRIVERS = ("rabbit-ha", "rabbit")
BUCKET = 0.1
#: Calls answered before the steady phase counts: connections open, code warm.
WARM_UP_CALLS = 20
WARM_UP_TIMEOUT = 30.0
#: The connections the server opens for its replies appear on its first answers.
SETTLE = 0.5
#: A gap between answered calls this long is a stall, not service.
STALL = 1.0


# -- pure helpers ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Call:
    """One call: monotonic start and end, and the error class name (None: answered)."""

    start: float
    end: float
    error: str | None = None


def broker_addresses(url: str) -> list[tuple[str, int]]:
    """(host, port) of every broker in an oslo.messaging transport URL."""
    _, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a transport URL: {mask_url(url)}")
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    addresses = []
    for entry in netloc.split(","):
        hostport = entry.rpartition("@")[2]
        host, _, port = hostport.rpartition(":")
        if not host:
            host, port = hostport, "5672"
        addresses.append((host, int(port)))
    return addresses


def check_loopback(addresses: Iterable[tuple[str, int]]) -> None:
    """ValueError unless every host is an IPv4 loopback address (127.0.0.0/8)."""
    for host, _ in addresses:
        try:
            loopback = ipaddress.IPv4Address(host) in ipaddress.IPv4Network("127.0.0.0/8")
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"{host!r} is not an address in 127.0.0.0/8: this drill "
                             "drops connections with iptables and only targets loopback")


def scheme_url(url: str, scheme: str, threshold: int) -> str:
    """``url`` with ``scheme`` and ``heartbeat_timeout_threshold=threshold`` in its query."""
    _, _, rest = url.partition("://")
    base, _, query = rest.partition("?")
    if "/" not in base:
        base += "/"
    params = [p for p in query.split("&") if p and not p.startswith("heartbeat_timeout_threshold=")]
    params.append(f"heartbeat_timeout_threshold={threshold}")
    return f"{scheme}://{base}?{'&'.join(params)}"


def mask_url(url: str) -> str:
    """The URL with every password replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    masked = []
    for entry in netloc.split(","):
        credentials, at, hostport = entry.rpartition("@")
        if at and ":" in credentials:
            credentials = credentials.split(":", 1)[0] + ":***"
        masked.append(f"{credentials}{at}{hostport}")
    return f"{scheme}://{','.join(masked)}{slash}{tail}"


def bucketize(times: Iterable[float], start: float, end: float, width: float = BUCKET) -> list[int]:
    """How many of ``times`` fall in each ``width`` bucket of [start, end)."""
    # The epsilon keeps float error from moving a time on an edge (or the end) a bucket off.
    counts = [0] * max(0, math.ceil((end - start) / width - 1e-6))
    for t in times:
        index = math.floor((t - start) / width + 1e-9)
        if 0 <= index < len(counts):
            counts[index] += 1
    return counts


def longest_gap(times: Iterable[float], start: float, end: float) -> tuple[float, float, float]:
    """The longest stretch of [start, end] without one of ``times``: (length, from, to)."""
    points = [start, *sorted(t for t in times if start <= t <= end), end]
    return max(((b - a, a, b) for a, b in itertools.pairwise(points)), key=lambda gap: gap[0])


def steady_again(times: Iterable[float], dropped_at: float, end: float,
                 stall: float = STALL) -> float | None:
    """When answers flow again for good: the end of the last stall after the drop.

    A stall is a gap of at least ``stall`` between answered calls (the last
    one before the drop counts as the start of the first gap). The longest gap
    alone can hide a stop-and-go recovery: one stray answer in the middle of
    the outage halves it. None if no call was answered after the drop.
    """
    ordered = sorted(t for t in times if t <= end)
    before = [t for t in ordered if t <= dropped_at]
    after = [t for t in ordered if t > dropped_at]
    if not after:
        return None
    steady = after[0]
    for a, b in itertools.pairwise([before[-1] if before else dropped_at, *after]):
        if b - a >= stall:
            steady = b
    return steady


def summarize(calls: Sequence[Call], dropped_at: float, restored_at: float, start: float,
              end: float, width: float = BUCKET) -> dict[str, Any]:
    """One driver's timeline, every time in seconds from the drop.

    Only calls completed in [start, end] count. ``outage_s`` is the longest
    stretch without an answered call; ``recovered`` is false when that
    stretch reaches the end of the run. ``steady_again_s``: see
    :func:`steady_again` (None: never answered after the drop).
    """
    inside = [c for c in calls if start <= c.end <= end]
    answered = [c.end for c in inside if c.error is None]
    failed = [c for c in inside if c.error is not None]
    gap, gap_from, gap_to = longest_gap(answered, start, end)
    errors: dict[str, int] = {}
    for call in failed:
        assert call.error is not None
        errors[call.error] = errors.get(call.error, 0) + 1
    completed = bucketize(answered, start, end, width)
    steady = steady_again(answered, dropped_at, end)

    def rel(t: float) -> float:
        return round(t - dropped_at, 4)

    return {
        "drop_at_s": 0.0,
        "restored_at_s": rel(restored_at),
        "bucket_s": width,
        "bucket_starts_s": [rel(start + i * width) for i in range(len(completed))],
        "completed": completed,
        "failed_per_bucket": bucketize((c.end for c in failed), start, end, width),
        "calls": len(inside),
        "answered": len(answered),
        "failed": len(failed),
        "errors": dict(sorted(errors.items())),
        "failures": [{"start_s": rel(c.start), "end_s": rel(c.end), "error": c.error} for c in failed],
        "outage_s": round(gap, 4),
        "outage_from_s": rel(gap_from),
        "outage_to_s": rel(gap_to),
        "recovered": gap_to < end,
        "steady_again_s": None if steady is None else rel(steady),
    }


def to_json(value: Any, level: int = 0) -> str:
    """JSON with one key of an object per line and every list on one line (diff-friendly)."""
    if not isinstance(value, dict) or not value:
        return json.dumps(value)
    inner = "  " * (level + 1)
    lines = [f"{inner}{json.dumps(k)}: {to_json(v, level + 1)}" for k, v in value.items()]
    return "{\n" + ",\n".join(lines) + "\n" + "  " * level + "}"


def summary_line(driver: str, timeline: dict[str, Any]) -> str:
    outage = f"{timeline['outage_s']:5.1f}s"
    if not timeline["recovered"]:
        outage = ">" + outage.strip() + " (never answered again)"
    steady = timeline.get("steady_again_s")
    steady_text = "never" if steady is None else f"{steady:.1f}s"
    errors = ", ".join(f"{k} {v}" for k, v in timeline["errors"].items())
    return (f"{driver + '://':<12} outage {outage}  steady again after {steady_text}  "
            f"failed calls {timeline['failed']}{f' ({errors})' if errors else ''}  "
            f"answered {timeline['answered']}  "
            f"connections dropped {len(timeline.get('dropped_connections', []))}")


# -- the scenario ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    url: str
    threshold: int = 3
    before: float = 10.0
    drop_for: float = 20.0
    after: float = 10.0
    call_timeout: float = 5.0
    pause: float = 0.0


class Ping:
    def ping(self, ctxt: Any, payload: str) -> str:
        return payload


class Caller(threading.Thread):
    """Calls ``ping`` until stopped and records every call."""

    def __init__(self, client: Any, pause: float) -> None:
        super().__init__(daemon=True, name="drill-caller")
        self.client = client
        self.pause = pause
        self.calls: list[Call] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        clock = time.monotonic
        while not self.stopping.is_set():
            started = clock()
            try:
                self.client.call({}, "ping", payload="ping")
                error = None
            except Exception as exc:  # the outcome is what is measured
                error = type(exc).__name__
            self.calls.append(Call(started, clock(), error))
            if self.pause:
                self.stopping.wait(self.pause)

    @property
    def answered(self) -> int:
        return sum(1 for c in self.calls if c.error is None)


def broker_connections(pid: int, brokers: set[tuple[str, int]]) -> set[tuple[int, int]]:
    """(local port, broker port) of the established TCP connections of ``pid`` to ``brokers``
    (loopback only, see :func:`check_loopback`, so the port tells them apart)."""
    return faults.broker_connections(pid, {port for _, port in brokers})


def new_conf(threshold: int) -> Any:
    from oslo_config import cfg
    from oslo_messaging import conffixture

    conf = cfg.ConfigOpts()
    conffixture.ConfFixture(conf)  # registers oslo.messaging's options, the rabbit group's too
    conf.set_override("heartbeat_timeout_threshold", threshold, group="oslo_messaging_rabbit")
    return conf


def run_driver(driver: str, plan: Plan, dropper: SilentDropper) -> dict[str, Any]:
    """The scenario for one driver; returns its timeline (see :func:`summarize`)."""
    import oslo_messaging as om

    url = scheme_url(plan.url, driver, plan.threshold)
    brokers = set(broker_addresses(plan.url))
    me = os.getpid()
    topic = f"drill-{driver}-{uuid.uuid4().hex[:8]}"
    client_transport = server_transport = server = None
    caller: Caller | None = None
    try:
        ours_before = broker_connections(me, brokers)
        client_transport = om.get_rpc_transport(new_conf(plan.threshold), url)
        nowhere = om.get_rpc_client(client_transport, om.Target(topic=f"{topic}-nowhere"), timeout=1)
        with contextlib.suppress(om.MessagingTimeout):
            nowhere.call({}, "ping", payload="ping")
        client_connections = broker_connections(me, brokers)
        if not client_connections - ours_before:
            raise RuntimeError("the client opened no connection")
        server_transport = om.get_rpc_transport(new_conf(plan.threshold), url)
        server = om.get_rpc_server(server_transport, om.Target(topic=topic, server="drill"),
                                   [Ping()], executor="threading")
        server.start()
        client = om.get_rpc_client(client_transport, om.Target(topic=topic), timeout=plan.call_timeout)
        caller = Caller(client, plan.pause)
        caller.start()
        wait_until(lambda: caller is not None and caller.answered >= WARM_UP_CALLS, WARM_UP_TIMEOUT,
                   f"{WARM_UP_CALLS} calls answered")
        time.sleep(SETTLE)
        server_connections = broker_connections(me, brokers) - client_connections
        if not server_connections:
            raise RuntimeError("no connection of the server found")
        time.sleep(plan.before)
        dropped_at = time.monotonic()
        start = dropped_at - plan.before  # bucket edges fall on the drop
        for local, remote in sorted(server_connections):
            dropper(local, remote)
        LOG.info("%s://: dropped %d connection(s) of the server", driver, len(server_connections))
        time.sleep(max(0.0, dropped_at + plan.drop_for - time.monotonic()))
        dropper.remove_all()
        restored_at = time.monotonic()
        LOG.info("%s://: connections let through again", driver)
        end = restored_at + plan.after
        time.sleep(max(0.0, end - time.monotonic()))
        caller.stopping.set()
        timeline = summarize(list(caller.calls), dropped_at, restored_at, start, end)
        timeline["dropped_connections"] = sorted(server_connections)
        return timeline
    finally:
        if caller is not None:
            caller.stopping.set()
        dropper.remove_all()
        if caller is not None:
            caller.join(plan.call_timeout + 5)
        close_all(server, server_transport, client_transport)


def close_all(*items: Any) -> None:
    for item in items:
        if item is None:
            continue
        try:
            if hasattr(item, "cleanup"):
                item.cleanup()
            else:
                item.stop()
                item.wait()
        except Exception:  # best effort: the figures are already taken
            LOG.warning("closing %r failed", item, exc_info=True)


@contextlib.contextmanager
def rules_removed_on_exit(dropper: SilentDropper) -> Iterator[None]:
    """Remove the dropper's rules at exit and on SIGTERM/SIGHUP, besides the ``finally``."""
    def on_signal(signum: int, frame: Any) -> None:
        print(f"signal {signum}: stopping (firewall rules removed)", file=sys.stderr)
        raise SystemExit(128 + signum)

    atexit.register(dropper.remove_all)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        try:
            dropper.remove_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            atexit.unregister(dropper.remove_all)


def run(plan: Plan, drivers: Sequence[str], output: str) -> dict[str, Any]:
    addresses = broker_addresses(plan.url)
    check_loopback(addresses)
    dropper = SilentDropper({port for _, port in addresses})
    result: dict[str, Any] = {
        "settings": {
            "url": mask_url(plan.url),
            "heartbeat_timeout_threshold": plan.threshold,
            "call_timeout_s": plan.call_timeout,
            "pause_s": plan.pause,
            "before_s": plan.before,
            "drop_for_s": plan.drop_for,
            "after_s": plan.after,
            "bucket_s": BUCKET,
            "dropped": "the RPC server's connections",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "source": source_revision(),
        },
        "drivers": {},
    }
    with rules_removed_on_exit(dropper), warnings.catch_warnings():
        # Sockets a driver abandons would warn at a random later moment; the
        # deprecations are the libraries' own (eventlet, the executor argument,
        # kept so older oslo.messaging releases also run threads).
        warnings.simplefilter("ignore", ResourceWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
        for driver in drivers:
            print(f"{driver}://: {plan.before:.0f}s of calls, the server's connections dropped for "
                  f"{plan.drop_for:.0f}s, {plan.after:.0f}s after", flush=True)
            result["drivers"][driver] = run_driver(driver, plan, dropper)
    with open(output, "w", encoding="utf-8") as out:
        out.write(to_json(result) + "\n")
    return result


def source_revision() -> str | None:
    """The git commit the measured library was imported from, ``-dirty`` if it has local changes."""
    import rabbit_ha_driver

    package = os.path.dirname(os.path.abspath(rabbit_ha_driver.__file__))

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", package, *args], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None  # an installed copy, not a checkout
    return commit + ("-dirty" if dirty else "")


def default_url() -> str:
    settings = rabbit_cluster.Settings.from_env()
    return f"rabbit://guest:guest@127.0.0.1:{settings.base_port}/"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.drill_timeline",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None,
                        help="transport URL of loopback brokers (the test cluster's first node)")
    parser.add_argument("--output", default="drill_timeline.json", help="JSON file written")
    parser.add_argument("--threshold", type=int, default=3, help="heartbeat_timeout_threshold T (3)")
    parser.add_argument("--before", type=float, default=10.0, help="seconds of calls before the drop")
    parser.add_argument("--drop-for", type=float, default=20.0, help="seconds the drop is held")
    parser.add_argument("--after", type=float, default=10.0, help="seconds of calls after the drop")
    parser.add_argument("--call-timeout", type=float, default=5.0, help="timeout of each call (5)")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between calls (0)")
    parser.add_argument("--drivers", default=",".join(DRIVERS),
                        help="comma-separated schemes, in order (rabbit-ha,rabbit)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the drivers' warnings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    LOG.setLevel(logging.INFO)
    if os.geteuid() != 0:
        print("error: needs root (iptables)", file=sys.stderr)
        return 2
    drivers = [d.strip() for d in args.drivers.split(",") if d.strip()]
    unknown = set(drivers) - set(DRIVERS)
    if unknown:
        parser.error(f"unknown drivers {sorted(unknown)}; choose from {DRIVERS}")
    plan = Plan(url=args.url or default_url(), threshold=args.threshold, before=args.before,
                drop_for=args.drop_for, after=args.after, call_timeout=args.call_timeout,
                pause=args.pause)
    try:
        check_loopback(broker_addresses(plan.url))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = run(plan, drivers, args.output)
    except KeyboardInterrupt:
        print("interrupted (firewall rules removed)", file=sys.stderr)
        return 130
    print(f"T={plan.threshold}s, call timeout {plan.call_timeout:.0f}s, the server's connections "
          f"silently dropped for {plan.drop_for:.0f}s")
    for driver, timeline in result["drivers"].items():
        print(summary_line(driver, timeline))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

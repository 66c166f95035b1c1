"""One "OpenStack-style service" of the footprint benchmark, as a process of its own.

Run by :mod:`benchmarks.scale.footprint`, many at once::

    python -m benchmarks.scale.service SUBJECT URL --topic T --server NAME --peer NAME \\
        --notify-topic NT

What it runs, with the subject's own API (``rabbit_ha``: this library's
:class:`~rabbit_ha_driver.rpc.RPCTransport`, ``RPCClient``, ``RPCServer``,
``NotificationServer`` and ``Notifier``; ``rabbit_ha_oslo`` and
``oslo_rabbit``: oslo.messaging's ``get_rpc_transport``,
``get_notification_transport``, ``get_rpc_server``, ``get_rpc_client``,
``get_notification_listener`` and ``Notifier``, executor ``threading``, on
``rabbit-ha://`` or ``rabbit://``):

* one RPC server on the topic every service shares, named ``NAME``;
* one notification listener on ``NT`` (priority ``info``; every service
  listens on the same queue, as in a deployment);
* one RPC client (and a notifier), which at start calls the server of its
  ``--peer`` by name until that answers, then calls the shared topic once.

What it says on stdout, one line each (``@rha EVENT MONOTONIC-SECONDS``;
:func:`time.monotonic` is one clock for every process of the machine)::

    @rha imported T    its imports are done (the library's code starts here)
    @rha started T     server and listener started
    @rha called T      the call to the peer's server was answered
    @rha ready T       ... and the call to the shared topic too
    @rha answered T    this server answered its first ping
    @rha loaded CALLS ERRORS NOTIFICATIONS   (after "idle", see below)
    @rha error TEXT    it could not start; it exits non-zero

What it reads on stdin: ``load CALLS_PER_S NOTIFY_EVERY_S`` (call the shared
topic that often and send an ``info`` notification every so many seconds,
from one thread), ``idle`` (stop that and say ``loaded``), ``quit`` or end of
input (stop everything and exit).

Imports are only the subject's own (oslo.messaging's are the slow part), so
that fifty of these start as fast as the machine allows.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import queue
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

PAYLOAD = "x" * 64
#: How long a service keeps calling its peer at start before it gives up.
PEER_DEADLINE_S = 150.0
#: Timeouts of the successive calls to the peer (the last one repeats): an
#: oslo.messaging call to a queue that does not exist yet is lost and times out.
PEER_TIMEOUTS_S = (2.0, 2.0, 3.0, 5.0, 10.0)
#: Timeout of the calls under load and of the shared-topic call at start.
CALL_TIMEOUT_S = 30.0
#: Seconds the service gets to stop cleanly before it exits anyway.
STOP_GRACE_S = 8.0
SUBJECTS = ("rabbit_ha", "rabbit_ha_oslo", "oslo_rabbit")

_print_lock = threading.Lock()


def say(event: str, *values: object) -> None:
    """One protocol line on stdout."""
    line = " ".join(["@rha", event, *(str(v) for v in values)])
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def raise_nofile() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit (connections, pipes)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class PingEndpoint:
    """The RPC server's endpoint: says ``answered`` at its first ping."""

    def __init__(self) -> None:
        self._first = threading.Event()

    def ping(self, ctxt: Any, payload: str) -> str:
        if not self._first.is_set():
            self._first.set()
            say("answered", time.monotonic())
        return payload


class NotifyEndpoint:
    """The notification listener's endpoint (priority ``info``)."""

    def __init__(self) -> None:
        self.received = 0

    def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any,
             metadata: Any) -> None:
        self.received += 1


class Service:
    """What every subject offers the service's main loop: a subclass sets
    ``client`` (with ``prepare`` and ``call``), ``notifier`` (with ``info``) and
    ``_stops`` (what to undo, oldest first) in the subject's own API."""

    client: Any
    notifier: Any
    _stops: list[Callable[[], Any]]

    def call(self, server: str | None, timeout: float) -> Any:
        client = self.client.prepare(server=server, timeout=timeout)
        return client.call({}, "ping", payload=PAYLOAD)

    def notify(self) -> None:
        self.notifier.info({}, "scale.tick", {"payload": PAYLOAD})

    def stop(self) -> None:
        while self._stops:
            with contextlib.suppress(Exception):
                self._stops.pop()()


def _stop_server(server: Any, *wait_args: float) -> None:
    server.stop()
    server.wait(*wait_args)


class RabbitHAService(Service):
    """This library's own API."""

    def __init__(self, url: str, topic: str, server: str, notify_topic: str) -> None:
        from rabbit_ha_driver.events import EventBus
        from rabbit_ha_driver.options import from_url
        from rabbit_ha_driver.rpc import (
            NotificationServer,
            Notifier,
            RPCClient,
            RPCServer,
            RPCTransport,
        )

        settings = from_url(url)
        events = EventBus()  # quiet: no log subscriber
        self._stops: list[Callable[[], Any]] = []
        self.transport = RPCTransport(settings, events=events)
        self._stops.append(self.transport.close)
        self.server = RPCServer(settings, topic, server, [PingEndpoint()], events=events)
        self.server.start()
        self._stops.append(lambda: _stop_server(self.server, 5))
        self.listener = NotificationServer(settings, [notify_topic], [NotifyEndpoint()],
                                           events=events)
        self.listener.start()
        self._stops.append(lambda: _stop_server(self.listener, 5))
        self.client = RPCClient(self.transport, topic, timeout=CALL_TIMEOUT_S)
        self.notifier = Notifier(self.transport, f"scale.{server}", topics=[notify_topic])


class OsloService(Service):
    """oslo.messaging's API, on the driver the scheme names."""

    def __init__(self, url: str, scheme: str, topic: str, server: str,
                 notify_topic: str, queue_ttl: int | None = None) -> None:
        import oslo_messaging as om
        from oslo_config import cfg

        conf = cfg.CONF  # oslo.messaging registers some options only there
        args: list[str] = []
        if queue_ttl is not None:
            # The service's own [oslo_messaging_rabbit] section: both drivers read it.
            with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as file:
                file.write(f"[oslo_messaging_rabbit]\nrabbit_transient_queues_ttl = {queue_ttl}\n")
            args = ["--config-file", file.name]
        try:
            conf(args, project="rabbit-ha-scale")
        finally:
            for path in args[1:]:
                os.unlink(path)  # read once, by conf()
        transport_url = scheme + url.split("://", 1)[1]
        self._stops: list[Callable[[], Any]] = []
        self.transport = om.get_rpc_transport(conf, url=transport_url)
        self._stops.append(self.transport.cleanup)
        self.notification_transport = om.get_notification_transport(conf, url=transport_url)
        self._stops.append(self.notification_transport.cleanup)
        self.server = om.get_rpc_server(self.transport, om.Target(topic=topic, server=server),
                                        [PingEndpoint()], executor="threading")
        self.server.start()
        self._stops.append(lambda: _stop_server(self.server))
        self.listener = om.get_notification_listener(
            self.notification_transport, [om.Target(topic=notify_topic)], [NotifyEndpoint()],
            executor="threading")
        self.listener.start()
        self._stops.append(lambda: _stop_server(self.listener))
        target = om.Target(topic=topic)
        getter = getattr(om, "get_rpc_client", None)
        self.client = (getter(self.transport, target, timeout=CALL_TIMEOUT_S) if getter
                       else om.RPCClient(self.transport, target, timeout=CALL_TIMEOUT_S))
        self.notifier = om.Notifier(self.notification_transport, publisher_id=f"scale.{server}",
                                    driver="messaging", topics=[notify_topic])


def warm_imports(subject: str) -> None:
    """Import what a service of ``subject`` imports (run once before a batch, so
    the byte code cache is written once rather than by every service at once)."""
    modules = {"rabbit_ha": ("rabbit_ha_driver.events", "rabbit_ha_driver.options",
                             "rabbit_ha_driver.rpc"),
               "rabbit_ha_oslo": ("oslo_config.cfg", "oslo_messaging", "rabbit_ha_driver.oslo"),
               "oslo_rabbit": ("oslo_config.cfg", "oslo_messaging")}
    for module in modules[subject]:
        importlib.import_module(module)


def make(subject: str, url: str, topic: str, server: str, notify_topic: str,
         queue_ttl: int | None = None) -> Service:
    """The service of ``subject``; ``queue_ttl`` sets ``rabbit_transient_queues_ttl``."""
    if subject == "rabbit_ha":
        if queue_ttl is not None:
            url = f"{url}{'&' if '?' in url else '?'}rabbit_transient_queues_ttl={queue_ttl}"
        return RabbitHAService(url, topic, server, notify_topic)
    if subject in ("rabbit_ha_oslo", "oslo_rabbit"):
        scheme = "rabbit-ha://" if subject == "rabbit_ha_oslo" else "rabbit://"
        return OsloService(url, scheme, topic, server, notify_topic, queue_ttl)
    raise ValueError(f"unknown subject {subject!r}; choose from {', '.join(SUBJECTS)}")


def call_peer(service: Service, peer: str, deadline: float) -> None:
    """Call ``peer``'s server by name until it answers (or the deadline passes)."""
    attempt = 0
    while True:
        timeout = PEER_TIMEOUTS_S[min(attempt, len(PEER_TIMEOUTS_S) - 1)]
        try:
            service.call(peer, timeout)
            return
        except Exception as error:
            if time.monotonic() + timeout > deadline:
                raise RuntimeError(f"peer {peer} did not answer: {error!r}") from error
        attempt += 1


class Load:
    """Calls to the shared topic and notifications from one thread."""

    def __init__(self, service: Service, calls_per_s: float, notify_every_s: float) -> None:
        self._service = service
        self._period = 1.0 / calls_per_s if calls_per_s > 0 else 1.0
        self._calls = calls_per_s > 0
        self._notify_every = notify_every_s
        self._stop = threading.Event()
        self.calls = self.errors = self.notifications = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="scale-load")
        self._thread.start()

    def _run(self) -> None:
        next_call = next_note = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if self._notify_every > 0 and now >= next_note:
                next_note = now + self._notify_every
                try:
                    self._service.notify()
                    self.notifications += 1
                except Exception:
                    self.errors += 1
            if self._calls and now >= next_call:
                next_call += self._period
                try:
                    self._service.call(None, CALL_TIMEOUT_S)
                    self.calls += 1
                except Exception:
                    self.errors += 1
            wait = min(next_call if self._calls else now + 1.0,
                       next_note if self._notify_every > 0 else now + 1.0) - time.monotonic()
            if wait > 0:
                self._stop.wait(wait)

    def stop(self) -> tuple[int, int, int]:
        self._stop.set()
        self._thread.join(CALL_TIMEOUT_S + 5)
        return self.calls, self.errors, self.notifications


class Commands:
    """The driver's commands, read from the start on; end of input is ``quit``.

    A service still starting when its driver goes away (the driver's end of
    the pipe closed) exits at once instead of finishing its start.
    """

    def __init__(self, stdin: Any) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        self.serving = False
        threading.Thread(target=self._read, args=(stdin,), daemon=True,
                         name="scale-commands").start()

    def _read(self, stdin: Any) -> None:
        for line in stdin:
            self._lines.put(line)
        if not self.serving:
            os._exit(3)
        self._lines.put("quit")

    def __iter__(self) -> Iterator[str]:
        self.serving = True
        while True:
            yield self._lines.get()


def serve(service: Service, commands: Iterable[str]) -> None:
    """Answer the driver's commands until ``quit`` or end of input."""
    load: Load | None = None
    for line in commands:
        if not line.split():
            continue
        command, *args = line.split()
        if command == "load" and load is None:
            load = Load(service, float(args[0]), float(args[1]))
        elif command == "idle":
            calls, errors, notes = load.stop() if load is not None else (0, 0, 0)
            load = None
            say("loaded", calls, errors, notes)
        elif command == "quit":
            break
    if load is not None:
        load.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("subject", choices=SUBJECTS)
    parser.add_argument("url")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--peer", required=True)
    parser.add_argument("--notify-topic", required=True)
    parser.add_argument("--queue-ttl", type=int, default=None,
                        help="rabbit_transient_queues_ttl (reply and fanout queue expiry), seconds")
    args = parser.parse_args(argv)
    raise_nofile()
    warm_imports(args.subject)
    say("imported", time.monotonic())
    commands = Commands(sys.stdin)
    deadline = time.monotonic() + PEER_DEADLINE_S
    try:
        service = make(args.subject, args.url, args.topic, args.server, args.notify_topic,
                       args.queue_ttl)
    except Exception as error:
        say("error", f"start: {error!r}".replace("\n", " "))
        return 1
    try:
        say("started", time.monotonic())
        call_peer(service, args.peer, deadline)
        say("called", time.monotonic())
        service.call(None, CALL_TIMEOUT_S)
        say("ready", time.monotonic())
        serve(service, commands)
    except Exception as error:
        say("error", f"{error!r}".replace("\n", " "))
        return 1
    finally:
        # Stop cleanly (reply and fanout queues deleted) but never hang.
        stopper = threading.Thread(target=service.stop, daemon=True)
        stopper.start()
        stopper.join(STOP_GRACE_S)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # no waiting for the frameworks' non-daemon threads

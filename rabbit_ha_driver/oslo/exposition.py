"""The library's metrics out of an oslo.messaging service, in Prometheus format.

How this works. A service on ``rabbit-ha://`` never sees the library's
objects, so the driver exposes them itself when ``metrics_http_port`` is set
(in ``[rabbit_ha]`` or the URL query): every driver of the process that
names the same port attaches its event bus to one shared
:class:`~rabbit_ha_driver.metrics.Metrics`, served at
``http://127.0.0.1:PORT/metrics`` by :func:`rabbit_ha_driver.prometheus.serve`
(an RPC and a notification transport in one process share one server). The
server stops when the last of those drivers is cleaned up. Without the
option nothing is started; with it but without ``prometheus-client``, or
with the port taken, the driver refuses to start, naming the option.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

from rabbit_ha_driver.events import EventBus
from rabbit_ha_driver.exceptions import ConfigurationError
from rabbit_ha_driver.metrics import Metrics
from rabbit_ha_driver.settings import Settings


@dataclasses.dataclass
class _Shared:
    metrics: Metrics
    server: Any
    users: int = 0


_LOCK = threading.Lock()
_BY_PORT: dict[int, _Shared] = {}


@dataclasses.dataclass(frozen=True)
class Exported:
    """What one driver exposes: the shared metrics, their server, and how to let go."""

    metrics: Metrics
    server: Any
    release: Callable[[], None]


def export(events: EventBus, settings: Settings) -> Exported | None:
    """Count ``events`` in the metrics served on ``metrics_http_port``; None when unset."""
    port = settings.metrics_http_port
    if port is None:
        return None
    option = settings.option_label("metrics_http_port")
    try:
        from rabbit_ha_driver import prometheus
    except ImportError as error:
        raise ConfigurationError(option, port, "needs prometheus-client: pip install "
                                 "'rabbit_ha_driver[prometheus]'") from error
    with _LOCK:
        shared = _BY_PORT.get(port)
        if shared is None:
            metrics = Metrics()
            try:
                server = prometheus.serve(metrics, port)
            except OSError as error:
                raise ConfigurationError(option, port, f"cannot serve metrics: {error}") from error
            shared = _BY_PORT[port] = _Shared(metrics, server)
        shared.users += 1
        detach = shared.metrics.attach(events)
    released = threading.Event()

    def release() -> None:
        if released.is_set():
            return
        released.set()
        detach()
        with _LOCK:
            shared.users -= 1
            if shared.users == 0 and _BY_PORT.get(port) is shared:
                del _BY_PORT[port]
                shared.server.close()

    return Exported(shared.metrics, shared.server, release)

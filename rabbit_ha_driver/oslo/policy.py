"""Pure decisions of the oslo.messaging driver: which brokers, how long a send may take.

How this works. Nothing here does I/O. :func:`library_url` turns the URL
oslo.messaging parsed into the library's transport URL; :func:`send_budget`
turns a send's ``timeout`` and ``retry`` (oslo.messaging's meanings) and the
settings into absolute deadlines that the driver hands to the publisher and
to the reply waiters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from oslo_config import cfg

from rabbit_ha_driver import options
from rabbit_ha_driver.exceptions import ConfigurationError
from rabbit_ha_driver.settings import Settings

#: The scheme that selects this driver, and the entry point's name.
SCHEME = "rabbit-ha"


def library_url(url: Any, conf: cfg.ConfigOpts, query: Mapping[str, str] | None = None) -> str:
    """The library's transport URL for oslo.messaging's parsed ``url``.

    Hosts, credentials, virtual host and query string are taken over as they
    are (``query``, when given, replaces the URL's own); the query string
    overrides options of ``[rabbit_ha]``. A URL without
    hosts (``rabbit-ha://``) uses ``[rabbit_ha] transport_url`` instead, which
    must then be set: its default is kombu's in-process memory transport,
    never what a service means.
    """
    hosts = list(getattr(url, "hosts", None) or [])
    if query is None:
        query = getattr(url, "query", None) or {}
    if not hosts:
        with contextlib.suppress(cfg.DuplicateOptError):  # from_conf() reports it
            options.register_opts(conf)
        location = conf.get_location("transport_url", options.GROUP)
        if location is None or location.location is cfg.Locations.opt_default:
            raise ConfigurationError(
                "transport_url", f"{SCHEME}://",
                f"no host given: list the brokers in the URL "
                f"({SCHEME}://user:pass@host1:5672,user:pass@host2:5672/) or set "
                f"[{options.GROUP}] transport_url")
        configured: str = conf[options.GROUP].transport_url
        if not query:
            return configured
        return configured + ("&" if "?" in configured else "?") + urlencode(query)
    netlocs = []
    for host in hosts:
        netloc = ""
        if host.username is not None or host.password is not None:
            netloc = quote(host.username or "", safe="")
            if host.password is not None:
                netloc += ":" + quote(host.password, safe="")
            netloc += "@"
        hostname = host.hostname or "localhost"
        netloc += f"[{hostname}]" if ":" in hostname else hostname
        if host.port:
            netloc += f":{host.port}"
        netlocs.append(netloc)
    vhost = quote(getattr(url, "virtual_host", None) or "", safe="")
    text = f"{SCHEME}://{','.join(netlocs)}/{vhost}"
    return f"{text}?{urlencode(query)}" if query else text


@dataclasses.dataclass(frozen=True)
class SendBudget:
    """When one send gives up, as absolute times on the driver's clock.

    ``send_by`` bounds publishing: connecting, declaring, publishing, the
    broker's confirm and any re-send. ``reply_by`` bounds a call as a whole
    (None for casts and notifications). ``unroutable_for`` is how many seconds
    a message that no queue takes is sent again (None: until ``send_by``);
    ``undeliverable`` says that such a message raises oslo.messaging's
    ``MessageUndeliverable`` (``at_least_once``).
    """

    send_by: float
    reply_by: float | None
    unroutable_for: float | None
    undeliverable: bool = False


def attempt_window(settings: Settings) -> float:
    """Seconds one attempt of ``retry`` may take: a pass over the hosts and a request."""
    return settings.connect_timeout * max(1, len(settings.hosts)) + settings.request_timeout


def send_budget(
    settings: Settings,
    now: float,
    *,
    call: bool,
    timeout: float | None = None,
    retry: int | None = None,
    fanout: bool = False,
    notification: bool = False,
    at_least_once: bool = False,
) -> SendBudget:
    """The budget of one send; a pure function of its arguments.

    ``retry`` keeps oslo.messaging's meaning: None or -1 retries until sent,
    0 allows one attempt, N allows N more, each attempt being one
    :func:`attempt_window`. A call is also bounded by its ``timeout``
    (default ``rpc_response_timeout``), whatever ``retry`` says: sending,
    re-sending and waiting for the reply all end by ``reply_by``.

    A message that no queue takes (everything is published with the
    mandatory flag) is sent again: a call's until its deadline (a server may
    be re-declaring its queue after a failover); a fanout's for a short grace
    (``kombu_reconnect_delay`` + 1 s), after which it is dropped, as
    oslo.messaging drops it; a cast's for ``publish_timeout``, and with
    ``retry=0`` not at all, after which it fails; a notification's until
    ``send_by`` (its queue is declared before it is sent); with
    ``at_least_once`` never.
    """
    window = math.inf if retry is None or retry < 0 else (retry + 1) * attempt_window(settings)
    send_by = now + window
    reply_by: float | None = None
    if call:
        seconds = float(timeout) if timeout else float(settings.rpc_response_timeout)
        reply_by = now + seconds
        send_by = min(send_by, reply_by)
    unroutable_for: float | None
    if at_least_once:
        unroutable_for = 0.0
    elif fanout:
        unroutable_for = settings.kombu_reconnect_delay + 1.0
    elif call or notification:
        unroutable_for = None
    elif retry == 0:
        unroutable_for = 0.0
    else:
        unroutable_for = settings.publish_timeout or None
    return SendBudget(send_by, reply_by, unroutable_for, undeliverable=at_least_once)

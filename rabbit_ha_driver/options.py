"""Every configuration option of the library, in the ``[rabbit_ha]`` group.

Names follow oslo.messaging's ``[oslo_messaging_rabbit]`` options wherever the
meaning is the same, so operators can copy values across. The group is our own:
registering differently defined options under ``oslo_messaging_rabbit`` would
raise ``DuplicateOptError`` as soon as oslo.messaging's rabbit driver loads in
the same process.

Where the options are. Each ``cfg.Opt`` is defined with the layer that reads
it: :mod:`~rabbit_ha_driver.connection_options` (brokers, failover, liveness,
TLS), :mod:`~rabbit_ha_driver.queue_options` (consumers, durability, queue
types) and :mod:`~rabbit_ha_driver.rpc_options` (RPC, the metrics endpoint).
This module gathers them into :data:`ALL_OPTS`, in the order of the sample
file, and registers and lists them; every list is importable from here.

How values are read: :func:`from_conf` reads every option of ``[rabbit_ha]``
(oslo.config checks types and bounds), takes each value by the one rule of
:mod:`rabbit_ha_driver.precedence` (URL query, then ``[rabbit_ha]``, then the
``[oslo_messaging_rabbit]`` values the oslo.messaging driver hands over, then
the default), and returns a frozen :class:`~rabbit_ha_driver.settings.Settings`,
whose own checks cover what involves more than one value. Each failure raises
:class:`~rabbit_ha_driver.exceptions.ConfigurationError` naming the option (in
the group its value came from) and the value, so a bad configuration stops a
service at start-up rather than at the first fault. Unknown keys, in a
``[rabbit_ha]`` file section or in the query string, are warned about by name
and ignored. :func:`from_url` does the same without a ``ConfigOpts``, checking
keyword values with the options' own types.

Nothing below this layer reads oslo.config: the connection and RPC layers get
the frozen :class:`~rabbit_ha_driver.settings.Settings`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from oslo_config import cfg

from rabbit_ha_driver import precedence
from rabbit_ha_driver.connection_options import broker_opts, liveness_opts, retry_opts, tls_opts
from rabbit_ha_driver.exceptions import ConfigurationError
from rabbit_ha_driver.queue_options import consumer_opts, queue_type_opts
from rabbit_ha_driver.rpc_options import metrics_opts, rpc_opts
from rabbit_ha_driver.settings import GROUP, Settings, parse_transport_url, validated

__all__ = [
    "ALL_OPTS",
    "GROUP",
    "UPSTREAM",
    "broker_opts",
    "consumer_opts",
    "from_conf",
    "from_url",
    "list_opts",
    "liveness_opts",
    "metrics_opts",
    "opt_by_name",
    "queue_type_opts",
    "register_opts",
    "retry_opts",
    "rpc_opts",
    "tls_opts",
]

# The unknown-key warnings keep the logger operators know them by
# (docs/troubleshooting.rst), from when reading lived in settings.
LOG = logging.getLogger("rabbit_ha_driver.settings")

ALL_OPTS: list[cfg.Opt] = [
    *broker_opts,
    *retry_opts,
    *liveness_opts,
    *consumer_opts,
    *tls_opts,
    *rpc_opts,
    *metrics_opts,
    *queue_type_opts,
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register every option of the library in ``conf`` under ``[rabbit_ha]``."""
    conf.register_opts(ALL_OPTS, group=GROUP)


def list_opts() -> list[tuple[str, Iterable[cfg.Opt]]]:
    """Options for ``oslo-config-generator --namespace rabbit_ha_driver``."""
    return [(GROUP, list(ALL_OPTS))]


def opt_by_name(name: str) -> cfg.Opt | None:
    """The option called ``name``, or None."""
    for opt in ALL_OPTS:
        if opt.dest == name:
            return opt
    return None


# -- reading configuration into Settings -------------------------------------

_FIELDS = {f.name for f in dataclasses.fields(Settings)} - {"transport_url", "origins"}
_KNOWN = {opt.dest for opt in ALL_OPTS}
#: The source name of values the oslo.messaging driver takes from oslo.messaging's group.
UPSTREAM = "[oslo_messaging_rabbit]"


def from_conf(conf: cfg.ConfigOpts, url: str | None = None, *,
              upstream: Mapping[str, Any] | None = None) -> Settings:
    """Settings from ``conf`` (registering our options if needed) and a URL.

    ``url`` overrides ``[rabbit_ha] transport_url``; its query string overrides
    any other option of the group. ``upstream`` holds the options a service set
    in ``[oslo_messaging_rabbit]`` that have the same name and meaning here;
    they apply where ``[rabbit_ha]`` and the query say nothing.
    """
    try:
        register_opts(conf)
    except cfg.DuplicateOptError as exc:
        raise ConfigurationError(GROUP, None,
                                 f"options already registered differently: {exc}") from exc
    group = conf[GROUP]
    values: dict[str, Any] = {}
    for opt in ALL_OPTS:
        try:
            values[opt.dest] = group[opt.dest]
        except (ValueError, cfg.ConfigFileValueError) as exc:
            raise ConfigurationError(f"[{GROUP}] {opt.dest}", _raw_value(conf, opt.dest),
                                     str(exc)) from exc
    for key, closest in precedence.unknown_keys(precedence.file_keys(conf, GROUP), _KNOWN):
        LOG.warning("%s", precedence.describe_unknown(key, closest, f"[{GROUP}]"))
    own = {name: values[name] for name in _FIELDS if precedence.was_set(conf, name, GROUP)}
    raw_url = url if url is not None else values["transport_url"]
    layers = [(f"[{GROUP}]", own)]
    if upstream:
        layers.append((UPSTREAM, {name: _coerce(name, value, source=UPSTREAM)
                                  for name, value in upstream.items()}))
    return _build(raw_url, values, layers)


def from_url(url: str = "memory://", **overrides: Any) -> Settings:
    """Settings from a transport URL and keyword overrides, without a ``ConfigOpts``.

    Keyword values are checked against the options' types and bounds like
    values from a configuration file; an unknown keyword is an error (it is
    code, not configuration).
    """
    defaults: dict[str, Any] = {opt.dest: opt.default for opt in ALL_OPTS}
    given = {name: _coerce(name, value, source="argument") for name, value in overrides.items()}
    return _build(url, defaults, [("argument", given)])


def _build(raw_url: str, defaults: Mapping[str, Any],
           layers: Sequence[tuple[str, Mapping[str, Any]]]) -> Settings:
    parsed = parse_transport_url(raw_url)
    query: dict[str, Any] = {}
    for name, text in parsed.query.items():
        if name in _FIELDS:
            query[name] = _coerce(name, text, source=precedence.QUERY)
    for key, closest in precedence.unknown_keys(parsed.query, _FIELDS):
        LOG.warning("%s", precedence.describe_unknown(key, closest, precedence.QUERY))
    merged = precedence.merge({k: v for k, v in defaults.items() if k in _FIELDS},
                              (precedence.QUERY, query), *layers)
    if parsed.scheme == "amqps":
        merged["ssl"] = precedence.Sourced(True, "transport_url scheme")
    fields = {name: sourced.value for name, sourced in merged.items()}
    origins = {name: sourced.source for name, sourced in merged.items()}
    return validated(Settings(transport_url=parsed, origins=origins, **fields))


def _coerce(name: str, value: Any, source: str) -> Any:
    """Convert and bound-check one value with its option's own type."""
    opt = opt_by_name(name)
    if opt is None or name not in _FIELDS:
        raise ConfigurationError(name, value, f"unknown option in {source}; known: "
                                 + ", ".join(sorted(_FIELDS)))
    if value is None:
        return None
    group = source if source.startswith("[") else f"[{GROUP}]"
    try:
        return opt.type(value)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"{group} {name}", value, f"{exc} (from {source})") from exc


def _raw_value(conf: cfg.ConfigOpts, name: str) -> Any:
    """The text a configuration file gave for ``name``, for error messages."""
    try:
        found = conf._namespace._get_file_value([(GROUP, name)])  # type: ignore[union-attr]
    except Exception:  # the value is only decoration for the message
        return "<unreadable>"
    if isinstance(found, tuple):
        found = found[0]
    if isinstance(found, list) and found:
        return found[-1]
    return found

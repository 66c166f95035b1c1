"""Where an option's value comes from: one rule for every option.

How it works. An option's value is the first of these that gives one:

1. the transport URL's query string (``?heartbeat_timeout_threshold=10``);
2. ``[rabbit_ha]``, when a file, the command line or the service set it;
3. ``[oslo_messaging_rabbit]``, for the options oslo.messaging's rabbit
   driver has under the same name and meaning (only through the
   oslo.messaging driver, which hands them over; see
   :mod:`rabbit_ha_driver.oslo.upstream`);
4. the library's default.

"Set" means set by someone: a value equal to the default that a file states
still counts, so ``[rabbit_ha] rabbit_qos_prefetch_count = 64`` wins over
``[oslo_messaging_rabbit] rabbit_qos_prefetch_count = 0``. oslo.config
records where each value came from (:meth:`~oslo_config.cfg.ConfigOpts.get_location`).

A key nobody knows, in a ``[rabbit_ha]`` file section or in the query
string, is never an error: it is reported as a warning naming the closest
known option (:func:`unknown_keys`), and ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from oslo_config import cfg

#: Where a value came from, as log lines and errors name it.
QUERY = "transport_url query"
DEFAULT = "default"


@dataclasses.dataclass(frozen=True)
class Sourced:
    """A value and the place it came from (``[group]``, :data:`QUERY` or :data:`DEFAULT`)."""

    value: Any
    source: str


def merge(
    defaults: Mapping[str, Any],
    *layers: tuple[str, Mapping[str, Any]],
) -> dict[str, Sourced]:
    """Each option of ``defaults`` with the value of the first layer that has it.

    ``layers`` are ``(source, values)`` pairs, strongest first; a layer only
    holds the values someone set. Names a layer has and ``defaults`` lacks
    are left out: reporting them is :func:`unknown_keys`'s job.
    """
    merged = {name: Sourced(value, DEFAULT) for name, value in defaults.items()}
    for source, values in reversed(layers):
        for name, value in values.items():
            if name in merged:
                merged[name] = Sourced(value, source)
    return merged


def was_set(conf: cfg.ConfigOpts, name: str, group: str) -> bool:
    """True when a file, the command line, the environment or code set the option."""
    location = conf.get_location(name, group)
    return location is not None and location.location is not cfg.Locations.opt_default


def set_values(conf: cfg.ConfigOpts, group: str, names: Iterable[str]) -> dict[str, Any]:
    """The options of ``group`` among ``names`` that were set, with their values.

    oslo.config converts and bound-checks each value as it is read; its
    ``ValueError`` is left for the caller to name.
    """
    return {name: conf[group][name] for name in names if was_set(conf, name, group)}


def file_keys(conf: cfg.ConfigOpts, group: str) -> list[str]:
    """Every key written in a ``[group]`` section of the parsed configuration files.

    oslo.config keeps the keys it parsed but has no public way to list a
    section's keys (its own validator reads the same attribute); this is
    only used to report unknown keys, so anything unexpected yields nothing
    rather than an error.
    """
    namespace = getattr(conf, "_namespace", None)
    parsed = getattr(namespace, "_parsed", None) or []
    keys: list[str] = []
    for sections in parsed:
        section = sections.get(group) if isinstance(sections, Mapping) else None
        for key in section or ():
            if key not in keys:
                keys.append(key)
    return keys


def unknown_keys(keys: Iterable[str], known: Iterable[str]) -> list[tuple[str, str | None]]:
    """``(key, closest known option or None)`` for each key not in ``known``."""
    known_list = sorted(set(known))
    result = []
    for key in keys:
        if key in known_list:
            continue
        close = difflib.get_close_matches(key, known_list, n=1, cutoff=0.6)
        result.append((key, close[0] if close else None))
    return result


def describe_unknown(key: str, closest: str | None, where: str) -> str:
    """The warning for one unknown key, e.g. for a typo in a file."""
    hint = f"; did you mean {closest!r}?" if closest else ""
    return f"unknown option {key!r} in {where} is ignored{hint}"

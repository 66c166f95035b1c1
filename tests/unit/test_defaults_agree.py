"""Every default that restates an option's default agrees with it.

The options (:mod:`rabbit_ha_driver.options`, oslo.config) state the defaults
operators see in the sample file and that :func:`~rabbit_ha_driver.options.from_conf`
and :func:`~rabbit_ha_driver.options.from_url` apply. Values below that layer
cannot import oslo.config, so they restate some defaults for code that builds
them directly: the fields of :class:`~rabbit_ha_driver.settings.Settings`, and
the policies a caller may make without settings (``HeartbeatPolicy``,
``Backoff``). Here each restated default is held to its option's, value and
type; a field that has no option must say so in a ``NOT_OPTIONS`` set.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from rabbit_ha_driver import options
from rabbit_ha_driver.connection import Backoff
from rabbit_ha_driver.connection._heartbeat import HeartbeatPolicy
from rabbit_ha_driver.settings import Settings, parse_transport_url


def _defaults(cls: type) -> dict[str, Any]:
    """The fields of a dataclass that have a default, with it."""
    found = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            found[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            found[field.name] = field.default_factory()
    return found


def _option_default(name: str) -> Any:
    opt = options.opt_by_name(name)
    assert opt is not None, f"no option {name!r}"
    return opt.default


def _check(owner: str, field: str, value: Any, option: str) -> None:
    default = _option_default(option)
    assert (value, type(value)) == (default, type(default)), (
        f"{owner}.{field} defaults to {value!r}, [{options.GROUP}] {option} to {default!r}: "
        "they must agree (see tests/unit/test_defaults_agree.py)")


# -- Settings -----------------------------------------------------------------

#: Settings fields that are no option: where each value came from.
SETTINGS_NOT_OPTIONS = {"origins"}
#: Options whose Settings field has no default: the URL is parsed, and required.
SETTINGS_REQUIRED = {"transport_url"}


def test_every_option_is_a_settings_field_and_back():
    fields = {f.name for f in dataclasses.fields(Settings)} - SETTINGS_NOT_OPTIONS
    assert fields == {opt.dest for opt in options.ALL_OPTS}
    assert set(_defaults(Settings)) == fields - SETTINGS_REQUIRED | SETTINGS_NOT_OPTIONS


@pytest.mark.parametrize("opt", [o for o in options.ALL_OPTS if o.dest not in SETTINGS_REQUIRED],
                         ids=lambda o: o.dest)
def test_settings_default_is_the_options(opt):
    _check("Settings", opt.dest, _defaults(Settings)[opt.dest], opt.dest)


def test_the_required_url_defaults_to_memory_in_the_option():
    assert parse_transport_url(_option_default("transport_url")).is_memory


def test_from_url_without_arguments_gives_the_settings_defaults():
    memory = parse_transport_url("memory://")
    assert options.from_url() == Settings(transport_url=memory)


# -- policies built without settings ------------------------------------------

#: HeartbeatPolicy field -> option.
HEARTBEAT = {"threshold": "heartbeat_timeout_threshold", "rate": "heartbeat_rate"}
#: Backoff field -> option; and its fields that are no option.
BACKOFF = {"interval": "rabbit_retry_interval", "step": "rabbit_retry_backoff",
           "cap": "rabbit_interval_max"}
BACKOFF_NOT_OPTIONS = {"jitter", "random"}


def test_every_policy_field_is_mapped():
    assert {f.name for f in dataclasses.fields(HeartbeatPolicy)} == set(HEARTBEAT)
    assert {f.name for f in dataclasses.fields(Backoff)} == set(BACKOFF) | BACKOFF_NOT_OPTIONS


@pytest.mark.parametrize("field", sorted(_defaults(HeartbeatPolicy)))
def test_heartbeat_policy_default_is_the_options(field):
    _check("HeartbeatPolicy", field, _defaults(HeartbeatPolicy)[field], HEARTBEAT[field])


@pytest.mark.parametrize("field", sorted(set(_defaults(Backoff)) - BACKOFF_NOT_OPTIONS))
def test_backoff_default_is_the_options(field):
    _check("Backoff", field, _defaults(Backoff)[field], BACKOFF[field])

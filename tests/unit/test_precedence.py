"""The one precedence rule: URL query, [rabbit_ha], [oslo_messaging_rabbit], default."""

from __future__ import annotations

import pytest
from oslo_config import cfg

from rabbit_ha_driver import ConfigurationError, from_conf
from rabbit_ha_driver.precedence import QUERY, Sourced, merge, unknown_keys


def test_the_first_layer_that_has_a_value_wins():
    defaults = {"a": 1, "b": 2, "c": 3, "d": 4}
    merged = merge(defaults, (QUERY, {"a": 10}), ("[rabbit_ha]", {"a": 20, "b": 21}),
                   ("[oslo_messaging_rabbit]", {"a": 30, "b": 31, "c": 32}))
    assert merged == {
        "a": Sourced(10, QUERY),
        "b": Sourced(21, "[rabbit_ha]"),
        "c": Sourced(32, "[oslo_messaging_rabbit]"),
        "d": Sourced(4, "default"),
    }


def test_names_without_a_default_are_left_out():
    assert merge({"a": 1}, ("[rabbit_ha]", {"zz": 2})) == {"a": Sourced(1, "default")}


def test_unknown_keys_come_with_the_closest_known_name():
    assert unknown_keys(["ssl", "ssl_ca_fil", "qwerty"], ["ssl", "ssl_ca_file"]) == [
        ("ssl_ca_fil", "ssl_ca_file"), ("qwerty", None)]


def _conf(tmp_path, body: str) -> cfg.ConfigOpts:
    path = tmp_path / "svc.conf"
    path.write_text(body)
    conf = cfg.ConfigOpts()
    conf(["--config-file", str(path)])
    return conf


def test_upstream_values_apply_where_rabbit_ha_says_nothing(tmp_path):
    conf = _conf(tmp_path, "[rabbit_ha]\nrabbit_qos_prefetch_count = 64\n")
    s = from_conf(conf, "rabbit://h1/?kombu_reconnect_delay=3", upstream={
        "rabbit_qos_prefetch_count": 0, "kombu_reconnect_delay": 2.0,
        "heartbeat_timeout_threshold": 6})
    # A file value equal to the default still counts as set, and wins.
    assert s.rabbit_qos_prefetch_count == 64
    assert s.kombu_reconnect_delay == 3.0
    assert s.heartbeat_timeout_threshold == 6
    assert s.origins["heartbeat_timeout_threshold"] == "[oslo_messaging_rabbit]"
    assert s.origins["rabbit_qos_prefetch_count"] == "[rabbit_ha]"
    assert s.origins["kombu_reconnect_delay"] == QUERY
    assert s.origins["rabbit_retry_interval"] == "default"


@pytest.mark.parametrize(("name", "value"), [
    ("heartbeat_timeout_threshold", 1),     # checked across options
    ("rabbit_transient_queues_ttl", -1),    # outside the bounds
])
def test_a_bad_upstream_value_is_named_in_its_own_group(tmp_path, name, value):
    conf = _conf(tmp_path, "")
    with pytest.raises(ConfigurationError) as err:
        from_conf(conf, "rabbit://h1/", upstream={name: value})
    assert err.value.option == f"[oslo_messaging_rabbit] {name}"

"""Settings: URL parsing, option checks, and errors that name the option."""

from __future__ import annotations

import pytest
from oslo_config import cfg

from rabbit_ha_driver import ConfigurationError, from_conf, from_url, options
from rabbit_ha_driver.settings import parse_transport_url


def test_url_with_several_hosts_inherits_credentials():
    url = parse_transport_url("rabbit://u:p%40ss@h1:5673,h2,[::1]:5674/vh%2Fx")
    assert [h.address for h in url.hosts] == ["h1:5673", "h2:5672", "[::1]:5674"]
    assert {h.username for h in url.hosts} == {"u"}
    assert url.hosts[1].password == "p@ss"
    assert url.virtual_host == "vh/x"


def test_url_each_host_own_credentials():
    url = parse_transport_url("rabbit-ha://a:1@h1,b:2@h2/")
    assert [(h.username, h.password) for h in url.hosts] == [("a", "1"), ("b", "2")]
    assert url.virtual_host == "/"


def test_amqps_defaults_to_tls_port_and_turns_ssl_on():
    s = from_url("amqps://h1/")
    assert s.hosts[0].port == 5671
    assert s.ssl is True


def test_memory_url_has_no_hosts():
    s = from_url("memory://")
    assert s.is_memory and s.hosts == ()


def test_password_never_in_repr_or_redacted_url():
    s = from_url("rabbit://user:hunter2@h1:5672/")
    assert "hunter2" not in repr(s)
    assert "hunter2" not in repr(s.hosts)
    assert "hunter2" not in s.transport_url.redacted()


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("rabbit://h1:99999/", "port '99999'"),
        ("rabbit://h1:abc/", "port 'abc'"),
        ("rabbit://:5672/", "malformed host"),
        ("rabbit:///", "no host"),
        ("kafka://h1/", "unknown scheme 'kafka'"),
        ("h1:5672", "expected scheme"),
        ("rabbit://[::1/", "unclosed"),
    ],
)
def test_malformed_url_names_option(url, fragment):
    with pytest.raises(ConfigurationError) as err:
        from_url(url)
    assert err.value.option == "transport_url"
    assert fragment in str(err.value)


def test_malformed_url_error_hides_password():
    with pytest.raises(ConfigurationError) as err:
        from_url("rabbit://u:secret@h1:0/")
    assert "secret" not in str(err.value)


def test_query_string_overrides_options():
    s = from_url("rabbit://h1/?heartbeat_timeout_threshold=10&kombu_failover_strategy=shuffle")
    assert s.heartbeat_timeout_threshold == 10
    assert s.kombu_failover_strategy == "shuffle"


@pytest.mark.parametrize(
    ("query", "option", "value"),
    [
        ("heartbeat_timeout_threshold=-1", "heartbeat_timeout_threshold", "-1"),
        ("heartbeat_timeout_threshold=1", "heartbeat_timeout_threshold", 1),
        ("kombu_failover_strategy=random", "kombu_failover_strategy", "random"),
        ("connect_timeout=zero", "connect_timeout", "zero"),
        ("heartbeat_runner=fibre", "heartbeat_runner", "fibre"),
    ],
)
def test_bad_query_value_names_option_and_value(query, option, value):
    with pytest.raises(ConfigurationError) as err:
        from_url(f"rabbit://h1/?{query}")
    assert option in err.value.option
    assert err.value.value == value
    assert option in str(err.value) and str(value) in str(err.value)


def test_unknown_query_option_is_reported_with_the_closest_name(caplog):
    s = from_url("rabbit://h1/?heartbeat_timout_threshold=3&zzz=1")
    default = options.opt_by_name("heartbeat_timeout_threshold").default
    assert s.heartbeat_timeout_threshold == default
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "unknown option 'heartbeat_timout_threshold' in transport_url query is ignored; "
        "did you mean 'heartbeat_timeout_threshold'?",
        "unknown option 'zzz' in transport_url query is ignored",
    ]
    # The logger docs/troubleshooting.rst names, wherever the reading code lives.
    assert {r.name for r in caplog.records if r.levelname == "WARNING"} == {"rabbit_ha_driver.settings"}


def test_unknown_file_key_is_reported_like_a_query_key(tmp_path, caplog):
    conf = _conf(tmp_path, "[rabbit_ha]\nrabbit_qos_prefech_count = 3\n"
                 "transport_url = rabbit://h1/\n")
    s = from_conf(conf)
    assert s.rabbit_qos_prefetch_count == 64
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "unknown option 'rabbit_qos_prefech_count' in [rabbit_ha] is ignored; "
        "did you mean 'rabbit_qos_prefetch_count'?"]


def test_unknown_keyword_is_an_error():
    with pytest.raises(ConfigurationError, match="unknown option"):
        from_url("rabbit://h1/", heartbeat_timout_threshold=3)


def test_keyword_overrides_are_checked():
    assert from_url("memory://", rabbit_qos_prefetch_count=5).rabbit_qos_prefetch_count == 5
    with pytest.raises(ConfigurationError, match="rabbit_qos_prefetch_count"):
        from_url("memory://", rabbit_qos_prefetch_count=-5)


def test_interval_max_below_interval_is_refused():
    with pytest.raises(ConfigurationError, match="rabbit_interval_max"):
        from_url("rabbit://h1/", rabbit_retry_interval=5, rabbit_interval_max=1)


def test_tls_files_must_exist(tmp_path):
    with pytest.raises(ConfigurationError, match="ssl_ca_file"):
        from_url("rabbit://h1/", ssl=True, ssl_ca_file=str(tmp_path / "missing.pem"))


def test_tls_cert_needs_key(tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigurationError, match="ssl_key_file"):
        from_url("rabbit://h1/", ssl=True, ssl_cert_file=str(cert))


def _conf(tmp_path, body: str) -> cfg.ConfigOpts:
    path = tmp_path / "svc.conf"
    path.write_text(body)
    conf = cfg.ConfigOpts()
    conf(["--config-file", str(path)])
    return conf


def test_from_conf_reads_file_and_url_overrides(tmp_path):
    conf = _conf(tmp_path, "[rabbit_ha]\ntransport_url = rabbit://a:b@h9/\n"
                 "heartbeat_timeout_threshold = 7\nrabbit_qos_prefetch_count = 3\n")
    s = from_conf(conf)
    assert s.hosts[0].hostname == "h9"
    assert (s.heartbeat_timeout_threshold, s.rabbit_qos_prefetch_count) == (7, 3)
    s2 = from_conf(conf, "rabbit://h1/?heartbeat_timeout_threshold=4")
    assert s2.heartbeat_timeout_threshold == 4
    assert s2.rabbit_qos_prefetch_count == 3


def test_bad_config_file_value_names_option_and_value(tmp_path):
    conf = _conf(tmp_path, "[rabbit_ha]\nheartbeat_timeout_threshold = -5\n")
    with pytest.raises(ConfigurationError) as err:
        from_conf(conf)
    assert err.value.option == "[rabbit_ha] heartbeat_timeout_threshold"
    assert err.value.value == "-5"


def test_bad_strategy_in_config_file(tmp_path):
    conf = _conf(tmp_path, "[rabbit_ha]\nkombu_failover_strategy = random\n")
    with pytest.raises(ConfigurationError, match="kombu_failover_strategy"):
        from_conf(conf)


def test_settings_are_frozen():
    s = from_url("memory://")
    with pytest.raises(AttributeError):
        s.heartbeat_timeout_threshold = 3  # type: ignore[misc]
    assert s.replace(heartbeat_timeout_threshold=3).heartbeat_timeout_threshold == 3


def test_from_conf_and_from_url_live_in_the_options_layer_only():
    # They read configuration with oslo.config's types, so they are the options
    # layer's; rabbit_ha_driver.settings (no oslo.config) does not have them.
    from rabbit_ha_driver import settings

    assert from_conf is options.from_conf and from_url is options.from_url
    assert not hasattr(settings, "from_conf") and not hasattr(settings, "from_url")

"""Every [oslo_messaging_rabbit] option has a fate, and the driver applies it."""

from __future__ import annotations

import logging
import pathlib
import subprocess
import sys
import uuid

import oslo_messaging as om
import pytest
from oslo_config import cfg

from rabbit_ha_driver import ConfigurationError, options
from rabbit_ha_driver.oslo import RabbitHADriver, upstream
from rabbit_ha_driver.oslo.upstream import FATES, Fate, unclassified, upstream_opts
from rabbit_ha_driver.rpc.queue_types import transient_queue_arguments

ROOT = pathlib.Path(__file__).resolve().parents[3]
TABLE = ROOT / "docs" / "generated" / "oslo_option_fates.rst"


# -- the table -------------------------------------------------------------------


def test_every_option_of_the_installed_oslo_messaging_has_a_fate():
    opts = upstream_opts()
    assert len(opts) > 30  # oslo.messaging's list was found
    assert unclassified(opts) == []


def test_an_option_upstream_adds_is_reported_until_classified():
    conf = cfg.ConfigOpts()
    upstream.register(conf)
    conf.register_opt(cfg.BoolOpt("rabbit_made_up_option"), group=upstream.GROUP)
    conf([])
    opts = [conf._get_opt_info(name, upstream.GROUP)["opt"] for name in conf[upstream.GROUP]]
    assert unclassified(opts) == ["rabbit_made_up_option"]
    assert "UNCLASSIFIED" in upstream.fate_table_rst(opts)


def test_the_table_has_no_option_upstream_lacks():
    assert set(FATES) == {opt.dest for opt in upstream_opts()}


def test_honoured_options_exist_here_with_the_default_the_table_claims():
    theirs = {opt.dest: opt for opt in upstream_opts()}
    for name, rule in FATES.items():
        ours = options.opt_by_name(name)
        if not rule.fate.honoured:
            continue
        assert ours is not None, f"{name} is honoured but [rabbit_ha] has no such option"
        same = ours.default == theirs[name].default
        assert same is (rule.fate is Fate.HONOURED), name


def test_the_docs_table_is_up_to_date():
    assert TABLE.read_text() == upstream.fate_table_rst(), (
        "run: python tools/gen_option_fates.py")


def test_the_generator_writes_the_table(tmp_path):
    out = tmp_path / "t.rst"
    subprocess.run([sys.executable, str(ROOT / "tools" / "gen_option_fates.py"), str(out)],
                   check=True, cwd=ROOT)
    assert out.read_text() == upstream.fate_table_rst()


# -- the driver applies it --------------------------------------------------------------


def _conf(tmp_path, body: str) -> cfg.ConfigOpts:
    path = tmp_path / "svc.conf"
    path.write_text(body)
    conf = cfg.ConfigOpts()
    conf(["--config-file", str(path)])
    return conf


def _driver(conf, url="rabbit-ha://u:p@h1:1/"):
    return RabbitHADriver(conf, om.TransportURL.parse(conf, url), "openstack", [])


def test_a_service_keeps_its_oslo_messaging_rabbit_section(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    conf = _conf(tmp_path, f"""
[oslo_messaging_rabbit]
ssl = true
ssl_ca_file = {ca}
heartbeat_timeout_threshold = 6
rabbit_quorum_queue = true
kombu_reconnect_delay = 2
rabbit_retry_interval = 1
rabbit_retry_backoff = 2
rabbit_interval_max = 30
""")
    driver = _driver(conf)
    try:
        s = driver.settings
        assert (s.ssl, s.ssl_ca_file, s.heartbeat_timeout_threshold, s.rabbit_quorum_queue,
                s.kombu_reconnect_delay) == (True, str(ca), 6, True, 2.0)
        assert (s.rabbit_retry_interval, s.rabbit_retry_backoff,
                s.rabbit_interval_max) == (1.0, 2.0, 30.0)
        # Not set anywhere: the library's default, not oslo.messaging's 0.
        assert s.rabbit_qos_prefetch_count == 64
    finally:
        driver.cleanup()


def test_rabbit_ha_and_the_query_win_over_oslo_messaging_rabbit(tmp_path):
    conf = _conf(tmp_path, """
[oslo_messaging_rabbit]
heartbeat_timeout_threshold = 6
kombu_reconnect_delay = 2
rabbit_qos_prefetch_count = 5
[rabbit_ha]
heartbeat_timeout_threshold = 8
""")
    driver = _driver(conf, "rabbit-ha://u:p@h1:1/?kombu_reconnect_delay=3")
    try:
        s = driver.settings
        assert (s.heartbeat_timeout_threshold, s.kombu_reconnect_delay,
                s.rabbit_qos_prefetch_count) == (8, 3.0, 5)
    finally:
        driver.cleanup()


#: A fate table in which an oslo.messaging-only option is refused: today every
#: option has a use here, so the refusal is tested on a table made for it.
REFUSING = dict(FATES, kombu_reconnect_splay=upstream.Rule(Fate.REFUSED, "made up for the test"))


@pytest.mark.parametrize(("body", "query"), [
    ("kombu_reconnect_splay = 0.5", {}),
    ("", {"kombu_reconnect_splay": "0.5"}),
])
def test_a_refused_option_set_stops_the_driver_naming_it(tmp_path, body, query):
    conf = _conf(tmp_path, f"[oslo_messaging_rabbit]\n{body}\n")
    with pytest.raises(ConfigurationError) as err:
        upstream.read(conf, query, fates=REFUSING)
    assert err.value.option == "[oslo_messaging_rabbit] kombu_reconnect_splay"
    assert "not supported by the rabbit-ha driver" in str(err.value)


def test_a_refused_option_at_its_default_is_accepted(tmp_path):
    conf = _conf(tmp_path, "[oslo_messaging_rabbit]\nkombu_reconnect_splay = 0.0\n")
    upstream.read(conf, {"kombu_reconnect_splay": "0.0"}, fates=REFUSING)


def test_queue_type_options_of_oslo_messaging_rabbit_are_honoured(tmp_path):
    conf = _conf(tmp_path, "[oslo_messaging_rabbit]\nrabbit_quorum_queue = true\n"
                 "rabbit_transient_quorum_queue = true\nrabbit_quorum_delivery_limit = 3\n"
                 "use_queue_manager = true\n")
    driver = _driver(conf)
    try:
        s = driver.settings
        assert (s.rabbit_transient_quorum_queue, s.rabbit_quorum_delivery_limit,
                s.use_queue_manager) == (True, 3, True)
    finally:
        driver.cleanup()


def test_options_not_needed_are_logged_once_at_info(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rabbit_ha_driver.oslo.upstream")
    conf = _conf(tmp_path, "[oslo_messaging_rabbit]\nrpc_conn_pool_size = 10\n"
                 "heartbeat_timeout_threshold = 6\n")
    _driver(conf, "rabbit-ha://u:p@h1:1/?kombu_reconnect_splay=0.5").cleanup()
    lines = [r.getMessage() for r in caplog.records if r.name == "rabbit_ha_driver.oslo.upstream"]
    assert {r.levelname for r in caplog.records
            if r.name == "rabbit_ha_driver.oslo.upstream"} == {"INFO"}
    assert [line for line in lines if "rpc_conn_pool_size" in line] == [
        "rabbit-ha: [oslo_messaging_rabbit] rpc_conn_pool_size is accepted and not needed: "
        + FATES["rpc_conn_pool_size"].why]
    assert len([line for line in lines if "kombu_reconnect_splay" in line]) == 1
    assert "transport_url query kombu_reconnect_splay" in lines[-1]
    assert any("heartbeat_timeout_threshold=6" in line for line in lines)


def test_several_drivers_with_the_same_settings_log_their_option_lines_once_at_info(
        tmp_path, caplog):
    # A service making several transports from one configuration: the lines
    # about its options are told once at INFO, then at DEBUG; a driver with
    # other settings tells its own at INFO.
    caplog.set_level(logging.DEBUG, logger="rabbit_ha_driver.oslo")
    host = f"h-{uuid.uuid4().hex[:8]}"  # settings no other test logged
    conf = _conf(tmp_path, "[oslo_messaging_rabbit]\nrpc_conn_pool_size = 10\n"
                 "heartbeat_timeout_threshold = 6\n")

    def told() -> list[tuple[str, str]]:
        return [(r.levelname, r.getMessage()) for r in caplog.records
                if r.name.startswith("rabbit_ha_driver.oslo") and "rabbit-ha" in r.getMessage()]

    for _ in range(3):
        _driver(conf, f"rabbit-ha://u:p@{host}:1/").cleanup()
    lines = told()
    info = [text for level, text in lines if level == "INFO"]
    assert len(info) == 3, lines  # taken from..., not needed..., the driver line
    assert any("heartbeat_timeout_threshold=6" in text for text in info)
    assert any("rpc_conn_pool_size is accepted and not needed" in text for text in info)
    assert any(f"rabbit-ha driver for rabbit-ha://u:***@{host}:1/" in text for text in info)
    assert sorted(text for level, text in lines if level == "DEBUG" and text in info) == \
        sorted(info * 2)  # the same lines, at DEBUG, for the second and third driver
    caplog.clear()
    _driver(conf, f"rabbit-ha://u:p@{host}:2/").cleanup()  # another port: other settings
    assert [level for level, _ in told()] == ["INFO"] * 3


def test_a_transient_queues_ttl_of_0_in_oslo_messaging_rabbit_keeps_working(tmp_path):
    # oslo.messaging allows 0 (reply and fanout queues never expire): a
    # service's section with it must start unchanged, with that meaning.
    conf = _conf(tmp_path, "[oslo_messaging_rabbit]\nrabbit_transient_queues_ttl = 0\n")
    driver = _driver(conf)
    try:
        assert driver.settings.rabbit_transient_queues_ttl == 0
        assert driver.settings.origins["rabbit_transient_queues_ttl"] == "[oslo_messaging_rabbit]"
        assert "x-expires" not in dict(transient_queue_arguments(driver.settings))
    finally:
        driver.cleanup()


@pytest.mark.parametrize("line", ["rabbit_transient_queues_ttl = -1",
                                  "rabbit_qos_prefetch_count = many"])
def test_a_bad_value_in_oslo_messaging_rabbit_is_a_configuration_error_naming_it(tmp_path,
                                                                                line):
    conf = _conf(tmp_path, f"[oslo_messaging_rabbit]\n{line}\n")
    name = line.split(" = ")[0]
    with pytest.raises(ConfigurationError) as err:
        _driver(conf)
    assert err.value.option == f"[oslo_messaging_rabbit] {name}"


def test_an_unconvertible_upstream_query_value_is_named(tmp_path):
    conf = _conf(tmp_path, "")
    with pytest.raises(ConfigurationError, match=r"\[oslo_messaging_rabbit\] kombu_reconnect_splay"):
        _driver(conf, "rabbit-ha://u:p@h1:1/?kombu_reconnect_splay=maybe")


def test_an_upstream_option_the_table_does_not_know_is_warned_about_when_set(tmp_path, caplog,
                                                                             monkeypatch):
    made_up = cfg.BoolOpt("rabbit_made_up_option")
    real = upstream.upstream_opts
    monkeypatch.setattr(upstream, "upstream_opts", lambda: [*real(), made_up])  # a newer release
    conf = _conf(tmp_path, "[oslo_messaging_rabbit]\nrabbit_made_up_option = true\n")
    driver = _driver(conf)
    driver.cleanup()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len([w for w in warnings if "rabbit_made_up_option" in w]) == 1, warnings
    assert "[oslo_messaging_rabbit] rabbit_made_up_option is set" in warnings[0]
    # Not set: nothing to say.
    caplog.clear()
    _driver(_conf(tmp_path, "[oslo_messaging_rabbit]\n")).cleanup()
    assert not [r for r in caplog.records if "rabbit_made_up_option" in r.getMessage()]

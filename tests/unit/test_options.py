"""Options: one group, oslo.messaging's names, the generator entry point."""

from __future__ import annotations

import subprocess
import sys

from oslo_config import cfg

from rabbit_ha_driver import options

# Options whose meaning matches oslo.messaging's [oslo_messaging_rabbit] option
# of the same name. A rename here breaks operators' copied configuration.
SHARED_WITH_OSLO = {
    "heartbeat_timeout_threshold", "heartbeat_rate", "kombu_reconnect_delay",
    "kombu_failover_strategy", "rabbit_retry_interval", "rabbit_retry_backoff",
    "rabbit_interval_max", "rabbit_qos_prefetch_count", "amqp_durable_queues",
    "rabbit_quorum_queue", "enable_cancel_on_failover", "rabbit_transient_queues_ttl",
    "ssl", "ssl_ca_file", "ssl_cert_file", "ssl_key_file",
    "ssl_enforce_hostname_verification", "ssl_version", "rabbit_login_method",
    "kombu_compression",
}


def test_every_option_in_our_group_and_documented():
    [(group, opts)] = options.list_opts()
    assert group == "rabbit_ha"
    names = [o.dest for o in opts]
    assert len(names) == len(set(names))
    assert set(names) >= SHARED_WITH_OSLO
    for opt in opts:
        assert opt.help and len(opt.help) > 15, opt.dest


def test_registers_beside_oslo_messaging_rabbit_options():
    conf = cfg.ConfigOpts()
    options.register_opts(conf)
    from oslo_messaging._drivers import impl_rabbit

    conf.register_opts(impl_rabbit.rabbit_opts, group="oslo_messaging_rabbit")
    conf([])
    assert conf.rabbit_ha.kombu_reconnect_delay == 1.0


def test_ccn_delay_default_and_bounded_prefetch():
    conf = cfg.ConfigOpts()
    options.register_opts(conf)
    conf([])
    assert conf.rabbit_ha.kombu_reconnect_delay == 1.0
    assert 0 < conf.rabbit_ha.rabbit_qos_prefetch_count <= 1000


def test_config_generator_lists_every_option():
    out = subprocess.run(
        [sys.executable, "-m", "oslo_config.generator", "--namespace", "rabbit_ha_driver"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "[rabbit_ha]" in out
    for opt in options.ALL_OPTS:
        assert f"\n#{opt.dest} =" in out, opt.dest


def test_import_does_not_import_eventlet_or_oslo_messaging():
    code = ("import sys, rabbit_ha_driver; "
            "print('eventlet' in sys.modules, 'oslo_messaging' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]

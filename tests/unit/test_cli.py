"""The rabbit-ha command: options shared by every subcommand, and the demo."""

from __future__ import annotations

import io

import pytest

from rabbit_ha_driver import cli


def test_demo_on_the_memory_transport_shows_everything_working(capsys):
    assert cli.main(["demo", "--timeout", "5"]) == 0
    out = capsys.readouterr().out
    assert "rabbit-ha demo on memory://" in out
    for step in ("call   echo(text='hello')", "on server demo-b only", "RemoteError ValueError",
                 "cast   record(tag='cast')", "fanout record(tag='fanout')",
                 "handled by demo-a, demo-b", "notify info demo.happened"):
        assert step in out
    assert "FAIL" not in out
    assert out.rstrip().endswith("demo finished: call, cast, fanout and notify all work")


def test_help_explains_the_configuration_options(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "--config-file PATH" in text and "--config-dir DIR" in text and "--url URL" in text
    assert "oslo.config" in text and "[rabbit_ha]" in text and "memory://" in text


def test_a_command_is_required_and_unknown_ones_are_refused(capsys):
    for argv in ([], ["nonsense"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    assert "demo" in capsys.readouterr().err


def test_settings_come_from_config_files_and_the_url(tmp_path):
    first = tmp_path / "a.conf"
    first.write_text("[rabbit_ha]\ntransport_url = rabbit://u:p@h1:5672/\n"
                     "heartbeat_timeout_threshold = 10\n")
    conf_dir = tmp_path / "conf.d"
    conf_dir.mkdir()
    (conf_dir / "b.conf").write_text("[rabbit_ha]\nrpc_response_timeout = 7\n")
    parser = cli.build_parser()
    args = parser.parse_args(["demo", "--config-file", str(first), "--config-dir", str(conf_dir)])
    settings = cli.load_settings(args)
    assert settings.heartbeat_timeout_threshold == 10
    assert settings.rpc_response_timeout == 7
    assert [h.address for h in settings.hosts] == ["h1:5672"]
    args = parser.parse_args(["demo", "--config-file", str(first), "--url", "memory://"])
    assert cli.load_settings(args).is_memory


def test_a_bad_option_stops_the_command_naming_it(tmp_path, capsys):
    bad = tmp_path / "bad.conf"
    bad.write_text("[rabbit_ha]\nheartbeat_timeout_threshold = 1\n")
    assert cli.main(["demo", "--config-file", str(bad)]) == 2
    assert "heartbeat_timeout_threshold" in capsys.readouterr().err
    assert cli.main(["demo", "--config-file", str(tmp_path / "missing.conf")]) == 2
    assert "missing.conf" in capsys.readouterr().err


def test_demo_reports_failure_when_the_broker_is_unreachable():
    from rabbit_ha_driver.settings import from_url

    out = io.StringIO()
    settings = from_url("rabbit://u:p@127.0.0.1:1/", rabbit_retry_interval=0.05,
                        rabbit_interval_max=0.05)
    assert cli.run_demo(settings, timeout=0.05, out=out) == 1
    text = out.getvalue()
    assert "FAIL" in text and "could not connect" in text
    assert "demo failed" in text

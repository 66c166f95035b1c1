"""The rabbit-ha command: shared options, demo, check and drill (memory://, a fake clock)."""

from __future__ import annotations

import io

import pytest

from rabbit_ha_driver import cli
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.cli import check, demo, drill
from rabbit_ha_driver.clock import FakeClock


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
    from rabbit_ha_driver.options import from_url

    out = io.StringIO()
    settings = from_url("rabbit://u:p@127.0.0.1:1/", rabbit_retry_interval=0.05,
                        rabbit_interval_max=0.05)
    assert demo.run_demo(settings, timeout=0.05, out=out) == 1
    text = out.getvalue()
    assert "FAIL" in text and "could not connect" in text
    assert "demo failed" in text


# -- check ---------------------------------------------------------------------------


def test_check_on_the_memory_transport_times_a_call(capsys):
    assert cli.main(["check", "--timeout", "5"]) == 0
    out = capsys.readouterr().out
    assert "rabbit-ha check of memory://" in out
    assert "no host to connect to" in out
    assert "ok   round trip of a call on private topic rabbit-ha-check-" in out
    assert "median" in out and "of 5" in out
    assert out.rstrip().endswith("check passed")


def test_check_names_an_unreachable_host_and_fails():
    from rabbit_ha_driver.options import from_url

    out = io.StringIO()
    settings = from_url("rabbit://u:secret@127.0.0.1:1/", rabbit_retry_interval=0.05,
                        rabbit_interval_max=0.05)
    assert check.run_check(settings, timeout=0.2, out=out) == 1
    text = out.getvalue()
    assert "FAIL 127.0.0.1:1: cannot connect: MessagingTimeout" in text
    assert "check failed: no host reachable (127.0.0.1:1)" in text
    assert "secret" not in text


def test_socket_options_are_shown_with_units_and_missing_ones_named():
    from rabbit_ha_driver.connection._sockets import SocketOptions

    line = check.describe_socket_options(SocketOptions(True, 10, 3, 4, 21.5))
    assert line == ("SO_KEEPALIVE=on TCP_KEEPIDLE=10s TCP_KEEPINTVL=3s TCP_KEEPCNT=4 "
                    "TCP_USER_TIMEOUT=21.5s")
    line = check.describe_socket_options(SocketOptions(False, None, None, None, 0))
    assert line == ("SO_KEEPALIVE=off TCP_KEEPIDLE=n/a TCP_KEEPINTVL=n/a TCP_KEEPCNT=n/a "
                    "TCP_USER_TIMEOUT=kernel default")
    assert "not tuned" in check.describe_socket_options(None)


# -- drill: arguments ------------------------------------------------------------------


def test_drill_arguments_and_their_defaults():
    args = cli.build_parser().parse_args(["drill"])
    assert (args.interval, args.timeout, args.duration, args.topic, args.serve) == (
        0.1, 3.0, None, None, False)
    args = cli.build_parser().parse_args(
        ["drill", "--interval", "0.5", "--timeout", "2", "--duration", "60", "--topic", "t"])
    assert (args.interval, args.timeout, args.duration, args.topic) == (0.5, 2.0, 60.0, "t")


@pytest.mark.parametrize("argv", [["drill", "--interval", "0"], ["drill", "--timeout", "-1"],
                                  ["drill", "--duration", "soon"], ["check", "--timeout", "inf"]])
def test_times_must_be_positive_numbers_of_seconds(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "number of seconds" in err and argv[1] in err


def test_serving_needs_a_topic(capsys):
    assert cli.main(["drill", "--serve"]) == 2
    assert "--serve" in capsys.readouterr().err


# -- drill: the loop and its report, on a fake clock -------------------------------------


def _scripted_call(clock, start, failing_from, failing_until):
    """A call taking 5 ms, except in [from, until) where it fails after 0.5 s."""

    def call(n):
        t = clock.now() - start
        if failing_from <= t < failing_until:
            clock.advance(0.5)
            raise exc.MessagingTimeout(f"no reply to ping({n})", waited=0.5)
        clock.advance(0.005)

    return call


def test_drill_reports_each_second_and_the_outage(capsys):
    clock = FakeClock()
    out = io.StringIO()
    call = _scripted_call(clock, clock.now(), 1.95, 2.95)
    stats = drill.run_drill(call, interval=0.25, duration=5.0, clock=clock, out=out)
    lines = out.getvalue().splitlines()
    progress = [line for line in lines if "calls" in line and "failures" in line]
    assert [line.split()[0] for line in progress] == ["1s", "2s", "3s", "4s", "5s"]
    # A call counts in the second it ended in: those of 0, 0.25, 0.5 and 0.75
    # (the one of 1.0 ends at 1.005).
    assert progress[0].split()[2] == "4" and "failures   0" in progress[0]
    assert "p50 5.0 ms max 5.0 ms" in progress[0]
    assert "OUTAGE" in progress[2] and "failures   2" in progress[2]
    assert "OUTAGE" not in progress[3]
    assert stats.failures == 2
    [outage] = stats.outages
    assert outage.failed == 2
    assert outage.start == pytest.approx(2.0)
    assert outage.end == pytest.approx(3.005)
    assert "1 outage:" in lines
    assert lines[-1].startswith("  at +2.000s lasted 1.005s (2 failed calls; first: "
                                "MessagingTimeout: no reply to ping(")
    # Paced by start time: nothing slept that would drift the schedule.
    assert all(s <= 0.25 for s in clock.sleeps)


def test_drill_still_failing_at_the_end_and_interrupted():
    clock = FakeClock()
    out = io.StringIO()
    stats = drill.run_drill(_scripted_call(clock, clock.now(), 0.5, 99.0), interval=0.1,
                            duration=2.0, clock=clock, out=out)
    assert "still failing at the end" in out.getvalue()
    assert stats.outages == [] and stats.failing

    def interrupted(n):
        clock.advance(0.01)
        if n == 3:
            raise KeyboardInterrupt

    out = io.StringIO()
    stats = drill.run_drill(interrupted, interval=0.1, duration=None, clock=clock, out=out)
    text = out.getvalue()
    assert "interrupted" in text and "2 calls, 0 failed" in text and "no outage" in text


def test_drill_command_runs_its_own_server_on_memory():
    from rabbit_ha_driver.options import from_url

    clock = FakeClock()
    out = io.StringIO()
    status = drill.run_drill_command(from_url("memory://"), topic=None, serve=False, interval=0.5,
                                     timeout=5.0, duration=2.0, clock=clock, out=out)
    text = out.getvalue()
    assert status == 0, text
    assert "own test server" in text
    assert "4 calls, 0 failed" in text and "no outage" in text


def test_drill_against_a_topic_nobody_serves_fails_with_an_outage():
    from rabbit_ha_driver.options import from_url

    out = io.StringIO()
    status = drill.run_drill_command(from_url("memory://"), topic="nobody-serves-this",
                                     serve=False, interval=0.05, timeout=0.1, duration=0.2,
                                     out=out)
    text = out.getvalue()
    assert status == 1
    assert "own test server" not in text
    assert "still failing at the end" in text and "MessagingTimeout" in text


def _fake_connection(broker):
    from rabbit_ha_driver.connection import Connection
    from rabbit_ha_driver.options import from_url
    from rabbit_ha_driver.testing import FakeTransport

    return Connection(from_url("rabbit://u:p@h1:1/"), name="check", clock=FakeClock(),
                      transport=FakeTransport, transport_options={"fake_broker": broker})


def test_check_warns_when_the_broker_denies_transient_queues():
    from rabbit_ha_driver.options import from_url
    from rabbit_ha_driver.testing import FakeBroker, feature_denied

    broker = FakeBroker()
    broker.fail_next("queue.declare", feature_denied())
    out = io.StringIO()
    check._warn_if_transient_queues_denied(_fake_connection(broker), from_url("rabbit://u:p@h1:1/"),
                                         5.0, out)
    assert "WARN the broker denies transient non-exclusive queues (transient_nonexcl_queues)" \
        in out.getvalue()
    assert "rabbit_transient_quorum_queue = true" in out.getvalue()


def test_check_probes_nothing_when_no_transient_queue_is_declared():
    from rabbit_ha_driver.options import from_url
    from rabbit_ha_driver.testing import FakeBroker

    broker = FakeBroker()
    out = io.StringIO()
    settings = from_url("rabbit://u:p@h1:1/", rabbit_quorum_queue=True,
                        rabbit_transient_quorum_queue=True)
    check._warn_if_transient_queues_denied(_fake_connection(broker), settings, 5.0, out)
    assert out.getvalue() == "" and "queue.declare" not in broker.calls
    assert check.declares_transient_queues(from_url("rabbit://u:p@h1:1/", amqp_durable_queues=True))

"""A listener's kind: an enum with one intake class each, never a string switch."""

from __future__ import annotations

import pathlib

import pytest

from rabbit_ha_driver.rpc import intake, listener
from rabbit_ha_driver.rpc.intake import INTAKES, ListenerKind, NotificationIntake, RequestIntake
from rabbit_ha_driver.rpc.listener import PollListener, notification_listener, rpc_listener

RPC = pathlib.Path(listener.__file__).parent


def test_every_kind_has_its_intake():
    assert set(INTAKES) == set(ListenerKind)
    assert INTAKES[ListenerKind.RPC] is RequestIntake
    assert INTAKES[ListenerKind.NOTIFICATION] is NotificationIntake
    assert all(cls.kind is kind for kind, cls in INTAKES.items())


def test_a_kind_is_named_as_before():
    assert ListenerKind.of("rpc") is ListenerKind.RPC
    assert ListenerKind.of(ListenerKind.NOTIFICATION) is ListenerKind.NOTIFICATION
    assert ListenerKind.RPC == "rpc"  # callers comparing with the old strings still match
    with pytest.raises(ValueError, match="unknown listener kind 'other'"):
        ListenerKind.of("other")


def test_listeners_get_the_intake_of_their_kind(settings, broker, topic):
    from .conftest import fake_factory

    make = fake_factory(settings, broker)
    rpc = rpc_listener(settings, topic, "s1", connection=make("l"), publisher=None)
    notes = notification_listener(settings, [(topic, None, "info")], connection=make("n"),
                                  publisher=None)
    by_string = PollListener(settings, make("o"), None, kind="notification",  # as oslo/driver.py
                             exchanges=[], queues=[])
    try:
        assert isinstance(rpc._intake, RequestIntake) and rpc.kind is ListenerKind.RPC
        assert isinstance(notes._intake, NotificationIntake)
        assert by_string.kind is ListenerKind.NOTIFICATION
        assert repr(rpc).startswith("<PollListener rpc ")
        assert repr(notes) == f"<PollListener notification {topic}.info>"
    finally:
        for each in (rpc, notes, by_string):
            each.cleanup()


@pytest.mark.parametrize("module", ["listener", "intake", "incoming", "subscription",
                                    "reply_sender", "server", "server_lifecycle", "replies",
                                    "reply_waiters", "notify"])
def test_no_string_switch_on_kinds_nor_direct_time(module):
    """Kinds are told apart by class, time comes from the clock the module holds."""
    text = (RPC / f"{module}.py").read_text()
    for banned in ('kind == "', 'kind != "', "time.monotonic", "time.sleep", "import time"):
        assert banned not in text, f"{module}.py: {banned}"
    assert "envelope.BadRequest" not in text


def test_the_split_modules_stay_short():
    for module in ("listener", "server", "replies"):
        lines = (RPC / f"{module}.py").read_text().count("\n")
        assert lines < 400, f"{module}.py has {lines} lines"
    assert intake.LOG.name == listener.LOG.name  # the listener's log lines keep their logger

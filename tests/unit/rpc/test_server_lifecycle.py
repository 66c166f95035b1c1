"""The server's lifecycle: one table of moves, an illegal move raises, the state in repr."""

from __future__ import annotations

import itertools
import logging

import pytest

from rabbit_ha_driver.clock import FakeClock
from rabbit_ha_driver.rpc.server import RPCServer
from rabbit_ha_driver.rpc.server_lifecycle import (
    SERVER_TRANSITIONS,
    ServerLifecycle,
    ServerState,
)

from .conftest import fake_factory

S = ServerState

LEGAL = {
    (S.NEW, S.RUNNING),
    (S.RUNNING, S.STOPPING),
    (S.RUNNING, S.STOPPED),
    (S.STOPPING, S.STOPPED),
}


def lifecycle_in(state: ServerState, clock: FakeClock) -> ServerLifecycle:
    """A lifecycle brought to ``state`` by legal moves only."""
    life = ServerLifecycle("t.s1", clock)
    path = {S.NEW: [], S.RUNNING: [S.RUNNING], S.STOPPING: [S.RUNNING, S.STOPPING],
            S.STOPPED: [S.RUNNING, S.STOPPING, S.STOPPED]}[state]
    for step in path:
        life.move(step)
    return life


def test_the_table_has_a_row_for_every_state_and_only_the_legal_moves():
    assert set(SERVER_TRANSITIONS) == set(ServerState)
    assert {(old, new) for old, news in SERVER_TRANSITIONS.items() for new in news} == LEGAL


@pytest.mark.parametrize(("old", "new"), sorted(LEGAL, key=lambda m: (m[0].value, m[1].value)))
def test_a_legal_move_enters_the_state_at_the_clocks_time(old, new):
    clock = FakeClock()
    life = lifecycle_in(old, clock)
    clock.advance(2.5)
    assert life.elapsed() == pytest.approx(2.5)
    assert life.allows(new)
    assert life.move(new) is old
    assert (life.state, life.since, life.elapsed()) == (new, clock.now(), 0.0)


@pytest.mark.parametrize(("old", "new"), [m for m in itertools.product(S, S) if m not in LEGAL])
def test_an_illegal_move_raises_and_changes_nothing(old, new):
    clock = FakeClock()
    life = lifecycle_in(old, clock)
    since = life.since
    clock.advance(1.0)
    assert not life.allows(new)
    with pytest.raises(RuntimeError, match=f"illegal transition {old.value} -> {new.value}"):
        life.move(new)
    assert (life.state, life.since) == (old, since)


def test_moves_are_logged_with_the_time_spent_in_the_state_left(caplog):
    clock = FakeClock()
    life = ServerLifecycle("t.s1", clock)
    caplog.set_level(logging.DEBUG, logger="rabbit_ha_driver.rpc.server_lifecycle")
    clock.advance(0.25)
    life.move(S.RUNNING)
    assert "server t.s1: new -> running after 0.250s" in caplog.text
    assert repr(life) == "<ServerLifecycle t.s1 running for 0.000s>"


class Echo:
    def echo(self, ctxt, value):
        return value


def test_a_server_shows_its_state_and_walks_the_table(settings, broker, topic):
    server = RPCServer(settings, topic, "s1", [Echo()],
                       connection_factory=fake_factory(settings, broker))
    assert repr(server) == f"<RPCServer {topic}.s1 new>"
    assert server.wait(0) is True  # nothing to wait for: still new
    assert not server.running
    server.start()
    try:
        server.start()  # a second start while running changes nothing
        assert repr(server) == f"<RPCServer {topic}.s1 running>" and server.running
    finally:
        server.stop()
    assert repr(server) == f"<RPCServer {topic}.s1 stopping>"
    server.stop()  # stopping already: nothing to do
    assert server.wait(2) is True
    assert repr(server) == f"<RPCServer {topic}.s1 stopped>"
    assert server.wait(0) is True
    with pytest.raises(RuntimeError, match="cannot be started again"):
        server.start()


"""Per-socket keepalive and user timeout: the derivation, and applying it to a real loopback socket."""

from __future__ import annotations

import logging
import socket
import sys

import pytest

from rabbit_ha_driver import from_url
from rabbit_ha_driver.connection import _sockets as sockets
from rabbit_ha_driver.connection._sockets import SocketOptions, derive

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux TCP options")


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        (30, SocketOptions(True, 30, 10, 3, 31.0)),
        (60, SocketOptions(True, 60, 20, 3, 61.0)),
        (6, SocketOptions(True, 6, 2, 3, 7.0)),
        (2, SocketOptions(True, 2, 1, 3, 3.0)),
        (0, SocketOptions(True, 60, 10, 3, 30.0)),
    ],
)
def test_defaults_derive_from_t(threshold, expected):
    assert derive(threshold) == expected


def test_explicit_values_win():
    got = derive(30, keepalive=False, keepidle=7, keepintvl=2, keepcnt=5, user_timeout=0)
    assert got == SocketOptions(False, 7, 2, 5, 0.0)


def test_from_settings():
    s = from_url("rabbit://h1/?tcp_keepcnt=4", heartbeat_timeout_threshold=9, tcp_user_timeout=12.5)
    assert sockets.from_settings(s) == SocketOptions(True, 9, 3, 4, 12.5)


def test_a_dead_peer_is_found_by_the_kernel_within_about_2t():
    # Idle: probes start after T, then keepcnt probes keepintvl apart.
    for t in (2, 5, 30, 120):
        o = derive(t)
        assert o.keepidle and o.keepcnt and o.keepintvl
        assert o.keepidle + o.keepcnt * o.keepintvl <= 2 * t + 1
        # Pending writes: the user timeout fires just after T.
        assert o.user_timeout == t + 1


@linux_only
def test_amqp_socket_settings_always_override_py_amqp_user_timeout():
    settings = derive(30).amqp_socket_settings()
    assert settings[socket.TCP_USER_TIMEOUT] == 31000
    assert settings[socket.TCP_KEEPIDLE] == 30
    assert settings[socket.TCP_KEEPINTVL] == 10
    assert settings[socket.TCP_KEEPCNT] == 3
    # 0 means "the kernel's default" and must still be sent, or py-amqp's
    # one-second default would apply.
    assert derive(30, user_timeout=0).amqp_socket_settings()[socket.TCP_USER_TIMEOUT] == 0


@pytest.fixture
def tcp_pair():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname(), timeout=5)
    peer, _ = server.accept()
    server.close()
    yield client, peer
    client.close()
    peer.close()


@linux_only
def test_apply_sets_and_reads_back(tcp_pair):
    client, _ = tcp_pair
    wanted = derive(30)
    assert sockets.apply(client, wanted) == wanted
    assert sockets.read(client) == wanted
    assert "idle=30s" in wanted.describe()


@linux_only
def test_apply_turns_keepalive_off_but_keeps_user_timeout(tcp_pair):
    client, _ = tcp_pair
    sockets.apply(client, derive(30))
    got = sockets.apply(client, derive(10, keepalive=False))
    assert got.keepalive is False
    assert got.user_timeout == 11.0
    assert got.keepidle == 30  # untouched while keepalive is off
    assert "keepalive off" in got.describe()


@linux_only
def test_user_timeout_suspended_and_restored(tcp_pair):
    client, _ = tcp_pair
    sockets.apply(client, derive(4))
    previous = sockets.suspend_user_timeout(client)
    assert previous == 5.0
    assert sockets.user_timeout(client) == 0.0
    assert sockets.set_user_timeout(client, previous)
    assert sockets.user_timeout(client) == 5.0


def test_missing_platform_option_is_skipped_with_a_debug_log(tcp_pair, monkeypatch, caplog):
    client, _ = tcp_pair
    monkeypatch.setitem(sockets._TCP_OPTS, "TCP_USER_TIMEOUT", None)
    with caplog.at_level(logging.DEBUG, logger=sockets.__name__):
        got = sockets.apply(client, derive(30))
    assert got.user_timeout is None
    assert "TCP_USER_TIMEOUT not available" in caplog.text
    assert sockets.set_user_timeout(client, 3) is False
    assert sockets.suspend_user_timeout(client) is None
    assert 31000 not in derive(30).amqp_socket_settings().values()


def test_option_the_kernel_refuses_is_skipped(tcp_pair, caplog):
    client, _ = tcp_pair
    with caplog.at_level(logging.DEBUG, logger=sockets.__name__):
        got = sockets.apply(client, derive(30, keepidle=10**9))
    assert got.keepidle != 10**9
    assert "cannot set TCP_KEEPIDLE" in caplog.text


def test_reading_a_closed_socket_gives_nothing():
    s = socket.socket()
    s.close()
    got = sockets.read(s)
    assert got.keepalive is False and got.keepidle is None and got.user_timeout is None


def test_apply_works_on_an_eventlet_green_socket(tcp_pair):
    greenio = pytest.importorskip("eventlet.greenio")
    client, _ = tcp_pair
    green = greenio.GreenSocket(client)
    assert sockets.apply(green, derive(12)) == sockets.read(client)


def test_acknowledged_bytes_of_a_socket_without_tcp_info_are_unknown():
    a, b = socket.socketpair()  # not TCP: the kernel has no TCP_INFO for it
    try:
        assert sockets.bytes_acked(a) is None
    finally:
        a.close()
        b.close()


def test_the_raw_socket_of_something_else_is_an_error():
    with pytest.raises(TypeError, match="not a socket"):
        sockets.raw_socket(object())

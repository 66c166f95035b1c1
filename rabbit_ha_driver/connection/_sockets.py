"""Per-socket TCP keepalive and user timeout, so the kernel finds a dead peer too.

How this works. :func:`derive` (pure) turns ``T`` and the ``tcp_*`` options
into a :class:`SocketOptions` value, filling each unset option from ``T``:
keepalive probes start after ``T`` of idleness, ``max(1, T // 3)`` apart, and
three unanswered ones drop the connection; ``TCP_USER_TIMEOUT`` is ``T + 1``,
so data that stays unacknowledged (a write blocked on a peer that vanished,
where keepalive cannot help because it only probes idle connections) fails the
socket after ``T + 1``. With heartbeats off (``T = 0``) the fixed defaults are
60 s idle, 10 s apart, 3 probes and a 30 s user timeout. All of it is set with
``setsockopt`` on our own socket: no sysctl is needed.

:meth:`SocketOptions.amqp_socket_settings` gives the ``SOL_TCP`` part in the
shape py-amqp's ``socket_settings`` wants (kombu passes it through
``transport_options``); that matters because py-amqp otherwise applies its own
defaults, among them a one-second ``TCP_USER_TIMEOUT``. :func:`apply` sets
everything on a connected socket (``SO_KEEPALIVE`` included, which py-amqp
always turns on) and returns what the kernel reports back, for
``rabbit-ha check``. Options the platform lacks are skipped with a debug log.

A connection the broker has blocked (``connection.blocked``: a resource alarm)
is healthy, but the broker stops reading from it, so the kernel's send queue
can stall on a zero window and a short user timeout would tear it down.
:func:`suspend_user_timeout` and :func:`set_user_timeout` let the connection
lift the timeout while blocked and restore it afterwards.

:func:`raw_socket` finds the real socket object behind a TLS or eventlet
green socket: the one whose ``shutdown`` and non-blocking ``send`` are safe
from any OS thread and never go through the hub.
"""

from __future__ import annotations

import _socket
import dataclasses
import logging
import socket
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rabbit_ha_driver.settings import Settings

LOG = logging.getLogger(__name__)

#: Defaults when heartbeats are off (T = 0).
FIXED_KEEPIDLE = 60
FIXED_KEEPINTVL = 10
FIXED_KEEPCNT = 3
FIXED_USER_TIMEOUT = 30.0
DEFAULT_KEEPCNT = 3

# The platform's option numbers; None where it has no such option. macOS
# names the idle time TCP_KEEPALIVE.
_SOL_TCP: int = getattr(socket, "SOL_TCP", socket.IPPROTO_TCP)
_TCP_OPTS: dict[str, int | None] = {
    "TCP_KEEPIDLE": getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None),
    "TCP_KEEPINTVL": getattr(socket, "TCP_KEEPINTVL", None),
    "TCP_KEEPCNT": getattr(socket, "TCP_KEEPCNT", None),
    "TCP_USER_TIMEOUT": getattr(socket, "TCP_USER_TIMEOUT", None),
}


def raw_socket(sock: Any) -> _socket.socket:
    """The real socket object behind a plain, TLS or eventlet green socket."""
    if isinstance(sock, _socket.socket):
        return sock
    inner = getattr(sock, "fd", None)  # eventlet's GreenSocket wraps the real one
    if isinstance(inner, _socket.socket):
        return inner
    raise TypeError(f"not a socket: {sock!r}")


@dataclasses.dataclass(frozen=True)
class SocketOptions:
    """Keepalive and user-timeout values for one socket.

    ``None`` for a field of a value read back from a socket means the platform
    does not have that option. ``user_timeout`` is in seconds; 0 means the
    kernel's default behaviour.
    """

    keepalive: bool
    keepidle: int | None
    keepintvl: int | None
    keepcnt: int | None
    user_timeout: float | None

    def amqp_socket_settings(self) -> dict[int, int]:
        """The ``SOL_TCP`` options as py-amqp's ``socket_settings`` (option -> value).

        Always includes ``TCP_USER_TIMEOUT`` where the platform has it, so
        py-amqp's own one-second default never applies.
        """
        out: dict[int, int] = {}
        for name, value in self._tcp_values().items():
            number = _TCP_OPTS.get(name)
            if number is not None and value is not None:
                out[number] = value
        return out

    def _tcp_values(self) -> dict[str, int | None]:
        """Integer values per option name, as setsockopt wants them."""
        return {
            "TCP_KEEPIDLE": self.keepidle,
            "TCP_KEEPINTVL": self.keepintvl,
            "TCP_KEEPCNT": self.keepcnt,
            "TCP_USER_TIMEOUT": None if self.user_timeout is None else _ms(self.user_timeout),
        }

    def describe(self) -> str:
        if not self.keepalive:
            ka = "keepalive off"
        else:
            ka = f"keepalive idle={self.keepidle}s interval={self.keepintvl}s probes={self.keepcnt}"
        ut = "n/a" if self.user_timeout is None else f"{self.user_timeout:g}s"
        return f"{ka}, user timeout {ut}"


def derive(
    threshold: float,
    *,
    keepalive: bool = True,
    keepidle: int | None = None,
    keepintvl: int | None = None,
    keepcnt: int | None = None,
    user_timeout: float | None = None,
) -> SocketOptions:
    """Options for detection bound ``threshold`` (T); None means "derive from T"."""
    t = int(threshold)
    if t > 0:
        idle, intvl, ut = t, max(1, t // 3), float(t + 1)
    else:
        idle, intvl, ut = FIXED_KEEPIDLE, FIXED_KEEPINTVL, FIXED_USER_TIMEOUT
    return SocketOptions(
        keepalive=bool(keepalive),
        keepidle=idle if keepidle is None else int(keepidle),
        keepintvl=intvl if keepintvl is None else int(keepintvl),
        keepcnt=DEFAULT_KEEPCNT if keepcnt is None else int(keepcnt),
        user_timeout=ut if user_timeout is None else float(user_timeout),
    )


def from_settings(settings: Settings) -> SocketOptions:
    """:func:`derive` with the values of ``settings``."""
    return derive(
        settings.heartbeat_timeout_threshold,
        keepalive=settings.tcp_keepalive,
        keepidle=settings.tcp_keepidle,
        keepintvl=settings.tcp_keepintvl,
        keepcnt=settings.tcp_keepcnt,
        user_timeout=settings.tcp_user_timeout,
    )


def apply(sock: Any, options: SocketOptions) -> SocketOptions:
    """Set ``options`` on a connected TCP socket; return what is in force.

    ``sock`` may be a plain, TLS or eventlet green socket. Keepalive timings
    are set only when keepalive is on. Options the platform lacks, or refuses,
    are skipped with a debug log.
    """
    _set(sock, socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(options.keepalive), "SO_KEEPALIVE")
    for name, value in options._tcp_values().items():
        if value is None or (name != "TCP_USER_TIMEOUT" and not options.keepalive):
            continue
        number = _TCP_OPTS.get(name)
        if number is None:
            LOG.debug("socket option %s not available on this platform; skipped", name)
            continue
        _set(sock, _SOL_TCP, number, value, name)
    return read(sock)


def read(sock: Any) -> SocketOptions:
    """The keepalive and user-timeout values in force on ``sock``."""
    keepalive = bool(_get(sock, socket.SOL_SOCKET, socket.SO_KEEPALIVE))
    values: dict[str, int | None] = {}
    for name, number in _TCP_OPTS.items():
        values[name] = None if number is None else _get(sock, _SOL_TCP, number)
    ut = values["TCP_USER_TIMEOUT"]
    return SocketOptions(
        keepalive=keepalive,
        keepidle=values["TCP_KEEPIDLE"],
        keepintvl=values["TCP_KEEPINTVL"],
        keepcnt=values["TCP_KEEPCNT"],
        user_timeout=None if ut is None else ut / 1000.0,
    )


def user_timeout(sock: Any) -> float | None:
    """``TCP_USER_TIMEOUT`` of ``sock`` in seconds; None where unavailable."""
    number = _TCP_OPTS["TCP_USER_TIMEOUT"]
    if number is None:
        return None
    ms = _get(sock, _SOL_TCP, number)
    return None if ms is None else ms / 1000.0


def set_user_timeout(sock: Any, seconds: float) -> bool:
    """Set ``TCP_USER_TIMEOUT`` (0 = kernel default); False if not possible."""
    number = _TCP_OPTS["TCP_USER_TIMEOUT"]
    if number is None:
        LOG.debug("TCP_USER_TIMEOUT not available on this platform; skipped")
        return False
    return _set(sock, _SOL_TCP, number, _ms(seconds), "TCP_USER_TIMEOUT")


def suspend_user_timeout(sock: Any) -> float | None:
    """Turn ``TCP_USER_TIMEOUT`` off; return the value to restore later (or None)."""
    previous = user_timeout(sock)
    if previous:
        set_user_timeout(sock, 0)
    return previous


#: ``struct tcp_info``: the offset of ``tcpi_bytes_acked`` (Linux 4.1 and later).
_TCPI_BYTES_ACKED = 120
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)


def bytes_acked(sock: Any) -> int | None:
    """How many of our bytes the peer's TCP has acknowledged; None where unknown.

    Grows whenever the peer's kernel acknowledges something we sent (a
    heartbeat frame), also while our own receive window is shut.
    """
    if _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(_SOL_TCP, _TCP_INFO, 256)
    except (OSError, ValueError):
        return None
    if len(info) < _TCPI_BYTES_ACKED + 8:
        return None
    return int(struct.unpack_from("=Q", info, _TCPI_BYTES_ACKED)[0])


def receive_buffer(sock: Any) -> int | None:
    """``SO_RCVBUF`` of ``sock`` (what the kernel reports), or None."""
    return _get(sock, socket.SOL_SOCKET, socket.SO_RCVBUF)


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _set(sock: Any, level: int, number: int, value: int, name: str) -> bool:
    try:
        sock.setsockopt(level, number, value)
    except (OSError, ValueError) as error:
        LOG.debug("cannot set %s=%s: %s", name, value, error)
        return False
    return True


def _get(sock: Any, level: int, number: int) -> int | None:
    try:
        return int(sock.getsockopt(level, number))
    except (OSError, ValueError):
        return None

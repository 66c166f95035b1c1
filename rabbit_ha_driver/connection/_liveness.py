"""The liveness layer of one HA connection: heartbeats, socket options, link and runner.

How this works. :class:`Liveness` bundles the pieces behind the few calls an
HA connection makes. Before connecting it gives kombu the heartbeat interval
to ask of the broker (:class:`~._heartbeat.HeartbeatPolicy`) and py-amqp's
``socket_settings`` (:mod:`~._sockets`). After each connect :meth:`attach`
tunes the socket, installs an :class:`~._amqp_link.AmqpLink` on the
transport, and has the chosen runner watch it (:func:`~._runners.watch_connection`);
:meth:`detach` undoes that before the connection is closed or dropped. When
the runner cannot write (TLS on a socket it cannot guard), the owner sends
the heartbeats itself between reads (:meth:`owner_tick`, :meth:`owner_wait`).
Why liveness killed a connection (:attr:`dead_reason`) survives
:meth:`detach` until the next :meth:`attach`, so the read that failed can say.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.connection import _runners as runners
from rabbit_ha_driver.connection import _sockets as sockets
from rabbit_ha_driver.connection._amqp_link import AmqpLink
from rabbit_ha_driver.connection._heartbeat import HeartbeatPolicy
from rabbit_ha_driver.connection._watch import Watch

if TYPE_CHECKING:
    from rabbit_ha_driver.settings import Settings


class Liveness:
    """The liveness layer for one HA connection, in a few calls.

    * before connecting: :attr:`heartbeat` as kombu's ``heartbeat=`` and
      :meth:`transport_options` merged into kombu's ``transport_options``;
    * after each connect: :meth:`attach` with the py-amqp connection;
    * on ``connection.blocked``/``unblocked``: :meth:`blocked`/:meth:`unblocked`;
    * between reads: :meth:`owner_tick`, reading with a timeout of at most
      :meth:`owner_wait` (only does something over TLS with the native runner);
    * before closing or dropping the connection: :meth:`detach`;
    * when a read fails: :attr:`dead_reason` says whether liveness killed it
      (it survives :meth:`detach` until the next :meth:`attach`).
    """

    def __init__(self, settings: Settings, *, name: str, events: ev.EventBus | None = None,
                 clock: Clock = REAL_CLOCK) -> None:
        self.policy = HeartbeatPolicy.from_settings(settings)
        self.socket_options = sockets.from_settings(settings)
        self.runner = settings.heartbeat_runner
        self.name = name
        self.events = events
        self._clock = clock
        self.link: AmqpLink | None = None
        self.watch: Watch | None = None
        self.in_force: sockets.SocketOptions | None = None
        self._dead_reason: str | None = None

    @property
    def heartbeat(self) -> int:
        """The heartbeat interval H to ask of the broker (kombu's ``heartbeat=``)."""
        return self.policy.negotiated_interval

    def transport_options(self) -> dict[str, Any]:
        """Entries for kombu's ``transport_options`` (py-amqp's ``socket_settings``)."""
        return {"socket_settings": self.socket_options.amqp_socket_settings()}

    def attach(self, connection: Any) -> AmqpLink:
        """Tune the socket, install the link and start serving the connection."""
        self.detach()
        self._dead_reason = None
        self.in_force = sockets.apply(connection.transport.sock, self.socket_options)
        link = AmqpLink(connection, name=self.name, clock=self._clock).install()
        self.link = link
        if self.policy.enabled and link.heartbeat_interval > 0:
            self.watch = runners.watch_connection(link, self.policy, runner=self.runner, events=self.events)
        return link

    def detach(self) -> None:
        """Stop serving the current connection (before it is closed)."""
        watch, link = self.watch, self.link
        self._dead_reason = self.dead_reason
        self.watch = self.link = None
        if watch is not None:
            watch.cancel()
        if link is not None:
            link.detach()

    def blocked(self) -> None:
        if self.link is not None:
            self.link.note_blocked()

    def unblocked(self) -> None:
        if self.link is not None:
            self.link.note_unblocked()

    @property
    def owner_sends(self) -> bool:
        """True when the connection's owner must send heartbeats (:meth:`owner_tick`)."""
        w = self.watch
        return w is not None and w.active and w.native and not w.state.sends

    def owner_wait(self) -> float | None:
        """Longest the owner may block in one read; None: no limit from liveness."""
        if not self.owner_sends or self.link is None:
            return None
        return self.policy.send_interval(self.link.heartbeat_interval)

    def owner_tick(self) -> bool:
        """Send a heartbeat from the owner if one is due; True if one was sent."""
        link = self.link
        if link is None or not self.owner_sends:
            return False
        return link.heartbeat_if_due(self.policy.send_interval(link.heartbeat_interval))

    @property
    def dead_reason(self) -> str | None:
        """Why liveness declared the connection dead, if it did."""
        w = self.watch
        if w is not None and w.dead_reason:
            return w.dead_reason
        if self.link is not None and self.link.dead_reason:
            return self.link.dead_reason
        return self._dead_reason


__all__ = ["Liveness"]

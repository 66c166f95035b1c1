"""The thin py-amqp integration, by mechanism: where each part lives.

How this works. Keeping a py-amqp connection alive and finding a dead peer
takes four mechanisms, each in its own module:

* :mod:`~._write_guard`: whole frames on a shared socket; the owner's writes
  and the native thread's heartbeats under one native lock
  (:class:`~._write_guard.WriteGuard`);
* :mod:`~._readahead`: a frame costs one system call, or none
  (:func:`~._readahead.buffered_reader`, :func:`~._readahead.buffered_frame_reader`);
* :mod:`~._amqp_link`: one connection as a runner sees it, installed on the
  transport, observing inbound traffic without reading, sending heartbeats
  and declaring the connection dead (:class:`~._amqp_link.AmqpLink`);
* :mod:`~._liveness`: all of it (heartbeat policy, socket options, link,
  runner) behind the few calls an HA connection makes
  (:class:`~._liveness.Liveness`).

Over TLS, :mod:`~._tls_io` puts the owner's reads under the same guard. The
names those modules define are importable from here too, as before they had
a module each; new code imports them from their own module.
"""

from __future__ import annotations

from rabbit_ha_driver.connection._amqp_link import FULL_UNREAD, AmqpLink
from rabbit_ha_driver.connection._frames import HEARTBEAT_FRAME
from rabbit_ha_driver.connection._liveness import Liveness
from rabbit_ha_driver.connection._readahead import READ_CHUNK, buffered_frame_reader, buffered_reader
from rabbit_ha_driver.connection._sockets import raw_socket
from rabbit_ha_driver.connection._write_guard import FINISH_WITHIN, GUARD_WAIT, WriteGuard

__all__ = [
    "FINISH_WITHIN",
    "FULL_UNREAD",
    "GUARD_WAIT",
    "HEARTBEAT_FRAME",
    "READ_CHUNK",
    "AmqpLink",
    "Liveness",
    "WriteGuard",
    "buffered_frame_reader",
    "buffered_reader",
    "raw_socket",
]

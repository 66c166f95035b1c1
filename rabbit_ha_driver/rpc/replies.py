"""Replies to calls: one reply queue per client, waiters keyed by message id.

How this works: a client declares one queue, ``reply_<32 hex digits>``
(oslo.messaging's naming), bound to nothing: servers publish replies to the
default exchange with the queue's name as routing key. The queue is not
durable, not exclusive (an exclusive queue would be held by a dead connection
for a while after a failover) and carries ``x-expires`` so the broker deletes
it once its client is gone. The connection records the declaration and the
consumer and replays both after every reconnect, under the same name, so
replies to calls still in flight find the queue again.

Replies are acknowledged, one by one as they are handed over. After a silent
drop the broker keeps the lost connection's consumer until it notices the
connection is gone (two to three heartbeat intervals) and goes on delivering
a share of the replies to it; unacknowledged, they go back to the queue when
the broker closes that connection, and the new consumer gets them. So a reply
is late by at most that long, never lost, and no request is sent again for
it: a copy could run on another server of the topic.

A :class:`ReplyListener` owns that queue, its own connection and one thread
that drains it; each reply is decoded and handed to
:class:`~rabbit_ha_driver.rpc.reply_waiters.ReplyWaiters`, which holds one
pending call per outstanding call and matches replies to them (see
:mod:`rabbit_ha_driver.rpc.reply_waiters`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from rabbit_ha_driver import forks
from rabbit_ha_driver.clock import REAL_CLOCK, Clock
from rabbit_ha_driver.connection import Connection, Deadline, State
from rabbit_ha_driver.exceptions import (
    ClientClosed,
    InvalidMessage,
    MessagingTimeout,
    RabbitHAError,
)
from rabbit_ha_driver.rpc import envelope, queue_types, topology
from rabbit_ha_driver.rpc.reply_waiters import (
    DRAIN_SLICE,
    DUPLICATE_WINDOW,
    Outcome,
    PendingCall,
    ReplyWaiters,
)
from rabbit_ha_driver.settings import Settings

__all__ = [
    "DRAIN_SLICE",
    "DUPLICATE_WINDOW",
    "IDLE_READ_AFTER",
    "ClientClosed",
    "Outcome",
    "PendingCall",
    "ReplyListener",
    "ReplyWaiters",
    "handle_reply_message",
]

LOG = logging.getLogger(__name__)

#: After this many seconds without a call the reply queue's own thread reads
#: the connection; while calls are made, their callers read it.
IDLE_READ_AFTER = 0.5


def handle_reply_message(waiters: ReplyWaiters, message: Any, max_size: int) -> Outcome | None:
    """Decode one delivery of a reply queue and give it to ``waiters``.

    A reply that cannot be decoded is logged and dropped; if it was refused
    for its size and its message id can still be found, that call fails at
    once with the reason instead of timing out.
    """
    body = message.body
    try:
        inner = envelope.decode(
            body,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            headers=message.headers,
            max_size=max_size,
            compression=getattr(message, "compression", None),
        )
        reply = envelope.parse_reply(inner)
    except InvalidMessage as exc:
        msg_id, _ = envelope.sniff_ids(body) if isinstance(body, bytes | str) else (None, None)
        LOG.warning("dropping reply%s: %s", f" to {msg_id}" if msg_id else "", exc)
        if msg_id:
            waiters.fail(msg_id, InvalidMessage(f"the reply was refused: {exc}"))
        return None
    return waiters.deliver(reply)


class ReplyListener:
    """The reply queue of one transport: its connection and draining thread.

    Started by the first call (:meth:`ensure_started`, bounded by that call's
    deadline); a failed start is tried again by the next call.
    """

    def __init__(self, settings: Settings, connection: Connection,
                 waiters: ReplyWaiters, *, clock: Clock = REAL_CLOCK,
                 queue: str | None = None) -> None:
        self.settings = settings
        #: The reply queue, on the default exchange (see :func:`topology.reply_queue`).
        self._spec = topology.reply_queue(settings, queue)
        self.queue = self._spec.name
        self.waiters = waiters
        self._conn = connection
        self._clock = clock
        self._lock = threading.Lock()
        self._started = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0
        forks.at_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """In a forked child: the draining thread is gone and the queue is
        the parent's; this listener is abandoned (the transport makes another)."""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.abandon()

    def __repr__(self) -> str:
        state = "running" if self._started else "idle"
        return f"<ReplyListener {self.queue} {state}>"

    @property
    def running(self) -> bool:
        return self._started and not self._stopping.is_set()

    def ensure_started(self, deadline: float, what: str) -> None:
        """Declare the queue, consume it and start draining, before ``deadline``."""
        if self._started:
            return
        started = self._clock.now()
        if not self._lock.acquire(timeout=max(0.0, min(deadline - started,
                                                       threading.TIMEOUT_MAX))):
            raise MessagingTimeout(
                f"{what}: timed out waiting for the reply queue {self.queue} to be set up",
                waited=self._clock.now() - started)
        try:
            if self._started:
                return
            if self._stopping.is_set():
                raise ClientClosed(f"{what}: the client is closed")
            dl = Deadline(deadline, self._clock)
            try:
                self._spec.declare(self._conn, dl)
                self._spec.consume(self._conn, self._on_message, dl)
            except MessagingTimeout as error:
                waited = self._clock.now() - started
                raise MessagingTimeout(
                    f"{what}: could not set up reply queue {self.queue} within "
                    f"{waited:.1f}s: {error}", waited=waited,
                    last_error=error.last_error) from error
            self.waiters.attach(self._read)
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"rpc-replies-{self.queue[-8:]}")
            self._thread.start()
            self._started = True
            LOG.debug("consuming replies on %s", self.queue)
        finally:
            self._lock.release()

    def _on_message(self, message: Any) -> None:
        try:
            handle_reply_message(self.waiters, message, self.settings.rpc_max_message_size)
        finally:
            # After the waiter has it: a reply delivered to a connection that
            # dies before this goes back to the queue (see the module
            # docstring). Always: a reply that cannot be handled must not come
            # back after every reconnect.
            self._conn.ack(message)

    def _read(self, seconds: float, within: float | None = None) -> None:
        """One turn of reading the reply connection (a caller's or this thread's)."""
        if self._stopping.is_set():
            return
        try:
            self._conn.drain_events(seconds, within=within)
            self._failures = 0
        except Exception:
            self._failures += 1
            LOG.log(logging.ERROR if self._failures == 1 else logging.DEBUG,
                    "reply queue %s: draining failed (%d in a row)", self.queue,
                    self._failures, exc_info=True)
            raise

    def _run(self) -> None:
        while not self._stopping.is_set():
            pause = self.waiters.drain_when_idle(DRAIN_SLICE, IDLE_READ_AFTER)
            if pause > 0:
                self._stopping.wait(pause)

    def stop(self) -> None:
        """Stop draining and close the connection; never hangs."""
        self._stopping.set()
        self.waiters.attach(None)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(DRAIN_SLICE * 4)
            if thread.is_alive():
                LOG.warning("reply queue %s: draining thread did not stop in time", self.queue)
        if (self._started and self._conn.state is State.CONNECTED
                and queue_types.deletes_own_queues(self.settings)):
            # Without this the queue would linger until x-expires removes it.
            try:
                self._conn.delete_queue(self.queue, deadline=Deadline.after(1.0, self._clock))
            except RabbitHAError as error:
                LOG.debug("reply queue %s not deleted (it expires by itself): %s",
                          self.queue, error)
        self._conn.close()

    def abandon(self) -> None:
        """Forget this listener without touching its connection (after a fork)."""
        self._stopping.set()
        self.waiters.attach(None)
        self._thread = None

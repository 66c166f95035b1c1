"""Publishing with publisher confirms, and what an unconfirmed publish means.

How it works. Publishes use publisher confirms and the mandatory flag on AMQP.
A publish that the broker returned as unroutable raises
:class:`~rabbit_ha_driver.exceptions.Unroutable`, a nack
:class:`~rabbit_ha_driver.exceptions.PublishNacked`: the caller decides whether
to send again. A publish whose frame was never written is sent again after
recovery; one that was written but not confirmed before the connection died is
sent again only when the caller allows it (``retry_uncertain``). A waiter past
its deadline first reads what already arrived (a thread held up by a blocked
eventlet hub wakes late with its confirm unread).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Iterator
from typing import Any

import amqp.exceptions

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import _errors as errors
from rabbit_ha_driver.connection import _frames as frames
from rabbit_ha_driver.connection._channel import close_of
from rabbit_ha_driver.connection._confirms import Outcome, Pending, settled
from rabbit_ha_driver.connection._consuming import _Consuming
from rabbit_ha_driver.connection._lifecycle import State
from rabbit_ha_driver.connection._retry import Deadline

LOG = logging.getLogger(__name__)

#: Seconds of one read while a publish waits for the broker to unblock.
BLOCKED_READ = 0.5


#: Seconds a read of frames that already arrived may wait for the rest of one.
WAITING_READ = 0.001

#: A waiter past its deadline first reads what already arrived: at most this
#: many reads of at most this many seconds each (see _read_what_arrived).
LAST_LOOK_READS = 16
LAST_LOOK_WAIT = 0.005


class _ProcessId:
    """``os.getpid()`` without a system call per publish: kept by a fork hook."""

    def __init__(self) -> None:
        self.value = os.getpid()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self.refresh)

    def refresh(self) -> None:
        self.value = os.getpid()

    def __call__(self) -> int:
        return self.value


#: This process's id, as ``os.getpid()`` returns it (a forked child updates it).
_pid = _ProcessId()


class _Publishing(_Consuming):
    """Publishes with confirms and settles what was not confirmed."""

    def publish(self, body: bytes, exchange: str, routing_key: str, *,
                headers: dict[str, Any] | None = None, properties: dict[str, Any] | None = None,
                mandatory: bool = True, deadline: Deadline | None = None,
                retry_uncertain: bool = False) -> None:
        """Publish and wait for the broker's confirm.

        Raises :class:`Unroutable` if returned, :class:`PublishNacked` if
        nacked. A message whose frames were never written is sent again after
        recovery. If the connection dies after the write but before the
        confirm, the outcome is unknown: it is sent again only if
        ``retry_uncertain`` (at-least-once); otherwise
        :class:`~rabbit_ha_driver.exceptions.ConnectionLost` is raised.
        """
        deadline = deadline or self._default_deadline()
        while True:
            pending = self.publish_nowait(body, exchange, routing_key, headers=headers,
                                          properties=properties, mandatory=mandatory,
                                          deadline=deadline)
            self.wait_confirm(pending, deadline)
            if pending.outcome is Outcome.DROPPED and not deadline.expired():
                continue  # dropped unread after another message's refusal: never taken
            if pending.outcome is Outcome.LOST and retry_uncertain:
                continue
            self.raise_for(pending, exchange, routing_key)
            return

    def publish_nowait(self, body: bytes, exchange: str, routing_key: str, *,
                       headers: dict[str, Any] | None = None,
                       properties: dict[str, Any] | None = None,
                       mandatory: bool = True, deadline: Deadline | None = None) -> Pending:
        """Write a message without waiting for its confirm; returns its :class:`Pending`.

        The confirm is read by whoever reads this connection next
        (:meth:`wait_confirm`, another publish's wait, a drain). Messages
        written one after the other this way are confirmed together, a
        round trip for many instead of one each. Recovers the connection
        before writing, like every operation.
        """
        deadline = deadline or self._default_deadline()
        base_props = properties or {}
        if self._confirms and self._state is State.CONNECTED:
            written = self._publish_open(body, exchange, routing_key, headers, base_props,
                                         mandatory, deadline)
            if written is not None:
                return written
        return self._publish_ensured(body, exchange, routing_key, headers, base_props,
                                     mandatory, deadline)

    def _publish_ensured(self, body: bytes, exchange: str, routing_key: str,
                         headers: dict[str, Any] | None, base_props: dict[str, Any],
                         mandatory: bool, deadline: Deadline) -> Pending:
        """:meth:`publish_nowait` through :meth:`ensure`: recover, wait out a block, write.

        Apart from :meth:`publish_nowait` so the common case builds none of
        its closures.
        """

        def attempt(channel: Any) -> Pending:
            if self._state is not State.BLOCKED:
                return write(channel)
            self._wait_unblocked(deadline)
            # The wait may have outlasted the request deadline the attempt
            # began under: the write and its read-back get one of their own.
            with self._request_deadline("basic.publish",
                                        deadline.cap(self.settings.request_timeout)):
                return write(channel)

        def write(channel: Any) -> Pending:
            props = dict(base_props)
            if self._confirms:
                encoded = self._encode_publish(channel, body, exchange, routing_key, headers,
                                               props, mandatory)
                if encoded is not None:
                    return self._write_recorded(*encoded)
            message = channel.prepare_message(
                body, props.pop("priority", None), props.pop("content_type", None),
                props.pop("content_encoding", None), headers, props)
            serialize = getattr(message, "_serialize_properties", None)  # py-amqp's message
            if serialize is not None:
                with _encoding(exchange, routing_key):
                    serialize()  # what basic_publish encodes first; nothing is written yet
            channel.basic_publish(message, exchange=exchange, routing_key=routing_key,
                                  mandatory=mandatory)
            if not self._confirms:
                return settled(Outcome.ACKED)  # memory: refused at once if unroutable
            return self._tracker.published(props.get("message_id"), exchange, self._clock.now())

        return self.ensure(attempt, operation="basic.publish", deadline=deadline)

    def _publish_open(self, body: bytes, exchange: str, routing_key: str,
                      headers: dict[str, Any] | None, base_props: dict[str, Any],
                      mandatory: bool, deadline: Deadline) -> Pending | None:
        """The common case of :meth:`publish_nowait`, without :meth:`ensure`'s machinery.

        On an open, unblocked AMQP connection nothing can need recovering
        before the write, and a write needs no request deadline. Returns
        None, having written nothing, whenever :meth:`ensure` must decide
        (busy lock, state changed, a property left to py-amqp, a failed
        write).
        """
        wait = deadline.remaining()
        if not self._lock.acquire(timeout=-1 if wait == float("inf") else max(0.0, wait)):
            return None
        try:
            channel = self._channel
            if self._state is not State.CONNECTED or channel is None or _pid() != self._pid:
                return None
            encoded = self._encode_publish(channel, body, exchange, routing_key, headers,
                                           dict(base_props), mandatory)
            if encoded is None:
                return None
            try:
                return self._write_recorded(*encoded, deadline=deadline)
            except Exception as error:
                # Nothing of it reached the broker as a whole message:
                # ensure() reconnects and sends it.
                self._lost(str(errors.translate(error, "basic.publish", self._addr())))
                return None
        finally:
            self._lock.release()

    def _encode_publish(self, channel: Any, body: bytes, exchange: str, routing_key: str,
                        headers: dict[str, Any] | None, props: dict[str, Any],
                        mandatory: bool) -> tuple[bytes, str | None, str] | None:
        """The frames of a publish on ``channel``, the ``message_id`` that tells
        a return apart (set in ``props``) and the exchange; None if a property
        is left to py-amqp."""
        message_id = (props.setdefault("message_id", self._tracker.next_message_id())
                      if mandatory else None)
        # Without headers (the common case) the properties go as they are:
        # frames.publish reads a missing "headers" member as no headers.
        framed = (props if headers is None and "headers" not in props
                  else {**props, "headers": headers})
        try:
            data = frames.publish(channel.channel_id, self._raw.frame_max, exchange, routing_key,
                                  body, framed, mandatory=mandatory)
        except _UNENCODABLE as error:  # inline, not _encoding(): every publish passes here
            raise _unencodable(exchange, routing_key, error) from error
        return None if data is None else (data, message_id, exchange)

    def _write_recorded(self, data: bytes, message_id: str | None, exchange: str,
                        deadline: Deadline | None = None) -> Pending:
        """Write encoded publish frames and record the message for its confirm.

        A failed write raises with nothing recorded (one that missed its
        deadline, ``deadline`` or the request's, may have left a frame half
        written: the caller tears the connection down). After the write, not
        before, the frames that arrived meanwhile are read (confirms, a
        blocked notice); the message was written, so a failure there must
        not send it again: the connection is only marked lost.
        """
        raw = self._raw
        link = self._link
        if deadline is not None and link is not None:
            # The link's deadline itself (what _request_deadline enters): one
            # context manager less on the path of every publish.
            with link.request_deadline("basic.publish",
                                       deadline.cap(self.settings.request_timeout)):
                raw.transport.write(data)
        else:
            raw.transport.write(data)
        raw.bytes_sent += 1
        pending = self._tracker.published(message_id, exchange, self._clock.now())
        try:
            self._read_waiting()
        except Exception as error:
            close = close_of(error)
            if close is not None:
                self._restore_after_close(close, deadline)
            else:
                self._lost(f"reading after a publish failed: {error}")
        return pending

    def _read_waiting(self) -> None:
        """Dispatch the frames that already arrived (confirms, a blocked notice).

        What py-amqp's own publish does first; here after the write, only
        when the socket or the read-ahead buffer holds something (so nothing
        waits and no timeout is set for nothing), and every frame already
        read ahead whole, so confirms never pile up.
        """
        liveness = self.liveness
        link = liveness.link if liveness is not None else None
        if link is None or not link.pending_bytes():
            return
        raw = self._raw
        self._drain_once(WAITING_READ)
        while raw is self._raw and self._link is not None and self._link.frame_buffered():
            self._drain_once(WAITING_READ)

    def wait_confirm(self, pending: Pending, deadline: Deadline | None = None) -> None:
        """Read this connection until ``pending`` is settled (see :class:`Outcome`).

        A connection that dies or stays silent past ``request_timeout``
        settles it as LOST (and recovers on the next operation). Raises
        MessagingTimeout when ``deadline`` passes first.
        """
        if pending.done:
            return
        deadline = deadline or self._default_deadline()
        began = self._clock.now()
        with self._locked(deadline, "basic.publish"):
            budget = self.settings.request_timeout
            while not pending.done:
                # When the caller's deadline comes before request_timeout,
                # running out of it says nothing about the broker: the wait
                # ends, the connection (and every other message waiting for
                # a confirm on it) stays.
                callers = deadline.remaining() < budget
                try:
                    with self._request_deadline("basic.publish", deadline.cap(budget)):
                        self._drain_once(deadline.cap(budget))
                except errors.RequestTimeout as error:
                    # A broker under a resource alarm holds confirms back on
                    # purpose: that is not a dead channel. Wait up to the
                    # publish's own deadline instead.
                    # But a broker that has confirmed nothing for
                    # request_timeout (the oldest message still waits) is
                    # stuck, whoever is waiting: without this, callers with
                    # short deadlines would keep a deaf channel for ever.
                    oldest = self._tracker.oldest_at()
                    stuck = oldest is not None and self._clock.now() - oldest >= budget
                    if self._state is not State.BLOCKED and (not callers or stuck):
                        self._lost(f"no publisher confirm within {budget:g}s" if stuck
                                   else f"no publisher confirm within {error.timeout:g}s")
                        continue
                    if self._state is not State.BLOCKED:
                        if self._read_what_arrived(pending):
                            continue
                        raise exc.MessagingTimeout(
                            f"broker {self._addr()} did not confirm the message before the deadline",
                            waited=self._clock.now() - began) from None
                    if deadline.expired():
                        raise exc.MessagingTimeout(
                            f"broker {self._addr()} kept publishing blocked (resource alarm) past "
                            "the deadline; the message may still be delivered when it unblocks",
                            waited=self._clock.now() - began) from None
                except Exception as error:
                    close = close_of(error)
                    if close is not None:
                        # Settles every waiting message of the closed channel.
                        self._restore_after_close(close, deadline)
                        continue
                    errors.raise_refusal(error, "basic.publish", self._addr())
                    self._lost(str(errors.translate(error, "basic.publish", self._addr())))
                    continue
                if not pending.done and deadline.expired() and not self._read_what_arrived(pending):
                    raise exc.MessagingTimeout(
                        f"broker {self._addr()} did not confirm the message before the deadline",
                        waited=self._clock.now() - began)

    def _read_what_arrived(self, pending: Pending) -> bool:
        """Read, without waiting, what already arrived; True once ``pending`` is settled.

        A thread that could not run for a while (an eventlet hub held by
        CPU-bound work) wakes past its deadline with its read timed out and
        the confirm it waited for unread in the socket: that is not a missed
        deadline. At most :data:`LAST_LOOK_READS` short reads; any error is
        left to the next operation.
        """
        for _ in range(LAST_LOOK_READS):
            if pending.done:
                break
            try:
                with self._request_deadline("basic.publish", LAST_LOOK_WAIT):
                    self._drain_once(LAST_LOOK_WAIT)
            except Exception:  # the caller reports the missed deadline
                break
        return pending.done

    def raise_for(self, pending: Pending, exchange: str, routing_key: str) -> None:
        """Raise what a settled publish that was not acked means; return if acked."""
        outcome = pending.outcome
        if outcome is Outcome.ACKED:
            return
        if outcome is Outcome.RETURNED:
            raise exc.Unroutable(
                f"broker returned message for {exchange!r}/{routing_key!r}: "
                f"{pending.reply_code} {pending.reply_text}", host=self._addr(),
                reply_code=pending.reply_code, operation="basic.publish")
        if outcome is Outcome.NACKED:
            raise exc.PublishNacked("broker nacked the message", host=self._addr(),
                                    operation="basic.publish")
        if outcome is Outcome.REFUSED:
            raise exc.IrrecoverableError(
                f"publish to {exchange!r}/{routing_key!r}: the broker closed the channel over it: "
                f"{pending.reply_code} {pending.reply_text}", host=self._addr(),
                reply_code=pending.reply_code, operation="basic.publish")
        if outcome is Outcome.DROPPED:
            raise exc.ChannelDead(
                f"publish to {exchange!r}/{routing_key!r}: dropped unread by the broker after it "
                f"refused another message on the channel ({pending.closed_by}); safe to send again",
                host=self._addr(), operation="basic.publish")
        if pending.closed_by is not None:
            raise exc.ConnectionLost(
                f"publish to {exchange!r}/{routing_key!r}: the broker closed the channel "
                f"({pending.closed_by}) after the message was written and before it was "
                "confirmed; not sent again", host=self._addr(), operation="basic.publish")
        raise exc.ConnectionLost(
            f"publish to {exchange!r}/{routing_key!r}: connection lost after the "
            "message was written and before the broker confirmed it; not sent again",
            host=self._addr(), operation="basic.publish")

    def _wait_unblocked(self, deadline: Deadline) -> None:
        """Wait, reading, until the broker unblocks publishing or ``deadline`` passes.

        Not under the request deadline the attempt runs in: a broker that
        blocked publishing (a resource alarm) answers nothing until it
        unblocks, and that silence is not a dead connection. Only the
        caller's deadline ends the wait; a broker that really died is found
        by the heartbeats, which go on while it is blocked.
        """
        began = self._clock.now()
        while self._state is State.BLOCKED:
            if deadline.expired():
                raise exc.MessagingTimeout(
                    f"broker {self._addr()} kept publishing blocked past the deadline",
                    waited=self._clock.now() - began)
            # A deadline a little past this read's own end: it never cuts
            # the read short, and a frame written meanwhile (a close-ok)
            # still gets a finite time to leave.
            read_for = deadline.cap(BLOCKED_READ)
            with self._request_deadline("connection.blocked", read_for + 1.0):
                self._drain_once(read_for)


#: What encoding a property AMQP has no field for raises.
_UNENCODABLE = (struct.error, OverflowError, amqp.exceptions.FrameSyntaxError)


def _unencodable(exchange: str, routing_key: str, error: BaseException) -> exc.InvalidMessage:
    """A property AMQP cannot encode (a datetime timestamp, a number out of
    range, a header value of a type AMQP has no field for) is the message's
    fault, not the connection's: raised at once instead of reconnecting
    until the deadline."""
    return exc.InvalidMessage(
        f"message to {exchange!r}/{routing_key!r} has a property AMQP cannot encode: {error}")


@contextlib.contextmanager
def _encoding(exchange: str, routing_key: str) -> Iterator[None]:
    """Raise :func:`_unencodable` for a property AMQP cannot encode."""
    try:
        yield
    except _UNENCODABLE as error:
        raise _unencodable(exchange, routing_key, error) from error

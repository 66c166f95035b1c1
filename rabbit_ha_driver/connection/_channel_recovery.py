"""Opening channels, and restoring one the broker closed.

How it works. A channel is opened with confirm mode and QoS and gets the
recorded topology replayed on it (``_declarer``). When the broker closes the
channel while the connection stays up (a consumer acknowledgement timeout, a
publish to a missing exchange, a refused request), whichever thread reads the
close replaces it: messages waiting for a confirm on it are settled (see
``_settle_refused``), a new channel is opened and the topology replayed, and
deliveries of the old channel are never acknowledged on the new one. If
restoring fails, the connection is dropped and the next operation reconnects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from rabbit_ha_driver import events as ev
from rabbit_ha_driver.connection import _errors as errors
from rabbit_ha_driver.connection._channel import BrokerClose, ChannelState, close_of
from rabbit_ha_driver.connection._confirms import ConfirmTracker, settle_after_refusal
from rabbit_ha_driver.connection._lifecycle import OPEN_STATES, _Lifecycle
from rabbit_ha_driver.connection._retry import Deadline
from rabbit_ha_driver.connection._topology import BindingDecl, ConsumerDecl, ExchangeDecl, QueueDecl

LOG = logging.getLogger(__name__)


#: Seconds after a channel opens before its consumed queues are first checked.
POST_RECOVERY_CHECK = 1.0
#: The methods a topology replay sends: a refusal of one of them is the replay's own.
_REPLAY_METHODS = frozenset({"basic.qos", "exchange.declare", "queue.declare", "queue.bind",
                             "basic.consume"})


class _ChannelRecovery(_Lifecycle):
    """Opens channels and restores one the broker closed."""

    def _open_channel(self) -> None:
        self._life.move(ChannelState.OPENING)
        assert self._link is not None
        channel = self._link.channel()
        # The channel tells us first when the broker closes it (see channel.py).
        channel.on_broker_close = self._on_broker_close
        self._active_tags = set()
        # Check soon after every (re)open: right after a node dies, the broker
        # can accept a declare and a consume for a queue whose process died
        # with the node, and such a consumer would hear nothing.
        self._next_consumer_check = self._clock.now() + min(
            self.settings.consumer_check_interval, POST_RECOVERY_CHECK)
        self._zero_consumers.clear()
        self._starving.clear()
        self._unsettled = 0
        self._confirms = self._link.confirms
        self._tracker.lose_all()
        if self._confirms:
            channel.confirm_select()
            tracker = self._tracker = ConfirmTracker()
            channel.events["basic_ack"].add(tracker.on_ack)
            channel.events["basic_nack"].add(tracker.on_nack)
            channel.events["basic_return"].add(
                lambda error, exchange, key, message: tracker.on_return(
                    getattr(error, "reply_code", 312), getattr(error, "reply_text", ""),
                    getattr(message, "properties", None) or {}))
        self._channel = channel

    def _reopen_channel(self, deadline: Deadline, reason: str) -> bool:
        """A new channel on the same connection, with the topology replayed."""
        LOG.info("[%s] reopening channel on %s: %s", self.name, self._addr(), reason)
        try:
            with self._request_deadline("channel.open", deadline.cap(self.settings.request_timeout)):
                old = self._channel
                self._channel = None
                if old is not None:
                    self._release(old)
                self._open_channel()
                self._topology.replay(self._declarer(self._channel))
            self._life.move(ChannelState.OPEN)
            return True
        except Exception as error:
            close = close_of(error)
            operation = close.method if close is not None and close.method else "queue.declare"
            if operation in _REPLAY_METHODS:
                errors.raise_refusal(error, operation, self._addr(), recovering=True)
            LOG.info("[%s] reopening the channel failed (%s); reconnecting", self.name, error)
            return False

    def _release(self, channel: Any) -> None:
        """Let go of a channel being replaced: closed properly unless the broker closed it."""
        try:
            if getattr(channel, "broker_close", None) is None and getattr(channel, "is_open", False):
                channel.close()  # else the broker would keep it, and its consumers
            else:
                channel.collect()
        except Exception as error:  # already gone
            LOG.debug("[%s] dropping old channel: %s", self.name, error)

    def _on_broker_close(self, channel: Any, close: BrokerClose) -> None:
        """The channel's own report that the broker closed it (called while reading)."""
        if channel is self._channel:
            self._channel_closed(close)

    def _channel_closed(self, close: BrokerClose) -> None:
        """Drop the channel the broker closed: its waiting confirms are settled as lost."""
        channel, self._channel = self._channel, None
        if channel is None and self._life.state is ChannelState.BROKER_CLOSED:
            return  # already noted (the channel reported it before raising)
        if channel is not None:
            with suppress(Exception):  # released already by RecoverableChannel
                channel.collect()
        waiting = self._tracker.take_waiting()
        if close.method == "basic.publish" and close.reply_code == 404:
            # Which message was refused is told after the restore (see
            # _settle_refused); until then their publishers wait for the lock.
            self._refused_waiting.extend(waiting)
            self._refused_close = close
        else:
            settle_after_refusal(waiting, close, None)
        self._active_tags = set()
        self._life.closed_by_broker(close)
        self.events.emit(ev.ChannelClosedByBroker(self.name, self._addr() or "memory",
                                                  close.reply_code, str(close), len(waiting)))

    def _restore_channel(self, deadline: Deadline) -> bool:
        """A new channel in place of one the broker closed; False if that failed."""
        started = self._clock.now()
        try:
            # Before the replay: it declares the connection's exchanges
            # again, and the probe would then find the missing one present.
            self._settle_refused(deadline)
            if not self._reopen_channel(deadline, f"the broker closed the channel ({self._life.last_close})"):
                return False
        finally:
            # Never leave a publisher waiting: unknown stays lost.
            waiting, self._refused_waiting = self._refused_waiting, []
            settle_after_refusal(waiting, self._refused_close, None)
        self._life.restores += 1
        self.events.emit(ev.ChannelRestored(self.name, self._addr() or "memory",
                                            len(self._topology.consumers), self._clock.now() - started))
        return True

    def _settle_refused(self, deadline: Deadline) -> None:
        """After a close over a publish: find the missing exchange, settle who waited.

        The broker names the refused method, not the message. A passive
        declare of each exchange the waiting messages went to, on a channel
        of its own opened before the restore replays the topology, finds
        the missing one (and makes the broker close that channel); the
        oldest message to it was refused, later ones were dropped unread,
        earlier ones may have been taken.
        """
        waiting, close = self._refused_waiting, self._refused_close
        names = sorted({p.exchange for p in waiting if p.exchange})
        link = self._link
        if not names or close is None or link is None:
            return
        try:
            with self._request_deadline("channel.open", deadline.cap(self.settings.request_timeout)):
                probe_channel = link.channel()
        except Exception as error:
            LOG.debug("[%s] could not tell which publish was refused: %s", self.name, error)
            return
        try:
            for name in names:
                try:
                    with self._request_deadline("exchange.declare",
                                                deadline.cap(self.settings.request_timeout)):
                        probe_channel.exchange_declare(exchange=name, type="topic", passive=True)
                except Exception as error:
                    probe = close_of(error)
                    if probe is None or probe.reply_code != 404:
                        LOG.debug("[%s] could not tell which publish was refused: %s", self.name, error)
                        return
                    self._refused_waiting = []
                    settle_after_refusal(waiting, close, name)
                    return
        finally:
            with self._request_deadline("channel.close", deadline.cap(self.settings.request_timeout)):
                self._release(probe_channel)

    def _restore_after_close(self, close: BrokerClose, bound: Deadline | None = None) -> None:
        """Seen by a reader: note the close and restore at once (or reconnect).

        ``bound``: the reader's own deadline, if it has one (see drain_events).
        """
        if self._state not in OPEN_STATES:
            return
        self._channel_closed(close)
        budget = self._request_budget()
        if bound is not None:
            budget = Deadline(min(budget.at, bound.at), self._clock)
        if not self._restore_channel(budget):
            self._lost(f"restoring the channel after the broker closed it ({close}) failed")

    def _declarer(self, channel: Any) -> _ChannelDeclarer:
        return _ChannelDeclarer(self, channel)

    def _deliver(self, decl: ConsumerDecl, channel: Any) -> Callable[[Any], None]:
        to_python = self._link.message_converter(channel) if self._link is not None else None

        def deliver(raw_message: Any) -> None:
            message = to_python(raw_message) if to_python is not None else raw_message
            self._delivered[decl.queue_key] += 1
            self._relost.discard(decl.queue_key)
            if decl.no_ack:
                if hasattr(message, "_state"):
                    # The broker counts it acknowledged on delivery: an ack
                    # written for it would name an unknown tag and close the channel.
                    message._state = "ACK"
            elif channel is self._channel:
                self._unsettled += 1
            try:
                decl.callback(message)
            except Exception:
                LOG.exception("[%s] consumer callback for queue %r failed",
                              self.name, self._topology.queue_name(decl.queue_key))

        return deliver

    def _on_cancel(self, tag: str) -> None:
        decl = self._topology.consumers.get(tag)
        if decl is None:
            return
        self._active_tags.discard(tag)
        delay = self.settings.kombu_reconnect_delay
        self._cancels.cancelled(decl.queue_key, self._clock.now(), delay)
        self.events.emit(ev.ConsumerCancelled(self.name, self._topology.queue_name(decl.queue_key), delay))


class _ChannelDeclarer:
    """Topology declarations on one channel (used for first use and replay)."""

    def __init__(self, conn: _ChannelRecovery, channel: Any) -> None:
        self._conn = conn
        self._channel = channel

    def qos(self, prefetch_count: int) -> None:
        self._channel.basic_qos(0, prefetch_count, False)

    def exchange(self, decl: ExchangeDecl) -> None:
        self._channel.exchange_declare(exchange=decl.name, type=decl.type, durable=decl.durable,
                                       auto_delete=decl.auto_delete, arguments=dict(decl.arguments))

    def queue(self, decl: QueueDecl) -> str:
        name = "" if decl.server_named else decl.name
        result = self._channel.queue_declare(queue=name, durable=decl.durable, auto_delete=decl.auto_delete,
                                             exclusive=decl.exclusive, arguments=decl.arguments or None)
        return str(getattr(result, "queue", None) or (result[0] if result else name))

    def bind(self, queue: str, decl: BindingDecl) -> None:
        self._channel.queue_bind(queue=queue, exchange=decl.exchange, routing_key=decl.routing_key)

    def consume(self, queue: str, decl: ConsumerDecl) -> None:
        conn = self._conn
        if decl.tag in conn._active_tags:
            # Already consuming on this channel (a channel restore replayed
            # it while its cancel waited for its delay): a second
            # basic.consume with the tag makes RabbitMQ close the connection.
            return
        kwargs: dict[str, Any] = {}
        link = conn._link
        if link is not None and link.notifies_cancel:
            kwargs["on_cancel"] = conn._on_cancel
        if link is not None and link.consumer_arguments:
            kwargs["arguments"] = decl.arguments or None
        self._channel.basic_consume(queue=queue, no_ack=decl.no_ack,
                                    callback=conn._deliver(decl, self._channel),
                                    consumer_tag=decl.tag, **kwargs)
        conn._active_tags.add(decl.tag)

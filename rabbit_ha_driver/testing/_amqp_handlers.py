"""What the scripted broker does with each method: RabbitMQ's behaviour, or the script's.

:class:`BrokerState` holds the broker's state (exchanges, queues, bindings,
consumers, connections, what was seen) and answers each method a client sends
(``_on_<class>_<method>``), routing publishes and dispatching deliveries as
RabbitMQ does unless :attr:`BrokerState.publish_script` or
:attr:`BrokerState.method_script` says otherwise.
"""

from __future__ import annotations

import collections
import itertools
import threading
from typing import Any

from amqp import spec
from amqp.basic_message import Message

from rabbit_ha_driver.testing._amqp_session import _ServerConnection
from rabbit_ha_driver.testing._amqp_wire import (
    _IDS,
    BLOCK,
    DROP,
    HOLD,
    NACK,
    RETURN,
    SILENT,
    Seen,
    _Consumer,
    _content,
    _method,
    _Stored,
)


class BrokerState:
    """The scripted broker's state and its answers to each method."""

    def __init__(self, *, heartbeat: int = 0) -> None:
        #: The heartbeat interval offered in ``connection.tune``.
        self.heartbeat_interval = heartbeat
        #: Answers to the next publishes, oldest first; empty: behave like RabbitMQ.
        self.publish_script: collections.deque[Any] = collections.deque()
        #: Answers to the next requests of a method (by name), oldest first.
        self.method_script: dict[str, collections.deque[Any]] = collections.defaultdict(collections.deque)
        #: Close every connection with 403 ACCESS_REFUSED after start-ok.
        self.refuse_login = False
        #: Accept connections and never answer their protocol header.
        self.stall_handshake = False
        #: Every method received, in order.
        self.seen: list[Seen] = []
        self.heartbeats_received = 0
        self.exchanges: dict[str, str] = {"": "direct", "amq.direct": "direct", "amq.topic": "topic",
                                          "amq.fanout": "fanout"}
        self.queues: dict[str, collections.deque[_Stored]] = {}
        self.bindings: set[tuple[str, str, str]] = set()  # (queue, exchange, routing key)
        self.consumers: dict[str, _Consumer] = {}
        self.connections: list[_ServerConnection] = []
        self.blocked = False
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._names = itertools.count(1)

    def live_connections(self) -> list[_ServerConnection]:
        with self._lock:
            return [c for c in self.connections if c.alive]

    def cancel_consumers(self, queue: str) -> list[str]:
        """Cancel the consumers of ``queue`` with ``basic.cancel`` (as when it is deleted)."""
        with self._lock:
            tags = [t for t, c in self.consumers.items() if c.queue == queue]
            for tag in tags:
                consumer = self.consumers.pop(tag)
                consumer.conn.send_method(consumer.channel, spec.Basic.Cancel, "sb", tag, True)
            return tags

    def _release(self, conn: _ServerConnection) -> None:
        for channel, tags in conn.held.items():
            if tags:
                conn.send_method(channel, spec.Basic.Ack, "Lb", max(tags), len(tags) > 1)
        conn.held.clear()

    def _record(self, conn: _ServerConnection, channel: int, name: str, args: dict[str, Any],
                content: Message | None) -> None:
        self.seen.append(Seen(conn.number, channel, name, args,
                              None if content is None else bytes(content.body),
                              None if content is None else dict(content.properties)))
        self._changed.notify_all()

    def _note_heartbeat(self, conn: _ServerConnection) -> None:
        with self._lock:
            self.heartbeats_received += 1
            self._changed.notify_all()

    def _connection_gone(self, conn: _ServerConnection) -> None:
        for channel in list(conn.open_channels):
            self._forget_channel(conn, channel)
        self._changed.notify_all()

    def _forget_channel(self, conn: _ServerConnection, channel: int) -> None:
        """The channel is closed: its consumers go, its unacknowledged messages return."""
        if channel in conn.open_channels:
            conn.open_channels.remove(channel)
        conn.confirming.discard(channel)
        for tag in [t for t, c in self.consumers.items() if c.conn is conn and c.channel == channel]:
            del self.consumers[tag]
        for key in sorted(k for k in conn.unacked if k[0] == channel):
            queue, stored = conn.unacked.pop(key)
            stored.redelivered = True
            self.queues.setdefault(queue, collections.deque()).appendleft(stored)
        conn.held.pop(channel, None)

    def _scripted(self, name: str) -> Any:
        script = self.method_script.get(name)
        return script.popleft() if script else None

    def _received(self, conn: _ServerConnection, channel: int, name: str, args: dict[str, Any],
                  content: Message | None) -> None:
        self._record(conn, channel, name, args, content)
        if conn.closing:
            if name in ("connection.close-ok", "connection.close"):
                if name == "connection.close":
                    conn.send_method(0, spec.Connection.CloseOk)
                conn.drop()
            return
        if channel in conn.closing_channels:
            # After a channel.close, everything but its answer is dropped.
            if name == "channel.close-ok":
                conn.closing_channels.discard(channel)
            elif name == "channel.close":
                conn.send_method(channel, spec.Channel.CloseOk)
            return
        reaction = self._scripted(name)
        if reaction == SILENT:
            return
        if reaction == DROP:
            conn.drop()
            return
        if isinstance(reaction, tuple) and reaction[0] == "close":
            # ("close", code, text[, (class_id, method_id)]): the method the
            # close names, this one unless given (a close over another method).
            sig = reaction[3] if len(reaction) > 3 else _IDS[name]
            conn.close_channel(channel, reaction[1], reaction[2], *sig)
            return
        if isinstance(reaction, tuple) and reaction[0] == "close_connection":
            sig = _IDS[name]
            conn.close_connection(reaction[1], reaction[2], *sig)
            return
        handler = getattr(self, "_on_" + name.replace(".", "_").replace("-", "_"), None)
        if handler is not None:
            handler(conn, channel, args, content)

    def _on_connection_close(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                             content: Any) -> None:
        conn.send_method(0, spec.Connection.CloseOk)
        conn.drop()

    def _on_channel_open(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                         content: Any) -> None:
        conn.open_channels.append(channel)
        conn.delivery_tags[channel] = itertools.count(1)
        conn.publish_seq[channel] = 0
        conn.send_method(channel, spec.Channel.OpenOk, "S", "")

    def _on_channel_close(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                          content: Any) -> None:
        self._forget_channel(conn, channel)
        conn.send_method(channel, spec.Channel.CloseOk)

    def _on_confirm_select(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                           content: Any) -> None:
        conn.confirming.add(channel)
        if not args["nowait"]:
            conn.send_method(channel, spec.Confirm.SelectOk)

    def _on_basic_qos(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                      content: Any) -> None:
        conn.send_method(channel, spec.Basic.QosOk)

    def _on_exchange_declare(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                             content: Any) -> None:
        name = args["exchange"]
        if args["passive"]:
            if name not in self.exchanges:
                conn.close_channel(channel, 404, f"NOT_FOUND - no exchange '{name}' in vhost '/'",
                                   *spec.Exchange.Declare)
                return
        else:
            self.exchanges[name] = args["type"]
        if not args["nowait"]:
            conn.send_method(channel, spec.Exchange.DeclareOk)

    def _on_queue_declare(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                          content: Any) -> None:
        name = args["queue"] or f"amq.gen-{next(self._names)}"
        if args["passive"] and name not in self.queues:
            conn.close_channel(channel, 404, f"NOT_FOUND - no queue '{name}' in vhost '/'",
                               *spec.Queue.Declare)
            return
        messages = self.queues.setdefault(name, collections.deque())
        count = sum(1 for c in self.consumers.values() if c.queue == name)
        if not args["nowait"]:
            conn.send_method(channel, spec.Queue.DeclareOk, "sll", name, len(messages), count)

    def _on_queue_bind(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                       content: Any) -> None:
        if args["exchange"] not in self.exchanges:
            conn.close_channel(channel, 404, f"NOT_FOUND - no exchange '{args['exchange']}' in vhost '/'",
                               *spec.Queue.Bind)
            return
        self.bindings.add((args["queue"], args["exchange"], args["routing_key"]))
        if not args["nowait"]:
            conn.send_method(channel, spec.Queue.BindOk)

    def _on_queue_delete(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                         content: Any) -> None:
        name = args["queue"]
        messages = self.queues.pop(name, collections.deque())
        self.bindings = {b for b in self.bindings if b[0] != name}
        self.cancel_consumers(name)
        if not args["nowait"]:
            conn.send_method(channel, spec.Queue.DeleteOk, "l", len(messages))

    def _on_basic_consume(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                          content: Any) -> None:
        queue = args["queue"]
        if queue not in self.queues:
            conn.close_channel(channel, 404, f"NOT_FOUND - no queue '{queue}' in vhost '/'",
                               *spec.Basic.Consume)
            return
        tag = args["consumer_tag"] or f"amq.ctag-{next(self._names)}"
        if tag in self.consumers:
            conn.close_connection(530, f"NOT_ALLOWED - attempt to reuse consumer tag '{tag}'",
                                  *spec.Basic.Consume)
            return
        self.consumers[tag] = _Consumer(conn, channel, tag, queue, bool(args["no_ack"]))
        if not args["nowait"]:
            conn.send_method(channel, spec.Basic.ConsumeOk, "s", tag)
        self._dispatch(queue)

    def _on_basic_cancel(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                         content: Any) -> None:
        self.consumers.pop(args["consumer_tag"], None)
        if not args["nowait"]:
            conn.send_method(channel, spec.Basic.CancelOk, "s", args["consumer_tag"])

    def _on_basic_ack(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                      content: Any) -> None:
        tag = args["delivery_tag"]
        keys = [k for k in conn.unacked if k[0] == channel and
                (k[1] == tag or (args["multiple"] and k[1] <= tag))]
        if not keys:
            conn.close_channel(channel, 406, f"PRECONDITION_FAILED - unknown delivery tag {tag}",
                               *spec.Basic.Ack)
            return
        for key in keys:
            del conn.unacked[key]

    def _on_basic_reject(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                         content: Any) -> None:
        entry = conn.unacked.pop((channel, args["delivery_tag"]), None)
        if entry is not None and args["requeue"]:
            queue, stored = entry
            stored.redelivered = True
            self.queues.setdefault(queue, collections.deque()).appendleft(stored)
            self._dispatch(queue)

    def _on_basic_publish(self, conn: _ServerConnection, channel: int, args: dict[str, Any],
                          content: Message | None) -> None:
        assert content is not None
        exchange, key = args["exchange"], args["routing_key"]
        seq = 0
        if channel in conn.confirming:
            seq = conn.publish_seq[channel] = conn.publish_seq[channel] + 1
        reaction = self.publish_script.popleft() if self.publish_script else None
        if isinstance(reaction, tuple) and reaction[0] == "close":
            conn.close_channel(channel, reaction[1], reaction[2], *spec.Basic.Publish)
            return
        if reaction == DROP:
            conn.drop()
            return
        if exchange not in self.exchanges:
            conn.close_channel(channel, 404, f"NOT_FOUND - no exchange '{exchange}' in vhost '/'",
                               *spec.Basic.Publish)
            return
        queues = self._route(exchange, key)
        if reaction is None and not queues and args["mandatory"]:
            reaction = RETURN
        if reaction == RETURN:
            conn.send(_method(channel, spec.Basic.Return, "Bsss", (312, "NO_ROUTE", exchange, key))
                      + _content(channel, bytes(content.body), dict(content.properties), conn.frame_max))
        elif reaction not in (NACK, SILENT):
            for queue in queues:
                self.queues[queue].append(_Stored(bytes(content.body), dict(content.properties),
                                                  exchange, key))
                self._dispatch(queue)
        if not seq or reaction == SILENT:
            return
        if reaction == BLOCK and not self.blocked:
            self.blocked = True
            conn.send_method(0, spec.Connection.Blocked, "s", "low on memory")
        if reaction in (HOLD, BLOCK) or self.blocked:
            conn.held[channel].append(seq)
        elif reaction == NACK:
            conn.send_method(channel, spec.Basic.Nack, "Lbb", seq, False, False)
        else:
            conn.send_method(channel, spec.Basic.Ack, "Lb", seq, False)

    def _route(self, exchange: str, key: str) -> list[str]:
        if exchange == "":
            return [key] if key in self.queues else []
        fanout = self.exchanges.get(exchange) == "fanout"
        return sorted({q for q, e, k in self.bindings
                       if e == exchange and q in self.queues and (fanout or k in (key, "#"))})

    def _dispatch(self, queue: str) -> None:
        """Deliver what waits in ``queue`` to its consumers, round robin."""
        consumers = [c for c in self.consumers.values() if c.queue == queue and c.conn.alive]
        messages = self.queues.get(queue)
        turn = 0
        while consumers and messages:
            consumer = consumers[turn % len(consumers)]
            turn += 1
            stored = messages.popleft()
            conn, channel = consumer.conn, consumer.channel
            tag = next(conn.delivery_tags[channel])
            if not consumer.no_ack:
                conn.unacked[(channel, tag)] = (queue, stored)
            conn.send(_method(channel, spec.Basic.Deliver, "sLbss",
                              (consumer.tag, tag, stored.redelivered, stored.exchange, stored.routing_key))
                      + _content(channel, stored.body, stored.properties, conn.frame_max))

"""RPC over the HA connection: call, cast, fanout, notifications, servers.

How this works: :class:`RPCClient` and :class:`Notifier` send through an
:class:`RPCTransport` (a shared publishing connection and, for calls, a reply
queue); :class:`RPCServer` and :class:`NotificationServer` poll a
:class:`~rabbit_ha_driver.rpc.listener.PollListener` on their own connection
and run handlers on an executor. Every call has one deadline that bounds
everything it does.

Wire compatibility with oslo.messaging's rabbit driver (``impl_rabbit`` and
``amqpdriver``): the same exchanges (the control exchange, ``<topic>_fanout``,
the default exchange for replies), queue names (``<topic>``,
``<topic>.<server>``, ``<topic>_fanout_<hex>``, ``reply_<hex>``,
``<topic>.<priority>`` or the pool name; the queue manager's stable names),
queue types and arguments (:mod:`rabbit_ha_driver.rpc.queue_types`: quorum,
stream fanout, delivery and memory limits, ``x-expires`` on reply and fanout
queues), routing keys, envelope (``oslo.version`` 2.0 around an
``oslo.message`` JSON string), ``_msg_id``, ``_reply_q``, ``_timeout``,
``_unique_id``, ``_context_*`` members, reply protocol (``result``,
``failure``, ``ending``; call-monitor heartbeats) and request TTL
(``expiration`` = the call's time left). So services on either side call,
cast, fanout and notify each other both ways. The differences:

* Everything is published with the mandatory flag and publisher confirms,
  and a call or cast that the broker returns as unroutable is sent again
  until its deadline (oslo.messaging drops an unroutable request silently and
  the caller times out). A fanout that reaches no queue is retried for a
  short grace, then logged.
* Casts are persistent only when queues are durable (``amqp_durable_queues``
  or quorum queues); oslo.messaging marks every message persistent. Replies
  are transient. Either way the receiver sees no difference.
* Only ``application/json`` in UTF-8 is accepted; oslo.messaging lets kombu
  decode whatever content type it is given (kombu's own accept list applies).
  Bodies compressed with ``kombu_compression`` (gzip, bz2) are accepted by
  both; here they are expanded to at most ``rpc_max_message_size`` bytes,
  and a body that would expand beyond it is refused (kombu expands it
  whole). Sending compressed is off unless ``kombu_compression`` is set, as
  in oslo.messaging.
* A malformed request or one over ``rpc_max_message_size`` is rejected
  without requeue, and its caller, when it can be found, gets an
  ``InvalidMessage`` failure reply at once; oslo.messaging has no size limit.
* Remote exceptions always arrive as
  :class:`~rabbit_ha_driver.exceptions.RemoteError` with ``exc_type``
  ``module.Class`` (``Class`` for builtins); no module named by a peer is
  imported. oslo.messaging re-raises builtins and allowed modules' classes.
* Dispatch errors are ``NoSuchMethod``, ``UnsupportedVersion`` and
  ``InvalidArguments`` (:mod:`rabbit_ha_driver.exceptions`; on the wire they
  keep their earlier name, ``rabbit_ha_driver.rpc.server.<class>``); an
  oslo.messaging caller sees them as ``RemoteError`` (with oslo.messaging
  servers a wrong argument is a ``TypeError`` of the method).
* Not implemented: classic mirroring (``x-ha-policy``) and falling back to
  a non-durable exchange when a durable one is refused.
* A stream fanout consumer starts at ``next`` (oslo.messaging: ``last``,
  which can replay the stream's last chunk to a restarted server).
* Replies go to the default exchange (``""``) with the reply queue's name as
  routing key and the mandatory flag, as oslo.messaging does since its
  ``direct_mandatory_flag`` became permanent (releases before that used a
  per-reply direct exchange; neither uses ``amq.direct``). A reply to a queue
  that is missing is retried until the caller's deadline (the request's
  ``expiration``, else ``rpc_response_timeout``), not for a fixed 60 s; a
  reply queue that took no reply is then remembered as gone for 60 s, as in
  oslo.messaging.
* A client deletes its reply queue when it closes; oslo.messaging leaves it
  to ``x-expires``. Servers delete their fanout queue, as oslo.messaging does.
  With ``use_queue_manager`` neither is deleted (the names are taken up
  again), nor ever a stream fanout (other servers read it).
* A notification carries the caller's context only as its
  ``redacted_copy()``, as oslo.messaging's notifier does; a dict context is
  dropped.
"""

from rabbit_ha_driver.exceptions import (  # also public here, as before they moved
    ClientClosed,
    InvalidArguments,
    NoSuchMethod,
    UnsupportedVersion,
)
from rabbit_ha_driver.rpc.client import RPCClient
from rabbit_ha_driver.rpc.envelope import DEFAULT_EXCHANGE, PRIORITIES
from rabbit_ha_driver.rpc.executors import EventletExecutor, Executor, ThreadingExecutor
from rabbit_ha_driver.rpc.listener import (
    IncomingMessage,
    NotificationIncomingMessage,
    PollListener,
    RpcIncomingMessage,
    notification_listener,
    rpc_listener,
)
from rabbit_ha_driver.rpc.notify import HANDLED, REQUEUE, NotificationServer, Notifier
from rabbit_ha_driver.rpc.publisher import Publisher
from rabbit_ha_driver.rpc.receipts import Receipt
from rabbit_ha_driver.rpc.server import Dispatcher, MessageHandlingServer, RPCServer
from rabbit_ha_driver.rpc.target import Target
from rabbit_ha_driver.rpc.transport import RPCTransport

__all__ = [
    "DEFAULT_EXCHANGE",
    "HANDLED",
    "PRIORITIES",
    "REQUEUE",
    "ClientClosed",
    "Dispatcher",
    "EventletExecutor",
    "Executor",
    "IncomingMessage",
    "InvalidArguments",
    "MessageHandlingServer",
    "NoSuchMethod",
    "NotificationIncomingMessage",
    "NotificationServer",
    "Notifier",
    "PollListener",
    "Publisher",
    "RPCClient",
    "RPCServer",
    "RPCTransport",
    "Receipt",
    "RpcIncomingMessage",
    "Target",
    "ThreadingExecutor",
    "UnsupportedVersion",
    "notification_listener",
    "rpc_listener",
]

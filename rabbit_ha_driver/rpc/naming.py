"""Names on the broker: exchanges, queues and routing keys, as oslo.messaging's.

How this works. oslo.messaging's rabbit driver, for a control exchange E and
a topic T, uses:

==================  ==========================================================
call / cast         topic exchange E, routing key T, queue T
to one server S     topic exchange E, routing key T.S, queue T.S
fanout              fanout exchange T_fanout (auto-delete), one queue
                    T_fanout_<id> per server (x-expires), or one stream
                    T_fanout for all (``rabbit_stream_fanout``)
reply               default exchange "", routing key = queue reply_<id>
notification        topic exchange E, routing key T.<priority>, queue
                    T.<priority> (or the pool's name)
==================  ==========================================================

A service on ``rabbit-ha://`` uses the same names, so it shares queues with
oslo.messaging services. ``<id>`` is random, or with ``use_queue_manager``
the queue manager's ``<hostname>:<processname>:<N>``, stable across restarts
(:mod:`rabbit_ha_driver.rpc.queue_manager`). What each queue looks like
besides its name (type, durability, arguments) is
:mod:`rabbit_ha_driver.rpc.queue_types`'s; both come together in the
declarations of :mod:`rabbit_ha_driver.rpc.topology`.
"""

from __future__ import annotations

from rabbit_ha_driver.rpc.queue_manager import QueueManager
from rabbit_ha_driver.rpc.wire import new_id
from rabbit_ha_driver.settings import Settings

#: oslo.messaging's default ``control_exchange``.
DEFAULT_EXCHANGE = "openstack"


def server_key(topic: str, server: str) -> str:
    """The routing key (and queue) of requests to one server of a topic."""
    return f"{topic}.{server}"


def notification_key(topic: str, priority: str) -> str:
    """The routing key (and shared queue) of a topic's notifications of one
    priority, in its lower-case form (``messages.normalize_priority``)."""
    return f"{topic}.{priority}"


def fanout_exchange_name(topic: str) -> str:
    """The fanout exchange of a topic; also the name of its stream."""
    return f"{topic}_fanout"


def unique_part(settings: Settings) -> str:
    """The unique end of a reply or fanout queue name: random, or the queue manager's."""
    if settings.use_queue_manager:
        return QueueManager(settings.hostname, settings.processname).get()
    return new_id()


def fanout_queue_name(settings: Settings, topic: str) -> str:
    """A new name for one server's (non-stream) queue on the topic's fanout exchange."""
    return f"{fanout_exchange_name(topic)}_{unique_part(settings)}"


def reply_queue_name(settings: Settings) -> str:
    """A new name for a transport's reply queue."""
    return f"reply_{unique_part(settings)}"

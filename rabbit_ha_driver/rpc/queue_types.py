"""What each queue the library declares looks like: type, durability, arguments.

How it works. oslo.messaging's rabbit driver declares four kinds of queue,
and a service on ``rabbit-ha://`` must declare the same ones with the same
arguments, or the broker refuses the second declaration with 406
PRECONDITION_FAILED ("inequivalent arg"). The rules, option by option
(``[oslo_messaging_rabbit]`` names, the same in ``[rabbit_ha]``):

============  ================================  ==========================================
queue         durable                           arguments
============  ================================  ==========================================
topic,        amqp_durable_queues or            quorum (x-queue-type, x-delivery-limit,
server,       rabbit_quorum_queue;              x-max-in-memory-length/-bytes) when
notification  auto-delete: amqp_auto_delete     rabbit_quorum_queue
reply         rabbit_transient_quorum_queue     quorum when rabbit_transient_quorum_queue;
                                                x-expires (rabbit_transient_queues_ttl;
                                                none when it is 0)
fanout        rabbit_transient_quorum_queue     as reply
fanout        true                              x-queue-type: stream, x-max-age
(stream)                                        (rabbit_transient_queues_ttl, "1800s";
                                                none when it is 0)
============  ================================  ==========================================

The fanout exchange is durable when ``rabbit_transient_quorum_queue`` is set
(always auto-delete); topic exchanges are durable like topic queues and
auto-delete with ``amqp_auto_delete``.

Names are :mod:`rabbit_ha_driver.rpc.naming`'s: reply queues are
``reply_<id>`` and fanout queues ``<topic>_fanout_<id>``, where ``<id>`` is
random, or with ``use_queue_manager`` the queue manager's
``<hostname>:<processname>:<N>`` (:mod:`rabbit_ha_driver.rpc.queue_manager`).
A stream fanout is one queue per topic, ``<topic>_fanout``, shared by every
server. :mod:`rabbit_ha_driver.rpc.topology` puts names and these rules
together into the declarations the RPC layer makes.

Stream consumers (``x-stream-offset``): a server starts reading at
``"next"``, the stream's end, so a server that starts or restarts receives
only fanouts sent from then on. oslo.messaging starts at ``"last"``, the
stream's last chunk, which can hand a restarted server a few fanouts it
already had. After a reconnect both go on from the offset after the last
delivery they received (``x-stream-offset`` header of each delivery), so
nothing sent meanwhile is lost.
"""

from __future__ import annotations

from typing import Any

from rabbit_ha_driver.settings import Settings

Arguments = tuple[tuple[str, Any], ...]

STREAM_OFFSET = "x-stream-offset"
#: Where a stream consumer of a server that just started begins.
STREAM_START = "next"


def quorum_arguments(settings: Settings) -> Arguments:
    """``x-queue-type: quorum`` and the quorum limits that are set."""
    args: list[tuple[str, Any]] = [("x-queue-type", "quorum")]
    if settings.rabbit_quorum_delivery_limit:
        args.append(("x-delivery-limit", settings.rabbit_quorum_delivery_limit))
    if settings.rabbit_quorum_max_memory_length:
        args.append(("x-max-in-memory-length", settings.rabbit_quorum_max_memory_length))
    if settings.rabbit_quorum_max_memory_bytes:
        args.append(("x-max-in-memory-bytes", settings.rabbit_quorum_max_memory_bytes))
    return tuple(args)


def topic_durable(settings: Settings) -> bool:
    """Topic exchanges and topic, server, notification queues (quorum ones always are)."""
    return settings.amqp_durable_queues or settings.rabbit_quorum_queue


def topic_queue_arguments(settings: Settings) -> Arguments:
    return quorum_arguments(settings) if settings.rabbit_quorum_queue else ()


def transient_durable(settings: Settings) -> bool:
    """Reply and (non-stream) fanout queues, and the fanout exchanges."""
    return settings.rabbit_transient_quorum_queue


def transient_queue_arguments(settings: Settings) -> Arguments:
    """Reply and fanout queues: quorum if asked, deleted by the broker when unused."""
    quorum = quorum_arguments(settings) if settings.rabbit_transient_quorum_queue else ()
    ttl = settings.rabbit_transient_queues_ttl
    # 0: never deleted by the broker, as oslo.messaging declares them then.
    return (*quorum, ("x-expires", ttl * 1000)) if ttl > 0 else quorum


def stream_arguments(settings: Settings) -> Arguments:
    """The stream of a fanout topic; old messages go after the TTL (a string:
    "1800s"), or never with a TTL of 0 (as oslo.messaging declares it then)."""
    ttl = settings.rabbit_transient_queues_ttl
    return (("x-queue-type", "stream"), ("x-max-age", f"{ttl}s")) if ttl > 0 \
        else (("x-queue-type", "stream"),)


def stream_offset_after(headers: Any) -> int | None:
    """The offset to resume a stream consumer at, after a delivery with ``headers``."""
    if not isinstance(headers, dict):
        return None
    offset = headers.get(STREAM_OFFSET)
    if isinstance(offset, bool) or not isinstance(offset, int):
        return None
    return offset + 1


def deletes_own_queues(settings: Settings) -> bool:
    """Whether a server or client deletes its reply or fanout queue when it closes.

    Not with stable names (the restarted service takes them up again; x-expires
    removes them otherwise), and never a stream fanout (other servers read it):
    both as oslo.messaging does."""
    return not settings.use_queue_manager

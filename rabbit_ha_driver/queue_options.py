"""Options of queues and their consumers: cancel handling, prefetch, durability, queue types.

The part of the ``[rabbit_ha]`` group (:mod:`rabbit_ha_driver.options`) that
says which queues and exchanges are declared, with which arguments, and how
they are consumed: the delay before consuming again after a consumer cancel,
the prefetch bound, durable and quorum queues, and the queue types of
RabbitMQ 4 (quorum reply and fanout queues, stream fanout, the queue
manager's stable names).
"""

from __future__ import annotations

from oslo_config import cfg

from rabbit_ha_driver.settings import DEFAULT_HOSTNAME, DEFAULT_PROCESSNAME

consumer_opts = [
    cfg.FloatOpt(
        "kombu_reconnect_delay",
        default=1.0,
        min=0.0,
        max=60.0,
        help="Seconds to wait after the broker cancels a consumer (consumer "
        "cancel notification) before re-declaring the queue and consuming "
        "again. Re-subscribing at once can race the broker's own leader "
        "election.",
    ),
    cfg.FloatOpt(
        "consumer_check_interval",
        default=10.0,
        min=0.0,
        help="Seconds between checks, while a connection consumes, that its "
        "queues still exist (a passive declare). The broker normally says when it "
        "drops a consumer (basic.cancel), but has been seen not to when a queue "
        "is deleted under traffic; a missing queue is then declared again and "
        "consumed at once. 0 turns the check off.",
    ),
    cfg.BoolOpt(
        "enable_cancel_on_failover",
        default=False,
        help="Ask the broker to cancel consumers of a classic mirrored queue "
        "when its master moves (x-cancel-on-ha-failover), so a promotion is "
        "handled like any consumer cancel notification.",
    ),
    cfg.IntOpt(
        "rabbit_qos_prefetch_count",
        default=64,
        min=0,
        help="Unacknowledged deliveries a consumer may hold (basic.qos). "
        "Bounded so that few deliveries are stranded on a connection that "
        "dies. 0 means unbounded and is not recommended.",
    ),
    cfg.BoolOpt(
        "amqp_durable_queues",
        default=False,
        help="Declare durable exchanges and queues, and publish casts as "
        "persistent messages.",
    ),
    cfg.BoolOpt(
        "rabbit_quorum_queue",
        default=False,
        help="Declare quorum queues (x-queue-type: quorum) for topic and server "
        "queues, so casts survive the loss of a node. Quorum queues are always "
        "durable.",
    ),
    cfg.IntOpt(
        "rabbit_transient_queues_ttl",
        default=1800,
        min=0,
        help="Seconds after its owner disappears that a reply or fanout queue "
        "is deleted by the broker (x-expires); with rabbit_stream_fanout, how "
        "long the fanout stream keeps a message (x-max-age). 0, as in "
        "oslo.messaging, sets neither: such queues are never deleted and the "
        "stream grows without bound unless a broker policy deletes or bounds "
        "them.",
    ),
]

# -- queue types (RabbitMQ 4) ---------------------------------------------------
#
# oslo.messaging's names, defaults and meaning ([oslo_messaging_rabbit] of its
# rabbit driver), so operators copy values across and both declare the same
# queues with the same arguments. Kept in one block of its own.

queue_type_opts = [
    cfg.BoolOpt(
        "rabbit_transient_quorum_queue",
        default=False,
        help="Declare reply and fanout queues as quorum queues (durable, "
        "x-queue-type: quorum, with the quorum limits below and x-expires), and "
        "the fanout exchanges durable, as oslo.messaging does. Needed on a "
        "RabbitMQ that denies transient non-exclusive queues "
        "(deprecated_features.permit.transient_nonexcl_queues = false, the "
        "default of future releases).",
    ),
    cfg.BoolOpt(
        "rabbit_stream_fanout",
        default=False,
        help="One stream per fanout topic (queue <topic>_fanout, x-queue-type: "
        "stream, x-max-age from rabbit_transient_queues_ttl) instead of one "
        "queue per server. Every server reads the stream from its end when it "
        "starts, and from where it stopped after a reconnect. Needs "
        "rabbit_transient_quorum_queue and rabbit_qos_prefetch_count > 0.",
    ),
    cfg.IntOpt(
        "rabbit_quorum_delivery_limit",
        default=0,
        min=0,
        help="x-delivery-limit of the quorum queues the library declares: a "
        "message redelivered more often is dropped or dead-lettered. 0: not set "
        "(RabbitMQ 4 then applies its own default of 20).",
    ),
    cfg.IntOpt(
        "rabbit_quorum_max_memory_length",
        default=0,
        min=0,
        help="x-max-in-memory-length of the quorum queues the library declares. "
        "0: not set.",
    ),
    cfg.IntOpt(
        "rabbit_quorum_max_memory_bytes",
        default=0,
        min=0,
        help="x-max-in-memory-bytes of the quorum queues the library declares. "
        "0: not set.",
    ),
    cfg.BoolOpt(
        "use_queue_manager",
        default=False,
        help="Stable reply and fanout queue names, reply_<hostname>:<processname>:N "
        "and <topic>_fanout_<hostname>:<processname>:N, as oslo.messaging's "
        "queue manager builds them (N counts the queues of one run of the "
        "service and starts again at 1 when it restarts), so a restarted "
        "service takes up its queues again instead of leaving them behind. "
        "These queues are not deleted on close; x-expires removes them.",
    ),
    cfg.StrOpt(
        "hostname",
        default=DEFAULT_HOSTNAME,
        sample_default="node1.example.com",
        help="Host name in the queue manager's queue names. Default: "
        "socket.gethostname().",
    ),
    cfg.StrOpt(
        "processname",
        default=DEFAULT_PROCESSNAME,
        sample_default="nova-api",
        help="Process name in the queue manager's queue names. Default: the "
        "program's file name.",
    ),
    cfg.BoolOpt(
        "amqp_auto_delete",
        default=False,
        help="Declare topic exchanges and topic, server and notification queues "
        "auto-delete (removed by the broker when their last consumer or "
        "binding goes), as oslo.messaging does.",
    ),
]

"""Options of RPC and of the metrics endpoint: timeouts, confirms, reply cache, bodies.

The part of the ``[rabbit_ha]`` group (:mod:`rabbit_ha_driver.options`) that
the RPC layer reads: call timeouts and publish deadlines, how casts wait for
confirms, when an uncertain request is sent again and how long servers keep
replies, the largest message and its compression; and the port on which a
service exposes the connection metrics.
"""

from __future__ import annotations

from oslo_config import cfg

rpc_opts = [
    cfg.IntOpt(
        "rpc_response_timeout",
        default=60,
        min=1,
        help="Default timeout of an RPC call, in seconds: it bounds sending, "
        "retrying and waiting for the reply together.",
    ),
    cfg.FloatOpt(
        "publish_timeout",
        default=30.0,
        min=0.0,
        help="Deadline, in seconds, for a cast or notification to be confirmed "
        "by the broker, retries included. 0 means retry forever.",
    ),
    cfg.StrOpt(
        "cast_confirm",
        default="background",
        choices=[
            ("background", "cast() returns once the message is written; its confirm is "
             "read later, together with those of the casts that follow"),
            ("wait", "cast() returns once the broker confirmed the message"),
        ],
        help="How casts and fanout casts sent through the oslo.messaging driver "
        "(rabbit-ha://) wait for the broker's publisher confirm. With background, "
        "a cast that the broker returns, nacks or whose confirm is lost with the "
        "connection is sent again until publish_timeout, and one that still fails "
        "is logged as an error naming it; a cast that cannot even be written "
        "raises at once, as with wait. With wait, cast() raises when the message "
        "could not be delivered; a cast with a retry limit, or with the "
        "at_least_once transport option, always waits. The library's own RPCClient.cast() always waits; "
        "RPCClient.cast_async() returns a receipt instead.",
    ),
    cfg.FloatOpt(
        "rpc_resend_uncertain_after",
        default=1.0,
        min=0.0,
        help="Seconds a call waits for its reply, after the connection died between "
        "writing its request and the broker's confirm, before it sends the same "
        "request again (same message id; a server that already ran it answers "
        "from its reply cache). Capped at half the time the call has left; at "
        "most 3 times per call, never past its timeout. 0: never sent again, the "
        "call waits for a reply that may not come.",
    ),
    cfg.IntOpt(
        "rpc_reply_cache_size",
        default=1024,
        min=0,
        help="Replies an RPC server (each listener) keeps, by the request's message "
        "id, to answer a request that arrives again without running it twice. "
        "0 disables the cache (a repeated request then runs again).",
    ),
    cfg.FloatOpt(
        "rpc_reply_cache_ttl",
        default=300.0,
        min=1.0,
        help="Seconds a server keeps a reply (or the mark of a request still "
        "running) in its reply cache.",
    ),
    cfg.IntOpt(
        "rpc_max_message_size",
        default=16 * 1024 * 1024,
        min=1024,
        help="Largest message body, in bytes, that is sent or accepted. A "
        "compressed body is also refused when it would expand beyond it (it is "
        "never expanded further).",
    ),
    cfg.StrOpt(
        "kombu_compression",
        choices=(("gzip", "zlib data, kombu's 'application/x-gzip'"),
                 ("zlib", "the same as gzip"),
                 ("bz2", "kombu's 'application/x-bz2'"),
                 ("bzip2", "the same as bz2, and kombu's name for it")),
        help="Compress the messages sent, as oslo.messaging's option of the same "
        "name does. Unset: sent uncompressed. Compressed messages are always "
        "accepted, whatever this says; receivers of rabbit_ha_driver releases "
        "before this option refuse them, so turn it on once every receiver "
        "accepts them.",
    ),
]

metrics_opts = [
    cfg.PortOpt(
        "metrics_http_port",
        help="TCP port on which rabbit_ha_driver.prometheus.serve() exposes the "
        "connection metrics in Prometheus format (loopback by default), for "
        "services that have no HTTP server of their own. The oslo.messaging "
        "driver (rabbit-ha://) starts that server itself, shared by the "
        "transports of the process. Unset: no server.",
    ),
]

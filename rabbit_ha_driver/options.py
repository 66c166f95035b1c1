"""Every configuration option of the library, in the ``[rabbit_ha]`` group.

Names follow oslo.messaging's ``[oslo_messaging_rabbit]`` options wherever the
meaning is the same, so operators can copy values across. The group is our own:
registering differently defined options under ``oslo_messaging_rabbit`` would
raise ``DuplicateOptError`` as soon as oslo.messaging's rabbit driver loads in
the same process.

How values are read: :func:`from_conf` reads every option of ``[rabbit_ha]``
(oslo.config checks types and bounds), takes each value by the one rule of
:mod:`rabbit_ha_driver.precedence` (URL query, then ``[rabbit_ha]``, then the
``[oslo_messaging_rabbit]`` values the oslo.messaging driver hands over, then
the default), and returns a frozen :class:`~rabbit_ha_driver.settings.Settings`,
whose own checks cover what involves more than one value. Each failure raises
:class:`~rabbit_ha_driver.exceptions.ConfigurationError` naming the option (in
the group its value came from) and the value, so a bad configuration stops a
service at start-up rather than at the first fault. Unknown keys, in a
``[rabbit_ha]`` file section or in the query string, are warned about by name
and ignored. :func:`from_url` does the same without a ``ConfigOpts``, checking
keyword values with the options' own types.

Nothing below this layer reads oslo.config: the connection and RPC layers get
the frozen :class:`~rabbit_ha_driver.settings.Settings`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from oslo_config import cfg

from rabbit_ha_driver import precedence
from rabbit_ha_driver.exceptions import ConfigurationError
from rabbit_ha_driver.settings import (
    DEFAULT_HOSTNAME,
    DEFAULT_PROCESSNAME,
    GROUP,
    Settings,
    parse_transport_url,
    validated,
)

# The unknown-key warnings keep the logger operators know them by
# (docs/troubleshooting.rst), from when reading lived in settings.
LOG = logging.getLogger("rabbit_ha_driver.settings")

broker_opts = [
    cfg.StrOpt(
        "transport_url",
        default="memory://",
        secret=True,
        help="Where the brokers are, in oslo.messaging's transport URL syntax: "
        "rabbit://user:pass@host1:5672,user:pass@host2:5672/vhost (schemes "
        "rabbit, rabbit-ha, amqp; amqps or ssl=true for TLS). List every node "
        "of the cluster: failover only moves between the hosts given here. "
        "Options of this group may be given in the query string, e.g. "
        "?heartbeat_timeout_threshold=10. memory:// is kombu's in-process "
        "transport, for demos and tests.",
    ),
    cfg.StrOpt(
        "kombu_failover_strategy",
        choices=("round-robin", "shuffle"),
        default="round-robin",
        help="Order in which the hosts are tried after a connection error: in "
        "the order given, or shuffled once per process (spreads a fleet over the "
        "cluster).",
    ),
    cfg.StrOpt(
        "connection_name",
        help="Name shown for this process's connections in the broker's "
        "connection list (management UI, rabbitmqctl list_connections). "
        "Default: '<program>:<pid>:<hostname>'.",
    ),
    cfg.FloatOpt(
        "connect_timeout",
        default=5.0,
        min=0.1,
        help="Seconds allowed for one TCP connect, TLS handshake and AMQP "
        "handshake to one host before trying the next.",
    ),
]

retry_opts = [
    cfg.FloatOpt(
        "rabbit_retry_interval",
        default=0.2,
        min=0.0,
        help="Seconds to wait before the first reconnect attempt after a full "
        "pass over the hosts failed. Moving to the next host of a pass is "
        "immediate.",
    ),
    cfg.FloatOpt(
        "rabbit_retry_backoff",
        default=1.0,
        min=0.0,
        help="Seconds added to the wait after each further failed pass over the "
        "hosts.",
    ),
    cfg.FloatOpt(
        "rabbit_interval_max",
        default=3.0,
        min=0.0,
        help="Cap, in seconds, on the wait between passes over the hosts. Kept "
        "low so a service is serving again within seconds of a cluster's "
        "return. A random jitter of up to 20% is added.",
    ),
    cfg.IntOpt(
        "rabbit_max_retries",
        default=0,
        min=0,
        help="Reconnect attempts a background consumer makes before it gives up "
        "and reports the connection failed; 0 means it keeps trying (a server "
        "should). Calls, casts and notifications are bounded by their deadline "
        "whatever this says.",
    ),
    cfg.FloatOpt(
        "request_timeout",
        default=10.0,
        min=0.1,
        help="Deadline, in seconds, for every synchronous AMQP request (declare, "
        "bind, consume, cancel, qos, close). It does not restart on incoming "
        "heartbeats. A request that misses it counts as a dead channel and goes "
        "through recovery.",
    ),
]

liveness_opts = [
    cfg.IntOpt(
        "heartbeat_timeout_threshold",
        default=4,
        min=0,
        help="T, in seconds: a connection that has received nothing for T "
        "seconds is declared dead and recovery starts (within T + 1 s). The "
        "heartbeat negotiated with the broker is shorter than T so that a "
        "healthy idle connection is never declared dead. 0 disables AMQP "
        "heartbeats; TCP keepalive and TCP_USER_TIMEOUT then fall back to fixed "
        "defaults. Values between 1 and 2 are refused.",
    ),
    cfg.FloatOpt(
        "heartbeat_rate",
        default=1.5,
        min=1.0,
        help="Kept for oslo.messaging configurations: how many times per "
        "negotiated heartbeat interval the scheduler may send a heartbeat frame. "
        "The scheduler wakes at deadlines, not on a fixed tick; this only sets "
        "how early a heartbeat goes out.",
    ),
    cfg.StrOpt(
        "heartbeat_runner",
        default="auto",
        choices=(
            ("auto", "an OS thread; when eventlet has monkey-patched the "
             "process it bypasses the hub, so heartbeats survive a blocked hub"),
            ("green", "an eventlet green thread; stalls while the hub is blocked"),
            ("native", "one OS thread for all connections; survives a blocked "
             "eventlet hub"),
        ),
        help="What keeps heartbeats flowing and watches for dead connections.",
    ),
    cfg.BoolOpt(
        "tcp_keepalive",
        default=True,
        help="Set SO_KEEPALIVE on every broker socket.",
    ),
    cfg.IntOpt(
        "tcp_keepidle",
        min=1,
        help="Seconds of idleness before the first keepalive probe "
        "(TCP_KEEPIDLE). Default: T, or 60 when heartbeats are off.",
    ),
    cfg.IntOpt(
        "tcp_keepintvl",
        min=1,
        help="Seconds between keepalive probes (TCP_KEEPINTVL). Default: "
        "max(1, T / 3), or 10 when heartbeats are off.",
    ),
    cfg.IntOpt(
        "tcp_keepcnt",
        min=1,
        help="Unanswered keepalive probes before the kernel drops the "
        "connection (TCP_KEEPCNT). Default: 3.",
    ),
    cfg.FloatOpt(
        "tcp_user_timeout",
        min=0.0,
        help="Seconds that written data may stay unacknowledged before the "
        "kernel drops the connection (TCP_USER_TIMEOUT); this finds a dead peer "
        "while a write is pending, which keepalive cannot. 0 leaves the kernel "
        "default. Default: T + 1, or 30 when heartbeats are off. A broker that "
        "blocks a publisher for a resource alarm stops reading, so too short a "
        "value tears down blocked connections: keep it above a few seconds.",
    ),
]

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

tls_opts = [
    cfg.BoolOpt("ssl", default=False, help="Connect with TLS."),
    cfg.StrOpt("ssl_ca_file", default="", help="CA bundle that signs the "
               "brokers' certificates. Empty: the system's default CAs."),
    cfg.StrOpt("ssl_cert_file", default="", help="Client certificate, when "
               "the broker asks for one."),
    cfg.StrOpt("ssl_key_file", default="", help="Private key of the client "
               "certificate."),
    cfg.BoolOpt(
        "ssl_enforce_hostname_verification",
        default=True,
        help="Check that the broker's certificate names the host connected to. "
        "On by default whenever TLS is on. Off, the certificate chain is still "
        "verified (against ssl_ca_file or the system's CAs): for brokers reached "
        "by an IP address or a virtual IP their certificates do not name.",
    ),
    cfg.StrOpt(
        "ssl_version",
        default="",
        help="Lowest TLS version accepted: TLSv1_2 or TLSv1_3 (case does not "
        "matter). Empty or SSLv23: Python's default (TLS 1.2 and later on current "
        "OpenSSL). A higher version is used when both ends support it. TLSv1 and "
        "TLSv1_1 are refused: they are insecure.",
    ),
    cfg.StrOpt(
        "rabbit_login_method",
        default="AMQPLAIN",
        choices=(
            ("AMQPLAIN", "user name and password of the URL, AMQP table encoding"),
            ("PLAIN", "user name and password of the URL, SASL PLAIN"),
            ("EXTERNAL", "the client certificate (ssl_cert_file) names the user; "
             "needs TLS and the broker's rabbitmq_auth_mechanism_ssl plugin"),
        ),
        help="SASL mechanism of the AMQP login.",
    ),
]

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

# -- queue types (RabbitMQ 4) ---------------------------------------------------
#
# oslo.messaging's names, defaults and meaning ([oslo_messaging_rabbit] of its
# rabbit driver), so operators copy values across and both declare the same
# queues with the same arguments. Kept in one block of its own.

# DEFAULT_HOSTNAME and DEFAULT_PROCESSNAME, oslo.messaging's defaults for the
# queue manager's names, come from rabbit_ha_driver.settings (Settings needs them).

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

ALL_OPTS: list[cfg.Opt] = [
    *broker_opts,
    *retry_opts,
    *liveness_opts,
    *consumer_opts,
    *tls_opts,
    *rpc_opts,
    *metrics_opts,
    *queue_type_opts,
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register every option of the library in ``conf`` under ``[rabbit_ha]``."""
    conf.register_opts(ALL_OPTS, group=GROUP)


def list_opts() -> list[tuple[str, Iterable[cfg.Opt]]]:
    """Options for ``oslo-config-generator --namespace rabbit_ha_driver``."""
    return [(GROUP, list(ALL_OPTS))]


def opt_by_name(name: str) -> cfg.Opt | None:
    """The option called ``name``, or None."""
    for opt in ALL_OPTS:
        if opt.dest == name:
            return opt
    return None


# -- reading configuration into Settings -------------------------------------

_FIELDS = {f.name for f in dataclasses.fields(Settings)} - {"transport_url", "origins"}
_KNOWN = {opt.dest for opt in ALL_OPTS}
#: The source name of values the oslo.messaging driver takes from oslo.messaging's group.
UPSTREAM = "[oslo_messaging_rabbit]"


def from_conf(conf: cfg.ConfigOpts, url: str | None = None, *,
              upstream: Mapping[str, Any] | None = None) -> Settings:
    """Settings from ``conf`` (registering our options if needed) and a URL.

    ``url`` overrides ``[rabbit_ha] transport_url``; its query string overrides
    any other option of the group. ``upstream`` holds the options a service set
    in ``[oslo_messaging_rabbit]`` that have the same name and meaning here;
    they apply where ``[rabbit_ha]`` and the query say nothing.
    """
    try:
        register_opts(conf)
    except cfg.DuplicateOptError as exc:
        raise ConfigurationError(GROUP, None,
                                 f"options already registered differently: {exc}") from exc
    group = conf[GROUP]
    values: dict[str, Any] = {}
    for opt in ALL_OPTS:
        try:
            values[opt.dest] = group[opt.dest]
        except (ValueError, cfg.ConfigFileValueError) as exc:
            raise ConfigurationError(f"[{GROUP}] {opt.dest}", _raw_value(conf, opt.dest),
                                     str(exc)) from exc
    for key, closest in precedence.unknown_keys(precedence.file_keys(conf, GROUP), _KNOWN):
        LOG.warning("%s", precedence.describe_unknown(key, closest, f"[{GROUP}]"))
    own = {name: values[name] for name in _FIELDS if precedence.was_set(conf, name, GROUP)}
    raw_url = url if url is not None else values["transport_url"]
    layers = [(f"[{GROUP}]", own)]
    if upstream:
        layers.append((UPSTREAM, {name: _coerce(name, value, source=UPSTREAM)
                                  for name, value in upstream.items()}))
    return _build(raw_url, values, layers)


def from_url(url: str = "memory://", **overrides: Any) -> Settings:
    """Settings from a transport URL and keyword overrides, without a ``ConfigOpts``.

    Keyword values are checked against the options' types and bounds like
    values from a configuration file; an unknown keyword is an error (it is
    code, not configuration).
    """
    defaults: dict[str, Any] = {opt.dest: opt.default for opt in ALL_OPTS}
    given = {name: _coerce(name, value, source="argument") for name, value in overrides.items()}
    return _build(url, defaults, [("argument", given)])


def _build(raw_url: str, defaults: Mapping[str, Any],
           layers: Sequence[tuple[str, Mapping[str, Any]]]) -> Settings:
    parsed = parse_transport_url(raw_url)
    query: dict[str, Any] = {}
    for name, text in parsed.query.items():
        if name in _FIELDS:
            query[name] = _coerce(name, text, source=precedence.QUERY)
    for key, closest in precedence.unknown_keys(parsed.query, _FIELDS):
        LOG.warning("%s", precedence.describe_unknown(key, closest, precedence.QUERY))
    merged = precedence.merge({k: v for k, v in defaults.items() if k in _FIELDS},
                              (precedence.QUERY, query), *layers)
    if parsed.scheme == "amqps":
        merged["ssl"] = precedence.Sourced(True, "transport_url scheme")
    fields = {name: sourced.value for name, sourced in merged.items()}
    origins = {name: sourced.source for name, sourced in merged.items()}
    return validated(Settings(transport_url=parsed, origins=origins, **fields))


def _coerce(name: str, value: Any, source: str) -> Any:
    """Convert and bound-check one value with its option's own type."""
    opt = opt_by_name(name)
    if opt is None or name not in _FIELDS:
        raise ConfigurationError(name, value, f"unknown option in {source}; known: "
                                 + ", ".join(sorted(_FIELDS)))
    if value is None:
        return None
    group = source if source.startswith("[") else f"[{GROUP}]"
    try:
        return opt.type(value)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"{group} {name}", value, f"{exc} (from {source})") from exc


def _raw_value(conf: cfg.ConfigOpts, name: str) -> Any:
    """The text a configuration file gave for ``name``, for error messages."""
    try:
        found = conf._namespace._get_file_value([(GROUP, name)])  # type: ignore[union-attr]
    except Exception:  # the value is only decoration for the message
        return "<unreadable>"
    if isinstance(found, tuple):
        found = found[0]
    if isinstance(found, list) and found:
        return found[-1]
    return found

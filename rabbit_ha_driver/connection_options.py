"""Options of the connection: where the brokers are, how to fail over, liveness, TLS.

The part of the ``[rabbit_ha]`` group (:mod:`rabbit_ha_driver.options`) that
the connection layer reads: the transport URL and the connection's name,
reconnect backoff and request deadlines, the heartbeat timeout ``T`` with the
socket options derived from it, and TLS with the login method. Names follow
oslo.messaging's ``[oslo_messaging_rabbit]`` options where the meaning is the
same.
"""

from __future__ import annotations

from oslo_config import cfg

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

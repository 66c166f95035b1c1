"""Frozen settings: every option's value after validation, and the transport URL.

How it works: a :class:`Settings` holds one value per option of the
``[rabbit_ha]`` group, checked on creation (:func:`validated`: the checks that
involve more than one value, or that oslo.config cannot express), each failure
a :class:`~rabbit_ha_driver.exceptions.ConfigurationError` naming the option
(in the group its value came from) and the value. :func:`parse_transport_url`
reads oslo.messaging's URL syntax into :class:`Host` values.

This module imports no oslo.config: the connection and RPC layers get a
:class:`Settings`, never a ``ConfigOpts``. Reading configuration (a
``ConfigOpts``, a URL's query string, keyword values checked with the options'
types) is the options layer's job: :func:`rabbit_ha_driver.options.from_conf`
and :func:`rabbit_ha_driver.options.from_url`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import ssl
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote

from rabbit_ha_driver import optional
from rabbit_ha_driver.exceptions import ConfigurationError

#: The oslo.config group of the library's options, as errors name it.
GROUP = "rabbit_ha"

#: oslo.messaging's defaults for the queue manager's names.
DEFAULT_HOSTNAME = socket.gethostname()
DEFAULT_PROCESSNAME = os.path.basename(sys.argv[0])

#: URL schemes understood by :func:`parse_transport_url`.
AMQP_SCHEMES = {"rabbit", "rabbit-ha", "amqp", "amqps", "pyamqp"}
MEMORY_SCHEME = "memory"
DEFAULT_PORT = 5672
DEFAULT_TLS_PORT = 5671


@dataclasses.dataclass(frozen=True)
class Host:
    """One broker node: where it is and how to log in. The password never shows."""

    hostname: str
    port: int = DEFAULT_PORT
    username: str = "guest"
    password: str = dataclasses.field(default="guest", repr=False)

    @property
    def address(self) -> str:
        """``host:port``, with IPv6 addresses in brackets; safe to log."""
        if ":" in self.hostname:
            return f"[{self.hostname}]:{self.port}"
        return f"{self.hostname}:{self.port}"

    def __str__(self) -> str:
        return self.address


@dataclasses.dataclass(frozen=True)
class TransportURL:
    """A parsed transport URL: scheme, hosts, virtual host, query options."""

    scheme: str
    hosts: tuple[Host, ...]
    virtual_host: str
    query: Mapping[str, str]

    @property
    def is_memory(self) -> bool:
        return self.scheme == MEMORY_SCHEME

    def redacted(self) -> str:
        """The URL without passwords, for logs."""
        if self.is_memory:
            return "memory://"
        hosts = ",".join(f"{h.username}:***@{h.address}" for h in self.hosts)
        return f"{self.scheme}://{hosts}/{self.virtual_host}"


def parse_transport_url(url: str, option: str = "transport_url") -> TransportURL:
    """Parse oslo.messaging's URL syntax, comma-separated hosts included.

    ``rabbit://u:p@h1:5672,u:p@h2:5672/vhost?opt=value``. A host without
    credentials takes those of the host before it, as oslo.messaging does.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(option, url, "expected scheme://[user:pass@]host[:port][,...][/vhost]")
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme == MEMORY_SCHEME:
        query = dict(parse_qsl(rest.partition("?")[2], keep_blank_values=True))
        return TransportURL(scheme, (), "/", query)
    if scheme not in AMQP_SCHEMES:
        raise ConfigurationError(
            option, _redact(url), f"unknown scheme {scheme!r}; expected one of "
            f"{', '.join(sorted(AMQP_SCHEMES | {MEMORY_SCHEME}))}"
        )
    rest, _, query_text = rest.partition("?")
    netloc, _, path = rest.partition("/")
    if not netloc:
        raise ConfigurationError(option, _redact(url), "no host given")
    default_port = DEFAULT_TLS_PORT if scheme == "amqps" else DEFAULT_PORT
    hosts: list[Host] = []
    username, password = "guest", "guest"
    for part in netloc.split(","):
        hosts.append(_parse_host(part, username, password, default_port, option, url))
        username, password = hosts[-1].username, hosts[-1].password
    vhost = unquote(path)
    query = dict(parse_qsl(query_text, keep_blank_values=True))
    return TransportURL(scheme, tuple(hosts), vhost or "/", query)


def _parse_host(part: str, username: str, password: str, default_port: int,
                option: str, url: str) -> Host:
    creds, at, hostport = part.rpartition("@")
    if at:
        user, colon, pw = creds.partition(":")
        username = unquote(user)
        password = unquote(pw) if colon else ""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ConfigurationError(option, _redact(url), f"unclosed '[' in host {hostport!r}")
        hostname, portpart = hostport[1:end], hostport[end + 1:]
        if portpart and not portpart.startswith(":"):
            raise ConfigurationError(option, _redact(url), f"malformed host {hostport!r}")
        port_text = portpart[1:]
    else:
        hostname, _, port_text = hostport.partition(":")
    if not hostname or any(c in hostname for c in " /?#@"):
        raise ConfigurationError(option, _redact(url), f"malformed host {hostport!r}")
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigurationError(
                option, _redact(url), f"port {port_text!r} of host {hostname!r} is not 1-65535"
            )
        port = int(port_text)
    return Host(hostname, port, username, password)


def _redact(url: str) -> str:
    """Hide passwords of a URL that may not parse."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    netloc, sep, tail = rest.partition("/")
    parts = []
    for part in netloc.split(","):
        creds, at, host = part.rpartition("@")
        if at and ":" in creds:
            creds = creds.split(":", 1)[0] + ":***"
        parts.append(f"{creds}{at}{host}")
    return f"{scheme}://{','.join(parts)}{sep}{tail}"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every option's value after validation. Immutable; cheap to share."""

    transport_url: TransportURL
    kombu_failover_strategy: str = "round-robin"
    connection_name: str | None = None
    connect_timeout: float = 5.0
    rabbit_retry_interval: float = 0.2
    rabbit_retry_backoff: float = 1.0
    rabbit_interval_max: float = 3.0
    rabbit_max_retries: int = 0
    request_timeout: float = 10.0
    heartbeat_timeout_threshold: int = 4
    heartbeat_rate: float = 1.5
    heartbeat_runner: str = "auto"
    tcp_keepalive: bool = True
    tcp_keepidle: int | None = None
    tcp_keepintvl: int | None = None
    tcp_keepcnt: int | None = None
    tcp_user_timeout: float | None = None
    kombu_reconnect_delay: float = 1.0
    consumer_check_interval: float = 10.0
    enable_cancel_on_failover: bool = False
    rabbit_qos_prefetch_count: int = 64
    amqp_durable_queues: bool = False
    rabbit_quorum_queue: bool = False
    rabbit_transient_queues_ttl: int = 1800
    ssl: bool = False
    ssl_ca_file: str = ""
    ssl_cert_file: str = ""
    ssl_key_file: str = ""
    ssl_enforce_hostname_verification: bool = True
    ssl_version: str = ""
    rabbit_login_method: str = "AMQPLAIN"
    rpc_response_timeout: int = 60
    publish_timeout: float = 30.0
    cast_confirm: str = "background"
    rpc_resend_uncertain_after: float = 1.0
    rpc_reply_cache_size: int = 1024
    rpc_reply_cache_ttl: float = 300.0
    rpc_max_message_size: int = 16 * 1024 * 1024
    kombu_compression: str | None = None
    metrics_http_port: int | None = None
    # -- queue types (RabbitMQ 4): queue_options.queue_type_opts ----------------
    rabbit_transient_quorum_queue: bool = False
    rabbit_stream_fanout: bool = False
    rabbit_quorum_delivery_limit: int = 0
    rabbit_quorum_max_memory_length: int = 0
    rabbit_quorum_max_memory_bytes: int = 0
    use_queue_manager: bool = False
    hostname: str = DEFAULT_HOSTNAME
    processname: str = DEFAULT_PROCESSNAME
    amqp_auto_delete: bool = False

    #: Where each value came from (see :mod:`rabbit_ha_driver.precedence`).
    origins: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False,
                                                   compare=False)

    def option_label(self, name: str) -> str:
        """``[group] name`` for errors: the group the value of ``name`` came from."""
        source = self.origins.get(name, "")
        group = source if source.startswith("[") else f"[{GROUP}]"
        return f"{group} {name}"

    @property
    def hosts(self) -> tuple[Host, ...]:
        return self.transport_url.hosts

    @property
    def virtual_host(self) -> str:
        return self.transport_url.virtual_host

    @property
    def is_memory(self) -> bool:
        return self.transport_url.is_memory

    def replace(self, **changes: Any) -> Settings:
        """A copy with some values changed, validated like the original."""
        return validated(dataclasses.replace(self, **changes))

    def __repr__(self) -> str:
        return f"<Settings {self.transport_url.redacted()} T={self.heartbeat_timeout_threshold}>"


def validated(s: Settings) -> Settings:
    """``s``, after the checks that span several options or that oslo.config cannot express."""
    t = s.heartbeat_timeout_threshold
    if t is not None and 0 < t < 2:
        raise ConfigurationError(
            s.option_label("heartbeat_timeout_threshold"), t,
            "must be 0 (off) or at least 2 seconds: the broker's heartbeat "
            "interval is whole seconds and must be shorter than T",
        )
    if s.rabbit_interval_max < s.rabbit_retry_interval:
        raise ConfigurationError(
            s.option_label("rabbit_interval_max"), s.rabbit_interval_max,
            f"is below rabbit_retry_interval ({s.rabbit_retry_interval})",
        )
    if s.heartbeat_runner == "green":
        optional.require_eventlet(s.option_label("heartbeat_runner"), s.heartbeat_runner)
    _validate_queue_types(s)
    if not s.is_memory and not s.hosts:
        raise ConfigurationError("[rabbit_ha] transport_url", s.transport_url.redacted(), "no host given")
    if s.ssl:
        for name in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
            path = getattr(s, name)
            if path and not os.path.isfile(path):
                raise ConfigurationError(s.option_label(name), path, "no such file")
        if bool(s.ssl_cert_file) != bool(s.ssl_key_file):
            raise ConfigurationError(
                s.option_label("ssl_key_file" if s.ssl_cert_file else "ssl_cert_file"),
                "", "a client certificate needs both ssl_cert_file and ssl_key_file",
            )
    if tls_minimum_version(s.ssl_version, s.option_label("ssl_version")) and not _amqp_tls_minimum():
        raise ConfigurationError(s.option_label("ssl_version"), s.ssl_version,
                                 "a minimum TLS version needs py-amqp 5.4.0 or later")
    if s.rabbit_login_method == "EXTERNAL" and not s.is_memory and not (s.ssl and s.ssl_cert_file):
        raise ConfigurationError(
            s.option_label("rabbit_login_method"), "EXTERNAL",
            "EXTERNAL logs in with the client certificate: it needs ssl and ssl_cert_file")
    return s


#: ``ssl_version`` values and the lowest TLS version each accepts (None: Python's default).
_TLS_MINIMUM = {
    "": None,
    "sslv23": None,
    "tls": None,
    "tlsv1_2": ssl.TLSVersion.TLSv1_2,
    "tlsv1_3": ssl.TLSVersion.TLSv1_3,
}


def tls_minimum_version(value: str, option: str = "[rabbit_ha] ssl_version") -> ssl.TLSVersion | None:
    """The lowest TLS version ``ssl_version`` accepts; None leaves Python's default.

    oslo.messaging pins the protocol named (``ssl.PROTOCOL_TLSv1_2``...);
    here it is a floor, so a newer version is still used when both ends
    support it. Versions below TLS 1.2 are refused rather than allowed.
    """
    key = (value or "").strip().lower().replace(".", "_")
    if key in _TLS_MINIMUM:
        return _TLS_MINIMUM[key]
    if key in ("tlsv1", "tlsv1_0", "tlsv1_1", "sslv2", "sslv3"):
        raise ConfigurationError(option, value, "TLS versions below 1.2 are insecure and "
                                 "not allowed; use TLSv1_2 or TLSv1_3")
    raise ConfigurationError(option, value, "expected TLSv1_2, TLSv1_3, SSLv23 or empty")


def _amqp_tls_minimum() -> bool:
    """Whether the installed py-amqp can set a minimum TLS version (5.4.0 and later)."""
    import inspect

    from amqp.transport import SSLTransport

    return "tls_minimum_version" in inspect.signature(SSLTransport._wrap_socket_sni).parameters


def _validate_queue_types(s: Settings) -> None:
    """oslo.messaging's rules for stream fanout, and names the queue manager can use."""
    if s.rabbit_stream_fanout and not s.rabbit_transient_quorum_queue:
        raise ConfigurationError(
            "[rabbit_ha] rabbit_stream_fanout", True,
            "needs rabbit_transient_quorum_queue = true (as in oslo.messaging)")
    if s.rabbit_stream_fanout and s.rabbit_qos_prefetch_count <= 0:
        raise ConfigurationError(
            "[rabbit_ha] rabbit_qos_prefetch_count", s.rabbit_qos_prefetch_count,
            "must be above 0 with rabbit_stream_fanout: a stream consumer needs a prefetch limit")
    if s.use_queue_manager:
        for name in ("hostname", "processname"):
            value = getattr(s, name)
            if not value or any(c.isspace() for c in value):
                raise ConfigurationError(f"[rabbit_ha] {name}", value,
                                         "must be a non-empty name without spaces with "
                                         "use_queue_manager (it is part of queue names)")

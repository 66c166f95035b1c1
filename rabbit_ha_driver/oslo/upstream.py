"""What becomes of each ``[oslo_messaging_rabbit]`` option under ``rabbit-ha://``.

How this works. A service moving from ``rabbit://`` keeps its configuration
file, so every option oslo.messaging's rabbit driver reads has a fate here
(:data:`FATES`), one of four (:class:`Fate`):

* **honoured**: ``[rabbit_ha]`` has an option of the same name and meaning;
  a value set in ``[oslo_messaging_rabbit]`` applies unless ``[rabbit_ha]``
  or the URL query sets it (:mod:`rabbit_ha_driver.precedence`);
* **honoured, other default**: the same, but when nobody set it the
  library's default applies, which differs for the reason given;
* **not needed**: the library does the job another way; a value someone set
  is logged once at start-up, at INFO, and has no effect;
* **refused when set**: ignoring it would weaken security or change what
  is delivered or how queues are declared, so a value other than
  oslo.messaging's default stops the service at start-up with an error
  naming the option.

:func:`unclassified` walks oslo.messaging's own option list
(:func:`upstream_opts`), so an option a new oslo.messaging release adds fails
the unit tests until it is given a fate here. :func:`read` applies the table
to a service's configuration and URL query; :func:`fate_table_rst` renders
it for the docs (``tools/gen_option_fates.py``).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from oslo_config import cfg

from rabbit_ha_driver import options, precedence
from rabbit_ha_driver.exceptions import ConfigurationError

LOG = logging.getLogger(__name__)

#: oslo.messaging's option group of its rabbit driver.
GROUP = "oslo_messaging_rabbit"


class Fate(enum.Enum):
    """What the oslo.messaging driver does with one ``[oslo_messaging_rabbit]`` option."""

    HONOURED = "honoured"
    OTHER_DEFAULT = "honoured, other default"
    NOT_NEEDED = "accepted, not needed"
    REFUSED = "refused when set"

    @property
    def honoured(self) -> bool:
        return self in (Fate.HONOURED, Fate.OTHER_DEFAULT)


@dataclasses.dataclass(frozen=True)
class Rule:
    """The fate of one option and why, in words an operator reads."""

    fate: Fate
    why: str


def _h(why: str) -> Rule:
    return Rule(Fate.HONOURED, why)


def _d(why: str) -> Rule:
    return Rule(Fate.OTHER_DEFAULT, why)


def _n(why: str) -> Rule:
    return Rule(Fate.NOT_NEEDED, why)


def _r(why: str) -> Rule:
    return Rule(Fate.REFUSED, why)


_POOL = _n("No connection pool: one publishing connection per transport that threads "
           "take turns on, one for replies, one per listener.")
_QUEUE_MANAGER = _h("Part of the stable reply and fanout queue names of "
                    "use_queue_manager, in oslo.messaging's format.")
_QUORUM_LIMITS = _h("The same argument on the quorum queues declared (topic, server, "
                    "notification; reply and fanout with rabbit_transient_quorum_queue), "
                    "so both drivers declare a queue alike.")

#: Every ``[oslo_messaging_rabbit]`` option of the supported oslo.messaging releases.
FATES: dict[str, Rule] = {
    "amqp_durable_queues": _h("Durable topic exchanges and queues, persistent casts."),
    "amqp_auto_delete": _h("Topic exchanges and topic, server and notification queues "
                           "auto-delete, as in oslo.messaging."),
    "rpc_conn_pool_size": _POOL,
    "conn_pool_min_size": _POOL,
    "conn_pool_ttl": _POOL,
    "ssl": _h("Or the amqps:// scheme."),
    "ssl_version": _h("A floor here, not a pin: TLSv1_2 or TLSv1_3 is the lowest version "
                      "accepted, a newer one is used when both ends support it; TLSv1 "
                      "and TLSv1_1 are refused (insecure)."),
    "ssl_key_file": _h("A missing file stops the service at start-up."),
    "ssl_cert_file": _h("A missing file stops the service at start-up; needs ssl_key_file."),
    "ssl_ca_file": _h("Empty: the system's CAs verify the broker's chain."),
    "ssl_enforce_hostname_verification": _h(
        "Stricter than oslo.messaging: the chain is always verified (with the system's "
        "CAs when ssl_ca_file is empty), and the host name of every host is checked, "
        "not only when the URL names a single host."),
    "ssl_enforce_fips_mode": _n("No effect in oslo.messaging either since OpenSSL 3: FIPS "
                                "mode belongs to the OpenSSL Python is linked with."),
    "kombu_reconnect_delay": _h("The delay before consuming again after a consumer "
                                "cancel notification."),
    "kombu_reconnect_splay": _n("The consumer-cancel delay is fixed; reconnect backoff "
                                "has its own jitter of up to 20%."),
    "kombu_compression": _h("gzip or bz2 (or kombu's bzip2, the only bz2 name "
                            "oslo.messaging's driver can send with), for sending. "
                            "Compressed messages are always accepted, expanded to at "
                            "most rpc_max_message_size bytes."),
    "kombu_missing_consumer_retry_timeout": _n(
        "A reply to a missing reply queue is retried until the caller's deadline."),
    "kombu_failover_strategy": _h("round-robin or shuffle."),
    "rabbit_login_method": _h("AMQPLAIN, PLAIN or EXTERNAL (the client certificate names "
                              "the user; needs ssl_cert_file and the broker's "
                              "rabbitmq_auth_mechanism_ssl plugin). RABBIT-CR-DEMO is "
                              "refused."),
    "rabbit_retry_interval": _d("0.2 s (oslo.messaging: 1 s), and only after a full pass "
                                "over the hosts: the next host is tried at once."),
    "rabbit_retry_backoff": _d("1 s (oslo.messaging: 2 s), so a service serves again "
                               "soon after a cluster's return."),
    "rabbit_interval_max": _d("3 s (oslo.messaging: 30 s), so a service serves again "
                              "within seconds of a cluster's return."),
    "rabbit_ha_queues": _n("Sets the x-ha-policy queue argument, which RabbitMQ ignores "
                           "since 3.0; classic mirroring is gone in 4.0. Use "
                           "rabbit_quorum_queue."),
    "rabbit_quorum_queue": _h("Topic and server queues as quorum queues."),
    "rabbit_transient_quorum_queue": _h("Reply and fanout queues as quorum queues (with "
                                        "x-expires), fanout exchanges durable; needed on "
                                        "a RabbitMQ that denies transient queues."),
    "rabbit_quorum_delivery_limit": _QUORUM_LIMITS,
    "rabbit_quorum_max_memory_length": _QUORUM_LIMITS,
    "rabbit_quorum_max_memory_bytes": _QUORUM_LIMITS,
    "rabbit_transient_queues_ttl": _h("x-expires of reply and fanout queues (x-max-age of "
                                      "a fanout stream); 0 sets neither, as in "
                                      "oslo.messaging."),
    "rabbit_qos_prefetch_count": _d("64 (oslo.messaging: 0, unbounded), so few deliveries "
                                    "are stranded on a connection that dies."),
    "heartbeat_timeout_threshold": _d(
        "4 s (oslo.messaging: 60 s), measured to end the outage after a silent drop "
        "within seconds without false alarms (docs/liveness.rst, \"The defaults\"). "
        "Here it bounds detection: a connection silent for T seconds is declared dead "
        "within T + 1 s (the heartbeat asked of the broker is T // 2); oslo.messaging "
        "asks for T and was measured taking 1.5 to 1.8 T."),
    "heartbeat_rate": _d("1.5 (oslo.messaging: 3): a heartbeat frame after H / 1.5 s "
                         "with nothing written, so the broker, which closes a client only "
                         "after two whole intervals without a byte, would have to miss "
                         "two frames in a row; it keeps the short default H cheap "
                         "(docs/liveness.rst, \"The defaults\")."),
    "direct_mandatory_flag": _n("Everything is published with the mandatory flag and "
                                "publisher confirms."),
    "enable_cancel_on_failover": _h("Only meaningful for classic mirrored queues."),
    "use_queue_manager": _h("Stable reply and fanout queue names "
                            "(hostname:processname:N), so a restarted process takes its "
                            "queues back instead of leaving them to expire."),
    "hostname": _QUEUE_MANAGER,
    "processname": _QUEUE_MANAGER,
    "rabbit_stream_fanout": _h("One stream per fanout topic (needs "
                               "rabbit_transient_quorum_queue); a server starts reading at "
                               "the stream's end (oslo.messaging: its last chunk) and "
                               "resumes after its last delivery on a reconnect."),
}


def upstream_opts() -> list[cfg.Opt]:
    """The options oslo.messaging's rabbit driver registers in ``[oslo_messaging_rabbit]``.

    Taken from oslo.messaging's own ``list_opts()`` (what its config
    generator lists), so a new release's new option shows up here.
    """
    from oslo_messaging import opts as om_opts

    found: list[cfg.Opt] = []
    for group, opts in om_opts.list_opts():
        name = getattr(group, "name", group)
        if name == GROUP:
            found.extend(opts)
    return found


def unclassified(opts: Iterable[cfg.Opt], fates: Mapping[str, Rule] = FATES) -> list[str]:
    """Names of ``opts`` that have no fate in ``fates``; empty when all are classified."""
    return [opt.dest for opt in opts if opt.dest not in fates]


def register(conf: cfg.ConfigOpts) -> list[cfg.Opt]:
    """Register oslo.messaging's own options in ``[oslo_messaging_rabbit]``, as its driver does.

    They are the same option objects, so oslo.messaging's rabbit driver
    registering them again in the same process (notifications on
    ``rabbit://``) is harmless.
    """
    opts = upstream_opts()
    conf.register_opts(opts, group=GROUP)
    return opts


@dataclasses.dataclass(frozen=True)
class Reading:
    """``[oslo_messaging_rabbit]`` as the driver takes it.

    ``honoured`` holds the values set there that apply here, by name;
    ``not_needed`` the ``(name, source)`` of options set that have no effect;
    ``query`` the URL query without oslo.messaging-only options;
    ``unclassified`` the options set there that the fate table does not know
    (an oslo.messaging newer than this library): ignored, and warned about.
    """

    honoured: dict[str, Any]
    not_needed: list[tuple[str, str]]
    query: dict[str, str]
    unclassified: list[str] = dataclasses.field(default_factory=list)


def read(conf: cfg.ConfigOpts, query: Mapping[str, str] | None = None,
         fates: Mapping[str, Rule] = FATES) -> Reading:
    """Apply the fate table to ``conf`` and the URL ``query``.

    Raises :class:`ConfigurationError` naming the option for a refused option
    set to anything but oslo.messaging's default, or for a value oslo.config
    cannot convert. A query key that is an option of ``[rabbit_ha]`` stays in
    the query; one that is only oslo.messaging's gets its fate like a file's
    value (oslo.messaging's driver reads its options from the query too).
    """
    opts = {opt.dest: opt for opt in register(conf)}
    ours = {opt.dest for opt in options.ALL_OPTS}
    honoured: dict[str, Any] = {}
    not_needed: list[tuple[str, str]] = []
    unclassified: list[str] = []
    for name, opt in opts.items():
        rule = fates.get(name)
        try:
            # Asking where a value came from converts it too: both can fail.
            if not precedence.was_set(conf, name, GROUP):
                continue
            if rule is None:
                unclassified.append(name)
                continue
            value = conf[GROUP][name]
        except (ValueError, cfg.ConfigFileValueError) as error:
            raise ConfigurationError(f"[{GROUP}] {name}", None, str(error)) from error
        _judge(name, rule, value, opt, f"[{GROUP}]", honoured, not_needed)
    rest: dict[str, str] = {}
    for name, text in (query or {}).items():
        rule, known = fates.get(name), opts.get(name)
        if name in ours or rule is None or known is None:
            rest[name] = text  # ours, or unknown: the settings layer warns about it
            continue
        try:
            value = known.type(text)
        except (ValueError, TypeError) as error:
            raise ConfigurationError(f"[{GROUP}] {name}", text,
                                     f"{error} (from {precedence.QUERY})") from error
        _judge(name, rule, value, known, precedence.QUERY, {}, not_needed)
    return Reading(honoured, not_needed, rest, unclassified)


def _judge(name: str, rule: Rule, value: Any, opt: cfg.Opt, source: str,
           honoured: dict[str, Any], not_needed: list[tuple[str, str]]) -> None:
    if rule.fate.honoured:
        honoured[name] = value
    elif rule.fate is Fate.NOT_NEEDED:
        not_needed.append((name, source))
    elif value != opt.default:
        raise ConfigurationError(f"[{GROUP}] {name}", value,
                                 f"not supported by the rabbit-ha driver (from {source}): "
                                 f"{rule.why}")


def reading_lines(reading: Reading, fates: Mapping[str, Rule] = FATES) -> list[str]:
    """What was taken from ``[oslo_messaging_rabbit]`` and what is ignored, as log lines."""
    lines = []
    if reading.honoured:
        lines.append(f"rabbit-ha: taken from [{GROUP}] (where [rabbit_ha] and the URL query "
                     "say nothing): "
                     + ", ".join(f"{k}={v!r}" for k, v in sorted(reading.honoured.items())))
    for name, source in reading.not_needed:
        lines.append(f"rabbit-ha: {source} {name} is accepted and not needed: "
                     f"{fates[name].why}")
    return lines


def log_reading(reading: Reading, fates: Mapping[str, Rule] = FATES,
                level: int = logging.INFO) -> None:
    """Say at start-up what was taken from ``[oslo_messaging_rabbit]`` and what is ignored.

    An option the fate table does not know is warned about every time: its
    value may matter, and this library does not apply it.
    """
    for line in reading_lines(reading, fates):
        LOG.log(level, "%s", line)
    for name in reading.unclassified:
        LOG.warning("rabbit-ha: [%s] %s is set, but this version of rabbit_ha_driver does not "
                    "know the option (an oslo.messaging newer than it?) and ignores it; check "
                    "whether [rabbit_ha] has an option with its meaning", GROUP, name)


def _shown_default(opt: cfg.Opt) -> Any:
    """The default as the docs show it: the sample one where the real one is
    computed where the code runs (a host or program name)."""
    return opt.sample_default if opt.sample_default is not None else opt.default


def fate_table_rst(opts: Iterable[cfg.Opt] | None = None,
                   fates: Mapping[str, Rule] = FATES) -> str:
    """The fate table as reStructuredText, for the docs."""
    rows = [
        ".. This file is generated by tools/gen_option_fates.py from",
        "   rabbit_ha_driver/oslo/upstream.py; do not edit it by hand.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 28 16 12 12 32",
        "",
        "   * - ``[oslo_messaging_rabbit]`` option",
        "     - fate",
        "     - default in oslo.messaging",
        "     - default here",
        "     - why",
    ]
    for opt in sorted(opts if opts is not None else upstream_opts(), key=lambda o: o.dest):
        rule = fates.get(opt.dest)
        fate = rule.fate.value if rule else "UNCLASSIFIED"
        default = _shown_default(opt)
        ours = options.opt_by_name(opt.dest) if rule and rule.fate.honoured else None
        rows += [
            f"   * - ``{opt.dest}``",
            f"     - {fate}",
            f"     - ``{default!r}``",
            f"     - ``{_shown_default(ours)!r}``" if ours is not None else "     -",
            f"     - {rule.why if rule else ''}",
        ]
    return "\n".join(rows) + "\n"

"""py-amqp's TLS options for one broker host, from the settings.

How this works. py-amqp builds its own ``SSLContext`` from a dict of options
(``_wrap_socket_sni``): the chain is verified when ``cert_reqs`` asks for it
(against ``ca_certs``, or the system's CAs without one), and the host name is
checked exactly when a ``server_hostname`` is given. kombu's
``establish_connection`` fills in a ``server_hostname`` that is present but
None with the host connected to, which would turn the check back on; so with
``ssl_enforce_hostname_verification = false`` the key is left out altogether
(no SNI is sent then either), and the chain is still verified.
"""

from __future__ import annotations

import ssl
from typing import Any

from rabbit_ha_driver.settings import Host, Settings, tls_minimum_version


def amqp_ssl_options(settings: Settings, host: Host) -> dict[str, Any] | bool:
    """The ``ssl`` argument of a kombu/py-amqp connection to ``host``; False without TLS."""
    if not settings.ssl:
        return False
    options: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED}
    if settings.ssl_ca_file:
        options["ca_certs"] = settings.ssl_ca_file
    if settings.ssl_cert_file:
        options["certfile"] = settings.ssl_cert_file
        options["keyfile"] = settings.ssl_key_file or None
    if settings.ssl_enforce_hostname_verification:
        options["server_hostname"] = host.hostname
    minimum = tls_minimum_version(settings.ssl_version)
    if minimum is not None:
        options["tls_minimum_version"] = minimum
    return options

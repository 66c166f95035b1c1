"""TLS and SASL options as they reach py-amqp, through kombu, from the library's connection.

kombu's ``establish_connection`` rewrites the ``ssl`` options it is given
(a ``server_hostname`` of None becomes the host connected to), so these tests
record what py-amqp's connection is really constructed with.
"""

from __future__ import annotations

import inspect
import ssl
from typing import Any

import amqp.transport
import pytest

from rabbit_ha_driver import ConfigurationError, from_url
from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.clock import FakeClock
from rabbit_ha_driver.connection import Connection
from rabbit_ha_driver.connection._retry import Deadline
from rabbit_ha_driver.connection._transport import AMQPTransport

AMQP_TLS_MINIMUM = "tls_minimum_version" in inspect.signature(
    amqp.transport.SSLTransport._wrap_socket_sni).parameters


class RecordingTransport(AMQPTransport):
    """kombu's py-amqp transport whose connections only record their arguments."""

    seen: list[dict[str, Any]] = []

    class Connection:  # what kombu's establish_connection constructs
        def __init__(self, **kwargs: Any) -> None:
            ssl_options = kwargs.get("ssl")
            RecordingTransport.seen.append(
                {**kwargs, "ssl": dict(ssl_options) if isinstance(ssl_options, dict) else ssl_options})
            raise ConnectionRefusedError("recording only")


def amqp_arguments(url: str, **options: Any) -> dict[str, Any]:
    """The arguments py-amqp's connection gets for the first host of ``url``."""
    RecordingTransport.seen = []
    settings = from_url(url, connect_timeout=0.1, **options)
    clock = FakeClock()
    conn = Connection(settings, name="t", transport=RecordingTransport, clock=clock)
    with pytest.raises(exc.RabbitHAError):
        conn.connect(Deadline.after(0.5, clock))
    conn.close()
    assert RecordingTransport.seen, "no connection was attempted"
    return RecordingTransport.seen[0]


@pytest.fixture
def ca(tmp_path):
    path = tmp_path / "ca.pem"
    path.write_text("x")
    return str(path)


def test_hostname_verification_off_connects_by_ip_with_the_chain_verified(ca):
    args = amqp_arguments("rabbit://u:p@10.0.0.7:5671/?ssl=true&ssl_enforce_hostname_verification=false",
                          ssl_ca_file=ca)
    assert args["host"] == "10.0.0.7:5671"
    assert "server_hostname" not in args["ssl"]  # py-amqp checks the name only when given one
    assert args["ssl"]["cert_reqs"] == ssl.CERT_REQUIRED
    assert args["ssl"]["ca_certs"] == ca


def test_hostname_verification_on_checks_the_host_connected_to(ca):
    args = amqp_arguments("rabbit://u:p@broker1.example:5671/?ssl=true", ssl_ca_file=ca)
    assert args["ssl"]["server_hostname"] == "broker1.example"
    assert args["ssl"]["cert_reqs"] == ssl.CERT_REQUIRED


@pytest.mark.parametrize(("value", "minimum"), [
    ("TLSv1_2", ssl.TLSVersion.TLSv1_2), ("tlsv1_3", ssl.TLSVersion.TLSv1_3),
    ("TLSv1.3", ssl.TLSVersion.TLSv1_3), ("", None), ("SSLv23", None),
])
def test_ssl_version_is_the_lowest_version_accepted(ca, value, minimum):
    if minimum is not None and not AMQP_TLS_MINIMUM:
        # py-amqp before 5.4.0 (tox -e lower) cannot set it: refused at start-up.
        with pytest.raises(ConfigurationError, match=r"needs py-amqp 5\.4\.0"):
            from_url("rabbit://u:p@h1:5671/?ssl=true", ssl_ca_file=ca, ssl_version=value)
        return
    args = amqp_arguments("rabbit://u:p@h1:5671/?ssl=true", ssl_ca_file=ca, ssl_version=value)
    assert args["ssl"].get("tls_minimum_version") == minimum


@pytest.mark.parametrize("value", ["TLSv1", "TLSv1_1", "SSLv3", "TLSv9"])
def test_ssl_version_below_1_2_or_unknown_is_refused_naming_the_option(value):
    with pytest.raises(ConfigurationError) as err:
        from_url("rabbit://u:p@h1:5671/?ssl=true", ssl_version=value)
    assert err.value.option == "[rabbit_ha] ssl_version"


@pytest.mark.parametrize("method", ["PLAIN", "AMQPLAIN"])
def test_login_method_reaches_py_amqp(method):
    assert amqp_arguments("rabbit://u:p@h1:5672/", rabbit_login_method=method)["login_method"] == method


def test_the_default_login_method_is_oslo_messagings():
    assert amqp_arguments("rabbit://u:p@h1:5672/")["login_method"] == "AMQPLAIN"


def test_external_login_sends_the_client_certificate(tmp_path, ca):
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    cert.write_text("x")
    key.write_text("x")
    args = amqp_arguments("rabbit://h1:5671/?ssl=true", ssl_ca_file=ca, ssl_cert_file=str(cert),
                          ssl_key_file=str(key), rabbit_login_method="EXTERNAL")
    assert args["login_method"] == "EXTERNAL"
    assert (args["ssl"]["certfile"], args["ssl"]["keyfile"]) == (str(cert), str(key))


@pytest.mark.parametrize("url", ["rabbit://h1:5672/", "rabbit://h1:5671/?ssl=true"])
def test_external_login_without_a_client_certificate_is_refused(url):
    with pytest.raises(ConfigurationError) as err:
        from_url(url, rabbit_login_method="EXTERNAL")
    assert err.value.option == "[rabbit_ha] rabbit_login_method"


def test_an_unknown_login_method_is_refused():
    with pytest.raises(ConfigurationError, match="rabbit_login_method"):
        from_url("rabbit://h1/", rabbit_login_method="RABBIT-CR-DEMO")

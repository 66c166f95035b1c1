"""TLS and SASL against the cluster's TLS listeners.

* Brokers reached by an address their certificate does not name (an IP, a
  virtual IP): with ``ssl_enforce_hostname_verification = false`` the
  connection is made and the chain is still verified; with it on, the
  connection is refused with a TLS error naming the mismatch.
* ``ssl_version`` is the lowest TLS version accepted.
* ``rabbit_login_method = EXTERNAL`` logs in with the client certificate
  (the broker's ``rabbitmq_auth_mechanism_ssl``), through the oslo.messaging
  driver configured only in ``[oslo_messaging_rabbit]``.

The server certificate names ``localhost`` and ``127.0.0.1``; a forwarder on
``127.0.0.2`` (any 127/8 address is loopback) stands for an address it does
not name.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import oslo_messaging as om
import pytest
from oslo_config import cfg
from oslo_messaging import conffixture

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver import from_url
from rabbit_ha_driver.connection import Connection
from rabbit_ha_driver.connection._retry import Deadline

from .helpers.faults import OWN_QUEUES_DURABLE

UNNAMED_ADDRESS = "127.0.0.2"


class Forwarder:
    """Plain TCP forwarding from ``UNNAMED_ADDRESS``:port to one TLS listener."""

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server((UNNAMED_ADDRESS, 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target, timeout=5)
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def forwarder(cluster: Any) -> Iterator[Forwarder]:
    fwd = Forwarder(cluster.nodes[0].tls_port)
    try:
        yield fwd
    finally:
        fwd.close()


def try_connect(url: str, **options: Any) -> tuple[Connection, BaseException | None]:
    settings = from_url(url, connect_timeout=3.0, request_timeout=3.0, rabbit_retry_interval=0.1,
                        rabbit_interval_max=0.2, **options)
    conn = Connection(settings, name=f"tls-test-{uuid.uuid4().hex[:6]}")
    try:
        conn.connect(Deadline.after(6.0))
    except exc.RabbitHAError as error:
        return conn, error
    return conn, None


def test_tls_by_an_address_the_certificate_does_not_name(cluster, forwarder):
    url = f"rabbit://guest:guest@{UNNAMED_ADDRESS}:{forwarder.port}/?ssl=true"
    outcomes = {}
    cases = {
        "verification on": dict(ssl_ca_file=cluster.tls.ca_file),
        "verification off": dict(ssl_ca_file=cluster.tls.ca_file,
                                 ssl_enforce_hostname_verification=False),
        "verification off, wrong CA": dict(ssl_ca_file=cluster.tls.wrong_ca_file,
                                           ssl_enforce_hostname_verification=False),
    }
    for case, options in cases.items():
        conn, error = try_connect(url, **options)
        try:
            outcomes[case] = error
            if error is None:
                queue = conn.declare_queue(f"tls-{uuid.uuid4().hex[:6]}", auto_delete=True,
                                           durable=OWN_QUEUES_DURABLE)
                assert queue
        finally:
            conn.close()
    print()
    for case, error in outcomes.items():
        print(f"  {case}: {'connected' if error is None else f'{type(error).__name__}: {error}'}")
    on, off, wrong_ca = outcomes.values()
    assert isinstance(on, exc.TLSError) and "mismatch" in str(on) and UNNAMED_ADDRESS in str(on)
    assert off is None
    assert isinstance(wrong_ca, exc.TLSError) and "certificate verify failed" in str(wrong_ca)


def ctl_rows(cluster: Any, *columns: str) -> list[list[str]]:
    text = cluster.rabbitmqctl(0, "list_connections", *columns, "--quiet", "--no-table-headers")
    return [line.split("\t") for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(("version", "protocol"), [("TLSv1_3", "tlsv1.3"), ("TLSv1_2", None)])
def test_ssl_version_is_the_lowest_accepted_against_the_broker(cluster, version, protocol):
    node = cluster.nodes[0]
    conn, error = try_connect(f"rabbit://guest:guest@127.0.0.1:{node.tls_port}/?ssl=true",
                              ssl_ca_file=cluster.tls.ca_file, ssl_version=version)
    try:
        assert error is None, error
        time.sleep(1)
        rows = ctl_rows(cluster, "ssl", "ssl_protocol")
        print(f"\n  ssl_version={version}: list_connections ssl ssl_protocol -> {rows}")
        assert rows and all(ssl_on == "true" for ssl_on, _ in rows)
        if protocol:
            assert {p for _, p in rows} == {protocol}
    finally:
        conn.close()


class OneVersionServer:
    """A TLS server on loopback (the cluster's server certificate) that speaks only TLS 1.2."""

    def __init__(self, tls: Any) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(tls.server_cert, tls.server_key)
        self._context.minimum_version = self._context.maximum_version = ssl.TLSVersion.TLSv1_2
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.handshakes = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with contextlib.suppress(OSError), sock, self._context.wrap_socket(
                    sock, server_side=True):
                self.handshakes += 1  # then close: this is no broker

    def close(self) -> None:
        self._listener.close()


def test_a_broker_below_the_minimum_version_is_refused(cluster):
    server = OneVersionServer(cluster.tls)
    try:
        url = f"rabbit://guest:guest@127.0.0.1:{server.port}/?ssl=true"
        conn, error = try_connect(url, ssl_ca_file=cluster.tls.ca_file, ssl_version="TLSv1_3")
        conn.close()
        print(f"\n  TLS 1.2-only server, ssl_version=TLSv1_3: {type(error).__name__}: {error}")
        assert error is not None and server.handshakes == 0
        assert "VERSION" in str(error).upper()
        conn, error = try_connect(url, ssl_ca_file=cluster.tls.ca_file, ssl_version="TLSv1_2")
        conn.close()
        assert server.handshakes >= 1  # the handshake passed; the server is no broker
    finally:
        server.close()


class Echo:
    def echo(self, ctxt: Any, value: Any) -> Any:
        return value


def test_external_login_with_a_client_certificate_through_the_oslo_driver(cluster, tmp_path):
    tls = cluster.tls
    path = tmp_path / "service.conf"
    path.write_text(f"""
[oslo_messaging_rabbit]
ssl = true
ssl_ca_file = {tls.ca_file}
ssl_cert_file = {tls.client_cert}
ssl_key_file = {tls.client_key}
rabbit_login_method = EXTERNAL
""")
    conf = cfg.ConfigOpts()
    conffixture.ConfFixture(conf)
    conf(["--config-file", str(path)])
    hosts = ",".join(f"{n.host}:{n.tls_port}" for n in cluster.nodes)  # no credentials
    topic = f"external-{uuid.uuid4().hex[:8]}"
    with cluster.external_login() as user:
        transport = om.get_rpc_transport(conf, f"rabbit-ha://{hosts}/")
        server = om.get_rpc_server(transport, om.Target(topic=topic, server="s1"), [Echo()],
                                   executor="threading")
        try:
            server.start()
            client = om.get_rpc_client(transport, om.Target(topic=topic), timeout=20)
            assert client.call({}, "echo", value=1) == 1
            time.sleep(1)
            rows = ctl_rows(cluster, "user", "auth_mechanism", "ssl")
            print("\n  list_connections user auth_mechanism ssl")
            for row in rows:
                print("   ", "\t".join(row))
            assert rows and {tuple(r) for r in rows} == {(user, "EXTERNAL", "true")}
        finally:
            server.stop()
            server.wait()
            transport.cleanup()

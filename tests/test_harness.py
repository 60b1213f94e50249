"""The test broker itself: AMQP, rabbitmqctl and TLS answer as the rest of the suite expects."""

from __future__ import annotations

import socket
import ssl
from urllib.parse import urlsplit

import pytest

from kiwi_anyio.testing.rabbitmq import BrokerInfo, RabbitMQBroker

pytestmark = pytest.mark.broker


def _connection_start(sock: socket.socket) -> bytes:
    """Send the AMQP 0-9-1 header and return the first frame the broker answers with."""
    sock.sendall(b"AMQP\x00\x00\x09\x01")
    data = b""
    while len(data) < 7 or len(data) < 7 + int.from_bytes(data[3:7], "big") + 1:
        chunk = sock.recv(65536)
        assert chunk, f"the broker closed the connection after {data!r}"
        data += chunk
    size = int.from_bytes(data[3:7], "big")
    return data[: 7 + size + 1]


def test_amqp_port_answers_protocol_header(rabbitmq: BrokerInfo) -> None:
    url = urlsplit(rabbitmq.url)
    assert url.scheme == "amqp"
    assert url.hostname == "127.0.0.1"
    assert url.port is not None
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        frame = _connection_start(sock)
    assert frame[0] == 1  # a method frame
    assert int.from_bytes(frame[1:3], "big") == 0  # on channel 0
    assert frame[7:11] == b"\x00\x0a\x00\x0a"  # Connection.Start (class 10, method 10)
    assert frame[11:13] == b"\x00\x09"  # version 0-9
    assert frame[-1] == 0xCE  # frame end


def test_ctl_lists_the_test_vhost(broker: RabbitMQBroker) -> None:
    vhosts = broker.ctl("list_vhosts", "name").split()
    assert "kiwi-test" in vhosts
    assert "/" in vhosts


def test_ctl_lists_the_users(broker: RabbitMQBroker) -> None:
    users = [line.split("\t")[0] for line in broker.ctl("list_users").splitlines()]
    assert "guest" in users
    assert "kiwi-client" in users


def test_tls_handshake_verifies_with_the_ca(rabbitmq: BrokerInfo) -> None:
    assert rabbitmq.tls_url is not None, "the broker has no TLS listener"
    assert rabbitmq.ca is not None
    url = urlsplit(rabbitmq.tls_url)
    assert url.scheme == "amqps"
    assert url.hostname == "localhost"
    assert url.port is not None
    context = ssl.create_default_context(cafile=rabbitmq.ca)
    with (
        socket.create_connection(("127.0.0.1", url.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        frame = _connection_start(sock)
    assert frame[0] == 1
    # The TLS listener offers EXTERNAL (rabbitmq_auth_mechanism_ssl is loaded).
    assert b"EXTERNAL" in frame


def test_tls_handshake_with_client_certificate(rabbitmq: BrokerInfo) -> None:
    assert rabbitmq.tls_url is not None, "the broker has no TLS listener"
    assert rabbitmq.ca is not None
    assert rabbitmq.client_cert is not None
    assert rabbitmq.client_key is not None
    port = urlsplit(rabbitmq.tls_url).port
    assert port is not None
    context = ssl.create_default_context(cafile=rabbitmq.ca)
    context.load_cert_chain(rabbitmq.client_cert, rabbitmq.client_key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        frame = _connection_start(sock)
    assert frame[0] == 1


def test_tls_refuses_an_unknown_ca(rabbitmq: BrokerInfo) -> None:
    assert rabbitmq.tls_url is not None, "the broker has no TLS listener"
    port = urlsplit(rabbitmq.tls_url).port
    assert port is not None
    context = ssl.create_default_context()  # the system CAs do not know the test CA
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname="localhost")

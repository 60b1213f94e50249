"""Tests of kiwi_anyio.protocol.url: AMQP URLs → ConnectionParameters."""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from kiwi_anyio.exceptions import AMQPError, InvalidURL
from kiwi_anyio.protocol.url import (
    AMQP_PORT,
    AMQPS_PORT,
    REDACTED,
    Address,
    ConnectionParameters,
    parse_url,
)

SECRET = "s3cr3t-pw"


def invalid(url: str, *fragments: str, **kwargs: Any) -> InvalidURL:
    """Parse ``url``, expect InvalidURL whose message holds every fragment; return it."""
    with pytest.raises(InvalidURL) as info:
        parse_url(url, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return info.value


# --------------------------------------------------------------------------- the spec examples


@pytest.mark.parametrize(
    ("url", "username", "password", "host", "port", "vhost"),
    [
        ("amqp://user:pass@host:10000/vhost", "user", "pass", "host", 10000, "vhost"),
        (
            "amqp://user%61:%61pass@ho%61st:10000/v%2fhost",
            "usera",
            "apass",
            "hoast",
            10000,
            "v/host",
        ),
        ("amqp://", "guest", "guest", "localhost", 5672, "/"),
        ("amqp://:@/", "", "", "localhost", 5672, "/"),
        ("amqp://user@", "user", "guest", "localhost", 5672, "/"),
        ("amqp://user:pass@", "user", "pass", "localhost", 5672, "/"),
        ("amqp://host", "guest", "guest", "host", 5672, "/"),
        ("amqp://:10000", "guest", "guest", "localhost", 10000, "/"),
        ("amqp:///vhost", "guest", "guest", "localhost", 5672, "vhost"),
        ("amqp://host/", "guest", "guest", "host", 5672, "/"),
        ("amqp://host/%2f", "guest", "guest", "host", 5672, "/"),
        ("amqp://host/%2F", "guest", "guest", "host", 5672, "/"),
        ("amqp://[::1]", "guest", "guest", "::1", 5672, "/"),
    ],
)
def test_spec_examples(
    url: str, username: str, password: str, host: str, port: int, vhost: str
) -> None:
    params = parse_url(url)
    assert params.username == username
    assert params.password == password
    assert params.addresses == (Address(host, port),)
    assert params.virtual_host == vhost
    assert params.tls is False
    assert params.ssl_context is None


def test_defaults() -> None:
    params = parse_url("amqp://")
    assert params == ConnectionParameters(addresses=(Address("localhost", AMQP_PORT),))
    assert params.heartbeat == 60
    assert params.frame_max == 131072
    assert params.channel_max == 2047
    assert params.connection_timeout == 10.0
    assert params.auth_mechanisms == ()
    assert params.connection_name is None
    assert params.server_hostname is None
    assert params.verify is True


def test_kiwipy_default_url() -> None:
    params = parse_url("amqp://guest:guest@127.0.0.1/")
    assert params.addresses == (Address("127.0.0.1", 5672),)
    assert (params.username, params.password, params.virtual_host) == ("guest", "guest", "/")


def test_empty_user_keeps_default_password() -> None:
    params = parse_url("amqp://@host")
    assert (params.username, params.password) == ("", "guest")


def test_raw_colon_in_password_is_kept() -> None:
    assert parse_url("amqp://u:a:b@host").password == "a:b"


def test_percent_decoding_is_lenient_and_utf8() -> None:
    params = parse_url("amqp://%zz:%C3%A9t%C3%A9@host/%E2%82%AC")
    assert params.username == "%zz"
    assert params.password == "été"
    assert params.virtual_host == "€"


def test_surrounding_white_space_is_ignored() -> None:
    assert parse_url("  amqp://host/vh \n").addresses == (Address("host", 5672),)


# --------------------------------------------------------------------------- schemes


def test_amqps_defaults_to_tls_and_port_5671() -> None:
    params = parse_url("amqps://host")
    assert params.addresses == (Address("host", AMQPS_PORT),)
    assert params.tls is True
    assert isinstance(params.ssl_context, ssl.SSLContext)
    assert params.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert params.ssl_context.check_hostname is True
    assert params.verify is True


def test_scheme_is_case_insensitive() -> None:
    assert parse_url("AMQP://host").addresses == (Address("host", 5672),)
    assert parse_url("AmQpS://host").tls is True


@pytest.mark.parametrize("scheme", ["http", "amqp1", "rabbitmq", "amqp+ssl"])
def test_unknown_scheme(scheme: str) -> None:
    invalid(f"{scheme}://host", repr(scheme), "unsupported scheme")


@pytest.mark.parametrize("url", ["", "host", "//host", "5672:host", "://host"])
def test_missing_scheme(url: str) -> None:
    invalid(url, "missing scheme")


@pytest.mark.parametrize("url", ["amqp:host", "amqp:/host", "amqps:"])
def test_missing_double_slash(url: str) -> None:
    invalid(url, "expected '//'")


def test_invalid_url_is_a_value_error_and_an_amqp_error() -> None:
    error = invalid("http://host")
    assert isinstance(error, ValueError)
    assert isinstance(error, AMQPError)


# --------------------------------------------------------------------------- virtual host


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://h", "/"),
        ("amqp://h/", "/"),
        ("amqp://h/%2F", "/"),
        ("amqp://h/vh", "vh"),
        ("amqp://h/a%2Fb", "a/b"),
        ("amqp://h/%2Fvh", "/vh"),
        ("amqp://h/a%20b+c", "a b+c"),
        ("amqp://h/v@x", "v@x"),
        ("amqp://h/vh?heartbeat=5", "vh"),
        ("amqp://h?heartbeat=5", "/"),
        ("amqp://h/?heartbeat=5", "/"),
    ],
)
def test_vhost(url: str, vhost: str) -> None:
    assert parse_url(url).virtual_host == vhost


@pytest.mark.parametrize("url", ["amqp://h/a/b", "amqp://h//", "amqp://h/vh/", "amqp://h//vh"])
def test_vhost_with_unescaped_slash(url: str) -> None:
    invalid(url, "unescaped '/'", "%2F")


# --------------------------------------------------------------------------- hosts and ports


def test_several_hosts() -> None:
    params = parse_url("amqp://u:p@h1:5672,h2:5673/vh")
    assert params.addresses == (Address("h1", 5672), Address("h2", 5673))
    assert (params.username, params.password, params.virtual_host) == ("u", "p", "vh")


def test_host_without_port_gets_scheme_default() -> None:
    assert parse_url("amqp://h1,h2:1234,h3").addresses == (
        Address("h1", 5672),
        Address("h2", 1234),
        Address("h3", 5672),
    )
    assert parse_url("amqps://h1,h2:1234").addresses == (Address("h1", 5671), Address("h2", 1234))


@pytest.mark.parametrize(
    ("url", "addresses"),
    [
        ("amqp://[::1]:5673", (Address("::1", 5673),)),
        ("amqp://[::1]", (Address("::1", 5672),)),
        ("amqp://[::1]:", (Address("::1", 5672),)),
        ("amqp://u:p@[fe80::1%25eth0]:1/vh", (Address("fe80::1%eth0", 1),)),
        (
            "amqp://[::1]:1,[2001:db8::2],h:3",
            (
                Address("::1", 1),
                Address("2001:db8::2", 5672),
                Address("h", 3),
            ),
        ),
        ("amqp://host:", (Address("host", 5672),)),
        ("amqp://host:05673", (Address("host", 5673),)),
        ("amqp://host:65535", (Address("host", 65535),)),
        ("amqp://ho%2Cst", (Address("ho,st", 5672),)),
        ("amqp://:1,:2", (Address("localhost", 1), Address("localhost", 2))),
    ],
)
def test_addresses(url: str, addresses: tuple[Address, ...]) -> None:
    assert parse_url(url).addresses == addresses


@pytest.mark.parametrize(
    "port", ["abc", "70000", "65536", "0", "-1", "+5", "1.5", "5672a", "\u0665"]
)
def test_bad_port(port: str) -> None:
    invalid(f"amqp://u:p@host:{port}/vh", "invalid port", repr(port))


def test_huge_port() -> None:
    invalid("amqp://host:" + "9" * 5000, "invalid port")


@pytest.mark.parametrize("url", ["amqp://h1,,h2", "amqp://h1,", "amqp://,h2", "amqp://,"])
def test_empty_host_in_list(url: str) -> None:
    invalid(url, "empty host")


def test_unbracketed_ipv6() -> None:
    invalid("amqp://::1", "brackets")
    invalid("amqp://fe80::1:5672", "brackets")


def test_bad_brackets() -> None:
    invalid("amqp://[::1", "unterminated '['")
    invalid("amqp://[::1]x", "after ']'")
    invalid("amqp://[]:5672", "empty IPv6")


@pytest.mark.parametrize(
    "url", ["amqp://ho st", "amqp://host/v h", "amqp://host\t", "amqp://h\x00"]
)
def test_white_space_and_control_characters(url: str) -> None:
    if url.strip() != url:
        assert parse_url(url).addresses == (Address("host", 5672),)
    else:
        invalid(url, "white space or a control character")


def test_fragment_is_refused() -> None:
    invalid("amqp://host/vh#frag", "'#'", "%23")


# --------------------------------------------------------------------------- query parameters


def test_example_a_from_the_query_parameter_page() -> None:
    params = parse_url("amqp://myhost?heartbeat=5&connection_timeout=10000")
    assert params.heartbeat == 5
    assert params.connection_timeout == 10.0


@pytest.mark.parametrize(
    ("query", "field", "value"),
    [
        ("heartbeat=5", "heartbeat", 5),
        ("heartbeat=0", "heartbeat", 0),
        ("heartbeat=65535", "heartbeat", 65535),
        ("frame_max=4096", "frame_max", 4096),
        ("frame_max=0", "frame_max", 0),
        ("frame_max=4294967295", "frame_max", 4294967295),
        ("channel_max=0", "channel_max", 0),
        ("channel_max=65535", "channel_max", 65535),
        ("connection_timeout=1500", "connection_timeout", 1.5),
        ("connection_timeout=1", "connection_timeout", 0.001),
        ("name=my+app", "connection_name", "my app"),
        ("name=a%26b%3Dc", "connection_name", "a&b=c"),
        ("name=", "connection_name", ""),
        ("auth_mechanism=plain", "auth_mechanisms", ("PLAIN",)),
        ("auth_mechanism=EXTERNAL", "auth_mechanisms", ("EXTERNAL",)),
        (
            "auth_mechanism=amqplain&auth_mechanism=plain&auth_mechanism=AMQPLAIN",
            "auth_mechanisms",
            ("AMQPLAIN", "PLAIN"),
        ),
        ("&&heartbeat=7&", "heartbeat", 7),
        ("", "heartbeat", 60),
    ],
)
def test_query_parameter(query: str, field: str, value: object) -> None:
    params = parse_url(f"amqp://u:p@host/vh?{query}")
    assert getattr(params, field) == value
    assert params.virtual_host == "vh"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("heartbeat", "abc"),
        ("heartbeat", "-1"),
        ("heartbeat", "65536"),
        ("heartbeat", "1.5"),
        ("heartbeat", ""),
        ("heartbeat", "9" * 5000),
        ("frame_max", "4095"),
        ("frame_max", "1"),
        ("frame_max", "4294967296"),
        ("frame_max", "big"),
        ("channel_max", "65536"),
        ("channel_max", "x"),
        ("connection_timeout", "0"),
        ("connection_timeout", "1.5"),
        ("connection_timeout", "soon"),
        ("auth_mechanism", "cram-md5"),
        ("auth_mechanism", ""),
    ],
)
def test_bad_query_value_names_parameter_and_value(name: str, value: str) -> None:
    invalid(f"amqp://u:p@host/vh?{name}={value}", repr(name), repr(value)[:100])


def test_frame_max_minimum_is_explained() -> None:
    invalid("amqp://host?frame_max=100", "4096", "0 (no limit)")


def test_unknown_query_parameter() -> None:
    invalid("amqp://host?heartbeats=5", "unknown query parameter 'heartbeats'", "heartbeat")
    invalid("amqp://host?ssl=1", "'ssl'")


def test_query_parameter_without_value() -> None:
    invalid("amqp://host?heartbeat", "'heartbeat'", "needs a value")


def test_query_parameter_given_twice() -> None:
    invalid("amqp://host?heartbeat=5&heartbeat=6", "'heartbeat'", "twice")
    invalid("amqp://host?name=a&name=b", "'name'", "twice")


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@dataclasses.dataclass
class Files:
    ca: Path
    cert: Path  # client certificate chain
    key: Path  # client key
    combined: Path  # client key and certificate chain in one file
    encrypted_key: Path
    garbage: Path


@pytest.fixture
def files(ca: trustme.CA, tmp_path: Path) -> Files:
    client = ca.issue_cert("client@example.com")
    result = Files(
        ca=tmp_path / "ca.pem",
        cert=tmp_path / "client.pem",
        key=tmp_path / "client.key",
        combined=tmp_path / "combined.pem",
        encrypted_key=tmp_path / "encrypted.key",
        garbage=tmp_path / "garbage.pem",
    )
    ca.cert_pem.write_to_path(str(result.ca))
    client.cert_chain_pems[0].write_to_path(str(result.cert))
    client.private_key_pem.write_to_path(str(result.key))
    client.private_key_and_cert_chain_pem.write_to_path(str(result.combined))
    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
    result.encrypted_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"key password"),
        )
    )
    result.garbage.write_text("this is not a certificate\n")
    return result


def server_context(ca: trustme.CA, hostname: str, *, require_client_cert: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(hostname).configure_cert(context)
    if require_client_cert:
        ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def handshake(
    client_context: ssl.SSLContext, server: ssl.SSLContext, server_hostname: str | None
) -> None:
    """Run a TLS handshake in memory; raise ssl.SSLError if either side refuses."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(client_in, client_out, server_hostname=server_hostname)
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, obj in (("client", client), ("server", server_side)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            server_in.write(client_out.read())
            client_in.write(server_out.read())
        if all(done.values()):
            # TLS 1.3 sends the server's verdict on the client certificate afterwards.
            client.write(b"x")
            server_in.write(client_out.read())
            assert server_side.read(1) == b"x"
            return
    raise AssertionError("handshake did not finish")


def comparable(params: ConnectionParameters) -> dict[str, object]:
    """The fields but the password and the TLS context (built anew by each parse)."""
    skip = ("password", "ssl_context")
    return {
        f.name: getattr(params, f.name) for f in dataclasses.fields(params) if f.name not in skip
    }


def path_url(path: Path) -> str:
    return quote(str(path), safe="/")


def test_cacertfile_trusts_the_ca(ca: trustme.CA, files: Files) -> None:
    params = parse_url(f"amqps://u:p@broker.test/vh?cacertfile={path_url(files.ca)}")
    context = params.ssl_context
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    handshake(context, server_context(ca, "broker.test", require_client_cert=False), "broker.test")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(
            context, server_context(ca, "other.test", require_client_cert=False), "broker.test"
        )


def test_default_context_does_not_trust_an_unknown_ca(ca: trustme.CA) -> None:
    context = parse_url("amqps://broker.test").ssl_context
    assert context is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(
            context, server_context(ca, "broker.test", require_client_cert=False), "broker.test"
        )


def test_cafile_alias(files: Files) -> None:
    params = parse_url(f"amqps://h?cafile={path_url(files.ca)}")
    assert params.ssl_context is not None
    assert params.ssl_context.cert_store_stats()["x509_ca"] >= 1


def test_cafile_and_cacertfile_together(files: Files) -> None:
    ca = path_url(files.ca)
    invalid(f"amqps://h?cacertfile={ca}&cafile={ca}", "'cafile'", "twice")


def test_client_certificate(ca: trustme.CA, files: Files) -> None:
    server = server_context(ca, "broker.test", require_client_cert=True)
    without = parse_url(f"amqps://broker.test?cacertfile={path_url(files.ca)}").ssl_context
    assert without is not None
    with pytest.raises(ssl.SSLError):
        handshake(without, server, "broker.test")
    for query in (
        f"certfile={path_url(files.cert)}&keyfile={path_url(files.key)}",
        f"certfile={path_url(files.combined)}",
    ):
        url = f"amqps://broker.test?cacertfile={path_url(files.ca)}&{query}"
        context = parse_url(url).ssl_context
        assert context is not None
        handshake(context, server, "broker.test")


def test_example_b_and_c_from_the_query_parameter_page(files: Files) -> None:
    base = (
        f"amqps://myhost?cacertfile={path_url(files.ca)}&certfile={path_url(files.cert)}"
        f"&keyfile={path_url(files.key)}&server_name_indication=myhost"
    )
    peer = parse_url(base + "&verify=verify_peer")
    assert peer.verify is True
    assert peer.server_hostname == "myhost"
    assert peer.ssl_context is not None
    assert peer.ssl_context.verify_mode == ssl.CERT_REQUIRED
    none = parse_url(base + "&verify=verify_none")
    assert none.verify is False
    assert none.ssl_context is not None
    assert none.ssl_context.verify_mode == ssl.CERT_NONE
    assert none.ssl_context.check_hostname is False


def test_verify_none_accepts_any_server(ca: trustme.CA) -> None:
    for url in (
        "amqps://h?verify=verify_none",
        "amqps://h?no_verify_ssl=1",
        "amqps://h?no_verify_ssl=true",
    ):
        params = parse_url(url)
        assert params.verify is False
        assert params.ssl_context is not None
        assert params.ssl_context.verify_mode == ssl.CERT_NONE
        assert params.ssl_context.check_hostname is False
        handshake(params.ssl_context, server_context(ca, "x.test", require_client_cert=False), "h")


def test_verify_peer_and_no_verify_ssl_zero() -> None:
    for url in ("amqps://h?verify=verify_peer", "amqps://h?no_verify_ssl=0"):
        params = parse_url(url)
        assert params.verify is True
        assert params.ssl_context is not None
        assert params.ssl_context.verify_mode == ssl.CERT_REQUIRED


def test_bad_verify_values() -> None:
    invalid("amqps://h?verify=yes", "'verify'", "'yes'", "verify_peer or verify_none")
    invalid("amqps://h?no_verify_ssl=maybe", "'no_verify_ssl'", "'maybe'")
    invalid("amqps://h?verify=verify_peer&no_verify_ssl=1", "disagree")
    invalid("amqps://h?verify=verify_none&no_verify_ssl=0", "disagree")
    assert parse_url("amqps://h?verify=verify_none&no_verify_ssl=1").verify is False


def test_server_name_indication(ca: trustme.CA) -> None:
    params = parse_url("amqps://10.0.0.1?server_name_indication=broker.test")
    assert params.server_hostname == "broker.test"
    assert params.ssl_context is not None
    assert params.ssl_context.check_hostname is True


def test_server_name_indication_disable(ca: trustme.CA, files: Files) -> None:
    params = parse_url(f"amqps://h?server_name_indication=disable&cacertfile={path_url(files.ca)}")
    assert params.server_hostname == ""
    context = params.ssl_context
    assert context is not None
    assert context.check_hostname is False
    assert context.verify_mode == ssl.CERT_REQUIRED  # the chain is still verified
    handshake(context, server_context(ca, "any.test", require_client_cert=False), None)
    default = parse_url("amqps://h?server_name_indication=disable").ssl_context
    assert default is not None
    assert default.check_hostname is False
    invalid("amqps://h?server_name_indication=", "'server_name_indication'", "needs a value")


@pytest.mark.parametrize(
    "query",
    [
        "cacertfile=/ca.pem",
        "cafile=/ca.pem",
        "certfile=/c.pem",
        "keyfile=/k.pem",
        "verify=verify_peer",
        "verify=verify_none",
        "no_verify_ssl=1",
        "server_name_indication=h",
    ],
)
def test_tls_options_need_amqps(query: str) -> None:
    invalid(f"amqp://u:p@h/vh?{query}", "TLS options need amqps://", repr(query.split("=")[0]))


def test_keyfile_without_certfile(files: Files) -> None:
    invalid(f"amqps://h?keyfile={path_url(files.key)}", "'keyfile'", "needs a certfile")


def test_missing_files_are_named(files: Files, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    invalid(f"amqps://u:{SECRET}@h?cacertfile={missing}", repr(missing), "CA certificates")
    invalid(f"amqps://u:{SECRET}@h?certfile={missing}", repr(missing), "client certificate")
    invalid(
        f"amqps://u:{SECRET}@h?certfile={files.cert}&keyfile={missing}",
        repr(str(files.cert)),
        repr(missing),
    )


def test_unreadable_files(files: Files) -> None:
    invalid(f"amqps://h?cacertfile={files.garbage}", repr(str(files.garbage)))
    invalid(f"amqps://h?certfile={files.garbage}", repr(str(files.garbage)))
    invalid(f"amqps://h?certfile={files.cert}&keyfile={files.garbage}", repr(str(files.garbage)))
    invalid(f"amqps://h?certfile={files.cert}", repr(str(files.cert)))  # no key in it


def test_encrypted_key_is_refused_without_prompting(files: Files) -> None:
    invalid(f"amqps://h?certfile={files.cert}&keyfile={files.encrypted_key}", "encrypted")


def test_ssl_context_argument_is_used() -> None:
    context = ssl.create_default_context()
    params = parse_url("amqps://h?server_name_indication=broker.test", ssl_context=context)
    assert params.ssl_context is context
    assert params.server_hostname == "broker.test"
    assert params.verify is True


def test_ssl_context_argument_sets_verify() -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    params = parse_url("amqps://h?server_name_indication=disable", ssl_context=context)
    assert params.verify is False
    assert params.server_hostname == ""


@pytest.mark.parametrize(
    "query",
    [
        "cacertfile=/ca.pem",
        "cafile=/ca.pem",
        "certfile=/c.pem",
        "verify=verify_none",
        "no_verify_ssl=1",
    ],
)
def test_ssl_context_argument_and_tls_options_are_ambiguous(query: str) -> None:
    context = ssl.create_default_context()
    invalid(f"amqps://h?{query}", "ambiguous", repr(query.split("=")[0]), ssl_context=context)


def test_ssl_context_argument_and_sni_disabled_need_no_hostname_check() -> None:
    context = ssl.create_default_context()
    invalid("amqps://h?server_name_indication=disable", "check_hostname", ssl_context=context)


def test_ssl_context_argument_needs_amqps() -> None:
    context = ssl.create_default_context()
    invalid("amqp://h", "amqps://", ssl_context=context)
    params = parse_url("amqp://h", ssl_context=context, tls=True)
    assert params.tls is True
    assert params.ssl_context is context


# --------------------------------------------------------------------------- overrides


def test_overrides_apply_after_the_url() -> None:
    params = parse_url(
        "amqp://u:p@h/vh?heartbeat=30",
        heartbeat=5,
        password="other",
        connection_name="app",
        addresses=(Address("x", 1),),
    )
    assert params.heartbeat == 5
    assert params.password == "other"
    assert params.connection_name == "app"
    assert params.addresses == (Address("x", 1),)
    assert params.username == "u"
    assert parse_url("amqp://h", heartbeat=None).heartbeat is None


def test_url_must_be_a_str() -> None:
    with pytest.raises(TypeError, match="bytes"):
        parse_url(b"amqp://h")  # type: ignore[arg-type]


def test_unknown_override_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="'heartbeats'"):
        parse_url("amqp://h", heartbeats=5)


def test_bad_override_values() -> None:
    with pytest.raises(InvalidURL, match="heartbeat"):
        parse_url("amqp://h", heartbeat=-1)
    with pytest.raises(InvalidURL, match="frame_max"):
        parse_url("amqp://h", frame_max=10)
    with pytest.raises(InvalidURL, match="auth_mechanisms"):
        parse_url("amqp://h", auth_mechanisms=("GSSAPI",))
    with pytest.raises(TypeError, match="heartbeat"):
        parse_url("amqp://h", heartbeat="5")
    with pytest.raises(TypeError, match="tls"):
        parse_url("amqp://h", tls=1)


def test_tls_overrides() -> None:
    off = parse_url("amqps://h", tls=False)
    assert off.tls is False
    assert off.ssl_context is None
    on = parse_url("amqp://h", tls=True)
    assert on.tls is True
    assert on.ssl_context is not None
    assert on.addresses == (Address("h", 5672),)  # the port came from the URL


def test_verify_override_builds_a_matching_context(files: Files) -> None:
    params = parse_url(f"amqps://h?cacertfile={path_url(files.ca)}", verify=False)
    assert params.ssl_context is not None
    assert params.ssl_context.verify_mode == ssl.CERT_NONE
    params = parse_url("amqps://h", verify=False)
    assert params.ssl_context is not None
    assert params.ssl_context.verify_mode == ssl.CERT_NONE
    params = parse_url(f"amqps://h?cacertfile={path_url(files.ca)}", server_hostname="")
    assert params.ssl_context is not None
    assert params.ssl_context.check_hostname is False


# ------------------------------------------------------------------ the password stays secret


MALFORMED_WITH_SECRET = [
    f"amqp://user:{SECRET}@host:abc/vh",
    f"amqp://user:{SECRET}@host:70000/vh",
    f"http://user:{SECRET}@host/vh",
    f"amqp:user:{SECRET}@host/vh",
    f"amqp:/user:{SECRET}@host/vh",
    f"amqp//user:{SECRET}@host/vh",
    f"user:{SECRET}@host/vh",
    f"amqp://user:{SECRET}@h1,,h2/vh",
    f"amqp://user:{SECRET}@host/a/b",
    f"amqp://user:{SECRET}@host/vh?bogus=1",
    f"amqp://user:{SECRET}@host/vh?heartbeat=x",
    f"amqp://user:{SECRET}@host/vh?cacertfile=/x",
    f"amqps://user:{SECRET}@host/vh?cacertfile=/nonexistent",
    f"amqp://user:{SECRET}@[::1/vh",
    f"amqp://user:{SECRET}@::1/vh",
    f"amqp://user:{SECRET}@host/vh#frag",
    f"amqp://user:{SECRET} @host/vh",
    f"amqp://user:{SECRET}@host/vh?name",
    # the password itself is malformed: raw '/', '?', '#', '@', ',', ':' in it
    "amqp://user:s3cr/3t-pw@host/vh",
    "amqp://user:s3cr3t/-pw@host/vh",
    "amqp://user:s3cr?3t-pw@host/vh",
    "amqp://user:s3cr3t?heartbeat=-pw@host/vh",
    "amqp://user:s3cr#3t-pw@host/vh",
    "amqp://user:s3cr@3t-pw@host:x/vh",
    "amqp://user:s3cr3t,-pw@host:x/vh",
    "amqp://user:s3cr3t:-pw@host:x/vh",
    "amqps://user:s3cr3t?certfile=-pw@host/vh",
    "user:s3cr3t-pw@x://y@z",
    "amqp:/user:s3cr3t-pw@host/vh?heartbeat=x",
]


@pytest.mark.parametrize("url", MALFORMED_WITH_SECRET)
def test_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(InvalidURL) as info:
        parse_url(url)
    error = info.value
    for text in (str(error), repr(error), repr(error.args)):
        assert "s3cr" not in text
        assert "3t-pw" not in text
    assert REDACTED in str(error)
    assert error.__cause__ is None
    assert error.__context__ is None


_url_text = st.text(st.sampled_from("azAZ09:@/%?#[]&=+,.-_ \té"), max_size=12)


@given(
    prefix=st.one_of(
        st.sampled_from(["amqp://", "amqps://", "amqp:", "amqp:/", "http://", "", "//", "x:"]),
        _url_text,
    ),
    user=_url_text,
    middle=_url_text,
    suffix=_url_text,
)
def test_errors_never_show_the_password_fuzzed(
    prefix: str, user: str, middle: str, suffix: str
) -> None:
    url = f"{prefix}{user}:s3cr{middle}3t-pw@{suffix}"
    error: InvalidURL | None = None
    try:
        parse_url(url)
    except InvalidURL as exc:
        error = exc
    if error is not None:
        assert "s3cr" not in str(error)
        assert "3t-pw" not in str(error)
        assert error.__context__ is None


@given(
    url=st.one_of(
        _url_text,
        st.builds(
            "".join,
            st.tuples(st.sampled_from(["amqp://", "amqps://", "AMQP://"]), _url_text, _url_text),
        ),
    )
)
def test_any_text_parses_or_raises_invalid_url(url: str) -> None:
    try:
        params = parse_url(url)
    except InvalidURL:
        return
    assert params.addresses


def test_masked_parts_come_with_a_hint() -> None:
    invalid("amqp://user:s3cr/3t-pw@host/vh", "percent-encoded")


def test_password_not_in_repr_or_str() -> None:
    params = parse_url(f"amqps://user:{SECRET}@host/vh")
    assert SECRET not in repr(params)
    assert SECRET not in str(params)
    assert SECRET not in params.redacted_url()
    assert params.password == SECRET


# --------------------------------------------------------------------------- redacted_url


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("amqp://", "amqp://guest:******@localhost:5672/"),
        ("amqp://u:p@h/%2F", "amqp://u:******@h:5672/"),
        ("amqps://u%40x:p@h1,h2:1/v%2Fh", "amqps://u%40x:******@h1:5671,h2:1/v%2Fh"),
        ("amqp://[::1]:1/vh", "amqp://guest:******@[::1]:1/vh"),
        (
            "amqp://h?heartbeat=0&frame_max=0&channel_max=5&connection_timeout=2500"
            "&auth_mechanism=external&auth_mechanism=plain&name=a+b",
            "amqp://guest:******@h:5672/?heartbeat=0&frame_max=0&channel_max=5"
            "&connection_timeout=2500&auth_mechanism=external&auth_mechanism=plain&name=a%20b",
        ),
        (
            "amqps://h?verify=verify_none&server_name_indication=disable",
            "amqps://guest:******@h:5671/?verify=verify_none&server_name_indication=disable",
        ),
        (
            "amqps://h?server_name_indication=b.test",
            "amqps://guest:******@h:5671/?server_name_indication=b.test",
        ),
    ],
)
def test_redacted_url(url: str, redacted: str) -> None:
    params = parse_url(url)
    assert params.redacted_url() == redacted
    again = parse_url(redacted)
    assert again.password == REDACTED
    assert comparable(again) == comparable(params)


def test_redacted_url_of_empty_password() -> None:
    assert parse_url("amqp://:@h").redacted_url() == "amqp://:******@h:5672/"


# --------------------------------------------------------------------------- ConnectionParameters


def test_parameters_validation() -> None:
    address = (Address("h", 1),)
    with pytest.raises(ValueError, match="addresses"):
        ConnectionParameters(addresses=())
    with pytest.raises(TypeError, match="addresses"):
        ConnectionParameters(addresses=(("h", 1),))  # type: ignore[arg-type]
    assert ConnectionParameters(addresses=[Address("h", 1)]).addresses == address  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channel_max"):
        ConnectionParameters(addresses=address, channel_max=70000)
    with pytest.raises(ValueError, match="connection_timeout"):
        ConnectionParameters(addresses=address, connection_timeout=0)
    with pytest.raises(ValueError, match="connection_timeout"):
        ConnectionParameters(addresses=address, connection_timeout=float("nan"))
    assert ConnectionParameters(addresses=address, connection_timeout=3).connection_timeout == 3.0
    with pytest.raises(ValueError, match="tls"):
        ConnectionParameters(addresses=address, ssl_context=ssl.create_default_context())
    with pytest.raises(TypeError, match="password"):
        ConnectionParameters(addresses=address, password=None)  # type: ignore[arg-type]


def test_parameters_with_tls_build_a_default_context() -> None:
    params = ConnectionParameters(addresses=(Address("h", 5671),), tls=True)
    assert params.ssl_context is not None
    assert params.ssl_context.verify_mode == ssl.CERT_REQUIRED
    insecure = ConnectionParameters(addresses=(Address("h", 5671),), tls=True, verify=False)
    assert insecure.ssl_context is not None
    assert insecure.ssl_context.verify_mode == ssl.CERT_NONE


def test_parameters_are_frozen() -> None:
    params = parse_url("amqp://")
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.heartbeat = 3  # type: ignore[misc]


# --------------------------------------------------------------------------- property


_text = st.text(
    st.one_of(st.sampled_from(":@/%?#[]&=+,; ~"), st.characters(codec="utf-8")), max_size=20
)


@given(
    username=_text,
    password=_text,
    host=_text.filter(bool),
    vhost=_text.filter(bool),
    port=st.integers(1, 65535),
)
def test_quoted_components_round_trip(
    username: str, password: str, host: str, vhost: str, port: int
) -> None:
    def q(text: str) -> str:
        return quote(text, safe="")

    url = f"amqp://{q(username)}:{q(password)}@{q(host)}:{port}/{q(vhost)}"
    params = parse_url(url)
    assert params.username == username
    assert params.password == password
    assert params.addresses == (Address(host, port),)
    assert params.virtual_host == vhost
    again = parse_url(params.redacted_url())
    assert again.password == REDACTED
    assert comparable(again) == comparable(params)

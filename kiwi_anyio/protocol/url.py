"""AMQP connection URLs: parse ``amqp://`` and ``amqps://`` URLs into :class:`ConnectionParameters`.

The syntax follows RabbitMQ's URI specification (https://www.rabbitmq.com/docs/uri-spec) and its
query parameters (https://www.rabbitmq.com/docs/uri-query-parameters)::

    amqp[s]://[user[:password]@]host[:port][,host[:port]...][/vhost][?name=value&...]

* ``amqp`` connects in plain TCP (default port 5672), ``amqps`` with TLS (default port 5671).
* The user, password, hosts and virtual host are percent-decoded; query names and values are
  form-decoded (``+`` is a space).
* Absent parts take defaults: ``guest``/``guest``, ``localhost``, the scheme's port, vhost ``/``.
  ``amqp://`` alone is valid.
* Several comma-separated hosts give several :class:`Address` es, tried in turn. IPv6 literals go
  in brackets: ``amqp://[::1]:5672``.
* The virtual host is the path without its leading ``/``. No path, or ``/`` alone, means the
  default vhost ``/`` (as pika and aiormq read it; the strict spec would read ``amqp://host/`` as
  the empty vhost, which thus cannot be written). ``/%2F`` is also ``/``. A second unescaped ``/``
  is an error.
* Query parameters: ``heartbeat`` (seconds, ``0`` disables), ``frame_max`` (``0`` or at least
  4096), ``channel_max`` (0 to 65535), ``connection_timeout`` (milliseconds), ``auth_mechanism``
  (repeatable: ``plain``, ``amqplain``, ``external``), ``name`` (the connection name),
  ``max_message_size`` (bytes, at least 1; default 128 MiB, as RabbitMQ's). TLS only
  (``amqps``): ``cacertfile`` (alias ``cafile``), ``certfile``, ``keyfile``, ``verify``
  (``verify_peer`` or ``verify_none``; alias ``no_verify_ssl=1``) and ``server_name_indication``
  (a host name, or ``disable``). Anything else is an error, not silently ignored.

Every :class:`~kiwi_anyio.exceptions.InvalidURL` message names the problem and shows the URL with
its password replaced by ``******``. The masking is deliberately generous for malformed URLs
(everything between the first ``:`` after ``//`` and the last ``@`` is hidden), so that a password
holding a raw ``/``, ``?`` or ``#`` does not leak either; InvalidURL is always raised with no
chained cause or context.
"""

from __future__ import annotations

import dataclasses
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn
from urllib.parse import quote, unquote, unquote_plus

from kiwi_anyio.exceptions import InvalidURL

from ._connection import MAX_MESSAGE_SIZE
from ._methods import check_shortstr

__all__ = [
    "AMQPS_PORT",
    "AMQP_PORT",
    "AUTH_MECHANISMS",
    "REDACTED",
    "Address",
    "ConnectionParameters",
    "parse_url",
]

AMQP_PORT: Final = 5672
"""The default port of ``amqp://`` URLs."""

AMQPS_PORT: Final = 5671
"""The default port of ``amqps://`` URLs."""

AUTH_MECHANISMS: Final = ("PLAIN", "AMQPLAIN", "EXTERNAL")
"""The SASL mechanisms kiwi_anyio can use."""

REDACTED: Final = "******"
"""What a password is replaced with in URLs shown to people."""

_PORTS: Final = {"amqp": AMQP_PORT, "amqps": AMQPS_PORT}
_DEFAULT_HOST: Final = "localhost"
_MAX_SHORT: Final = 0xFFFF
_MAX_LONG: Final = 0xFFFF_FFFF
_MIN_FRAME_MAX: Final = 4096
_MAX_LONGLONG: Final = 2**63 - 1
_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_DIGITS_RE: Final = re.compile(r"[0-9]+")
_CONTROL_RE: Final = re.compile(r"[\x00-\x20\x7f]")

_TLS_FILE_PARAMS: Final = ("cacertfile", "certfile", "keyfile")
_TLS_VERIFY_PARAMS: Final = ("verify", "no_verify_ssl")
_TLS_PARAMS: Final = (*_TLS_FILE_PARAMS, *_TLS_VERIFY_PARAMS, "server_name_indication")
_ALIASES: Final = {"cafile": "cacertfile"}
_KNOWN_PARAMS: Final = (
    "heartbeat",
    "frame_max",
    "channel_max",
    "connection_timeout",
    "auth_mechanism",
    "name",
    "max_message_size",
    "cacertfile",
    "cafile",
    "certfile",
    "keyfile",
    "verify",
    "no_verify_ssl",
    "server_name_indication",
)
_TRUE: Final = ("1", "true")
_FALSE: Final = ("0", "false")


@dataclass(frozen=True, slots=True)
class Address:
    """One broker address.

    Attributes:
        host: a host name or IP address (IPv6 without brackets).
        port: the TCP port.
    """

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ConnectionParameters:
    """Everything needed to open an AMQP connection; usually made by :func:`parse_url`.

    The values are checked on construction (:class:`ValueError` or :class:`TypeError`).

    Attributes:
        addresses: the broker addresses, tried in turn (a list is turned into a tuple).
        username: the user name.
        password: the password; it never appears in ``repr()``, ``str()`` or error messages.
        virtual_host: the virtual host.
        tls: whether to speak TLS.
        ssl_context: the TLS context; with ``tls`` and no context, a default one is built
            (honouring ``verify`` and ``server_hostname``). Must be ``None`` without ``tls``.
        server_hostname: the name sent as SNI and checked against the server's certificate;
            ``None`` means the address's host, ``""`` means send no SNI and check no host name
            (``server_name_indication=disable``; the context must have ``check_hostname`` off).
        verify: ``False`` only when the user explicitly disabled certificate verification.
        heartbeat: the heartbeat interval in seconds we propose; ``0`` disables heartbeats,
            ``None`` accepts the server's proposal.
        frame_max: the largest frame size we accept (``0`` = no limit, else at least 4096).
        channel_max: the largest channel number we accept (``0`` = no limit).
        connection_timeout: seconds to wait for each connection attempt.
        auth_mechanisms: the SASL mechanisms allowed, in order of preference; ``()`` chooses
            from what the server offers.
        connection_name: the name shown in the broker's management UI, if any.
        max_message_size: the largest message body in bytes we send or accept (default
            128 MiB, RabbitMQ's default limit). A larger publish raises before anything is
            sent; a larger delivery is rejected without requeue and never buffered.
    """

    addresses: tuple[Address, ...]
    username: str = "guest"
    password: str = field(default="guest", repr=False)
    virtual_host: str = "/"
    tls: bool = False
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    verify: bool = True
    heartbeat: int | None = 60
    frame_max: int = 131072
    channel_max: int = 2047
    connection_timeout: float = 10.0
    auth_mechanisms: tuple[str, ...] = ()
    connection_name: str | None = None
    max_message_size: int = MAX_MESSAGE_SIZE

    def __post_init__(self) -> None:
        addresses: Any = self.addresses
        if isinstance(addresses, list):
            addresses = tuple(addresses)
            object.__setattr__(self, "addresses", addresses)
        if not isinstance(addresses, tuple) or not all(isinstance(a, Address) for a in addresses):
            raise TypeError("addresses must be a tuple of Address")
        if not addresses:
            raise ValueError("addresses must not be empty")
        for name in ("username", "password", "virtual_host"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str")
        check_shortstr("Connection.Open", "virtual_host", self.virtual_host)
        for name in ("server_hostname", "connection_name"):
            if not isinstance(getattr(self, name), str | None):
                raise TypeError(f"{name} must be a str or None")
        for name in ("tls", "verify"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool")
        if self.heartbeat is not None:
            _check_int("heartbeat", self.heartbeat, 0, _MAX_SHORT)
        _check_int("frame_max", self.frame_max, 0, _MAX_LONG)
        if 0 < self.frame_max < _MIN_FRAME_MAX:
            raise ValueError(
                f"frame_max must be 0 or at least {_MIN_FRAME_MAX}, got {self.frame_max}"
            )
        _check_int("channel_max", self.channel_max, 0, _MAX_SHORT)
        _check_int("max_message_size", self.max_message_size, 1, _MAX_LONGLONG)
        timeout: Any = self.connection_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise TypeError("connection_timeout must be a number of seconds")
        if not timeout > 0:
            raise ValueError(f"connection_timeout must be positive, got {timeout!r}")
        object.__setattr__(self, "connection_timeout", float(timeout))
        mechanisms: Any = self.auth_mechanisms
        if isinstance(mechanisms, list):
            mechanisms = tuple(mechanisms)
            object.__setattr__(self, "auth_mechanisms", mechanisms)
        if not isinstance(mechanisms, tuple) or not all(isinstance(m, str) for m in mechanisms):
            raise TypeError("auth_mechanisms must be a tuple of str")
        unknown = [m for m in mechanisms if m not in AUTH_MECHANISMS]
        if unknown:
            raise ValueError(
                f"unsupported auth_mechanisms {unknown!r}; supported: {', '.join(AUTH_MECHANISMS)}"
            )
        if self.ssl_context is not None:
            if not isinstance(self.ssl_context, ssl.SSLContext):
                raise TypeError("ssl_context must be an ssl.SSLContext or None")
            if not self.tls:
                raise ValueError("an ssl_context needs tls=True")
            if self.server_hostname == "" and self.ssl_context.check_hostname:
                raise ValueError(
                    "server_hostname='' (no SNI) needs an ssl_context with check_hostname=False"
                )
        elif self.tls:
            context = _make_context(None, None, None, self.verify, self.server_hostname != "")
            object.__setattr__(self, "ssl_context", context)

    def redacted_url(self) -> str:
        """Return these parameters as a URL whose password is replaced by ``******``.

        Parsing the result gives back the same parameters (but for the password, the TLS
        files, a ``heartbeat`` of ``None`` and fractions of milliseconds).

        Returns:
            The URL, e.g. ``amqp://guest:******@localhost:5672/``.
        """
        scheme = "amqps" if self.tls else "amqp"
        hosts = ",".join(f"{_format_host(a.host)}:{a.port}" for a in self.addresses)
        vhost = "" if self.virtual_host == "/" else quote(self.virtual_host, safe="")
        query: list[tuple[str, str]] = []
        if self.heartbeat is not None and self.heartbeat != 60:
            query.append(("heartbeat", str(self.heartbeat)))
        if self.frame_max != 131072:
            query.append(("frame_max", str(self.frame_max)))
        if self.channel_max != 2047:
            query.append(("channel_max", str(self.channel_max)))
        if self.connection_timeout != 10.0:
            milliseconds = max(1, round(self.connection_timeout * 1000))
            query.append(("connection_timeout", str(milliseconds)))
        query.extend(("auth_mechanism", m.lower()) for m in self.auth_mechanisms)
        if self.connection_name is not None:
            query.append(("name", self.connection_name))
        if self.max_message_size != MAX_MESSAGE_SIZE:
            query.append(("max_message_size", str(self.max_message_size)))
        if self.tls:
            if not self.verify:
                query.append(("verify", "verify_none"))
            if self.server_hostname is not None:
                query.append(("server_name_indication", self.server_hostname or "disable"))
        url = f"{scheme}://{quote(self.username, safe='')}:{REDACTED}@{hosts}/{vhost}"
        if query:
            url += "?" + "&".join(f"{name}={quote(value, safe='')}" for name, value in query)
        return url


def parse_url(
    url: str, *, ssl_context: ssl.SSLContext | None = None, **overrides: Any
) -> ConnectionParameters:
    """Parse an ``amqp://`` or ``amqps://`` URL.

    Args:
        url: the URL (surrounding white space is ignored).
        ssl_context: the TLS context to use with an ``amqps://`` URL, instead of one built from
            the URL's TLS parameters (which must then be absent).
        **overrides: :class:`ConnectionParameters` fields to set, applied after the URL
            (e.g. ``heartbeat=5``).

    Returns:
        The connection parameters.

    Raises:
        InvalidURL: the URL is malformed, names an unknown scheme or query parameter, has an
            out-of-range value, or a TLS file cannot be loaded. The message shows the URL with
            its password masked.
        TypeError: ``url`` is not a str, or an override is not a :class:`ConnectionParameters`
            field or has a wrong type.
    """
    if not isinstance(url, str):
        raise TypeError(f"the URL must be a str, not {type(url).__name__}")
    field_names = {f.name for f in dataclasses.fields(ConnectionParameters)}
    for name in overrides:
        if name not in field_names:
            raise TypeError(f"parse_url() got an unexpected keyword argument {name!r}")
    return _Parser(url).parse(ssl_context, overrides)


# --------------------------------------------------------------------------- helpers


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int")
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low} to {high}, got {value}")


def _is_int_within(text: str, low: int, high: int) -> bool:
    # Length first: int() refuses (ValueError) strings of more than 4300 digits.
    return (
        len(text) <= len(str(high)) + 8  # leading zeros are fine
        and _DIGITS_RE.fullmatch(text) is not None
        and low <= int(text) <= high
    )


def _format_host(host: str) -> str:
    if ":" in host:
        return f"[{quote(host, safe=':')}]"
    return quote(host, safe="")


class _EncryptedKeyError(Exception):
    pass


def _no_key_password() -> str:
    raise _EncryptedKeyError


def _make_context(
    cafile: str | None,
    certfile: str | None,
    keyfile: str | None,
    verify: bool,
    check_hostname: bool,
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    if certfile is not None:
        # The callback makes an encrypted key an error instead of a prompt on the terminal.
        password: Callable[[], str] = _no_key_password
        context.load_cert_chain(certfile, keyfile, password=password)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif not check_hostname:
        context.check_hostname = False
    return context


def _secret_span(url: str) -> tuple[int, int]:
    """Where a password may be in ``url``, generously: from the first ':' after ``scheme://``
    (or after the start when there is no such scheme) to the last '@'. ``(0, 0)`` when there
    can be none."""
    at = url.rfind("@")
    if at < 0:
        return 0, 0
    separator = url.find("://")
    has_scheme = 0 < separator < at and _SCHEME_RE.fullmatch(url[:separator]) is not None
    start = separator + 3 if has_scheme else 0
    colon = url.find(":", start, at)
    if colon < 0:
        return 0, 0
    return colon + 1, at


@dataclass(slots=True)
class _Param:
    value: str
    name_span: tuple[int, int]
    value_span: tuple[int, int]


class _Parser:
    """Parses one URL; keeps the positions of its parts so that error messages can show the
    parts that are not (possibly) the password."""

    def __init__(self, url: str) -> None:
        self.url = url.strip()
        self.secret = _secret_span(self.url)
        start, end = self.secret
        self.redacted = self.url[:start] + REDACTED + self.url[end:] if end > start else self.url
        self.masked = False  # whether a message shows a masked part
        self.tls_files: tuple[str | None, str | None, str | None] = (None, None, None)

    def fail(self, problem: str) -> NoReturn:
        if self.masked:
            problem += (
                " (a '/', '?', '#' or '@' in the password must be percent-encoded, e.g. '/' as %2F)"
            )
        raise InvalidURL(f"invalid AMQP URL {self.redacted!r}: {problem}")

    def show(self, span: tuple[int, int]) -> str:
        start, end = span
        secret_start, secret_end = self.secret
        if secret_end > secret_start and start < secret_end and end > secret_start:
            self.masked = True
            return repr(REDACTED)
        return repr(self.url[start:end])

    # ------------------------------------------------------------------ structure

    def parse(
        self, ssl_context: ssl.SSLContext | None, overrides: dict[str, Any]
    ) -> ConnectionParameters:
        url = self.url
        control = _CONTROL_RE.search(url)
        if control is not None:
            self.fail(
                f"white space or a control character at position {control.start()}; "
                "percent-encode it"
            )
        colon = url.find(":")
        if colon < 0 or not _SCHEME_RE.fullmatch(url[:colon]):
            self.fail("missing scheme; expected amqp:// or amqps://")
        scheme = url[:colon].lower()
        if scheme not in _PORTS:
            hint = (
                " (memory:// is the in-process broker: kiwi_anyio.connect() takes it, and "
                "kiwi_anyio.memory.connect() gives its channel-level API)"
                if scheme == "memory"
                else ""
            )
            self.fail(
                f"unsupported scheme {self.show((0, colon))}; expected 'amqp' or 'amqps'{hint}"
            )
        if not url.startswith("//", colon + 1):
            self.fail(f"expected '//' after '{scheme}:'")
        if "#" in url:
            self.fail("unexpected '#'; percent-encode it as %23")
        tls = scheme == "amqps"
        default_port = _PORTS[scheme]

        start = colon + 3
        query_at = url.find("?", start)
        query_at = len(url) if query_at < 0 else query_at
        path_at = url.find("/", start, query_at)
        authority_end = query_at if path_at < 0 else path_at

        kwargs: dict[str, Any] = {"tls": tls}
        at = url.rfind("@", start, authority_end)
        if at >= 0:
            separator = url.find(":", start, at)
            if separator >= 0:
                kwargs["username"] = unquote(url[start:separator])
                kwargs["password"] = unquote(url[separator + 1 : at])
            else:
                kwargs["username"] = unquote(url[start:at])
            hosts_start = at + 1
        else:
            hosts_start = start
        kwargs["addresses"] = self.parse_hosts(hosts_start, authority_end, default_port)

        if path_at >= 0:
            path = url[path_at + 1 : query_at]
            if "/" in path:
                self.fail(
                    f"the virtual host {self.show((path_at + 1, query_at))} contains an "
                    "unescaped '/'; write it as %2F"
                )
            kwargs["virtual_host"] = unquote(path) if path else "/"

        params, mechanisms = self.parse_query(query_at + 1)
        kwargs.update(self.query_settings(params, mechanisms))
        kwargs.update(self.tls_settings(tls, params, ssl_context, overrides))

        kwargs.update(overrides)
        if kwargs["tls"] and ssl_context is None and self.tls_files != (None, None, None):
            # Built after the overrides, which may change verify and server_hostname. Without
            # files, ConnectionParameters builds the default context itself.
            result = self.try_context(
                *self.tls_files, kwargs.get("verify", True), kwargs.get("server_hostname") != ""
            )
            if isinstance(result, str):  # pragma: no cover - each file was loaded above
                self.fail(f"cannot build the TLS context: {result}")
            kwargs["ssl_context"] = result
        try:
            return ConnectionParameters(**kwargs)
        except ValueError as exc:
            problem = str(exc)  # about an override: the URL's values were checked already
        self.fail(problem)

    def parse_hosts(self, start: int, end: int, default_port: int) -> tuple[Address, ...]:
        if start == end:
            return (Address(_DEFAULT_HOST, default_port),)
        addresses = []
        piece_start = start
        while True:
            comma = self.url.find(",", piece_start, end)
            piece_end = end if comma < 0 else comma
            addresses.append(self.parse_host(piece_start, piece_end, default_port))
            if comma < 0:
                return tuple(addresses)
            piece_start = comma + 1

    def parse_host(self, start: int, end: int, default_port: int) -> Address:
        url = self.url
        if start == end:
            self.fail("empty host in the host list")
        if url[start] == "[":
            close = url.find("]", start, end)
            if close < 0:
                self.fail(f"unterminated '[' in host {self.show((start, end))}")
            host = unquote(url[start + 1 : close])
            if not host:
                self.fail("empty IPv6 address '[]'")
            rest = close + 1
            if rest < end and url[rest] != ":":
                self.fail(f"unexpected text after ']' in host {self.show((start, end))}")
            port_start = rest + 1 if rest < end else end
        else:
            colon = url.find(":", start, end)
            if colon >= 0 and url.find(":", colon + 1, end) >= 0:
                self.fail(
                    f"host {self.show((start, end))} has several ':'; "
                    "write IPv6 addresses in brackets, like [::1]:5672"
                )
            host_end = end if colon < 0 else colon
            host = unquote(url[start:host_end]) or _DEFAULT_HOST
            port_start = end if colon < 0 else colon + 1
        port_text = url[port_start:end]
        if not port_text:
            return Address(host, default_port)
        if not _is_int_within(port_text, 1, _MAX_SHORT):
            self.fail(
                f"invalid port {self.show((port_start, end))}; "
                f"expected a number from 1 to {_MAX_SHORT}"
            )
        return Address(host, int(port_text))

    # ------------------------------------------------------------------ query

    def parse_query(self, start: int) -> tuple[dict[str, _Param], list[_Param]]:
        url = self.url
        params: dict[str, _Param] = {}
        mechanisms: list[_Param] = []
        end = len(url)
        while start < end:
            ampersand = url.find("&", start)
            pair_end = end if ampersand < 0 else ampersand
            if pair_end > start:
                equals = url.find("=", start, pair_end)
                if equals < 0:
                    self.fail(f"query parameter {self.show((start, pair_end))} needs a value")
                name_span = (start, equals)
                name = unquote_plus(url[start:equals])
                param = _Param(
                    unquote_plus(url[equals + 1 : pair_end]), name_span, (equals + 1, pair_end)
                )
                if name == "auth_mechanism":
                    mechanisms.append(param)
                elif name not in _KNOWN_PARAMS:
                    self.fail(
                        f"unknown query parameter {self.show(name_span)}; "
                        f"known: {', '.join(_KNOWN_PARAMS)}"
                    )
                else:
                    name = _ALIASES.get(name, name)
                    if name in params:
                        self.fail(f"query parameter {self.show(name_span)} is given twice")
                    params[name] = param
            start = pair_end + 1
        return params, mechanisms

    def bad_value(self, param: _Param, expected: str) -> NoReturn:
        self.fail(
            f"query parameter {self.show(param.name_span)} must be {expected}, "
            f"got {self.show(param.value_span)}"
        )

    def int_param(self, param: _Param, low: int, high: int, expected: str = "") -> int:
        if not _is_int_within(param.value, low, high):
            self.bad_value(param, expected or f"an integer from {low} to {high}")
        return int(param.value)

    def query_settings(self, params: dict[str, _Param], mechanisms: list[_Param]) -> dict[str, Any]:
        settings: dict[str, Any] = {}
        if "heartbeat" in params:
            settings["heartbeat"] = self.int_param(params["heartbeat"], 0, _MAX_SHORT)
        if "frame_max" in params:
            param = params["frame_max"]
            expected = f"0 (no limit) or an integer from {_MIN_FRAME_MAX} to {_MAX_LONG}"
            frame_max = self.int_param(param, 0, _MAX_LONG, expected)
            if 0 < frame_max < _MIN_FRAME_MAX:
                self.bad_value(param, expected)
            settings["frame_max"] = frame_max
        if "channel_max" in params:
            settings["channel_max"] = self.int_param(params["channel_max"], 0, _MAX_SHORT)
        if "connection_timeout" in params:
            milliseconds = self.int_param(
                params["connection_timeout"],
                1,
                _MAX_LONG,
                "a positive integer (milliseconds)",
            )
            settings["connection_timeout"] = milliseconds / 1000
        if mechanisms:
            chosen: list[str] = []
            for param in mechanisms:
                mechanism = param.value.upper()
                if mechanism not in AUTH_MECHANISMS:
                    self.bad_value(param, f"one of {', '.join(m.lower() for m in AUTH_MECHANISMS)}")
                if mechanism not in chosen:
                    chosen.append(mechanism)
            settings["auth_mechanisms"] = tuple(chosen)
        if "name" in params:
            settings["connection_name"] = params["name"].value
        if "max_message_size" in params:
            settings["max_message_size"] = self.int_param(
                params["max_message_size"], 1, _MAX_LONGLONG, "a positive integer (bytes)"
            )
        return settings

    def tls_settings(
        self,
        tls: bool,
        params: dict[str, _Param],
        ssl_context: ssl.SSLContext | None,
        overrides: dict[str, Any],
    ) -> dict[str, Any]:
        given = [name for name in _TLS_PARAMS if name in params]
        if not tls:
            if given:
                self.fail(
                    f"query parameter {self.show(params[given[0]].name_span)} is a TLS option; "
                    "TLS options need amqps://"
                )
            if ssl_context is None:
                return {}
            if not overrides.get("tls", False):
                self.fail("an ssl_context was given but the URL is amqp://; use amqps://")
            return {"ssl_context": ssl_context}

        settings: dict[str, Any] = {}
        sni = params.get("server_name_indication")
        if sni is not None:
            if not sni.value:
                self.fail(f"query parameter {self.show(sni.name_span)} needs a value")
            settings["server_hostname"] = "" if sni.value == "disable" else sni.value

        if ssl_context is not None:
            clashing = [name for name in (*_TLS_FILE_PARAMS, *_TLS_VERIFY_PARAMS) if name in params]
            if clashing:
                shown = ", ".join(self.show(params[name].name_span) for name in clashing)
                self.fail(
                    f"TLS options ({shown}) in the URL and an ssl_context argument are "
                    "ambiguous; configure the ssl_context instead"
                )
            if settings.get("server_hostname") == "" and ssl_context.check_hostname:
                self.fail(
                    "server_name_indication=disable needs an ssl_context with check_hostname=False"
                )
            settings["ssl_context"] = ssl_context
            settings["verify"] = ssl_context.verify_mode != ssl.CERT_NONE
            return settings

        verify = self.verify_setting(params)
        settings["verify"] = verify
        certfile = params.get("certfile")
        keyfile = params.get("keyfile")
        if keyfile is not None and certfile is None:
            self.fail(f"query parameter {self.show(keyfile.name_span)} needs a certfile")
        cafile = params.get("cacertfile")
        if cafile is not None:
            result = self.try_context(cafile.value, None, None)
            if isinstance(result, str):
                self.fail(
                    f"cannot load the CA certificates {self.show(cafile.value_span)}: {result}"
                )
        if certfile is not None:
            result = self.try_context(
                None, certfile.value, None if keyfile is None else keyfile.value
            )
            if isinstance(result, str):
                files = self.show(certfile.value_span)
                if keyfile is not None:
                    files += f" (key {self.show(keyfile.value_span)})"
                self.fail(f"cannot load the client certificate {files}: {result}")
        self.tls_files = (
            None if cafile is None else cafile.value,
            None if certfile is None else certfile.value,
            None if keyfile is None else keyfile.value,
        )
        return settings

    def verify_setting(self, params: dict[str, _Param]) -> bool:
        verify: bool | None = None
        param = params.get("verify")
        if param is not None:
            if param.value not in ("verify_peer", "verify_none"):
                self.bad_value(param, "verify_peer or verify_none")
            verify = param.value == "verify_peer"
        param = params.get("no_verify_ssl")
        if param is not None:
            value = param.value.lower()
            if value not in (*_TRUE, *_FALSE):
                self.bad_value(param, "0 or 1")
            no_verify = value in _TRUE
            if verify is not None and verify == no_verify:
                self.fail("query parameters verify and no_verify_ssl disagree")
            verify = not no_verify
        return True if verify is None else verify

    def try_context(
        self,
        cafile: str | None,
        certfile: str | None,
        keyfile: str | None,
        verify: bool = True,
        check_hostname: bool = True,
    ) -> ssl.SSLContext | str:
        """Build a TLS context; return it, or why it could not be built.

        Never raises from within an ``except`` block, so that no exception (which might hold
        parts of the URL) is chained to the InvalidURL.
        """
        try:
            return _make_context(cafile, certfile, keyfile, verify, check_hostname)
        except _EncryptedKeyError:
            return "the private key is encrypted; load it into an ssl_context and pass that"
        except OSError as exc:  # includes ssl.SSLError
            return str(exc.strerror or type(exc).__name__)

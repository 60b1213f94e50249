"""Where a test broker is, passed between processes in ``KIWI_ANYIO_TEST_*`` variables.

This module owns the names of those variables (:data:`ENV_PREFIX`, :data:`ENV4_PREFIX` for
the second broker of ``--also-rabbitmq4``) and :class:`BrokerInfo`, which writes and reads
them: the command line exports a broker's :class:`BrokerInfo` to its command, and a test
suite's fixtures read it back.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

#: Names of the environment variables given to the command run by :func:`main`.
ENV_URL = "KIWI_ANYIO_TEST_URL"
ENV_TLS_URL = "KIWI_ANYIO_TEST_TLS_URL"
ENV_CA = "KIWI_ANYIO_TEST_CA"
ENV_CLIENT_CERT = "KIWI_ANYIO_TEST_CLIENT_CERT"
ENV_CLIENT_KEY = "KIWI_ANYIO_TEST_CLIENT_KEY"
ENV_BROKER_HOME = "KIWI_ANYIO_TEST_BROKER_HOME"
ENV_BROKER_ROOT = "KIWI_ANYIO_TEST_BROKER_ROOT"
ENV_BROKER_VERSION = "KIWI_ANYIO_TEST_BROKER_VERSION"
#: The prefix of the variables above (``KIWI_ANYIO_TEST_URL`` is ``ENV_PREFIX + "URL"``).
ENV_PREFIX = "KIWI_ANYIO_TEST_"
#: The prefix of the variables describing the second broker of ``--also-rabbitmq4``
#: (``KIWI_ANYIO_TEST4_URL``, ``KIWI_ANYIO_TEST4_BROKER_HOME``, ...).
ENV4_PREFIX = "KIWI_ANYIO_TEST4_"
# BrokerInfo field -> variable name without the prefix
_ENV_FIELDS = {
    "url": "URL",
    "tls_url": "TLS_URL",
    "ca": "CA",
    "client_cert": "CLIENT_CERT",
    "client_key": "CLIENT_KEY",
    "home": "BROKER_HOME",
    "root": "BROKER_ROOT",
    "version": "BROKER_VERSION",
}

#: Where :func:`ensure_rabbitmq4_root` keeps its tree unless told otherwise (outside any


@dataclasses.dataclass(frozen=True)
class BrokerInfo:
    """Where a test broker is and how to reach it (what :func:`main` exports to its command)."""

    #: ``amqp://guest:guest@127.0.0.1:PORT/``
    url: str
    #: ``amqps://guest:guest@localhost:TLS_PORT/``, or None without TLS.
    tls_url: str | None = None
    #: Path of the CA certificate (PEM) that signed the server's and the client's certificate.
    ca: str | None = None
    #: Path of the client certificate (PEM, CN ``kiwi-client``) for EXTERNAL authentication.
    client_cert: str | None = None
    #: Path of the client certificate's private key (PEM).
    client_key: str | None = None
    #: The broker's temporary directory (for :meth:`RabbitMQBroker.attach`), if known.
    home: str | None = None
    #: The Debian tree the broker runs from (``root=``), None for the system's broker.
    root: str | None = None
    #: The RabbitMQ version, such as ``3.10.8`` or ``4.0.5``, if known.
    version: str | None = None

    def to_env(self, prefix: str = ENV_PREFIX) -> dict[str, str]:
        """The ``KIWI_ANYIO_TEST_*`` environment variables describing this broker.

        ``prefix`` replaces ``KIWI_ANYIO_TEST_`` (:data:`ENV4_PREFIX` for a second broker).
        """
        pairs = {prefix + name: getattr(self, field) for field, name in _ENV_FIELDS.items()}
        return {key: value for key, value in pairs.items() if value}

    @classmethod
    def env_names(cls, prefix: str = ENV_PREFIX) -> list[str]:
        """Every variable name :meth:`to_env` may set with ``prefix``."""
        return [prefix + name for name in _ENV_FIELDS.values()]

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, prefix: str = ENV_PREFIX
    ) -> BrokerInfo | None:
        """Read the ``KIWI_ANYIO_TEST_*`` variables; None when ``KIWI_ANYIO_TEST_URL`` is unset.

        ``prefix`` replaces ``KIWI_ANYIO_TEST_`` (:data:`ENV4_PREFIX` for a second broker).
        """
        env = os.environ if environ is None else environ
        url = env.get(prefix + "URL")
        if not url:
            return None

        def get(field: str) -> str | None:
            return env.get(prefix + _ENV_FIELDS[field]) or None

        return cls(
            url=url,
            tls_url=get("tls_url"),
            ca=get("ca"),
            client_cert=get("client_cert"),
            client_key=get("client_key"),
            home=get("home"),
            root=get("root"),
            version=get("version"),
        )

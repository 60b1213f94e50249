"""Passwords never appear in logs, reprs, exception messages, tracebacks or CLI output.

Each test captures every log record (every logger at DEBUG), the ``str``, ``repr`` and
formatted traceback (with its chained causes) of every exception raised, and the ``str`` and
``repr`` of the objects involved, during a failed login, a bad URL, a lost connection and the
command line; then asserts that no password appears anywhere, in plain or percent-encoded form.

The passwords carry a random core (``uuid4().hex``), so any partial leak is caught too.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus

import anyio
import pytest

import kiwi_anyio
from kiwi_anyio.exceptions import (
    AuthenticationError,
    ConnectionClosed,
    ConnectionFailed,
    InvalidURL,
    KiwiError,
)
from kiwi_anyio.protocol import connect, parse_url
from kiwi_anyio.testing.pytest_plugin import private_names
from kiwi_anyio.testing.rabbitmq import BrokerInfo, RabbitMQBroker
from tests.proxy import run_proxy

pytestmark = [pytest.mark.anyio, pytest.mark.broker]

TIMEOUT = 30


def make_password() -> tuple[str, str]:
    """A password full of URL delimiters, and its random core (what a leak would show)."""
    core = uuid.uuid4().hex
    return f"Pw{core}/?#@:%+& é", core


@dataclass
class Secret:
    """A broker user with a password nobody may see."""

    user: str
    password: str
    core: str
    host: str
    port: int

    def url(self, password: str | None = None, *, port: int | None = None, query: str = "") -> str:
        url = (
            f"amqp://{quote(self.user, safe='')}:{quote(password or self.password, safe='')}"
            f"@{self.host}:{port or self.port}/"
        )
        return url + (f"?{query}" if query else "")


@pytest.fixture(scope="module")
def secret(broker: RabbitMQBroker, rabbitmq: BrokerInfo) -> Iterator[Secret]:
    password, core = make_password()
    user = f"kiwi-secret-{uuid.uuid4().hex[:8]}"
    broker.ctl("add_user", user, password)
    try:
        broker.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        address = parse_url(rabbitmq.url).addresses[0]
        yield Secret(user, password, core, address.host, address.port)
    finally:
        broker.ctl("delete_user", user)


@dataclass
class Evidence:
    """Everything a password could leak into."""

    texts: list[str] = field(default_factory=list)

    def exception(self, exc: BaseException) -> None:
        self.texts += [str(exc), repr(exc), repr(exc.args)]
        self.texts.append("".join(traceback.format_exception(exc)))  # with causes and context
        for attr in ("reply_text", "remote_traceback"):
            if hasattr(exc, attr):
                self.texts.append(repr(getattr(exc, attr)))

    def objects(self, *objects: Any) -> None:
        for obj in objects:
            self.texts += [str(obj), repr(obj)]

    def logs(self, caplog: pytest.LogCaptureFixture) -> None:
        self.texts.append(caplog.text)
        for record in caplog.records:
            self.texts += [record.getMessage(), repr(record.args), repr(record.msg)]
            if record.exc_info and record.exc_info[1] is not None:
                self.exception(record.exc_info[1])

    def assert_clean(self, *secrets: str) -> None:
        assert self.texts, "nothing was captured"
        for secret in secrets:
            forms = {secret, quote(secret, safe=""), quote_plus(secret), secret.encode().hex()}
            for text in self.texts:
                for form in forms:
                    assert form not in text, f"{form!r} leaked into:\n{text}"


@pytest.fixture
def evidence(caplog: pytest.LogCaptureFixture) -> Iterator[Evidence]:
    """Every logger at DEBUG into caplog; the logs are added to the evidence at the end."""
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
    found = Evidence()
    yield found
    found.logs(caplog)


async def raised(awaitable_factory: Any, expected: type[BaseException]) -> BaseException:
    with pytest.raises(expected) as info:
        await awaitable_factory()
    return info.value


# --------------------------------------------------------------------------- failed login


@pytest.mark.parametrize("mechanism", ["plain", "amqplain"])
async def test_a_refused_login(
    secret: Secret, evidence: Evidence, caplog: pytest.LogCaptureFixture, mechanism: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        wrong, core = make_password()
        url = secret.url(wrong, query=f"auth_mechanism={mechanism}")

        async def client() -> None:
            async with connect(url):
                pytest.fail("logged in with a wrong password")

        error = await raised(client, AuthenticationError)
        assert secret.user in str(error)
        evidence.exception(error)
        evidence.objects(parse_url(url))

        async def communicator() -> None:
            async with kiwi_anyio.connect(url, **private_names("secret")):
                pytest.fail("logged in with a wrong password")

        comm_error = await raised(communicator, AuthenticationError)
        evidence.exception(comm_error)
        evidence.objects(kiwi_anyio.connect(url))
        evidence.logs(caplog)
        evidence.assert_clean(wrong, core)


async def test_a_working_connection_and_communicator(
    secret: Secret, evidence: Evidence, caplog: pytest.LogCaptureFixture
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect(secret.url()) as conn, conn.channel() as ch:
            evidence.objects(conn, ch, conn.params, conn.params.redacted_url(), conn.address)
        async with kiwi_anyio.connect(secret.url(), **private_names("secret")) as comm:
            evidence.objects(comm, comm.url, comm.server_properties)
            await comm.add_rpc_subscriber(lambda _c, m: m, "echo")
            assert await (await comm.rpc_send("echo", "hi")).wait(10) == "hi"
        evidence.objects(comm)
        evidence.logs(caplog)
        debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
        assert any(r.name.startswith("kiwi_anyio") for r in debug), "DEBUG logs not captured"
        evidence.assert_clean(secret.password, secret.core)


def test_the_evidence_catches_a_leak() -> None:
    password, core = make_password()
    for text in (password, quote(password, safe=""), f"x{core}y", repr(password.encode())):
        with pytest.raises(AssertionError, match="leaked"):
            Evidence([text]).assert_clean(password, core)
    Evidence(["nothing to see"]).assert_clean(password, core)


# --------------------------------------------------------------------------- bad URLs


def _bad_urls(password: str) -> list[str]:
    encoded = quote(password, safe="")
    return [
        f"amqp://user:{password}@localhost/",  # raw delimiters in the password
        f"amqp://user:{encoded}@localhost:notaport/",
        f"amqp://user:{encoded}@localhost/?heartbeat=soon",
        f"amqp://user:{encoded}@localhost/?no_such_option=1",
        f"amqp://user:{encoded}@localhost/a/b",
        f"amqp://user:{encoded}@[::1/",
        f"amqp://user:{encoded}@localhost/?cacertfile=/x",
        f"amqps://user:{encoded}@localhost/?cacertfile=/nonexistent/ca.pem",
        f"http://user:{encoded}@localhost/",
        f"amqp://user:{encoded}@host one/",
        f"amqp//user:{encoded}@localhost/",
        f"user:{encoded}@localhost",
    ]


async def test_bad_urls(evidence: Evidence, caplog: pytest.LogCaptureFixture) -> None:
    password, core = make_password()
    for url in _bad_urls(password):
        for parse in (parse_url, kiwi_anyio.connect, kiwi_anyio.Communicator):
            with pytest.raises(InvalidURL) as info:
                parse(url)
            evidence.exception(info.value)
            assert info.value.__cause__ is None and info.value.__context__ is None

        async def client(url: str = url) -> None:
            async with connect(url):
                pytest.fail("connected with a malformed URL")

        evidence.exception(await raised(client, InvalidURL))
    evidence.logs(caplog)
    evidence.assert_clean(password, core)


# --------------------------------------------------------------------------- lost connections


async def test_a_lost_connection(
    secret: Secret, evidence: Evidence, caplog: pytest.LogCaptureFixture, broker: RabbitMQBroker
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with run_proxy(secret.host, secret.port) as proxy:
            url = secret.url(port=proxy.port)

            async def client() -> None:
                async with connect(url) as conn, conn.channel() as ch:
                    await ch.queue_declare("", exclusive=True)
                    await proxy.cut()
                    await anyio.sleep_forever()

            error = await raised(client, ConnectionClosed)
            evidence.exception(error)

            # a communicator that tries to recover, cannot, and gives up on a send
            async with kiwi_anyio.connect(
                url, reconnect_timeout=1.0, **private_names("secret")
            ) as comm:
                proxy.refusing = True
                await proxy.cut()
                with pytest.raises(KiwiError) as info:
                    await comm.broadcast_send("lost")
                evidence.exception(info.value)
                evidence.objects(comm)
                proxy.refusing = False
            evidence.objects(comm)

            # the broker closes it
            async def forced() -> None:
                async with connect(secret.url(query="name=kiwi-secret-forced")) as conn:
                    await anyio.sleep(0.2)
                    await anyio.to_thread.run_sync(_close_named, broker, "kiwi-secret-forced")
                    await conn.wait_closed()

            forced_error = await raised(forced, ConnectionClosed)
            evidence.exception(forced_error)
        evidence.logs(caplog)
        evidence.assert_clean(secret.password, secret.core)


def _close_named(broker: RabbitMQBroker, name: str) -> None:
    for line in broker.ctl("list_connections", "pid", "client_properties").splitlines():
        if name in line:
            broker.ctl("close_connection", line.split("\t")[0], "closed by the secrets test")


async def test_an_unreachable_broker(evidence: Evidence, caplog: pytest.LogCaptureFixture) -> None:
    with anyio.fail_after(TIMEOUT):
        password, core = make_password()
        url = f"amqp://user:{quote(password, safe='')}@127.0.0.1:1,127.0.0.1:2/"

        async def client() -> None:
            async with connect(url):
                pytest.fail("connected to nothing")

        evidence.exception(await raised(client, ConnectionFailed))
        evidence.logs(caplog)
        evidence.assert_clean(password, core)


# --------------------------------------------------------------------------- the command line


def cli(url: str, *args: str, debug: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m kiwi_anyio --url URL ARGS`` (with every logger at DEBUG if ``debug``)."""
    if debug:
        code = (
            "import logging, sys; logging.basicConfig(level=logging.DEBUG); "
            "from kiwi_anyio.__main__ import main; sys.exit(main(sys.argv[1:]))"
        )
        command = [sys.executable, "-c", code, "--url", url, *args]
    else:
        command = [sys.executable, "-m", "kiwi_anyio", "--url", url, *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug-logging"])
def test_the_command_line(secret: Secret, debug: bool) -> None:
    wrong, core = make_password()
    found = Evidence()
    result = cli(secret.url(wrong), "ping", debug=debug)
    assert result.returncode == 3, result  # cannot connect (a refused login)
    assert "kiwi-anyio: error:" in result.stderr and secret.user in result.stderr
    found.texts += [result.stdout, result.stderr]
    for url in _bad_urls(wrong)[:4]:
        result = cli(url, "ping", debug=debug)
        assert result.returncode == 2, result
        assert "invalid AMQP URL" in result.stderr
        found.texts += [result.stdout, result.stderr]
    # through the environment variable, too
    result = subprocess.run(
        [sys.executable, "-m", "kiwi_anyio", "ping"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, KIWI_ANYIO_URL=secret.url(wrong)),
    )
    assert result.returncode == 3
    found.texts += [result.stdout, result.stderr]
    found.assert_clean(wrong, core)
    # a working ping shows the URL, with the password hidden
    ok = cli(secret.url(), "ping", debug=debug)
    assert ok.returncode == 0, ok.stderr
    assert f"{secret.user}:******@" in ok.stdout
    clean = Evidence([ok.stdout, ok.stderr])
    clean.assert_clean(secret.password, secret.core)

"""The bad-input catalogue: every user-facing mistake, its exact exception and message.

Each case asserts the exception type, that the message names the problem, and (where a
communicator is involved) that the communicator still serves its other subscribers afterwards.
Cases run on asyncio and trio, against the private RabbitMQ broker and, where the memory://
broker models the same thing, against it too.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import anyio
import pytest

import kiwi_anyio
from kiwi_anyio import _wire as wire
from kiwi_anyio.codecs import YAML, codec_from_functions
from kiwi_anyio.exceptions import (
    AuthenticationError,
    CommunicatorClosed,
    ConnectionFailed,
    DeliveryFailed,
    DuplicateSubscriberIdentifier,
    InvalidURL,
    ProtocolError,
    RemoteException,
    UnroutableError,
    VhostNotFound,
)
from kiwi_anyio.protocol import Properties, parse_url
from kiwi_anyio.protocol import connect as amqp_connect
from kiwi_anyio.testing.pytest_plugin import private_names
from kiwi_anyio.testing.rabbitmq import RabbitMQBroker

pytestmark = [pytest.mark.anyio, pytest.mark.broker]

TIMEOUT = 30
MiB = 1024 * 1024


def unique(prefix: str) -> str:
    return f"kiwi-bad-{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["rabbitmq", "memory"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://bad-input-{uuid.uuid4().hex}"
    return str(request.getfixturevalue("broker_url"))


@asynccontextmanager
async def raw_connection(url: str) -> AsyncIterator[Any]:
    """A plain AMQP connection (or the memory broker's equivalent)."""
    if url.startswith("memory://"):
        from kiwi_anyio import memory

        async with memory.connect(url) as conn:
            yield conn
    else:
        async with amqp_connect(url) as conn:
            yield conn


# --------------------------------------------------------------------------- a serving communicator


@dataclass
class Service:
    """A communicator with an RPC, a task and a broadcast subscriber that must keep working."""

    comm: kiwi_anyio.Communicator
    rpc: str = field(default_factory=lambda: unique("echo"))
    queue: str = field(default_factory=lambda: unique("tasks"))
    heard: list[Any] = field(default_factory=list)
    _heard_changed: anyio.Event = field(default_factory=anyio.Event)

    async def start(self) -> None:
        await self.comm.add_rpc_subscriber(lambda _c, msg: ["echo", msg], self.rpc)
        await self.comm.task_queue(self.queue).add_task_subscriber(lambda _c, task: task * 2)

        async def listen(_c: Any, body: Any, *_: Any) -> None:
            self.heard.append(body)
            self._heard_changed.set()

        await self.comm.add_broadcast_subscriber(listen)

    async def check(self) -> None:
        """Every kind of subscriber still answers."""
        with anyio.fail_after(10):
            marker = uuid.uuid4().hex
            assert await (await self.comm.rpc_send(self.rpc, marker)).wait(10) == ["echo", marker]
            future = await self.comm.task_queue(self.queue).task_send(21)
            assert future is not None and await future.wait(10) == 42
            await self.comm.broadcast_send(marker)
            while marker not in self.heard:
                self._heard_changed = anyio.Event()
                await self._heard_changed.wait()


@asynccontextmanager
async def serving(url: str, queue: str | None = None, **options: Any) -> AsyncIterator[Service]:
    async with kiwi_anyio.connect(url, **{**private_names("bad"), **options}) as comm:
        service = Service(comm) if queue is None else Service(comm, queue=queue)
        await service.start()
        await service.check()
        yield service
        await service.check()  # and still at the end


# --------------------------------------------------------------------------- bad URLs

BAD_URLS = [
    ("amqp://guest:guest@localhost:notaport/", "invalid port 'notaport'"),
    ("amqp://guest:guest@localhost:70000/", "invalid port '70000'"),
    ("http://guest:guest@localhost/", "unsupported scheme 'http'"),
    ("localhost:5672", "unsupported scheme 'localhost'"),
    ("amqp:/localhost", "expected '//' after 'amqp:'"),
    ("amqp://guest:guest@localhost/a/b", "contains an unescaped '/'"),
    ("amqp://guest:guest@localhost/?heartbeat=soon", "'heartbeat' must be an integer"),
    ("amqp://guest:guest@localhost/?frame_max=100", "'frame_max' must be 0 (no limit) or"),
    ("amqp://guest:guest@localhost/?no_such_option=1", "unknown query parameter 'no_such_option'"),
    ("amqp://guest:guest@localhost/?heartbeat=1&heartbeat=2", "'heartbeat' is given twice"),
    ("amqp://guest:guest@localhost/?auth_mechanism=kerberos", "one of plain, amqplain, external"),
    ("amqp://guest:guest@localhost/?cacertfile=/x", "is a TLS option; TLS options need amqps://"),
    ("amqps://localhost/?cacertfile=/nonexistent.pem", "cannot load the CA certificates"),
    ("amqps://localhost/?verify=maybe", "'verify' must be verify_peer or verify_none"),
    ("amqp://guest:guest@localhost/?max_message_size=0", "'max_message_size' must be a positive"),
    ("amqp://guest:guest@[::1/", "unterminated '['"),
    ("amqp://guest:guest@::1/", "write IPv6 addresses in brackets"),
    ("amqp://guest:guest@local host/", "white space or a control character"),
    ("amqp://guest:guest@localhost/#frag", "unexpected '#'"),
    ("amqp://guest:guest@a,,b/", "empty host in the host list"),
]


@pytest.mark.parametrize(("bad", "says"), BAD_URLS, ids=[u for u, _ in BAD_URLS])
async def test_bad_urls(bad: str, says: str) -> None:
    with anyio.fail_after(TIMEOUT):
        for make in (parse_url, kiwi_anyio.connect, kiwi_anyio.Communicator):
            with pytest.raises(InvalidURL) as info:
                make(bad)
            assert says in str(info.value), info.value
            assert isinstance(info.value, ValueError)

        async def client() -> None:
            async with amqp_connect(bad):
                pytest.fail("connected with a bad URL")

        with pytest.raises(InvalidURL, match=re.escape(says)):
            await client()


@pytest.mark.parametrize(
    ("options", "error", "says"),
    [
        ({"heartbeat": "often"}, TypeError, "heartbeat must be an int"),
        ({"frame_max": 12}, InvalidURL, "frame_max must be 0 or at least 4096"),
        ({"max_message_size": 0}, InvalidURL, "max_message_size must be from 1 to"),
        ({"no_such": 1}, TypeError, "unexpected keyword argument 'no_such'"),
        ({"connection_timeout": -1}, InvalidURL, "connection_timeout must be positive"),
    ],
)
async def test_bad_connection_options(
    broker_url: str, options: dict[str, Any], error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=re.escape(says)):
        kiwi_anyio.connect(broker_url, **options)


async def test_memory_urls_take_no_connection_options() -> None:
    with pytest.raises(TypeError, match="memory:// takes no connection options"):
        kiwi_anyio.connect("memory://x", heartbeat=5)


# --------------------------------------------------------------------------- connecting


def _refused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _communicator_fails(url: str, error: type[BaseException], **options: Any) -> Any:
    async def run() -> None:
        async with kiwi_anyio.connect(url, **{**private_names("bad"), **options}):
            pytest.fail(f"connected to {url}")

    with pytest.raises(error) as info:
        await run()
    return info.value


async def _client_fails(url: str, error: type[BaseException]) -> Any:
    async def run() -> None:
        async with amqp_connect(url):
            pytest.fail(f"connected to {url}")

    with pytest.raises(error) as info:
        await run()
    return info.value


async def test_an_unreachable_broker() -> None:
    with anyio.fail_after(TIMEOUT):
        port = _refused_port()
        url = f"amqp://guest:guest@127.0.0.1:{port}/?connection_timeout=2000"
        for error in (
            await _client_fails(url, ConnectionFailed),
            await _communicator_fails(url, ConnectionFailed),
        ):
            assert f"127.0.0.1:{port}" in str(error) and "cannot connect" in str(error)
        url = "amqp://guest:guest@no-such-host.invalid/?connection_timeout=2000"
        error = await _communicator_fails(url, ConnectionFailed)
        assert "no-such-host.invalid" in str(error)


async def test_a_refused_login(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        url = broker_url.replace("guest:guest@", "guest:wrong@")
        start = anyio.current_time()
        for error in (
            await _client_fails(url, AuthenticationError),
            await _communicator_fails(url, AuthenticationError),  # no reconnect loop
        ):
            assert "refused the login of user 'guest'" in str(error)
            assert "403" in str(error) and "wrong" not in str(error)
        assert anyio.current_time() - start < 10


async def test_an_unknown_vhost(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        vhost = unique("vhost")
        url = broker_url.rstrip("/") + "/" + quote(vhost, safe="")
        for error in (
            await _client_fails(url, VhostNotFound),
            await _communicator_fails(url, VhostNotFound),
        ):
            assert f"refused virtual host {vhost!r}" in str(error)
            assert "530" in str(error)


# --------------------------------------------------------------------------- permissions


@pytest.fixture
def limited_user(broker: RabbitMQBroker, broker_url: str) -> Any:
    """A user allowed only names starting with ``allowed-`` (and broadcast queues)."""
    user, password = unique("user"), uuid.uuid4().hex
    broker.ctl("add_user", user, password)
    pattern = "^(allowed-.*|broadcast-.*)$"
    broker.ctl("set_permissions", "-p", "/", user, pattern, pattern, pattern)
    address = parse_url(broker_url).addresses[0]
    yield f"amqp://{user}:{password}@{address.host}:{address.port}/"
    broker.ctl("delete_user", user)


async def test_a_forbidden_exchange(limited_user: str) -> None:
    with anyio.fail_after(TIMEOUT):
        suffix = uuid.uuid4().hex[:8]
        forbidden = f"forbidden-tasks-{suffix}"
        async with kiwi_anyio.connect(
            limited_user,
            message_exchange=f"allowed-messages-{suffix}",
            task_exchange=forbidden,
            testing_mode=True,
        ) as comm:
            await comm.add_rpc_subscriber(lambda _c, m: m * 2, "double")
            with pytest.raises(DeliveryFailed) as info:
                await comm.task_queue(f"allowed-q-{suffix}").task_send(1)
            message = str(info.value)
            assert f"cannot declare exchange {forbidden!r}" in message
            assert "403" in message and "ACCESS_REFUSED" in message
            # the communicator goes on
            assert await (await comm.rpc_send("double", 21)).wait(10) == 42
            with pytest.raises(DeliveryFailed, match="403"):  # and keeps saying why
                await comm.task_queue(f"allowed-q-{suffix}").add_task_subscriber(lambda *_: 1)
            assert await (await comm.rpc_send("double", 4)).wait(10) == 8


async def test_a_forbidden_queue(limited_user: str) -> None:
    with anyio.fail_after(TIMEOUT):
        suffix = uuid.uuid4().hex[:8]
        async with kiwi_anyio.connect(
            limited_user,
            message_exchange=f"allowed-messages-{suffix}",
            task_exchange=f"allowed-tasks-{suffix}",
            testing_mode=True,
        ) as comm:
            await comm.add_rpc_subscriber(lambda _c, m: m * 2, "double")
            queue = f"forbidden-queue-{suffix}"
            with pytest.raises(DeliveryFailed) as info:
                await comm.task_queue(queue).task_send(1)
            assert f"cannot declare task queue {queue!r}" in str(info.value)
            assert "403" in str(info.value)
            assert await (await comm.rpc_send("double", 21)).wait(10) == 42


# --------------------------------------------------------------------------- kiwiPy issue #60


async def test_a_task_queue_declared_with_other_arguments(url: str) -> None:
    """kiwiPy #60: an existing durable task queue with another x-message-ttl."""
    with anyio.fail_after(TIMEOUT):
        queue = unique("legacy-tasks")
        other_ttl = wire.TASK_MESSAGE_TTL // 2
        async with raw_connection(url) as conn, conn.channel() as ch:
            await ch.queue_declare(queue, durable=True, arguments={"x-message-ttl": other_ttl})
        service_queue = unique("tasks")
        try:
            # not testing_mode: task queues are durable, as kiwiPy's
            async with serving(url, service_queue, testing_mode=False) as service:
                with pytest.raises(DeliveryFailed) as info:
                    await service.comm.task_queue(queue).task_send("task")
                message = str(info.value)
                assert f"cannot declare task queue {queue!r}" in message
                assert "406" in message and "inequivalent arg 'x-message-ttl'" in message
                with pytest.raises(DeliveryFailed, match="x-message-ttl"):
                    await service.comm.task_queue(queue).add_task_subscriber(lambda *_: None)
        finally:
            async with raw_connection(url) as conn, conn.channel() as ch:
                await ch.queue_delete(queue)
            async with raw_connection(url) as conn, conn.channel() as ch:
                await ch.queue_delete(service_queue)


# --------------------------------------------------------------------------- bodies


def _sender_codec(body: bytes, content_type: str) -> Any:
    """A codec that sends ``body`` whatever the value, and reads replies as YAML."""
    return codec_from_functions(lambda _obj: body, YAML.decode, content_type)


UNDECODABLE = [
    (b"{unclosed: [", "application/yaml", "YAML"),
    (b"!!python/object/apply:os.system ['echo pwned']", "application/yaml", "YAML"),
    (b"!!python/object/apply:os.system ['echo pwned']", "application/x-python-yaml", "YAML"),
    (b"\xff\xfe\x00garbage", "application/json", "JSON"),
    (b"anything", "application/x-unheard-of", "unknown content type"),
]


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    UNDECODABLE,
    ids=["bad-yaml", "python-tag", "python-yaml-type", "bad-json", "unknown-type"],
)
async def test_undecodable_bodies(url: str, body: bytes, content_type: str, says: str) -> None:
    with anyio.fail_after(TIMEOUT):
        names = private_names("bad")
        async with (
            serving(url, **names) as service,
            kiwi_anyio.connect(url, codec=_sender_codec(body, content_type), **names) as sender,
        ):
            # an RPC: the caller gets a RemoteException naming the decoding problem
            future = await sender.rpc_send(service.rpc, "x")
            with pytest.raises(RemoteException) as info:
                await future.wait(10)
            assert says in str(info.value) and info.value.remote_type == "UndecodableMessage"
            # a task: the same, and it is not redelivered
            task_future = await sender.task_queue(service.queue).task_send("x")
            assert task_future is not None
            with pytest.raises(RemoteException, match=re.escape(says)):
                await task_future.wait(10)
            # a broadcast: dropped, the subscribers never see it
            await sender.broadcast_send("x")
            await service.check()
            assert all(isinstance(b, str) for b in service.heard)
        async with raw_connection(url) as conn, conn.channel() as ch:
            reply = await ch.queue_declare(service.queue, passive=True)
            assert reply.message_count == 0  # rejected, not requeued


# --------------------------------------------------------------------------- subscribers raising


async def test_subscriber_exceptions(url: str, caplog: pytest.LogCaptureFixture) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(url) as service:
            comm = service.comm

            def fail(_c: Any, msg: Any, *_: Any) -> None:
                raise ValueError(f"cannot handle {msg!r}")

            await comm.add_rpc_subscriber(fail, "failing")
            with pytest.raises(RemoteException) as info:
                await (await comm.rpc_send("failing", 7)).wait(10)
            assert str(info.value) == "cannot handle 7"
            assert info.value.remote_type == "ValueError"
            assert "ValueError: cannot handle 7" in (info.value.remote_traceback or "")

            failing_tasks = unique("failing-tasks")
            await comm.task_queue(failing_tasks).add_task_subscriber(fail)
            future = await comm.task_queue(failing_tasks).task_send("t")
            assert future is not None
            with pytest.raises(RemoteException, match="cannot handle 't'"):
                await future.wait(10)

            with caplog.at_level(logging.ERROR, logger="kiwi_anyio"):
                await comm.add_broadcast_subscriber(fail)
                await service.check()  # the other broadcast subscriber still hears it
                with anyio.fail_after(10):  # and the failure is logged, with its traceback
                    while not any(
                        "broadcast subscriber" in r.getMessage() and r.exc_info
                        for r in caplog.records
                    ):
                        await anyio.sleep(0.02)

            async def async_fail(_c: Any, msg: Any) -> None:
                raise KeyError(msg)

            await comm.add_rpc_subscriber(async_fail, "async-failing")
            with pytest.raises(RemoteException) as info:
                await (await comm.rpc_send("async-failing", "k")).wait(10)
            assert info.value.remote_type == "KeyError"


# --------------------------------------------------------------------------- misuse


async def test_unencodable_values(url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(url) as service:
            comm = service.comm
            for send in (
                lambda: comm.rpc_send(service.rpc, object()),
                lambda: comm.task_queue(service.queue).task_send(object()),
                lambda: comm.broadcast_send(object()),
            ):
                with pytest.raises(TypeError, match="object"):
                    await send()

            # a result that cannot be encoded reaches the caller as a RemoteException
            await comm.add_rpc_subscriber(lambda *_: object(), "unencodable")
            with pytest.raises(RemoteException, match="object"):
                await (await comm.rpc_send("unencodable", 1)).wait(10)


async def test_identifier_misuse(url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(url) as service:
            comm = service.comm
            with pytest.raises(DuplicateSubscriberIdentifier, match=service.rpc):
                await comm.add_rpc_subscriber(lambda *_: None, service.rpc)
            for wildcard in ("a.*", "#", "x.#.y"):
                with pytest.raises(ValueError, match="cannot contain"):
                    await comm.add_rpc_subscriber(lambda *_: None, wildcard)
            with pytest.raises(UnroutableError, match="nobody-here"):
                await comm.rpc_send("nobody-here", 1)
            for remove in (
                comm.remove_rpc_subscriber,
                comm.remove_broadcast_subscriber,
                comm.remove_task_subscriber,
            ):
                with pytest.raises(ValueError, match=r"unknown .* subscriber 'nope'"):
                    await remove("nope")


async def test_names_pamqp_would_refuse(url: str) -> None:
    # RabbitMQ takes any UTF-8 name of up to 255 bytes (needs client.py to use _methods)
    with anyio.fail_after(TIMEOUT):
        suffix = uuid.uuid4().hex[:8]
        async with kiwi_anyio.connect(
            url,
            message_exchange=f"messages-é-{suffix}",
            task_exchange=f"tâches-{suffix}",
            task_queue=f"file d'attente 🐍 {suffix}",
            testing_mode=True,
        ) as comm:
            await comm.add_rpc_subscriber(lambda _c, m: m, "café")
            assert await (await comm.rpc_send("café", "crème")).wait(10) == "crème"
            await comm.add_task_subscriber(lambda _c, t: t + "!")
            future = await comm.task_send("tâche")
            assert future is not None and await future.wait(10) == "tâche!"
            long_name = "q" + "é" * 127  # 255 bytes
            queue = comm.task_queue(long_name)
            await queue.add_task_subscriber(lambda _c, t: t)
            future = await queue.task_send(1)
            assert future is not None and await future.wait(10) == 1


async def test_names_too_long_for_amqp(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with amqp_connect(broker_url) as conn, conn.channel() as ch:
            for bad in ("q" * 256, "é" * 128):
                with pytest.raises(ValueError, match="AMQP allows at most 255"):
                    await ch.queue_declare(bad)
            with pytest.raises(ValueError, match=r"routing_key .* AMQP allows at most 255"):
                await ch.basic_publish(b"x", routing_key="k" * 256)
            assert conn.is_open and ch.is_open
            await ch.queue_declare("", exclusive=True)


# --------------------------------------------------------------------------- huge messages


async def test_sending_more_than_max_message_size(broker_url: str) -> None:
    # needs client.py to pass ConnectionParameters.max_message_size to AMQPConnection
    with anyio.fail_after(TIMEOUT):
        async with serving(broker_url, max_message_size=MiB) as service:
            comm = service.comm
            big = "x" * (2 * MiB)
            for send in (
                lambda: comm.rpc_send(service.rpc, big),
                lambda: comm.task_queue(service.queue).task_send(big),
                lambda: comm.broadcast_send(big),
            ):
                with pytest.raises(ProtocolError) as info:
                    await send()
                assert f"exceeds max_message_size ({MiB} bytes)" in str(info.value)
                await service.check()


async def test_a_reply_larger_than_max_message_size(broker_url: str) -> None:
    # needs the wiring above, and the communicator to answer with an error instead of
    # requeueing the request (which would be redelivered and fail again, forever)
    with anyio.fail_after(TIMEOUT):
        async with serving(broker_url, max_message_size=MiB) as service:
            comm = service.comm
            calls: list[int] = []

            def huge(_c: Any, n: int) -> str:
                calls.append(n)
                return "y" * n

            await comm.add_rpc_subscriber(huge, "huge")
            with pytest.raises(RemoteException, match="max_message_size"):
                await (await comm.rpc_send("huge", 2 * MiB)).wait(10)
            await anyio.sleep(0.5)
            assert calls == [2 * MiB]  # handled once, not redelivered
            await service.check()


async def test_receiving_more_than_max_message_size(
    broker_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # needs client.py to pass ConnectionParameters.max_message_size to AMQPConnection
    with anyio.fail_after(TIMEOUT):
        names = private_names("bad")
        async with (
            serving(broker_url, max_message_size=MiB, **names) as service,
            kiwi_anyio.connect(broker_url, **names) as sender,  # default limit: 128 MiB
        ):
            with caplog.at_level(logging.WARNING, logger="kiwi_anyio"):
                await sender.task_queue(service.queue).task_send("z" * (2 * MiB), no_reply=True)
                with anyio.fail_after(10):
                    while not any("max_message_size" in r.getMessage() for r in caplog.records):
                        await anyio.sleep(0.05)
            await service.check()
        async with amqp_connect(broker_url) as conn, conn.channel() as ch:
            reply = await ch.queue_declare(service.queue, passive=True)
            assert reply.message_count == 0  # rejected without requeue


# --------------------------------------------------------------------------- closed


async def test_a_closed_communicator(url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(url) as service:
            comm = service.comm
        calls: list[Callable[[], Any]] = [
            lambda: comm.rpc_send(service.rpc, 1),
            lambda: comm.task_send(1),
            lambda: comm.broadcast_send(1),
            lambda: comm.add_rpc_subscriber(lambda *_: None),
            lambda: comm.add_task_subscriber(lambda *_: None),
            lambda: comm.add_broadcast_subscriber(lambda *_: None),
            lambda: comm.remove_rpc_subscriber(service.rpc),
        ]
        for call in calls:
            with pytest.raises(CommunicatorClosed, match="the communicator is closed"):
                await call()
        with pytest.raises(CommunicatorClosed, match="closed"):
            comm.task_queue("anything")
        with pytest.raises(CommunicatorClosed):
            _ = comm.server_properties
        with pytest.raises(RuntimeError, match="entered only once"):
            async with comm:
                pass
        assert comm.is_closed()
        assert "closed" in repr(comm)


async def test_futures_pending_at_close(url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        started = anyio.Event()

        async def slow(_c: Any, _m: Any) -> None:
            started.set()
            await anyio.sleep_forever()

        names = private_names("bad")
        async with kiwi_anyio.connect(url, **names) as server:
            await server.add_rpc_subscriber(slow, "slow")
            async with kiwi_anyio.connect(url, **names) as client:
                future = await client.rpc_send("slow", 1)
                await started.wait()
            with pytest.raises(CommunicatorClosed, match="closed"):
                await future.wait(5)


# --------------------------------------------------------------------------- hostile error types

HOSTILE_TYPES = [
    "os.system",
    "subprocess.Popen",
    "kiwi_hostile_never_imported.Boom",
    "builtins.eval",
    "x" * 5000,
]


@pytest.mark.parametrize("remote_type", HOSTILE_TYPES, ids=lambda t: t[:40])
async def test_a_reply_naming_a_hostile_error_type_constructs_nothing(
    url: str, remote_type: str
) -> None:
    """A peer answers an RPC with an exception reply whose type (in the body and in the
    typed-error headers) names a function or a module, with a huge traceback: the caller
    gets a plain RemoteException carrying the text; nothing is imported or called."""
    from kiwi_anyio.typed import ERROR_BASES_HEADER, ERROR_TYPE_HEADER

    identifier = unique("hostile")
    options = private_names("bad")
    huge_traceback = "Traceback (most recent call last):\n" + "  boom\n" * 200_000
    with anyio.fail_after(30):
        async with (
            kiwi_anyio.connect(url, **options) as comm,
            raw_connection(url) as conn,
            conn.channel(publisher_confirms=True) as ch,
        ):
            exchange = options["message_exchange"]
            await ch.exchange_declare(exchange, "topic", auto_delete=True)
            queue = (await ch.queue_declare("", exclusive=True)).queue
            await ch.queue_bind(queue, exchange, routing_key=wire.rpc_routing_key(identifier))
            future = await comm.rpc_send(identifier, "hello")
            async with ch.basic_consume(queue) as requests:
                request = await requests.__anext__()
                reply = {
                    wire.EXCEPTION_KEY: "you asked for it",
                    wire.EXCEPTION_TYPE_KEY: remote_type,
                    wire.TRACEBACK_KEY: huge_traceback,
                }
                await ch.basic_publish(
                    YAML.encode(reply),
                    routing_key=request.properties.reply_to,
                    properties=Properties(
                        content_type=YAML.content_type,
                        correlation_id=request.properties.correlation_id,
                        headers={
                            ERROR_TYPE_HEADER: remote_type,
                            ERROR_BASES_HEADER: "os.system,builtins.SystemExit",
                        },
                    ),
                )
                request.ack()
            with pytest.raises(RemoteException) as info:
                await future
    assert type(info.value) is RemoteException
    assert str(info.value) == "you asked for it"
    assert info.value.remote_type == remote_type
    assert "kiwi_hostile_never_imported" not in sys.modules

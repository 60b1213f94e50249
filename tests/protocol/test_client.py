"""Integration tests of the anyio AMQP client against the private RabbitMQ broker.

Every test runs on asyncio and on trio, inside ``anyio.fail_after(30)``.
"""

from __future__ import annotations

import gc
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import trustme
from pamqp import commands

from kiwi_anyio.exceptions import (
    AMQPError,
    AuthenticationError,
    ChannelClosed,
    ConnectionClosed,
    ConnectionFailed,
    ConsumerCancelled,
    HeartbeatTimeout,
    InvalidURL,
    MessageReturned,
    ProtocolError,
    PublishNacked,
    UnroutableError,
    VhostNotFound,
)
from kiwi_anyio.protocol import Channel, Connection, Message, connect, parse_url
from kiwi_anyio.testing.rabbitmq import BrokerInfo, RabbitMQBroker

pytestmark = pytest.mark.anyio

Properties = commands.Basic.Properties
TIMEOUT = 30


def unique(prefix: str) -> str:
    """A name no other test (or backend) uses."""
    return f"kiwi-test-{prefix}-{uuid.uuid4().hex[:10]}"


def with_query(url: str, query: str) -> str:
    return url + ("&" if "?" in url else "?") + query


def refused_port() -> int:
    """A local port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Proxy:
    """A TCP proxy in front of the broker that a test can freeze (a black hole) or cut."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.frozen = False
        self._streams: list[anyio.abc.ByteStream] = []

    async def _pipe(self, src: anyio.abc.ByteStream, dst: anyio.abc.ByteStream) -> None:
        try:
            async for chunk in src:
                if not self.frozen:
                    await dst.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        if not self.frozen:  # a black hole passes on no close either
            await anyio.aclose_forcefully(dst)

    async def _handle(self, client: anyio.abc.ByteStream) -> None:
        server = await anyio.connect_tcp(*self.target)
        self._streams += [client, server]
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._pipe, client, server)
            tg.start_soon(self._pipe, server, client)

    async def cut(self) -> None:
        """Close every proxied connection, both ways, abruptly."""
        for stream in self._streams:
            await anyio.aclose_forcefully(stream)


@asynccontextmanager
async def proxy(broker_url: str) -> AsyncIterator[Proxy]:
    """A :class:`Proxy` to the broker; connect to ``amqp://guest:guest@127.0.0.1:<port>/``."""
    address = parse_url(broker_url).addresses[0]
    result = Proxy(address.host, address.port)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    result.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, result._handle)
        try:
            yield result
        finally:
            tg.cancel_scope.cancel()
    for stream in result._streams:
        await anyio.aclose_forcefully(stream)


@asynccontextmanager
async def session(
    url: str, *, publisher_confirms: bool = False
) -> AsyncIterator[tuple[Connection, Channel]]:
    """A connection and one channel on it."""
    async with connect(url) as conn, conn.channel(publisher_confirms=publisher_confirms) as ch:
        yield conn, ch


async def declare(ch: Channel, name: str = "", **options: Any) -> str:
    """Declare a queue; return its name."""
    reply = await ch.queue_declare(name, **options)
    assert reply.queue
    return reply.queue


async def private_queue(ch: Channel) -> str:
    """A server-named exclusive queue."""
    return await declare(ch, "", exclusive=True)


def is_open(thing: Connection | Channel) -> bool:
    """``thing.is_open``, read afresh (for mypy, which narrows properties)."""
    return thing.is_open


async def ready_count(conn: Connection, queue: str) -> int:
    """How many messages are ready in ``queue`` (asked on a channel of its own)."""
    async with conn.channel() as ch:
        reply = await ch.queue_declare(queue, passive=True)
        return int(reply.message_count or 0)


async def next_message(consumer: AsyncIterator[Message]) -> Message:
    return await consumer.__anext__()


def release_garbage() -> None:
    """Collect now, so that a stream left unclosed warns in this test, not in a later one."""
    gc.collect()


@pytest.fixture(autouse=True)
def _unclosed_streams_warn_here() -> Iterator[None]:
    yield
    release_garbage()


# --------------------------------------------------------------------------- connecting


async def test_connect_and_server_properties(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect(broker_url) as conn:
            assert conn.is_open
            props = conn.server_properties
            assert props["product"] == "RabbitMQ"
            assert str(props["version"])[0].isdigit()
            assert str(props["platform"]).startswith("Erlang")
            assert props["capabilities"]["publisher_confirms"] is True
            assert conn.heartbeat == 60  # RabbitMQ proposes 60 and so do we
            assert conn.failure is None
        assert not is_open(conn)
        assert conn.failure is None


async def test_tuning_from_the_url(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        url = with_query(broker_url, "heartbeat=5&frame_max=8192&channel_max=10")
        async with connect(url) as conn:
            assert (conn.heartbeat, conn.frame_max, conn.channel_max) == (5, 8192, 10)
            # a message needing several 8 KiB frames goes both ways
            body = bytes(i % 251 for i in range(50_000))
            async with conn.channel(publisher_confirms=True) as ch:
                queue = await private_queue(ch)
                await ch.basic_publish(body, routing_key=queue)
                message = await ch.basic_get(queue, no_ack=True)
                assert message is not None and message.body == body
            # at most 10 channels
            channels = [await conn.channel() for _ in range(10)]
            assert sorted(c.number for c in channels) == list(range(1, 11))
            with pytest.raises(AMQPError):
                await conn.channel()
            for channel in channels:
                await channel.aclose()
            async with conn.channel() as ch:
                await ch.queue_declare("", exclusive=True)


async def test_wrong_password(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        url = broker_url.replace("guest:guest@", "guest:S3cretPassw0rd@")
        assert "S3cretPassw0rd" in url
        with pytest.raises(AuthenticationError) as info:
            async with connect(url):
                pytest.fail("connected with a wrong password")
        assert "guest" in str(info.value)
        assert "S3cretPassw0rd" not in str(info.value)
        assert "S3cretPassw0rd" not in repr(info.value)


async def test_unknown_vhost(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        vhost = unique("vhost")
        with pytest.raises(VhostNotFound) as info:
            async with connect(broker_url.rstrip("/") + "/" + quote(vhost, safe="")):
                pytest.fail("opened a vhost that does not exist")
        assert vhost in str(info.value)


async def test_refused_port_fails_fast() -> None:
    with anyio.fail_after(TIMEOUT):
        port = refused_port()
        start = anyio.current_time()
        with pytest.raises(ConnectionFailed) as info:
            async with connect(f"amqp://guest:guest@127.0.0.1:{port}/"):
                pytest.fail("connected to a closed port")
        assert anyio.current_time() - start < 5
        assert str(port) in str(info.value)
        assert "guest:guest" not in str(info.value)


async def test_second_host_is_tried(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        port = refused_port()
        url = broker_url.replace("@127.0.0.1:", f"@127.0.0.1:{port},127.0.0.1:")
        assert url.count(",") == 1
        async with connect(url) as conn, conn.channel() as ch:
            assert conn.address.port != port
            await private_queue(ch)


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:guest@127.0.0.1:notaport/",
        "http://guest:guest@127.0.0.1/",
        "amqp://guest:guest@127.0.0.1/?heartbeat=soon",
        "amqp://guest:guest@127.0.0.1/?no_such_option=1",
    ],
)
async def test_malformed_url(url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(InvalidURL):
            async with connect(url):
                pytest.fail("connected with a malformed URL")


async def test_nothing_is_left_running_after_the_block(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        before = len(anyio.get_running_tasks())
        async with connect(broker_url) as conn:
            ch = await conn.channel(publisher_confirms=True)
            queue = await private_queue(ch)
            consumer = await ch.basic_consume(queue).start()
            assert len(anyio.get_running_tasks()) > before  # reader, writer, heartbeats
        assert len(anyio.get_running_tasks()) == before
        assert not conn.is_open
        assert not ch.is_open
        with pytest.raises(AMQPError):
            await ch.queue_declare("", exclusive=True)
        with pytest.raises(AMQPError):
            await ch.basic_publish(b"x", routing_key=queue)
        with pytest.raises(AMQPError):
            await conn.channel()
        with pytest.raises(AMQPError):
            await next_message(consumer)
        await consumer.cancel()  # safe, and releases its stream, after the connection closed
        release_garbage()


class _UserError(Exception):
    pass


async def test_user_exception_propagates_unchanged(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        error = _UserError("boom")
        connections: list[Connection] = []

        async def block() -> None:
            async with connect(broker_url) as conn, conn.channel() as ch:
                connections.append(conn)
                await private_queue(ch)
                raise error

        with pytest.raises(_UserError) as info:
            await block()
        assert info.value is error
        assert type(info.value) is _UserError  # not wrapped in an ExceptionGroup
        assert not connections[0].is_open


async def test_close_is_idempotent(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect(broker_url) as conn:
            ch = await conn.channel()
            await ch.aclose()
            await ch.aclose()
            await conn.aclose()
            await conn.aclose()
            assert not conn.is_open
            await conn.wait_closed()
        await conn.aclose()
        assert conn.failure is None


async def test_heartbeats_keep_an_idle_connection_alive(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect(with_query(broker_url, "heartbeat=1")) as conn:
            assert conn.heartbeat == 1
            async with conn.channel() as ch:
                await anyio.sleep(3.5)  # the broker drops a client silent for 2 heartbeats
                await private_queue(ch)
            assert conn.is_open


async def test_heartbeat_timeout(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with proxy(broker_url) as relay:
            url = f"amqp://guest:guest@127.0.0.1:{relay.port}/?heartbeat=1"
            connections: list[Connection] = []
            frozen_at: list[float] = []

            async def block() -> None:
                async with connect(url) as conn, conn.channel() as ch:
                    connections.append(conn)
                    await private_queue(ch)
                    relay.frozen = True
                    frozen_at.append(anyio.current_time())
                    await anyio.sleep(TIMEOUT)  # cancelled when the broker is found dead
                    pytest.fail("the block was not cancelled")

            with pytest.raises(HeartbeatTimeout) as info:
                await block()
            elapsed = anyio.current_time() - frozen_at[0]
            assert 1.5 < elapsed < 5, elapsed
            assert connections[0].failure is info.value
            assert not connections[0].is_open


async def test_connection_lost(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with proxy(broker_url) as relay:
            url = f"amqp://guest:guest@127.0.0.1:{relay.port}/"
            connections: list[Connection] = []
            pending: list[BaseException] = []

            async def consume(ch: Channel, queue: str) -> None:
                try:
                    async with ch.basic_consume(queue) as consumer:
                        await next_message(consumer)
                except ChannelClosed as exc:
                    pending.append(exc)

            async def block() -> None:
                async with connect(url) as conn, conn.channel(publisher_confirms=True) as ch:
                    connections.append(conn)
                    queue = await private_queue(ch)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(consume, ch, queue)
                        await anyio.wait_all_tasks_blocked()
                        await relay.cut()
                        await anyio.sleep(TIMEOUT)

            with pytest.raises(ConnectionClosed) as info:
                await block()
            assert type(info.value) is ConnectionClosed
            assert connections[0].failure is info.value
            assert len(pending) <= 1  # the consumer failed, or was cancelled with the block


async def publish_until_cut(broker_url: str) -> BaseException | None:
    """Publish big messages through a proxy, and cut it meanwhile; return what ``connect`` raised.

    (Any other exception than ConnectionClosed propagates.)
    """
    async with proxy(broker_url) as relay, anyio.create_task_group() as tg:
        url = f"amqp://guest:guest@127.0.0.1:{relay.port}/"
        try:
            async with connect(url) as conn, conn.channel() as ch:
                queue = await private_queue(ch)

                async def cut_soon() -> None:
                    await anyio.sleep(0.05)
                    await relay.cut()

                tg.start_soon(cut_soon)
                while True:  # the writer is busy when the socket goes
                    await ch.basic_publish(b"x" * 200_000, routing_key=queue)
        except ConnectionClosed as exc:
            return exc
    return None


async def test_connection_lost_while_publishing(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        for _ in range(3):
            error = await publish_until_cut(broker_url)
            assert type(error) is ConnectionClosed  # not an ExceptionGroup


async def test_broker_closes_the_connection(broker_url: str, broker: RabbitMQBroker) -> None:
    with anyio.fail_after(TIMEOUT):
        connections: list[Connection] = []

        async def block() -> None:
            async with connect(broker_url) as conn, conn.channel() as ch:
                connections.append(conn)
                await private_queue(ch)
                await anyio.to_thread.run_sync(
                    broker.ctl, "close_all_connections", "kiwi test says goodbye"
                )
                await anyio.sleep(TIMEOUT)

        with pytest.raises(ConnectionClosed) as info:
            await block()
        assert info.value.reply_code == 320
        assert "kiwi test says goodbye" in info.value.reply_text
        assert not connections[0].is_open


# --------------------------------------------------------------------------- topology


async def test_exchanges(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        source, destination = unique("src"), unique("dst")
        async with session(broker_url, publisher_confirms=True) as (_, ch):
            await ch.exchange_declare(source, "topic", auto_delete=False)
            await ch.exchange_declare(destination, "fanout")
            await ch.exchange_declare(source, "topic", passive=True)
            await ch.exchange_bind(destination, source, "a.*")
            queue = await private_queue(ch)
            await ch.queue_bind(queue, destination)
            await ch.basic_publish(b"routed", exchange=source, routing_key="a.b", mandatory=True)
            message = await ch.basic_get(queue, no_ack=True)
            assert message is not None and message.body == b"routed"
            await ch.exchange_unbind(destination, source, "a.*")
            with pytest.raises(MessageReturned):
                await ch.basic_publish(b"x", exchange=source, routing_key="a.b", mandatory=True)
            await ch.exchange_delete(destination)
            await ch.exchange_delete(source)
            with pytest.raises(ChannelClosed) as info:
                await ch.exchange_declare(source, "topic", passive=True)
            assert info.value.reply_code == 404


async def test_queues(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        exchange = unique("ex")
        async with session(broker_url, publisher_confirms=True) as (conn, ch):
            await ch.exchange_declare(exchange, "direct")
            declared = await ch.queue_declare("", exclusive=True)
            queue = declared.queue or ""
            assert queue.startswith("amq.gen-")
            assert (declared.message_count, declared.consumer_count) == (0, 0)
            await ch.queue_bind(queue, exchange, "k")
            for i in range(3):
                await ch.basic_publish(b"%d" % i, exchange=exchange, routing_key="k")
            assert await ready_count(conn, queue) == 3
            assert await ch.queue_purge(queue) == 3
            assert await ch.queue_purge(queue) == 0
            await ch.queue_unbind(queue, exchange, "k")
            with pytest.raises(MessageReturned):
                await ch.basic_publish(b"x", exchange=exchange, routing_key="k", mandatory=True)
            await ch.basic_publish(b"direct", routing_key=queue)
            assert await ch.queue_delete(queue) == 1
            with pytest.raises(ChannelClosed) as info:
                await ch.queue_declare(queue, passive=True)
            assert info.value.reply_code == 404
        async with session(broker_url) as (_, ch):
            await ch.exchange_delete(exchange)


# --------------------------------------------------------------------------- consuming


async def test_message_attributes(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        exchange = unique("ex")
        props = Properties(
            content_type="application/json",
            content_encoding="utf-8",
            headers={"x-kind": "task", "n": 7, "nested": {"ok": True}},
            delivery_mode=2,
            priority=4,
            correlation_id="corr-1",
            reply_to="replies",
            message_id="msg-1",
            message_type="kiwi.task",
            app_id="tests",
        )
        async with session(broker_url, publisher_confirms=True) as (_, ch):
            await ch.exchange_declare(exchange, "topic", auto_delete=True)
            queue = await private_queue(ch)
            await ch.queue_bind(queue, exchange, "tasks.#")
            await ch.basic_publish(
                b'{"a": 1}', exchange=exchange, routing_key="tasks.x", properties=props
            )
            async with ch.basic_consume(queue) as consumer:
                message = await next_message(consumer)
            assert message.body == b'{"a": 1}'
            assert message.exchange == exchange
            assert message.routing_key == "tasks.x"
            assert message.redelivered is False
            assert message.delivery_tag >= 1
            assert message.consumer_tag == consumer.consumer_tag
            assert message.channel is ch
            got = message.properties
            for name in (
                "content_type",
                "content_encoding",
                "delivery_mode",
                "priority",
                "correlation_id",
                "reply_to",
                "message_id",
                "message_type",
                "app_id",
            ):
                assert getattr(got, name) == getattr(props, name), name
            assert got.headers == {"x-kind": "task", "n": 7, "nested": {"ok": True}}


async def test_basic_get(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url, publisher_confirms=True) as (_, ch):
            queue = await private_queue(ch)
            assert await ch.basic_get(queue) is None
            await ch.basic_publish(b"one", routing_key=queue)
            await ch.basic_publish(b"two", routing_key=queue)
            first = await ch.basic_get(queue)
            assert first is not None
            assert (first.body, first.message_count, first.consumer_tag) == (b"one", 1, None)
            first.ack()
            second = await ch.basic_get(queue, no_ack=True)
            assert second is not None and second.body == b"two"
            assert await ch.basic_get(queue) is None


async def test_ack_nack_reject(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url, publisher_confirms=True) as (conn, ch):
            queue = await private_queue(ch)
            for body in (b"ack", b"nack", b"reject"):
                await ch.basic_publish(body, routing_key=queue)
            seen: list[tuple[bytes, bool]] = []
            async with ch.basic_consume(queue) as consumer:
                async for message in consumer:
                    seen.append((message.body, message.redelivered))
                    if message.body == b"ack":
                        message.ack()
                    elif message.body == b"nack" and not message.redelivered:
                        message.nack(requeue=True)
                    elif message.body == b"nack":
                        message.ack()
                        break
                    else:
                        message.reject(requeue=False)
                    with pytest.raises(RuntimeError):
                        message.ack()  # settled twice
            assert seen[:3] == [(b"ack", False), (b"nack", False), (b"reject", False)]
            assert seen[3:] == [(b"nack", True)]
            assert await ready_count(conn, queue) == 0


async def test_nack_without_requeue_drops(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url, publisher_confirms=True) as (conn, ch):
            queue = await private_queue(ch)
            await ch.basic_publish(b"x", routing_key=queue)
            message = await ch.basic_get(queue)
            assert message is not None
            message.nack(requeue=False)
            assert await ch.basic_get(queue) is None
            assert await ready_count(conn, queue) == 0


async def test_leaving_a_consumer_with_deliveries_in_flight(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url, publisher_confirms=True) as (_, ch):
            queue = await private_queue(ch)
            for i in range(300):
                await ch.basic_publish(b"%d" % i, routing_key=queue)
            # acknowledging consumer: what it did not take goes back to the queue
            async with ch.basic_consume(queue) as consumer:
                (await next_message(consumer)).ack()
            await _ready_becomes(ch, queue, 299)
            # no_ack consumer: late deliveries must not be rejected (their tags are unknown
            # to the broker, which would close the channel with 406)
            async with ch.basic_consume(queue, no_ack=True) as consumer:
                await next_message(consumer)
            assert await declare(ch, unique("after"), exclusive=True)
            assert ch.is_open


async def _ready_becomes(ch: Channel, queue: str, count: int) -> None:
    """Wait (a little) until ``queue`` has ``count`` ready messages: requeues take a moment."""
    ready = -1
    with anyio.move_on_after(5):
        while ready != count:
            ready = int((await ch.queue_declare(queue, passive=True)).message_count or 0)
            await anyio.sleep(0.02)
    assert ready == count


async def test_leaving_a_consumer_does_not_churn_deliveries(broker_url: str) -> None:
    # With x-delivery-limit, every requeue counts: leaving a consumer must requeue each
    # message it did not take once, not have it redelivered to itself and requeued again.
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url, publisher_confirms=True) as (_, ch):
            queue = await declare(
                ch,
                unique("quorum"),
                durable=True,
                arguments={"x-queue-type": "quorum", "x-delivery-limit": 1},
            )
            try:
                async with anyio.create_task_group() as tg:
                    for i in range(1000):
                        tg.start_soon(partial(ch.basic_publish, b"%d" % i, routing_key=queue))
                async with ch.basic_consume(queue) as consumer:
                    (await next_message(consumer)).ack()
                # a message requeued twice would have been dropped
                await _ready_becomes(ch, queue, 999)
            finally:
                await ch.queue_delete(queue)


async def test_prefetch_limits_unacked_deliveries(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url, publisher_confirms=True) as (conn, ch):
            queue = await private_queue(ch)
            for i in range(10):
                await ch.basic_publish(b"%d" % i, routing_key=queue)
            await ch.basic_qos(prefetch_count=3)
            async with ch.basic_consume(queue) as consumer:
                held = [await next_message(consumer) for _ in range(3)]
                with anyio.move_on_after(0.3) as scope:
                    await next_message(consumer)
                assert scope.cancelled_caught, "a 4th delivery arrived with prefetch 3"
                assert await ready_count(conn, queue) == 7
                held[0].ack()
                fourth = await next_message(consumer)
                assert fourth.body == b"3"
                with anyio.move_on_after(0.2) as scope:
                    await next_message(consumer)
                assert scope.cancelled_caught
                for message in [*held[1:], fourth]:
                    message.ack()
                rest = [await next_message(consumer) for _ in range(3)]
                for message in rest:
                    message.ack()
                bodies = [m.body for m in [*held, fourth, *rest]]
                assert bodies == [b"%d" % i for i in range(7)]


async def test_consumer_cancelled_when_its_queue_is_deleted(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url) as (conn, ch):
            queue = await declare(ch, unique("q"), auto_delete=False)
            async with ch.basic_consume(queue) as consumer:
                async with conn.channel() as other:
                    await other.queue_delete(queue)
                with pytest.raises(ConsumerCancelled) as info:
                    await next_message(consumer)
                assert queue in str(info.value)
            assert ch.is_open  # only the consumer ended
            await private_queue(ch)


async def test_channel_error_fails_a_pending_consumer(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url) as (conn, ch):
            queue = await private_queue(ch)
            async with ch.basic_consume(queue) as consumer:
                async with anyio.create_task_group() as tg:
                    failure: list[BaseException] = []

                    async def iterate() -> None:
                        try:
                            await next_message(consumer)
                        except ChannelClosed as exc:
                            failure.append(exc)

                    tg.start_soon(iterate)
                    await anyio.wait_all_tasks_blocked()
                    with pytest.raises(ChannelClosed) as info:
                        await ch.queue_declare(unique("missing"), passive=True)
                    assert info.value.reply_code == 404
                assert len(failure) == 1
                assert isinstance(failure[0], ChannelClosed)
                assert failure[0].reply_code == 404
                assert not isinstance(failure[0], ConsumerCancelled)
            assert not ch.is_open
            assert ch.close_reason is not None and ch.close_reason.reply_code == 404
            async with conn.channel() as fresh:
                await private_queue(fresh)


# --------------------------------------------------------------------------- publishing


async def test_confirmed_publishes_are_pipelined(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url, publisher_confirms=True) as (conn, ch):
            queue = await private_queue(ch)
            done: list[int] = []

            async def publish(i: int) -> None:
                await ch.basic_publish(b"%d" % i, routing_key=queue)
                done.append(i)

            async with anyio.create_task_group() as tg:
                for i in range(1000):
                    tg.start_soon(publish, i)
            assert sorted(done) == list(range(1000))
            assert await ready_count(conn, queue) == 1000


async def test_mandatory_unroutable_publish(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url, publisher_confirms=True) as (_, ch):
            queue = await private_queue(ch)
            nowhere = unique("nowhere")
            with pytest.raises(MessageReturned) as info:
                await ch.basic_publish(b"x", routing_key=nowhere, mandatory=True)
            error = info.value
            assert isinstance(error, UnroutableError)
            assert (error.reply_code, error.exchange, error.routing_key) == (312, "", nowhere)
            # the channel goes on, and a routable mandatory publish is fine
            await ch.basic_publish(b"y", routing_key=queue, mandatory=True)
            # interleaved: only the unroutable ones fail
            results: dict[str, BaseException | None] = {}

            async def publish(key: str) -> None:
                try:
                    await ch.basic_publish(b"z", routing_key=key, mandatory=True)
                except MessageReturned as exc:
                    results[key] = exc
                else:
                    results[key] = None

            keys = [queue if i % 2 else unique("nowhere") for i in range(20)]
            async with anyio.create_task_group() as tg:
                for key in keys:
                    tg.start_soon(publish, key)
            for key in keys:
                assert (results[key] is None) == (key == queue), key


async def test_nacked_publish(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url, publisher_confirms=True) as (_, ch):
            overflow = {"x-max-length": 1, "x-overflow": "reject-publish"}
            queue = await declare(ch, "", exclusive=True, arguments=overflow)
            await ch.basic_publish(b"fits", routing_key=queue)
            with pytest.raises(PublishNacked):
                await ch.basic_publish(b"overflows", routing_key=queue)
            await ch.queue_purge(queue)
            await ch.basic_publish(b"fits again", routing_key=queue)  # confirms still line up


async def test_publish_nowait_reports_every_outcome_to_its_callback(broker_url: str) -> None:
    """publish_nowait returns at once; its callback gets None once confirmed, the nack,
    the return of an unroutable mandatory message, or the error that closed the channel;
    a callback that raises does not take the connection down."""
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url, publisher_confirms=True) as (conn, ch):
            outcomes: dict[str, BaseException | None] = {}
            changed = anyio.Event()

            def record(name: str) -> Callable[[BaseException | None], None]:
                def callback(error: BaseException | None) -> None:
                    nonlocal changed
                    outcomes[name] = error
                    changed.set()
                    changed = anyio.Event()

                return callback

            async def outcome(name: str) -> BaseException | None:
                while name not in outcomes:
                    await changed.wait()
                return outcomes[name]

            overflow = {"x-max-length": 1, "x-overflow": "reject-publish"}
            queue = await declare(ch, "", exclusive=True, arguments=overflow)

            def explode(_error: BaseException | None) -> None:
                raise RuntimeError("a broken callback")

            ch.publish_nowait(b"a", routing_key=queue, on_confirm=explode)
            ch.publish_nowait(b"b", routing_key=queue, on_confirm=record("nacked"))
            ch.publish_nowait(
                b"c", routing_key=unique("nowhere"), mandatory=True, on_confirm=record("returned")
            )
            assert outcomes == {}  # nothing waited for the broker
            assert isinstance(await outcome("nacked"), PublishNacked)
            assert isinstance(await outcome("returned"), MessageReturned)
            await ch.queue_purge(queue)
            ch.publish_nowait(b"d", routing_key=queue, on_confirm=record("confirmed"))
            assert await outcome("confirmed") is None
            ch.publish_nowait(b"e", exchange=unique("missing"), on_confirm=record("closed"))
            closed = await outcome("closed")
            assert isinstance(closed, ChannelClosed) and closed.reply_code == 404
            with pytest.raises(ChannelClosed):
                ch.publish_nowait(b"f", routing_key=queue, on_confirm=record("late"))
            async with conn.channel() as fresh:  # the connection goes on
                assert (await fresh.queue_declare(queue, passive=True)).message_count == 1


async def test_ten_mebibytes_round_trip(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        body = uuid.uuid4().bytes * (10 * 1024 * 1024 // 16)
        assert len(body) == 10 * 1024 * 1024
        async with session(broker_url, publisher_confirms=True) as (_, ch):
            queue = await private_queue(ch)
            await ch.basic_publish(body, routing_key=queue)
            async with ch.basic_consume(queue, no_ack=True) as consumer:
                message = await next_message(consumer)
            assert message.body == body


async def test_ten_thousand_persistent_messages(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        total, workers = 10_000, 50
        persistent = Properties(delivery_mode=2)
        async with session(broker_url, publisher_confirms=True) as (conn, ch):
            queue = await declare(ch, unique("q"), durable=True)

            async def publisher(worker: int) -> None:
                for i in range(worker, total, workers):
                    await ch.basic_publish(
                        b"message-%d" % i, routing_key=queue, properties=persistent
                    )

            async with anyio.create_task_group() as tg:
                for worker in range(workers):
                    tg.start_soon(publisher, worker)
            assert await ready_count(conn, queue) == total

            received: list[bytes] = []
            async with conn.channel(prefetch_count=500) as consumer_channel:
                async with consumer_channel.basic_consume(queue) as consumer:
                    async for message in consumer:
                        assert message.properties.delivery_mode == 2
                        received.append(message.body)
                        message.ack()
                        if len(received) == total:
                            break
                assert await ready_count(conn, queue) == 0
            assert len(received) == total
            assert set(received) == {b"message-%d" % i for i in range(total)}
            await ch.queue_delete(queue)


async def test_properties_too_big_for_a_frame(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url, publisher_confirms=True) as (conn, ch):
            queue = await private_queue(ch)
            huge = Properties(headers={"blob": "x" * 200_000})
            with pytest.raises(ProtocolError):
                await ch.basic_publish(b"x", routing_key=queue, properties=huge)
            # nothing was sent and no sequence number was used: later confirms still match
            for i in range(3):
                await ch.basic_publish(b"%d" % i, routing_key=queue)
            assert conn.is_open and ch.is_open
            assert await ready_count(conn, queue) == 3


async def test_ack_after_the_channel_closed_is_refused(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect(broker_url) as conn:
            async with conn.channel(publisher_confirms=True) as ch:
                queue = await declare(ch, unique("q"))
                await ch.basic_publish(b"x", routing_key=queue)
                message = await ch.basic_get(queue)
                assert message is not None
            with pytest.raises(ChannelClosed):
                message.ack()  # never sent on a closed (or reused) channel number
            async with conn.channel() as ch:
                redelivered = await ch.basic_get(queue, no_ack=True)
                assert redelivered is not None and redelivered.redelivered
                await ch.queue_delete(queue)


async def test_publish_to_a_missing_exchange_closes_the_channel(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url, publisher_confirms=True) as (conn, ch):
            with pytest.raises(ChannelClosed) as info:
                await ch.basic_publish(b"x", exchange=unique("missing"), routing_key="k")
            assert info.value.reply_code == 404
            assert not ch.is_open
            with pytest.raises(ChannelClosed):
                await ch.basic_publish(b"x", routing_key="k")
            async with conn.channel(publisher_confirms=True) as fresh:
                queue = await private_queue(fresh)
                await fresh.basic_publish(b"ok", routing_key=queue)


async def test_conflicting_declare_closes_only_the_channel(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        name = unique("q")
        async with session(broker_url) as (conn, ch):
            await ch.queue_declare(name, arguments={"x-max-length": 10}, auto_delete=True)
            with pytest.raises(ChannelClosed) as info:
                await ch.queue_declare(name, arguments={"x-max-length": 20}, auto_delete=True)
            assert info.value.reply_code == 406
            assert "PRECONDITION_FAILED" in info.value.reply_text
            assert not ch.is_open
            assert conn.is_open
            async with conn.channel(publisher_confirms=True) as fresh:
                await fresh.basic_publish(b"still here", routing_key=name)
                message = await fresh.basic_get(name, no_ack=True)
                assert message is not None and message.body == b"still here"
                await fresh.queue_delete(name)


async def test_concurrent_requests_on_one_channel(broker_url: str) -> None:
    # RabbitMQ may answer a pipelined Basic.Get before the Basic.Consume sent first
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url, publisher_confirms=True) as (_, ch):
            queue = await private_queue(ch)
            for round_ in range(10):
                body = b"%d" % round_
                await ch.basic_publish(body, routing_key=queue)
                got, declared = await _consume_get_and_declare_at_once(ch, queue)
                assert got == [body]
                assert len(declared) == 3
                assert all(name == reply for name, reply in declared.items())
            assert ch.is_open


async def _consume_get_and_declare_at_once(
    ch: Channel, queue: str
) -> tuple[list[bytes], dict[str, str]]:
    got: list[bytes] = []
    declared: dict[str, str] = {}
    arrived = anyio.Event()

    async def consume() -> None:
        # (not no_ack: a delivery to a consumer start cancelled in an earlier round is then
        # requeued, where a no_ack one would be lost)
        async with ch.basic_consume(queue) as consumer:
            message = await next_message(consumer)
            message.ack()
            got.append(message.body)
            arrived.set()

    async def get() -> None:
        message = await ch.basic_get(queue, no_ack=True)
        if message is not None:
            got.append(message.body)
            arrived.set()

    async def declare_one(name: str) -> None:
        declared[name] = await declare(ch, name, exclusive=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        async with anyio.create_task_group() as requests:
            requests.start_soon(get)
            for _ in range(3):
                requests.start_soon(declare_one, unique("concurrent"))
        await arrived.wait()
        tg.cancel_scope.cancel()  # the consumer, if the get took the message
    return got, declared


# --------------------------------------------------------------------------- cancellation


async def test_cancelled_declare_leaves_the_channel_in_sync(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url) as (conn, ch):
            cancelled = [unique("cancelled") for _ in range(5)]
            for name in cancelled:
                with anyio.move_on_after(0) as scope:
                    await ch.queue_declare(name, exclusive=True)
                assert scope.cancelled_caught
            # the next request gets its own reply, not a late one for a cancelled request
            wanted = unique("wanted")
            assert await declare(ch, wanted, exclusive=True) == wanted
            assert ch.is_open
            # The first was sent before the cancellation took effect (the others may have been
            # cancelled while waiting for their turn: then they were never sent).
            async with conn.channel() as other:
                assert (await other.queue_declare(cancelled[0], passive=True)).queue


async def test_cancel_scope_cancelled_after_the_request_is_queued(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url) as (_, ch):
            names = [unique("declare") for _ in range(10)]
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def declare_all() -> None:
                    with scope:
                        for name in names:
                            await ch.queue_declare(name, exclusive=True)

                tg.start_soon(declare_all)
                await anyio.lowlevel.checkpoint()
                scope.cancel()
            wanted = unique("wanted")
            assert await declare(ch, wanted, exclusive=True) == wanted
            assert ch.is_open


async def test_cancelled_get_gives_the_message_back(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url, publisher_confirms=True) as (_, ch):
            queue = await private_queue(ch)
            await ch.basic_publish(b"keep me", routing_key=queue)
            with anyio.move_on_after(0):
                await ch.basic_get(queue)
            message = None
            while message is None:  # the requeue of the abandoned delivery is asynchronous
                message = await ch.basic_get(queue)
            assert message.body == b"keep me"


async def test_cancelled_no_ack_get_is_not_given_back(broker_url: str) -> None:
    # a no_ack delivery is settled on arrival: rejecting it would be an unknown delivery tag
    # (406), closing the channel
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url, publisher_confirms=True) as (_, ch):
            queue = await private_queue(ch)
            await ch.basic_publish(b"taken", routing_key=queue)
            with anyio.move_on_after(0) as scope:
                await ch.basic_get(queue, no_ack=True)
            assert scope.cancelled_caught
            assert await declare(ch, queue, passive=True) == queue  # the channel is in sync
            assert ch.is_open


async def test_consume_ok_racing_the_cancellation_of_its_start(
    broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The start's wait is cancelled, then its ConsumeOk arrives before the task resumes: the
    # reply was taken as wanted (the consumer registered), so the start must undo it. It used
    # to leave a closed consumer registered, and the next delivery killed the reader.
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url, publisher_confirms=True) as (conn, ch):
            queue = await private_queue(ch)
            await ch.basic_publish(b"waiting", routing_key=queue)
            on_reply = ch._on_reply
            with anyio.CancelScope() as scope:

                def cancel_first(value: Any) -> None:
                    if isinstance(value, commands.Basic.ConsumeOk):
                        scope.cancel()
                    on_reply(value)

                monkeypatch.setattr(ch, "_on_reply", cancel_first)
                async with ch.basic_consume(queue):
                    pytest.fail("the start was cancelled")
            assert scope.cancelled_caught
            monkeypatch.setattr(ch, "_on_reply", on_reply)
            message = None
            while message is None:  # the delivery is requeued once the broker cancelled it
                message = await ch.basic_get(queue)
            assert message.body == b"waiting"
            message.ack()
            assert not ch._consumers
            assert is_open(conn)
            assert is_open(ch)


async def test_cancelled_consumer_start_loses_no_message(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url, publisher_confirms=True) as (_, ch):
            queue = await private_queue(ch)
            for i in range(3):
                await ch.basic_publish(b"%d" % i, routing_key=queue)
            with anyio.move_on_after(0) as scope:
                async with ch.basic_consume(queue):
                    pytest.fail("the consumer started in spite of the cancellation")
            assert scope.cancelled_caught
            # The broker may deliver to the abandoned consumer before it is cancelled again;
            # those deliveries are requeued, so every message can still be had.
            got: list[bytes] = []
            while len(got) < 3:
                message = await ch.basic_get(queue, no_ack=True)
                if message is not None:
                    got.append(message.body)
            assert sorted(got) == [b"0", b"1", b"2"]


async def test_cancelled_confirm_wait_does_not_break_later_confirms(broker_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url, publisher_confirms=True) as (conn, ch):
            queue = await private_queue(ch)
            for i in range(5):
                with anyio.move_on_after(0) as scope:
                    await ch.basic_publish(b"cancelled-%d" % i, routing_key=queue)
                assert scope.cancelled_caught
            for i in range(20):
                await ch.basic_publish(b"later-%d" % i, routing_key=queue)
            with pytest.raises(MessageReturned):
                await ch.basic_publish(b"x", routing_key=unique("nowhere"), mandatory=True)
            await ch.basic_publish(b"last", routing_key=queue)
            # the cancelled ones were published all the same
            assert await ready_count(conn, queue) == 26


# --------------------------------------------------------------------------- broker control


async def _set_watermark(broker: RabbitMQBroker, value: str) -> None:
    await anyio.to_thread.run_sync(broker.ctl, "set_vm_memory_high_watermark", value)


async def _until(predicate: Callable[[], bool]) -> None:
    """Poll: the client has no event for the blocked state."""
    while not predicate():
        await anyio.sleep(0.05)


async def test_blocked_and_unblocked(broker_url: str, broker: RabbitMQBroker) -> None:
    with anyio.fail_after(TIMEOUT):
        async with session(broker_url, publisher_confirms=True) as (conn, ch):
            queue = await private_queue(ch)
            await _set_watermark(broker, "0.0000001")
            try:
                # RabbitMQ blocks a connection when it publishes during a resource alarm
                published: list[bytes] = []

                async def publish(body: bytes) -> None:
                    await ch.basic_publish(body, routing_key=queue)
                    published.append(body)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(publish, b"during the alarm")
                    await _until(lambda: conn.is_blocked)
                    # a publish while blocked waits, and goes out after Connection.Unblocked
                    tg.start_soon(publish, b"while blocked")
                    # one cancelled while it waits is never sent
                    with anyio.move_on_after(0.2) as scope:
                        await ch.basic_publish(b"cancelled", routing_key=queue)
                    assert scope.cancelled_caught
                    assert b"while blocked" not in published
                    await _leave_a_blocked_connection(broker_url)
                    await _set_watermark(broker, "0.4")
                    await _until(lambda: not conn.is_blocked)
                assert sorted(published) == [b"during the alarm", b"while blocked"]
            finally:
                with anyio.CancelScope(shield=True):
                    await _set_watermark(broker, "0.4")
            await ch.basic_publish(b"after", routing_key=queue)  # confirms still line up
            assert await ready_count(conn, queue) == 3


async def _leave_a_blocked_connection(broker_url: str) -> None:
    """Leaving the blocks of a blocked connection waits for no CloseOk (none would come)."""
    async with connect(broker_url) as conn, conn.channel() as ch:
        queue = await private_queue(ch)
        async with ch.basic_consume(queue):
            await ch.basic_publish(b"unconfirmed", routing_key=unique("nowhere"))
            await _until(lambda: conn.is_blocked)
            start = anyio.current_time()
    assert anyio.current_time() - start < 2


# --------------------------------------------------------------------------- TLS


def _tls(rabbitmq: BrokerInfo) -> tuple[str, str]:
    if rabbitmq.tls_url is None or rabbitmq.ca is None:
        pytest.fail("the test broker has no TLS listener (run the tests with scripts/test)")
    return rabbitmq.tls_url, rabbitmq.ca


async def test_tls(rabbitmq: BrokerInfo) -> None:
    with anyio.fail_after(TIMEOUT):
        tls_url, ca = _tls(rabbitmq)
        assert tls_url.startswith("amqps://") and "@localhost:" in tls_url
        url = with_query(tls_url, "cacertfile=" + quote(ca, safe=""))
        async with connect(url) as conn, conn.channel(publisher_confirms=True) as ch:
            queue = await private_queue(ch)
            body = b"secret" * 50_000
            await ch.basic_publish(body, routing_key=queue)
            message = await ch.basic_get(queue, no_ack=True)
            assert message is not None and message.body == body


async def test_tls_with_a_client_certificate(rabbitmq: BrokerInfo) -> None:
    with anyio.fail_after(TIMEOUT):
        tls_url, ca = _tls(rabbitmq)
        assert rabbitmq.client_cert is not None and rabbitmq.client_key is not None
        query = "&".join(
            [
                "cacertfile=" + quote(ca, safe=""),
                "certfile=" + quote(rabbitmq.client_cert, safe=""),
                "keyfile=" + quote(rabbitmq.client_key, safe=""),
                "auth_mechanism=external",
            ]
        )
        async with connect(with_query(tls_url, query)) as conn, conn.channel() as ch:
            await private_queue(ch)


async def test_tls_with_the_wrong_ca(rabbitmq: BrokerInfo, tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        tls_url, _ = _tls(rabbitmq)
        other_ca = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other_ca))
        url = with_query(tls_url, "cacertfile=" + quote(str(other_ca), safe=""))
        with pytest.raises(ConnectionFailed) as info:
            async with connect(url):
                pytest.fail("connected to a server signed by another CA")
        assert "certificate verification" in str(info.value)


def test_the_writer_joins_small_buffers_and_passes_large_ones_through() -> None:
    from kiwi_anyio.protocol.client import COALESCE_BYTES, _coalesce

    big = b"B" * COALESCE_BYTES
    assert _coalesce([]) == []
    assert _coalesce([b"a"]) == [b"a"]
    chunks = _coalesce([b"a", b"b", big, b"c", b"d", b"e", big, big])
    assert chunks == [b"ab", big, b"cde", big, big]
    assert chunks[1] is big  # not copied

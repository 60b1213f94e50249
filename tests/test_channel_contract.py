"""The channel contract: what :mod:`kiwi_anyio.channel` promises, on memory:// and on RabbitMQ.

Every test runs against both implementations of the interface, through public names only
(:func:`kiwi_anyio.memory.connect` and :func:`kiwi_anyio.protocol.connect`): the in-memory broker
and the test RabbitMQ broker (3.10; the tests of RabbitMQ 4's rules against the RabbitMQ 4 broker
instead), each on asyncio and on trio. What ``kiwi_anyio.memory`` claims to do "as RabbitMQ
does" is checked here against the real thing.

Queues are uniquely named per test and exclusive (gone with their connection) or deleted at the
end; exchanges are auto-delete (gone with their last binding) or deleted.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import pytest

from kiwi_anyio import (
    ChannelClosed,
    ConnectionClosed,
    ConsumerCancelled,
    MessageReturned,
    memory,
    protocol,
)
from kiwi_anyio.channel import Channel, Connection, Message

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0
SETTLE = 0.3  # how long to wait for a delivery that must not come (RabbitMQ delivers async)
MiB = 1024 * 1024

Connect = Callable[[], AbstractAsyncContextManager[Connection]]


@pytest.fixture
def memory_name() -> Iterator[str]:
    name = f"contract-{uuid.uuid4().hex[:8]}"
    yield name
    memory.reset(name)


def _connector(kind: str, request: pytest.FixtureRequest, memory_name: str) -> Connect:
    if kind == "memory":
        return lambda: memory.connect(memory_name)
    url = str(request.getfixturevalue("broker_url" if kind == "rabbitmq" else "rabbitmq4_url"))
    return lambda: protocol.connect(url)


@pytest.fixture(params=["memory", "rabbitmq"])
def connect(request: pytest.FixtureRequest, memory_name: str) -> Connect:
    """Opens a connection to memory:// or to the RabbitMQ test broker."""
    return _connector(str(request.param), request, memory_name)


@pytest.fixture(params=["memory", "rabbitmq4"])
def connect4(request: pytest.FixtureRequest, memory_name: str) -> Connect:
    """Opens a connection to memory:// or to the RabbitMQ 4 broker (4.3's defaults)."""
    return _connector(str(request.param), request, memory_name)


def unique(what: str = "q") -> str:
    return f"contract-{what}-{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def channel(connect: Connect, *, publisher_confirms: bool) -> AsyncIterator[Channel]:
    async with connect() as conn, conn.channel(publisher_confirms=publisher_confirms) as ch:
        yield ch


async def exclusive_queue(ch: Channel, name: str | None = None) -> str:
    return str((await ch.queue_declare(name or unique(), exclusive=True)).queue)


async def get_bodies(ch: Channel, queue: str) -> list[bytes]:
    """Every message of ``queue``, acknowledged, in order (basic_get until empty)."""
    bodies = []
    while (message := await ch.basic_get(queue)) is not None:
        bodies.append(message.body)
        message.ack()
    return bodies


async def wait_for(ch: Channel, queue: str) -> Message:
    """The next message of ``queue`` (polling basic_get: RabbitMQ routes asynchronously)."""
    while (message := await ch.basic_get(queue)) is None:
        await anyio.sleep(0.01)
    return message


async def publish_all(ch: Channel, queue: str, bodies: list[bytes]) -> None:
    for body in bodies:
        await ch.basic_publish(body, routing_key=queue)


# --------------------------------------------------------------------------- routing


async def test_default_exchange_routes_by_queue_name(connect: Connect) -> None:
    with anyio.fail_after(TIMEOUT):
        async with channel(connect, publisher_confirms=True) as ch:
            q1, q2 = await exclusive_queue(ch), await exclusive_queue(ch)
            await ch.basic_publish(b"one", routing_key=q1)
            await ch.basic_publish(b"two", routing_key=q2)
            await ch.basic_publish(b"nowhere", routing_key=unique("none"))
            assert await get_bodies(ch, q1) == [b"one"]
            assert await get_bodies(ch, q2) == [b"two"]


async def test_direct_fanout_and_topic_routing(connect: Connect) -> None:
    with anyio.fail_after(TIMEOUT):
        async with channel(connect, publisher_confirms=True) as ch:
            direct, fanout, topic = unique("direct"), unique("fanout"), unique("topic")
            await ch.exchange_declare(direct, "direct", auto_delete=True)
            await ch.exchange_declare(fanout, "fanout", auto_delete=True)
            await ch.exchange_declare(topic, "topic", auto_delete=True)
            try:
                qa, qb, qc = [await exclusive_queue(ch) for _ in range(3)]
                await ch.queue_bind(qa, direct, routing_key="red")
                await ch.queue_bind(qb, direct, routing_key="green")
                await ch.queue_bind(qa, fanout, routing_key="ignored")
                await ch.queue_bind(qb, fanout)
                await ch.queue_bind(qa, topic, routing_key="*.error")
                await ch.queue_bind(qb, topic, routing_key="app.#")
                await ch.queue_bind(qc, topic, routing_key="#")

                await ch.basic_publish(b"d-red", exchange=direct, routing_key="red")
                await ch.basic_publish(b"d-green", exchange=direct, routing_key="green")
                await ch.basic_publish(b"d-blue", exchange=direct, routing_key="blue")
                await ch.basic_publish(b"f", exchange=fanout, routing_key="anything")
                await ch.basic_publish(b"t1", exchange=topic, routing_key="app.error")
                await ch.basic_publish(b"t2", exchange=topic, routing_key="app.db.info")
                await ch.basic_publish(b"t3", exchange=topic, routing_key="db.error")
                await ch.basic_publish(b"t4", exchange=topic, routing_key="app")
                await ch.basic_publish(b"t5", exchange=topic, routing_key="x.y.error")
                await ch.basic_publish(b"t6", exchange=topic, routing_key="")

                assert await get_bodies(ch, qa) == [b"d-red", b"f", b"t1", b"t3"]
                assert await get_bodies(ch, qb) == [b"d-green", b"f", b"t1", b"t2", b"t4"]
                assert await get_bodies(ch, qc) == [b"t1", b"t2", b"t3", b"t4", b"t5", b"t6"]
            finally:
                for exchange in (direct, fanout, topic):
                    await ch.exchange_delete(exchange)


# --------------------------------------------------------------------------- delivery


async def test_prefetch_applies_per_consumer(connect: Connect) -> None:
    with anyio.fail_after(TIMEOUT):
        async with channel(connect, publisher_confirms=True) as ch:
            q = await exclusive_queue(ch)
            await ch.basic_qos(prefetch_count=2)
            await publish_all(ch, q, [b"%d" % i for i in range(6)])
            async with ch.basic_consume(q) as first, ch.basic_consume(q) as second:
                got = [await first.__anext__(), await first.__anext__()]
                got += [await second.__anext__(), await second.__anext__()]
                assert sorted(m.body for m in got) == [b"0", b"1", b"2", b"3"]
                with anyio.move_on_after(SETTLE) as waited:
                    await first.__anext__()  # its two are unacknowledged: nothing more
                assert waited.cancelled_caught
                got[0].ack()
                more = await first.__anext__()
                assert more.body in (b"4", b"5")
                for message in [*got[1:], more]:
                    message.ack()


async def test_basic_get_counts_the_messages_left(connect: Connect) -> None:
    with anyio.fail_after(TIMEOUT):
        async with channel(connect, publisher_confirms=True) as ch:
            q = await exclusive_queue(ch)
            assert await ch.basic_get(q) is None
            await publish_all(ch, q, [b"a", b"b", b"c"])
            declared = await ch.queue_declare(q, passive=True)
            assert (declared.queue, declared.message_count, declared.consumer_count) == (q, 3, 0)
            first = await ch.basic_get(q)
            assert first is not None
            assert (first.body, first.message_count, first.redelivered) == (b"a", 2, False)
            assert (first.exchange, first.routing_key, first.consumer_tag) == ("", q, None)
            settled = [first.settled]
            first.ack()
            assert [*settled, first.settled] == [False, True]
            with pytest.raises(RuntimeError):
                first.ack()
            second = await ch.basic_get(q, no_ack=True)
            assert second is not None and second.message_count == 1 and second.settled
            assert await ch.queue_purge(q) == 1
            assert await ch.basic_get(q) is None


async def test_nack_requeues_at_the_original_position_flagged_redelivered(
    connect: Connect,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with channel(connect, publisher_confirms=True) as ch:
            q = await exclusive_queue(ch)
            await publish_all(ch, q, [b"1", b"2", b"3", b"4"])
            one, two = await wait_for(ch, q), await wait_for(ch, q)
            two.nack(requeue=True)
            one.reject(requeue=True)
            again = [await wait_for(ch, q) for _ in range(4)]
            assert [(m.body, m.redelivered) for m in again] == [
                (b"1", True),
                (b"2", True),
                (b"3", False),
                (b"4", False),
            ]
            again[0].nack(requeue=False)  # dropped (no dead-letter exchange)
            for message in again[1:]:
                message.ack()
            assert await ch.basic_get(q) is None


async def test_a_closed_channel_requeues_its_unacknowledged_messages(connect: Connect) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect() as conn, conn.channel(publisher_confirms=True) as ch:
            q = await exclusive_queue(ch)
            await publish_all(ch, q, [b"1", b"2", b"3"])
            async with (
                conn.channel(prefetch_count=2) as consuming,
                consuming.basic_consume(q) as consumer,
            ):
                first = await consumer.__anext__()
                second = await consumer.__anext__()
                assert (first.body, second.body) == (b"1", b"2")
                assert second.delivery_tag > first.delivery_tag  # the prefetch keeps "3" back
            with pytest.raises(ChannelClosed):
                second.ack()  # its channel is closed: the broker requeued it
            again = [await wait_for(ch, q) for _ in range(3)]
            assert [(m.body, m.redelivered) for m in again] == [
                (b"1", True),
                (b"2", True),
                (b"3", False),
            ]


async def test_deleting_a_queue_cancels_its_consumers(connect: Connect) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect() as conn, conn.channel() as ch, conn.channel() as other:
            q = await exclusive_queue(ch)
            async with ch.basic_consume(q) as consumer:
                assert consumer.consumer_tag.startswith("amq.ctag-")
                assert (await ch.queue_declare(q, passive=True)).consumer_count == 1
                assert await other.queue_delete(q) == 0
                with pytest.raises(ConsumerCancelled):
                    await consumer.__anext__()
            assert ch.is_open  # a cancelled consumer leaves its channel open
            assert await other.queue_delete(q) == 0  # deleting a missing queue is fine


# --------------------------------------------------------------------------- publishing


async def test_confirms(connect: Connect) -> None:
    with anyio.fail_after(TIMEOUT):
        async with channel(connect, publisher_confirms=True) as ch:
            assert ch.publisher_confirms
            q = await exclusive_queue(ch)
            await ch.basic_publish(b"waited", routing_key=q)
            results: list[BaseException | None] = []
            confirmed = anyio.Event()

            def on_confirm(error: BaseException | None) -> None:
                results.append(error)
                if len(results) == 2:
                    confirmed.set()

            ch.publish_nowait(b"queued", routing_key=q, on_confirm=on_confirm)
            ch.publish_nowait(bytearray(b"copied"), routing_key=q, on_confirm=on_confirm)
            await confirmed.wait()
            assert results == [None, None]
            assert await get_bodies(ch, q) == [b"waited", b"queued", b"copied"]


async def test_mandatory_unroutable_is_returned_on_a_confirm_channel(connect: Connect) -> None:
    with anyio.fail_after(TIMEOUT):
        async with channel(connect, publisher_confirms=True) as ch:
            exchange = unique("x")
            await ch.exchange_declare(exchange, "direct", auto_delete=True)
            try:
                with pytest.raises(MessageReturned) as info:
                    await ch.basic_publish(b"m", exchange=exchange, routing_key="k", mandatory=True)
                assert (info.value.reply_code, info.value.reply_text) == (312, "NO_ROUTE")
                assert (info.value.exchange, info.value.routing_key) == (exchange, "k")
                await ch.basic_publish(b"not mandatory", exchange=exchange, routing_key="k")
                errors: list[BaseException | None] = []
                done = anyio.Event()

                def on_confirm(error: BaseException | None) -> None:
                    errors.append(error)
                    done.set()

                ch.publish_nowait(b"m", routing_key=unique(), mandatory=True, on_confirm=on_confirm)
                await done.wait()
                assert isinstance(errors[0], MessageReturned)
                assert ch.is_open
            finally:
                await ch.exchange_delete(exchange)


# --------------------------------------------------------------------------- refusals


async def refused(
    ch: Channel, code: int, operation: Callable[[], Awaitable[object]]
) -> ChannelClosed:
    """Await ``operation()``: it must close ``ch`` with ``code``."""
    with pytest.raises(ChannelClosed) as info:
        await operation()
    assert info.value.reply_code == code, info.value
    assert not ch.is_open
    assert ch.close_reason is not None and ch.close_reason.reply_code == code
    return info.value


async def test_missing_queue_or_exchange_is_404(connect: Connect) -> None:
    missing = unique("missing")
    with anyio.fail_after(TIMEOUT):
        async with connect() as conn:
            async with conn.channel() as ch:
                error = await refused(ch, 404, lambda: ch.queue_declare(missing, passive=True))
                assert error.reply_text.startswith("NOT_FOUND - no queue")
            async with conn.channel() as ch:
                await refused(ch, 404, lambda: ch.exchange_declare(missing, passive=True))
            async with conn.channel() as ch:
                await refused(ch, 404, lambda: ch.basic_get(missing))
            async with conn.channel() as ch:
                await refused(ch, 404, lambda: ch.basic_consume(missing).start())
            async with conn.channel() as ch:
                q = await exclusive_queue(ch)
                await refused(ch, 404, lambda: ch.queue_bind(q, missing))
            async with conn.channel(publisher_confirms=True) as ch:
                await refused(ch, 404, lambda: ch.basic_publish(b"m", exchange=missing))
            async with conn.channel() as ch:  # without confirms: the next operation raises
                await ch.basic_publish(b"m", exchange=missing)
                await refused(ch, 404, lambda: ch.queue_declare(unique(), exclusive=True))
            async with conn.channel() as ch:
                await ch.exchange_delete(missing)  # deleting a missing exchange is fine
                assert ch.is_open and conn.is_open  # the connection stays usable


async def test_another_connections_exclusive_queue_is_405(connect: Connect) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect() as owner, owner.channel() as mine:
            q = await exclusive_queue(mine)
            async with connect() as other:
                async with other.channel() as ch:
                    error = await refused(ch, 405, lambda: ch.queue_declare(q, passive=True))
                    assert error.reply_text.startswith("RESOURCE_LOCKED")
                async with other.channel() as ch:
                    await refused(ch, 405, lambda: ch.basic_consume(q).start())
                async with other.channel() as ch:
                    await refused(ch, 405, lambda: ch.queue_declare(q, exclusive=True))
            await mine.queue_declare(q, passive=True)  # its owner still has it
        async with connect() as other, other.channel() as ch:  # gone with its connection
            await refused(ch, 404, lambda: ch.queue_declare(q, passive=True))


async def test_inequivalent_redeclare_is_406(connect: Connect) -> None:
    exchange = unique("x")
    with anyio.fail_after(TIMEOUT):
        async with connect() as conn:
            async with conn.channel() as ch:
                q = await exclusive_queue(ch)
                await ch.queue_declare(q, exclusive=True)  # the same again is fine
                error = await refused(
                    ch,
                    406,
                    lambda: ch.queue_declare(q, exclusive=True, arguments={"x-max-length": 5}),
                )
                assert "inequivalent arg 'x-max-length'" in error.reply_text
            async with conn.channel() as ch:
                await ch.exchange_declare(exchange, "direct")
                try:
                    async with conn.channel() as again:
                        error = await refused(
                            again, 406, lambda: again.exchange_declare(exchange, "fanout")
                        )
                        assert error.reply_text.startswith("PRECONDITION_FAILED - inequivalent")
                finally:
                    await ch.exchange_delete(exchange)


async def test_an_exclusive_consumer_is_alone_on_its_queue_403(connect: Connect) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect() as conn, conn.channel() as ch:
            q = await exclusive_queue(ch)
            async with ch.basic_consume(q, exclusive=True), conn.channel() as other:
                error = await refused(other, 403, lambda: other.basic_consume(q).start())
                assert error.reply_text.startswith("ACCESS_REFUSED")
            # a consumed queue takes no exclusive consumer
            async with conn.channel() as other, other.basic_consume(q), conn.channel() as third:
                await refused(third, 403, lambda: third.basic_consume(q, exclusive=True).start())


async def test_a_transient_non_exclusive_queue_is_541_on_rabbitmq_4_3(connect4: Connect) -> None:
    # RabbitMQ 4 closes the whole connection with 541; memory:// only the channel (a documented
    # difference, as for its other connection errors)
    errors: list[ChannelClosed | ConnectionClosed] = []
    with anyio.fail_after(TIMEOUT):
        try:
            async with connect4() as conn, conn.channel() as ch:
                try:
                    await ch.queue_declare(unique(), auto_delete=True)
                except ChannelClosed as exc:
                    errors.append(exc)
                assert not ch.is_open
        except ConnectionClosed as exc:
            errors.append(exc)
    assert errors and errors[-1].reply_code == 541
    assert "transient_nonexcl_queues" in errors[-1].reply_text


async def test_global_qos_is_applied_per_consumer_on_rabbitmq_4_3(
    connect4: Connect, request: pytest.FixtureRequest
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect4() as conn, conn.channel(publisher_confirms=True) as ch:
            q = await exclusive_queue(ch)
            await ch.basic_qos(prefetch_count=1, global_=True)
            await publish_all(ch, q, [b"1", b"2", b"3"])
            async with ch.basic_consume(q) as first, ch.basic_consume(q) as second:
                got = [await first.__anext__(), await second.__anext__()]
                assert sorted(m.body for m in got) == [b"1", b"2"]
                for message in got:
                    message.ack()


async def test_a_message_over_16_mib_is_406_on_rabbitmq_4(connect4: Connect) -> None:
    with anyio.fail_after(TIMEOUT * 3):
        async with connect4() as conn:
            async with conn.channel(publisher_confirms=True) as ch:
                q = await exclusive_queue(ch)
                await ch.basic_publish(b"x" * (16 * MiB), routing_key=q)  # the limit itself
                error = await refused(ch, 406, lambda: ch.basic_publish(b"x" * (16 * MiB + 1)))
                assert error.reply_text == (
                    f"PRECONDITION_FAILED - message size {16 * MiB + 1} is larger than "
                    f"configured max size {16 * MiB}"
                )
            async with conn.channel() as ch:
                message = await ch.basic_get(q)
                assert message is not None and len(message.body) == 16 * MiB
                message.ack()


async def test_an_unknown_delivery_tag_is_406(connect: Connect) -> None:
    async def ack_then_declare(ch: Channel) -> None:
        ch.basic_ack(999)  # memory:// raises here; RabbitMQ at the next operation
        await ch.queue_declare(unique(), exclusive=True)

    with anyio.fail_after(TIMEOUT):
        async with connect() as conn, conn.channel() as ch:
            error = await refused(ch, 406, lambda: ack_then_declare(ch))
            assert error.reply_text == "PRECONDITION_FAILED - unknown delivery tag 999"


async def test_server_named_exclusive_and_auto_delete_queues(connect: Connect) -> None:
    durable = unique("auto-delete")
    with anyio.fail_after(TIMEOUT):
        async with connect() as conn, conn.channel(publisher_confirms=True) as ch:
            named = await ch.queue_declare("", exclusive=True)
            assert str(named.queue).startswith("amq.gen-")
            await ch.basic_publish(b"m", routing_key=str(named.queue))
            message = await wait_for(ch, "")  # "": the channel's last declared queue
            assert message.body == b"m"
            message.ack()
            await ch.queue_declare(durable, durable=True, auto_delete=True)
            try:
                await ch.basic_publish(b"m", routing_key=durable)
                with pytest.raises(ChannelClosed) as info:
                    async with conn.channel() as other:
                        await other.queue_delete(durable, if_empty=True)
                assert info.value.reply_code == 406
                async with ch.basic_consume(durable) as consumer:
                    (await consumer.__anext__()).ack()
                # its last consumer gone, an auto-delete queue is deleted
                async with conn.channel() as other:
                    await refused(other, 404, lambda: other.queue_declare(durable, passive=True))
            finally:
                async with conn.channel() as other:
                    await other.queue_delete(durable)

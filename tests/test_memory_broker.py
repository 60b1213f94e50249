"""The in-process ``memory://`` broker (kiwi_anyio.memory), on asyncio and trio.

No RabbitMQ: every test uses a broker of its own name, forgotten afterwards.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.to_thread
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kiwi_anyio
from kiwi_anyio import (
    BroadcastFilter,
    ChannelClosed,
    ConsumerCancelled,
    DuplicateSubscriberIdentifier,
    MessageReturned,
    RemoteException,
    UnroutableError,
    memory,
)
from kiwi_anyio.memory import MemoryChannel, MemoryConnection, MemoryConsumer, MemoryMessage
from kiwi_anyio.protocol import Properties

pytestmark = pytest.mark.anyio

TIMEOUT = 10

Operation = Callable[[MemoryChannel], Awaitable[object]]


@pytest.fixture
def name() -> Iterator[str]:
    """A broker name of this test's own, forgotten afterwards."""
    broker = f"test-{uuid.uuid4().hex[:12]}"
    yield broker
    memory.reset(broker)


@pytest.fixture
async def conn(name: str) -> AsyncIterator[MemoryConnection]:
    async with memory.connect(name) as connection:
        yield connection


@pytest.fixture
async def ch(conn: MemoryConnection) -> AsyncIterator[MemoryChannel]:
    async with conn.channel(publisher_confirms=True) as channel:
        yield channel


async def bodies(ch: MemoryChannel, queue: str) -> list[bytes]:
    """Take every ready message of ``queue`` with ``basic_get`` (no ack)."""
    out = []
    while (message := await ch.basic_get(queue, no_ack=True)) is not None:
        out.append(message.body)
    return out


async def gets(ch: MemoryChannel, queue: str) -> list[MemoryMessage]:
    """Take every ready message of ``queue`` with ``basic_get`` (to be acknowledged)."""
    out = []
    while (message := await ch.basic_get(queue)) is not None:
        out.append(message)
    return out


async def receive(consumer: MemoryConsumer, count: int) -> list[MemoryMessage]:
    out = []
    async for message in consumer:
        out.append(message)
        if len(out) == count:
            break
    return out


async def nothing_more(consumer: MemoryConsumer) -> None:
    """Assert that the consumer has nothing more to give right now."""
    with anyio.move_on_after(0.05):
        message = await consumer.__anext__()
        pytest.fail(f"unexpected {message!r}")


async def ready(ch: MemoryChannel, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of a queue."""
    ok = await ch.queue_declare(queue, passive=True)
    return int(ok.message_count or 0), int(ok.consumer_count or 0)


def is_open(obj: MemoryChannel | MemoryConnection) -> bool:
    """``obj.is_open``, read through a call so that mypy does not narrow it."""
    return obj.is_open


def settled(message: MemoryMessage) -> bool:
    return message.settled


# ---------------------------------------------------------------- connections


async def test_connection_basics(name: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with memory.connect(f"memory://{name}") as conn:
            assert conn.is_open
            assert conn.name == name
            assert conn.server_properties["product"] == "kiwi_anyio memory broker"
            assert conn.server_properties["version"] == kiwi_anyio.__version__
            assert str(conn.server_properties["platform"]).startswith("Python")
            ch = await conn.channel()
            assert ch.is_open and ch.number == 1
            async with conn.channel(prefetch_count=3) as ch2:
                assert ch2.number == 2
            assert not is_open(ch2)
            await ch.aclose()
            assert not is_open(ch)
            assert ch.close_reason is not None and ch.close_reason.reply_code == 200
            with pytest.raises(ChannelClosed):
                await ch.queue_declare("q", durable=True)
        assert not is_open(conn)
        await conn.wait_closed()


async def test_not_durable_is_logged_once(name: str, caplog: pytest.LogCaptureFixture) -> None:
    memory._announced = False
    with anyio.fail_after(TIMEOUT), caplog.at_level(logging.INFO, logger="kiwi_anyio.memory"):
        async with memory.connect(name), memory.connect(name + "-2"):
            pass
    memory.reset(name + "-2")
    notes = [r for r in caplog.records if "not durable" in r.getMessage()]
    assert len(notes) == 1
    assert notes[0].levelno == logging.INFO


async def test_same_name_shared_other_name_separate(name: str) -> None:
    other = name + "-other"
    try:
        with anyio.fail_after(TIMEOUT):
            async with (
                memory.connect(name) as a,
                memory.connect(name) as b,
                memory.connect(other) as c,
            ):
                cha, chb, chc = await a.channel(), await b.channel(), await c.channel()
                await cha.queue_declare("shared", durable=True)
                await cha.basic_publish(b"x", routing_key="shared")
                assert await bodies(chb, "shared") == [b"x"]
                with pytest.raises(ChannelClosed) as info:
                    await chc.queue_declare("shared", passive=True)
                assert info.value.reply_code == 404
            # the state outlives the connections
            async with memory.connect(name) as d:
                ch = await d.channel()
                assert await ready(ch, "shared") == (0, 0)
            memory.reset(name)
            async with memory.connect(name) as e:
                ch = await e.channel()
                with pytest.raises(ChannelClosed, match="404"):
                    await ch.queue_declare("shared", passive=True)
    finally:
        memory.reset(other)


async def test_one_event_loop_per_broker(conn: MemoryConnection, name: str) -> None:
    def other_loop() -> None:
        async def main() -> None:
            async with memory.connect(name):
                pass

        anyio.run(main)

    with anyio.fail_after(TIMEOUT), pytest.raises(RuntimeError, match="another event loop"):
        await anyio.to_thread.run_sync(other_loop)


# ---------------------------------------------------------------- routing


async def test_topic_routing(ch: MemoryChannel) -> None:
    patterns = {
        "star": "a.*",
        "hash": "a.#",
        "all": "#",
        "mid": "*.b.*",
        "exact": "a.b",
        "tail": "#.z",
        "two": "*.*",
    }
    with anyio.fail_after(TIMEOUT):
        await ch.exchange_declare("topics", "topic")
        for queue, pattern in patterns.items():
            await ch.queue_declare(queue, durable=True)
            await ch.queue_bind(queue, "topics", routing_key=pattern)
        for key in ["a", "a.b", "a.b.c", "x.b.y", "z", "a.z", "q.r.s.z", ""]:
            await ch.basic_publish(key.encode(), exchange="topics", routing_key=key)
        got = {queue: await bodies(ch, queue) for queue in patterns}
    assert got == {
        "star": [b"a.b", b"a.z"],
        "hash": [b"a", b"a.b", b"a.b.c", b"a.z"],
        "all": [b"a", b"a.b", b"a.b.c", b"x.b.y", b"z", b"a.z", b"q.r.s.z", b""],
        "mid": [b"a.b.c", b"x.b.y"],
        "exact": [b"a.b"],
        "tail": [b"z", b"a.z", b"q.r.s.z"],
        "two": [b"a.b", b"a.z"],
    }


def reference_topic_match(pattern: list[str], words: list[str]) -> bool:
    """AMQP topic matching, written recursively from its definition."""
    if not pattern:
        return not words
    if pattern[0] == "#":
        return reference_topic_match(pattern[1:], words) or (
            bool(words) and reference_topic_match(pattern, words[1:])
        )
    if not words:
        return False
    return pattern[0] in ("*", words[0]) and reference_topic_match(pattern[1:], words[1:])


@given(
    st.lists(st.sampled_from(["a", "b", "*", "#"]), max_size=6),
    st.lists(st.sampled_from(["a", "b", "c"]), max_size=6),
)
def test_topic_matching_agrees_with_its_definition(pattern: list[str], words: list[str]) -> None:
    assert memory._topic_matches(".".join(pattern), ".".join(words)) == reference_topic_match(
        pattern, words
    )


async def test_direct_fanout_and_default_exchange(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.exchange_declare("direct")
        await ch.exchange_declare("fan", "fanout")
        for queue in ("q1", "q2"):
            await ch.queue_declare(queue, durable=True)
            await ch.queue_bind(queue, "fan", routing_key="ignored")
        await ch.queue_bind("q1", "direct", routing_key="one")
        await ch.queue_bind("q2", "direct", routing_key="two")
        await ch.queue_bind("q2", "direct", routing_key="two")  # idempotent
        await ch.basic_publish(b"d1", exchange="direct", routing_key="one")
        await ch.basic_publish(b"d2", exchange="direct", routing_key="two")
        await ch.basic_publish(b"dx", exchange="direct", routing_key="one.x")
        await ch.basic_publish(b"f", exchange="fan", routing_key="anything")
        await ch.basic_publish(b"default", routing_key="q1")
        assert await bodies(ch, "q1") == [b"d1", b"f", b"default"]
        assert await bodies(ch, "q2") == [b"d2", b"f"]
        await ch.queue_unbind("q2", "fan", routing_key="ignored")
        await ch.basic_publish(b"f2", exchange="fan")
        assert await bodies(ch, "q1") == [b"f2"]
        assert await bodies(ch, "q2") == []


async def test_message_attributes_and_body_copy(ch: MemoryChannel) -> None:
    body = bytearray(b"abc")
    props = Properties(correlation_id="c1", reply_to="r", content_type="text/plain")
    with anyio.fail_after(TIMEOUT):
        await ch.exchange_declare("x", "topic")
        await ch.queue_declare("q", durable=True)
        await ch.queue_bind("q", "x", routing_key="k.#")
        await ch.basic_publish(body, exchange="x", routing_key="k.1", properties=props)
        body[0] = ord("z")
        message = await ch.basic_get("q")
        assert message is not None
        assert message.body == b"abc" and isinstance(message.body, bytes)
        assert message.properties.correlation_id == "c1"
        assert message.properties.reply_to == "r"
        assert (message.exchange, message.routing_key) == ("x", "k.1")
        assert message.consumer_tag is None
        assert message.message_count == 0
        assert not message.redelivered and not settled(message) and message.channel is ch
        message.ack()
        assert settled(message)
        with pytest.raises(TypeError):
            await ch.basic_publish("text", routing_key="q")  # type: ignore[arg-type]


async def test_exchange_to_exchange_binding(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.exchange_declare("front", "topic")
        await ch.exchange_declare("back", "fanout")
        await ch.exchange_bind("back", "front", routing_key="orders.*")
        await ch.exchange_bind("front", "back")  # a cycle delivers once
        await ch.queue_declare("q", durable=True)
        await ch.queue_bind("q", "back")
        await ch.basic_publish(b"1", exchange="front", routing_key="orders.new")
        await ch.basic_publish(b"2", exchange="front", routing_key="invoices.new")
        assert await bodies(ch, "q") == [b"1"]
        await ch.exchange_unbind("back", "front", routing_key="orders.*")
        await ch.basic_publish(b"3", exchange="front", routing_key="orders.new")
        assert await bodies(ch, "q") == []


async def test_mandatory_unroutable_raises(ch: MemoryChannel, conn: MemoryConnection) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.exchange_declare("x", "topic")
        with pytest.raises(MessageReturned) as info:
            await ch.basic_publish(b"m", exchange="x", routing_key="nobody", mandatory=True)
        assert isinstance(info.value, UnroutableError)
        assert (info.value.reply_code, info.value.reply_text) == (312, "NO_ROUTE")
        assert (info.value.exchange, info.value.routing_key) == ("x", "nobody")
        with pytest.raises(MessageReturned):
            await ch.basic_publish(b"m", routing_key="no-such-queue", mandatory=True)
        assert ch.is_open
        await ch.basic_publish(b"m", exchange="x", routing_key="nobody")  # dropped quietly
        plain = await conn.channel()  # without confirms the return is only logged
        await plain.basic_publish(b"m", exchange="x", routing_key="nobody", mandatory=True)
        assert plain.is_open


async def test_publish_to_missing_exchange_closes_the_channel(
    ch: MemoryChannel, conn: MemoryConnection
) -> None:
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(ChannelClosed) as info:
            await ch.basic_publish(b"m", exchange="missing", routing_key="k")
        assert info.value.reply_code == 404
        assert "no exchange 'missing'" in info.value.reply_text
        assert not ch.is_open and ch.close_reason is info.value
        with pytest.raises(ChannelClosed):
            await ch.basic_publish(b"m", routing_key="k")
        plain = await conn.channel()  # no confirms: as RabbitMQ, the next operation raises
        await plain.basic_publish(b"m", exchange="missing")
        assert not plain.is_open
        with pytest.raises(ChannelClosed, match="404"):
            await plain.queue_declare("q", durable=True)
        assert conn.is_open  # the connection is fine
        fresh = await conn.channel()
        await fresh.queue_declare("q", durable=True)


# ---------------------------------------------------------------- declarations


async def test_redeclare_mismatch_is_406_and_closes_the_channel(
    conn: MemoryConnection,
) -> None:
    with anyio.fail_after(TIMEOUT):
        ch = await conn.channel()
        await ch.exchange_declare("x", "topic")
        await ch.exchange_declare("x", "topic")  # the same: fine
        with pytest.raises(ChannelClosed) as info:
            await ch.exchange_declare("x", "direct")
        assert info.value.reply_code == 406
        assert "inequivalent arg 'type'" in info.value.reply_text
        assert not ch.is_open

        ch = await conn.channel()
        await ch.queue_declare("q", durable=True, arguments={"x-message-ttl": 1000})
        await ch.queue_declare("q", durable=True, arguments={"x-message-ttl": 1000})
        for kwargs in (
            {"durable": False, "arguments": {"x-message-ttl": 1000}},
            {"durable": True, "arguments": {"x-message-ttl": 2000}},
            {"durable": True},
            {"durable": True, "auto_delete": True, "arguments": {"x-message-ttl": 1000}},
        ):
            with pytest.raises(ChannelClosed) as info:
                await ch.queue_declare("q", **kwargs)
            assert info.value.reply_code == 406
            assert not ch.is_open
            ch = await conn.channel()
        # arguments RabbitMQ does not compare are ignored
        await ch.queue_declare(
            "q", durable=True, arguments={"x-message-ttl": 1000, "x-custom": "a"}
        )


async def test_passive_declare_and_missing_resources_are_404(ch: MemoryChannel) -> None:
    conn = ch._connection
    with anyio.fail_after(TIMEOUT):
        operations: list[Operation] = [
            lambda c: c.queue_declare("nope", passive=True),
            lambda c: c.exchange_declare("nope", passive=True),
            lambda c: c.queue_bind("nope", "amq.topic"),
            lambda c: c.basic_get("nope"),
            lambda c: c.queue_purge("nope"),
            lambda c: c.basic_consume("nope").start(),
        ]
        for operation in operations:
            channel = await conn.channel()
            with pytest.raises(ChannelClosed) as info:
                await operation(channel)
            assert info.value.reply_code == 404
            assert not channel.is_open
        channel = await conn.channel()
        await channel.queue_declare("q", durable=True)
        with pytest.raises(ChannelClosed, match="404"):
            await channel.queue_bind("q", "no-exchange")
        channel = await conn.channel()
        assert await channel.queue_delete("never-existed") == 0  # idempotent
        await channel.exchange_delete("never-existed")


async def test_reserved_names_and_default_exchange_are_403(conn: MemoryConnection) -> None:
    with anyio.fail_after(TIMEOUT):
        operations: list[Operation] = [
            lambda c: c.queue_declare("amq.mine", durable=True),
            lambda c: c.exchange_declare("amq.mine", "topic"),
            lambda c: c.exchange_declare("", "direct"),
            lambda c: c.queue_bind("q", ""),
            lambda c: c.exchange_delete("amq.topic"),
        ]
        for operation in operations:
            channel = await conn.channel()
            await channel.queue_declare("q", durable=True)
            with pytest.raises(ChannelClosed) as info:
                await operation(channel)
            assert info.value.reply_code == 403
        channel = await conn.channel()
        await channel.exchange_declare("amq.topic", "topic", durable=True)  # exists: fine
        await channel.exchange_declare("amq.fanout", passive=True)


async def test_unknown_exchange_type(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT), pytest.raises(ChannelClosed) as info:
        await ch.exchange_declare("h", "headers")
    assert info.value.reply_code == 503


async def test_server_named_queue(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        ok = await ch.queue_declare("", exclusive=True)
        assert ok.queue is not None and ok.queue.startswith("amq.gen-")
        assert (ok.message_count, ok.consumer_count) == (0, 0)
        other = (await ch.queue_declare(durable=True)).queue
        assert other is not None and other != ok.queue
        # the empty name means the last declared queue
        await ch.basic_publish(b"1", routing_key=other)
        assert (await ch.queue_declare("", passive=True)).message_count == 1
        await ch.queue_bind("", "amq.direct")  # routing key: the queue's name
        await ch.basic_publish(b"2", exchange="amq.direct", routing_key=other)
        assert await bodies(ch, "") == [b"1", b"2"]


async def test_purge_and_delete_counts(ch: MemoryChannel, conn: MemoryConnection) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.queue_declare("q", durable=True)
        for i in range(3):
            await ch.basic_publish(b"%d" % i, routing_key="q")
        held = await ch.basic_get("q")
        assert held is not None and held.message_count == 2
        assert await ready(ch, "q") == (2, 0)
        assert await ch.queue_purge("q") == 2
        assert await ready(ch, "q") == (0, 0)
        held.nack(requeue=True)  # unacked messages are not purged
        assert await ready(ch, "q") == (1, 0)
        await ch.basic_publish(b"x", routing_key="q")
        with pytest.raises(ChannelClosed, match="406"):
            await ch.queue_delete("q", if_empty=True)
        ch = await conn.channel()
        async with ch.basic_consume("q") as _:
            with pytest.raises(ChannelClosed, match="406"):
                await ch.queue_delete("q", if_unused=True)
        ch = await conn.channel()
        assert await ch.queue_delete("q") == 2
        with pytest.raises(ChannelClosed, match="404"):
            await ch.queue_declare("q", passive=True)


async def test_delete_queue_cancels_its_consumers(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.queue_declare("q", durable=True)
        await ch.basic_publish(b"1", routing_key="q")
        async with ch.basic_consume("q") as consumer:
            [message] = await receive(consumer, 1)
            await ch.queue_delete("q")
            with pytest.raises(ConsumerCancelled):
                await consumer.__anext__()
            message.ack()  # acking a message of a deleted queue is fine
        assert ch.is_open


async def test_auto_delete_queue_and_exchange(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.exchange_declare("ad", "topic", auto_delete=True)
        await ch.queue_declare("q", durable=True, auto_delete=True)
        await ch.queue_declare("keep", durable=True)
        await ch.queue_bind("q", "ad", routing_key="#")
        await ch.queue_bind("keep", "ad", routing_key="k")
        async with ch.basic_consume("q"):
            pass
        with pytest.raises(ChannelClosed, match="404"):  # its last consumer went
            await ch.queue_declare("q", passive=True)
        ch = await ch._connection.channel()
        await ch.exchange_declare("ad", passive=True)  # "keep" is still bound
        await ch.queue_unbind("keep", "ad", routing_key="k")
        with pytest.raises(ChannelClosed, match="404"):  # its last binding went
            await ch.exchange_declare("ad", passive=True)


async def test_exchange_delete(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.exchange_declare("x", "fanout")
        await ch.queue_declare("q", durable=True)
        await ch.queue_bind("q", "x")
        with pytest.raises(ChannelClosed, match="406"):
            await ch.exchange_delete("x", if_unused=True)
        ch = await ch._connection.channel()
        await ch.exchange_delete("x")
        await ch.exchange_declare("x", "fanout")
        await ch.basic_publish(b"m", exchange="x")
        assert await bodies(ch, "q") == []  # its bindings went with it


# ---------------------------------------------------------------- exclusive queues


async def test_exclusive_queue_of_another_connection_is_405(name: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with memory.connect(name) as owner, memory.connect(name) as other:
            mine = await owner.channel()
            await mine.queue_declare("ex", exclusive=True)
            await mine.queue_declare("ex", exclusive=True)  # the owner may redeclare
            operations: list[Operation] = [
                lambda c: c.queue_declare("ex", exclusive=True),
                lambda c: c.queue_declare("ex", durable=True),
                lambda c: c.queue_declare("ex", passive=True),
                lambda c: c.queue_bind("ex", "amq.topic", routing_key="#"),
                lambda c: c.basic_consume("ex").start(),
                lambda c: c.basic_get("ex"),
                lambda c: c.queue_purge("ex"),
                lambda c: c.queue_delete("ex"),
            ]
            for operation in operations:
                theirs = await other.channel()
                with pytest.raises(ChannelClosed) as info:
                    await operation(theirs)
                assert info.value.reply_code == 405
                assert "RESOURCE_LOCKED" in info.value.reply_text
                assert not theirs.is_open
            theirs = await other.channel()
            await theirs.basic_publish(b"hi", routing_key="ex")  # publishing is allowed
            assert await bodies(mine, "ex") == [b"hi"]
            with pytest.raises(ChannelClosed, match="405"):  # not exclusive → locked
                await mine.queue_declare("ex", durable=True)
            await owner.aclose()
            theirs = await other.channel()
            with pytest.raises(ChannelClosed, match="404"):  # deleted with its connection
                await theirs.queue_declare("ex", passive=True)


async def test_exclusive_consumer(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.queue_declare("q", durable=True)
        async with ch.basic_consume("q", exclusive=True):
            other = await ch._connection.channel()
            with pytest.raises(ChannelClosed, match="403"):
                await other.basic_consume("q").start()
        other = await ch._connection.channel()
        async with other.basic_consume("q"):
            with pytest.raises(ChannelClosed, match="403"):
                await ch.basic_consume("q", exclusive=True).start()


# ---------------------------------------------------------------- consumers and acks


async def test_consume_and_consumer_tags(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.queue_declare("q", durable=True)
        await ch.basic_publish(b"1", routing_key="q")
        async with ch.basic_consume("q") as consumer:
            assert consumer.consumer_tag.startswith("amq.ctag-")
            [message] = await receive(consumer, 1)
            assert message.body == b"1" and message.consumer_tag == consumer.consumer_tag
            assert message.message_count is None and not message.redelivered
            message.ack()
            with pytest.raises(RuntimeError, match="already acknowledged"):
                message.ack()
        async with ch.basic_consume("q", consumer_tag="mine") as consumer:
            assert consumer.consumer_tag == "mine"
            with pytest.raises(ChannelClosed) as info:
                await ch.basic_consume("q", consumer_tag="mine").start()
            assert info.value.reply_code == 530
            with pytest.raises(ChannelClosed):  # the channel closed under the consumer
                await consumer.__anext__()


async def test_no_ack_consumer(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.basic_qos(1)
        await ch.queue_declare("q", durable=True)
        for i in range(3):
            await ch.basic_publish(b"%d" % i, routing_key="q")
        async with ch.basic_consume("q", no_ack=True) as consumer:
            messages = await receive(consumer, 3)  # prefetch does not apply
            assert all(m.settled and m.no_ack for m in messages)
            with pytest.raises(RuntimeError):
                messages[0].ack()
        assert await ready(ch, "q") == (0, 0)


async def test_prefetch_limits_deliveries_until_acked(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.basic_qos(2)
        await ch.queue_declare("q", durable=True)
        for i in range(5):
            await ch.basic_publish(b"%d" % i, routing_key="q")
        async with ch.basic_consume("q") as consumer:
            first = await receive(consumer, 2)
            assert [m.body for m in first] == [b"0", b"1"]
            await nothing_more(consumer)
            assert await ready(ch, "q") == (3, 1)
            first[0].ack()
            [third] = await receive(consumer, 1)
            assert third.body == b"2"
            await nothing_more(consumer)
            ch.basic_ack(third.delivery_tag, multiple=True)  # acks "1" too
            rest = await receive(consumer, 2)
            assert [m.body for m in rest] == [b"3", b"4"]
            for m in rest:
                m.ack()


async def test_prefetch_applies_to_later_consumers_and_zero_is_unlimited(
    ch: MemoryChannel,
) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.queue_declare("q", durable=True)
        for i in range(4):
            await ch.basic_publish(b"%d" % i, routing_key="q")
        async with ch.basic_consume("q") as unlimited:
            await ch.basic_qos(1)  # does not change the running consumer
            assert len(await receive(unlimited, 4)) == 4
        await ch.basic_publish(b"x", routing_key="q")
        assert await ready(ch, "q") == (1, 0)  # the four taken are still unacked
        other = await ch._connection.channel()
        await ch.aclose()
        assert await ready(other, "q") == (5, 0)  # and went back with their channel


async def test_global_prefetch_is_per_consumer_as_on_rabbitmq_4_3(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.basic_qos(1, global_=True)
        for queue in ("a", "b"):
            await ch.queue_declare(queue, durable=True)
            for i in range(2):
                await ch.basic_publish(b"%s%d" % (queue.encode(), i), routing_key=queue)
        async with ch.basic_consume("a") as ca, ch.basic_consume("b") as cb:
            [from_a] = await receive(ca, 1)
            [from_b] = await receive(cb, 1)  # a channel-wide limit of 1 would hold this back
            assert (from_a.body, from_b.body) == (b"a0", b"b0")
            await nothing_more(ca)
            from_a.ack()
            [again] = await receive(ca, 1)
            assert again.body == b"a1"


async def test_transient_non_exclusive_queue_is_refused_as_on_rabbitmq_4_3(
    conn: MemoryConnection,
) -> None:
    with anyio.fail_after(TIMEOUT):
        for auto_delete in (False, True):
            async with conn.channel() as channel:
                with pytest.raises(ChannelClosed, match="transient_nonexcl_queues") as info:
                    await channel.queue_declare("q", auto_delete=auto_delete)
                assert info.value.reply_code == 541
                assert not is_open(channel)
        async with conn.channel() as channel:
            await channel.queue_declare("durable", durable=True, arguments={"x-expires": 1000})
            await channel.queue_declare("exclusive", exclusive=True)
            await channel.queue_declare("", exclusive=True)


async def test_basic_get(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.queue_declare("q", durable=True)
        assert await ch.basic_get("q") is None
        await ch.basic_publish(b"1", routing_key="q")
        await ch.basic_publish(b"2", routing_key="q")
        first = await ch.basic_get("q")
        assert first is not None and first.body == b"1" and first.message_count == 1
        second = await ch.basic_get("q", no_ack=True)
        assert second is not None and second.settled and second.message_count == 0
        assert await ch.basic_get("q") is None
        first.reject(requeue=True)
        again = await ch.basic_get("q")
        assert again is not None and again.body == b"1" and again.redelivered
        again.reject(requeue=False)
        assert await ready(ch, "q") == (0, 0)


async def test_nack_and_reject_requeue_to_the_front(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.queue_declare("q", durable=True)
        for i in range(4):
            await ch.basic_publish(b"%d" % i, routing_key="q")
        m0, m1 = await ch.basic_get("q"), await ch.basic_get("q")
        assert m0 is not None and m1 is not None
        m1.nack()
        m0.reject()
        assert [(m.body, m.redelivered) for m in await gets(ch, "q")] == [
            (b"0", True),
            (b"1", True),
            (b"2", False),
            (b"3", False),
        ]


async def test_requeued_message_is_the_consumers_next(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.basic_qos(1)
        await ch.queue_declare("q", durable=True)
        for i in range(3):
            await ch.basic_publish(b"%d" % i, routing_key="q")
        async with ch.basic_consume("q") as consumer:
            [first] = await receive(consumer, 1)
            first.nack(requeue=True)
            [again] = await receive(consumer, 1)
            assert (again.body, again.redelivered) == (b"0", True)
            again.reject(requeue=False)  # dropped
            rest = await receive(consumer, 1)
            assert [(m.body, m.redelivered) for m in rest] == [(b"1", False)]
            rest[0].ack()


async def test_nack_multiple_and_drop(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.queue_declare("q", durable=True)
        for i in range(4):
            await ch.basic_publish(b"%d" % i, routing_key="q")
        got = [await ch.basic_get("q") for _ in range(4)]
        tags = [m.delivery_tag for m in got if m is not None]
        ch.basic_nack(tags[1], multiple=True, requeue=True)  # "0" and "1" back
        ch.basic_nack(tags[2], requeue=False)  # "2" dropped
        assert await ready(ch, "q") == (2, 0)
        ch.basic_ack(0, multiple=True)  # everything outstanding: "3"
        assert await bodies(ch, "q") == [b"0", b"1"]


async def test_unknown_delivery_tag_is_406(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.queue_declare("q", durable=True)
        await ch.basic_publish(b"1", routing_key="q")
        message = await ch.basic_get("q")
        assert message is not None
        with pytest.raises(ChannelClosed) as info:
            ch.basic_ack(message.delivery_tag + 10)
        assert info.value.reply_code == 406
        assert "unknown delivery tag" in info.value.reply_text
        assert not ch.is_open
        with pytest.raises(ChannelClosed):
            message.ack()  # its channel is closed; the message went back
        other = await ch._connection.channel()
        again = await other.basic_get("q")
        assert again is not None and again.redelivered


async def test_round_robin_between_consumers(ch: MemoryChannel, conn: MemoryConnection) -> None:
    with anyio.fail_after(TIMEOUT):
        other = await conn.channel()
        await ch.queue_declare("q", durable=True)
        async with ch.basic_consume("q") as c1, other.basic_consume("q") as c2:
            for i in range(6):
                await ch.basic_publish(b"%d" % i, routing_key="q")
            got1 = await receive(c1, 3)
            got2 = await receive(c2, 3)
            assert [m.body for m in got1] == [b"0", b"2", b"4"]
            assert [m.body for m in got2] == [b"1", b"3", b"5"]
            for m in got1 + got2:
                m.ack()


async def test_round_robin_skips_full_consumers(conn: MemoryConnection) -> None:
    with anyio.fail_after(TIMEOUT):
        busy = await conn.channel(prefetch_count=1)
        idle = await conn.channel(prefetch_count=10)
        await busy.queue_declare("q", durable=True)
        async with busy.basic_consume("q") as c1, idle.basic_consume("q") as c2:
            for i in range(4):
                await busy.basic_publish(b"%d" % i, routing_key="q")
            assert [m.body for m in await receive(c1, 1)] == [b"0"]
            assert [m.body for m in await receive(c2, 3)] == [b"1", b"2", b"3"]


async def test_unacked_messages_requeued_when_the_channel_closes(conn: MemoryConnection) -> None:
    with anyio.fail_after(TIMEOUT):
        ch = await conn.channel()
        await ch.queue_declare("q", durable=True)
        for i in range(5):
            await ch.basic_publish(b"%d" % i, routing_key="q")
        consuming = await conn.channel(prefetch_count=3)
        consumer = consuming.basic_consume("q")
        await consumer.start()
        taken = await receive(consumer, 2)  # "2" stays in the consumer's buffer
        taken[0].ack()  # makes room: "3" is delivered too
        await consuming.aclose()
        assert not taken[1].channel.is_open
        with pytest.raises(StopAsyncIteration):
            await consumer.__anext__()
        assert [(m.body, m.redelivered) for m in await gets(ch, "q")] == [
            (b"1", True),
            (b"2", True),
            (b"3", True),
            (b"4", False),
        ]


async def test_unacked_messages_requeued_when_the_connection_closes(name: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with memory.connect(name) as keeper:
            ch = await keeper.channel()
            await ch.queue_declare("q", durable=True)
            for i in range(3):
                await ch.basic_publish(b"%d" % i, routing_key="q")
            async with memory.connect(name) as worker:
                wch = await worker.channel()
                consumer = wch.basic_consume("q")
                await consumer.start()
                await receive(consumer, 3)
                assert await ready(ch, "q") == (0, 1)
            with pytest.raises(ChannelClosed):  # the connection closed under it
                await consumer.__anext__()
            got = [await ch.basic_get("q") for _ in range(3)]
            assert [(m.body, m.redelivered) for m in got if m is not None] == [
                (b"0", True),
                (b"1", True),
                (b"2", True),
            ]


async def test_cancelled_consumer_gives_back_its_buffer_in_order(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.queue_declare("q", durable=True)
        for i in range(4):
            await ch.basic_publish(b"%d" % i, routing_key="q")
        async with ch.basic_consume("q") as consumer:
            [taken] = await receive(consumer, 1)
        # the three never taken are back; the taken one is still unacked
        assert await ready(ch, "q") == (3, 0)
        taken.ack()
        assert await bodies(ch, "q") == [b"1", b"2", b"3"]


async def test_consumer_sees_requeued_messages_from_another_channel(
    conn: MemoryConnection,
) -> None:
    with anyio.fail_after(TIMEOUT):
        getter = await conn.channel()
        await getter.queue_declare("q", durable=True)
        await getter.basic_publish(b"1", routing_key="q")
        held = await getter.basic_get("q")
        assert held is not None
        consuming = await conn.channel()
        async with consuming.basic_consume("q") as consumer:
            await nothing_more(consumer)
            held.nack()
            [message] = await receive(consumer, 1)
            assert message.body == b"1" and message.redelivered
            message.ack()


async def test_iterating_waits_for_a_publish(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        await ch.queue_declare("q", durable=True)
        async with ch.basic_consume("q") as consumer, anyio.create_task_group() as tg:

            async def publish_later() -> None:
                await anyio.sleep(0.01)
                await ch.basic_publish(b"late", routing_key="q")

            tg.start_soon(publish_later)
            [message] = await receive(consumer, 1)
            assert message.body == b"late"
            message.ack()


async def test_flow(ch: MemoryChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        assert await ch.flow(True) is True
        with pytest.raises(ChannelClosed, match="540"):
            await ch.flow(False)


# ---------------------------------------------------------------- the Communicator on memory://


def comm_url(name: str) -> str:
    return f"memory://{name}"


@pytest.fixture
async def comm(name: str) -> AsyncIterator[kiwi_anyio.Communicator]:
    async with kiwi_anyio.connect(comm_url(name)) as communicator:
        yield communicator


async def test_communicator_server_properties(comm: kiwi_anyio.Communicator, name: str) -> None:
    assert comm.url == f"memory://{name}"
    assert comm.server_properties["product"] == "kiwi_anyio memory broker"


async def test_communicator_task_round_trip(comm: kiwi_anyio.Communicator) -> None:
    async def worker(_comm: Any, task: Any) -> Any:
        if task == "fail":
            raise ValueError("bad task")
        return task * 2

    with anyio.fail_after(TIMEOUT):
        await comm.add_task_subscriber(worker)
        future = await comm.task_send(21)
        assert future is not None
        assert await future == 42
        future = await comm.task_send("fail")
        assert future is not None
        with pytest.raises(RemoteException, match="bad task"):
            await future
        # the overloads promise None; the test checks it at run time
        assert await comm.task_send("ignored", no_reply=True) is None  # type: ignore[func-returns-value]


async def test_communicator_tasks_between_communicators(name: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kiwi_anyio.connect(comm_url(name)) as worker:

            def double(_comm: Any, task: Any) -> Any:
                return task * 2

            await worker.add_task_subscriber(double)
            async with kiwi_anyio.connect(comm_url(name)) as sender:
                futures = [await sender.task_send(i) for i in range(5)]
                assert [await f for f in futures if f is not None] == [0, 2, 4, 6, 8]


async def test_communicator_task_prefetch_and_two_workers(name: str) -> None:
    running = 0
    peak = 0
    handled: dict[int, str] = {}

    def make(worker: str) -> Any:
        async def handle(_comm: Any, task: int) -> str:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            assert task not in handled
            handled[task] = worker
            await anyio.sleep(0.01)
            running -= 1
            return worker

        return handle

    with anyio.fail_after(TIMEOUT):
        async with (
            kiwi_anyio.connect(comm_url(name), task_prefetch_count=2) as a,
            kiwi_anyio.connect(comm_url(name), task_prefetch_count=2) as b,
        ):
            await a.add_task_subscriber(make("a"))
            await b.add_task_subscriber(make("b"))
            futures = [await a.task_send(i) for i in range(20)]
            results = [await f for f in futures if f is not None]
    assert sorted(handled) == list(range(20))
    assert set(results) == {"a", "b"}
    assert peak <= 4


async def test_communicator_testing_mode_auto_delete(name: str) -> None:
    def echo(_comm: Any, msg: Any) -> Any:
        return msg

    with anyio.fail_after(TIMEOUT):
        async with kiwi_anyio.connect(comm_url(name), testing_mode=True) as comm:
            await comm.add_rpc_subscriber(echo, "echo")
            assert await (await comm.rpc_send("echo", 1)) == 1
            await comm.remove_rpc_subscriber("echo")
            with pytest.raises(UnroutableError):
                await comm.rpc_send("echo", 2)
            await comm.add_rpc_subscriber(echo, "echo")
            assert await (await comm.rpc_send("echo", 3)) == 3


async def test_communicator_unfinished_task_is_requeued_on_close(name: str) -> None:
    started = anyio.Event()

    async def stuck(_comm: Any, task: Any) -> Any:
        started.set()
        await anyio.sleep_forever()

    async def quick(_comm: Any, task: Any) -> Any:
        return f"done {task}"

    with anyio.fail_after(TIMEOUT):
        async with kiwi_anyio.connect(comm_url(name)) as sender:
            async with kiwi_anyio.connect(comm_url(name)) as first:
                await first.add_task_subscriber(stuck)
                future = await sender.task_send("t")
                assert future is not None
                await started.wait()
            async with kiwi_anyio.connect(comm_url(name)) as second:
                await second.add_task_subscriber(quick)
                assert await future == "done t"


async def test_communicator_next_task(comm: kiwi_anyio.Communicator) -> None:
    with anyio.fail_after(TIMEOUT):
        queue = comm.task_queue("pull")
        future = await queue.task_send(5)
        assert future is not None
        async with queue.next_task(timeout=1.0) as task:
            assert task is not None and task.body == 5
            task.process().set_result(25)
        assert await future == 25


async def test_communicator_rpc(comm: kiwi_anyio.Communicator) -> None:
    def rpc(_comm: Any, msg: Any) -> Any:
        if msg == "boom":
            raise RuntimeError("rpc failed")
        return f"got {msg}"

    with anyio.fail_after(TIMEOUT):
        await comm.add_rpc_subscriber(rpc, "svc")
        assert await (await comm.rpc_send("svc", "hi")) == "got hi"
        with pytest.raises(RemoteException, match="rpc failed"):
            await (await comm.rpc_send("svc", "boom"))
        with pytest.raises(UnroutableError):
            await comm.rpc_send("nobody", "hi")
        await comm.remove_rpc_subscriber("svc")
        with pytest.raises(UnroutableError):
            await comm.rpc_send("svc", "hi")


async def test_communicator_duplicate_rpc_identifier_across_communicators(
    comm: kiwi_anyio.Communicator, name: str
) -> None:
    def rpc(_comm: Any, msg: Any) -> Any:
        return msg

    with anyio.fail_after(TIMEOUT):
        await comm.add_rpc_subscriber(rpc, "unique")
        async with kiwi_anyio.connect(comm_url(name)) as other:
            with pytest.raises(DuplicateSubscriberIdentifier):
                await other.add_rpc_subscriber(rpc, "unique")
            assert await (await other.rpc_send("unique", 7)) == 7


async def test_communicator_broadcast_with_filter(comm: kiwi_anyio.Communicator) -> None:
    everything: list[Any] = []
    purchases: list[Any] = []
    got_all = anyio.Event()

    async def all_sub(_comm: Any, body: Any, sender: Any, subject: Any, cid: Any) -> None:
        everything.append((body, sender, subject))
        if len(everything) == 3:
            got_all.set()

    async def purchase_sub(_comm: Any, body: Any, sender: Any, subject: Any, cid: Any) -> None:
        purchases.append(subject)

    with anyio.fail_after(TIMEOUT):
        await comm.add_broadcast_subscriber(all_sub)
        await comm.add_broadcast_subscriber(BroadcastFilter(purchase_sub, subject="purchase.*"))
        for subject in ("purchase.car", "sell.house", "purchase.piano"):
            assert await comm.broadcast_send("b", sender="me", subject=subject) is True
        await got_all.wait()
        await anyio.sleep(0.05)
    assert everything == [
        ("b", "me", "purchase.car"),
        ("b", "me", "sell.house"),
        ("b", "me", "purchase.piano"),
    ]
    assert purchases == ["purchase.car", "purchase.piano"]


async def test_communicator_broadcast_between_communicators(
    comm: kiwi_anyio.Communicator, name: str
) -> None:
    received: list[Any] = []
    event = anyio.Event()

    async def sub(_comm: Any, body: Any, sender: Any, subject: Any, cid: Any) -> None:
        received.append(body)
        event.set()

    with anyio.fail_after(TIMEOUT):
        await comm.add_broadcast_subscriber(sub)
        async with kiwi_anyio.connect(comm_url(name)) as other:
            await other.broadcast_send({"hello": 1})
            await event.wait()
    assert received == [{"hello": 1}]


def test_blocking_communicator_on_memory(name: str) -> None:
    with kiwi_anyio.connect(comm_url(name)) as comm:
        comm.add_rpc_subscriber(lambda _comm, msg: msg + 1, "inc")
        assert comm.rpc_send("inc", 1).result(timeout=TIMEOUT) == 2

"""A hostile broker against the sans-I/O AMQPConnection: size limits, prefetch, lying frames.

What a broker sends is not trusted with memory: a frame is at most ``frame_max``, a message
body at most ``max_message_size`` (bigger ones are rejected and never buffered), and a
consumer with a prefetch limit is never handed more unacknowledged deliveries than that.
Anything that breaks the protocol is a :class:`ProtocolError` whose reply code is sent back in
``Connection.Close``; nothing else escapes, nothing hangs.
"""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp.base import Frame

from kiwi_anyio.exceptions import ProtocolError
from kiwi_anyio.protocol import AMQPConnection, ConnectionState, parse_url
from kiwi_anyio.protocol import events as ev
from kiwi_anyio.protocol._connection import MAX_MESSAGE_SIZE
from kiwi_anyio.protocol._framing import FRAME_BODY, FRAME_HEADER, FRAME_METHOD

from .fakes import (
    ScriptedBroker,
    body_frame,
    content,
    decode_frames,
    deliver_bytes,
    header_frame,
    method_frame,
    raw_frame,
    start_method,
)

MiB = 1024 * 1024


def opened(**options: Any) -> ScriptedBroker:
    broker = ScriptedBroker(**options)
    broker.handshake()
    return broker


def consuming(
    *, prefetch: int = 0, no_ack: bool = False, **options: Any
) -> tuple[ScriptedBroker, int]:
    """An open connection with consumer ``ctag`` on channel 1 (under ``prefetch``)."""
    broker = opened(**options)
    channel = broker.open_channel()
    if prefetch:
        qos(broker, channel, prefetch)
    broker.consume(channel, no_ack=no_ack)
    return broker, channel


def qos(broker: ScriptedBroker, channel: int, count: int, *, global_: bool = False) -> None:
    broker.conn.send_method(channel, commands.Basic.Qos(prefetch_count=count, global_=global_))
    assert broker.sent_names() == ["Basic.Qos"]
    got = broker.method(channel, commands.Basic.QosOk())
    assert [type(e) for e in got] == [ev.MethodReply]


def assert_fails(broker: ScriptedBroker, data: bytes, reply_code: int) -> ProtocolError:
    """Feeding ``data`` raises ProtocolError(reply_code) and queues Connection.Close with it."""
    with pytest.raises(ProtocolError) as info:
        broker.feed(data)
    assert info.value.reply_code == reply_code, info.value
    assert broker.conn.state is ConnectionState.CLOSED
    sent = [(c, m) for c, m in broker.sent() if isinstance(m, Frame)]
    assert [(c, m.name) for c, m in sent][-1:] == [(0, "Connection.Close")], sent
    close = sent[-1][1]
    assert isinstance(close, commands.Connection.Close)
    assert close.reply_code == reply_code
    assert close.reply_text
    return info.value


@contextmanager
def peak_memory() -> Iterator[list[int]]:
    """``with peak_memory() as peak:``; ``peak[0]`` is the traced peak in bytes afterwards."""
    result = [0]
    tracemalloc.start()
    try:
        yield result
    finally:
        result[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def deliver_method(channel: int, tag: int, consumer_tag: str = "ctag") -> bytes:
    return method_frame(channel, commands.Basic.Deliver(consumer_tag, tag, False, "", "q"))


# --------------------------------------------------------------------------- max_message_size


def test_the_default_limit_is_rabbitmqs() -> None:
    assert MAX_MESSAGE_SIZE == 128 * MiB == 134217728
    assert AMQPConnection().max_message_size == MAX_MESSAGE_SIZE
    assert parse_url("amqp://").max_message_size == MAX_MESSAGE_SIZE
    assert parse_url("amqp://?max_message_size=1").max_message_size == 1


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_message_size"):
        AMQPConnection(max_message_size=0)


def test_a_delivery_over_the_limit_is_rejected_and_the_connection_goes_on() -> None:
    broker, channel = consuming(max_message_size=1000)
    data = deliver_bytes(channel, b"x" * 1001, delivery_tag=7, chunk=300)
    got = broker.feed(data)
    assert [type(e) for e in got] == [ev.UndecodableDelivery]
    event = got[0]
    assert isinstance(event, ev.UndecodableDelivery)
    assert (event.channel, event.consumer_tag, event.delivery_tag) == (channel, "ctag", 7)
    assert "1001 bytes" in event.error and "max_message_size (1000 bytes)" in event.error
    [(number, reject)] = broker.sent_methods()
    assert number == channel and isinstance(reject, commands.Basic.Reject)
    assert (reject.delivery_tag, reject.requeue) == (7, False)
    # exactly the limit is fine, and so is everything after
    got = broker.deliver(channel, b"y" * 1000, delivery_tag=8)
    assert [(type(e), len(getattr(e, "body", b""))) for e in got] == [(ev.Delivery, 1000)]
    assert broker.conn.is_open


def test_an_oversized_body_is_never_buffered() -> None:
    broker, channel = consuming(max_message_size=1000, frame_max=4096)
    broker.feed(deliver_method(channel, 1), header_frame(channel, 50_000))
    for _ in range(12):
        assert broker.feed(body_frame(channel, b"z" * 4000)) == []
        in_progress = broker.conn._channels[channel].content
        assert in_progress is not None and in_progress.parts == []
    got = broker.feed(body_frame(channel, b"z" * 2000))
    assert [type(e) for e in got] == [ev.UndecodableDelivery]


def test_a_body_size_that_lies_is_not_allocated_up_front() -> None:
    # The header announces 100 MiB (within the limit) but only 64 KiB ever come.
    broker, channel = consuming()
    with peak_memory() as peak:
        broker.feed(deliver_method(channel, 1), header_frame(channel, 100 * MiB))
        for _ in range(16):
            assert broker.feed(body_frame(channel, b"a" * 4096)) == []
    assert peak[0] < 2 * MiB, peak
    # then a method frame where content was promised: a protocol error, not a hang
    assert_fails(broker, method_frame(channel, commands.Basic.QosOk()), 505)


def test_an_absurd_body_size_is_rejected_and_its_frames_skipped() -> None:
    broker, channel = consuming()
    with peak_memory() as peak:
        got = broker.feed(deliver_method(channel, 3), header_frame(channel, 2**64 - 1))
        assert got == []
        for _ in range(2000):  # 8 MB streamed through, none of it kept
            assert broker.feed(body_frame(channel, b"b" * 4000)) == []
    assert peak[0] < MiB, peak
    assert broker.conn.is_open


def test_an_oversized_get_ok_is_rejected() -> None:
    broker = opened(max_message_size=10)
    channel = broker.open_channel()
    broker.conn.send_method(channel, commands.Basic.Get(queue="q"))
    broker.sent()
    got = broker.feed(content(channel, commands.Basic.GetOk(4, False, "", "q", 0), b"x" * 11))
    assert [type(e) for e in got] == [ev.UndecodableDelivery]
    event = got[0]
    assert isinstance(event, ev.UndecodableDelivery)
    assert event.consumer_tag is None and event.delivery_tag == 4
    assert "max_message_size" in event.error
    methods = broker.sent_methods()
    assert [(m.name, getattr(m, "requeue", None)) for _, m in methods] == [("Basic.Reject", False)]


def test_an_oversized_delivery_to_a_no_ack_consumer_is_dropped_without_reject() -> None:
    broker, channel = consuming(no_ack=True, max_message_size=10)
    got = broker.feed(deliver_bytes(channel, b"x" * 11))
    assert [type(e) for e in got] == [ev.UndecodableDelivery]
    assert broker.sent() == []


def test_an_oversized_return_is_dropped_and_its_confirm_still_counts() -> None:
    broker = opened(max_message_size=10)
    channel = broker.open_channel(confirm=True)
    assert broker.conn.publish(channel, "", "nowhere", b"small", mandatory=True) == 1
    broker.sent()
    returned = content(channel, commands.Basic.Return(312, "NO_ROUTE", "", "nowhere"), b"x" * 11)
    assert broker.feed(returned) == []
    got = broker.method(channel, commands.Basic.Ack(delivery_tag=1))
    assert [type(e) for e in got] == [ev.PublishConfirmed]


def test_publishing_over_the_limit_raises_before_anything_is_queued() -> None:
    broker = opened(max_message_size=1000)
    channel = broker.open_channel(confirm=True)
    with pytest.raises(ProtocolError) as info:
        broker.conn.publish(channel, "ex", "key", b"x" * 1001)
    message = str(info.value)
    assert "1001 bytes" in message and "max_message_size (1000 bytes)" in message
    assert "'ex'" in message and "'key'" in message
    assert info.value.reply_code == 406
    assert broker.conn.bytes_to_send == 0
    assert broker.conn.is_open
    # no sequence number was used: the next publish is still number 1
    assert broker.conn.publish(channel, "ex", "key", b"x" * 1000) == 1


# --------------------------------------------------------------------------- names


def test_publish_takes_names_pamqp_refuses() -> None:
    broker = opened()
    channel = broker.open_channel()
    exchange, routing_key = "échange-" + "x" * 130, "clé.ключ.🔑"
    broker.conn.publish(channel, exchange, routing_key, b"hi")
    publish = broker.sent()[0][1]
    assert isinstance(publish, commands.Basic.Publish)
    assert (publish.exchange, publish.routing_key) == (exchange, routing_key)


@pytest.mark.parametrize(
    ("exchange", "routing_key", "field"),
    [("e" * 256, "k", "exchange"), ("", "k" * 256, "routing_key"), ("", "é" * 128, "routing_key")],
)
def test_publish_refuses_names_over_255_bytes(exchange: str, routing_key: str, field: str) -> None:
    broker = opened()
    channel = broker.open_channel(confirm=True)
    with pytest.raises(ValueError, match=f"{field} .* bytes in UTF-8; AMQP allows at most 255"):
        broker.conn.publish(channel, exchange, routing_key, b"hi")
    assert broker.conn.bytes_to_send == 0
    assert broker.conn.publish(channel, "", "ok", b"hi") == 1


def test_a_method_that_cannot_be_encoded_leaves_the_channel_in_sync() -> None:
    broker = opened()
    channel = broker.open_channel()
    bad = commands.Queue.Declare(queue="q")
    bad.queue = "q" * 300  # pamqp will refuse to encode it
    with pytest.raises((ValueError, TypeError)):
        broker.conn.send_method(channel, bad)
    assert broker.sent() == []
    broker.conn.send_method(channel, commands.Exchange.Declare(exchange="x"))
    broker.sent()
    got = broker.method(channel, commands.Exchange.DeclareOk())  # no Queue.DeclareOk expected
    assert [type(e) for e in got] == [ev.MethodReply]


# --------------------------------------------------------------------------- prefetch


def test_a_broker_ignoring_the_prefetch_limit_is_a_protocol_error() -> None:
    broker, channel = consuming(prefetch=2)
    assert len(broker.deliver(channel, b"1", delivery_tag=1)) == 1
    assert len(broker.deliver(channel, b"2", delivery_tag=2)) == 1
    error = assert_fails(broker, deliver_bytes(channel, b"3", delivery_tag=3), 505)
    assert "prefetch limit is 2" in str(error) and "'ctag'" in str(error)


def test_settling_frees_prefetch_slots() -> None:
    broker, channel = consuming(prefetch=2)
    conn = broker.conn
    tag = 0

    def deliver() -> None:
        nonlocal tag
        tag += 1
        assert [type(e) for e in broker.deliver(channel, b"m", delivery_tag=tag)] == [ev.Delivery]

    deliver()
    deliver()
    conn.ack(channel, 1)
    deliver()  # 3
    conn.nack(channel, 2, requeue=True)
    deliver()  # 4
    conn.reject(channel, 3, requeue=False)
    deliver()  # 5
    conn.ack(channel, 5, multiple=True)  # settles 4 and 5
    deliver()  # 6
    deliver()  # 7
    conn.nack(channel, 0, multiple=True)  # tag 0 with multiple: everything outstanding
    deliver()  # 8
    deliver()  # 9
    broker.sent()
    assert_fails(broker, deliver_bytes(channel, b"m", delivery_tag=10), 505)


def test_no_ack_consumers_and_unlimited_channels_are_not_counted() -> None:
    broker, channel = consuming(prefetch=1, no_ack=True)
    for tag in range(1, 50):
        assert len(broker.deliver(channel, b"m", delivery_tag=tag)) == 1
    broker, channel = consuming()
    for tag in range(1, 50):
        assert len(broker.deliver(channel, b"m", delivery_tag=tag)) == 1


def test_each_consumer_has_its_own_limit() -> None:
    broker, channel = consuming(prefetch=1)
    broker.consume(channel, consumer_tag="other")
    assert len(broker.deliver(channel, b"a", delivery_tag=1)) == 1
    assert len(broker.deliver(channel, b"b", delivery_tag=2, consumer_tag="other")) == 1
    assert_fails(broker, deliver_bytes(channel, b"c", delivery_tag=3, consumer_tag="other"), 505)


def test_the_global_limit_bounds_each_consumer_as_rabbitmq_4_3_applies_it() -> None:
    """A global Basic.Qos is channel-wide on RabbitMQ 3.x and per consumer on 4.3 (its
    deprecated feature global_qos is denied): a broker doing either is honest, one that
    gives a single consumer more than the limit is not."""
    broker = opened()
    channel = broker.open_channel()
    qos(broker, channel, 3, global_=True)
    broker.consume(channel, consumer_tag="a")
    broker.consume(channel, consumer_tag="b")
    for tag, consumer in enumerate(["a", "b", "a", "b", "a", "b"], start=1):
        assert len(broker.deliver(channel, b"m", delivery_tag=tag, consumer_tag=consumer)) == 1
    assert_fails(broker, deliver_bytes(channel, b"m", delivery_tag=7, consumer_tag="a"), 505)


def test_a_lowered_global_limit_applies_from_its_qos_ok() -> None:
    broker = opened()
    channel = broker.open_channel()
    broker.consume(channel)
    for tag in (1, 2, 3):
        broker.deliver(channel, b"m", delivery_tag=tag)
    broker.conn.send_method(channel, commands.Basic.Qos(prefetch_count=1, global_=True))
    broker.sent()
    broker.deliver(channel, b"m", delivery_tag=4)  # sent before the broker saw the Qos
    broker.method(channel, commands.Basic.QosOk())
    broker.conn.ack(channel, 4, multiple=True)  # nothing was counted before the limit
    assert len(broker.deliver(channel, b"m", delivery_tag=5)) == 1
    assert_fails(broker, deliver_bytes(channel, b"m", delivery_tag=6), 505)


def test_the_limit_is_the_one_a_consumer_started_under() -> None:
    # RabbitMQ: a new per-consumer prefetch applies to consumers started after it.
    broker, channel = consuming(prefetch=3)
    qos(broker, channel, 1)
    for tag in (1, 2, 3):
        assert len(broker.deliver(channel, b"m", delivery_tag=tag)) == 1
    assert_fails(broker, deliver_bytes(channel, b"m", delivery_tag=4), 505)


def test_a_raised_limit_is_allowed_for_running_consumers() -> None:
    # Brokers without per-consumer prefetch apply a new value to running consumers: allowed.
    broker, channel = consuming(prefetch=1)
    qos(broker, channel, 3)
    for tag in (1, 2, 3):
        assert len(broker.deliver(channel, b"m", delivery_tag=tag)) == 1
    assert_fails(broker, deliver_bytes(channel, b"m", delivery_tag=4), 505)
    broker, channel = consuming(prefetch=1)
    qos(broker, channel, 0)  # 0: no limit
    for tag in range(1, 20):
        assert len(broker.deliver(channel, b"m", delivery_tag=tag)) == 1


def test_a_qos_pipelined_before_consume_applies_to_it() -> None:
    broker = opened()
    channel = broker.open_channel()
    broker.conn.send_method(channel, commands.Basic.Qos(prefetch_count=1))
    broker.conn.send_method(channel, commands.Basic.Consume(queue="q", consumer_tag="ctag"))
    broker.sent()
    broker.feed(
        method_frame(channel, commands.Basic.QosOk()),
        method_frame(channel, commands.Basic.ConsumeOk(consumer_tag="ctag")),
        deliver_bytes(channel, b"m", delivery_tag=1),
    )
    assert_fails(broker, deliver_bytes(channel, b"m", delivery_tag=2), 505)


def test_recover_and_auto_rejections_free_slots() -> None:
    broker, channel = consuming(prefetch=1, max_message_size=5)
    broker.deliver(channel, b"m", delivery_tag=1)
    broker.conn.send_method(channel, commands.Basic.Recover(requeue=True))
    broker.sent()
    broker.method(channel, commands.Basic.RecoverOk())
    assert len(broker.deliver(channel, b"too big", delivery_tag=2)) == 1  # rejected by us
    assert len(broker.deliver(channel, b"m", delivery_tag=3)) == 1


def test_a_nowait_consumer_is_known_at_once() -> None:
    broker = opened()
    channel = broker.open_channel()
    qos(broker, channel, 1)
    broker.conn.send_method(
        channel, commands.Basic.Consume(queue="q", consumer_tag="nw", nowait=True)
    )
    broker.sent()
    assert len(broker.deliver(channel, b"m", delivery_tag=1, consumer_tag="nw")) == 1
    assert_fails(broker, deliver_bytes(channel, b"m", delivery_tag=2, consumer_tag="nw"), 505)


def test_a_reused_delivery_tag_is_a_protocol_error() -> None:
    broker, channel = consuming(prefetch=5)
    broker.deliver(channel, b"m", delivery_tag=1)
    assert_fails(broker, deliver_bytes(channel, b"m", delivery_tag=1), 503)


# --------------------------------------------------------------------------- lying frames


def test_deliveries_for_unknown_consumers_are_reported_not_fatal() -> None:
    # RabbitMQ may still deliver to a consumer after its CancelOk; the driver rejects such
    # deliveries with requeue. They are never counted against a limit.
    broker, channel = consuming(prefetch=1)
    for tag in (1, 2, 3):
        got = broker.deliver(channel, b"m", delivery_tag=tag, consumer_tag="nobody")
        assert [(type(e), getattr(e, "consumer_tag", None)) for e in got] == [
            (ev.Delivery, "nobody")
        ]
    assert broker.conn.is_open


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (raw_frame(FRAME_HEADER, 1, struct.pack(">HH", 60, 0)), 501),  # cut before body size
        (raw_frame(FRAME_HEADER, 1, b""), 501),
        (raw_frame(FRAME_METHOD, 1, b"\x00\x3c"), 502),  # cut method id
        (raw_frame(FRAME_METHOD, 1, struct.pack(">I", 0x003C003C)), 502),  # Deliver, no args
        (raw_frame(FRAME_METHOD, 1, struct.pack(">I", 0x00FF0001)), 502),  # unknown class
        (raw_frame(FRAME_METHOD, 0, struct.pack(">I", 0x000A00FF)), 502),  # unknown method
        (raw_frame(FRAME_METHOD, 1, b"\x00\x14\x00\x28" + b"\x01" * 3), 502),  # bad Close
    ],
    ids=["header-4", "header-0", "method-2", "deliver-cut", "class", "method", "close-cut"],
)
def test_truncated_and_unknown_frames(data: bytes, code: int) -> None:
    broker, _ = consuming()
    assert_fails(broker, data, code)


@pytest.mark.parametrize(
    "make",
    [
        lambda: method_frame(1, commands.Basic.QosOk()),
        lambda: deliver_bytes(1, b"abc"),
        lambda: b"\x08\x00\x00\x00\x00\x00\x00\xce",
    ],
    ids=["method", "content", "heartbeat"],
)
@pytest.mark.parametrize("end", [0x00, 0xCD, 0xFF, ord("A")])
def test_bad_frame_end_octets(make: object, end: int) -> None:
    broker, _ = consuming()
    data = bytearray(make())  # type: ignore[operator]
    data[-1] = end  # the last frame's end octet
    assert_fails(broker, bytes(data), 501)


@pytest.mark.parametrize("frame_type", [FRAME_METHOD, FRAME_HEADER, FRAME_BODY, 8])
def test_frames_larger_than_frame_max(frame_type: int) -> None:
    broker, channel = consuming(frame_max=8192)
    head = struct.pack(">BHI", frame_type, channel, 8192 - 7)  # one byte over, with overhead
    with peak_memory() as peak:
        assert_fails(broker, head, 501)  # refused from the frame header: nothing buffered
    assert peak[0] < 64 * 1024


def test_frames_larger_than_the_handshake_limit_before_tune() -> None:
    conn = AMQPConnection()
    conn.initiate()
    conn.data_to_send()
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(struct.pack(">BHI", FRAME_METHOD, 0, 2**32 - 1))
    assert info.value.reply_code == 501


@pytest.mark.parametrize(
    ("channel", "method", "code"),
    [
        (1, commands.Queue.Declare(queue="q"), 505),
        (1, commands.Basic.Publish(exchange="", routing_key="q"), 505),
        (1, commands.Basic.Consume(queue="q"), 505),
        (1, commands.Channel.Open(), 505),
        (0, commands.Connection.StartOk(), 503),
        (0, commands.Connection.TuneOk(), 503),
        (0, commands.Connection.Open(), 503),
        (0, commands.Connection.Secure(challenge="x"), 503),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_client_methods_sent_by_the_server(channel: int, method: Frame, code: int) -> None:
    broker, _ = consuming()
    assert_fails(broker, method_frame(channel, method), code)


def test_an_unknown_method_during_the_handshake() -> None:
    conn = AMQPConnection()
    conn.initiate()
    conn.data_to_send()
    conn.receive_data(method_frame(0, start_method()))
    conn.data_to_send()
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(raw_frame(FRAME_METHOD, 0, struct.pack(">I", 0x000A0063)))
    assert info.value.reply_code == 502
    assert conn.state is ConnectionState.CLOSED
    sent = [m for _, m in decode_frames(conn.data_to_send()) if isinstance(m, Frame)]
    assert [m.name for m in sent] == ["Connection.Close"]


# --------------------------------------------------------------------------- fuzzing
#
# A session of mostly well-formed deliveries (some over the size limit, some whose header
# lies about the body size, some beyond the prefetch limit) with the client acking as it
# goes, and now and then a hostile frame. Whatever happens: only ProtocolError (with the
# same code in the Connection.Close sent back), nothing buffered beyond the limits.

LIMIT = 2000
FRAME_MAX = 4096
PREFETCH = 2

_DELIVER = st.tuples(st.just("deliver"), st.integers(0, 3 * LIMIT), st.integers(1, FRAME_MAX - 8))
_ACK = st.tuples(st.just("ack"), st.booleans(), st.integers(0, 2))
_STEP = st.one_of(
    _DELIVER,
    _DELIVER,
    _DELIVER,
    _ACK,
    _ACK,
    # a header announcing a body size (any, up to 2**64 - 1) and the body bytes that follow
    st.tuples(st.just("lie"), st.integers(0, 2**64 - 1), st.integers(0, 3 * FRAME_MAX)),
    st.tuples(st.just("exceed"), st.just(0), st.just(0)),
    st.tuples(
        st.just("hostile"),
        st.sampled_from(["ack", "get-ok", "return", "qos-ok", "cancel", "close", "unknown"]),
        st.integers(0, 2),
    ),
)


class _Session:
    def __init__(self) -> None:
        self.broker, self.channel = consuming(
            prefetch=PREFETCH, max_message_size=LIMIT, frame_max=FRAME_MAX
        )
        self.conn = self.broker.conn
        self.next_tag = 1
        self.outstanding: list[int] = []
        self.expected_failure = False
        self.tainted = False  # a lie or a hostile frame: a later frame may be refused
        self.cancelled = False  # the broker cancelled "ctag": its deliveries are not counted

    def step(self, kind: str, a: object, b: object) -> bytes:
        ch = self.channel
        if kind == "ack":
            if self.outstanding:
                multiple = bool(a) and b != 2
                tag = self.outstanding[-1] if a else self.outstanding[0]
                if b == 0:
                    self.conn.ack(ch, tag, multiple=multiple)
                elif b == 1:
                    self.conn.nack(ch, tag, multiple=multiple)
                else:
                    self.conn.reject(ch, tag)
                if multiple:
                    self.outstanding = [t for t in self.outstanding if t > tag]
                else:
                    self.outstanding.remove(tag)
            return b""
        if kind in ("deliver", "lie", "exceed"):
            while kind != "exceed" and len(self.outstanding) >= PREFETCH:
                self.conn.ack(ch, self.outstanding.pop(0))
            tag = self.next_tag
            self.next_tag += 1
            if kind == "exceed":
                self.expected_failure = len(self.outstanding) >= PREFETCH and not self.cancelled
                self.outstanding.append(tag)
                return deliver_bytes(ch, b"e", delivery_tag=tag)
            if kind == "deliver":
                assert isinstance(a, int) and isinstance(b, int)
                if a <= LIMIT:
                    self.outstanding.append(tag)  # an oversized one is rejected by the core
                return deliver_bytes(ch, b"d" * a, delivery_tag=tag, chunk=b)
            assert isinstance(a, int) and isinstance(b, int)
            if a <= LIMIT or a != b:  # complete and over the limit: the core rejected it
                self.outstanding.append(tag)
            self.tainted = True
            data = [deliver_method(ch, tag), header_frame(ch, a)]
            data += [body_frame(ch, b"l" * min(FRAME_MAX - 8, b - i)) for i in range(0, b, 4088)]
            return b"".join(data)
        assert isinstance(b, int)
        channel = b
        self.tainted = True
        if a == "ack":
            return method_frame(channel, commands.Basic.Ack(delivery_tag=1))
        if a == "get-ok":
            return method_frame(channel, commands.Basic.GetOk(1, False, "", "q", 0))
        if a == "return":
            return method_frame(channel, commands.Basic.Return(312, "NO_ROUTE", "", "q"))
        if a == "qos-ok":
            return method_frame(channel, commands.Basic.QosOk())
        if a == "cancel":
            self.cancelled = self.cancelled or channel == 1
            return method_frame(channel, commands.Basic.Cancel(consumer_tag="ctag", nowait=True))
        if a == "close":
            return method_frame(channel, commands.Channel.Close(406, "x", 60, 40))
        return raw_frame(FRAME_METHOD, channel, struct.pack(">I", 0x003C00FF))

    def check_bounded(self) -> None:
        conn = self.conn
        for ch in conn._channels.values():
            if ch.content is not None:
                assert sum(len(p) for p in ch.content.parts) <= LIMIT
            assert ch.total <= PREFETCH and len(ch.unacked) <= PREFETCH
        assert conn._buffer.buffered < 2 * FRAME_MAX


@settings(
    max_examples=300,
    derandomize=True,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(steps=st.lists(_STEP, min_size=5, max_size=40), cut=st.integers(200, 5000))
def test_hostile_sessions_stay_bounded_and_fail_only_with_protocol_errors(
    steps: list[tuple[str, object, object]], cut: int
) -> None:
    session = _Session()
    conn = session.conn
    for kind, a, b in steps:
        data = session.step(kind, a, b)
        events: list[ev.Event] = []
        error: ProtocolError | None = None
        try:
            for i in range(0, len(data), cut):
                events += conn.receive_data(data[i : i + cut])
                session.check_bounded()
        except ProtocolError as exc:
            error = exc
        if error is not None:
            sent = [m for _, m in decode_frames(conn.data_to_send()) if isinstance(m, Frame)]
            closes = [m for m in sent if isinstance(m, commands.Connection.Close)]
            assert len(closes) == 1 and sent[-1] is closes[0]
            assert closes[0].reply_code == error.reply_code
            assert conn.state is ConnectionState.CLOSED
            assert session.tainted or kind == "exceed", error
            return
        assert not session.expected_failure, "a delivery beyond the prefetch limit was taken"
        for event in events:
            if isinstance(event, ev.Delivery | ev.GetOk):
                assert len(event.body) <= LIMIT
            if isinstance(event, ev.UndecodableDelivery):
                assert "max_message_size" in event.error
        decode_frames(conn.data_to_send())  # what it answered is well-formed
        if conn.state is ConnectionState.CLOSED:
            return

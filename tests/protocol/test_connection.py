"""Tests of the sans-I/O AMQPConnection against a scripted broker (no socket, no broker)."""

from __future__ import annotations

import itertools
import platform
import random
import struct
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands, decode
from pamqp.base import Frame

from kiwi_anyio.exceptions import ConnectionFailed, ProtocolError
from kiwi_anyio.protocol import AMQPConnection, ChannelState, ConnectionState
from kiwi_anyio.protocol import events as ev
from kiwi_anyio.protocol._framing import FRAME_BODY, FRAME_HEADER, PROTOCOL_HEADER

from .fakes import (
    RABBITMQ_PROPERTIES,
    ScriptedBroker,
    body_frame,
    content,
    decode_frames,
    deliver_bytes,
    frame_name,
    header_frame,
    heartbeat_frame,
    method_frame,
    normalize,
    raw_frame,
    start_method,
)

Properties = commands.Basic.Properties


def _state(broker: ScriptedBroker) -> ConnectionState:
    return broker.conn.state


def opened(**options: Any) -> ScriptedBroker:
    """A broker whose connection finished the handshake."""
    broker = ScriptedBroker(**options)
    broker.handshake()
    return broker


def with_consumer(*, no_ack: bool = False, confirm: bool = False) -> tuple[ScriptedBroker, int]:
    broker = opened()
    channel = broker.open_channel(confirm=confirm)
    broker.consume(channel, no_ack=no_ack)
    return broker, channel


def assert_fails(
    broker: ScriptedBroker, data: bytes, reply_code: int, *, close_queued: bool = True
) -> ProtocolError:
    """Feeding ``data`` raises ProtocolError(reply_code) and queues Connection.Close."""
    with pytest.raises(ProtocolError) as info:
        broker.feed(data)
    assert info.value.reply_code == reply_code, info.value
    assert broker.conn.state is ConnectionState.CLOSED
    sent = broker.sent_methods()
    if close_queued:
        assert [(c, m.name) for c, m in sent] == [(0, "Connection.Close")], sent
        close = sent[0][1]
        assert isinstance(close, commands.Connection.Close)
        assert close.reply_code == reply_code
        assert close.reply_text  # says why
    else:
        assert sent == []
    return info.value


# --------------------------------------------------------------------------- handshake


def test_initiate_sends_the_protocol_header_once() -> None:
    conn = AMQPConnection()
    assert conn.state is ConnectionState.INITIAL
    conn.initiate()
    assert conn.data_to_send() == PROTOCOL_HEADER
    assert conn.data_to_send() == b""
    with pytest.raises(ProtocolError):
        conn.initiate()


def test_handshake_opens_the_connection() -> None:
    broker = ScriptedBroker(virtual_host="kiwi")
    result = broker.handshake(tune=(2047, 131072, 60))
    assert [type(e) for e in result.events] == [ev.ConnectionOpened]
    opened_event = result.events[0]
    assert isinstance(opened_event, ev.ConnectionOpened)
    assert opened_event.server_properties == dict(RABBITMQ_PROPERTIES)
    assert opened_event.server_properties["capabilities"]["publisher_confirms"] is True
    assert (opened_event.frame_max, opened_event.channel_max, opened_event.heartbeat) == (
        131072,
        2047,
        60,
    )
    assert result.open.virtual_host == "kiwi"
    assert broker.conn.is_open and broker.conn.state is ConnectionState.OPEN
    assert broker.conn.server_properties["product"] == "RabbitMQ"
    assert broker.sent() == []


def _amqplain(response: str | bytes) -> dict[str, Any]:
    raw = response.encode() if isinstance(response, str) else response
    _, table = decode.field_table(struct.pack(">I", len(raw)) + raw)
    return dict(table)


@pytest.mark.parametrize(
    ("offered", "preference", "mechanism"),
    [
        ("PLAIN AMQPLAIN", (), "PLAIN"),
        ("AMQPLAIN PLAIN", (), "PLAIN"),  # our preference, not the server's order
        ("AMQPLAIN", (), "AMQPLAIN"),
        ("EXTERNAL", (), "EXTERNAL"),
        ("PLAIN AMQPLAIN EXTERNAL", ("EXTERNAL", "PLAIN"), "EXTERNAL"),
        ("PLAIN AMQPLAIN", ("EXTERNAL", "AMQPLAIN"), "AMQPLAIN"),
        ("RABBIT-CR-DEMO PLAIN", (), "PLAIN"),
    ],
)
def test_mechanism_choice(offered: str, preference: tuple[str, ...], mechanism: str) -> None:
    broker = ScriptedBroker(username="ann", password="pässwörd", auth_mechanisms=preference)
    start_ok = broker.handshake(mechanisms=offered).start_ok
    assert start_ok.mechanism == mechanism
    assert broker.conn.mechanism == mechanism
    if mechanism == "PLAIN":
        assert start_ok.response == "\0ann\0pässwörd"
    elif mechanism == "AMQPLAIN":
        assert _amqplain(start_ok.response) == {"LOGIN": "ann", "PASSWORD": "pässwörd"}
    else:
        assert start_ok.response == ""


@pytest.mark.parametrize(
    ("offered", "preference"),
    [("AMQPLAIN", ("PLAIN",)), ("PLAIN", ("EXTERNAL",)), ("SCRAM-SHA-256", ())],
)
def test_no_common_mechanism_is_refused(offered: str, preference: tuple[str, ...]) -> None:
    conn = AMQPConnection(password="secret-pw", auth_mechanisms=preference)
    conn.initiate()
    conn.data_to_send()
    with pytest.raises(ConnectionFailed) as info:
        conn.receive_data(method_frame(0, start_method(mechanisms=offered)))
    assert offered.split()[0] in str(info.value)
    assert "secret-pw" not in str(info.value)
    assert conn.data_to_send() == b""  # no StartOk with a mechanism the server did not offer
    assert conn.state is ConnectionState.CLOSED


def test_client_properties() -> None:
    broker = ScriptedBroker(connection_name="worker-7", product="kiwi-test", version="1.2.3")
    props: dict[str, Any] = dict(broker.handshake().start_ok.client_properties or {})
    assert props["product"] == "kiwi-test"
    assert props["version"] == "1.2.3"
    assert props["platform"] == f"Python {platform.python_version()}"
    assert props["connection_name"] == "worker-7"
    capabilities = props["capabilities"]
    for name in (
        "authentication_failure_close",
        "basic.nack",
        "connection.blocked",
        "consumer_cancel_notify",
        "publisher_confirms",
    ):
        assert capabilities[name] is True, name


def test_client_properties_defaults() -> None:
    props = ScriptedBroker().handshake().start_ok.client_properties
    assert props["product"] == "kiwi_anyio"
    assert "connection_name" not in props


@pytest.mark.parametrize(
    ("locales", "expected"), [("en_US", "en_US"), ("de_DE en_US", "en_US"), ("fr_FR", "fr_FR")]
)
def test_locale(locales: str, expected: str) -> None:
    assert ScriptedBroker().handshake(locales=locales).start_ok.locale == expected


def test_unsupported_protocol_version() -> None:
    conn = AMQPConnection()
    conn.initiate()
    conn.data_to_send()
    start = start_method()
    start.version_minor = 8
    with pytest.raises(ProtocolError):
        conn.receive_data(method_frame(0, start))


# Tune: (client wants, server proposes, negotiated, sent in TuneOk)
FRAME_MAX_CASES = [
    (131072, 131072, 131072, 131072),
    (131072, 0, 131072, 131072),
    (0, 65536, 65536, 65536),
    (8192, 131072, 8192, 8192),
    (131072, 4096, 4096, 4096),
    (0, 0, 2**31 - 1, 0),
]
CHANNEL_MAX_CASES = [
    (2047, 2047, 2047),
    (2047, 0, 2047),
    (0, 100, 100),
    (10, 2047, 10),
    (0, 0, 65535),
]
HEARTBEAT_CASES: list[tuple[int | None, int, int]] = [
    (60, 60, 60),
    (5, 60, 5),
    (60, 5, 5),
    (None, 30, 30),  # None: accept the server's proposal
    (None, 0, 0),
    (0, 60, 60),  # RabbitMQ's rule: when one side says 0 the other value wins
    (30, 0, 30),
    (0, 0, 0),
]


@pytest.mark.parametrize(("want", "server", "negotiated", "tune_ok"), FRAME_MAX_CASES)
def test_frame_max_negotiation(want: int, server: int, negotiated: int, tune_ok: int) -> None:
    broker = ScriptedBroker(frame_max=want)
    result = broker.handshake(tune=(2047, server, 60))
    assert result.tune_ok.frame_max == tune_ok
    assert broker.conn.frame_max == negotiated
    event = result.events[0]
    assert isinstance(event, ev.ConnectionOpened)
    assert event.frame_max == negotiated


@pytest.mark.parametrize(("want", "server", "negotiated"), CHANNEL_MAX_CASES)
def test_channel_max_negotiation(want: int, server: int, negotiated: int) -> None:
    broker = ScriptedBroker(channel_max=want)
    result = broker.handshake(tune=(server, 131072, 60))
    assert result.tune_ok.channel_max == negotiated
    assert broker.conn.channel_max == negotiated
    event = result.events[0]
    assert isinstance(event, ev.ConnectionOpened)
    assert event.channel_max == negotiated


@pytest.mark.parametrize(("want", "server", "negotiated"), HEARTBEAT_CASES)
def test_heartbeat_negotiation(want: int | None, server: int, negotiated: int) -> None:
    broker = ScriptedBroker(heartbeat=want)
    result = broker.handshake(tune=(2047, 131072, server))
    assert result.tune_ok.heartbeat == negotiated
    assert broker.conn.heartbeat == negotiated
    event = result.events[0]
    assert isinstance(event, ev.ConnectionOpened)
    assert event.heartbeat == negotiated


def test_negotiated_frame_max_is_enforced_on_receive() -> None:
    broker = ScriptedBroker(frame_max=8192)
    broker.handshake(tune=(2047, 131072, 60))
    channel = broker.open_channel()
    broker.consume(channel)
    fits = deliver_bytes(channel, b"x" * (8192 - 8))
    assert len(broker.feed(fits)) == 1
    assert_fails(broker, body_frame(channel, b"x" * (8192 - 7)), 501)


def test_negotiated_frame_max_is_used_to_publish() -> None:
    broker = ScriptedBroker(frame_max=8192)
    broker.handshake(tune=(2047, 131072, 60))
    channel = broker.open_channel()
    broker.conn.publish(channel, "", "q", b"x" * 20000)
    sent = broker.sent()
    bodies = [f.value for _, f in sent if frame_name(f) == "ContentBody"]
    assert [len(b) for b in bodies] == [8184, 8184, 20000 - 2 * 8184]


def test_frames_before_tune_are_limited_to_4096_bytes() -> None:
    conn = AMQPConnection()
    conn.initiate()
    conn.data_to_send()
    start = start_method(server_properties={"padding": "x" * 5000})
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(method_frame(0, start))
    assert info.value.reply_code == 501


@pytest.mark.parametrize(("after", "code"), [("StartOk", 403), ("Open", 530), ("StartOk", 320)])
def test_broker_closes_during_handshake(after: str, code: int) -> None:
    conn = AMQPConnection()
    conn.initiate()
    conn.data_to_send()
    conn.receive_data(method_frame(0, start_method()))
    conn.data_to_send()
    if after == "Open":
        conn.receive_data(method_frame(0, commands.Connection.Tune(2047, 131072, 60)))
        conn.data_to_send()
    got = conn.receive_data(
        method_frame(0, commands.Connection.Close(code, "ACCESS_REFUSED - no", 0, 0))
    )
    assert [normalize(e) for e in got] == [
        normalize(ev.ConnectionClosed(code, "ACCESS_REFUSED - no", True, True))
    ]
    assert [frame_name(f) for _, f in decode_frames(conn.data_to_send())] == ["Connection.CloseOk"]
    assert conn.state is ConnectionState.CLOSED
    assert not conn.is_open


@pytest.mark.parametrize("steps", [0, 1])
def test_eof_during_handshake(steps: int) -> None:
    conn = AMQPConnection()
    conn.initiate()
    if steps:
        conn.receive_data(method_frame(0, start_method()))
    with pytest.raises(ConnectionFailed):
        conn.receive_data(b"")
    assert conn.state is ConnectionState.CLOSED


def test_server_answers_with_a_protocol_header() -> None:
    conn = AMQPConnection()
    conn.initiate()
    conn.data_to_send()
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(b"AMQP\x00\x00\x09\x01")
    assert "AMQP" in str(info.value)
    assert conn.state is ConnectionState.CLOSED
    assert conn.data_to_send() == b""  # no Connection.Close to a peer that speaks no 0-9-1


def test_server_answers_with_an_amqp_1_0_header_in_pieces() -> None:
    conn = AMQPConnection()
    conn.initiate()
    conn.data_to_send()
    assert conn.receive_data(b"AMQP\x03") == []
    with pytest.raises(ProtocolError):
        conn.receive_data(b"\x01\x00\x00")


def test_close_before_the_handshake_sends_nothing() -> None:
    conn = AMQPConnection()
    conn.close()
    assert conn.state is ConnectionState.CLOSED
    assert conn.data_to_send() == b""


# --------------------------------------------------------------------------- channels


def test_channels_open_with_increasing_numbers() -> None:
    broker = opened()
    first = broker.conn.open_channel()
    second = broker.conn.open_channel()
    assert (first, second) == (1, 2)
    assert broker.conn.channel_state(1) is ChannelState.OPENING
    assert [(c, frame_name(f)) for c, f in broker.sent()] == [
        (1, "Channel.Open"),
        (2, "Channel.Open"),
    ]
    got = broker.feed(
        method_frame(2, commands.Channel.OpenOk()), method_frame(1, commands.Channel.OpenOk())
    )
    assert [normalize(e) for e in got] == [
        normalize(ev.ChannelOpened(2)),
        normalize(ev.ChannelOpened(1)),
    ]
    assert broker.conn.channel_state(1) is ChannelState.OPEN


def test_client_closes_a_channel() -> None:
    broker = opened()
    channel = broker.open_channel()
    broker.conn.close_channel(channel, 200, "done")
    [(number, close)] = broker.sent_methods()
    assert number == channel and isinstance(close, commands.Channel.Close)
    assert close.reply_code == 200
    assert broker.conn.channel_state(channel) is ChannelState.CLOSING
    broker.conn.close_channel(channel)  # idempotent
    assert broker.sent() == []
    got = broker.method(channel, commands.Channel.CloseOk())
    assert [normalize(e) for e in got] == [
        normalize(ev.ChannelClosed(channel, 200, "Normal shutdown", False))
    ]
    assert broker.conn.channel_state(channel) is None
    with pytest.raises(ProtocolError):
        broker.conn.send_method(channel, commands.Basic.Qos(prefetch_count=1))
    assert broker.conn.is_open  # a local misuse does not kill the connection


def test_deliveries_after_the_client_closed_a_channel_are_dropped() -> None:
    broker, channel = with_consumer()
    broker.conn.close_channel(channel)
    broker.sent()
    assert broker.deliver(channel, b"late", chunk=2) == []
    assert broker.method(channel, commands.Basic.QosOk()) == []  # a reply nobody waits for
    got = broker.method(channel, commands.Channel.CloseOk())
    assert [type(e) for e in got] == [ev.ChannelClosed]
    assert broker.sent() == []  # no ack, no reject for a delivery on a closing channel


def test_broker_closes_a_channel() -> None:
    broker = opened(channel_max=2)
    one = broker.open_channel()
    two = broker.open_channel()
    assert (one, two) == (1, 2)
    broker.conn.send_method(one, commands.Queue.Declare(queue="q", passive=True))
    broker.sent()
    got = broker.method(
        one,
        commands.Channel.Close(404, "NOT_FOUND - no queue 'q'", 50, 10),
    )
    assert [normalize(e) for e in got] == [
        normalize(ev.ChannelClosed(one, 404, "NOT_FOUND - no queue 'q'", True, 50, 10))
    ]
    assert [(c, frame_name(f)) for c, f in broker.sent()] == [(one, "Channel.CloseOk")]
    assert broker.conn.channel_state(one) is None
    assert broker.conn.is_open
    # the number is free again (channel_max is 2 and 2 is in use)
    assert broker.conn.open_channel() == one
    assert broker.conn.channel_state(two) is ChannelState.OPEN


def test_channel_numbers_run_out() -> None:
    broker = opened(channel_max=2)
    broker.conn.open_channel()
    broker.conn.open_channel()
    with pytest.raises(ProtocolError) as info:
        broker.conn.open_channel()
    assert info.value.reply_code == 504
    assert broker.conn.is_open


def test_both_sides_close_a_channel_at_once() -> None:
    # The broker's Channel.Close crosses ours; RabbitMQ answers ours with CloseOk anyway.
    broker = opened()
    channel = broker.open_channel()
    broker.conn.close_channel(channel)
    assert [frame_name(f) for _, f in broker.sent()] == ["Channel.Close"]
    got = broker.method(channel, commands.Channel.Close(406, "PRECONDITION_FAILED - x", 60, 80))
    assert [normalize(e) for e in got] == [
        normalize(ev.ChannelClosed(channel, 406, "PRECONDITION_FAILED - x", True, 60, 80))
    ]
    assert [frame_name(f) for _, f in broker.sent()] == ["Channel.CloseOk"]
    assert broker.method(channel, commands.Channel.CloseOk()) == []
    assert broker.conn.is_open
    assert broker.conn.channel_state(channel) is None
    other = broker.open_channel()
    assert broker.conn.channel_state(other) is ChannelState.OPEN


def test_channel_flow_is_answered() -> None:
    broker = opened()
    channel = broker.open_channel()
    assert broker.method(channel, commands.Channel.Flow(active=False)) == []
    [(number, flow_ok)] = broker.sent_methods()
    assert number == channel
    assert isinstance(flow_ok, commands.Channel.FlowOk) and flow_ok.active is False


# --------------------------------------------------------------------------- sync replies


def test_replies_match_requests_in_order() -> None:
    broker = opened()
    channel = broker.open_channel()
    broker.conn.send_method(channel, commands.Exchange.Declare(exchange="x"))
    broker.conn.send_method(channel, commands.Queue.Declare(queue=""))
    broker.conn.send_method(channel, commands.Queue.Declare(queue="nowait", nowait=True))
    broker.conn.send_method(channel, commands.Basic.Qos(prefetch_count=5))
    broker.conn.send_method(channel, commands.Basic.Ack(delivery_tag=1))  # asynchronous
    assert broker.sent_names() == [
        "Exchange.Declare",
        "Queue.Declare",
        "Queue.Declare",
        "Basic.Qos",
        "Basic.Ack",
    ]
    got = broker.feed(
        method_frame(channel, commands.Exchange.DeclareOk()),
        method_frame(channel, commands.Queue.DeclareOk("amq.gen-1", 0, 0)),
        method_frame(channel, commands.Basic.QosOk()),
    )
    assert [type(e) for e in got] == [ev.MethodReply] * 3
    names = [e.method.name for e in got if isinstance(e, ev.MethodReply)]
    assert names == ["Exchange.DeclareOk", "Queue.DeclareOk", "Basic.QosOk"]
    declare_ok = got[1]
    assert isinstance(declare_ok, ev.MethodReply)
    assert isinstance(declare_ok.method, commands.Queue.DeclareOk)
    assert declare_ok.method.queue == "amq.gen-1"


def test_reply_to_the_wrong_request() -> None:
    broker = opened()
    channel = broker.open_channel()
    broker.conn.send_method(channel, commands.Queue.Declare(queue="q"))
    broker.sent()
    error = assert_fails(broker, method_frame(channel, commands.Exchange.DeclareOk()), 505)
    assert "Queue.DeclareOk" in str(error)


def test_reply_nobody_asked_for() -> None:
    broker = opened()
    channel = broker.open_channel()
    assert_fails(broker, method_frame(channel, commands.Queue.PurgeOk(3)), 505)


def test_basic_get() -> None:
    broker = opened()
    channel = broker.open_channel()
    broker.conn.send_method(channel, commands.Basic.Get(queue="q"))
    broker.conn.send_method(channel, commands.Basic.Get(queue="q"))
    broker.sent()
    got = broker.method(channel, commands.Basic.GetEmpty())
    assert [type(e) for e in got] == [ev.MethodReply]
    get_ok = commands.Basic.GetOk(
        delivery_tag=9, redelivered=True, exchange="ex", routing_key="rk", message_count=4
    )
    props = Properties(message_id="m-1")
    got = broker.feed(content(channel, get_ok, b"hello world", props, chunk=5))
    assert [normalize(e) for e in got] == [
        normalize(ev.GetOk(channel, 9, True, "ex", "rk", 4, props, b"hello world"))
    ]


def test_consume_and_cancel() -> None:
    broker = opened()
    channel = broker.open_channel()
    broker.consume(channel, consumer_tag="c1")
    broker.conn.send_method(channel, commands.Basic.Cancel(consumer_tag="c1"))
    assert broker.sent_names() == ["Basic.Cancel"]
    got = broker.method(channel, commands.Basic.CancelOk(consumer_tag="c1"))
    assert [e.method.name for e in got if isinstance(e, ev.MethodReply)] == ["Basic.CancelOk"]


def test_broker_cancels_a_consumer() -> None:
    broker, channel = with_consumer()
    got = broker.method(channel, commands.Basic.Cancel(consumer_tag="ctag", nowait=True))
    assert [normalize(e) for e in got] == [normalize(ev.ConsumerCancelled(channel, "ctag"))]
    assert broker.sent() == []  # RabbitMQ's Basic.Cancel is nowait: no CancelOk


# --------------------------------------------------------------------------- deliveries


def test_delivery_is_assembled_from_its_frames() -> None:
    broker, channel = with_consumer()
    props = Properties(
        content_type="text/plain", headers={"a": 1, "b": "two"}, delivery_mode=2, priority=3
    )
    body = bytes(range(256)) * 40
    data = deliver_bytes(
        channel,
        body,
        delivery_tag=5,
        exchange="ex",
        routing_key="k.1",
        redelivered=True,
        properties=props,
        chunk=1000,
    )
    fed: list[ev.Event] = []
    frames = _frames(data)
    for piece in frames[:-1]:
        fed.extend(broker.feed(piece))
    assert fed == []  # nothing until the last body frame
    got = broker.feed(frames[-1])
    assert [normalize(e) for e in got] == [
        normalize(ev.Delivery(channel, "ctag", 5, True, "ex", "k.1", props, body))
    ]


def test_delivery_with_an_empty_body() -> None:
    broker, channel = with_consumer()
    got = broker.deliver(channel, b"")
    assert len(got) == 1 and isinstance(got[0], ev.Delivery)
    assert got[0].body == b""


def test_deliveries_on_two_channels_may_interleave() -> None:
    broker = opened()
    one = broker.open_channel()
    two = broker.open_channel()
    broker.consume(one)
    broker.consume(two)
    a = _frames(deliver_bytes(one, b"aaaaaa", chunk=2))
    b = _frames(deliver_bytes(two, b"bbbb", chunk=2))
    mixed = [a[0], b[0], a[1], b[1], a[2], b[2], a[3], b[3], a[4]]
    got = broker.feed(*mixed)
    assert [(e.channel, e.body) for e in got if isinstance(e, ev.Delivery)] == [
        (two, b"bbbb"),
        (one, b"aaaaaa"),
    ]


def _frames(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from(">I", data, pos + 3)
        out.append(data[pos : pos + 8 + size])
        pos += 8 + size
    return out


def test_body_longer_than_the_header_said() -> None:
    broker, channel = with_consumer()
    data = (
        method_frame(channel, commands.Basic.Deliver("ctag", 1, False, "", "q"))
        + header_frame(channel, 3)
        + body_frame(channel, b"abcd")
    )
    assert_fails(broker, data, 505)


def test_body_without_a_header() -> None:
    broker, channel = with_consumer()
    data = method_frame(channel, commands.Basic.Deliver("ctag", 1, False, "", "q"))
    assert_fails(broker, data + body_frame(channel, b"abcd"), 505)


def test_header_without_a_method() -> None:
    broker, channel = with_consumer()
    assert_fails(broker, header_frame(channel, 3), 505)


def test_second_header() -> None:
    broker, channel = with_consumer()
    data = deliver_bytes(channel, b"abc")
    frames = _frames(data)
    assert_fails(broker, frames[0] + frames[1] + frames[1], 505)


def test_method_while_content_is_expected() -> None:
    broker, channel = with_consumer()
    data = _frames(deliver_bytes(channel, b"abcdef", chunk=3))
    broker.feed(data[0], data[1], data[2])  # method, header, half the body
    assert_fails(broker, method_frame(channel, commands.Basic.Ack(delivery_tag=1)), 505)


def _poison_header(channel: int, body_size: int) -> bytes:
    # a timestamp property (flag 0x0040) too large for any datetime: pamqp cannot decode it
    payload = struct.pack(">HHQH", 60, 0, body_size, 0x0040) + b"\xff" * 8
    return raw_frame(FRAME_HEADER, channel, payload)


def test_undecodable_delivery_is_rejected_and_the_connection_goes_on() -> None:
    broker, channel = with_consumer()
    data = (
        method_frame(channel, commands.Basic.Deliver("ctag", 41, False, "ex", "rk"))
        + _poison_header(channel, 6)
        + body_frame(channel, b"abc")
        + body_frame(channel, b"def")
    )
    got = broker.feed(data)
    assert len(got) == 1
    event = got[0]
    assert isinstance(event, ev.UndecodableDelivery)
    assert (event.channel, event.consumer_tag, event.delivery_tag) == (channel, "ctag", 41)
    assert "out of range" in event.error
    [(number, reject)] = broker.sent_methods()
    assert number == channel
    assert isinstance(reject, commands.Basic.Reject)
    assert (reject.delivery_tag, reject.requeue) == (41, False)
    # the next delivery is fine
    got = broker.deliver(channel, b"next", delivery_tag=42)
    assert [(type(e), getattr(e, "body", None)) for e in got] == [(ev.Delivery, b"next")]
    assert broker.conn.is_open


@pytest.mark.parametrize(
    "header_payload",
    [
        struct.pack(">HHQ", 60, 0, 4) + b"\xff\xff",  # every flag set, no values
        struct.pack(">HHQH", 60, 0, 4, 0x2000) + b"\x00\x00\x00\x09\x01kT",  # cut headers table
    ],
    ids=["garbage-flags", "cut-table"],
)
def test_other_undecodable_headers(header_payload: bytes) -> None:
    broker, channel = with_consumer()
    data = (
        method_frame(channel, commands.Basic.Deliver("ctag", 3, False, "", "q"))
        + raw_frame(FRAME_HEADER, channel, header_payload)
        + body_frame(channel, b"abcd")
    )
    got = broker.feed(data)
    assert [type(e) for e in got] == [ev.UndecodableDelivery]
    assert broker.sent_names() == ["Basic.Reject"]


def test_undecodable_delivery_to_a_no_ack_consumer_is_not_rejected() -> None:
    broker, channel = with_consumer(no_ack=True)
    data = method_frame(
        channel, commands.Basic.Deliver("ctag", 1, False, "", "q")
    ) + _poison_header(channel, 0)
    got = broker.feed(data)
    assert [type(e) for e in got] == [ev.UndecodableDelivery]
    assert broker.sent() == []


def test_undecodable_get_ok() -> None:
    broker = opened()
    channel = broker.open_channel()
    broker.conn.send_method(channel, commands.Basic.Get(queue="q"))
    broker.sent()
    data = (
        method_frame(channel, commands.Basic.GetOk(7, False, "", "q", 0))
        + _poison_header(channel, 2)
        + body_frame(channel, b"xy")
    )
    [event] = broker.feed(data)
    assert isinstance(event, ev.UndecodableDelivery)
    assert (event.channel, event.consumer_tag, event.delivery_tag) == (channel, None, 7)
    methods = broker.sent_methods()
    assert [(m.name, getattr(m, "requeue", None)) for _, m in methods] == [("Basic.Reject", False)]


def test_undecodable_return_is_dropped() -> None:
    broker = opened()
    channel = broker.open_channel(confirm=True)
    broker.conn.publish(channel, "", "nowhere", b"x", mandatory=True)
    broker.sent()
    data = (
        method_frame(channel, commands.Basic.Return(312, "NO_ROUTE", "", "nowhere"))
        + _poison_header(channel, 1)
        + body_frame(channel, b"x")
    )
    assert broker.feed(data) == []
    assert broker.sent() == []
    got = broker.method(channel, commands.Basic.Ack(delivery_tag=1))
    assert [type(e) for e in got] == [ev.PublishConfirmed]


# --------------------------------------------------------------------------- confirms


def test_publish_without_confirms_has_no_tag() -> None:
    broker = opened()
    channel = broker.open_channel()
    assert broker.conn.publish(channel, "ex", "rk", b"body") is None
    assert broker.sent_names() == ["Basic.Publish", "ContentHeader", "ContentBody"]


def test_a_repeated_publish_key_is_sent_byte_for_byte_as_the_first_time() -> None:
    """The second publish to an (exchange, routing key) reuses the validated method frame:
    same bytes on the wire as the first, and a bad name is still refused every time."""
    broker = opened()
    channel = broker.open_channel()
    props = Properties(correlation_id="c", delivery_mode=2)
    broker.conn.publish(channel, "ex-cache", "rk-ü", b"body", props, mandatory=True)
    first = broker.conn.data_to_send()
    broker.conn.publish(channel, "ex-cache", "rk-ü", b"body", props, mandatory=True)
    assert broker.conn.data_to_send() == first
    method = decode_frames(first)[0][1]
    assert isinstance(method, commands.Basic.Publish)
    assert (method.exchange, method.routing_key, method.mandatory) == ("ex-cache", "rk-ü", True)
    broker.conn.publish(channel, "ex-cache", "rk-ü", b"body", props, mandatory=False)
    other = decode_frames(broker.conn.data_to_send())[0][1]
    assert isinstance(other, commands.Basic.Publish) and other.mandatory is False
    for _ in range(2):
        with pytest.raises(ValueError, match="routing_key"):
            broker.conn.publish(channel, "ex-cache", "r" * 256, b"body")
    assert broker.conn.data_to_send() == b""


def test_confirm_tags_start_at_one_per_channel() -> None:
    broker = opened()
    one = broker.open_channel(confirm=True)
    two = broker.open_channel(confirm=True)
    tags_one = [broker.conn.publish(one, "", "q", b"%d" % i) for i in range(3)]
    tags_two = [broker.conn.publish(two, "", "q", b"x")]
    assert tags_one == [1, 2, 3]
    assert tags_two == [1]
    published = [m for c, m in broker.sent_methods() if m.name == "Basic.Publish"]
    assert len(published) == 4


def test_confirms_single_multiple_and_nack() -> None:
    broker = opened()
    channel = broker.open_channel(confirm=True)
    for _ in range(5):
        broker.conn.publish(channel, "", "q", b"x")
    got = broker.feed(
        method_frame(channel, commands.Basic.Ack(delivery_tag=2, multiple=True)),
        method_frame(channel, commands.Basic.Nack(delivery_tag=3, multiple=False)),
        method_frame(channel, commands.Basic.Ack(delivery_tag=5, multiple=True)),
    )
    assert [normalize(e) for e in got] == [
        normalize(ev.PublishConfirmed(channel, 2, True, True)),
        normalize(ev.PublishConfirmed(channel, 3, False, False)),
        normalize(ev.PublishConfirmed(channel, 5, True, True)),
    ]


def test_confirm_of_an_unknown_publish() -> None:
    broker = opened()
    channel = broker.open_channel(confirm=True)
    broker.conn.publish(channel, "", "q", b"x")
    broker.sent()
    assert_fails(broker, method_frame(channel, commands.Basic.Ack(delivery_tag=2)), 503)


def test_ack_on_a_channel_without_confirms() -> None:
    broker = opened()
    channel = broker.open_channel()
    broker.conn.publish(channel, "", "q", b"x")
    broker.sent()
    assert_fails(broker, method_frame(channel, commands.Basic.Ack(delivery_tag=1)), 503)


def _returned(channel: int, routing_key: str, props: Properties | None = None) -> bytes:
    return content(
        channel,
        commands.Basic.Return(312, "NO_ROUTE", "ex", routing_key),
        b"payload",
        props,
    )


def test_return_is_matched_to_its_publish() -> None:
    broker = opened()
    channel = broker.open_channel(confirm=True)
    assert broker.conn.publish(channel, "ex", "bound", b"one", mandatory=True) == 1
    assert broker.conn.publish(channel, "ex", "unbound", b"two", mandatory=True) == 2
    got = broker.feed(
        _returned(channel, "unbound"),
        method_frame(channel, commands.Basic.Ack(delivery_tag=2)),
        method_frame(channel, commands.Basic.Ack(delivery_tag=1)),
    )
    assert [type(e) for e in got] == [ev.Returned, ev.PublishConfirmed, ev.PublishConfirmed]
    returned = got[0]
    assert isinstance(returned, ev.Returned)
    assert returned.delivery_tag == 2
    assert (returned.reply_code, returned.exchange, returned.routing_key, returned.body) == (
        312,
        "ex",
        "unbound",
        b"payload",
    )


def test_return_after_an_earlier_same_key_publish_was_acked() -> None:
    broker = opened()
    channel = broker.open_channel(confirm=True)
    broker.conn.publish(channel, "ex", "rk", b"one", mandatory=True)
    broker.conn.publish(channel, "ex", "rk", b"two", mandatory=True)
    got = broker.feed(
        method_frame(channel, commands.Basic.Ack(delivery_tag=1)),
        _returned(channel, "rk"),
        method_frame(channel, commands.Basic.Ack(delivery_tag=2)),
    )
    returned = [e for e in got if isinstance(e, ev.Returned)]
    assert [r.delivery_tag for r in returned] == [2]


def test_return_is_matched_by_message_id() -> None:
    broker = opened()
    channel = broker.open_channel(confirm=True)
    broker.conn.publish(channel, "ex", "rk", b"one", Properties(message_id="a"), mandatory=True)
    broker.conn.publish(channel, "ex", "rk", b"two", Properties(message_id="b"), mandatory=True)
    got = broker.feed(_returned(channel, "rk", Properties(message_id="b")))
    assert [e.delivery_tag for e in got if isinstance(e, ev.Returned)] == [2]


def test_unmatched_return() -> None:
    broker = opened()
    channel = broker.open_channel()  # no confirms: nothing to match
    broker.conn.publish(channel, "ex", "rk", b"x", mandatory=True)
    got = broker.feed(_returned(channel, "rk"))
    assert [e.delivery_tag for e in got if isinstance(e, ev.Returned)] == [None]


# --------------------------------------------------------------------------- connection level


def test_heartbeats_are_ignored() -> None:
    broker, channel = with_consumer()
    assert broker.feed(heartbeat_frame() * 3) == []
    assert broker.sent() == []
    # even between the frames of a delivery
    frames = _frames(deliver_bytes(channel, b"abcd", chunk=2))
    got = broker.feed(frames[0], heartbeat_frame(), frames[1], heartbeat_frame(), *frames[2:])
    assert [type(e) for e in got] == [ev.Delivery]


def test_frames_received_counts_complete_frames_only() -> None:
    """Liveness is judged on complete frames: bytes of a frame whose size field announces
    more than ever comes (a corrupt size field, a trickle) are no sign of life."""
    broker = opened()
    conn = broker.conn
    before = conn.frames_received
    broker.feed(heartbeat_frame() * 2)
    assert conn.frames_received == before + 2
    beat = heartbeat_frame()
    broker.feed(beat[:3])
    broker.feed(beat[3:7])
    assert conn.frames_received == before + 2  # incomplete: not counted
    broker.feed(beat[7:])
    assert conn.frames_received == before + 3
    # a body-frame header that announces 100,000 bytes (within frame_max), then heartbeats
    # that the peer goes on sending: they are swallowed by the announced frame
    broker.feed(struct.pack(">BHI", FRAME_BODY, 1, 100_000))
    for _ in range(50):
        broker.feed(heartbeat_frame())
    assert conn.frames_received == before + 3


def test_heartbeat_frame_is_queued_on_request() -> None:
    broker = opened()
    broker.conn.heartbeat_frame()
    assert broker.sent_names() == ["Heartbeat"]


def test_blocked_and_unblocked() -> None:
    broker = opened()
    got = broker.method(0, commands.Connection.Blocked(reason="low on memory"))
    assert [normalize(e) for e in got] == [normalize(ev.Blocked("low on memory"))]
    assert broker.conn.blocked
    got = broker.method(0, commands.Connection.Unblocked())
    assert [normalize(e) for e in got] == [normalize(ev.Unblocked())]
    assert not broker.conn.blocked


def test_broker_closes_the_connection() -> None:
    broker, channel = with_consumer()
    got = broker.method(0, commands.Connection.Close(320, "CONNECTION_FORCED - shutdown", 0, 0))
    assert [normalize(e) for e in got] == [
        normalize(ev.ConnectionClosed(320, "CONNECTION_FORCED - shutdown", True, False))
    ]
    assert broker.sent_names() == ["Connection.CloseOk"]
    assert broker.conn.state is ConnectionState.CLOSED
    assert broker.conn.channel_state(channel) is None
    with pytest.raises(ProtocolError):
        broker.conn.open_channel()


def test_client_closes_the_connection() -> None:
    broker, channel = with_consumer()
    broker.conn.close()
    [(number, close)] = broker.sent_methods()
    assert number == 0 and isinstance(close, commands.Connection.Close)
    assert close.reply_code == 200
    broker.conn.close()  # idempotent
    assert broker.sent() == []
    assert _state(broker) is ConnectionState.CLOSING
    # deliveries still in flight are fine
    assert [type(e) for e in broker.deliver(channel, b"x")] == [ev.Delivery]
    got = broker.method(0, commands.Connection.CloseOk())
    assert [normalize(e) for e in got] == [
        normalize(ev.ConnectionClosed(200, "Normal shutdown", False))
    ]
    assert broker.conn.state is ConnectionState.CLOSED


def test_both_sides_close_the_connection_at_once() -> None:
    broker = opened()
    broker.conn.close()
    broker.sent()
    got = broker.method(0, commands.Connection.Close(320, "CONNECTION_FORCED", 0, 0))
    assert [type(e) for e in got] == [ev.ConnectionClosed]
    assert broker.sent_names() == ["Connection.CloseOk"]


def test_unexpected_close_ok() -> None:
    broker = opened()
    assert_fails(broker, method_frame(0, commands.Connection.CloseOk()), 505)


def test_eof_after_the_handshake() -> None:
    broker = opened()
    assert broker.feed(b"") == []
    assert broker.conn.state is ConnectionState.CLOSED


# --------------------------------------------------------------------------- protocol errors


def test_frame_over_frame_max() -> None:
    broker, channel = with_consumer()
    assert_fails(broker, struct.pack(">BHI", FRAME_BODY, channel, 131072 - 7), 501)


def test_bad_frame_end_after_the_handshake() -> None:
    broker, channel = with_consumer()
    data = bytearray(method_frame(channel, commands.Basic.QosOk()))
    data[-1] = 0xCD
    assert_fails(broker, bytes(data), 501)


def test_unknown_frame_type_after_the_handshake() -> None:
    broker, _ = with_consumer()
    assert_fails(broker, raw_frame(5, 1, b"x"), 501)


def test_undecodable_method_after_the_handshake() -> None:
    broker, _ = with_consumer()
    assert_fails(broker, raw_frame(1, 1, struct.pack(">I", 0x00770077)), 502)


@pytest.mark.parametrize(
    "make",
    [
        lambda: header_frame(0, 3),
        lambda: body_frame(0, b"abc"),
    ],
    ids=["header", "body"],
)
def test_content_on_channel_0(make: Callable[[], bytes]) -> None:
    broker, _ = with_consumer()
    assert_fails(broker, make(), 505)


@pytest.mark.parametrize(
    "make",
    [
        lambda: method_frame(9, commands.Basic.QosOk()),
        lambda: method_frame(9, commands.Channel.Close(404, "x", 0, 0)),
        lambda: deliver_bytes(9, b"x"),
        lambda: header_frame(9, 3),
        lambda: body_frame(9, b"abc"),
    ],
    ids=["method", "close", "delivery", "header", "body"],
)
def test_frames_for_an_unknown_channel(make: Callable[[], bytes]) -> None:
    broker, _ = with_consumer()
    assert_fails(broker, make(), 504)


def test_channel_method_on_channel_0() -> None:
    broker = opened()
    assert_fails(broker, method_frame(0, commands.Basic.QosOk()), 503)


def test_second_connection_start() -> None:
    broker = opened()
    assert_fails(broker, method_frame(0, start_method()), 505)


def test_protocol_header_after_the_handshake() -> None:
    broker = opened()
    assert_fails(broker, PROTOCOL_HEADER, 501)


# --------------------------------------------------------------------------- properties
#
# A whole session in three phases: each phase's server bytes may only be sent after the client
# queued its requests (a broker cannot answer Channel.Open before it was sent), so chunks are
# cut inside phases.

BIG = bytes(i % 253 for i in range(10_000))


def _phase_bytes() -> tuple[bytes, bytes, bytes]:
    handshake_bytes = b"".join(
        [
            method_frame(0, start_method()),
            method_frame(0, commands.Connection.Tune(2047, 4096, 60)),
            method_frame(0, commands.Connection.OpenOk()),
        ]
    )
    channel_bytes = method_frame(1, commands.Channel.OpenOk())
    props = Properties(headers={"k": "v", "n": 1}, message_id="m", correlation_id="c")
    session = b"".join(
        [
            method_frame(1, commands.Confirm.SelectOk()),
            heartbeat_frame(),
            method_frame(1, commands.Basic.ConsumeOk(consumer_tag="ctag")),
            deliver_bytes(1, BIG, delivery_tag=1, chunk=4088, properties=props),
            heartbeat_frame(),
            deliver_bytes(1, b"", delivery_tag=2),
            method_frame(1, commands.Basic.Ack(delivery_tag=1)),
            _returned(1, "nowhere"),
            method_frame(1, commands.Basic.Ack(delivery_tag=2)),
            method_frame(0, commands.Connection.Blocked(reason="memory")),
            method_frame(1, commands.Basic.Nack(delivery_tag=3)),
            content(1, commands.Basic.GetOk(5, True, "", "q", 2), b"got it", chunk=2),
            method_frame(0, commands.Connection.Unblocked()),
            deliver_bytes(1, b"third", delivery_tag=3, redelivered=True),
            method_frame(1, commands.Channel.Flow(active=True)),
            method_frame(1, commands.Basic.Ack(delivery_tag=5, multiple=True)),
            method_frame(1, commands.Basic.Cancel(consumer_tag="ctag", nowait=True)),
        ]
    )
    return handshake_bytes, channel_bytes, session


PHASES = _phase_bytes()


def _client_step(conn: AMQPConnection, phase: int) -> None:
    """What the client does after server phase ``phase`` was fully received."""
    if phase == 0:
        assert conn.open_channel() == 1
    elif phase == 1:
        conn.send_method(1, commands.Confirm.Select())
        conn.send_method(1, commands.Basic.Consume(queue="q", consumer_tag="ctag"))
        conn.send_method(1, commands.Basic.Get(queue="q"))
        for i in range(5):
            conn.publish(1, "ex", "nowhere" if i == 1 else "q", b"m%d" % i, mandatory=i == 1)


def _run_session(cuts: list[list[int]]) -> tuple[list[tuple[Any, ...]], bytes]:
    conn = AMQPConnection(frame_max=4096)
    conn.initiate()
    got: list[ev.Event] = []
    sent = [conn.data_to_send()]
    for phase, (data, phase_cuts) in enumerate(zip(PHASES, cuts, strict=True)):
        bounds = [0, *sorted(c % (len(data) + 1) for c in phase_cuts), len(data)]
        for a, b in itertools.pairwise(bounds):
            if a != b:
                got.extend(conn.receive_data(data[a:b]))
            sent.append(conn.data_to_send())
        _client_step(conn, phase)
        sent.append(conn.data_to_send())
    return [normalize(e) for e in got], b"".join(sent)


WHOLE_EVENTS, WHOLE_SENT = _run_session([[], [], []])


def test_the_scripted_session_means_what_it_says() -> None:
    kinds = [e[0] for e in WHOLE_EVENTS]
    assert kinds == [
        "ConnectionOpened",
        "ChannelOpened",
        "MethodReply",  # SelectOk
        "MethodReply",  # ConsumeOk
        "Delivery",
        "Delivery",
        "PublishConfirmed",
        "Returned",
        "PublishConfirmed",
        "Blocked",
        "PublishConfirmed",
        "GetOk",
        "Unblocked",
        "Delivery",
        "PublishConfirmed",
        "ConsumerCancelled",
    ]
    deliveries = [e for e in WHOLE_EVENTS if e[0] == "Delivery"]
    assert [d[-1] for d in deliveries] == [BIG, b"", b"third"]
    returned = next(e for e in WHOLE_EVENTS if e[0] == "Returned")
    assert returned[-1] == 2  # matched to the mandatory publish
    names = [frame_name(f) for _, f in decode_frames(WHOLE_SENT)]
    assert names.count("Basic.Publish") == 5
    assert names[-1] == "Channel.FlowOk"


@settings(
    max_examples=150,
    derandomize=True,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    cuts=st.tuples(
        st.lists(st.integers(0, 10**6), max_size=8),
        st.lists(st.integers(0, 10**6), max_size=3),
        st.lists(st.integers(0, 10**6), max_size=40),
    )
)
def test_any_chunking_gives_the_same_events(
    cuts: tuple[list[int], list[int], list[int]],
) -> None:
    got, sent = _run_session(list(cuts))
    assert got == WHOLE_EVENTS
    assert sent == WHOLE_SENT


def test_byte_at_a_time_gives_the_same_events() -> None:
    cuts = [list(range(1, len(p))) for p in PHASES]
    got, sent = _run_session(cuts)
    assert got == WHOLE_EVENTS
    assert sent == WHOLE_SENT


# -- robustness: garbage gives ProtocolError, nothing else, quickly


def _busy_connection() -> AMQPConnection:
    """Open, with a confirm channel, a consumer, a pending Basic.Get and unconfirmed publishes."""
    broker = opened(frame_max=8192)
    channel = broker.open_channel(confirm=True)
    broker.consume(channel)
    broker.open_channel()
    broker.conn.send_method(channel, commands.Basic.Get(queue="q"))
    for i in range(5):
        broker.conn.publish(channel, "", "q", b"x", mandatory=i % 2 == 0)
    broker.sent()
    return broker.conn


def _feed_garbage(conn: AMQPConnection, chunks: list[bytes]) -> None:
    """Feed ``chunks``; the only exception allowed is ProtocolError, then the broker is told."""
    error: ProtocolError | None = None
    for chunk in chunks:
        try:
            conn.receive_data(chunk)
        except ProtocolError as exc:
            error = exc
            break
        decode_frames(conn.data_to_send())  # whatever it answered is well-formed
    if error is None:
        return
    # the broker is told why, last: Connection.Close with the same code (unless the connection
    # was already closed, e.g. by the broker's own Connection.Close)
    sent = [f for _, f in decode_frames(conn.data_to_send()) if isinstance(f, Frame)]
    closes = [f for f in sent if isinstance(f, commands.Connection.Close)]
    if closes:
        assert sent[-1] is closes[0] and len(closes) == 1
        assert closes[0].reply_code == error.reply_code
    else:
        assert not any(isinstance(f, commands.Connection.CloseOk) for f in sent), sent
    assert conn.state is ConnectionState.CLOSED


FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=timedelta(seconds=1),
    suppress_health_check=[HealthCheck.too_slow],
)

VALID_SESSION = b"".join(
    [
        deliver_bytes(1, b"0123456789" * 30, delivery_tag=1, chunk=100),
        method_frame(1, commands.Basic.Ack(delivery_tag=2, multiple=True)),
        content(1, commands.Basic.Return(312, "NO_ROUTE", "", "q"), b"r" * 50),
        method_frame(1, commands.Basic.Nack(delivery_tag=3)),
        heartbeat_frame(),
        content(1, commands.Basic.GetOk(1, False, "", "q", 0), b"g" * 20, chunk=7),
        method_frame(0, commands.Connection.Blocked(reason="x")),
        deliver_bytes(
            1,
            b"abc",
            delivery_tag=2,
            properties=Properties(headers={"a": [1, "b", {"c": 2.5}]}, message_id="m"),
        ),
        method_frame(2, commands.Channel.Close(406, "PRECONDITION_FAILED", 50, 10)),
        method_frame(1, commands.Basic.Cancel(consumer_tag="ctag", nowait=True)),
        method_frame(0, commands.Connection.Close(320, "CONNECTION_FORCED", 0, 0)),
    ]
)


@FUZZ
@given(chunks=st.lists(st.binary(min_size=1, max_size=600), min_size=1, max_size=5))
def test_random_bytes_only_raise_protocol_error(chunks: list[bytes]) -> None:
    _feed_garbage(_busy_connection(), chunks)


_METHOD_INDEXES = sorted(commands.INDEX_MAPPING)


@st.composite
def _framed_garbage(draw: st.DrawFn) -> bytes:
    """Frames with valid framing but random contents: they get past the frame buffer."""
    frames = []
    for _ in range(draw(st.integers(1, 6))):
        frame_type = draw(st.sampled_from([1, 1, 1, 2, 3, 8]))
        channel = draw(st.sampled_from([0, 1, 1, 2, 3]))
        payload = draw(st.binary(max_size=200))
        if frame_type == 1 and draw(st.booleans()):
            payload = struct.pack(">I", draw(st.sampled_from(_METHOD_INDEXES))) + payload
        elif frame_type == 2 and draw(st.booleans()):
            payload = struct.pack(">HHQ", 60, 0, draw(st.integers(0, 300))) + payload
        frames.append(raw_frame(frame_type, channel, payload))
    return b"".join(frames)


@FUZZ
@given(data=_framed_garbage())
def test_well_framed_garbage_only_raises_protocol_error(data: bytes) -> None:
    _feed_garbage(_busy_connection(), [data])


@st.composite
def _mutated(draw: st.DrawFn) -> list[bytes]:
    data = bytearray(VALID_SESSION)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[pos : pos + draw(st.integers(1, 8))]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    bounds = [0, *cuts, len(data)]
    return [bytes(data[a:b]) for a, b in itertools.pairwise(bounds) if a != b]


def test_the_valid_session_is_valid() -> None:
    conn = _busy_connection()
    got = conn.receive_data(VALID_SESSION)
    assert [type(e) for e in got][-1] is ev.ConnectionClosed


@FUZZ
@given(chunks=_mutated())
def test_mutated_streams_only_raise_protocol_error(chunks: list[bytes]) -> None:
    _feed_garbage(_busy_connection(), chunks)


def test_many_random_mutations_quickly() -> None:
    """A larger, seeded sweep than hypothesis' (cheap: about 2,000 streams)."""
    rng = random.Random(20240601)
    for _ in range(2000):
        data = bytearray(VALID_SESSION)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(data))
            data[pos] = rng.randrange(256)
        _feed_garbage(_busy_connection(), [bytes(data)])


def test_data_to_send_parts_keeps_a_large_message_uncopied() -> None:
    """The parts are the queued buffers themselves (no join of a 1 MiB message with the
    frames around it) and, concatenated, exactly what data_to_send() would give."""
    broker = opened()
    channel = broker.open_channel()
    broker.conn.publish(channel, "", "q", b"small")
    broker.conn.publish(channel, "", "q", b"x" * (1 << 20))
    broker.conn.ack(channel, 1)
    size = broker.conn.bytes_to_send
    parts = broker.conn.data_to_send_parts()
    assert len(parts) == 3
    assert max(len(p) for p in parts) > 1 << 20
    assert sum(map(len, parts)) == size
    assert broker.conn.bytes_to_send == 0
    assert broker.conn.data_to_send_parts() == []
    names = [frame_name(f) for _, f in decode_frames(b"".join(parts))]
    assert names[:3] == ["Basic.Publish", "ContentHeader", "ContentBody"]
    assert names[-1] == "Basic.Ack"

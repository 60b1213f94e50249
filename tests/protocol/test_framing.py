"""Tests of kiwi_anyio.protocol._framing: the receive buffer and message marshalling."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body as pamqp_body
from pamqp import commands, frame, header

from kiwi_anyio.exceptions import ProtocolError
from kiwi_anyio.protocol._framing import (
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    HEARTBEAT_FRAME,
    MIN_FRAME_MAX,
    PROTOCOL_HEADER,
    BadContentHeader,
    FrameBuffer,
    marshal_message,
    marshal_method,
)

from .fakes import (
    body_frame,
    content,
    decode_frames,
    frame_name,
    header_frame,
    heartbeat_frame,
    method_frame,
    raw_frame,
)

Properties = commands.Basic.Properties

PROPS = Properties(
    content_type="application/json",
    delivery_mode=2,
    correlation_id="c-1",
    headers={"x-kind": "task", "n": 3},
)
DELIVER = commands.Basic.Deliver(
    consumer_tag="ctag", delivery_tag=7, exchange="ex", routing_key="rk"
)
#: A realistic server byte stream: methods, a delivery in three body frames, a heartbeat, an
#: empty-bodied delivery, confirms.
FRAMES: list[tuple[int, Any]] = [
    (1, commands.Channel.OpenOk()),
    (1, DELIVER),
    (1, header.ContentHeader(weight=0, body_size=10, properties=PROPS)),
    (1, b"abcd"),
    (1, b"efgh"),
    (1, b"ij"),
    (0, None),
    (2, commands.Basic.Deliver(consumer_tag="c2", delivery_tag=1, exchange="", routing_key="q")),
    (2, header.ContentHeader(weight=0, body_size=0, properties=Properties())),
    (1, commands.Basic.Ack(delivery_tag=3, multiple=True)),
    (1, commands.Basic.Nack(delivery_tag=4)),
]


def _wire(frames: list[tuple[int, Any]]) -> bytes:
    parts = []
    for channel, obj in frames:
        if obj is None:
            parts.append(heartbeat_frame())
        elif isinstance(obj, bytes):
            parts.append(body_frame(channel, obj))
        else:
            parts.append(frame.marshal(obj, channel))
    return b"".join(parts)


WIRE = _wire(FRAMES)


def _comparable(channel: int, payload: Any) -> tuple[Any, ...]:
    if isinstance(payload, header.ContentHeader):
        return (channel, "ContentHeader", payload.body_size, dict(payload.properties))
    if payload is None or isinstance(payload, bytes):
        return (channel, payload)
    return (channel, payload.name, dict(payload))


EXPECTED = [_comparable(c, p) for c, p in FRAMES]


def _all_frames(fb: FrameBuffer) -> list[tuple[int, int, Any]]:
    out = []
    while (parsed := fb.next_frame()) is not None:
        out.append(parsed)
    return out


def _parse(data: bytes, frame_max: int = 131072) -> list[tuple[int, int, Any]]:
    fb = FrameBuffer(frame_max)
    fb.receive_data(data)
    return _all_frames(fb)


def _error(data: bytes, frame_max: int = 131072) -> ProtocolError:
    fb = FrameBuffer(frame_max)
    fb.receive_data(data)
    with pytest.raises(ProtocolError) as info:
        _all_frames(fb)
    return info.value


# --------------------------------------------------------------------------- FrameBuffer


def test_frames_come_out_typed_and_in_order() -> None:
    got = _parse(WIRE)
    assert [_comparable(c, p) for _, c, p in got] == EXPECTED
    assert [t for t, _, _ in got] == [
        FRAME_METHOD,
        FRAME_METHOD,
        FRAME_HEADER,
        FRAME_BODY,
        FRAME_BODY,
        FRAME_BODY,
        FRAME_HEARTBEAT,
        FRAME_METHOD,
        FRAME_HEADER,
        FRAME_METHOD,
        FRAME_METHOD,
    ]


@given(cuts=st.lists(st.integers(0, len(WIRE)), max_size=12).map(sorted))
def test_any_split_of_the_wire_gives_the_same_frames(cuts: list[int]) -> None:
    fb, got = FrameBuffer(131072), []
    for a, b in zip([0, *cuts], [*cuts, len(WIRE)], strict=True):
        fb.receive_data(WIRE[a:b])
        got.extend(_all_frames(fb))
    assert [_comparable(c, p) for _, c, p in got] == EXPECTED
    assert fb.buffered == 0


def test_byte_by_byte() -> None:
    fb, got = FrameBuffer(131072), []
    for i in range(len(WIRE)):
        fb.receive_data(WIRE[i : i + 1])
        got.extend(_all_frames(fb))
    assert [_comparable(c, p) for _, c, p in got] == EXPECTED


def test_incomplete_frame_is_kept_until_complete() -> None:
    data = method_frame(1, commands.Basic.Ack(delivery_tag=1))
    fb = FrameBuffer()
    for i in range(len(data) - 1):
        fb.receive_data(data[i : i + 1])
        assert fb.next_frame() is None
        assert fb.buffered == i + 1
    fb.receive_data(data[-1:])
    parsed = fb.next_frame()
    assert parsed is not None and parsed[2] is not None
    assert fb.next_frame() is None
    assert fb.buffered == 0


def test_empty_body_frame_is_empty_bytes() -> None:
    assert _parse(body_frame(3, b"")) == [(FRAME_BODY, 3, b"")]


def test_heartbeat() -> None:
    assert _parse(HEARTBEAT_FRAME + heartbeat_frame()) == [
        (FRAME_HEARTBEAT, 0, None),
        (FRAME_HEARTBEAT, 0, None),
    ]


def test_frame_exactly_frame_max_is_accepted() -> None:
    data = body_frame(1, b"x" * (MIN_FRAME_MAX - 8))
    assert len(data) == MIN_FRAME_MAX
    assert _parse(data, MIN_FRAME_MAX) == [(FRAME_BODY, 1, b"x" * (MIN_FRAME_MAX - 8))]


def test_frame_over_frame_max_fails_from_its_header_alone() -> None:
    data = body_frame(1, b"x" * (MIN_FRAME_MAX - 7))
    fb = FrameBuffer(MIN_FRAME_MAX)
    fb.receive_data(data[:7])  # the size is known before the payload arrives
    with pytest.raises(ProtocolError) as info:
        fb.next_frame()
    assert info.value.reply_code == 501
    assert "frame_max" in str(info.value)


def test_huge_declared_size_fails_without_waiting() -> None:
    error = _error(struct.pack(">BHI", FRAME_BODY, 1, 0xFFFFFFFF))
    assert error.reply_code == 501


def test_bad_frame_end() -> None:
    data = bytearray(method_frame(1, commands.Basic.Ack(delivery_tag=1)))
    data[-1] = 0x00
    error = _error(bytes(data))
    assert error.reply_code == 501
    assert "frame-end" in str(error)


@pytest.mark.parametrize("frame_type", [0, 4, 5, 6, 7, 9, 0x42, 0xFF])
def test_unknown_frame_type(frame_type: int) -> None:
    error = _error(raw_frame(frame_type, 1, b"abc"))
    assert error.reply_code == 501
    assert str(frame_type) in str(error)


def test_protocol_header_from_the_server() -> None:
    error = _error(PROTOCOL_HEADER)
    assert error.reply_code == 501
    assert "AMQP" in str(error)


def test_heartbeat_on_a_channel() -> None:
    error = _error(raw_frame(FRAME_HEARTBEAT, 5, b""))
    assert error.reply_code == 501


def test_content_header_too_short() -> None:
    error = _error(raw_frame(FRAME_HEADER, 1, b"\x00\x3c\x00\x00"))
    assert error.reply_code == 501


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # no method index at all
        b"\x00\x3c",  # half an index
        struct.pack(">I", 0x00FF00FF),  # unknown method
        struct.pack(">I", commands.Basic.Deliver.index) + b"\x05ab",  # truncated arguments
        struct.pack(">I", commands.Connection.Close.index) + b"\x00",
    ],
)
def test_undecodable_method(payload: bytes) -> None:
    error = _error(raw_frame(FRAME_METHOD, 1, payload))
    assert error.reply_code == 502


def _nested_table(depth: int) -> bytes:
    inner = b""
    for _ in range(depth):
        inner = b"\x01kF" + struct.pack(">I", len(inner)) + inner
    return struct.pack(">I", len(inner)) + inner


def test_deeply_nested_table_in_a_method_is_a_protocol_error() -> None:
    # pamqp decodes tables recursively: a hostile broker must not crash us with RecursionError.
    method = commands.Queue.Declare(queue="q")
    payload = struct.pack(">I", method.index) + method.marshal()
    assert payload.endswith(b"\x00\x00\x00\x00")  # the empty arguments table
    payload = payload[:-4] + _nested_table(5000)
    error = _error(raw_frame(FRAME_METHOD, 1, payload), frame_max=1 << 20)
    assert error.reply_code == 502


def test_deeply_nested_headers_make_a_bad_content_header() -> None:
    payload = struct.pack(">HHQH", 60, 0, 42, 0x2000) + _nested_table(5000)  # headers flag
    [(frame_type, channel, bad)] = _parse(raw_frame(FRAME_HEADER, 1, payload), 1 << 20)
    assert (frame_type, channel) == (FRAME_HEADER, 1)
    assert isinstance(bad, BadContentHeader)
    assert bad.body_size == 42


def _timestamp_header(body_size: int) -> bytes:
    # flags: timestamp only (bit 6 of the first flag word: 0x0040); value out of any range
    return struct.pack(">HHQH", 60, 0, body_size, 0x0040) + b"\xff" * 8


@pytest.mark.parametrize(
    "payload",
    [
        _timestamp_header(5),
        struct.pack(">HHQ", 60, 0, 5) + b"\xff\xff",  # every flag, continuation, no values
        struct.pack(">HHQ", 60, 0, 5) + b"\x80",  # truncated flag word
        struct.pack(">HHQH", 60, 0, 5, 0x1000),  # delivery mode flag, no value
        struct.pack(">HHQH", 60, 0, 5, 0x2000) + b"\x00\x00\x00\x09\x01kT",  # cut table
    ],
    ids=["timestamp-out-of-range", "all-flags", "cut-flag-word", "no-value", "cut-headers"],
)
def test_undecodable_content_header_is_reported_not_raised(payload: bytes) -> None:
    [(frame_type, channel, bad)] = _parse(raw_frame(FRAME_HEADER, 4, payload))
    assert (frame_type, channel) == (FRAME_HEADER, 4)
    assert isinstance(bad, BadContentHeader)
    assert bad.body_size == 5
    assert bad.error


def test_buffer_continues_after_a_bad_content_header() -> None:
    data = raw_frame(FRAME_HEADER, 1, _timestamp_header(2)) + body_frame(1, b"ok")
    got = _parse(data)
    assert isinstance(got[0][2], BadContentHeader)
    assert got[1] == (FRAME_BODY, 1, b"ok")


# --------------------------------------------------------------------------- marshalling


def test_marshal_method_round_trip() -> None:
    data = marshal_method(3, commands.Queue.Declare(queue="q", durable=True))
    [(channel, method)] = decode_frames(data)
    assert channel == 3
    assert isinstance(method, commands.Queue.Declare)
    assert method.queue == "q" and method.durable


def _publish(body: bytes, frame_max: int, props: Properties | None = None) -> bytes:
    return marshal_message(
        5,
        commands.Basic.Publish(exchange="ex", routing_key="rk"),
        props or PROPS,
        body,
        frame_max,
    )


def _split(data: bytes) -> list[bytes]:
    """The raw frames of ``data``."""
    frames, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from(">I", data, pos + 3)
        frames.append(data[pos : pos + 8 + size])
        pos += 8 + size
    return frames


@pytest.mark.parametrize("frame_max", [MIN_FRAME_MAX, 8192, 131072])
@pytest.mark.parametrize("extra", [-1, 0, 1])
@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_body_is_split_at_frame_max_minus_8(frame_max: int, extra: int, chunks: int) -> None:
    chunk = frame_max - 8
    body = bytes(range(256)) * ((chunk * chunks + extra) // 256 + 1)
    body = body[: chunk * chunks + extra]
    raw = _split(_publish(body, frame_max))
    decoded = decode_frames(b"".join(raw))
    assert [frame_name(f) for _, f in decoded[:2]] == ["Basic.Publish", "ContentHeader"]
    assert {c for c, _ in decoded} == {5}
    bodies = [f.value for _, f in decoded[2:] if isinstance(f, pamqp_body.ContentBody)]
    assert len(bodies) == len(decoded) - 2
    assert b"".join(bodies) == body
    assert all(len(b) == chunk for b in bodies[:-1])  # every frame but the last is full
    assert len(bodies) == -(-len(body) // chunk)
    assert max(len(f) for f in raw) <= frame_max
    content_header = decoded[1][1]
    assert isinstance(content_header, header.ContentHeader)
    assert content_header.body_size == len(body)
    assert dict(content_header.properties) == dict(PROPS)


def test_empty_body_has_no_body_frame() -> None:
    decoded = decode_frames(_publish(b"", MIN_FRAME_MAX))
    assert [frame_name(f) for _, f in decoded] == ["Basic.Publish", "ContentHeader"]


@settings(max_examples=100)
@given(size=st.integers(0, 40_000), frame_max=st.integers(MIN_FRAME_MAX, 20_000))
def test_no_frame_exceeds_frame_max(size: int, frame_max: int) -> None:
    body = bytes(i % 251 for i in range(size))
    raw = _split(_publish(body, frame_max))
    assert all(len(f) <= frame_max for f in raw)
    decoded = decode_frames(b"".join(raw))
    assert b"".join(f.value for _, f in decoded[2:]) == body
    assert len(decoded) - 2 == -(-size // (frame_max - 8))


def _header_frame_size(props: Properties) -> int:
    return len(header_frame(1, 0, props))


def test_header_frame_over_frame_max_is_refused() -> None:
    base = _header_frame_size(Properties(headers={"h": ""}))
    fits = Properties(headers={"h": "x" * (MIN_FRAME_MAX - base)})
    assert _header_frame_size(fits) == MIN_FRAME_MAX
    decoded = decode_frames(_publish(b"body", MIN_FRAME_MAX, fits))
    assert [frame_name(f) for _, f in decoded] == ["Basic.Publish", "ContentHeader", "ContentBody"]

    too_big = Properties(headers={"h": "x" * (MIN_FRAME_MAX - base + 1)})
    with pytest.raises(ProtocolError) as info:
        _publish(b"body", MIN_FRAME_MAX, too_big)
    assert "frame_max" in str(info.value)


def test_server_content_round_trips_through_the_buffer() -> None:
    data = content(2, DELIVER, b"0123456789", PROPS, chunk=4)
    got = _parse(data)
    assert [p for t, _, p in got if t == FRAME_BODY] == [b"0123", b"4567", b"89"]

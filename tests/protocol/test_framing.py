"""Tests of kiwi_anyio.protocol._framing: the receive buffer and message marshalling."""

from __future__ import annotations

import datetime
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body as pamqp_body
from pamqp import commands, frame, header
from pamqp.base import Frame

from kiwi_anyio.exceptions import ProtocolError
from kiwi_anyio.protocol import _framing
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


# --------------------------------------------------------------------------- fast paths
#
# The per-message frames are decoded and encoded by hand (kiwi_anyio.protocol._framing); the
# result must be exactly pamqp's: the same classes, the same attribute values and types, the
# same bytes, and the same errors (anything unusual is left to pamqp).

_SLOTS_OF: dict[type, list[str]] = {}


def _state(obj: Any) -> Any:
    """Everything about a pamqp object: its class, every attribute (value and type)."""
    if isinstance(obj, header.ContentHeader):
        return (
            header.ContentHeader,
            [(k, v, type(v)) for k, v in vars(obj).items() if k != "properties"],
            _state(obj.properties),
        )
    if isinstance(obj, BadContentHeader):
        return obj
    slots = type(obj).__slots__
    return (
        type(obj),
        [(name, getattr(obj, name), type(getattr(obj, name))) for name in slots],
        {k: v for k, v in vars(obj).items() if k not in slots},
    )


def _pamqp_decode(data: bytes) -> Any:
    """What pamqp makes of one frame, or the exception it raises."""
    try:
        return _state(frame.unmarshal(data)[2])
    except Exception as exc:
        return type(exc)


def _ours(data: bytes) -> Any:
    """What the FrameBuffer makes of one frame (an exception type for a ProtocolError)."""
    fb = FrameBuffer(1 << 20)
    fb.receive_data(data)
    try:
        parsed = fb.next_frame()
    except ProtocolError:
        return ProtocolError
    assert parsed is not None
    assert fb.buffered == 0
    return _state(parsed[2])


def _shortstr(value: str) -> bytes:
    raw = value.encode()
    return bytes([len(raw)]) + raw


def _short_text() -> st.SearchStrategy[str]:
    return st.text(max_size=60).filter(lambda s: len(s.encode()) <= 255) | st.text(
        st.characters(codec="utf-8"), min_size=60, max_size=255
    ).map(lambda s: s.encode()[:255].decode(errors="ignore"))


@given(
    consumer_tag=_short_text(),
    delivery_tag=st.integers(0, 2**64 - 1),
    bits=st.integers(0, 255),
    exchange=_short_text(),
    routing_key=_short_text(),
    trailing=st.binary(max_size=3),
    channel=st.integers(1, 65535),
)
def test_fast_deliver_is_pamqps(
    consumer_tag: str,
    delivery_tag: int,
    bits: int,
    exchange: str,
    routing_key: str,
    trailing: bytes,
    channel: int,
) -> None:
    payload = (
        struct.pack(">I", commands.Basic.Deliver.index)
        + _shortstr(consumer_tag)
        + struct.pack(">QB", delivery_tag, bits)
        + _shortstr(exchange)
        + _shortstr(routing_key)
        + trailing
    )
    data = raw_frame(FRAME_METHOD, channel, payload)
    ours = _ours(data)
    assert ours == _pamqp_decode(data)
    assert ours[0] is commands.Basic.Deliver


@pytest.mark.parametrize("method", [commands.Basic.Ack, commands.Basic.Nack])
@given(delivery_tag=st.integers(0, 2**64 - 1), bits=st.integers(0, 255))
def test_fast_confirms_are_pamqps(method: type[Frame], delivery_tag: int, bits: int) -> None:
    payload = struct.pack(">IQB", method.index, delivery_tag, bits)
    data = raw_frame(FRAME_METHOD, 1, payload)
    ours = _ours(data)
    assert ours == _pamqp_decode(data)
    assert ours[0] is method


@pytest.mark.parametrize(
    "index", [commands.Basic.Deliver.index, commands.Basic.Ack.index, commands.Basic.Nack.index]
)
@given(arguments=st.binary(max_size=48))
def test_fast_method_decoding_of_any_bytes_is_pamqps(index: int, arguments: bytes) -> None:
    """Truncated, overlong or invalid UTF-8 arguments: the same object or a 502, as pamqp."""
    data = raw_frame(FRAME_METHOD, 1, struct.pack(">I", index) + arguments)
    ours = _ours(data)
    theirs = _pamqp_decode(data)
    if isinstance(theirs, type):
        assert ours is ProtocolError
    else:
        assert ours == theirs


def test_fast_method_does_not_read_into_the_next_frame() -> None:
    # the Deliver's routing key says 9 bytes; only 2 are in the frame, the rest follows
    payload = struct.pack(">I", commands.Basic.Deliver.index) + b"\x00" + bytes(9) + b"\x00\x09q1"
    data = raw_frame(FRAME_METHOD, 1, payload) + body_frame(1, b"x" * 20)
    fb = FrameBuffer()
    fb.receive_data(data)
    method = fb.next_frame()
    assert method is not None
    assert _state(method[2]) == _pamqp_decode(raw_frame(FRAME_METHOD, 1, payload))
    assert fb.next_frame() == (FRAME_BODY, 1, b"x" * 20)


_TABLE_VALUES = st.one_of(
    st.text(max_size=20),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.none(),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
)
_PROPERTIES = st.builds(
    Properties,
    content_type=st.none() | _short_text(),
    content_encoding=st.none() | _short_text(),
    headers=st.none()
    | st.dictionaries(st.text(min_size=1, max_size=10), _TABLE_VALUES, max_size=4),
    delivery_mode=st.none() | st.sampled_from([1, 2]),
    priority=st.none() | st.integers(0, 255),
    correlation_id=st.none() | _short_text(),
    reply_to=st.none() | _short_text(),
    expiration=st.none() | st.from_regex(r"[0-9]{1,9}", fullmatch=True),
    message_id=st.none() | _short_text(),
    timestamp=st.none()
    | st.integers(0, 2**32 - 1).map(lambda t: datetime.datetime.fromtimestamp(t, datetime.UTC)),
    message_type=st.none() | _short_text(),
    user_id=st.none() | _short_text(),
    app_id=st.none() | _short_text(),
)


@given(properties=_PROPERTIES, body_size=st.integers(0, 2**64 - 1))
def test_fast_content_header_is_pamqps(properties: Properties, body_size: int) -> None:
    data = header_frame(3, body_size, properties)
    ours = _ours(data)
    assert ours == _pamqp_decode(data)
    assert ours[0] is header.ContentHeader


@given(
    flags=st.integers(0, 0xFFFF),
    rest=st.binary(max_size=64),
    class_weight=st.sampled_from([(60, 0), (0, 7)]),
)
def test_fast_content_header_of_any_bytes_is_pamqps(
    flags: int, rest: bytes, class_weight: tuple[int, int]
) -> None:
    """Random flags and property bytes: the same header, or the same BadContentHeader."""
    payload = struct.pack(">HHQH", *class_weight, 12, flags) + rest
    data = raw_frame(FRAME_HEADER, 1, payload)
    ours = _ours(data)
    try:
        theirs = _state(frame.unmarshal(data)[2])
    except Exception as exc:
        theirs = BadContentHeader(12, str(exc))
    assert ours == theirs


def _header_payload(properties: Properties) -> bytes:
    return header.ContentHeader(weight=0, body_size=4, properties=properties).marshal()


@pytest.mark.parametrize(
    "payload",
    [
        # decodes, though pamqp would not construct it (validate() refuses it): pamqp's path
        struct.pack(">HHQHB", 60, 0, 4, 0x1000, 7),
        _header_payload(Properties(headers={"nested": {"deep": [1, 2.5, "x"]}})),
        _header_payload(
            Properties(timestamp=datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC))
        ),
        struct.pack(">HHQHQ", 60, 0, 4, 0x0040, 2**40),  # a timestamp in milliseconds
        struct.pack(">HHQHH", 60, 0, 4, 0x8001, 0) + b"\x03a/b",  # a second flag word
    ],
    ids=["delivery-mode-7", "nested-headers", "timestamp", "timestamp-ms", "two-flag-words"],
)
def test_fast_content_header_special_values(payload: bytes) -> None:
    data = raw_frame(FRAME_HEADER, 1, payload)
    ours = _ours(data)
    assert ours == _pamqp_decode(data)
    assert ours[0] is header.ContentHeader


def test_fast_paths_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """The common frames never reach pamqp's decoder."""
    data = (
        content(1, DELIVER, b"abc", Properties(content_type="a/b", delivery_mode=2, headers={}))
        + method_frame(1, commands.Basic.Ack(delivery_tag=3, multiple=True))
        + method_frame(1, commands.Basic.Nack(delivery_tag=4, requeue=False))
    )
    expected = _parse(data)

    def no_pamqp(_data: bytes) -> Any:
        raise AssertionError("pamqp was asked")

    monkeypatch.setattr(frame, "unmarshal", no_pamqp)  # the module _framing calls
    assert [(t, c, _state(p) if t != FRAME_BODY else p) for t, c, p in _parse(data)] == [
        (t, c, _state(p) if t != FRAME_BODY else p) for t, c, p in expected
    ]


# ----------------------------------------------------------------- fast encoding


def _outcome(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        return type(exc), str(exc)


_ODD = st.one_of(st.none(), st.floats(allow_nan=False), st.text(max_size=3))


@given(
    delivery_tag=st.integers(-(2**64), 2**64) | st.booleans() | _ODD,
    multiple=st.booleans() | st.integers(0, 300) | _ODD,
    requeue=st.booleans() | st.integers(0, 3) | _ODD,
    channel=st.integers(0, 65535),
)
def test_fast_settlement_encoding_is_pamqps(
    delivery_tag: Any, multiple: Any, requeue: Any, channel: int
) -> None:
    for method in (
        commands.Basic.Ack(delivery_tag=delivery_tag, multiple=multiple),
        commands.Basic.Nack(delivery_tag=delivery_tag, multiple=multiple, requeue=requeue),
        commands.Basic.Reject(delivery_tag=delivery_tag, requeue=requeue),
    ):
        assert _outcome(marshal_method, channel, method) == _outcome(frame.marshal, method, channel)


def test_fast_settlement_encoding_is_taken() -> None:
    assert marshal_method(2, commands.Basic.Ack(delivery_tag=9)) == _framing._ACK.pack(
        1, 2, 13, commands.Basic.Ack.index, 9, 0, 0xCE
    )
    assert frame.marshal(commands.Basic.Ack(delivery_tag=9), 2) == marshal_method(
        2, commands.Basic.Ack(delivery_tag=9)
    )


def _reference_marshal_message(
    channel: int, method: Frame, properties: Properties, body: bytes, frame_max: int
) -> bytes:
    """marshal_message as it was, all pamqp."""
    content_header = header.ContentHeader(weight=0, body_size=len(body), properties=properties)
    header_bytes = frame.marshal(content_header, channel)
    if len(header_bytes) > frame_max:
        raise ProtocolError(
            f"message properties need a {len(header_bytes)}-byte header frame; "
            f"frame_max is {frame_max}",
            501,
        )
    parts = [frame.marshal(method, channel), header_bytes]
    chunk = frame_max - 8
    for start in range(0, len(body), chunk):
        parts.append(body_frame(channel, body[start : start + chunk]))
    return b"".join(parts)


_ODD_PROPERTY = st.one_of(
    st.integers(-5, 300),
    st.text(min_size=250, max_size=300),
    st.binary(max_size=4),
    st.just(""),
    st.booleans(),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@st.composite
def _odd_properties(draw: st.DrawFn) -> Properties:
    """Properties with a few values of a type or range pamqp may refuse."""
    properties = draw(_PROPERTIES)
    for name in draw(st.lists(st.sampled_from(Properties.__slots__[:-1]), max_size=2)):
        setattr(properties, name, draw(_ODD_PROPERTY))
    return properties


@settings(max_examples=300)
@given(
    properties=_PROPERTIES | _odd_properties(),
    exchange=st.from_regex(r"[a-zA-Z0-9_.:-]{0,20}", fullmatch=True),
    routing_key=_short_text(),
    mandatory=st.booleans(),
    body=st.binary(max_size=300) | st.integers(0, 20_000).map(lambda n: bytes(n % 251) * 1),
    frame_max=st.integers(MIN_FRAME_MAX, 9000) | st.just(131072),
    channel=st.integers(1, 4),
)
def test_fast_message_encoding_is_pamqps(
    properties: Properties,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    body: bytes,
    frame_max: int,
    channel: int,
) -> None:
    method = commands.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory)
    expected = _outcome(_reference_marshal_message, channel, method, properties, body, frame_max)
    for _ in range(2):  # a second time: from the Basic.Publish cache
        assert _outcome(marshal_message, channel, method, properties, body, frame_max) == expected


def test_publish_cache_keeps_validating_and_stays_bounded() -> None:
    method = commands.Basic.Publish(exchange="ex", routing_key="rk")
    first = marshal_message(1, method, Properties(), b"x", MIN_FRAME_MAX)
    method.exchange = "not|valid"  # changed after construction: pamqp's marshal refuses it
    with pytest.raises(ValueError, match="exchange"):
        marshal_message(1, method, Properties(), b"x", MIN_FRAME_MAX)
    method.exchange = "ex"
    method.ticket = 5
    with pytest.raises(ValueError, match="ticket"):
        marshal_message(1, method, Properties(), b"x", MIN_FRAME_MAX)
    method.ticket = 0
    for i in range(3000):
        key = commands.Basic.Publish(exchange="ex", routing_key=f"rk{i}")
        assert marshal_message(1, key, Properties(), b"", MIN_FRAME_MAX) == (
            _reference_marshal_message(1, key, Properties(), b"", MIN_FRAME_MAX)
        )
    assert len(_framing._publish_frames) <= _framing._PUBLISH_CACHE_SIZE
    assert marshal_message(1, method, Properties(), b"x", MIN_FRAME_MAX) == first


def test_large_body_is_one_copy_and_framed_like_pamqp() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    method = commands.Basic.Publish(exchange="", routing_key="q")
    assert marshal_message(7, method, PROPS, body, 131072) == _reference_marshal_message(
        7, method, PROPS, body, 131072
    )

"""AMQP 0-9-1 framing: a receive buffer walked by offset, and message marshalling.

pamqp encodes and decodes single frames; the framing is ours. pamqp needs ``bytes`` (not
``bytearray`` or ``memoryview``) and its "not all data received" error is not a "need more
bytes" signal, so we only ever hand it exactly one complete frame.

The per-message frames (``Basic.Deliver``, ``Basic.Ack``/``Nack`` confirms and content headers
coming in; ``Basic.Publish``, content headers and ``Basic.Ack``/``Nack``/``Reject`` going out)
have hand-written fast paths that give exactly what pamqp gives: the same pamqp objects with
the same attribute values, the same bytes. Anything they do not handle plainly (a truncated or
odd frame, a property value of an unusual type) goes through pamqp, so errors stay pamqp's.
``tests/protocol/test_framing.py`` checks the equivalence against pamqp on random input.

Rule: this module does no I/O, reads no clock and does not log.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from pamqp import commands, decode, encode, frame, header
from pamqp import exceptions as pamqp_exceptions
from pamqp.base import Frame

from ..exceptions import ProtocolError

FRAME_METHOD: Final = 1
FRAME_HEADER: Final = 2
FRAME_BODY: Final = 3
FRAME_HEARTBEAT: Final = 8
FRAME_END: Final = 0xCE
FRAME_OVERHEAD: Final = 8  # 7-byte header + frame-end octet
MIN_FRAME_MAX: Final = 4096  # the largest frame a peer may send before Tune

# AMQP reply codes used for connection errors.
FRAME_ERROR: Final = 501
SYNTAX_ERROR: Final = 502
COMMAND_INVALID: Final = 503
CHANNEL_ERROR: Final = 504
UNEXPECTED_FRAME: Final = 505
NOT_IMPLEMENTED: Final = 540

_FRAME_HEAD = struct.Struct(">BHI")
_HEADER_SIZE = struct.Struct(">HHQ")
HEARTBEAT_FRAME: Final = bytes([FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END])
PROTOCOL_HEADER: Final = b"AMQP\x00\x00\x09\x01"

Properties = commands.Basic.Properties


@dataclass(frozen=True, slots=True)
class BadContentHeader:
    """A content header frame that pamqp could not decode (a poison message)."""

    body_size: int
    error: str


FramePayload = Frame | header.ContentHeader | BadContentHeader | bytes | None

# ---------------------------------------------------------------------- fast decoding
#
# Each decoder gets the buffer, the offset of the method's arguments (or of the content
# header payload) and the end of the payload; it returns the pamqp object, or None to let
# pamqp decode the frame (and raise its error). Reads past ``end`` are caught by comparing
# the final offset with ``end``; reads past the buffer raise and are caught by the caller.

_METHOD_INDEX = struct.Struct(">I")
_LONGLONG_BITS = struct.Struct(">qB")  # pamqp decodes "longlong" as signed
_CONTENT_HEADER = struct.Struct(">HHQH")  # class id, weight, body size, first flag word
_FAST_ERRORS: Final = (IndexError, ValueError, struct.error)
_new = object.__new__


def _decode_deliver(buf: bytearray, off: int, end: int) -> Frame | None:
    start = off + 1
    off = start + buf[off]
    consumer_tag = buf[start:off].decode("utf-8")
    delivery_tag, bits = _LONGLONG_BITS.unpack_from(buf, off)
    start = off + 10
    off = start + buf[off + 9]
    exchange = buf[start:off].decode("utf-8")
    start = off + 1
    off = start + buf[off]
    routing_key = buf[start:off].decode("utf-8")
    if off > end:
        return None
    method = _new(commands.Basic.Deliver)
    method.consumer_tag = consumer_tag
    method.delivery_tag = delivery_tag
    method.redelivered = bits & 1 != 0
    method.exchange = exchange
    method.routing_key = routing_key
    return method


def _decode_ack(buf: bytearray, off: int, end: int) -> Frame | None:
    if off + 9 > end:
        return None
    delivery_tag, bits = _LONGLONG_BITS.unpack_from(buf, off)
    method = _new(commands.Basic.Ack)
    method.delivery_tag = delivery_tag
    method.multiple = bits & 1 != 0
    return method


def _decode_nack(buf: bytearray, off: int, end: int) -> Frame | None:
    if off + 9 > end:
        return None
    delivery_tag, bits = _LONGLONG_BITS.unpack_from(buf, off)
    method = _new(commands.Basic.Nack)
    method.delivery_tag = delivery_tag
    method.multiple = bits & 1 != 0
    method.requeue = bits & 2 != 0
    return method


_FAST_METHODS: Final[dict[int, Callable[[bytearray, int, int], Frame | None]]] = {
    commands.Basic.Deliver.index: _decode_deliver,
    commands.Basic.Ack.index: _decode_ack,
    commands.Basic.Nack.index: _decode_nack,
}

# (flag bit, attribute, pamqp type) for every property, in pamqp's (wire) order
_PROPERTY_FIELDS: Final = tuple(
    (Properties.flags[name], name, str(getattr(Properties, "_" + name)))
    for name in Properties.__slots__
)
_ALL_FLAGS: Final = sum(bit for bit, _, _ in _PROPERTY_FIELDS)
_plans: dict[int, tuple[tuple[str, str], ...]] = {}


def _plan(flags: int) -> tuple[tuple[str, str], ...]:
    """The ``(attribute, type)`` of each property present in a flag word, in wire order."""
    plan = _plans.get(flags)
    if plan is None:
        plan = _plans[flags] = tuple(
            (name, kind) for bit, name, kind in _PROPERTY_FIELDS if flags & bit
        )
    return plan


def _decode_content_header(buf: bytearray, off: int, end: int) -> header.ContentHeader | None:
    class_id, weight, body_size, flags = _CONTENT_HEADER.unpack_from(buf, off)
    if flags & 1:  # more flag words follow: rare, pamqp's
        return None
    off += 14
    values: dict[str, Any] = {}
    for name, kind in _plan(flags & _ALL_FLAGS):
        if kind == "shortstr":
            start = off + 1
            off = start + buf[off]
            values[name] = buf[start:off].decode("utf-8")
        elif kind == "octet":
            values[name] = buf[off]
            off += 1
        else:  # a table or a timestamp: pamqp's decoder, on what pamqp would give it
            consumed, values[name] = decode.by_type(bytes(buf[off:end]), kind)
            off += consumed
    if off > end:
        return None
    # validate() refuses some values decoding accepts (delivery_mode 3): then pamqp's path
    properties = Properties(**values)
    content_header = _new(header.ContentHeader)
    content_header.class_id = class_id
    content_header.weight = weight
    content_header.body_size = body_size
    content_header.properties = properties
    return content_header


#: TLS record content types (no AMQP frame type has these values), by what a TLS server
#: that is sent a plain AMQP protocol header answers with.
_TLS_RECORDS: Final = {0x15: "alert", 0x16: "handshake"}


class FrameBuffer:
    """Collects received bytes and yields complete frames, one at a time.

    Args:
        frame_max: the largest acceptable frame (header and frame-end included). Until
            ``Connection.Tune`` it is the protocol minimum, 4096.
    """

    __slots__ = ("_buf", "_pos", "frame_max")

    def __init__(self, frame_max: int = MIN_FRAME_MAX) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.frame_max = frame_max

    def receive_data(self, data: bytes) -> None:
        """Append received bytes."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed into frames."""
        return len(self._buf) - self._pos

    def next_frame(self) -> tuple[int, int, FramePayload] | None:
        """Return the next complete ``(frame_type, channel, payload)``, or None if incomplete.

        Payload by type: a pamqp method object, a ``ContentHeader`` (or
        :class:`BadContentHeader`), the body ``bytes``, or None for a heartbeat.

        Raises:
            ProtocolError: the bytes are not a valid frame (code 501 or 505).
        """
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available < 7:
            return None
        frame_type, channel, size = _FRAME_HEAD.unpack_from(buf, pos)
        if frame_type == 0x41:  # 'A': the server answered with its protocol header
            raise ProtocolError(
                "the server does not speak AMQP 0-9-1 (it answered with the protocol header "
                f"{bytes(buf[pos : pos + 8])!r})",
                FRAME_ERROR,
            )
        if frame_type in _TLS_RECORDS and buf[pos + 1] == 0x03:
            # a TLS record header (type, version 3.x): our protocol header reached a TLS
            # listener, which answers with an alert (0x15) or a handshake record (0x16)
            raise ProtocolError(
                f"the server answered with a TLS {_TLS_RECORDS[frame_type]} record: "
                "is this a TLS port? (use amqps:// for TLS)",
                FRAME_ERROR,
            )
        if size + FRAME_OVERHEAD > self.frame_max:
            raise ProtocolError(
                f"frame of {size + FRAME_OVERHEAD} bytes exceeds frame_max {self.frame_max}",
                FRAME_ERROR,
            )
        end = pos + 7 + size
        if len(buf) <= end:
            return None
        if buf[end] != FRAME_END:
            raise ProtocolError(f"bad frame-end octet {buf[end]:#04x}", FRAME_ERROR)
        self._pos = end + 1
        if frame_type == FRAME_BODY:
            return FRAME_BODY, channel, bytes(buf[pos + 7 : end])
        if frame_type == FRAME_METHOD:
            if size >= 4:
                fast = _FAST_METHODS.get(_METHOD_INDEX.unpack_from(buf, pos + 7)[0])
                if fast is not None:
                    try:
                        fast_method = fast(buf, pos + 11, end)
                    except _FAST_ERRORS:
                        fast_method = None
                    if fast_method is not None:
                        return FRAME_METHOD, channel, fast_method
            try:
                _, _, method = frame.unmarshal(bytes(buf[pos : end + 1]))
            except (
                pamqp_exceptions.PAMQPException,
                ValueError,
                struct.error,
                RecursionError,  # a hostile peer's deeply nested field table
            ) as exc:
                raise ProtocolError(f"undecodable method frame: {exc}", SYNTAX_ERROR) from exc
            if not isinstance(method, Frame):  # pragma: no cover - pamqp returns Frames
                raise ProtocolError("undecodable method frame", SYNTAX_ERROR)
            return FRAME_METHOD, channel, method
        if frame_type == FRAME_HEADER:
            if size < _HEADER_SIZE.size:
                raise ProtocolError("content header frame too short", FRAME_ERROR)
            try:
                fast_header = _decode_content_header(buf, pos + 7, end)
            except Exception:  # pamqp's path below raises or reports it the same way
                fast_header = None
            if fast_header is not None:
                return FRAME_HEADER, channel, fast_header
            try:
                _, _, content_header = frame.unmarshal(bytes(buf[pos : end + 1]))
            except Exception as exc:
                _, _, body_size = _HEADER_SIZE.unpack_from(buf, pos + 7)
                return FRAME_HEADER, channel, BadContentHeader(body_size, str(exc))
            if not isinstance(content_header, header.ContentHeader):  # pragma: no cover
                raise ProtocolError("undecodable content header", FRAME_ERROR)
            return FRAME_HEADER, channel, content_header
        if frame_type == FRAME_HEARTBEAT:
            if channel != 0:
                raise ProtocolError(f"heartbeat frame on channel {channel}", FRAME_ERROR)
            return FRAME_HEARTBEAT, 0, None
        raise ProtocolError(f"unknown frame type {frame_type}", FRAME_ERROR)


# ---------------------------------------------------------------------- fast encoding
#
# Each encoder returns the frame bytes, or None to let pamqp encode (and raise its error).

_LONGLONG_MIN: Final = -(2**63)
_LONGLONG_MAX: Final = 2**63 - 1
_ACK = struct.Struct(">BHIIqBB")  # a whole Basic.Ack / Nack / Reject frame
_ACK_INDEX: Final = commands.Basic.Ack.index
_NACK_INDEX: Final = commands.Basic.Nack.index
_REJECT_INDEX: Final = commands.Basic.Reject.index


def _encode_ack(channel: int, method: Any) -> bytes | None:
    tag = method.delivery_tag
    multiple = method.multiple
    if type(tag) is not int or not _LONGLONG_MIN <= tag <= _LONGLONG_MAX:
        return None
    if multiple is True or multiple is False:
        return _ACK.pack(FRAME_METHOD, channel, 13, _ACK_INDEX, tag, multiple, FRAME_END)
    return None


def _encode_nack(channel: int, method: Any) -> bytes | None:
    tag = method.delivery_tag
    multiple = method.multiple
    requeue = method.requeue
    if type(tag) is not int or not _LONGLONG_MIN <= tag <= _LONGLONG_MAX:
        return None
    if (multiple is True or multiple is False) and (requeue is True or requeue is False):
        bits = multiple | requeue << 1
        return _ACK.pack(FRAME_METHOD, channel, 13, _NACK_INDEX, tag, bits, FRAME_END)
    return None


def _encode_reject(channel: int, method: Any) -> bytes | None:
    tag = method.delivery_tag
    requeue = method.requeue
    if type(tag) is not int or not _LONGLONG_MIN <= tag <= _LONGLONG_MAX:
        return None
    if requeue is True or requeue is False:
        return _ACK.pack(FRAME_METHOD, channel, 13, _REJECT_INDEX, tag, requeue, FRAME_END)
    return None


_FAST_ENCODERS: Final[dict[type, Callable[[int, Any], bytes | None]]] = {
    commands.Basic.Ack: _encode_ack,
    commands.Basic.Nack: _encode_nack,
    commands.Basic.Reject: _encode_reject,
}


def marshal_method(channel: int, method: Frame) -> bytes:
    """Encode one method frame."""
    encoder = _FAST_ENCODERS.get(type(method))
    if encoder is not None:
        data = encoder(channel, method)
        if data is not None:
            return data
    return frame.marshal(method, channel)


_PUBLISH_CACHE_SIZE: Final = 1024
_publish_frames: dict[tuple[int, str, str, bool, bool], bytes] = {}


def _publish_frame(channel: int, method: Frame) -> bytes:
    """The ``Basic.Publish`` frame, from a cache of what pamqp encoded before.

    pamqp validates the exchange name (a regular expression) and encodes field by field on
    every publish; most publishers repeat a few (exchange, routing key) pairs.
    """
    if type(method) is not commands.Basic.Publish:
        return frame.marshal(method, channel)
    exchange = method.exchange
    routing_key = method.routing_key
    mandatory = method.mandatory
    immediate = method.immediate
    if (
        type(exchange) is not str
        or type(routing_key) is not str
        or type(mandatory) is not bool
        or type(immediate) is not bool
        or type(method.ticket) is not int
    ):
        return frame.marshal(method, channel)
    key = (channel, exchange, routing_key, mandatory, immediate)
    data = _publish_frames.get(key)
    if data is None or method.ticket != 0:
        data = frame.marshal(method, channel)  # validates, as for every new key
        if len(_publish_frames) >= _PUBLISH_CACHE_SIZE:
            _publish_frames.clear()
        _publish_frames[key] = data
    return data


def cached_publish_frame(
    channel: int, exchange: str, routing_key: str, mandatory: bool
) -> bytes | None:
    """The ``Basic.Publish`` frame for these fields if one was encoded (and so validated)
    before, else None: the caller can then skip building and validating the method."""
    return _publish_frames.get((channel, exchange, routing_key, mandatory, False))


_get_properties = operator.attrgetter(*Properties.__slots__)
_PROPERTY_ENCODING: Final = tuple((bit, kind) for bit, _, kind in _PROPERTY_FIELDS)
_BYTE: Final = tuple(bytes((i,)) for i in range(256))
_U16 = struct.Struct(">H")
_HEADER_PAYLOAD_HEAD = struct.Struct(">HxxQ")  # class id, weight 0, body size
_CONTENT_HEADER_HEAD = struct.Struct(">BHIHxxQ")  # frame head + the above


def _marshal_properties(properties: Properties) -> bytes | None:
    """``properties.marshal()``, without pamqp's per-field dispatch; None: ask pamqp."""
    if type(properties) is not Properties:
        return None
    flags = 0
    parts = [b""]
    try:
        for (bit, kind), value in zip(_PROPERTY_ENCODING, _get_properties(properties), strict=True):
            if value is None or value == "":
                continue
            flags |= bit
            if kind == "shortstr":
                if type(value) is not str:
                    return None
                raw = value.encode("utf-8")
                if len(raw) > 255:
                    return None
                parts.append(_BYTE[len(raw)])
                parts.append(raw)
            elif kind == "octet":
                if type(value) is not int or not 0 <= value <= 255:
                    return None
                parts.append(_BYTE[value])
            else:  # a table or a timestamp: pamqp's encoder
                parts.append(encode.by_type(value, kind))
    except Exception:  # whatever pamqp raises, it raises again on its own path
        return None
    parts[0] = _U16.pack(flags)
    return b"".join(parts)


def _header_frame(channel: int, body_size: int, properties: Properties) -> bytes:
    encoded = _marshal_properties(properties)
    if encoded is None:
        content_header = header.ContentHeader(weight=0, body_size=body_size, properties=properties)
        return frame.marshal(content_header, channel)
    return b"".join(
        (
            _CONTENT_HEADER_HEAD.pack(
                FRAME_HEADER, channel, 12 + len(encoded), commands.Basic.frame_id, body_size
            ),
            encoded,
            b"\xce",
        )
    )


def marshal_message(
    channel: int,
    method: Frame | bytes,
    properties: commands.Basic.Properties,
    body: bytes,
    frame_max: int,
) -> bytes:
    """Encode a content-carrying method (e.g. ``Basic.Publish``) with its header and body.

    The body is split into frames of at most ``frame_max - 8`` bytes; the whole message comes
    back as one ``bytes`` so it is written contiguously. The body is copied once. ``method``
    may be the method's encoded frame (from :func:`cached_publish_frame`).

    Raises:
        ProtocolError: the content header (e.g. a huge ``headers`` table) would not fit in
            one frame; RabbitMQ would close the connection for it.
    """
    size = len(body)
    header_frame = _header_frame(channel, size, properties)
    if len(header_frame) > frame_max:
        raise ProtocolError(
            f"message properties need a {len(header_frame)}-byte header frame; "
            f"frame_max is {frame_max}",
            FRAME_ERROR,
        )
    method_frame = method if isinstance(method, bytes) else _publish_frame(channel, method)
    chunk = frame_max - FRAME_OVERHEAD
    if size <= chunk:
        if not size:
            return method_frame + header_frame
        return b"".join(
            (method_frame, header_frame, _FRAME_HEAD.pack(FRAME_BODY, channel, size), body, b"\xce")
        )
    parts: list[bytes | memoryview] = [method_frame, header_frame]
    view = memoryview(body)
    for start in range(0, size, chunk):
        piece = view[start : start + chunk]
        parts.append(_FRAME_HEAD.pack(FRAME_BODY, channel, len(piece)))
        parts.append(piece)
        parts.append(b"\xce")
    return b"".join(parts)

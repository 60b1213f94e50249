"""AMQP 0-9-1 framing: a receive buffer walked by offset, and message marshalling.

pamqp encodes and decodes single frames; the framing is ours. pamqp needs ``bytes`` (not
``bytearray`` or ``memoryview``) and its "not all data received" error is not a "need more
bytes" signal, so we only ever hand it exactly one complete frame.

Rule: this module does no I/O, reads no clock and does not log.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from pamqp import commands, frame, header
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


@dataclass(frozen=True, slots=True)
class BadContentHeader:
    """A content header frame that pamqp could not decode (a poison message)."""

    body_size: int
    error: str


FramePayload = Frame | header.ContentHeader | BadContentHeader | bytes | None


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


def marshal_method(channel: int, method: Frame) -> bytes:
    """Encode one method frame."""
    return frame.marshal(method, channel)


def _body_frame(channel: int, chunk: bytes | memoryview) -> bytes:
    return b"".join((_FRAME_HEAD.pack(FRAME_BODY, channel, len(chunk)), chunk, b"\xce"))


def marshal_message(
    channel: int,
    method: Frame,
    properties: commands.Basic.Properties,
    body: bytes,
    frame_max: int,
) -> bytes:
    """Encode a content-carrying method (e.g. ``Basic.Publish``) with its header and body.

    The body is split into frames of at most ``frame_max - 8`` bytes; the whole message comes
    back as one ``bytes`` so it is written contiguously.

    Raises:
        ProtocolError: the content header (e.g. a huge ``headers`` table) would not fit in
            one frame; RabbitMQ would close the connection for it.
    """
    content_header = header.ContentHeader(weight=0, body_size=len(body), properties=properties)
    header_frame = frame.marshal(content_header, channel)
    if len(header_frame) > frame_max:
        raise ProtocolError(
            f"message properties need a {len(header_frame)}-byte header frame; "
            f"frame_max is {frame_max}",
            FRAME_ERROR,
        )
    parts = [frame.marshal(method, channel), header_frame]
    chunk = frame_max - FRAME_OVERHEAD
    if len(body) <= chunk:
        if body:
            parts.append(_body_frame(channel, body))
    else:
        view = memoryview(body)
        for start in range(0, len(body), chunk):
            parts.append(_body_frame(channel, view[start : start + chunk]))
    return b"".join(parts)

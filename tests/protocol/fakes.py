"""A scripted AMQP 0-9-1 broker for the sans-I/O tests (h11's ``ConnectionPair``, one side).

The client side is the real :class:`~kiwi_anyio.protocol.AMQPConnection`; the broker side is
this module: it marshals server frames with pamqp (never hand-written bytes, except where a
test needs *invalid* bytes) and decodes with pamqp what the client queued.

Usage::

    broker = ScriptedBroker()
    broker.handshake()
    channel = broker.open_channel(confirm=True)
    tag = broker.conn.publish(channel, "", "q", b"hi")
    assert broker.sent_names() == ["Basic.Publish", "ContentHeader", "ContentBody"]
    events = broker.method(channel, commands.Basic.Ack(delivery_tag=tag))
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pamqp import body as pamqp_body
from pamqp import commands, frame, header, heartbeat
from pamqp.base import Frame

from kiwi_anyio.protocol import AMQPConnection, events

__all__ = [
    "RABBITMQ_PROPERTIES",
    "Handshake",
    "ScriptedBroker",
    "body_frame",
    "content",
    "decode_frames",
    "deliver_bytes",
    "frame_name",
    "handshake",
    "header_frame",
    "heartbeat_frame",
    "method_frame",
    "normalize",
    "raw_frame",
    "start_method",
]

Properties = commands.Basic.Properties
SentFrame = tuple[int, Any]  # (channel, pamqp frame object)

#: What a RabbitMQ 3.x ``Connection.Start`` carries (trimmed).
RABBITMQ_PROPERTIES: Mapping[str, Any] = {
    "product": "RabbitMQ",
    "version": "3.12.1",
    "platform": "Erlang/OTP 25.3",
    "copyright": "Copyright (c) 2007-2023 VMware, Inc. or its affiliates.",
    "information": "Licensed under the MPL 2.0. Website: https://rabbitmq.com",
    "cluster_name": "rabbit@scripted",
    "capabilities": {
        "publisher_confirms": True,
        "exchange_exchange_bindings": True,
        "basic.nack": True,
        "consumer_cancel_notify": True,
        "connection.blocked": True,
        "consumer_priorities": True,
        "authentication_failure_close": True,
        "per_consumer_qos": True,
        "direct_reply_to": True,
    },
}


# --------------------------------------------------------------------------- server frames


def method_frame(channel: int, method: Frame) -> bytes:
    """One method frame, as the broker would send it."""
    return frame.marshal(method, channel)


def header_frame(channel: int, body_size: int, properties: Properties | None = None) -> bytes:
    """One content header frame."""
    return frame.marshal(
        header.ContentHeader(weight=0, body_size=body_size, properties=properties or Properties()),
        channel,
    )


def body_frame(channel: int, chunk: bytes) -> bytes:
    """One content body frame."""
    return frame.marshal(pamqp_body.ContentBody(chunk), channel)


def heartbeat_frame() -> bytes:
    """A heartbeat frame (channel 0)."""
    return frame.marshal(heartbeat.Heartbeat(), 0)


def raw_frame(frame_type: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    """Any frame, valid or not: ``type, channel, size, payload, end``."""
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + bytes([end])


def content(
    channel: int,
    method: Frame,
    body: bytes,
    properties: Properties | None = None,
    *,
    chunk: int | None = None,
) -> bytes:
    """A content-carrying method (``Basic.Deliver``, ``GetOk``, ``Return``) with its content.

    The body goes into frames of ``chunk`` bytes (one frame if None; none if empty).
    """
    parts = [method_frame(channel, method), header_frame(channel, len(body), properties)]
    if body:
        step = chunk or len(body)
        parts.extend(body_frame(channel, body[i : i + step]) for i in range(0, len(body), step))
    return b"".join(parts)


# --------------------------------------------------------------------------- client frames


def decode_frames(data: bytes) -> list[SentFrame]:
    """Split what the client queued into ``(channel, pamqp object)`` pairs.

    The protocol header comes back as ``pamqp.header.ProtocolHeader``, heartbeats as
    ``pamqp.heartbeat.Heartbeat``. Trailing partial frames are an error: the client must only
    ever queue whole frames.
    """
    frames: list[SentFrame] = []
    view = bytes(data)
    pos = 0
    while pos < len(view):
        consumed, channel, obj = frame.unmarshal(view[pos:])
        frames.append((channel, obj))
        pos += consumed
    return frames


def frame_name(obj: object) -> str:
    """``Basic.Publish``, ``ContentHeader``, ``ContentBody``, ``Heartbeat`` …"""
    if isinstance(obj, Frame):
        return obj.name
    return type(obj).__name__


def normalize(event: events.Event) -> tuple[Any, ...]:
    """A comparable form of an event (pamqp method objects do not define ``==``)."""

    def value(v: Any) -> Any:
        if isinstance(v, Frame):
            return (v.name, tuple(dict(v).items()))
        if isinstance(v, Properties):
            return ("Properties", tuple(dict(v).items()))
        return v

    return (
        type(event).__name__,
        *(value(getattr(event, f.name)) for f in dataclasses.fields(event)),
    )


# --------------------------------------------------------------------------- the handshake


@dataclass
class Handshake:
    """What a scripted handshake saw: the client's replies and the events."""

    start_ok: commands.Connection.StartOk
    tune_ok: commands.Connection.TuneOk
    open: commands.Connection.Open
    events: list[events.Event] = field(default_factory=list)


def start_method(
    server_properties: Mapping[str, Any] | None = None,
    mechanisms: str = "PLAIN AMQPLAIN",
    locales: str = "en_US",
) -> commands.Connection.Start:
    """The broker's ``Connection.Start``."""
    return commands.Connection.Start(
        version_major=0,
        version_minor=9,
        server_properties=dict(
            RABBITMQ_PROPERTIES if server_properties is None else server_properties
        ),
        mechanisms=mechanisms,
        locales=locales,
    )


def handshake(
    conn: AMQPConnection,
    *,
    server_properties: Mapping[str, Any] | None = None,
    mechanisms: str = "PLAIN AMQPLAIN",
    locales: str = "en_US",
    tune: tuple[int, int, int] = (2047, 131072, 60),
) -> Handshake:
    """Drive ``conn`` from ``initiate()`` to ``ConnectionOpened``.

    Args:
        tune: the broker's ``(channel_max, frame_max, heartbeat)`` proposal.
    """
    conn.initiate()
    sent = decode_frames(conn.data_to_send())
    assert [frame_name(f) for _, f in sent] == ["ProtocolHeader"], sent
    got = conn.receive_data(method_frame(0, start_method(server_properties, mechanisms, locales)))
    assert got == []
    sent = decode_frames(conn.data_to_send())
    assert len(sent) == 1, sent
    start_ok = sent[0][1]
    assert isinstance(start_ok, commands.Connection.StartOk), start_ok
    channel_max, frame_max, heartbeat_ = tune
    got = conn.receive_data(
        method_frame(
            0,
            commands.Connection.Tune(
                channel_max=channel_max, frame_max=frame_max, heartbeat=heartbeat_
            ),
        )
    )
    assert got == []
    sent = decode_frames(conn.data_to_send())
    assert [(c, frame_name(f)) for c, f in sent] == [
        (0, "Connection.TuneOk"),
        (0, "Connection.Open"),
    ], sent
    tune_ok, open_ = sent[0][1], sent[1][1]
    assert isinstance(tune_ok, commands.Connection.TuneOk)
    assert isinstance(open_, commands.Connection.Open)
    got = conn.receive_data(method_frame(0, commands.Connection.OpenOk()))
    return Handshake(start_ok, tune_ok, open_, got)


# --------------------------------------------------------------------------- the broker


class ScriptedBroker:
    """The broker side of one :class:`AMQPConnection`, driven step by step by a test.

    Args:
        conn: the client connection; a default one (guest/guest, vhost ``/``) if None.
    """

    def __init__(self, conn: AMQPConnection | None = None, **options: Any) -> None:
        self.conn = conn if conn is not None else AMQPConnection(**options)

    # -- sending to the client -----------------------------------------------------------

    def feed(self, *data: bytes) -> list[events.Event]:
        """Hand server bytes to the client; return the events."""
        return self.conn.receive_data(b"".join(data))

    def method(self, channel: int, method: Frame) -> list[events.Event]:
        """Send one method frame."""
        return self.feed(method_frame(channel, method))

    def deliver(
        self,
        channel: int,
        body: bytes,
        *,
        delivery_tag: int = 1,
        consumer_tag: str = "ctag",
        exchange: str = "",
        routing_key: str = "rk",
        redelivered: bool = False,
        properties: Properties | None = None,
        chunk: int | None = None,
    ) -> list[events.Event]:
        """Send ``Basic.Deliver`` with its content."""
        return self.feed(
            deliver_bytes(
                channel,
                body,
                delivery_tag=delivery_tag,
                consumer_tag=consumer_tag,
                exchange=exchange,
                routing_key=routing_key,
                redelivered=redelivered,
                properties=properties,
                chunk=chunk,
            )
        )

    # -- what the client sent --------------------------------------------------------------

    def sent(self) -> list[SentFrame]:
        """Decode (and take) everything the client queued."""
        return decode_frames(self.conn.data_to_send())

    def sent_names(self) -> list[str]:
        """The names of the frames the client queued (and take them)."""
        return [frame_name(f) for _, f in self.sent()]

    def sent_methods(self) -> list[tuple[int, Frame]]:
        """The method frames the client queued (and take everything)."""
        return [(c, f) for c, f in self.sent() if isinstance(f, Frame)]

    # -- scripted sequences ----------------------------------------------------------------

    def handshake(
        self,
        *,
        server_properties: Mapping[str, Any] | None = None,
        mechanisms: str = "PLAIN AMQPLAIN",
        locales: str = "en_US",
        tune: tuple[int, int, int] = (2047, 131072, 60),
    ) -> Handshake:
        """Run the handshake (see :func:`handshake`)."""
        return handshake(
            self.conn,
            server_properties=server_properties,
            mechanisms=mechanisms,
            locales=locales,
            tune=tune,
        )

    def open_channel(self, *, confirm: bool = False) -> int:
        """Open a channel (``Channel.Open``/``OpenOk``), optionally in confirm mode."""
        number = self.conn.open_channel()
        sent = [(c, frame_name(f)) for c, f in self.sent()]
        assert sent == [(number, "Channel.Open")], sent
        got = self.method(number, commands.Channel.OpenOk())
        assert [normalize(e) for e in got] == [normalize(events.ChannelOpened(number))], got
        if confirm:
            self.conn.send_method(number, commands.Confirm.Select())
            assert self.sent_names() == ["Confirm.Select"]
            got = self.method(number, commands.Confirm.SelectOk())
            assert len(got) == 1 and isinstance(got[0], events.MethodReply), got
        return number

    def consume(
        self, channel: int, queue: str = "q", consumer_tag: str = "ctag", *, no_ack: bool = False
    ) -> None:
        """Start a consumer (``Basic.Consume``/``ConsumeOk``)."""
        self.conn.send_method(
            channel,
            commands.Basic.Consume(queue=queue, consumer_tag=consumer_tag, no_ack=no_ack),
        )
        assert self.sent_names() == ["Basic.Consume"]
        got = self.method(channel, commands.Basic.ConsumeOk(consumer_tag=consumer_tag))
        assert len(got) == 1 and isinstance(got[0], events.MethodReply), got


def deliver_bytes(
    channel: int,
    body: bytes,
    *,
    delivery_tag: int = 1,
    consumer_tag: str = "ctag",
    exchange: str = "",
    routing_key: str = "rk",
    redelivered: bool = False,
    properties: Properties | None = None,
    chunk: int | None = None,
) -> bytes:
    """``Basic.Deliver`` with its header and body frames."""
    return content(
        channel,
        commands.Basic.Deliver(
            consumer_tag=consumer_tag,
            delivery_tag=delivery_tag,
            redelivered=redelivered,
            exchange=exchange,
            routing_key=routing_key,
        ),
        body,
        properties,
        chunk=chunk,
    )

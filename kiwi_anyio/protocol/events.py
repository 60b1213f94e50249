"""Events produced by the sans-I/O :class:`~kiwi_anyio.protocol.AMQPConnection`.

Each event is a frozen dataclass naming something that happened on the wire. The driver
turns them into resolved futures and items in consumer streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pamqp import commands
from pamqp.base import Frame

Properties = commands.Basic.Properties

__all__ = [
    "Blocked",
    "ChannelClosed",
    "ChannelOpened",
    "ConnectionClosed",
    "ConnectionOpened",
    "ConsumerCancelled",
    "Delivery",
    "Event",
    "GetOk",
    "MethodReply",
    "PublishConfirmed",
    "Returned",
    "Unblocked",
    "UndecodableDelivery",
]


@dataclass(frozen=True, slots=True)
class ConnectionOpened:
    """The handshake finished: the connection is usable.

    Attributes:
        server_properties: the broker's ``Connection.Start`` properties (product, version …).
        frame_max: the negotiated largest frame size.
        channel_max: the negotiated highest channel number.
        heartbeat: the negotiated heartbeat interval in seconds (0 = off).
    """

    server_properties: dict[str, Any]
    frame_max: int
    channel_max: int
    heartbeat: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The connection is closed (after ``Connection.Close``/``CloseOk``).

    Attributes:
        reply_code: the AMQP reply code (200 for a normal close).
        reply_text: the reason.
        by_peer: True when the broker closed it.
        during_handshake: True when the broker closed it before ``Connection.OpenOk``.
    """

    reply_code: int
    reply_text: str
    by_peer: bool
    during_handshake: bool = False


@dataclass(frozen=True, slots=True)
class Blocked:
    """The broker stopped reading from this connection (``Connection.Blocked``)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Unblocked:
    """The broker reads from this connection again (``Connection.Unblocked``)."""


@dataclass(frozen=True, slots=True)
class ChannelOpened:
    """``Channel.OpenOk`` arrived for ``channel``."""

    channel: int


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """The channel is closed, by the broker (an error) or by us (``CloseOk`` arrived).

    Every pending operation and consumer of the channel must fail with the reply code and text.
    """

    channel: int
    reply_code: int
    reply_text: str
    by_peer: bool
    class_id: int = 0
    method_id: int = 0


@dataclass(frozen=True, slots=True)
class MethodReply:
    """The reply to the oldest pending synchronous method on ``channel``."""

    channel: int
    method: Frame


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message delivered to a consumer (``Basic.Deliver`` with its content)."""

    channel: int
    consumer_tag: str
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    properties: Properties
    body: bytes


@dataclass(frozen=True, slots=True)
class GetOk:
    """The reply to ``Basic.Get`` when a message was there, with its content."""

    channel: int
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    message_count: int
    properties: Properties
    body: bytes


@dataclass(frozen=True, slots=True)
class Returned:
    """The broker returned a mandatory message it could not route (``Basic.Return``).

    ``delivery_tag`` is the publish sequence number of the returned message on a confirm
    channel (its ``Basic.Ack`` follows), or ``None`` when it could not be matched.
    """

    channel: int
    reply_code: int
    reply_text: str
    exchange: str
    routing_key: str
    properties: Properties
    body: bytes
    delivery_tag: int | None


@dataclass(frozen=True, slots=True)
class PublishConfirmed:
    """``Basic.Ack`` (``ack=True``) or ``Basic.Nack`` for publish sequence numbers.

    With ``multiple`` every outstanding number up to ``delivery_tag`` is confirmed.
    """

    channel: int
    delivery_tag: int
    multiple: bool
    ack: bool


@dataclass(frozen=True, slots=True)
class ConsumerCancelled:
    """The broker cancelled a consumer (``Basic.Cancel``), e.g. its queue was deleted."""

    channel: int
    consumer_tag: str


@dataclass(frozen=True, slots=True)
class UndecodableDelivery:
    """A delivery whose content header could not be decoded.

    The connection already rejected it (without requeue) unless the consumer is ``no_ack``;
    it is reported so the consumer can log it or fail a waiting sender.
    """

    channel: int
    consumer_tag: str | None
    delivery_tag: int
    error: str = field(default="")


Event = (
    ConnectionOpened
    | ConnectionClosed
    | Blocked
    | Unblocked
    | ChannelOpened
    | ChannelClosed
    | MethodReply
    | Delivery
    | GetOk
    | Returned
    | PublishConfirmed
    | ConsumerCancelled
    | UndecodableDelivery
)

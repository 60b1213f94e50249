"""The sans-I/O AMQP 0-9-1 client connection: bytes in, events out; commands in, bytes out.

Rule: this module does no I/O, reads no clock, starts no task and does not log. The driver
(:mod:`kiwi_anyio.protocol.client`) feeds it received bytes, sends what
:meth:`AMQPConnection.data_to_send` returns, and keeps time for heartbeats.

The connection answers the broker by itself where AMQP requires it (``TuneOk``,
``CloseOk``, ``FlowOk``); those answers are queued in the outgoing buffer like everything else.

A broker is not trusted with memory: a frame is at most ``frame_max`` bytes, a message body at
most ``max_message_size`` (a larger one is rejected and its body frames skipped, never
buffered), and a consumer with a prefetch limit may not be handed more unacknowledged
deliveries than the limit allows (a broker that does so is a protocol error).
"""

from __future__ import annotations

import enum
import platform
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

from pamqp import commands, encode, header
from pamqp.base import Frame

from ..exceptions import ConnectionFailed, ProtocolError
from . import _methods
from . import events as ev
from ._framing import (
    CHANNEL_ERROR,
    COMMAND_INVALID,
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    HEARTBEAT_FRAME,
    MIN_FRAME_MAX,
    PROTOCOL_HEADER,
    UNEXPECTED_FRAME,
    BadContentHeader,
    FrameBuffer,
    cached_publish_frame,
    marshal_message,
    marshal_method,
)

__all__ = ["MAX_MESSAGE_SIZE", "AMQPConnection", "ChannelState", "ConnectionState"]

Properties = commands.Basic.Properties

MAX_MESSAGE_SIZE: Final = 128 * 1024 * 1024
"""The default largest message body sent or accepted: 128 MiB, RabbitMQ's default limit."""

PRECONDITION_FAILED: Final = 406  # what RabbitMQ answers a message over its size limit
_SHORT_ASCII: Final = 63  # a str this short encodes to at most 252 bytes of UTF-8

CLIENT_CAPABILITIES: Final[dict[str, Any]] = {
    "authentication_failure_close": True,
    "basic.nack": True,
    "connection.blocked": True,
    "consumer_cancel_notify": True,
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "per_consumer_qos": True,
}
_MECHANISM_PREFERENCE: Final = ("PLAIN", "AMQPLAIN", "EXTERNAL")


class ConnectionState(enum.Enum):
    """Where the connection is in its life."""

    INITIAL = "initial"
    AWAIT_START = "await-start"
    AWAIT_TUNE = "await-tune"
    AWAIT_OPEN_OK = "await-open-ok"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class ChannelState(enum.Enum):
    """Where a channel is in its life."""

    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"


class _Content:
    """A content-carrying method whose header and body frames are being collected."""

    __slots__ = ("body_size", "error", "method", "parts", "properties", "received")

    def __init__(self, method: Frame) -> None:
        self.method = method
        self.properties: Properties | None = None
        self.body_size = -1  # -1: the header has not arrived
        self.parts: list[bytes] = []
        self.received = 0
        self.error: str | None = None


class _Channel:
    __slots__ = (
        "confirm",
        "consumers",
        "content",
        "counts",
        "expected",
        "global_prefetch",
        "id",
        "limited",
        "limits",
        "mandatory",
        "next_tag",
        "peer_closed",
        "pending_consumes",
        "pending_qos",
        "prefetch",
        "state",
        "tag_order",
        "total",
        "unacked",
    )

    def __init__(self, channel_id: int) -> None:
        self.id = channel_id
        self.state = ChannelState.OPENING
        # names of the valid replies to each pending synchronous method, oldest first
        self.expected: deque[tuple[str, ...]] = deque()
        self.confirm = False
        self.next_tag = 1
        self.content: _Content | None = None
        self.consumers: dict[str, bool] = {}  # consumer tag -> no_ack
        # (no_ack, prefetch limit) of each Basic.Consume awaiting its ConsumeOk
        self.pending_consumes: deque[tuple[bool, int]] = deque()
        # Prefetch accounting, only once a limit is in force ("limited"): the unacknowledged
        # deliveries counted (delivery tag -> consumer tag, and the tags in arrival order),
        # how many per consumer and on the channel, and the limits the broker must honour.
        self.limited = False
        self.prefetch = 0  # per-consumer prefetch_count of the last Basic.Qos sent
        self.global_prefetch = 0  # channel-wide limit in force (after its QosOk)
        self.pending_qos: deque[tuple[int, bool]] = deque()  # Basic.Qos awaiting QosOk
        self.limits: dict[str, int] = {}  # consumer tag -> its prefetch limit (0: none)
        self.counts: dict[str, int] = {}  # consumer tag -> unacknowledged deliveries counted
        self.unacked: dict[int, str] = {}
        self.tag_order: deque[int] = deque()
        self.total = 0
        # mandatory publishes awaiting their confirm: tag -> (exchange, routing key, message id)
        self.mandatory: dict[int, tuple[str, str, str | None]] = {}
        self.peer_closed = False  # the broker's Channel.Close crossed ours


def _start_ok_payload(
    client_properties: Mapping[str, Any], mechanism: str, response: bytes, locale: str
) -> bytes:
    """Encode ``Connection.StartOk`` by hand: pamqp only takes ``str`` responses."""
    return b"".join(
        (
            b"\x00\x0a\x00\x0b",
            encode.field_table(dict(client_properties)),
            encode.short_string(mechanism),
            len(response).to_bytes(4, "big"),
            response,
            encode.short_string(locale),
        )
    )


def _negotiate(client: int, server: int) -> int:
    """frame_max / channel_max: the smaller non-zero value (0 means "no limit")."""
    if client == 0 or server == 0:
        return max(client, server)
    return min(client, server)


class AMQPConnection:
    """The state of one AMQP 0-9-1 client connection and all its channels.

    Args:
        username: login name.
        password: login password (PLAIN/AMQPLAIN).
        virtual_host: the vhost to open.
        heartbeat: the heartbeat interval to propose in seconds; ``None`` accepts the
            broker's. Negotiated by RabbitMQ's rule: if either side says 0 the other wins,
            else the smaller.
        frame_max: the largest frame we accept; negotiated as the smaller non-zero value.
        channel_max: the highest channel number; negotiated as the smaller non-zero value.
        auth_mechanisms: mechanisms to use, in order of preference; empty means PLAIN,
            AMQPLAIN, then EXTERNAL, whichever the broker offers first.
        connection_name: shown in the broker's management UI.
        product: the ``product`` client property.
        version: the ``version`` client property.
        max_message_size: the largest message body sent or accepted, in bytes. :meth:`publish`
            refuses a larger body; a larger delivery is rejected without requeue, its body
            frames are skipped without being buffered, and it is reported as
            :class:`~.events.UndecodableDelivery`.

    Attributes:
        frames_received: how many complete frames (heartbeats included) have been parsed.
            A driver judges the peer's liveness on this, not on raw bytes: a peer whose
            frame-size field is corrupt (or that trickles a huge frame) sends bytes but no
            frames, and must be found dead all the same.
    """

    def __init__(
        self,
        username: str = "guest",
        password: str = "guest",
        virtual_host: str = "/",
        *,
        heartbeat: int | None = 60,
        frame_max: int = 131072,
        channel_max: int = 2047,
        auth_mechanisms: tuple[str, ...] = (),
        connection_name: str | None = None,
        product: str = "kiwi_anyio",
        version: str = "0",
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> None:
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be at least 1, got {max_message_size}")
        self.max_message_size = max_message_size
        _methods.check_shortstr("Connection.Open", "virtual_host", virtual_host)
        self._username = username
        self._password = password
        self._virtual_host = virtual_host
        self._want_heartbeat = heartbeat
        self._want_frame_max = frame_max
        self._want_channel_max = channel_max
        self._auth_mechanisms = auth_mechanisms or _MECHANISM_PREFERENCE
        self.client_properties: dict[str, Any] = {
            "product": product,
            "version": version,
            "platform": f"Python {platform.python_version()}",
            "information": "https://github.com/kiwi-anyio/kiwi_anyio",
            "capabilities": dict(CLIENT_CAPABILITIES),
        }
        if connection_name:
            self.client_properties["connection_name"] = connection_name
        self.state = ConnectionState.INITIAL
        self.server_properties: dict[str, Any] = {}
        self.frame_max = MIN_FRAME_MAX
        self.channel_max = channel_max or 65535
        self.heartbeat = 0
        self.mechanism = ""
        self.blocked = False
        self._buffer = FrameBuffer(MIN_FRAME_MAX)
        self.frames_received = 0
        self._out: list[bytes] = []
        self._out_size = 0
        self._channels: dict[int, _Channel] = {}
        self._next_channel = 1
        self._events: list[ev.Event] = []
        self._close_reason: tuple[int, str] | None = None

    # ------------------------------------------------------------------ outgoing bytes

    def _send(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)

    def data_to_send(self) -> bytes:
        """Return (and forget) every byte queued for the broker, in order."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        self._out = []
        self._out_size = 0
        return data

    def data_to_send_parts(self) -> list[bytes]:
        """Return (and forget) the queued bytes as the buffers they were queued in.

        :meth:`data_to_send` joins them, copying every byte once more; a writer that sends
        large buffers (1 MiB messages) as they are avoids that copy.
        """
        out = self._out
        self._out = []
        self._out_size = 0
        return out

    @property
    def bytes_to_send(self) -> int:
        """How many bytes are queued and not yet taken by :meth:`data_to_send`."""
        return self._out_size

    def heartbeat_frame(self) -> None:
        """Queue a heartbeat frame (the driver decides when)."""
        self._send(HEARTBEAT_FRAME)

    # ------------------------------------------------------------------ lifecycle

    def initiate(self) -> None:
        """Queue the protocol header that starts the handshake."""
        if self.state is not ConnectionState.INITIAL:
            raise ProtocolError("the handshake was already started", COMMAND_INVALID)
        self._send(PROTOCOL_HEADER)
        self.state = ConnectionState.AWAIT_START

    @property
    def is_open(self) -> bool:
        """True once ``Connection.OpenOk`` arrived and until a close starts."""
        return self.state is ConnectionState.OPEN

    def close(self, reply_code: int = 200, reply_text: str = "Normal shutdown") -> None:
        """Queue ``Connection.Close``; :class:`~.events.ConnectionClosed` follows ``CloseOk``."""
        if self.state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            return
        if self.state in (ConnectionState.INITIAL, ConnectionState.AWAIT_START):
            self.state = ConnectionState.CLOSED
            return
        self._send(marshal_method(0, commands.Connection.Close(reply_code, reply_text, 0, 0)))
        self.state = ConnectionState.CLOSING

    def connection_lost(self) -> None:
        """Record that the transport is gone: every channel is dead."""
        self.state = ConnectionState.CLOSED
        self._channels.clear()

    # ------------------------------------------------------------------ channels

    def open_channel(self) -> int:
        """Queue ``Channel.Open`` on a free channel number and return the number.

        Raises:
            ChannelClosed: no channel number is free.
        """
        self._check_open()
        limit = self.channel_max
        number = self._next_channel
        for _ in range(limit):
            if number > limit:
                number = 1
            if number not in self._channels:
                break
            number += 1
        else:
            raise ProtocolError(f"all {limit} channel numbers are in use", CHANNEL_ERROR)
        self._next_channel = number + 1
        channel = _Channel(number)
        self._channels[number] = channel
        channel.expected.append(("Channel.OpenOk",))
        self._send(marshal_method(number, commands.Channel.Open()))
        return number

    def channel_state(self, channel: int) -> ChannelState | None:
        """The state of ``channel``, or None if it is not open (or was closed)."""
        ch = self._channels.get(channel)
        return ch.state if ch is not None else None

    def close_channel(self, channel: int, reply_code: int = 200, reply_text: str = "") -> None:
        """Queue ``Channel.Close``; :class:`~.events.ChannelClosed` follows ``CloseOk``."""
        ch = self._channels.get(channel)
        if ch is None or ch.state is ChannelState.CLOSING or not self.is_open:
            return
        ch.state = ChannelState.CLOSING
        self._send(
            marshal_method(channel, commands.Channel.Close(reply_code, reply_text or "Bye", 0, 0))
        )

    def _channel(self, channel: int) -> _Channel:
        self._check_open()
        ch = self._channels.get(channel)
        if ch is None or ch.state is not ChannelState.OPEN:
            raise ProtocolError(f"channel {channel} is not open", CHANNEL_ERROR)
        return ch

    def _check_open(self) -> None:
        if self.state is not ConnectionState.OPEN:
            raise ProtocolError(f"the connection is {self.state.value}", COMMAND_INVALID)

    # ------------------------------------------------------------------ commands

    def send_method(self, channel: int, method: Frame) -> None:
        """Queue a method (``Queue.Declare``, ``Basic.Qos``, ``Basic.Ack`` …) on a channel.

        For a synchronous method the reply arrives as :class:`~.events.MethodReply` (or
        :class:`~.events.GetOk` for ``Basic.Get``), in the order the methods were sent.
        """
        ch = self._channel(channel)
        data = marshal_method(channel, method)  # raises (nothing is recorded) if it cannot
        nowait = getattr(method, "nowait", False)
        if method.synchronous and not nowait:
            ch.expected.append(tuple(method.valid_responses))
            if isinstance(method, commands.Basic.Consume):
                ch.pending_consumes.append((bool(method.no_ack), ch.prefetch))
            elif isinstance(method, commands.Basic.Qos):
                count = method.prefetch_count or 0
                ch.pending_qos.append((count, bool(method.global_)))
                if not method.global_:
                    ch.prefetch = count  # what the broker gives consumers started after it
        if isinstance(method, commands.Confirm.Select):
            ch.confirm = True
        elif isinstance(method, commands.Basic.Consume) and nowait:
            # no ConsumeOk will come: the consumer exists from now on, under its given tag
            self._add_consumer(ch, method.consumer_tag or "", bool(method.no_ack), ch.prefetch)
        elif isinstance(method, commands.Basic.Recover | commands.Basic.RecoverAsync):
            self._forget_unacked(ch)  # every unacknowledged delivery goes back to its queue
        # Basic.Cancel: deliveries may still arrive before CancelOk; they stay valid to ack
        self._send(data)

    def publish(
        self,
        channel: int,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties | None = None,
        *,
        mandatory: bool = False,
    ) -> int | None:
        """Queue ``Basic.Publish`` with its content.

        Returns:
            The publish sequence number on a confirm channel (its
            :class:`~.events.PublishConfirmed` will name it), else None.

        Raises:
            ProtocolError: the body is larger than ``max_message_size`` (reply code 406, as
                RabbitMQ would refuse it), or the properties do not fit in one frame.
            ValueError: the exchange or routing key is longer than 255 bytes in UTF-8.

        Nothing is queued and no sequence number is used when it raises.
        """
        ch = self._channel(channel)
        size = len(body)
        if size > self.max_message_size:
            raise ProtocolError(
                f"cannot publish a message of {size} bytes to exchange {exchange!r} with "
                f"routing key {routing_key!r}: it exceeds max_message_size "
                f"({self.max_message_size} bytes)",
                PRECONDITION_FAILED,
            )
        method: commands.Basic.Publish | bytes | None = None
        if type(exchange) is str and type(routing_key) is str and type(mandatory) is bool:
            method = cached_publish_frame(channel, exchange, routing_key, mandatory)
        if method is None:  # not sent before: build and validate the method
            if len(routing_key) > _SHORT_ASCII:
                _methods.check_shortstr("Basic.Publish", "routing_key", routing_key)
            try:
                method = commands.Basic.Publish(
                    exchange=exchange, routing_key=routing_key, mandatory=mandatory
                )
            except ValueError:
                # pamqp refuses names RabbitMQ takes (non-ASCII, or over 127 characters);
                # this one checks only what AMQP needs, and raises a clear error if even
                # that fails
                method = _methods.Basic.Publish(
                    exchange=exchange, routing_key=routing_key, mandatory=mandatory
                )
        props = properties if properties is not None else Properties()
        data = marshal_message(channel, method, props, body, self.frame_max)
        self._send(data)
        if not ch.confirm:
            return None
        tag = ch.next_tag
        ch.next_tag = tag + 1
        if mandatory:
            ch.mandatory[tag] = (exchange, routing_key, props.message_id)
        return tag

    def ack(self, channel: int, delivery_tag: int, *, multiple: bool = False) -> None:
        """Queue ``Basic.Ack`` for a delivery."""
        self._send(
            marshal_method(
                channel, commands.Basic.Ack(delivery_tag=delivery_tag, multiple=multiple)
            )
        )
        ch = self._channels.get(channel)
        if ch is not None and ch.unacked:
            self._settled(ch, delivery_tag, multiple)

    def nack(
        self, channel: int, delivery_tag: int, *, multiple: bool = False, requeue: bool = True
    ) -> None:
        """Queue ``Basic.Nack`` for a delivery."""
        self._send(
            marshal_method(
                channel,
                commands.Basic.Nack(delivery_tag=delivery_tag, multiple=multiple, requeue=requeue),
            )
        )
        ch = self._channels.get(channel)
        if ch is not None and ch.unacked:
            self._settled(ch, delivery_tag, multiple)

    def reject(self, channel: int, delivery_tag: int, *, requeue: bool = True) -> None:
        """Queue ``Basic.Reject`` for a delivery."""
        self._send(
            marshal_method(
                channel, commands.Basic.Reject(delivery_tag=delivery_tag, requeue=requeue)
            )
        )
        ch = self._channels.get(channel)
        if ch is not None and ch.unacked:
            self._settled(ch, delivery_tag, False)

    # ------------------------------------------------------------------ prefetch accounting

    def _add_consumer(self, ch: _Channel, tag: str, no_ack: bool, limit: int) -> None:
        ch.consumers[tag] = no_ack
        if limit and not no_ack:
            ch.limits[tag] = limit
            ch.limited = True

    def _count_delivery(self, ch: _Channel, method: commands.Basic.Deliver) -> None:
        """Count an unacknowledged delivery against the prefetch limits in force.

        Exact for RabbitMQ, lenient elsewhere: a consumer's limit is the ``prefetch_count``
        it was started under (raised, never lowered, by a later ``Basic.Qos``); the channel's
        is that of the last global ``Basic.Qos`` the broker confirmed. We count a delivery
        as settled when our ack is queued, before the broker sees it, so an honest broker's
        count is never below ours.
        """
        consumer_tag = method.consumer_tag or ""
        if ch.consumers.get(consumer_tag, True):  # no_ack, or not ours: nothing to settle
            return
        count = ch.counts.get(consumer_tag, 0) + 1
        limit = ch.limits.get(consumer_tag, 0)
        if ch.global_prefetch:
            # a global Basic.Qos is channel-wide on RabbitMQ 3.x but applied per consumer by
            # RabbitMQ 4.3 (deprecated feature global_qos): either way no consumer gets more
            limit = max(limit, ch.global_prefetch) if limit else ch.global_prefetch
        if limit and count > limit:
            raise ProtocolError(
                f"the broker sent consumer {consumer_tag!r} on channel {ch.id} "
                f"{count} unacknowledged deliveries; its prefetch limit is {limit}",
                UNEXPECTED_FRAME,
            )
        total = ch.total + 1
        tag = method.delivery_tag or 0
        if tag in ch.unacked:
            raise ProtocolError(
                f"the broker reused delivery tag {tag} on channel {ch.id}", COMMAND_INVALID
            )
        ch.counts[consumer_tag] = count
        ch.total = total
        ch.unacked[tag] = consumer_tag
        ch.tag_order.append(tag)

    def _settled(self, ch: _Channel, delivery_tag: int, multiple: bool) -> None:
        unacked = ch.unacked
        order = ch.tag_order
        if multiple:
            while order and (delivery_tag == 0 or order[0] <= delivery_tag):
                consumer_tag = unacked.pop(order.popleft(), None)
                if consumer_tag is not None:
                    self._uncount(ch, consumer_tag)
        else:
            consumer_tag = unacked.pop(delivery_tag, None)
            if consumer_tag is not None:
                self._uncount(ch, consumer_tag)
        while order and order[0] not in unacked:
            order.popleft()

    @staticmethod
    def _uncount(ch: _Channel, consumer_tag: str) -> None:
        ch.total -= 1
        left = ch.counts[consumer_tag] - 1
        if left:
            ch.counts[consumer_tag] = left
        else:
            del ch.counts[consumer_tag]

    @staticmethod
    def _forget_unacked(ch: _Channel) -> None:
        ch.unacked.clear()
        ch.tag_order.clear()
        ch.counts.clear()
        ch.total = 0

    def _qos_ok(self, ch: _Channel) -> None:
        if not ch.pending_qos:
            return
        count, global_ = ch.pending_qos.popleft()
        if global_:
            ch.global_prefetch = count
        else:
            # Brokers without RabbitMQ's per-consumer prefetch apply the new value to
            # running consumers too: allow the larger of the two (0 means no limit).
            for consumer_tag, limit in list(ch.limits.items()):
                if count == 0:
                    del ch.limits[consumer_tag]
                elif count > limit:
                    ch.limits[consumer_tag] = count
        ch.limited = bool(ch.limits) or ch.global_prefetch > 0

    # ------------------------------------------------------------------ incoming bytes

    def receive_data(self, data: bytes) -> list[ev.Event]:
        """Feed bytes received from the broker; return the events they complete.

        ``b""`` means the broker closed the socket.

        Raises:
            ProtocolError: the broker broke the protocol. A ``Connection.Close`` with the
                matching reply code is queued; send it, then drop the connection.
            ConnectionFailed: the socket closed during the handshake.
        """
        if not data:
            state = self.state
            self.connection_lost()
            if state is ConnectionState.AWAIT_START:
                raise ConnectionFailed(
                    "the server closed the connection before Connection.Start "
                    "(is it an AMQP 0-9-1 broker, and does it accept this client?)"
                )
            if state is ConnectionState.AWAIT_TUNE:
                raise ConnectionFailed(
                    "the broker closed the connection during the handshake "
                    "(wrong credentials or authentication mechanism?)"
                )
            return []
        self._buffer.receive_data(data)
        events: list[ev.Event] = []
        self._events = events
        try:
            while True:
                parsed = self._buffer.next_frame()
                if parsed is None:
                    break
                frame_type, channel, payload = parsed
                self.frames_received += 1
                if self.state is ConnectionState.CLOSED:
                    break
                if frame_type == FRAME_METHOD:
                    assert isinstance(payload, Frame)
                    if channel == 0:
                        self._on_connection_method(payload)
                    else:
                        self._on_channel_method(channel, payload)
                elif frame_type == FRAME_BODY:
                    assert isinstance(payload, bytes)
                    self._on_body(channel, payload)
                elif frame_type == FRAME_HEADER:
                    assert isinstance(payload, header.ContentHeader | BadContentHeader)
                    self._on_header(channel, payload)
                else:  # heartbeat: counted in frames_received, which is all it is for
                    assert frame_type == FRAME_HEARTBEAT
        except ProtocolError as exc:
            self._fail(exc.reply_code, str(exc))
            raise
        return events

    def _fail(self, reply_code: int, reply_text: str) -> None:
        if self.state is not ConnectionState.CLOSED:
            if self.state is not ConnectionState.AWAIT_START:
                self._send(
                    marshal_method(0, commands.Connection.Close(reply_code, reply_text[:255], 0, 0))
                )
            self.state = ConnectionState.CLOSED
        self._channels.clear()

    # ------------------------------------------------------------------ channel 0

    def _on_connection_method(self, method: Frame) -> None:
        if isinstance(method, commands.Connection.Start):
            self._on_start(method)
        elif isinstance(method, commands.Connection.Tune):
            self._on_tune(method)
        elif isinstance(method, commands.Connection.OpenOk):
            if self.state is not ConnectionState.AWAIT_OPEN_OK:
                raise ProtocolError("unexpected Connection.OpenOk", UNEXPECTED_FRAME)
            self.state = ConnectionState.OPEN
            self._events.append(
                ev.ConnectionOpened(
                    self.server_properties, self.frame_max, self.channel_max, self.heartbeat
                )
            )
        elif isinstance(method, commands.Connection.Close):
            during_handshake = self.state in (
                ConnectionState.AWAIT_START,
                ConnectionState.AWAIT_TUNE,
                ConnectionState.AWAIT_OPEN_OK,
            )
            self._send(marshal_method(0, commands.Connection.CloseOk()))
            self.state = ConnectionState.CLOSED
            self._channels.clear()
            self._events.append(
                ev.ConnectionClosed(
                    method.reply_code or 0, method.reply_text, True, during_handshake
                )
            )
        elif isinstance(method, commands.Connection.CloseOk):
            if self.state is not ConnectionState.CLOSING:
                raise ProtocolError("unexpected Connection.CloseOk", UNEXPECTED_FRAME)
            self.state = ConnectionState.CLOSED
            self._channels.clear()
            self._events.append(ev.ConnectionClosed(200, "Normal shutdown", False))
        elif isinstance(method, commands.Connection.Blocked):
            self.blocked = True
            self._events.append(ev.Blocked(method.reason))
        elif isinstance(method, commands.Connection.Unblocked):
            self.blocked = False
            self._events.append(ev.Unblocked())
        elif isinstance(method, commands.Connection.UpdateSecretOk):
            self._events.append(ev.MethodReply(0, method))
        else:
            raise ProtocolError(f"unexpected {method.name} on channel 0", COMMAND_INVALID)

    def _on_start(self, start: commands.Connection.Start) -> None:
        if self.state is not ConnectionState.AWAIT_START:
            raise ProtocolError("unexpected Connection.Start", UNEXPECTED_FRAME)
        if (start.version_major, start.version_minor) != (0, 9):
            raise ProtocolError(
                f"unsupported AMQP version {start.version_major}-{start.version_minor}",
                COMMAND_INVALID,
            )
        self.server_properties = dict(start.server_properties or {})
        offered = str(start.mechanisms).split()
        for mechanism in self._auth_mechanisms:
            if mechanism in offered:
                break
        else:
            self.state = ConnectionState.CLOSED
            raise ConnectionFailed(
                f"the broker offers authentication mechanisms {offered}; "
                f"none of {list(self._auth_mechanisms)} is among them"
            )
        self.mechanism = mechanism
        if mechanism == "PLAIN":
            response = b"\0" + self._username.encode() + b"\0" + self._password.encode()
        elif mechanism == "AMQPLAIN":
            response = encode.field_table({"LOGIN": self._username, "PASSWORD": self._password})[4:]
        else:  # EXTERNAL: the identity is the TLS client certificate
            response = b""
        locales = str(start.locales).split()
        locale = "en_US" if not locales or "en_US" in locales else locales[0]
        payload = _start_ok_payload(self.client_properties, mechanism, response, locale)
        self._send(b"".join((b"\x01\x00\x00", len(payload).to_bytes(4, "big"), payload, b"\xce")))
        self.state = ConnectionState.AWAIT_TUNE

    def _on_tune(self, tune: commands.Connection.Tune) -> None:
        if self.state is not ConnectionState.AWAIT_TUNE:
            raise ProtocolError("unexpected Connection.Tune", UNEXPECTED_FRAME)
        self.channel_max = _negotiate(self._want_channel_max, tune.channel_max) or 65535
        self.channel_max = min(self.channel_max, 65535)
        frame_max = _negotiate(self._want_frame_max, tune.frame_max)
        self.frame_max = max(frame_max, MIN_FRAME_MAX) if frame_max else 2**31 - 1
        if self._want_heartbeat is None:
            self.heartbeat = tune.heartbeat
        elif self._want_heartbeat == 0 or tune.heartbeat == 0:
            self.heartbeat = max(self._want_heartbeat, tune.heartbeat)
        else:
            self.heartbeat = min(self._want_heartbeat, tune.heartbeat)
        self._buffer.frame_max = self.frame_max
        self._send(
            marshal_method(
                0,
                commands.Connection.TuneOk(
                    channel_max=self.channel_max,
                    frame_max=self.frame_max if frame_max else 0,
                    heartbeat=self.heartbeat,
                ),
            )
        )
        self._send(marshal_method(0, _methods.Connection.Open(virtual_host=self._virtual_host)))
        self.state = ConnectionState.AWAIT_OPEN_OK

    # ------------------------------------------------------------------ other channels

    def _known_channel(self, channel: int, what: str) -> _Channel | None:
        ch = self._channels.get(channel)
        if ch is None:
            if channel == 0:  # content on channel 0: what RabbitMQ calls an unexpected frame
                raise ProtocolError(f"{what} on channel 0", UNEXPECTED_FRAME)
            if self.state is ConnectionState.CLOSING:
                return None  # frames still in flight when we started closing
            raise ProtocolError(f"{what} on channel {channel}, which is not open", CHANNEL_ERROR)
        return ch

    def _on_channel_method(self, channel: int, method: Frame) -> None:
        ch = self._known_channel(channel, method.name)
        if ch is None:
            return
        if ch.content is not None:
            raise ProtocolError(
                f"{method.name} on channel {channel} while content was expected", UNEXPECTED_FRAME
            )
        if isinstance(method, commands.Channel.Close):
            self._send(marshal_method(channel, commands.Channel.CloseOk()))
            if ch.state is ChannelState.CLOSING:
                # Our Channel.Close crossed the broker's. The broker still answers ours with
                # CloseOk, so the number stays taken until that arrives.
                if ch.peer_closed:
                    return
                ch.peer_closed = True
            else:
                del self._channels[channel]
            self._events.append(
                ev.ChannelClosed(
                    channel,
                    method.reply_code or 0,
                    method.reply_text,
                    True,
                    method.class_id or 0,
                    method.method_id or 0,
                )
            )
            return
        if ch.state is ChannelState.CLOSING:
            if isinstance(method, commands.Channel.CloseOk):
                del self._channels[channel]
                if not ch.peer_closed:
                    self._events.append(ev.ChannelClosed(channel, 200, "Normal shutdown", False))
            elif isinstance(method, commands.Basic.Deliver | commands.Basic.Return):
                ch.content = _Content(method)  # collected and dropped
            return
        if isinstance(method, commands.Basic.Deliver):
            if ch.limited:
                self._count_delivery(ch, method)
            ch.content = _Content(method)
        elif isinstance(method, commands.Basic.Return):
            ch.content = _Content(method)
        elif isinstance(method, commands.Basic.Ack | commands.Basic.Nack):
            self._on_confirm(ch, method)
        elif isinstance(method, commands.Basic.Cancel):
            tag = method.consumer_tag or ""
            ch.consumers.pop(tag, None)
            ch.limits.pop(tag, None)
            if self.server_properties.get("capabilities", {}).get("accept_consumer_cancel_ok"):
                self._send(marshal_method(channel, commands.Basic.CancelOk(consumer_tag=tag)))
            self._events.append(ev.ConsumerCancelled(channel, tag))
        elif isinstance(method, commands.Channel.Flow):
            self._send(marshal_method(channel, commands.Channel.FlowOk(active=method.active)))
        else:
            self._on_reply(ch, method)

    def _on_reply(self, ch: _Channel, method: Frame) -> None:
        name = method.name
        if not ch.expected or name not in ch.expected[0]:
            raise ProtocolError(
                f"unexpected {name} on channel {ch.id}"
                + (f" (waiting for {' or '.join(ch.expected[0])})" if ch.expected else ""),
                UNEXPECTED_FRAME,
            )
        ch.expected.popleft()
        if isinstance(method, commands.Basic.GetOk):
            ch.content = _Content(method)
            return
        if isinstance(method, commands.Channel.OpenOk):
            ch.state = ChannelState.OPEN
            self._events.append(ev.ChannelOpened(ch.id))
            return
        if isinstance(method, commands.Basic.ConsumeOk):
            no_ack, limit = ch.pending_consumes.popleft() if ch.pending_consumes else (False, 0)
            self._add_consumer(ch, method.consumer_tag or "", no_ack, limit)
        elif isinstance(method, commands.Basic.CancelOk):
            ch.consumers.pop(method.consumer_tag or "", None)
            ch.limits.pop(method.consumer_tag or "", None)
        elif isinstance(method, commands.Basic.QosOk):
            self._qos_ok(ch)
        self._events.append(ev.MethodReply(ch.id, method))

    def _on_confirm(self, ch: _Channel, method: commands.Basic.Ack | commands.Basic.Nack) -> None:
        tag = method.delivery_tag or 0
        if not ch.confirm or tag >= ch.next_tag:
            raise ProtocolError(
                f"{method.name} for unknown publish {tag} on channel {ch.id}", COMMAND_INVALID
            )
        mandatory = ch.mandatory
        if mandatory:
            if method.multiple:
                for pending in list(mandatory):
                    if pending > tag:
                        break
                    del mandatory[pending]
            else:
                mandatory.pop(tag, None)
        self._events.append(
            ev.PublishConfirmed(
                ch.id, tag, bool(method.multiple), isinstance(method, commands.Basic.Ack)
            )
        )

    def _on_header(
        self, channel: int, content_header: header.ContentHeader | BadContentHeader
    ) -> None:
        ch = self._known_channel(channel, "content header")
        if ch is None:
            return
        content = ch.content
        if content is None or content.body_size >= 0:
            raise ProtocolError(f"unexpected content header on channel {channel}", UNEXPECTED_FRAME)
        if isinstance(content_header, BadContentHeader):
            content.error = f"undecodable content header: {content_header.error}"
            content.body_size = content_header.body_size
        else:
            content.properties = content_header.properties
            content.body_size = content_header.body_size
            if content.body_size > self.max_message_size:
                # never buffered: its body frames are counted and dropped
                content.error = (
                    f"the message body of {content.body_size} bytes exceeds "
                    f"max_message_size ({self.max_message_size} bytes)"
                )
        if content.body_size == 0:
            self._content_done(ch, content, b"")

    def _on_body(self, channel: int, body: bytes) -> None:
        ch = self._known_channel(channel, "content body")
        if ch is None:
            return
        content = ch.content
        if content is None or content.body_size < 0:
            raise ProtocolError(f"unexpected content body on channel {channel}", UNEXPECTED_FRAME)
        content.received += len(body)
        if content.received > content.body_size:
            raise ProtocolError(
                f"content body on channel {channel} is longer than its header said",
                UNEXPECTED_FRAME,
            )
        if content.error is None:
            content.parts.append(body)
        if content.received == content.body_size:
            parts = content.parts
            self._content_done(ch, content, parts[0] if len(parts) == 1 else b"".join(parts))

    def _content_done(self, ch: _Channel, content: _Content, body: bytes) -> None:
        ch.content = None
        if ch.state is ChannelState.CLOSING:
            return
        method = content.method
        if content.error is not None:
            self._undecodable(ch, method, content.error)
            return
        props = content.properties
        assert props is not None
        if isinstance(method, commands.Basic.Deliver):
            self._events.append(
                ev.Delivery(
                    ch.id,
                    method.consumer_tag or "",
                    method.delivery_tag or 0,
                    method.redelivered,
                    method.exchange,
                    method.routing_key or "",
                    props,
                    body,
                )
            )
        elif isinstance(method, commands.Basic.GetOk):
            self._events.append(
                ev.GetOk(
                    ch.id,
                    method.delivery_tag or 0,
                    method.redelivered,
                    method.exchange,
                    method.routing_key or "",
                    method.message_count or 0,
                    props,
                    body,
                )
            )
        elif isinstance(method, commands.Basic.Return):
            self._events.append(
                ev.Returned(
                    ch.id,
                    method.reply_code or 0,
                    method.reply_text,
                    method.exchange,
                    method.routing_key or "",
                    props,
                    body,
                    self._match_return(
                        ch, method.exchange, method.routing_key or "", props.message_id
                    ),
                )
            )

    def _match_return(
        self, ch: _Channel, exchange: str, routing_key: str, message_id: str | None
    ) -> int | None:
        """The sequence number of the oldest unconfirmed mandatory publish like this one.

        The broker returns unroutable messages in publish order and always before their ack.
        """
        wanted = (exchange, routing_key, message_id)
        for tag, published in ch.mandatory.items():
            if published == wanted:
                del ch.mandatory[tag]
                return tag
        return None

    def _undecodable(self, ch: _Channel, method: Frame, error: str) -> None:
        if isinstance(method, commands.Basic.Deliver):
            tag = method.delivery_tag or 0
            consumer_tag = method.consumer_tag or ""
            if not ch.consumers.get(consumer_tag, False):
                self.reject(ch.id, tag, requeue=False)
            self._events.append(ev.UndecodableDelivery(ch.id, consumer_tag, tag, error))
        elif isinstance(method, commands.Basic.GetOk):
            tag = method.delivery_tag or 0
            self.reject(ch.id, tag, requeue=False)
            self._events.append(ev.UndecodableDelivery(ch.id, None, tag, error))
        # an undecodable Basic.Return has nobody to tell: its Basic.Ack still follows

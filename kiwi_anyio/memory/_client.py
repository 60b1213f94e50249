"""The memory broker's client side: connections, channels, consumers and messages.

The implementation of :mod:`kiwi_anyio.channel`'s interface over the broker model of
:mod:`kiwi_anyio.memory._model`: a channel hands every AMQP method to the model
(:meth:`MemoryChannel._execute`) and turns its :class:`~kiwi_anyio.memory._model.Refused` into
the :class:`~kiwi_anyio.ChannelClosed` that closes the channel; it keeps the delivery tags and
the unacknowledged messages, and puts deliveries into per-consumer anyio streams. The
docstrings of the public methods are the interface's.

Owns: the per-connection and per-channel state (channel numbers, delivery tags, prefetch,
unacknowledged messages, consumer streams). Must not touch: the rules of routing, declaring
and refusing (the model's), the registry of named brokers (the package's ``__init__``).
"""

from __future__ import annotations

import logging
import math
import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Self, TypeVar

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pamqp import commands
from pamqp.base import Frame

from .. import channel as interface
from .._version import __version__
from ..channel import Acknowledgement, Body, FieldTable, OnConfirm, Props
from ..exceptions import ChannelClosed, ConnectionClosed, ConsumerCancelled, MessageReturned
from ..protocol import _methods as methods
from ._model import VHOST, Broker, Envelope, MessageQueue, Refused, generated_name

__all__ = ["MemoryChannel", "MemoryConnection", "MemoryConsumer", "MemoryMessage"]

logger = logging.getLogger("kiwi_anyio.memory")

Properties = commands.Basic.Properties
T = TypeVar("T")

PRODUCT: Final = "kiwi_anyio memory broker"
CHANNEL_MAX: Final = 2047


@dataclass(eq=False, slots=True)
class _Unacked:
    queue: MessageQueue
    envelope: Envelope
    consumer: MemoryConsumer | None


class MemoryMessage(interface.Message):
    """A message of the memory broker (see :class:`kiwi_anyio.channel.Message`).

    Its ``properties`` are shared with the publisher and every other delivery: do not modify
    them.
    """

    __slots__ = ("_channel",)

    def __init__(
        self,
        channel: MemoryChannel,
        envelope: Envelope,
        delivery_tag: int,
        *,
        no_ack: bool,
        consumer_tag: str | None = None,
        message_count: int | None = None,
    ) -> None:
        self._channel = channel
        self.body = envelope.body
        self.properties = envelope.properties
        self.delivery_tag = delivery_tag
        self.redelivered = envelope.redelivered
        self.exchange = envelope.exchange
        self.routing_key = envelope.routing_key
        self.consumer_tag = consumer_tag
        self.message_count = message_count
        self.no_ack = no_ack
        self._settled = no_ack

    @property
    def channel(self) -> MemoryChannel:
        return self._channel

    def ack(self) -> None:
        channel = self._channel
        channel._check()
        self._settle()
        channel.basic_ack(self.delivery_tag)


class MemoryConsumer(interface.Consumer["MemoryMessage"]):
    """A consumer of the memory broker (see :class:`kiwi_anyio.channel.Consumer`).

    Messages delivered to it but not yet taken from the iterator go back to the queue when it
    is cancelled; taken ones stay unacknowledged until settled or the channel closes.
    """

    def __init__(
        self,
        channel: MemoryChannel,
        queue: str,
        *,
        no_ack: bool,
        exclusive: bool,
        consumer_tag: str,
    ) -> None:
        self._channel = channel
        self.queue = queue
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.consumer_tag = consumer_tag
        self.prefetch_count = 0
        self._unacked = 0
        self._queue: MessageQueue | None = None
        self._send: MemoryObjectSendStream[MemoryMessage] | None = None
        self._receive: MemoryObjectReceiveStream[MemoryMessage] | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<MemoryConsumer {self.consumer_tag!r} of queue {self.queue!r}>"

    async def start(self) -> Self:
        await anyio.lowlevel.checkpoint()
        if self._send is not None:
            raise RuntimeError(f"{self!r} was already started")
        self._send, self._receive = anyio.create_memory_object_stream[MemoryMessage](math.inf)
        try:
            self._channel._run(lambda: self._channel._register(self))
        except BaseException:
            self._close_streams()
            raise
        return self

    async def cancel(self) -> None:
        self._cancel()
        await anyio.lowlevel.cancel_shielded_checkpoint()

    def _cancel(self) -> None:
        channel = self._channel
        if channel._consumers.get(self.consumer_tag) is not self:
            self._close_streams()
            return
        del channel._consumers[self.consumer_tag]
        queue = self._detach()
        drained = self._close_streams()
        if not self.no_ack:
            records = []
            for message in drained:
                if not message._settled:
                    message._settled = True
                    record = channel._unacked.pop(message.delivery_tag, None)
                    if record is not None:
                        records.append(record)
            channel._settle(records, requeue=True)
        if queue is not None:
            channel._broker.consumer_gone(queue)

    def _detach(self) -> MessageQueue | None:
        queue, self._queue = self._queue, None
        if queue is not None:
            if self in queue.consumers:
                queue.consumers.remove(self)
            if queue.exclusive_consumer is self:
                queue.exclusive_consumer = None
        return queue

    def _close_streams(self) -> list[MemoryMessage]:
        drained: list[MemoryMessage] = []
        if self._send is not None:
            self._send.close()
        if self._receive is not None:
            drained = interface.drain(self._receive)
            self._receive.close()
        return drained

    def _fail(self, error: BaseException) -> list[MemoryMessage]:
        self._error = error
        return self._close_streams()

    def _cancelled_by_broker(self) -> None:
        """Its queue was deleted: end the iteration with ConsumerCancelled."""
        channel = self._channel
        if channel._consumers.get(self.consumer_tag) is self:
            del channel._consumers[self.consumer_tag]
        self._queue = None
        drained = self._fail(
            ConsumerCancelled(
                0, f"the broker cancelled consumer {self.consumer_tag!r} of queue {self.queue!r}"
            )
        )
        channel._settle(
            [
                record
                for message in drained
                if (record := channel._unacked.pop(message.delivery_tag, None)) is not None
            ],
            requeue=False,
        )

    def _has_room(self) -> bool:
        if self.no_ack:
            return True
        return not self.prefetch_count or self._unacked < self.prefetch_count

    def _deliver(self, queue: MessageQueue, envelope: Envelope) -> None:
        channel = self._channel
        tag = channel._next_tag()
        if not self.no_ack:
            channel._unacked[tag] = _Unacked(queue, envelope, self)
            self._unacked += 1
        message = MemoryMessage(
            channel, envelope, tag, no_ack=self.no_ack, consumer_tag=self.consumer_tag
        )
        assert self._send is not None
        self._send.send_nowait(message)

    async def __anext__(self) -> MemoryMessage:
        if self._receive is None:
            raise RuntimeError(f"{self!r} was not started (use `async with`)")
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            if self._error is not None:
                raise self._error from None
            raise StopAsyncIteration from None


class MemoryChannel(interface.Channel["MemoryMessage", "MemoryConsumer"]):
    """A channel of the memory broker (see :class:`kiwi_anyio.channel.Channel`).

    Every AMQP method it is asked to carry (:meth:`_call`) is executed by the broker model at
    once (:meth:`_execute`), with RabbitMQ's replies and refusals.
    """

    def __init__(self, connection: MemoryConnection, number: int, publisher_confirms: bool) -> None:
        self._connection = connection
        self._broker = connection._broker
        self.number = number
        self.publisher_confirms = publisher_confirms
        self._consumers: dict[str, MemoryConsumer] = {}
        self._unacked: dict[int, _Unacked] = {}
        self._tag = 0
        self._prefetch = 0
        self._last_queue = ""
        self._closed: ChannelClosed | None = None

    def __repr__(self) -> str:
        return f"<MemoryChannel {self.number} of {self._connection}>"

    @property
    def is_open(self) -> bool:
        return self._closed is None

    def _check(self) -> None:
        if self._closed is not None:
            raise self._closed
        self._connection._check()

    def _run(self, operation: Callable[[], T]) -> T:
        """Run a broker operation; a broker error closes the channel and raises."""
        self._check()
        try:
            return operation()
        except Refused as exc:
            raise self._fail(exc.code, exc.text) from None

    def _fail(self, code: int, text: str) -> ChannelClosed:
        error = ChannelClosed(
            code, text, f"channel {self.number} closed by the broker: {code} {text}"
        )
        logger.warning("%s: broker closed channel %s: %s %s", self, self.number, code, text)
        self._close(error)
        return error

    def _close(self, error: ChannelClosed) -> None:
        """Close now: fail the consumers and requeue every unacknowledged message."""
        if self._closed is not None:
            return
        self._closed = error
        records = list(self._unacked.values())
        self._unacked.clear()
        consumers = list(self._consumers.values())
        self._consumers.clear()
        queues = []
        for consumer in consumers:
            queue = consumer._detach()
            consumer._fail(error)
            if queue is not None:
                queues.append(queue)
        self._settle(records, requeue=True)
        self._connection._channels.pop(self.number, None)
        for queue in queues:
            self._broker.consumer_gone(queue)

    def _queue_name(self, queue: str) -> str:
        """AMQP's shortcut: an empty queue name is the channel's last declared queue."""
        if queue:
            return queue
        if not self._last_queue:
            raise Refused(404, "NOT_FOUND - no previously declared queue")
        return self._last_queue

    def _next_tag(self) -> int:
        self._tag += 1
        return self._tag

    def _register(self, consumer: MemoryConsumer) -> None:
        tag = consumer.consumer_tag or generated_name("amq.ctag")
        if tag in self._consumers:
            raise Refused(530, f"NOT_ALLOWED - attempt to reuse consumer tag '{tag}'")
        queue = self._broker.queue(self._connection, self._queue_name(consumer.queue))
        if queue.exclusive_consumer is not None or (consumer.exclusive and queue.consumers):
            raise Refused(
                403, f"ACCESS_REFUSED - queue '{queue.name}' in vhost '{VHOST}' in exclusive use"
            )
        consumer.consumer_tag = tag
        consumer.prefetch_count = self._prefetch
        consumer._queue = queue
        self._consumers[tag] = consumer
        queue.consumers.append(consumer)
        if consumer.exclusive:
            queue.exclusive_consumer = consumer
        queue.dispatch()

    def _take(self, delivery_tag: int, multiple: bool) -> list[_Unacked]:
        unacked = self._unacked
        if multiple and delivery_tag == 0:
            records = list(unacked.values())
            unacked.clear()
            return records
        if delivery_tag not in unacked:
            raise self._fail(406, f"PRECONDITION_FAILED - unknown delivery tag {delivery_tag}")
        if not multiple:
            return [unacked.pop(delivery_tag)]
        tags = [tag for tag in unacked if tag <= delivery_tag]
        return [unacked.pop(tag) for tag in tags]

    def _settle(self, records: Iterable[_Unacked], *, requeue: bool) -> None:
        """Forget settled deliveries (requeueing them if asked) and deliver what now fits."""
        back: dict[MessageQueue, list[Envelope]] = {}
        for record in records:
            if record.consumer is not None:
                record.consumer._unacked -= 1
            back.setdefault(record.queue, []).append(record.envelope)
        for queue, envelopes in back.items():
            if requeue:
                queue.requeue(envelopes)
        for queue in back:
            if not queue.deleted:
                queue.dispatch()

    # ------------------------------------------------------------ AMQP methods

    async def _call(self, method: Frame) -> Frame:
        await anyio.lowlevel.checkpoint()
        return self._run(lambda: self._execute(method))

    def _execute(self, method: Frame) -> Frame:
        """Do what the broker does on ``method``; its reply (or :class:`Refused`)."""
        broker = self._broker
        connection = self._connection
        match method:
            case commands.Exchange.Declare():
                broker.exchange_declare(
                    method.exchange,
                    method.exchange_type,
                    passive=method.passive,
                    durable=method.durable,
                    auto_delete=method.auto_delete,
                    internal=method.internal,
                    arguments=method.arguments or {},
                )
                return commands.Exchange.DeclareOk()
            case commands.Exchange.Delete():
                broker.exchange_delete(method.exchange, if_unused=method.if_unused)
                return commands.Exchange.DeleteOk()
            case commands.Exchange.Bind() | commands.Exchange.Unbind():
                broker.bind(
                    "exchange",
                    method.destination,
                    method.source,
                    method.routing_key,
                    method.arguments or {},
                    add=isinstance(method, commands.Exchange.Bind),
                )
                return (
                    commands.Exchange.BindOk()
                    if isinstance(method, commands.Exchange.Bind)
                    else commands.Exchange.UnbindOk()
                )
            case commands.Queue.Declare():
                declared = broker.queue_declare(
                    connection,
                    self._queue_name(method.queue) if method.passive else method.queue,
                    passive=method.passive,
                    durable=method.durable,
                    exclusive=method.exclusive,
                    auto_delete=method.auto_delete,
                    arguments=method.arguments or {},
                )
                self._last_queue = declared.name
                return methods.Queue.DeclareOk(
                    queue=declared.name,
                    message_count=len(declared.ready),
                    consumer_count=len(declared.consumers),
                )
            case commands.Queue.Bind():
                name = broker.queue(connection, self._queue_name(method.queue)).name
                key = method.routing_key if method.routing_key or method.queue else name
                broker.bind("queue", name, method.exchange, key, method.arguments or {}, add=True)
                return commands.Queue.BindOk()
            case commands.Queue.Unbind():
                name = broker.queue(connection, self._queue_name(method.queue)).name
                broker.bind(
                    "queue",
                    name,
                    method.exchange,
                    method.routing_key,
                    method.arguments or {},
                    add=False,
                )
                return commands.Queue.UnbindOk()
            case commands.Queue.Purge():
                found = broker.queue(connection, self._queue_name(method.queue))
                count = len(found.ready)
                found.ready.clear()
                return commands.Queue.PurgeOk(message_count=count)
            case commands.Queue.Delete():
                count = broker.queue_delete(
                    connection,
                    self._queue_name(method.queue),
                    if_unused=method.if_unused,
                    if_empty=method.if_empty,
                )
                return commands.Queue.DeleteOk(message_count=count)
            case commands.Basic.Qos():
                if method.prefetch_size:
                    raise Refused(
                        540, f"NOT_IMPLEMENTED - prefetch_size!=0 ({method.prefetch_size})"
                    )
                self._prefetch = method.prefetch_count
                return commands.Basic.QosOk()
            case commands.Confirm.Select():
                return commands.Confirm.SelectOk()
            case commands.Channel.Flow():
                if not method.active:
                    raise Refused(540, "NOT_IMPLEMENTED - active=false")
                return commands.Channel.FlowOk(active=True)
        raise Refused(540, f"NOT_IMPLEMENTED - {method.name}")

    # ------------------------------------------------------------ basic

    def _consumer(
        self, queue: str, no_ack: bool, exclusive: bool, consumer_tag: str, arguments: FieldTable
    ) -> MemoryConsumer:
        # consumer arguments are ignored
        methods.Basic.Consume(queue=queue, consumer_tag=consumer_tag)
        self._check()
        return MemoryConsumer(
            self, queue, no_ack=no_ack, exclusive=exclusive, consumer_tag=consumer_tag
        )

    async def _get(self, queue: str, no_ack: bool) -> MemoryMessage | None:
        methods.Basic.Get(queue=queue)
        await anyio.lowlevel.checkpoint()

        def get() -> MemoryMessage | None:
            found = self._broker.queue(self._connection, self._queue_name(queue))
            if not found.ready:
                return None
            envelope = found.ready.popleft()
            tag = self._next_tag()
            if not no_ack:
                self._unacked[tag] = _Unacked(found, envelope, None)
            return MemoryMessage(self, envelope, tag, no_ack=no_ack, message_count=len(found.ready))

        return self._run(get)

    async def basic_cancel(self, consumer_tag: str) -> None:
        consumer = self._consumers.get(consumer_tag)
        if consumer is not None:
            await consumer.cancel()
        else:
            await anyio.lowlevel.checkpoint()
            self._check()

    def _acknowledge(self, kind: Acknowledgement, tag: int, multiple: bool, requeue: bool) -> None:
        # an unknown tag raises ChannelClosed (406) at once, instead of closing the channel only
        self._settle(self._take(tag, multiple), requeue=requeue)

    async def _publish(
        self, body: Body, exchange: str, key: str, props: Props, mandatory: bool
    ) -> None:
        # routed and delivered before this returns; the body is copied
        methods.Basic.Publish(exchange=exchange, routing_key=key)
        if not isinstance(body, bytes | bytearray | memoryview):
            raise TypeError(f"the body must be bytes, not {type(body).__name__}")
        await anyio.lowlevel.checkpoint()
        self._publish_now(body, exchange, key, props, mandatory)

    def _publish_nowait(
        self, body: Body, exchange: str, key: str, props: Props, mandatory: bool, done: OnConfirm
    ) -> None:
        # done (on_confirm) is called before this returns
        methods.Basic.Publish(exchange=exchange, routing_key=key)
        self._check()
        try:
            self._publish_now(body, exchange, key, props, mandatory)
        except (ChannelClosed, MessageReturned) as exc:
            done(exc)
        else:
            done(None)

    def _publish_now(
        self, body: Body, exchange: str, routing_key: str, props: Props, mandatory: bool
    ) -> None:
        self._check()
        data = bytes(body)
        props = props if props is not None else Properties()
        try:
            routed = self._broker.publish(exchange, routing_key, data, props)
        except Refused as exc:
            error = self._fail(exc.code, exc.text)
            if self.publisher_confirms:
                raise error from None
            return
        if routed or not mandatory:
            return
        if self.publisher_confirms:
            raise MessageReturned(312, "NO_ROUTE", exchange, routing_key)
        logger.warning(
            "%s: message to %r/%r returned: %s %s", self, exchange, routing_key, 312, "NO_ROUTE"
        )

    async def aclose(self) -> None:
        if self._closed is None:
            for consumer in list(self._consumers.values()):
                consumer._cancel()
            self._close(ChannelClosed(200, "channel closed by the client"))
        await anyio.lowlevel.cancel_shielded_checkpoint()


class MemoryConnection(interface.Connection["MemoryChannel"]):
    """A connection to a memory broker. Get one with ``async with memory.connect(name)``.

    The methods of :class:`kiwi_anyio.channel.Connection`; it never blocks and never fails.

    Attributes:
        name: the broker's name.
    """

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self.name = broker.name
        self._channels: dict[int, MemoryChannel] = {}
        self._closed = False
        self._closed_event = anyio.Event()
        self.server_properties: dict[str, Any] = {
            "product": PRODUCT,
            "version": __version__,
            "platform": f"Python {platform.python_version()}",
            "information": "in-process and not durable: messages are lost when the process ends",
            "capabilities": {
                "publisher_confirms": True,
                "exchange_exchange_bindings": True,
                "basic.nack": True,
                "consumer_cancel_notify": True,
                "per_consumer_qos": True,
                "connection.blocked": False,
                "authentication_failure_close": True,
            },
        }

    @property
    def is_open(self) -> bool:
        return not self._closed

    @property
    def is_blocked(self) -> bool:
        return False

    @property
    def failure(self) -> None:
        return None

    def _check(self) -> None:
        if self._closed:
            raise ConnectionClosed(200, "the connection is closed")

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    async def _open_channel(self, publisher_confirms: bool, prefetch: int | None) -> MemoryChannel:
        await anyio.lowlevel.checkpoint()
        self._check()
        number = next((n for n in range(1, CHANNEL_MAX + 1) if n not in self._channels), None)
        if number is None:
            raise ChannelClosed(504, f"CHANNEL_ERROR - all {CHANNEL_MAX} channels are open")
        channel = MemoryChannel(self, number, publisher_confirms)
        if prefetch is not None:
            channel._prefetch = prefetch
        self._channels[number] = channel
        return channel

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        error = ChannelClosed(200, "the connection is closed")
        for channel in list(self._channels.values()):
            channel._close(error)
        self._channels.clear()
        self._broker.detach(self)
        self._closed_event.set()

    async def aclose(self) -> None:
        self._close()

    def __repr__(self) -> str:
        return f"<MemoryConnection memory://{self.name} at {id(self):#x}>"

    def __str__(self) -> str:
        return f"memory://{self.name}"

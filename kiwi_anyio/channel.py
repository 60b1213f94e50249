"""The channel interface: what kiwi_anyio needs of a broker connection, written down once.

Two implementations exist: :mod:`kiwi_anyio.protocol` (RabbitMQ, over a socket) and
:mod:`kiwi_anyio.memory` (the in-process broker). Code above them (the Communicator) is typed
against the protocols here, never against either implementation::

    Connection      .channel(publisher_confirms=, prefetch_count=) → ChannelOpener
    ChannelOpener   ``await`` it, or ``async with`` it (closes the channel at the end)
    Channel         declare, bind, qos, publish (with confirms), consume, get, ack/nack, close
    Consumer        ``async with`` + ``async for`` over the Messages of one Basic.Consume
    Message         body, properties, delivery_tag, redelivered … and ack/nack/reject

The docstrings here are the documentation of both implementations: they define no public
method of their own without a reason (``protocol.Connection.heartbeat`` and the like exist on
RabbitMQ only). Errors are the ones of :mod:`kiwi_anyio.exceptions`: a broker refusal closes
the channel with :class:`~kiwi_anyio.ChannelClosed` (its ``reply_code`` and ``reply_text`` are
RabbitMQ's: 404 NOT_FOUND, 405 RESOURCE_LOCKED, 406 PRECONDITION_FAILED, 403
ACCESS_REFUSED …) and the connection stays usable (RabbitMQ closes the connection instead for
what it deems connection errors: 503, 530, 540, and 541 on 4.3).

**Shared mechanics.** The protocols are also the base classes of the implementations
(explicit subclassing, :pep:`544`'s default implementations): what both would write alike is
written once here (the channel opener, the context manager and iterator plumbing, every
method that is one AMQP request and its reply), over a few hooks each implementation provides
(the underscore members: :meth:`Channel._call` carries one synchronous AMQP method to the
broker and returns its reply, as RabbitMQ would send it). Because the implementations subclass
the protocols, mypy checks every override against the signature here, and a hook or abstract
member left out makes the class abstract (mypy refuses to instantiate it).

The type parameters give each implementation precise types (``protocol.Channel.basic_get``
returns a ``protocol.Message``); they default to the protocols, so ``Channel`` alone is "any
channel".

The module is a little over 700 lines because it is the one place the channel API is written
down: a third of it is docstrings and most of the rest signatures, which belong together.

Owns: the interface and the mechanics shared by its implementations. Must not touch: sockets,
the sans-I/O core, broker state, the Communicator: nothing here knows how a method reaches
the broker, and nothing here does I/O of its own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator, Mapping
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, Self

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from pamqp import commands
from pamqp.base import Frame
from typing_extensions import TypeVar

from .exceptions import AMQPError, ChannelClosed

__all__ = [
    "Acknowledgement",
    "Body",
    "Channel",
    "ChannelOpener",
    "Connection",
    "Consumer",
    "FieldTable",
    "Message",
    "OnConfirm",
    "Properties",
    "Props",
    "drain",
]

Properties = commands.Basic.Properties
FieldTable = Mapping[str, Any]
Body = bytes | bytearray | memoryview
"""A message body: ``bytes``, or a ``bytearray``/``memoryview`` (copied at publish)."""
Props = Properties | None
"""Optional message properties (what the publishing hooks take)."""
OnConfirm = Callable[[BaseException | None], object]
"""``publish_nowait``'s callback: called with None (confirmed) or the error."""
Acknowledgement = Literal["ack", "nack", "reject"]

MessageT_co = TypeVar("MessageT_co", bound="Message", covariant=True, default="Message")
ConsumerT_co = TypeVar(
    "ConsumerT_co", bound="Consumer[Any]", covariant=True, default="Consumer[Message]"
)
T = TypeVar("T")
ChannelT_co = TypeVar("ChannelT_co", bound="Channel[Any, Any]", covariant=True, default="Channel")


def _share_docstrings(cls: type) -> None:
    """Give each member ``cls`` defines without a docstring the one of the member it overrides,
    so that ``help()`` and the API reference show an implementation with the interface's docs."""
    for name, value in vars(cls).items():
        function = value.fget if isinstance(value, property) else value
        if not inspect.isfunction(function) or function.__doc__:
            continue
        for base in cls.__mro__[1:]:
            doc = getattr(vars(base).get(name), "__doc__", None)
            if doc:
                function.__doc__ = doc
                if isinstance(value, property):
                    value.__doc__ = doc
                break


class _SharedDocstrings(Protocol):
    """Base of the interface protocols: their subclasses get the docstrings they leave out."""

    __slots__ = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _share_docstrings(cls)


class Message(_SharedDocstrings, Protocol):
    """A message received with :meth:`Channel.basic_consume` or :meth:`Channel.basic_get`.

    Attributes:
        body: the message body.
        properties: the ``Basic.Properties`` (``correlation_id``, ``reply_to`` …).
        delivery_tag: the channel's tag for this delivery.
        redelivered: True if the broker delivered it before.
        exchange: the exchange it was published to.
        routing_key: its routing key.
        consumer_tag: the consumer it was delivered to (None for ``basic_get``).
        message_count: messages left in the queue (``basic_get`` only).
        no_ack: True if it needs no acknowledgement.
    """

    __slots__ = (
        "_settled",
        "body",
        "consumer_tag",
        "delivery_tag",
        "exchange",
        "message_count",
        "no_ack",
        "properties",
        "redelivered",
        "routing_key",
    )

    body: bytes
    properties: Properties
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    consumer_tag: str | None
    message_count: int | None
    no_ack: bool
    _settled: bool  # hook: True once settled (no_ack deliveries start settled)

    @property
    def channel(self) -> Channel:
        """The channel the message arrived on; acks go back on it."""
        ...

    @property
    def settled(self) -> bool:
        """True once acked, nacked or rejected (always True for ``no_ack`` deliveries)."""
        return self._settled

    def _settle(self) -> None:
        if self._settled:
            raise RuntimeError(f"delivery {self.delivery_tag} was already acknowledged")
        self._settled = True

    def ack(self) -> None:
        """Acknowledge the message (``Basic.Ack``).

        Raises:
            ChannelClosed: the channel is closed; the broker requeued the message.
            RuntimeError: the message was already acknowledged.
        """
        ...

    def nack(self, *, requeue: bool = True) -> None:
        """Negatively acknowledge the message; ``requeue=False`` drops (or dead-letters) it."""
        channel = self.channel
        channel._check()
        self._settle()
        channel.basic_nack(self.delivery_tag, requeue=requeue)

    def reject(self, *, requeue: bool = True) -> None:
        """Reject the message (``Basic.Reject``)."""
        channel = self.channel
        channel._check()
        self._settle()
        channel.basic_reject(self.delivery_tag, requeue=requeue)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} tag={self.delivery_tag} exchange={self.exchange!r} "
            f"routing_key={self.routing_key!r} {len(self.body)} bytes>"
        )


class Consumer(_SharedDocstrings, Protocol[MessageT_co]):
    """An async iterator of :class:`Message` for one ``Basic.Consume``.

    Use it as an async context manager: leaving the block cancels the consumer on the broker
    (unacknowledged messages go back to the queue when the channel closes, or are requeued
    now if they were never handed out).

    Raises (from iteration):
        ConsumerCancelled: the broker cancelled the consumer (e.g. the queue was deleted).
        ChannelClosed: the channel was closed.
    """

    queue: str
    consumer_tag: str
    no_ack: bool

    async def start(self) -> Self:
        """Send ``Basic.Consume`` and wait for ``ConsumeOk``. ``async with`` calls it.

        Cancellation: a consumer whose ``ConsumeOk`` arrives after the await was cancelled is
        cancelled again on the broker, and what it received meanwhile is requeued.

        Raises:
            ChannelClosed: 404 no such queue, 405 another connection's exclusive queue,
                403 the queue has an exclusive consumer, 530 the consumer tag is taken.
        """
        ...

    async def cancel(self) -> None:
        """Cancel the consumer on the broker (``Basic.Cancel``); idempotent, shielded, bounded.

        Messages that arrived but were not taken from the iterator are rejected with requeue.
        """
        ...

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.cancel()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> MessageT_co: ...


class Channel(_SharedDocstrings, Protocol[MessageT_co, ConsumerT_co]):
    """An AMQP channel. Get one with ``async with conn.channel() as ch:``.

    Method names follow AMQP as pika and aiormq spell them. Synchronous methods are
    awaited until the broker's reply; cancelling such an await leaves the channel in sync (the
    late reply is discarded). A broker error (``Channel.Close``, e.g. 404 or 406) fails every
    pending operation and consumer of this channel with :class:`ChannelClosed`; the connection
    stays usable.

    Cancellation: cancelling a synchronous method after its request went out leaves what the
    broker did done (a queue declared stays declared); the late reply is discarded and the
    channel stays usable. :meth:`aclose` is shielded.

    Attributes:
        number: the channel number.
        publisher_confirms: True once the channel is in publisher-confirm mode.
    """

    number: int
    publisher_confirms: bool
    _closed: ChannelClosed | None  # hook: why the channel closed, None while open

    # ------------------------------------------------------------ hooks

    def _check(self) -> None:
        """Raise why the channel (or its connection) cannot be used; nothing if it can."""
        ...

    async def _call(self, method: Frame) -> Any:
        """Carry one synchronous AMQP method to the broker; return the broker's reply frame.

        A refusal closes the channel and raises :class:`ChannelClosed`.
        """
        ...

    def _consumer(
        self, queue: str, no_ack: bool, exclusive: bool, consumer_tag: str, arguments: FieldTable
    ) -> ConsumerT_co:
        """A consumer of ``queue``, not started yet (``basic_consume``'s work)."""
        ...

    async def _get(self, queue: str, no_ack: bool) -> MessageT_co | None:
        """``Basic.Get`` (``basic_get``'s work)."""
        ...

    def _acknowledge(self, kind: Acknowledgement, tag: int, multiple: bool, requeue: bool) -> None:
        """``Basic.Ack``/``Nack``/``Reject`` on an open channel; never blocks."""
        ...

    async def _publish(
        self, body: Body, exchange: str, key: str, props: Props, mandatory: bool
    ) -> None:
        """``basic_publish``'s work."""
        ...

    def _publish_nowait(
        self, body: Body, exchange: str, key: str, props: Props, mandatory: bool, done: OnConfirm
    ) -> None:
        """``publish_nowait``'s work (``done`` is its ``on_confirm``)."""
        ...

    async def _bind(
        self,
        method: Callable[..., Frame],
        routing_key: str,
        arguments: FieldTable | None,
        **ends: str,
    ) -> None:
        """The four (un)binding methods: ``method`` with the binding's two ``ends`` (``queue``
        and ``exchange``, or ``destination`` and ``source``)."""
        await self._call(method(routing_key=routing_key, arguments=dict(arguments or {}), **ends))

    # ------------------------------------------------------------ state

    @property
    def is_open(self) -> bool:
        """True until the channel is closed (by us or by the broker) or its connection is."""
        ...

    @property
    def close_reason(self) -> ChannelClosed | None:
        """Why the channel closed, or None while it is open."""
        return self._closed

    # ------------------------------------------------------------ exchanges

    async def exchange_declare(
        self,
        exchange: str,
        exchange_type: str = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: FieldTable | None = None,
    ) -> None:
        """Declare an exchange (``Exchange.Declare``).

        Raises:
            ChannelClosed: 406 it exists with another type, ``durable``, ``auto_delete`` or
                ``internal``; 404 ``passive`` and it does not exist; 403 a reserved
                ``amq.`` name; 503 an unknown exchange type.
        """
        await self._call(
            methods.Exchange.Declare(
                exchange=exchange,
                exchange_type=exchange_type,
                passive=passive,
                durable=durable,
                auto_delete=auto_delete,
                internal=internal,
                arguments=dict(arguments or {}),
            )
        )

    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None:
        """Delete an exchange (a missing one is fine) and its bindings."""
        await self._call(methods.Exchange.Delete(exchange=exchange, if_unused=if_unused))

    async def exchange_bind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: FieldTable | None = None,
    ) -> None:
        """Bind exchange ``destination`` to exchange ``source`` (a RabbitMQ extension)."""
        await self._bind(
            methods.Exchange.Bind, routing_key, arguments, destination=destination, source=source
        )

    async def exchange_unbind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: FieldTable | None = None,
    ) -> None:
        """Remove an exchange-to-exchange binding."""
        await self._bind(
            methods.Exchange.Unbind, routing_key, arguments, destination=destination, source=source
        )

    # ------------------------------------------------------------ queues

    async def queue_declare(
        self,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: FieldTable | None = None,
    ) -> commands.Queue.DeclareOk:
        """Declare a queue; ``queue=""`` lets the broker name it (``amq.gen-…``).

        Returns:
            ``Queue.DeclareOk`` with ``queue`` (the name), ``message_count`` (ready messages)
            and ``consumer_count``.

        Raises:
            ChannelClosed: 405 another connection's exclusive queue (or ``exclusive`` differs);
                406 it exists with other ``durable``, ``auto_delete`` or arguments; 404
                ``passive`` and it does not exist; 403 a reserved ``amq.`` name; 541 neither
                durable nor exclusive, on RabbitMQ 4.3 (and 4.x configured like it).
        """
        reply = await self._call(
            methods.Queue.Declare(
                queue=queue,
                passive=passive,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=dict(arguments or {}),
            )
        )
        assert isinstance(reply, commands.Queue.DeclareOk)
        return reply

    async def queue_bind(
        self, queue: str, exchange: str, routing_key: str = "", arguments: FieldTable | None = None
    ) -> None:
        """Bind a queue to an exchange (404 if either is missing)."""
        await self._bind(methods.Queue.Bind, routing_key, arguments, queue=queue, exchange=exchange)

    async def queue_unbind(
        self, queue: str, exchange: str, routing_key: str = "", arguments: FieldTable | None = None
    ) -> None:
        """Remove a queue binding (404 if the queue or exchange is missing)."""
        await self._bind(
            methods.Queue.Unbind, routing_key, arguments, queue=queue, exchange=exchange
        )

    async def queue_purge(self, queue: str) -> int:
        """Remove every ready message from a queue; returns how many."""
        reply = await self._call(methods.Queue.Purge(queue=queue))
        assert isinstance(reply, commands.Queue.PurgeOk)
        return int(reply.message_count or 0)

    async def queue_delete(
        self, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete a queue (a missing one is fine); returns how many messages it held.

        Its consumers are cancelled (iterating them raises
        :class:`~kiwi_anyio.ConsumerCancelled`).
        """
        reply = await self._call(
            methods.Queue.Delete(queue=queue, if_unused=if_unused, if_empty=if_empty)
        )
        assert isinstance(reply, commands.Queue.DeleteOk)
        return int(reply.message_count or 0)

    # ------------------------------------------------------------ basic

    async def basic_qos(
        self, prefetch_count: int = 0, prefetch_size: int = 0, *, global_: bool = False
    ) -> None:
        """Limit unacknowledged deliveries per consumer created afterwards; 0 means no limit.

        ``global_=True`` asks for a limit per channel; RabbitMQ 4.3 (and the memory broker)
        apply it per consumer instead (the deprecated feature ``global_qos`` is denied).
        """
        await self._call(
            commands.Basic.Qos(
                prefetch_size=prefetch_size, prefetch_count=prefetch_count, global_=global_
            )
        )

    async def confirm_select(self) -> None:
        """Put the channel in publisher-confirm mode (``conn.channel(publisher_confirms=True)``)."""
        await self._call(commands.Confirm.Select())
        self.publisher_confirms = True

    def basic_consume(
        self,
        queue: str,
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str = "",
        arguments: FieldTable | None = None,
    ) -> ConsumerT_co:
        """Consume from a queue: ``async with ch.basic_consume(q) as consumer:``.

        The consumer is an async iterator of :class:`Message`; the broker names it
        (``amq.ctag-…``) when ``consumer_tag`` is empty. Deliveries are buffered per consumer
        (bound them with :meth:`basic_qos`); nothing waits for you.
        """
        return self._consumer(queue, no_ack, exclusive, consumer_tag, dict(arguments or {}))

    async def basic_get(self, queue: str, *, no_ack: bool = False) -> MessageT_co | None:
        """Fetch one message, or None if the queue is empty (prefetch does not apply).

        Cancellation: if the await is cancelled after the request went out, a message that
        arrives anyway is rejected with requeue.
        """
        return await self._get(queue, no_ack)

    async def basic_cancel(self, consumer_tag: str) -> None:
        """Cancel a consumer by tag (prefer leaving the :class:`Consumer` block)."""
        ...

    def basic_ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        """Acknowledge deliveries (``multiple``: every one up to ``delivery_tag``; 0: all).

        Never blocks. An unknown tag makes the broker close the channel (406).
        """
        self._check()
        self._acknowledge("ack", delivery_tag, multiple, False)

    def basic_nack(
        self, delivery_tag: int, *, multiple: bool = False, requeue: bool = True
    ) -> None:
        """Negatively acknowledge deliveries: requeued at their position, or dropped."""
        self._check()
        self._acknowledge("nack", delivery_tag, multiple, requeue)

    def basic_reject(self, delivery_tag: int, *, requeue: bool = True) -> None:
        """Reject one delivery: requeued at its position, or dropped."""
        self._check()
        self._acknowledge("reject", delivery_tag, False, requeue)

    async def basic_publish(
        self,
        body: Body,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: Properties | None = None,
        mandatory: bool = False,
    ) -> None:
        """Publish a message (a ``bytearray`` or ``memoryview`` body is copied).

        On a confirm channel this returns once the broker confirmed the message; many
        publishes from concurrent tasks are pipelined. While the broker has blocked the
        connection, or too much is unsent, it waits first.

        Raises:
            MessageReturned: ``mandatory`` and nothing could route it (an ``UnroutableError``).
            PublishNacked: the broker nacked it.
            ChannelClosed: the channel closed before the confirm (404 no such exchange, 403
                an internal exchange, 406 larger than the broker's ``max_message_size``:
                raised on a confirm channel; otherwise the next operation raises).

        Cancellation: cancelled before the message is queued, nothing was sent; cancelled
        while waiting for the confirm, the message stays published and the confirm is
        ignored.
        """
        await self._publish(body, exchange, routing_key, properties, mandatory)

    def publish_nowait(
        self,
        body: Body,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: Properties | None = None,
        mandatory: bool = False,
        on_confirm: OnConfirm,
    ) -> None:
        """Queue a message and return at once; ``on_confirm(error)`` runs when the broker
        confirmed it (``error`` None) or did not (``PublishNacked``, ``MessageReturned``, or
        the ``ChannelClosed`` that ended the channel first). Without confirm mode it is
        called at once. The callback runs in the connection's reader: keep it short.

        Raises:
            anyio.WouldBlock: the broker has blocked the connection, or too much is unsent
                (use :meth:`basic_publish`, which waits).
            ChannelClosed: the channel is closed.
            ProtocolError: the message is too large, or its properties do not fit a frame.
        """
        self._publish_nowait(body, exchange, routing_key, properties, mandatory, on_confirm)

    async def flow(self, active: bool) -> bool:
        """Ask the broker to pause or resume deliveries (``Channel.Flow``).

        RabbitMQ supports only ``active=True`` (540 NOT_IMPLEMENTED otherwise).
        """
        reply = await self._call(commands.Channel.Flow(active=active))
        assert isinstance(reply, commands.Channel.FlowOk)
        return bool(reply.active)

    async def aclose(self) -> None:
        """Close the channel (``Channel.Close``); idempotent, shielded and time-bounded.

        Its consumers stop, and every unacknowledged message goes back to its queue.
        """
        ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def drain(stream: MemoryObjectReceiveStream[T]) -> list[T]:
    """Take every item ``stream`` holds now, without waiting (a consumer's unread buffer)."""
    items = []
    while True:
        try:
            items.append(stream.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return items


class Connection(_SharedDocstrings, Protocol[ChannelT_co]):
    """An open connection to a broker (RabbitMQ, or the memory broker).

    Attributes:
        server_properties: the broker's properties (``product``, ``version``, ``platform``,
            ``capabilities`` …).
    """

    server_properties: dict[str, Any]

    async def _open_channel(self, publisher_confirms: bool, prefetch: int | None) -> ChannelT_co:
        """Hook: open a channel (what :class:`ChannelOpener` awaits)."""
        ...

    @property
    def is_open(self) -> bool:
        """True from the end of the handshake until the connection closes or fails."""
        ...

    @property
    def is_blocked(self) -> bool:
        """True while the broker has blocked publishing (``Connection.Blocked``)."""
        ...

    @property
    def failure(self) -> AMQPError | None:
        """Why the connection failed, or None."""
        ...

    async def wait_closed(self) -> None:
        """Wait until the connection is closed or has failed."""
        ...

    def channel(
        self, *, publisher_confirms: bool = False, prefetch_count: int | None = None
    ) -> ChannelOpener[ChannelT_co]:
        """Open a channel: ``async with conn.channel() as ch:`` (or ``ch = await conn.channel()``).

        Args:
            publisher_confirms: put the channel in confirm mode.
            prefetch_count: apply ``basic_qos(prefetch_count)`` right away.
        """
        return ChannelOpener(self, publisher_confirms, prefetch_count)

    async def aclose(self) -> None:
        """Close the connection; idempotent, shielded and time-bounded. Every channel closes
        (unacknowledged messages go back to their queues)."""
        ...


class ChannelOpener(Generic[ChannelT_co]):
    """``conn.channel()``: awaitable, and an async context manager that closes the channel."""

    def __init__(
        self, connection: Connection[ChannelT_co], publisher_confirms: bool, prefetch: int | None
    ) -> None:
        self._connection = connection
        self._confirms = publisher_confirms
        self._prefetch = prefetch
        self._channel: ChannelT_co | None = None

    async def _open(self) -> ChannelT_co:
        return await self._connection._open_channel(self._confirms, self._prefetch)

    def __await__(self) -> Generator[Any, None, ChannelT_co]:
        return self._open().__await__()

    async def __aenter__(self) -> ChannelT_co:
        self._channel = await self._open()
        return self._channel

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._channel is not None:
            await self._channel.aclose()


# Last: kiwi_anyio.protocol's package imports its client, which subclasses the classes above
# (so this module can be imported first, or by the client while the package is loading).
from .protocol import _methods as methods  # noqa: E402

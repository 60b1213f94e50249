"""Broadcasts: one message to every subscriber whose filters match.

One exclusive queue per communicator (``broadcast-<id>``, kiwiPy's message TTL) bound to the
message exchange with kiwiPy's routing key; it exists while there is a subscriber. Every
subscriber gets each broadcast (a :class:`~kiwi_anyio.BroadcastFilter` may drop it); one that
raises is logged and the others still get it.

It uses the link, the consumers and the publisher; it must not import the Communicator.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio

from .. import _wire as wire
from .._logctx import LogContext
from ..channel import Channel, Connection, Message, Properties
from ..codecs import Codec
from ..exceptions import AMQPError, DuplicateSubscriberIdentifier, KiwiError, UndecodableMessage
from ..filters import BroadcastFilter
from ..hooks import calling_subscriber
from ..robust.consumer import ConsumerHandle, Consumers
from ..robust.link import Link, LinkState
from ..robust.publisher import Publisher
from .serving import Serving, Subscriber

__all__ = ["Broadcasts"]

logger = logging.getLogger("kiwi_anyio.communicator")

WHAT: Final = "broadcasts"  # the consumer, in the hooks and the logs


class Broadcasts:
    """The broadcast pattern of one communicator; see the module docstring."""

    def __init__(
        self,
        link: Link,
        consumers: Consumers,
        publisher: Publisher,
        serving: Serving,
        codec: Codec,
        *,
        exchange: str,
    ) -> None:
        self._link = link
        self._consumers = consumers
        self._publisher = publisher
        self._serving = serving
        self._codec = codec
        self.exchange = exchange
        self.subscribers: dict[str, Subscriber] = {}
        self.queue: str | None = None
        self._consumer: ConsumerHandle | None = None
        self._lock_: anyio.Lock | None = None  # made on first use, in the loop

    @property
    def _lock(self) -> anyio.Lock:
        """Made on first use, inside the communicator's loop (see ``Link._up``)."""
        if self._lock_ is None:
            self._lock_ = anyio.Lock()
        return self._lock_

    async def send(
        self,
        body: Any,
        sender: Any = None,
        subject: Any = None,
        correlation_id: Any = None,
    ) -> bool:
        """See :meth:`kiwi_anyio.Communicator.broadcast_send`."""
        self._link.check_open()
        await self._link.ensure_exchange(self.exchange)
        await self._publisher.publish(
            await self._serving.encode(
                wire.encode_broadcast(body, sender, subject, correlation_id)
            ),
            exchange=self.exchange,
            routing_key=wire.BROADCAST_ROUTING_KEY,
            properties=Properties(content_type=self._codec.content_type, delivery_mode=1),
            mandatory=False,
            what="broadcast",
        )
        return True

    async def add(self, subscriber: Subscriber, identifier: str | None = None) -> str:
        """See :meth:`kiwi_anyio.Communicator.add_broadcast_subscriber`."""
        self._link.check_open()
        identifier = identifier or uuid.uuid4().hex
        if identifier in self.subscribers:
            raise DuplicateSubscriberIdentifier(
                f"broadcast subscriber {identifier!r} already exists"
            )
        self.subscribers[identifier] = subscriber
        try:
            async with self._lock:
                if self._consumer is None:
                    queue = self.queue = f"broadcast-{uuid.uuid4().hex}"
                    log = LogContext(WHAT, queue)

                    async def on_broadcast(message: Message) -> None:
                        await self._on_broadcast(message, log)

                    self._consumer = await self._consumers.start(
                        self._open_channel,
                        queue,
                        on_broadcast,
                        what=WHAT,
                        sequential=True,
                    )
        except BaseException:
            self.subscribers.pop(identifier, None)
            raise
        return identifier

    async def _open_channel(self, connection: Connection) -> Channel:
        queue = self.queue
        assert queue is not None
        await self._link.ensure_exchange(self.exchange)
        # no prefetch: with one, RabbitMQ hands a broadcast consumer its messages in small
        # batches, which costs a quarter more client CPU per broadcast (benchmarks/)
        channel = await connection.channel()
        await channel.queue_declare(
            queue, exclusive=True, arguments={"x-message-ttl": wire.BROADCAST_MESSAGE_TTL}
        )
        await channel.queue_bind(queue, self.exchange, routing_key=wire.BROADCAST_ROUTING_KEY)
        return channel

    async def remove(self, identifier: str) -> None:
        """See :meth:`kiwi_anyio.Communicator.remove_broadcast_subscriber`."""
        self._link.check_open()
        try:
            del self.subscribers[identifier]
        except KeyError:
            raise ValueError(f"unknown broadcast subscriber {identifier!r}") from None
        async with self._lock:
            if not self.subscribers and self._consumer is not None:
                consumer, self._consumer = self._consumer, None
                queue, self.queue = self.queue, None
                await consumer.stop()
                if queue is not None:
                    with anyio.CancelScope(shield=True):
                        try:
                            await self._link.declare(
                                lambda ch: ch.queue_delete(queue), "broadcast queue"
                            )
                        except AMQPError as exc:
                            logger.warning("could not delete broadcast queue %r: %s", queue, exc)
                        else:
                            if self._link.exchange_auto_delete:
                                # testing mode: the exchange is auto-delete, and the broker
                                # deleted it with this, perhaps its last, binding; declare it
                                # again when a subscriber comes back (else: 404 no exchange)
                                self._link.forget_exchange(self.exchange)

    @asynccontextmanager
    async def scoped(
        self, subscriber: Subscriber, identifier: str | None = None
    ) -> AsyncIterator[str]:
        """See :meth:`kiwi_anyio.Communicator.broadcast_subscriber`."""
        ident = await self.add(subscriber, identifier)
        try:
            yield ident
        finally:
            with anyio.CancelScope(shield=True):
                if ident in self.subscribers and self._link.state is LinkState.OPEN:
                    await self.remove(ident)

    async def _on_broadcast(self, message: Message, log: LogContext) -> None:
        serving = self._serving
        try:
            try:
                body, sender, subject, correlation_id = wire.decode_broadcast(
                    await serving.decode(message)
                )
            except UndecodableMessage as exc:
                await serving.reject_undecodable(message, exc, self.exchange, log=log)
                return
            args = (serving.callback_comm, body, sender, subject, correlation_id)

            async def deliver(identifier: str, subscriber: Subscriber) -> None:
                try:
                    if isinstance(subscriber, BroadcastFilter):
                        if subscriber.is_filtered(sender, subject):
                            return
                        subscriber = subscriber.subscriber
                    with calling_subscriber(message, identifier):  # a span each, say
                        await serving.call(subscriber, *args)
                except Exception as exc:
                    serving.subscriber_failed(
                        message,
                        exc,
                        log=log,
                        kind="broadcast",
                        subscriber=subscriber,
                        identifier=identifier,
                        replied=False,
                        correlation_id=None if correlation_id is None else str(correlation_id),
                    )

            async with anyio.create_task_group() as tg:
                for identifier, subscriber in list(self.subscribers.items()):
                    tg.start_soon(deliver, identifier, subscriber)
            message.ack()
        except KiwiError as exc:  # the link dropped, or the communicator closes
            logger.warning(
                "broadcast %s not acknowledged: %s",
                message.delivery_tag,
                exc,
                extra=log.extra(message),
            )
        finally:
            if not message.settled and message.channel.is_open:
                message.nack(requeue=True)

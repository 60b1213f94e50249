"""The requester's side of tasks and RPC: request ids, the reply queue, pending futures.

:class:`Requests` sends a request (:meth:`Requests.send`) with a correlation id of
:class:`RequestIds` and, when a reply is wanted, a future in :class:`~kiwi_anyio._pending.
PendingReplies`; it owns the reply queue (durable, ``x-expires``: replies wait in it while the
link is down) and its consumer, which resolves those futures. A reply queue found gone after a
reconnection, or a broker shutdown, puts the pending requests at risk (see
:meth:`~kiwi_anyio._pending.PendingReplies.at_risk`).

It must not know how a request is served (:mod:`.serving`) nor any pattern's routing.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from .. import _wire as wire
from .. import typed
from .._logctx import LogContext
from .._pending import PendingReplies
from ..channel import Channel, Connection, Message, Properties
from ..exceptions import ChannelClosed, KiwiError, UndecodableMessage
from ..futures import Future
from ..robust.consumer import ConsumerHandle, Consumers
from ..robust.link import Link
from ..robust.publisher import Publisher

__all__ = ["RequestIds", "Requests", "dashed"]

logger = logging.getLogger("kiwi_anyio.communicator")


class RequestIds:
    """Unique request ids shaped like UUID 4s, without a system call each.

    80 random bits (with UUID 4's version and variant) chosen per communicator, then a
    32-bit counter and a 16-bit check of the counter: ids never repeat within a communicator
    (until 2**32 requests) and collide across communicators only as two random 74-bit
    numbers would. Two ids of one communicator differ in at least two hex digits (the
    check of two counters that differ in one digit differs too), so a correlation id with
    one digit changed in transit never matches another request in flight.
    ``uuid.uuid4()`` reads ``os.urandom`` for every id (about 3 % of the client's CPU time
    in a stream of task round trips).
    """

    __slots__ = ("__weakref__", "_count", "_prefix")

    def __init__(self) -> None:
        self._count = 0
        self._prefix = ""
        self.reseed()
        _ALL_REQUEST_IDS.add(self)

    def reseed(self) -> None:
        """A new random prefix (a forked child must not repeat its parent's ids)."""
        self._prefix = uuid.uuid4().hex[:20]

    def next_hex(self) -> str:
        """The next id as 32 hex digits."""
        self._count = count = (self._count + 1) & 0xFFFFFFFF
        return f"{self._prefix}{count:08x}{check16(count):04x}"


def check16(count: int) -> int:
    """A 16-bit check of a 32-bit counter; its first hex digit changes whenever one hex digit
    of ``count`` does.

    That digit is the sum of the counter's hex digits modulo 16 (changing one digit by
    1..15 changes the sum by as much); the other three mix the counter, for a wider spread.
    """
    nibbles = (count & 0x0F0F0F0F) + ((count >> 4) & 0x0F0F0F0F)
    digit_sum = ((nibbles * 0x01010101) >> 24) & 0xF
    mixed = (count * 0x9E3779B1) >> 20
    return (digit_sum << 12) | (mixed & 0xFFF)


_ALL_REQUEST_IDS: weakref.WeakSet[RequestIds] = weakref.WeakSet()


def reseed_request_ids() -> None:
    """Give every :class:`RequestIds` of this process a new prefix (after a fork)."""
    for ids in list(_ALL_REQUEST_IDS):
        ids.reseed()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=reseed_request_ids)


def dashed(hex_id: str) -> str:
    """``str(uuid.UUID(hex_id))``: the 8-4-4-4-12 form."""
    return f"{hex_id[:8]}-{hex_id[8:12]}-{hex_id[12:16]}-{hex_id[16:20]}-{hex_id[20:]}"


def expiration(timeout: float) -> str:
    """The ``expiration`` property (ms, at least 1) of a request with this timeout."""
    return str(max(1, math.ceil(timeout * 1000)))


class Requests:
    """Sending requests and receiving their replies; see the module docstring."""

    def __init__(
        self,
        link: Link,
        consumers: Consumers,
        publisher: Publisher,
        *,
        reply_queue: str,
        content_type: str,
        decode: Callable[[Message], Awaitable[Any]],
        lost_reply_grace: float,
    ) -> None:
        self._link = link
        self._consumers = consumers
        self._publisher = publisher
        self.reply_queue = reply_queue
        self._log = LogContext("reply queue", reply_queue)  # its consumer, in the logs
        self._content_type = content_type
        self._decode = decode
        self.lost_reply_grace = lost_reply_grace
        self.pending = PendingReplies()
        self.ids = RequestIds()
        self.consumer: ConsumerHandle | None = None
        self._exchanges: set[str] = set()  # exchanges the reply queue must be bound to
        self._bound: set[str] = set()  # ... and is bound to on this connection
        self._declared = False
        self._lock_: anyio.Lock | None = None  # made on first use, in the loop
        link.on_new_connection(self._bound.clear)
        link.on_exchange_forgotten(self._bound.discard)
        # the broker shut down (a restart?): the RPC calls waiting in its queues were
        # transient, and are gone; tasks and their replies are persistent and survive
        link.on_broker_shutdown(
            lambda: self.pending.at_risk(
                self.lost_reply_grace,
                "the broker shut down the connection (a restart?)",
                durable=False,
            )
        )

    @property
    def _lock(self) -> anyio.Lock:
        """Made on first use, inside the communicator's loop (see ``Link._up``)."""
        if self._lock_ is None:
            self._lock_ = anyio.Lock()
        return self._lock_

    async def send(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        persistent: bool,
        no_reply: bool,
        what: str,
        timeout: float | None,
        prepare: Callable[[], Awaitable[None]] | None = None,
    ) -> Future[Any] | None:
        """Publish a request; returns the future of its reply (None with ``no_reply``).

        Raises what :meth:`~kiwi_anyio.robust.publisher.Publisher.publish` raises.
        Cancellation: the request may or may not have been sent; its future is discarded.
        """
        message_id = self.ids.next_hex()
        correlation_id = dashed(message_id)  # kiwiPy's form of a UUID, with dashes
        future: Future[Any] | None = None
        if prepare is not None:
            await prepare()  # fail early (e.g. a forbidden exchange) before any reply setup
        if not no_reply:
            await self.ensure_reply_queue(exchange)
            future = self.pending.add(correlation_id, what, timeout, durable=persistent)
        properties = Properties(
            content_type=self._content_type,
            delivery_mode=2 if persistent else 1,
            correlation_id=correlation_id,
            reply_to=self.reply_queue,
            message_id=message_id,
            # a call nobody took in time is dropped by the broker, not handled too late
            expiration=None if persistent or timeout is None else expiration(timeout),
        )
        try:
            await self._publisher.publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=True,
                what=what,
                prepare=prepare,
            )
        except BaseException:
            if future is not None:
                self.pending.discard(correlation_id)
            raise
        return future

    async def ensure_reply_queue(self, exchange: str) -> None:
        """Make sure replies sent through ``exchange`` reach us.

        The reply queue is durable (RabbitMQ 4.3 refuses a transient queue that is not
        exclusive) and not exclusive, so it survives a dropped connection and replies
        published meanwhile wait in it; ``x-expires`` removes it once we are gone. Our
        workers reply through the default exchange; kiwiPy's need its name bound on the
        exchange they reply through.
        """
        if exchange in self._bound:
            return
        async with self._lock:
            if exchange in self._bound:
                return
            self._exchanges.add(exchange)
            try:
                if self.consumer is None:
                    self.consumer = await self._consumers.start(
                        self._open_channel,
                        self.reply_queue,
                        self._on_reply,
                        what=self._log.what,
                        sequential=True,
                    )
                else:
                    await self._link.ensure_exchange(exchange)
                    await self._link.declare(
                        lambda ch: ch.queue_bind(
                            self.reply_queue, exchange, routing_key=self.reply_queue
                        ),
                        "reply queue binding",
                    )
                    self._bound.add(exchange)
            except BaseException:
                # do not keep (and retry on every later send) a binding that failed
                self._exchanges.discard(exchange)
                raise

    async def _open_channel(self, connection: Connection) -> Channel:
        if self._declared:
            probe = await connection.channel()
            try:
                await probe.queue_declare(self.reply_queue, passive=True)
            except ChannelClosed as exc:
                if exc.reply_code == 404:
                    count = self.pending.at_risk(
                        self.lost_reply_grace,
                        "the reply queue was lost while disconnected (it expired, or was deleted)",
                        durable=True,
                    )
                    logger.error(
                        "%s: the reply queue was lost; %d requests may never be answered",
                        self._link,
                        count,
                    )
            finally:
                await probe.aclose()
        channel = await connection.channel()
        await channel.queue_declare(
            self.reply_queue, durable=True, arguments={"x-expires": wire.REPLY_QUEUE_EXPIRES}
        )
        self._declared = True
        for exchange in list(self._exchanges):
            await self._link.ensure_exchange(exchange)
            await channel.queue_bind(self.reply_queue, exchange, routing_key=self.reply_queue)
            self._bound.add(exchange)
        return channel

    async def _on_reply(self, message: Message) -> None:
        # Replies are acknowledged (not consumed with no_ack): one delivered into a link that
        # is dropping goes back to the queue and reaches us after recovery.
        try:
            await self._resolve(message)
        finally:
            if not message.settled and message.channel.is_open:
                try:
                    message.ack()
                except KiwiError:  # the link dropped: the broker redelivers it
                    pass

    async def _resolve(self, message: Message) -> None:
        correlation_id = message.properties.correlation_id or ""
        if correlation_id not in self.pending:
            logger.debug(
                "dropped a reply for unknown correlation id %r",
                correlation_id,
                extra=self._log.extra(message),
            )
            return
        try:
            parsed: tuple[Any, Any] | UndecodableMessage = wire.parse_reply(
                await self._decode(message)
            )
        except UndecodableMessage as exc:
            parsed = exc
        # popped only now: a future stays pending (and is failed on close) while it decodes
        future = self.pending.pop(correlation_id)
        if future is None or future.done():
            return
        if isinstance(parsed, UndecodableMessage):
            future.set_exception(parsed)
            return
        kind, value = parsed
        if kind is wire.PENDING:
            future.set_result(self.pending.add(correlation_id, "the delegated request", None))
        elif kind is wire.CANCELLED:
            future.cancel()
        elif kind == wire.EXCEPTION_KEY:
            future.set_exception(typed.rebuild_remote_error(value, message.properties.headers))
        else:
            future.set_result(value)

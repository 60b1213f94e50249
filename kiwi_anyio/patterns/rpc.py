"""RPC: calls to a subscriber by identifier, remote exceptions back as exceptions.

Each subscriber has a queue ``<message exchange>.rpc.<identifier>`` bound with kiwiPy's
routing key ``[rpc].<identifier>``. The queue is durable, not exclusive, so it outlives a
dropped link: calls wait in it while the server reconnects, and calls it was handling are
delivered again. It expires ``queue_expires`` ms after its consumer is gone, and is deleted
when the subscriber is removed or the communicator closes (:meth:`Rpc.delete_queues`). Its
consumer is exclusive, which keeps an identifier to one process.

It uses the link, the consumers, :mod:`.requests` and :mod:`.serving`; it must not import the
Communicator.
"""

from __future__ import annotations

import concurrent.futures
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from .. import _wire as wire
from .. import typed
from .._logctx import LogContext
from .._pending import DEFAULT, Timeout
from ..channel import Channel, Connection, Message
from ..codecs import Codec
from ..exceptions import (
    AMQPError,
    ChannelClosed,
    DeliveryFailed,
    DuplicateSubscriberIdentifier,
    KiwiError,
    MessageReturned,
    UndecodableMessage,
    UnroutableError,
)
from ..futures import Future
from ..hooks import RPC_CALL, RPC_SERVE
from ..robust.consumer import ConsumerHandle, Consumers
from ..robust.link import Link, LinkState
from ..robust.settling import SETTLE_TIMEOUT
from .requests import Requests
from .serving import Serving, Subscriber

__all__ = ["Rpc"]

logger = logging.getLogger("kiwi_anyio.communicator")


def _forget_auto_delete_exchange(link: Link, exchange: str) -> None:
    """A queue bound to ``exchange`` was deleted: in testing mode the exchange is
    auto-delete, and the broker deleted it with its last binding; declare it again on next
    use (else the next binding fails with ``404 NOT_FOUND - no exchange``)."""
    if link.exchange_auto_delete:
        link.forget_exchange(exchange)


class Rpc:
    """The RPC pattern of one communicator; see the module docstring."""

    def __init__(
        self,
        link: Link,
        consumers: Consumers,
        requests: Requests,
        serving: Serving,
        codec: Codec,
        *,
        exchange: str,
        prefetch_count: int,
        queue_expires: int,
        timeout: Callable[[Timeout], float | None],
    ) -> None:
        self._link = link
        self._consumers = consumers
        self._requests = requests
        self._serving = serving
        self._codec = codec
        self.exchange = exchange
        self.prefetch_count = prefetch_count
        self.queue_expires = queue_expires
        self._timeout = timeout
        self.subscribers: dict[str, tuple[str, ConsumerHandle]] = {}
        # queues of removed subscribers still draining: (the drain's scope, set when deleted)
        self._removing: dict[str, tuple[anyio.CancelScope, anyio.Event]] = {}

    async def send(self, recipient_id: Any, msg: Any, *, timeout: Timeout = DEFAULT) -> Future[Any]:
        """See :meth:`kiwi_anyio.Communicator.rpc_send`.

        Any identifier is formatted into the routing key, as kiwiPy does (plumpy addresses
        a process by its ``uuid.UUID``): ``rpc_send(uuid, ...)`` reaches the subscriber
        added as ``uuid`` or ``str(uuid)``.
        """
        self._link.check_open()
        recipient_id = str(recipient_id)
        await self._link.ensure_exchange(self.exchange)
        try:
            future = await self._requests.send(
                await self._serving.encode(msg),
                exchange=self.exchange,
                routing_key=wire.rpc_routing_key(recipient_id),
                persistent=False,
                no_reply=False,
                what=f"{RPC_CALL}{recipient_id!r}",
                timeout=self._timeout(timeout),
            )
        except MessageReturned as exc:
            raise UnroutableError(f"no RPC subscriber {recipient_id!r}: {exc}") from None
        assert future is not None
        return future

    async def add(self, subscriber: Subscriber, identifier: Any = None) -> str:
        """See :meth:`kiwi_anyio.Communicator.add_rpc_subscriber`; a non-string identifier
        (a ``uuid.UUID``, an int) is used as ``str(identifier)``, as kiwiPy does."""
        self._link.check_open()
        ident: str = uuid.uuid4().hex if identifier is None else str(identifier)
        identifier = ident
        if not identifier:
            raise ValueError("an RPC identifier cannot be empty")
        if "*" in identifier or "#" in identifier:
            raise ValueError(f"an RPC identifier cannot contain '*' or '#': {identifier!r}")
        if identifier in self.subscribers:
            raise DuplicateSubscriberIdentifier(f"RPC subscriber {identifier!r} already exists")
        queue = f"{self.exchange}.rpc.{identifier}"
        removing = self._removing.get(queue)
        if removing is not None:  # removed a moment ago and draining: cut it short
            removing[0].cancel()
            await removing[1].wait()
        placeholder = ConsumerHandle(self._consumers._bounds)
        self.subscribers[identifier] = (queue, placeholder)

        async def open_channel(connection: Connection) -> Channel:
            return await self._open_channel(connection, queue, identifier)

        # its consumer, in the hooks and the logs
        log = LogContext(f"{RPC_SERVE}{identifier!r}", queue, identifier)

        async def on_rpc(message: Message) -> None:
            await self._on_rpc(subscriber, message, log)

        try:
            handle = await self._consumers.start(
                open_channel,
                queue,
                on_rpc,
                what=log.what,
                consumer_tag=identifier,
                # the one consumer of the queue: another process's is refused (403)
                exclusive=True,
            )
        except ChannelClosed as exc:
            self.subscribers.pop(identifier, None)
            if exc.reply_code == 403:
                raise DuplicateSubscriberIdentifier(
                    f"RPC subscriber {identifier!r} already exists in another process"
                ) from None
            raise
        except BaseException:
            self.subscribers.pop(identifier, None)
            raise
        self.subscribers[identifier] = (queue, handle)
        return ident

    async def _open_channel(self, connection: Connection, queue: str, identifier: str) -> Channel:
        """Declare the subscriber's queue and binding on a new channel (every time: the
        queue may have been deleted)."""
        await self._link.ensure_exchange(self.exchange)
        channel = await connection.channel(prefetch_count=self.prefetch_count or None)
        try:
            await channel.queue_declare(
                queue,
                durable=True,
                arguments={"x-message-ttl": wire.RPC_MESSAGE_TTL, "x-expires": self.queue_expires},
            )
            await channel.queue_bind(
                queue, self.exchange, routing_key=wire.rpc_routing_key(identifier)
            )
        except ChannelClosed as exc:
            if exc.reply_code == 405:
                raise DuplicateSubscriberIdentifier(
                    f"RPC subscriber {identifier!r} already exists in another process"
                ) from None
            raise DeliveryFailed(
                f"cannot declare the queue of RPC subscriber {identifier!r}: {exc}"
            ) from exc
        return channel

    async def remove(
        self, identifier: Any, *, drain_timeout: float = 0.0, background: bool = False
    ) -> None:
        """See :meth:`kiwi_anyio.Communicator.remove_rpc_subscriber` (``str(identifier)``,
        as :meth:`add`).

        Args:
            identifier: the subscriber's identifier.
            drain_timeout: let the calls this subscriber is handling finish (and reply)
                for up to this many seconds before they are cancelled; new calls are
                unroutable at once (the queue is unbound first). kiwiPy lets them finish:
                a plumpy process removes its own subscriber while it answers a "kill".
            background: return once the subscriber is removed and unbound; the draining,
                the consumer's stop and the queue's deletion go on in the communicator's
                task group (a subscriber's own call may wait for its removal to return).
        """
        self._link.check_open()
        identifier = str(identifier)
        try:
            queue, handle = self.subscribers.pop(identifier)
        except KeyError:
            raise ValueError(f"unknown RPC subscriber {identifier!r}") from None
        if drain_timeout > 0:
            with anyio.CancelScope(shield=True):
                try:
                    await self._link.declare(
                        lambda ch: ch.queue_unbind(
                            queue, self.exchange, wire.rpc_routing_key(identifier)
                        ),
                        f"RPC queue {queue!r}",
                    )
                except (DeliveryFailed, AMQPError) as exc:
                    logger.warning("could not unbind RPC queue %r: %s", queue, exc)
        self._removing[queue] = (anyio.CancelScope(), anyio.Event())
        if background and self._link.tg is not None:
            self._link.tg.start_soon(self._stop_and_delete, queue, handle, drain_timeout)
        else:
            await self._stop_and_delete(queue, handle, drain_timeout)

    async def _stop_and_delete(
        self, queue: str, handle: ConsumerHandle, drain_timeout: float
    ) -> None:
        scope, deleted = self._removing[queue]
        try:
            if drain_timeout > 0:
                handle.draining = True
                if handle.receiving is not None:
                    handle.receiving.cancel()
                with scope:
                    scope.deadline = anyio.current_time() + drain_timeout
                    await handle.done.wait()
            await handle.stop()
            with anyio.CancelScope(shield=True):
                try:
                    await self._link.declare(
                        lambda ch: ch.queue_delete(queue), f"RPC queue {queue!r}"
                    )
                except (DeliveryFailed, AMQPError) as exc:
                    logger.warning("could not delete RPC queue %r: %s", queue, exc)
                else:
                    _forget_auto_delete_exchange(self._link, self.exchange)
        finally:
            if self._removing.get(queue, (None,))[0] is scope:
                del self._removing[queue]
            deleted.set()

    @asynccontextmanager
    async def scoped(
        self, subscriber: Subscriber, identifier: str | None = None
    ) -> AsyncIterator[str]:
        """See :meth:`kiwi_anyio.Communicator.rpc_subscriber`."""
        ident = await self.add(subscriber, identifier)
        try:
            yield ident
        finally:
            with anyio.CancelScope(shield=True):
                if ident in self.subscribers and self._link.state is LinkState.OPEN:
                    await self.remove(ident)

    async def delete_queues(self) -> None:
        """Delete the queues of the RPC subscribers (bounded): they are durable, and a call
        to a closed communicator must be unroutable, not wait in a queue nobody consumes.
        Cancellation: call it shielded."""
        queues = [queue for queue, _handle in self.subscribers.values()]
        self.subscribers.clear()
        link = self._link
        if not queues or link.connection is None or not link.connection.is_open:
            return
        with anyio.move_on_after(SETTLE_TIMEOUT):
            try:
                channel = await link.declarer_channel(allow_closing=True)
                for queue in queues:
                    await channel.queue_delete(queue)
            except (AMQPError, KiwiError) as exc:
                logger.warning("%s: could not delete the RPC queues: %s", link, exc)

    async def _on_rpc(self, subscriber: Subscriber, message: Message, log: LogContext) -> None:
        serving = self._serving
        handed_off = False  # to a confirm callback, which acks
        try:
            try:
                msg = await serving.decode(message)
            except UndecodableMessage as exc:
                await serving.reject_undecodable(message, exc, self.exchange, log=log)
                return
            try:
                result = await serving.call_and_follow(
                    subscriber, message, msg, self.exchange, True, log=log
                )
            except concurrent.futures.CancelledError as exc:
                reply = wire.cancelled_reply(str(exc) or None)
            except Exception as exc:
                serving.subscriber_failed(
                    message,
                    exc,
                    log=log,
                    kind="RPC",
                    subscriber=subscriber,
                    identifier=None,  # the context's
                    replied=True,
                )
                reply = typed.attach_error_headers(wire.exception_reply(exc), exc)
            else:
                reply = wire.result_reply(result)
            handed_off = await serving.settle(message, reply, self.exchange, log=log)
        except KiwiError as exc:  # the link dropped, or the communicator closes
            logger.warning(
                "RPC %s not answered: %s",
                message.delivery_tag,
                exc,
                extra=log.extra(message),
            )
        finally:
            if not handed_off and not message.settled and message.channel.is_open:
                message.nack(requeue=True)

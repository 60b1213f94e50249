"""The responder's side of tasks and RPC: calling a subscriber, replying, then acknowledging.

:class:`Serving` is what the task and RPC patterns share once a request was delivered:
decode it, call the subscriber (``async def`` in the loop, plain functions in a worker
thread), follow the "pending" futures a subscriber may return, and settle: send the final
reply, then ack. The common case queues the reply and acks from the publish's confirm
callback (:meth:`Serving.settle_nowait`: no task switch, no cancel scope); otherwise the
settle is shielded, so a request whose handling finished is answered and acked even while
its consumer stops or the communicator closes, within the bounds of
:mod:`kiwi_anyio.robust.settling`. A request that cannot be decoded is rejected and its
sender told.

Logs: every record about a delivered message carries its consumer's context
(:class:`kiwi_anyio._logctx.LogContext`: the consumer, queue, identifier, routing key,
correlation id, message id and delivery tag) as ``extra`` fields.
:meth:`Serving.subscriber_failed` is the one place a subscriber's exception is logged (once,
with its traceback), at ``subscriber_error_level``; by default ``INFO`` when the sender gets
it back as a ``RemoteException``, ``ERROR`` when nobody receives it (a task sent with
``no_reply``, a broadcast).

Replies go through the default exchange, straight to the requester's queue by its name: a
reply needs no binding, so one sent while the requester is still re-binding its reply queue
after a broker restart (the task and message exchanges are transient) is not dropped. Where
the user may not publish to the default exchange, replies go through the request's exchange,
as kiwiPy's do.

It must not know a pattern's routing or subscriber lists.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
from collections.abc import Callable
from typing import Any, Final

import anyio
import anyio.to_thread

from .. import _wire as wire
from .. import typed
from .._logctx import LogContext
from ..channel import Message, Properties
from ..codecs import Codec, decoder_for
from ..exceptions import (
    AMQPError,
    ChannelClosed,
    DeliveryFailed,
    KiwiError,
    ProtocolError,
    UndecodableMessage,
)
from ..futures import Future
from ..hooks import subscriber_failed
from ..robust.link import Link, LinkState
from ..robust.publisher import Publisher
from ..robust.settling import SettleBounds
from . import bodies

__all__ = ["REPLY_EXCHANGE", "Serving", "Subscriber", "is_future_like", "resolve"]

logger = logging.getLogger("kiwi_anyio.communicator")

REPLY_EXCHANGE: Final = ""

Subscriber = Callable[..., Any]


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )


_LOOP_FROM_THREAD: Final = (
    "must be called from async context",  # trio (anyio.Event.set() and the like)
    "no running event loop",  # asyncio
    "unknown async library",  # sniffio
    "not called from an event loop thread",
    "not currently running on any asynchronous event loop",  # anyio
)


def _loop_call_from_thread(exc: RuntimeError) -> bool:
    """Whether ``exc`` says that an event-loop function was called from a worker thread."""
    text = str(exc).lower()
    return any(marker in text for marker in _LOOP_FROM_THREAD)


async def resolve(value: Any) -> Any:
    """Await one level of a future-like value (ours, concurrent.futures, or an awaitable)."""
    if isinstance(value, Future):
        return await value
    if isinstance(value, concurrent.futures.Future):
        return await anyio.to_thread.run_sync(value.result, abandon_on_cancel=True)
    return await value


def is_future_like(value: Any) -> bool:
    return isinstance(value, Future | concurrent.futures.Future) or inspect.isawaitable(value)


class Serving:
    """Serving delivered requests; see the module docstring.

    Attributes:
        callback_comm: what subscribers get as their first argument (the communicator, or
            its blocking facade in blocking mode).
        subscriber_error_level: the level of the log record of a subscriber's exception
            (see :meth:`subscriber_failed`); ``None``: ``INFO`` when its sender gets it
            back, ``ERROR`` when nobody does.
    """

    def __init__(
        self,
        link: Link,
        publisher: Publisher,
        bounds: SettleBounds,
        codec: Codec,
        *,
        subscriber_error_level: int | None = None,
    ) -> None:
        self._link = link
        self._publisher = publisher
        self._bounds = bounds
        self._codec = codec
        self.callback_comm: Any = None
        self.subscriber_error_level: int | None = subscriber_error_level
        self._default_exchange_refused = False  # see reply_exchange

    # ------------------------------------------------------------ decoding and calling

    async def decode(self, message: Message) -> Any:
        """The body, decoded with the codec its content type names (see ``decoder_for``);
        a large body in a worker thread (:mod:`.bodies`)."""
        codec = decoder_for(message.properties.content_type, self._codec)
        return await bodies.decode(codec.decode, message.body)

    async def encode(self, value: Any) -> bytes:
        """``value`` encoded with the codec; a large one in a worker thread."""
        return await bodies.encode(self._codec.encode, value)

    async def call(self, subscriber: Subscriber, *args: Any) -> Any:
        """Call a subscriber: ``async def`` in the loop, plain functions in a worker thread.

        Cancellation: an ``async def`` subscriber is cancelled; a plain function goes on in
        its thread (threads cannot be cancelled) and its result is dropped.
        """
        if _is_async(subscriber):
            return await subscriber(*args)
        try:
            result = await anyio.to_thread.run_sync(subscriber, *args, abandon_on_cancel=True)
        except RuntimeError as exc:
            if not _loop_call_from_thread(exc):
                raise
            raise RuntimeError(
                f"subscriber {subscriber!r} is a plain function, so it runs in a worker "
                f"thread, where event-loop calls fail ({exc}): make it `async def`, or call "
                "into the loop with anyio.from_thread.run_sync(...)"
            ) from exc
        if inspect.iscoroutine(result):  # e.g. a plain wrapper around an async function
            result = await result
        return result

    async def call_and_follow(
        self,
        subscriber: Subscriber,
        message: Message,
        msg: Any,
        exchange: str,
        reply: bool,
        *,
        log: LogContext,
    ) -> Any:
        """Call ``subscriber(comm, msg)`` and follow the futures it returns, telling the
        sender "pending" for each (if a reply is wanted); returns the final result.
        ``log``: the consumer's context (for the logs)."""
        result = await self.call(subscriber, self.callback_comm, msg)
        while is_future_like(result):
            if reply:
                await self.send_reply(message, wire.pending_reply(), exchange, log=log)
            result = await resolve(result)
        return result

    def subscriber_failed(
        self,
        message: Message,
        exc: BaseException,
        *,
        log: LogContext,
        kind: str,
        subscriber: Subscriber,
        identifier: str | None,
        replied: bool,
        correlation_id: str | None = None,
    ) -> None:
        """``subscriber`` (a ``kind`` subscriber: ``task``, ``RPC``, ``broadcast``; its
        ``identifier``) raised ``exc`` handling ``message``: tell the seam
        (:func:`kiwi_anyio.hooks.subscriber_failed`) and log it, once, with its traceback
        and the message's context (``correlation_id``: a broadcast's, from its body).

        The level is :attr:`subscriber_error_level` when set; when it is ``None``, ``INFO``
        if ``replied`` (the sender gets the exception back as a ``RemoteException``) and
        ``ERROR`` if not (nobody receives it: a task sent with ``no_reply``, a broadcast)."""
        subscriber_failed(message, exc)
        level = self.subscriber_error_level
        if level is None:
            level = logging.INFO if replied else logging.ERROR
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "%s: %s subscriber %r raised %r (%s)",
                log.what,
                kind,
                subscriber,
                exc,
                "the sender gets it as a RemoteException" if replied else "nobody receives it",
                exc_info=exc,
                extra=log.extra(message, identifier=identifier, correlation_id=correlation_id),
            )

    async def reject_undecodable(
        self,
        message: Message,
        exc: UndecodableMessage,
        exchange: str,
        *,
        log: LogContext,
        with_host: bool = False,
    ) -> None:
        """Reject a message that cannot be decoded (never requeued) and tell its sender;
        logged once, at ``WARNING``, with the message's context ``log``.

        Cancellation: while the sender is being told, it may or may not have been, and the
        message is left unsettled (for the caller to requeue)."""
        extra = log.extra(message)
        logger.warning(
            "%s: rejected undecodable message %s from %r (routing key %r): %s",
            log.what,
            message.delivery_tag,
            message.exchange,
            message.routing_key,
            exc,
            extra=extra,
        )
        if message.properties.reply_to and message.properties.correlation_id:
            try:
                await self.send_reply(
                    message, wire.exception_reply(exc, with_host=with_host), exchange, log=log
                )
            except AMQPError as error:
                logger.warning("%s: could not tell the sender: %s", log.what, error, extra=extra)
        if not message.settled and message.channel.is_open:
            message.reject(requeue=False)

    # ------------------------------------------------------------ replies

    def reply_exchange(self, exchange: str) -> str:
        """Where a reply to a request that came through ``exchange`` is published."""
        return exchange if self._default_exchange_refused else REPLY_EXCHANGE

    def encode_reply(self, request: Message, reply: dict[str, Any]) -> tuple[bytes, Properties]:
        """The body and properties of a reply (an exception reply if it cannot be encoded)."""
        reply, headers = typed.split_reply_headers(reply)
        try:
            body = self._codec.encode(reply)
        except (TypeError, ValueError) as exc:
            body = self._codec.encode(wire.exception_reply(exc))
        properties = Properties(
            headers=headers,
            content_type=self._codec.content_type,
            correlation_id=request.properties.correlation_id,
            # a task's reply is as durable as the task: it waits out a broker restart in the
            # (durable) reply queue
            delivery_mode=request.properties.delivery_mode,
        )
        return body, properties

    async def send_reply(
        self, request: Message, reply: dict[str, Any], exchange: str, *, log: LogContext
    ) -> None:
        """Publish ``reply`` to the request's ``reply_to`` (confirmed); ``log`` is the
        context of the consumer the request came to (for the logs).

        Cancellation: the reply may or may not have been sent.
        """
        reply_to = request.properties.reply_to
        if not reply_to:
            logger.warning(
                "%s: cannot reply to message %s: it has no reply_to",
                log.what,
                request.delivery_tag,
                extra=log.extra(request),
            )
            return
        if bodies.looks_large(reply):
            body, properties = await anyio.to_thread.run_sync(
                self.encode_reply, request, reply, abandon_on_cancel=True
            )
        else:
            body, properties = self.encode_reply(request, reply)
        try:
            await self._publish_reply(body, properties, reply_to, exchange)
        except ProtocolError as exc:  # refused before sending (e.g. over max_message_size)
            body = self._codec.encode(wire.exception_reply(exc))
            await self._publish_reply(body, properties, reply_to, exchange)

    async def _publish_reply(
        self, body: bytes, properties: Properties, reply_to: str, exchange: str
    ) -> None:
        what = f"reply to {reply_to!r}"
        try:
            await self._publisher.publish(
                body,
                exchange=self.reply_exchange(exchange),
                routing_key=reply_to,
                properties=properties,
                mandatory=False,
                what=what,
                allow_closing=True,
            )
        except DeliveryFailed as exc:
            cause = exc.__cause__
            if not (
                self.reply_exchange(exchange) == REPLY_EXCHANGE
                and isinstance(cause, ChannelClosed)
                and cause.reply_code == 403
            ):
                raise
            # this user may not publish to the default exchange: reply as kiwiPy does,
            # through the request's exchange (and its binding of the reply queue)
            logger.info("%s: replying through the request's exchange: %s", self._link, cause)
            self._default_exchange_refused = True
            await self._publisher.publish(
                body,
                exchange=exchange,
                routing_key=reply_to,
                properties=properties,
                mandatory=False,
                what=what,
                allow_closing=True,
            )

    # ------------------------------------------------------------ settling

    async def settle(
        self,
        message: Message,
        reply: dict[str, Any] | None,
        exchange: str,
        *,
        log: LogContext,
        nowait: bool = True,
        on_answered: Callable[[], object] | None = None,
    ) -> bool:
        """Send the final reply, then acknowledge; ``on_answered()`` once the broker
        confirmed the reply and the ack went out. ``log``: the consumer's context (for the logs).

        Returns True when that was handed off: the reply is queued and a confirm callback
        acks the request (:meth:`settle_nowait`; the consumer's channel stays open until it
        has). Else it was done here, shielded, so a request whose handling finished is
        answered and acked even when the communicator is closing (a request cancelled
        mid-handling is requeued instead; nothing is done twice).

        Cancellation: shielded (bounded by ``SETTLE_TIMEOUT`` once stopping or closing).
        """
        if nowait and self.settle_nowait(message, reply, exchange, log, on_answered):
            return True
        channel = message.channel
        # no deadline while the communicator is open (a broker that blocks publishing
        # delays the reply; giving up would requeue a finished task); closing bounds it
        with self._bounds.settling(channel, bounded=self._link.state is not LinkState.OPEN):
            if reply is not None:
                await self.send_reply(message, reply, exchange, log=log)
            if channel.is_open:
                message.ack()
                if on_answered is not None:
                    on_answered()
        return False

    def settle_nowait(
        self,
        message: Message,
        reply: dict[str, Any] | None,
        exchange: str,
        log: LogContext,
        on_answered: Callable[[], object] | None = None,
    ) -> bool:
        """The common case of :meth:`settle` without a task switch or a cancel scope:
        queue the reply on the open publisher channel and ack the request from the
        confirm callback. False: take the slow path (closing, a blocked broker, a reply
        too large to send, no publisher channel)."""
        link = self._link
        channel = message.channel
        if link.state is not LinkState.OPEN or self._bounds.is_bounded(channel):
            return False
        if not channel.is_open:
            return False
        if reply is None:
            message.ack()
            if on_answered is not None:
                on_answered()
            return True
        publisher = link.publisher
        reply_to = message.properties.reply_to
        if publisher is None or not publisher.is_open or not reply_to:
            return False
        if bodies.looks_large(reply):
            return False  # encoded off the loop by the slow path
        body, properties = self.encode_reply(message, reply)
        bounds = self._bounds

        def confirmed(error: BaseException | None) -> None:
            forget = True
            try:
                if error is not None and channel.is_open and not message.settled:
                    if link.tg is not None and link.state is LinkState.OPEN:
                        # the publisher channel failed under it (an exchange deleted, a
                        # nack): the slow path resends (after a recovery too), then acks
                        logger.info(
                            "%s: sending the reply to %r again: %s",
                            log.what,
                            reply_to,
                            error,
                            extra=log.extra(message),
                        )
                        link.tg.start_soon(
                            self._settle_again, message, reply, exchange, log, on_answered
                        )
                        forget = False  # still handed off: _settle_again forgets it
                    else:
                        message.nack(requeue=True)
                elif error is None and channel.is_open and not message.settled:
                    message.ack()
                    if on_answered is not None:
                        on_answered()
            finally:
                if forget:
                    bounds.handed_back(channel)

        bounds.hand_off(channel)
        try:
            self._publisher.publish_nowait(
                publisher,
                body,
                exchange=self.reply_exchange(exchange),
                routing_key=reply_to,
                properties=properties,
                what=f"reply to {reply_to!r}",
                on_confirm=confirmed,
            )
        except (anyio.WouldBlock, AMQPError, ValueError):
            # blocked, too large, a closed channel: the slow path copes
            bounds.handed_back(channel)
            return False
        except BaseException:
            bounds.handed_back(channel)
            raise
        return True

    async def _settle_again(
        self,
        message: Message,
        reply: dict[str, Any],
        exchange: str,
        log: LogContext,
        on_answered: Callable[[], object] | None,
    ) -> None:
        """A handed-off reply failed: send it the slow way (then ack), or requeue."""
        try:
            await self.settle(
                message, reply, exchange, log=log, nowait=False, on_answered=on_answered
            )
        except KiwiError as exc:
            logger.warning(
                "%s: request %s not answered: %s",
                log.what,
                message.delivery_tag,
                exc,
                extra=log.extra(message),
            )
        finally:
            if not message.settled and message.channel.is_open:
                message.nack(requeue=True)  # not answered in time: requeued
            self._bounds.handed_back(message.channel)

"""Consumers that come back: after a reconnection, a broker-side cancel or a deleted queue.

:meth:`Consumers.start` runs a consumer as a task of the link's task group: it asks for a
channel (``open_channel`` declares what the consumer needs, every time), consumes, hands each
delivery to a :class:`HandlerPool` (or handles it in line, ``sequential``), and when the link
drops, or the broker cancels the consumer, opens a channel again and resumes. Running
handlers finish on the channel they came on when the broker cancels the consumer (their
replies need no queue); a lost link cancels them (their messages are requeued by the broker).

It owns the consumer tasks, their handles and handler pools. It must not know what a
delivery means (that is the handler's, from :mod:`kiwi_anyio.patterns`) nor send anything.
"""

from __future__ import annotations

import contextvars
import logging
import math
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

import anyio
import anyio.abc

from .._signal import new_signal
from ..channel import Channel, Connection, Message
from ..exceptions import (
    AMQPError,
    ChannelClosed,
    ConsumerCancelled,
    DeliveryFailed,
    DuplicateSubscriberIdentifier,
)
from .link import Link, LinkState
from .settling import SETTLE_TIMEOUT, SettleBounds

__all__ = ["HANDLER_POOL_KEEP", "ConsumerHandle", "Consumers", "HandlerPool"]

logger = logging.getLogger("kiwi_anyio.communicator")

HANDLER_POOL_KEEP: Final = 128  # parked handler tasks kept per consumer

Handler = Callable[[Message], Coroutine[Any, Any, None]]
OpenChannel = Callable[[Connection], Awaitable[Channel]]


class HandlerPool:
    """Runs a consumer's handlers in reusable tasks of its task group.

    Spawning an anyio task costs about six times what waking a parked one does (a cancel
    scope, a task handle, a context copy); a task round trip spends one per delivery. A
    handler that finishes parks its task for the next message, up to ``keep`` parked tasks;
    :meth:`close` releases them so the group can finish. Cancelling the group cancels busy
    and parked tasks alike, as it cancelled the task-per-message handlers before.
    """

    __slots__ = ("_closed", "_handler", "_idle", "_keep", "_tg")

    def __init__(
        self, tg: anyio.abc.TaskGroup, handler: Handler, keep: int = HANDLER_POOL_KEEP
    ) -> None:
        self._tg = tg
        self._handler = handler
        self._keep = keep
        self._idle: list[_ParkedHandler] = []
        self._closed = False

    def submit(self, message: Message) -> None:
        """Handle ``message`` in a parked task, or a new one."""
        if self._idle:
            parked = self._idle.pop()
            parked.message = message
            parked.signal.set()
        else:
            self._tg.start_soon(self._work, message)

    def close(self) -> None:
        """No more messages: parked tasks end, busy ones end when their handler returns."""
        self._closed = True
        idle, self._idle = self._idle, []
        for parked in idle:
            parked.signal.set()

    async def _work(self, message: Message) -> None:
        handler = self._handler
        context = contextvars.copy_context()
        while True:
            await handler(message)
            if self._closed or len(self._idle) >= self._keep:
                return
            if contextvars.copy_context() != context:
                return  # the handler set a context variable: the next message gets a clean task
            parked = _ParkedHandler()
            self._idle.append(parked)
            try:
                await parked.signal.wait()
            except BaseException:  # the group is cancelled
                if parked in self._idle:
                    self._idle.remove(parked)
                handed = parked.message
                if handed is not None and not handed.settled and handed.channel.is_open:
                    handed.nack(requeue=True)  # handed over as the cancellation came
                raise
            if parked.message is None:
                return
            message = parked.message


class _ParkedHandler:
    __slots__ = ("message", "signal")

    def __init__(self) -> None:
        self.signal = new_signal()
        self.message: Message | None = None


class ConsumerHandle:
    """A consumer task: :meth:`stop` cancels it and waits until it is done."""

    def __init__(self, bounds: SettleBounds) -> None:
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.done_callbacks: list[Callable[[], object]] = []
        self.draining = False
        self.started = False  # consumed once: later failures are retried, not raised
        self.failures = 0  # consecutive failures to consume, for the retry backoff
        self.receiving: anyio.CancelScope | None = None
        self.channel: Channel | None = None  # the channel it consumes on now
        self._bounds = bounds

    def finished(self) -> None:
        self.done.set()
        for callback in self.done_callbacks:
            callback()

    async def stop(self) -> None:
        """Stop consuming; replies of finished handlers are still sent and acked, within
        ``SETTLE_TIMEOUT`` (a broker blocking publishing must not block the removal of a
        subscriber). Cancellation: shielded, it always waits for the consumer to end."""
        self.scope.cancel()
        if self.channel is not None:
            self._bounds.bound(self.channel)
        with anyio.CancelScope(shield=True):
            await self.done.wait()


class Consumers:
    """Every consumer of one link; see the module docstring.

    ``wrap(handler, what, queue)`` (the delivery middlewares, :meth:`~kiwi_anyio.hooks.Hooks.
    wrap`) wraps each consumer's handler once, when it starts: a delivery costs nothing more.
    """

    def __init__(
        self,
        link: Link,
        bounds: SettleBounds,
        wrap: Callable[[Handler, str, str], Handler] | None = None,
    ) -> None:
        self._link = link
        self._bounds = bounds
        self._wrap = wrap
        self.handles: set[ConsumerHandle] = set()
        # the connection each running consumer consumes on (recovery waits for all of them)
        self._consuming_on: dict[ConsumerHandle, Connection] = {}
        # made in the loop (by wait_restored): the communicator may be created outside it
        self._changed: anyio.Event | None = None
        link.on_restored(self.wait_restored)

    async def start(
        self,
        open_channel: OpenChannel,
        queue: str,
        on_message: Handler,
        *,
        what: str,
        no_ack: bool = False,
        consumer_tag: str = "",
        sequential: bool = False,
        exclusive: bool = False,
        arguments: Callable[[Connection], dict[str, Any]] | None = None,
    ) -> ConsumerHandle:
        """Start consuming ``queue``; returns once the first ``basic.consume`` succeeded.

        ``arguments(connection)`` gives the ``basic.consume`` arguments for a connection
        (they may depend on the broker's version).

        Raises what the first attempt raised (a refused declaration, a taken exclusive
        consumer...). Cancellation: the consumer is not started.
        """
        if self._wrap is not None:
            on_message = self._wrap(on_message, what, queue)
        handle = ConsumerHandle(self._bounds)
        assert self._link.tg is not None
        self.handles.add(handle)
        handle.done_callbacks.append(lambda: self.handles.discard(handle))
        spec = _Spec(
            open_channel, queue, on_message, what, no_ack, consumer_tag, sequential, exclusive
        )
        spec.arguments = arguments
        await self._link.tg.start(self._run, handle, spec)
        return handle

    async def wait_restored(self, connection: Connection) -> None:
        """Wait (bounded) until every consumer consumes again on ``connection``."""
        with anyio.move_on_after(self._link.reconnect_timeout):
            while any(c is not connection for c in self._consuming_on.values()):
                self._changed = anyio.Event()
                await self._changed.wait()

    async def stop_all(self, drain_timeout: float, keep: ConsumerHandle | None = None) -> None:
        """Stop every consumer while the connection still works: with ``drain_timeout``,
        stop receiving (except ``keep``, the replies) and let handlers in progress finish
        for that long; then cancel what is left (those messages are requeued; finished
        ones are answered and acked). Cancellation: call it shielded."""
        handles = list(self.handles)
        if drain_timeout > 0:
            draining = [h for h in handles if h is not keep]
            for handle in draining:
                handle.draining = True
                if handle.receiving is not None:
                    handle.receiving.cancel()
            with anyio.move_on_after(drain_timeout):
                for handle in draining:
                    await handle.done.wait()
        for handle in handles:
            handle.scope.cancel()
        self._bounds.bound()
        with anyio.move_on_after(SETTLE_TIMEOUT + 1):
            for handle in handles:
                await handle.done.wait()

    def _state(self, handle: ConsumerHandle, connection: Connection | None) -> None:
        if connection is None:
            self._consuming_on.pop(handle, None)
        else:
            self._consuming_on[handle] = connection
        if self._changed is not None:
            self._changed.set()

    async def _run(
        self,
        handle: ConsumerHandle,
        spec: _Spec,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Consume until stopped, resuming after a lost link or a broker-side cancel."""
        link = self._link
        try:
            with handle.scope:
                while True:
                    connection: Connection | None = None
                    try:
                        connection = await link.wait_connection(math.inf)
                        if await self._consume_once(handle, spec, connection, task_status):
                            return
                    except (AMQPError, DeliveryFailed, DuplicateSubscriberIdentifier) as exc:
                        if not handle.started:
                            raise
                        if link.state is not LinkState.OPEN:
                            return
                        # lost: our connection dropped (perhaps already replaced by a new
                        # one); then wait for no backoff, the supervisor reconnects
                        current = link.connection
                        lost = (
                            connection is None
                            or connection is not current
                            or not connection.is_open
                        )
                        if not lost:
                            handle.failures += 1
                            logger.error("consumer of %s stopped (%s); restarting", spec.what, exc)
                            pause = min(30.0, 0.5 * 2**handle.failures) * random.random()
                            await anyio.sleep(pause)
        finally:
            self._state(handle, None)
            handle.finished()

    async def _consume_once(
        self,
        handle: ConsumerHandle,
        spec: _Spec,
        connection: Connection,
        task_status: anyio.abc.TaskStatus[None],
    ) -> bool:
        """One channel's consumer, until it ends; True when it drained (stop for good)."""
        channel = await spec.open_channel(connection)
        try:
            consumer = channel.basic_consume(
                spec.queue,
                no_ack=spec.no_ack,
                consumer_tag=spec.consumer_tag,
                exclusive=spec.exclusive,
                arguments=None if spec.arguments is None else spec.arguments(connection),
            )
            async with consumer:
                if not handle.started:
                    handle.started = True
                    task_status.started()
                self._state(handle, connection)
                handle.channel = channel
                handle.failures = 0
                ended = await self._deliver(handle, spec, consumer)
            if ended is not None:
                raise ended
            return handle.draining  # drained: every handler finished
        finally:
            handle.channel = None
            if channel.is_open:
                with anyio.CancelScope(shield=True):
                    await self._bounds.wait_handed_off(channel)
                    await channel.aclose()
            self._bounds.forget(channel)

    async def _deliver(
        self, handle: ConsumerHandle, spec: _Spec, consumer: Any
    ) -> AMQPError | None:
        """Hand every delivery to the handlers; returns why the consumer ended, if not by
        being stopped. A broker-side cancel lets running handlers finish; any other error
        cancels them."""
        ended: AMQPError | None = None
        async with anyio.create_task_group() as handlers:
            pool = HandlerPool(handlers, spec.on_message)
            # cancelling this scope stops receiving; handlers go on
            with anyio.CancelScope() as handle.receiving:
                if handle.draining:
                    handle.receiving.cancel()
                try:
                    async for message in consumer:
                        if spec.sequential:
                            await spec.on_message(message)
                        else:
                            pool.submit(message)
                except ConsumerCancelled as exc:
                    # the queue was deleted (an operator?): the running handlers finish and
                    # answer on this channel, then the queue is declared again and we resume
                    logger.warning(
                        "%s: the broker cancelled the consumer of %s (%s)",
                        self._link,
                        spec.what,
                        exc,
                    )
                    ended = exc
                except ChannelClosed as exc:
                    ended = exc
                    if is_ack_timeout(exc):
                        # the broker gave up on an unacknowledged delivery and closed the
                        # channel (requeueing its deliveries): the running handlers finish
                        # and their replies still go out (not on this channel)
                        logger.error(
                            "%s: the broker closed the channel of %s because a delivery "
                            "stayed unacknowledged longer than its consumer timeout (%s): "
                            "for tasks that run longer, give the task queue a "
                            "consumer_timeout= (RabbitMQ >= 3.12) or raise the broker's "
                            "consumer_timeout; the tasks handed out on it are requeued",
                            self._link,
                            spec.what,
                            exc,
                        )
                    else:
                        handlers.cancel_scope.cancel()
                except AMQPError as exc:  # raised by the caller, not in a group
                    ended = exc
                    handlers.cancel_scope.cancel()
                finally:
                    pool.close()
        return ended


def is_ack_timeout(exc: ChannelClosed) -> bool:
    """Whether the broker closed a channel for an acknowledgement (consumer) timeout:
    ``406 PRECONDITION_FAILED - delivery acknowledgement on channel N timed out``."""
    text = str(exc).lower()
    return exc.reply_code == 406 and "acknowledgement" in text and "timed out" in text


class _Spec:
    """What a consumer consumes and how (fixed for its life)."""

    __slots__ = (
        "arguments",
        "consumer_tag",
        "exclusive",
        "no_ack",
        "on_message",
        "open_channel",
        "queue",
        "sequential",
        "what",
    )

    def __init__(
        self,
        open_channel: OpenChannel,
        queue: str,
        on_message: Handler,
        what: str,
        no_ack: bool,
        consumer_tag: str,
        sequential: bool,
        exclusive: bool,
    ) -> None:
        self.open_channel = open_channel
        self.queue = queue
        self.on_message = on_message
        self.what = what
        self.no_ack = no_ack
        self.consumer_tag = consumer_tag
        self.sequential = sequential
        self.exclusive = exclusive
        self.arguments: Callable[[Connection], dict[str, Any]] | None = None
